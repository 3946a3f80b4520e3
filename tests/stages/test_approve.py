"""The approval policies as plain functions: review routing per asset type (human,
automated, exception with its audit sample and escalation), the deadline's reject_undecided
and fail. (The sensor and trigger that wait for people: tests/operators.)"""

from __future__ import annotations

import shutil

import pytest
from darkroom.catalog import assets, reviews, runs
from darkroom.catalog.tables import Asset, AssetStatus, QAResult, Review, Variant
from darkroom.config import Settings
from darkroom.stages import approve
from darkroom.stages.context import RunContext
from sqlalchemy import select

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


def _routed(tmp_path, catalog_url, approval: str, lifestyle: int = 3, flatlay: int = 0,
            needs_review: int = 1) -> RunContext:
    """summer_social with ``approval`` added to its approval section, and QA-checked assets:
    ``lifestyle`` and ``flatlay`` clean passes (l0.., f0..), ``needs_review`` lifestyle ones
    with a borderline sharpness (n0..)."""
    for f in ("summer_social.yaml", "summer_social.products.csv"):
        shutil.copy(CAMPAIGNS / f, tmp_path / f)
    spec = tmp_path / "summer_social.yaml"
    extra = "".join(f"  {line}\n" for line in approval.strip().splitlines())
    spec.write_text(spec.read_text().replace("approval:\n", "approval:\n" + extra, 1))
    ctx = RunContext.open(spec, "campaign__summer_social", "manual__routing",
                          settings=Settings.from_env(catalog_url=catalog_url))
    made = ([(f"l{i}", "lifestyle", AssetStatus.qa_passed) for i in range(lifestyle)]
            + [(f"f{i}", "flatlay", AssetStatus.qa_passed) for i in range(flatlay)]
            + [(f"n{i}", "lifestyle", AssetStatus.needs_review) for i in range(needs_review)])
    with ctx.catalog.session() as s:
        for i, (asset_id, asset_type, status) in enumerate(made):
            s.add(Variant(id=f"v{asset_id}", campaign_id="summer_social", product_id=f"P{i}",
                          asset_type=asset_type, channels=[], template_version="t", prompt="p",
                          negative_prompt="", seed=i, params={}))
            s.add(Asset(id=asset_id, variant_id=f"v{asset_id}", run_pk=ctx.run_pk, status=status,
                        model_name="m", model_version="1", scheduler="ddim", steps=1, guidance=1.0,
                        seed=i, backend="local"))
            borderline = status == AssetStatus.needs_review
            s.add(QAResult(asset_id=asset_id, check="sharpness", value=21.0 if borderline else 80.0,
                           threshold=20.0, passed=True, status="borderline" if borderline else "pass",
                           detail="laplacian variance 21 >= 20 (within review band 5)" if borderline else ""))
    return ctx


def _decisions(ctx) -> dict[str, list[tuple[str, str]]]:
    """Every asset's review rows, (decision, reviewer), oldest first: the audit log."""
    with ctx.catalog.session() as s:
        out: dict[str, list] = {a: [] for a in s.scalars(select(Asset.id).where(Asset.run_pk == ctx.run_pk))}
        for r in s.scalars(select(Review).order_by(Review.id)):
            out[r.asset_id].append((r.decision, r.reviewer))
        return out


def _statuses(ctx) -> dict[str, str]:
    with ctx.catalog.session() as s:
        return {a.id: a.status for a in s.scalars(select(Asset).where(Asset.run_pk == ctx.run_pk))}


def _audit_sample(ctx) -> set[str]:
    with ctx.catalog.session() as s:
        return set(s.scalars(select(Asset.id).where(Asset.run_pk == ctx.run_pk, Asset.audit_sample.is_(True))))


def test_human_review_leaves_every_asset_to_people(tmp_path, catalog_url):
    ctx = _routed(tmp_path, catalog_url, "")  # no review mode: human, today's behaviour
    assert approve.route(ctx)["for_people"] == 4
    assert all(rows == [] for rows in _decisions(ctx).values())
    assert runs.approval_state(ctx.catalog, ctx.dag_id, ctx.run_id).waiting == 4


def test_automated_review_approves_passes_and_rejects_doubts_so_nothing_waits(tmp_path, catalog_url):
    ctx = _routed(tmp_path, catalog_url, "review: automated")
    reviews.decide(ctx.catalog, "l0", "reject", "ana", "off-brand")  # a person was first: it stands
    counts = approve.route(ctx)
    assert (counts["approved"], counts["rejected"]) == (2, 1)
    state = runs.approval_state(ctx.catalog, ctx.dag_id, ctx.run_id)
    assert (state.waiting, state.approved, state.rejected, state.done) == (0, 2, 2, True)
    # Every automated decision is a review row like a person's, naming the policy and why.
    shown = {a: reviews.show(ctx.catalog, a)["reviews"] for a in ("l0", "l1", "n0")}
    assert [(r["decision"], r["reviewer"]) for r in shown["l0"]] == [("rejected", "ana")]
    assert [(r["decision"], r["reviewer"]) for r in shown["l1"]] == [("approved", "policy:automated@1")]
    assert shown["l1"][0]["note"] == ("approval.review automated for asset type lifestyle: "
                                      "QA passed every check")
    assert [(r["decision"], r["reviewer"]) for r in shown["n0"]] == [("rejected", "policy:automated@1")]
    assert "QA was not sure" in shown["n0"][0]["note"] and "sharpness borderline" in shown["n0"][0]["note"]


def test_required_false_is_automated(tmp_path, catalog_url):
    ctx = _routed(tmp_path, catalog_url, "required: false")
    assert ctx.spec.approval.for_asset_type("lifestyle").review == "automated"
    approve.route(ctx)
    assert _statuses(ctx) == {"l0": "approved", "l1": "approved", "l2": "approved", "n0": "rejected"}
    assert {row for rows in _decisions(ctx).values() for row in rows} == {
        ("approved", "policy:automated@1"), ("rejected", "policy:automated@1")}


def test_review_mode_is_per_asset_type(tmp_path, catalog_url):
    ctx = _routed(tmp_path, catalog_url, "review: automated\nasset_types: {flatlay: {review: human}}",
                  lifestyle=2, flatlay=2, needs_review=0)
    approve.route(ctx)
    assert _statuses(ctx) == {"l0": "approved", "l1": "approved", "f0": "qa_passed", "f1": "qa_passed"}


def test_exception_review_approves_clean_passes_and_people_decide_doubts_and_the_audit_sample(
        tmp_path, catalog_url):
    ctx = _routed(tmp_path, catalog_url, "review: exception\naudit_rate: 0.25", lifestyle=40)
    counts = approve.route(ctx)
    sample = _audit_sample(ctx)
    assert sample == {f"l{i}" for i in range(40) if approve.in_audit_sample(ctx.run_id, f"l{i}", 0.25)}
    assert 0 < len(sample) < 40 and counts["audit"] == len(sample)
    statuses, decisions = _statuses(ctx), _decisions(ctx)
    for asset_id in sample | {"n0"}:  # people decide these
        assert statuses[asset_id] in (AssetStatus.qa_passed, AssetStatus.needs_review)
        assert decisions[asset_id] == []
    auto = {f"l{i}" for i in range(40)} - sample
    assert {statuses[a] for a in auto} == {AssetStatus.approved} and counts["approved"] == len(auto)
    assert {tuple(decisions[a]) for a in auto} == {(("approved", "policy:exception@1"),)}
    note = reviews.show(ctx.catalog, sorted(auto)[0])["reviews"][0]["note"]
    assert note == ("approval.review exception for asset type lifestyle: QA passed every check "
                    "by more than its review band; audit_rate 0.25")
    assert runs.approval_state(ctx.catalog, ctx.dag_id, ctx.run_id).waiting == len(sample) + 1
    assert reviews.show(ctx.catalog, sorted(sample)[0])["audit_sample"] is True  # gallery, API, CLI
    # Publishing needs an approval record for every asset: the policy's rows are those records.
    assets.claim_approved(ctx.catalog, ctx.run_pk)
    assert {a for a, st in _statuses(ctx).items() if st == AssetStatus.published} == auto


def test_audit_sample_is_the_same_on_every_retry(tmp_path, catalog_url):
    ctx = _routed(tmp_path, catalog_url, "review: exception\naudit_rate: 0.3", lifestyle=20)
    approve.route(ctx)
    first, log = _audit_sample(ctx), _decisions(ctx)
    again = approve.route(ctx)  # the sensor's retry
    assert _audit_sample(ctx) == first and _decisions(ctx) == log
    assert (again["approved"], again["audit"]) == (0, len(first))
    # A hash of the run id and the asset id: another run draws another sample of the same ids.
    other = {f"l{i}" for i in range(20) if approve.in_audit_sample("manual__other", f"l{i}", 0.3)}
    assert other != first
    assert not any(approve.in_audit_sample(ctx.run_id, f"l{i}", 0.0) for i in range(20))
    assert all(approve.in_audit_sample(ctx.run_id, f"l{i}", 1.0) for i in range(20))


def test_rejections_over_the_audit_limit_withdraw_the_policys_approvals(tmp_path, catalog_url):
    ctx = _routed(tmp_path, catalog_url, "review: exception\naudit_rate: 0.5\naudit_max_reject_rate: 0.2\n"
                  "asset_types: {flatlay: {audit_rate: 0}}", lifestyle=20, flatlay=3, needs_review=0)
    approve.route(ctx)
    sample = sorted(_audit_sample(ctx))
    auto = sorted({f"l{i}" for i in range(20)} - set(sample))
    assert len(sample) >= 5 and auto
    allowed = int(0.2 * len(sample))  # rejecting this many is within the limit
    reviews.decide(ctx.catalog, auto[0], "approve", "ana", "checked it myself")  # a person's approval
    for asset_id in sample[:allowed]:
        reviews.decide(ctx.catalog, asset_id, "reject", "ana", "blurry logo")
    assert {_statuses(ctx)[a] for a in auto} == {AssetStatus.approved}  # nothing withdrawn yet
    reviews.decide(ctx.catalog, sample[allowed], "approve", "ben")  # approvals do not count
    reviews.decide(ctx.catalog, sample[allowed + 1], "reject", "ben", "wrong colour")  # crosses it
    statuses, decisions = _statuses(ctx), _decisions(ctx)
    for asset_id in auto[1:]:  # the policy's approvals are withdrawn: people decide
        assert statuses[asset_id] == AssetStatus.qa_passed
        assert decisions[asset_id] == [("approved", "policy:exception@1"), ("withdrawn", "policy:exception@1")]
    assert statuses[auto[0]] == AssetStatus.approved  # ana's approval stands
    assert {statuses[f"f{i}"] for i in range(3)} == {AssetStatus.approved}  # another asset type's audit
    note = reviews.show(ctx.catalog, auto[1])["reviews"][-1]["note"]
    assert note == (f"audit: reviewers rejected {allowed + 1} of the {len(sample)} lifestyle assets in "
                    "the audit sample, more than audit_max_reject_rate 0.2; the policy's approval is "
                    "withdrawn and a person decides")
    # Once: further rejections and the sensor's retry add nothing; people decide the withdrawn.
    reviews.decide(ctx.catalog, sample[allowed + 2], "reject", "ben")
    approve.route(ctx)
    assert {a: r for a, r in _decisions(ctx).items() if a in auto} == {a: decisions[a] for a in auto}
    reviews.decide(ctx.catalog, auto[1], "approve", "cy")
    reviews.decide(ctx.catalog, auto[2], "reject", "cy")
    assert (_statuses(ctx)[auto[1]], _statuses(ctx)[auto[2]]) == (AssetStatus.approved, AssetStatus.rejected)
    assets.claim_approved(ctx.catalog, ctx.run_pk)  # nothing withdrawn is published
    published = {a for a, st in _statuses(ctx).items() if st == AssetStatus.published}
    assert published == {auto[0], auto[1], sample[allowed], "f0", "f1", "f2"}


def test_the_deadline_rejecting_the_audit_sample_withdraws_nothing(tmp_path, catalog_url):
    ctx = _routed(tmp_path, catalog_url, "review: exception\naudit_rate: 0.5\naudit_max_reject_rate: 0",
                  lifestyle=10, needs_review=0)
    approve.route(ctx)
    sample = _audit_sample(ctx)
    assert approve.at_deadline(ctx) == {"approved": 10 - len(sample), "rejected": len(sample)}
    assert "withdrawn" not in {d for rows in _decisions(ctx).values() for d, _ in rows}


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
