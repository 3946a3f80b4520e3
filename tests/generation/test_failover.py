"""Fail over by policy: a routing rule's fallbacks take over when its backend is found down
(the model server stopped mid-run), a private rule never falls back to a hosted API, and a
circuit breaker per backend per task means one wait per outage, not one per variant."""

from __future__ import annotations

import logging

import pytest
from darkroom.catalog import runs
from darkroom.catalog.tables import Asset, AssetStatus, Variant
from darkroom.config import Settings
from darkroom.generation.routing import chain_for
from darkroom.spec import CampaignSpec, Generation
from darkroom.stages import generate, plan, qa, track, validate
from mlflow import MlflowClient
from pydantic import ValidationError
from sqlalchemy import select

from tests.support.campaigns import small_spec, stage_ctx
from tests.support.servers import model_server, stop_server
from tests.support.stability_fake import API_KEY, fake_stability

CONFIDENTIAL = {"when": {"product.confidential": True}, "backend": "private"}


def _campaign(**generation) -> CampaignSpec:
    return CampaignSpec.model_validate({
        "id": "failover_demo", "brief": "b", "products": {"source": "p.csv"},
        "prompts": {"subject": "{{ product.name }}"},
        "asset_types": [{"name": "hero", "channels": ["web"]}],
        "channels": {"web": {"width": 64, "height": 64}}, "generation": generation})


@pytest.mark.parametrize(("confidential", "chain"), [
    ("yes", ["http", "local"]),  # the private rule's own fallback: private backends only
    ("no", ["http", "local", "stability"]),  # no rule names a backend: generation's own
])
def test_the_chain_is_the_rule_and_its_fallbacks(confidential, chain):
    spec = _campaign(backend="http", fallback=["local", "stability"],
                     routing=[{**CONFIDENTIAL, "fallback": ["local"]}])
    assert chain_for(spec, {"product": {"confidential": confidential}}) == chain


ROWS = """sku,name,category,colour,material,price_eur,confidential
TER-001,coffee mug,drinkware,terracotta,stoneware,18.00,no
TER-002,secret prototype,drinkware,sand,porcelain,12.50,yes
TER-003,tea bowl,drinkware,moss green,stoneware,16.00,no
TER-004,saucer,drinkware,sand,stoneware,9.00,no
"""


@pytest.mark.usefixtures("use_tiny_model")
def test_model_server_stopped_mid_run(tiny_model, tmp_path, monkeypatch, caplog):
    """Public variants finish on the hosted fallback; the confidential one fails with the
    reason, and its prompt never reaches the hosted API."""
    def mutate(d):
        d["generation"].update(backend="http", fallback=["stability"], routing=[CONFIDENTIAL],
                               variants_per_task=16, batch_size=1)
        d["asset_types"] = d["asset_types"][:1]
        d["products"]["required_columns"] = ["sku", "name"]

    spec = small_spec(tmp_path, mutate, rows=ROWS)
    home = tmp_path / "serve-home"
    home.mkdir()
    with model_server(tiny_model, home) as (server, proc), fake_stability() as (url, calls):
        monkeypatch.setenv("DARKROOM_MODEL_SERVER_URL", server)
        monkeypatch.setenv("DARKROOM_STABILITY_API_KEY", API_KEY)
        monkeypatch.setenv("DARKROOM_STABILITY_BASE_URL", url)
        settings = Settings.from_env(catalog_url=f"sqlite:///{tmp_path / 'catalog.db'}")
        ctx = stage_ctx(spec, settings)
        validate.run(ctx)
        (batch,) = plan.run(ctx)
        with caplog.at_level(logging.WARNING, logger="darkroom"):
            # The first image made, the model server goes away.
            counts = generate.run(ctx, batch, progress=lambda n: stop_server(proc))
        qa.run(ctx, batch)
        result = track.run(ctx)
    assert counts["generated"] == 3 and counts["failed"] == 1
    with ctx.catalog.session() as s:
        rows = s.execute(select(Variant.product_id, Asset.backend, Asset.route, Asset.status,
                                Asset.failure_reason).join(Asset, Asset.variant_id == Variant.id)).all()
    made = {r.product_id: (r.backend, r.route) for r in rows if r.status != AssetStatus.failed}
    assert made == {"TER-001": ("http", "primary"), "TER-003": ("stability", "fallback"),
                    "TER-004": ("stability", "fallback")}
    (failed,) = [r for r in rows if r.status == AssetStatus.failed]
    assert failed.product_id == "TER-002" and failed.backend == "http" and failed.route == "primary"
    assert failed.failure_reason.startswith("backend_unavailable: http is down (backend_unavailable: "
                                            f"cannot reach {server}")
    assert "its routing rule allows no fallback, so it waits for the next run" in failed.failure_reason
    assert len(calls) == 2 and not any("secret prototype" in c["fields"]["prompt"] for c in calls)
    # The circuit breaker: the outage was found once in the task, not once per variant.
    assert sum("Backend http is down" in r.getMessage() for r in caplog.records) == 1
    # MLflow: which backend made the images, and why.
    run = MlflowClient(tracking_uri=settings.mlflow_tracking_uri).get_run(result["mlflow_run_id"])
    m = run.data.metrics
    assert (m["images_by_http"], m["images_by_stability"]) == (1, 2)
    assert (m["images_primary"], m["images_fallback"]) == (1, 2)


@pytest.mark.usefixtures("use_tiny_model")
def test_burst_sends_public_low_priority_work_to_the_hosted_api(tmp_path, monkeypatch):
    """Another campaign's running run keeps 3 images waiting for the GPUs: over the threshold
    of 2, the public variants of a low-priority campaign go to the hosted API (its cost in the
    dry-run plan), the confidential one stays on our GPU."""
    with fake_stability() as (url, calls):
        monkeypatch.setenv("DARKROOM_STABILITY_API_KEY", API_KEY)
        monkeypatch.setenv("DARKROOM_STABILITY_BASE_URL", url)
        settings = Settings.from_env(catalog_url=f"sqlite:///{tmp_path / 'catalog.db'}")
        (tmp_path / "busy").mkdir()
        busy = stage_ctx(small_spec(tmp_path / "busy"), settings, {"limit": 3}, run_id="manual__busy")
        validate.run(busy)
        plan.run(busy)

        def mutate(d):
            d["id"] = "burst_demo"
            d["generation"].update(priority="low", backend="local", routing=[CONFIDENTIAL],
                                   burst={"backlog_over": 2, "cost_per_image": 0.04}, variants_per_task=16)
            d["asset_types"] = d["asset_types"][:1]
            d["products"]["required_columns"] = ["sku", "name"]

        (tmp_path / "burst").mkdir()
        spec = small_spec(tmp_path / "burst", mutate, rows=ROWS)
        dry = stage_ctx(spec, settings, {"dry_run": True}, run_id="manual__dry")
        validate.run(dry)
        assert plan.run(dry) == []
        text = runs.get(dry.catalog, dry.run_pk).summary["plan"]
        assert ("Burst: 3 public variants go to stability (3 images wait for the GPU pool, over 2); "
                "extra cost up to 0.12 at 0.04 per image") in text
        ctx = stage_ctx(spec, settings, run_id="manual__1")
        validate.run(ctx)
        (batch,) = plan.run(ctx)
        assert generate.run(ctx, batch)["generated"] == 4
    with ctx.catalog.session() as s:
        made = {r.product_id: (r.backend, r.route) for r in s.execute(
            select(Variant.product_id, Asset.backend, Asset.route).join(Asset, Asset.variant_id == Variant.id)
            .where(Asset.run_pk == ctx.run_pk))}
    assert made == {"TER-001": ("stability", "burst"), "TER-002": ("local", "primary"),
                    "TER-003": ("stability", "burst"), "TER-004": ("stability", "burst")}
    assert len(calls) == 3 and not any("secret prototype" in c["fields"]["prompt"] for c in calls)


def test_burst_is_for_low_priority_campaigns():
    with pytest.raises(ValidationError, match="burst sends low-priority work to a hosted API, but "
                       "priority is 'normal'; fix: set priority: low"):
        Generation(burst={"backlog_over": 10, "cost_per_image": 0.04})
