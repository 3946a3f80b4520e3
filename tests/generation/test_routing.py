"""Routing by policy: confidential products stay on private backends, priority picks a pool,
and the generate stage records per-variant backends and failure reasons."""

from __future__ import annotations

import pytest
from darkroom.catalog.tables import Asset, AssetStatus, PlanItem, Variant
from darkroom.config import Settings
from darkroom.generation.routing import backend_for, matches, pool_for
from darkroom.spec import CampaignSpec, Generation
from darkroom.stages import generate, plan, validate
from pydantic import ValidationError
from sqlalchemy import select

from tests.support.campaigns import small_spec as _spec
from tests.support.campaigns import stage_ctx as _ctx
from tests.support.stability_fake import API_KEY, fake_stability

CONFIDENTIAL = {"when": {"product.confidential": True}, "backend": "private"}
HIGH = {"when": {"priority": "high"}, "pool": "gpu_high"}


def _campaign(**generation) -> CampaignSpec:
    return CampaignSpec.model_validate({
        "id": "routing_demo", "brief": "b", "products": {"source": "p.csv"},
        "prompts": {"subject": "{{ product.name }}"},
        "asset_types": [{"name": "hero", "channels": ["web"]}],
        "channels": {"web": {"width": 64, "height": 64}}, "generation": generation})


@pytest.mark.parametrize(("expected", "actual", "result"), [
    (True, "yes", True), (True, "TRUE", True), (True, "1", True), (True, "", False), (True, None, False),
    (False, "no", True), (False, "", True), (False, "true", False), ("high", "high", True),
    (["a", "b"], "b", True), (["a", "b"], "c", False), (3, "3", True),
], ids=lambda v: repr(v))
def test_conditions_read_csv_text(expected, actual, result):
    assert matches({"product.flag": expected}, {"product": {"flag": actual}}) is result


@pytest.mark.parametrize(("default", "confidential", "chosen"), [
    ("stability", "yes", "local"),  # never a hosted API for a confidential product
    ("http", "yes", "http"),  # 'private' keeps a private default (the GPU host)
    ("stability", "no", "stability"),
    ("local", "no", "local"),
])
def test_private_rule(default, confidential, chosen):
    spec = _campaign(backend=default, routing=[CONFIDENTIAL])
    assert backend_for(spec, {"product": {"confidential": confidential}}) == chosen


def test_priority_picks_the_pool():
    assert pool_for(_campaign(priority="high", routing=[HIGH], pool="gpu")) == "gpu_high"
    assert pool_for(_campaign(priority="normal", routing=[HIGH], pool="gpu")) == "gpu"
    assert pool_for(_campaign(routing=[HIGH])) is None


@pytest.mark.parametrize(("rule", "message"), [
    ({"when": {"product.confidential": True}, "pool": "p"}, "cannot choose a pool"),
    ({"when": {"colour": "red"}, "backend": "local"}, "unknown condition 'colour'; fix: use one of"),
    ({"when": {"priority": "high"}}, "needs `backend` and/or `pool`"),
    ({"when": {}, "backend": "local"}, "when"),
    ({"when": {"priority": "high"}, "backend": "cloud"}, "backend"),
    # Fallbacks (tests/generation/test_failover.py has the rest of them).
    ({**CONFIDENTIAL, "fallback": ["local", "stability"]},
     "fallback 'stability': a private rule never falls back to a hosted API"),
    ({"when": {"priority": "high"}, "pool": "p", "fallback": ["local"]},
     "fallback \\['local'\\] needs the rule's `backend`"),
    ({"when": {"priority": "high"}, "backend": "http", "fallback": ["cloud"]}, "fallback"),
])
def test_bad_rules_name_the_field_and_fix(rule, message):
    with pytest.raises(ValidationError, match=message) as info:
        Generation(routing=[rule])
    assert "routing.0" in str(info.value)


ROWS = """sku,name,category,colour,material,price_eur,confidential
TER-001,coffee mug,drinkware,terracotta,stoneware,18.00,yes
TER-002,espresso cup,drinkware,sand,porcelain,12.50,no
TER-003,FILTERME bowl,drinkware,moss green,stoneware,16.00,
"""


@pytest.mark.usefixtures("use_tiny_model")
def test_generate_routes_per_variant_and_records_reasons(tmp_path, monkeypatch):
    def mutate(d):
        d["generation"].update(backend="stability", routing=[CONFIDENTIAL], variants_per_task=8)
        d["products"]["required_columns"] = ["sku", "name"]

    spec = _spec(tmp_path, mutate, rows=ROWS)
    with fake_stability() as (url, calls):
        monkeypatch.setenv("DARKROOM_STABILITY_API_KEY", API_KEY)
        monkeypatch.setenv("DARKROOM_STABILITY_BASE_URL", url)
        settings = Settings.from_env(catalog_url=f"sqlite:///{tmp_path / 'catalog.db'}")  # reads both
        ctx = _ctx(spec, settings)
        validate.run(ctx)
        batches = plan.run(ctx)
        # Routing was decided at planning time: the GPU worker never reads the products.
        (tmp_path / "products.csv").unlink()
        counts = [generate.run(ctx, b) for b in batches]
    assert sum(c["generated"] for c in counts) == 2 and sum(c["failed"] for c in counts) == 1
    with ctx.catalog.session() as s:
        rows = s.execute(select(Variant.product_id, Asset.backend, Asset.status, Asset.failure_reason)
                         .join(Asset, Asset.variant_id == Variant.id).order_by(Variant.product_id)).all()
    by_product = {r.product_id: r for r in rows}
    with ctx.catalog.session() as s:
        routes = dict(s.execute(select(Variant.product_id, PlanItem.backend)
                                .join(PlanItem, PlanItem.variant_id == Variant.id)).all())
    assert routes == {"TER-001": "local", "TER-002": "stability", "TER-003": "stability"}
    assert by_product["TER-001"].backend == "local" and by_product["TER-001"].status == AssetStatus.generated
    assert by_product["TER-002"].backend == "stability" and by_product["TER-002"].status == AssetStatus.generated
    assert by_product["TER-003"].status == AssetStatus.failed
    assert by_product["TER-003"].failure_reason.startswith("content_filtered:")
    # The confidential product's prompt never reached the hosted API.
    assert calls and not any("coffee mug" in c["fields"]["prompt"] for c in calls)
