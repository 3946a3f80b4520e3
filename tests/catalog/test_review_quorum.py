"""approval.quorum: N distinct reviewers must approve; any rejection rejects."""

from __future__ import annotations

import pytest
from darkroom.catalog import Catalog, reviews
from darkroom.catalog.tables import Asset, AssetStatus, Campaign, QAResult, Run, Variant


@pytest.fixture
def asset(catalog_url):
    """One asset waiting for review in a campaign whose spec asks for a quorum of 2."""
    catalog = Catalog(catalog_url)
    with catalog.session() as s:
        s.add(Campaign(id="c", spec_hash="x", spec_path="x", spec_body={"approval": {"quorum": 2}}))
        run = Run(campaign_id="c", dag_id="campaign__c", run_id="r", spec_hash="x", conf={}, summary={})
        s.add(run)
        s.flush()
        s.add(Variant(id="v", campaign_id="c", product_id="P", asset_type="t", channels=[],
                      template_version="t", prompt="p", negative_prompt="", seed=1, params={}))
        s.add(Asset(id="a", variant_id="v", run_pk=run.id, status=AssetStatus.needs_review,
                    model_name="m", model_version="1", scheduler="ddim", steps=1, guidance=1.0,
                    seed=1, backend="local"))
        s.add(QAResult(asset_id="a", check="sharpness", value=21.0, threshold=20.0, passed=True,
                       status="borderline"))
    return catalog


def _status(catalog) -> str:
    with catalog.session() as s:
        return s.get(Asset, "a").status


def test_two_distinct_approvals_are_needed(asset):
    reviews.decide(asset, "a", "approve", "ana")
    assert _status(asset) == AssetStatus.needs_review  # still waiting, as QA left it
    reviews.decide(asset, "a", "approve", "ana", "again")  # the same person twice is one vote
    assert _status(asset) == AssetStatus.needs_review
    reviews.decide(asset, "a", "approve", "ben")
    assert _status(asset) == AssetStatus.approved


def test_any_rejection_rejects_until_that_reviewer_changes_their_mind(asset):
    reviews.decide(asset, "a", "approve", "ana")
    reviews.decide(asset, "a", "reject", "ben", "logo cut off")
    assert _status(asset) == AssetStatus.rejected
    reviews.decide(asset, "a", "approve", "cy")  # two approvals, but ben still rejects
    assert _status(asset) == AssetStatus.rejected
    reviews.decide(asset, "a", "approve", "ben", "fixed in the crop")
    assert _status(asset) == AssetStatus.approved


def test_withdrawn_rejection_goes_back_to_waiting(asset):
    reviews.decide(asset, "a", "reject", "ana")
    reviews.decide(asset, "a", "approve", "ana")
    assert _status(asset) == AssetStatus.needs_review  # one approval of two, QA outcome back


def test_policy_decisions_are_final(asset):
    reviews.decide(asset, "a", "reject", "darkroom:timeout", "no decision within 2d", by_policy=True)
    assert _status(asset) == AssetStatus.rejected


def test_quorum_one_keeps_newest_wins(asset):
    with asset.session() as s:
        s.get(Campaign, "c").spec_body = {"approval": {"quorum": 1}}
    reviews.decide(asset, "a", "reject", "ana")
    reviews.decide(asset, "a", "approve", "ben")
    assert _status(asset) == AssetStatus.approved
