"""The approval policies as plain functions: approval not required, the deadline's
reject_undecided and fail. (The sensor and trigger that wait for people: tests/operators.)"""

from __future__ import annotations

import shutil

import pytest
from darkroom.catalog import reviews, runs
from darkroom.catalog.tables import Asset, AssetStatus, Variant
from darkroom.config import Settings
from darkroom.stages import approve
from darkroom.stages.context import RunContext

from tests.support.campaigns import CAMPAIGNS


def _ctx(tmp_path, catalog_url, **approval) -> RunContext:
    """summer_social (on_timeout: reject_undecided) with three assets waiting for people."""
    for f in ("summer_social.yaml", "summer_social.products.csv"):
        shutil.copy(CAMPAIGNS / f, tmp_path / f)
    spec = tmp_path / "summer_social.yaml"
    for key, value in approval.items():
        spec.write_text(spec.read_text().replace(f"{key}: reject_undecided", f"{key}: {value}"))
    ctx = RunContext.open(spec, "campaign__summer_social", "manual__approve",
                          settings=Settings.from_env(catalog_url=catalog_url))
    with ctx.catalog.session() as s:
        for i in range(3):
            s.add(Variant(id=f"v{i}", campaign_id="summer_social", product_id=f"P{i}", asset_type="t",
                          channels=[], template_version="t", prompt="p", negative_prompt="", seed=i, params={}))
            s.add(Asset(id=f"a{i}", variant_id=f"v{i}", run_pk=ctx.run_pk, status=AssetStatus.qa_passed,
                        model_name="m", model_version="1", scheduler="ddim", steps=1, guidance=1.0,
                        seed=i, backend="local"))
    return ctx


def test_not_required_approves_what_waits_as_the_policy(tmp_path, catalog_url):
    ctx = _ctx(tmp_path, catalog_url)
    reviews.decide(ctx.catalog, "a0", "reject", "ana", "off-brand")
    assert approve.when_not_required(ctx) == 2
    state = runs.approval_state(ctx.catalog, ctx.dag_id, ctx.run_id)
    assert (state.waiting, state.approved, state.rejected, state.done) == (0, 2, 1, True)
    assert {r["reviewer"] for r in reviews.show(ctx.catalog, "a1")["reviews"]} == {"darkroom:policy"}


def test_deadline_rejects_the_undecided_when_the_spec_says_so(tmp_path, catalog_url):
    ctx = _ctx(tmp_path, catalog_url)
    reviews.decide(ctx.catalog, "a0", "approve", "ana")
    assert approve.at_deadline(ctx) == {"approved": 1, "rejected": 2}
    shown = reviews.show(ctx.catalog, "a2")["reviews"]
    assert [(r["decision"], r["reviewer"], r["note"]) for r in shown] == [
        ("rejected", "darkroom:timeout", "no decision within 2d")]


def test_deadline_fails_by_default_naming_what_waits_and_the_fix(tmp_path, catalog_url):
    ctx = _ctx(tmp_path, catalog_url, on_timeout="fail")
    with pytest.raises(TimeoutError, match="3 assets had no decision within 2d; set approval.on_timeout"):
        approve.at_deadline(ctx)
    assert runs.approval_state(ctx.catalog, ctx.dag_id, ctx.run_id).waiting == 3  # nothing decided
