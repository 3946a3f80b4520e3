"""Two asset types on two models in one run: hero shots with one model at its size and steps,
bulk variations with another, through the real stages (validate, plan, generate, QA,
derivatives, track) on the offline tiny pipelines."""

from __future__ import annotations

import pytest
from darkroom import ids, imaging
from darkroom.catalog import runs
from darkroom.catalog.tables import Asset, AssetStatus, PlanItem, Variant
from darkroom.config import Settings
from darkroom.stages.sequence import run_to_review
from darkroom.storage import read_uri
from mlflow import MlflowClient
from sqlalchemy import select

from tests.support.campaigns import small_spec, stage_ctx

# Noise from the tiny models passes or fails the picture checks by chance: keep the checks
# that read what generation made (size, format, provenance) and switch the rest off.
CHECKS = {"dimensions": {}, **{name: {"enabled": False} for name in
                               ("not_blank", "sharpness", "exposure", "contrast", "duplicate")}}


@pytest.fixture(scope="module")
def hero_model(tmp_path_factory):
    """A second tiny pipeline: other random weights, so another model with another checksum."""
    from darkroom.devtools.tiny_model import build_tiny_pipeline

    return build_tiny_pipeline(tmp_path_factory.mktemp("models") / "tiny-hero", seed=7)


@pytest.mark.usefixtures("use_tiny_model")
def test_two_asset_types_draw_with_two_models_in_one_run(tmp_path, hero_model):
    def two_models(data):
        data["asset_types"] = [
            {"name": "hero_tile", "description": "centred, three-quarter view", "channels": ["web_tile"],
             "generation": {"model": str(hero_model), "steps": 3, "width": 64, "height": 64}},
            {"name": "bulk_tile", "description": "flat lay", "channels": ["web_tile"],
             "generation": {"steps": 2, "width": 32, "height": 48}},
        ]
        data["generation"].update(model="tiny", steps=4, width=64, height=64, cost_per_gpu_hour=3.0)
        data["qa"] = {"checks": CHECKS}
    ctx = stage_ctx(small_spec(tmp_path, two_models), Settings.from_env(), {"limit": 4})
    batches = run_to_review(ctx)

    with ctx.catalog.session() as s:
        made = [(a, a.variant) for a in s.scalars(select(Asset).join(Variant).order_by(Variant.asset_type))]
        batch_types = {}
        for item, v in s.execute(select(PlanItem, Variant).join(Variant, PlanItem.variant_id == Variant.id)
                                 .where(PlanItem.run_pk == ctx.run_pk)):
            batch_types.setdefault(item.batch, set()).add(v.asset_type)
    run = runs.get(ctx.catalog, ctx.run_pk)
    models = run.summary["models"]
    # One batch per asset type: a generate task loads one pipeline.
    assert len(batches) == 2 and sorted(map(sorted, batch_types.values())) == [["bulk_tile"], ["hero_tile"]]
    # Two models, each recorded for its asset type; the campaign's own is the run's model.
    assert models["hero_tile"]["name"] == "tiny-hero" and models["bulk_tile"]["name"] == "tiny-sd"
    assert models["hero_tile"]["version"] != models["bulk_tile"]["version"]
    assert run.model_version == models["bulk_tile"]["version"]

    want = {"hero_tile": ("tiny-hero", 64, 64, 3), "bulk_tile": ("tiny-sd", 32, 48, 2)}
    assert sorted(v.asset_type for _, v in made) == ["bulk_tile"] * 2 + ["hero_tile"] * 2
    for a, v in made:
        name, width, height, steps = want[v.asset_type]
        version = models[v.asset_type]["version"]
        assert a.status == AssetStatus.qa_passed, (a.status, a.failure_reason)
        assert (a.model_name, a.model_version, a.width, a.height, a.steps) == (name, version, width, height, steps)
        assert (v.params["width"], v.params["height"], v.params["steps"]) == (width, height, steps)
        # Each asset's identity is its variant at its own model.
        assert a.id == ids.asset_id(v.id, version)
        # The file says the same: infotext and the darkroom record.
        prov = imaging.read_provenance(read_uri(a.uri))
        assert f"Size: {width}x{height}" in prov.parameters and f"Model: {name}" in prov.parameters
        assert f"Steps: {steps}," in prov.parameters
        assert prov.darkroom["model_version"] == version and prov.darkroom["asset_id"] == a.id

    # The plan priced each asset type at its own model, size and steps.
    estimate = run.summary["estimate"]
    assert {at: (e["to_generate"], e["model"], e["width"], e["height"], e["steps"])
            for at, e in estimate.items()} == {"hero_tile": (2, str(hero_model), 64, 64, 3),
                                              "bulk_tile": (2, "tiny", 32, 48, 2)}
    assert all(e["gpu_seconds"] > 0 and e["cost"] == pytest.approx(e["gpu_seconds"] / 3600 * 3.0)
               for e in estimate.values())
    assert "by asset type:" in run.summary["plan"]
    assert f"hero_tile: 2 with {hero_model} at 64x64, 3 steps" in run.summary["plan"]

    # MLflow: the params of each asset type.
    params = MlflowClient(tracking_uri=ctx.settings.mlflow_tracking_uri).get_run(
        runs.get(ctx.catalog, ctx.run_pk).mlflow_run_id).data.params
    assert params["hero_tile.model"] == str(hero_model) and params["bulk_tile.model"] == "tiny"
    assert params["hero_tile.model_version"] == models["hero_tile"]["version"]
    assert (params["hero_tile.size"], params["bulk_tile.size"]) == ("64x64", "32x48")
    assert (params["hero_tile.steps"], params["bulk_tile.steps"]) == ("3", "2")


@pytest.mark.usefixtures("use_tiny_model")
def test_the_model_version_param_is_a_version_of_the_campaigns_model(tmp_path, hero_model):
    from darkroom.errors import ModelError, ParamsError
    from darkroom.generation.models import local_model_digest
    from darkroom.stages import validate

    def hero_of_its_own(data):
        data["asset_types"][0]["generation"] = {"model": str(hero_model)}
        data["asset_types"].append({"name": "bulk_tile", "channels": ["web_tile"]})

    def hero_of_its_own_only(data):
        data["asset_types"][0]["generation"] = {"model": str(hero_model)}
    spec = small_spec(tmp_path, hero_of_its_own)
    tiny, hero = (local_model_digest(p)[:12] for p in (Settings.from_env().tiny_model_dir, hero_model))
    ctx = stage_ctx(spec, Settings.from_env(), {"model_version": tiny[:8]})
    validate.run(ctx)
    models = runs.get(ctx.catalog, ctx.run_pk).summary["models"]
    assert (models["hero_tile"]["version"], runs.get(ctx.catalog, ctx.run_pk).model_version) == (hero, tiny)
    # The hero's own version is not one of the campaign's model: refused, naming the Param.
    with pytest.raises(ModelError, match="Param `model_version`") as info:
        validate.run(stage_ctx(spec, Settings.from_env(), {"model_version": hero[:8]}, run_id="manual__2"))
    assert "is not a version of tiny-sd" in str(info.value)
    # No asset type draws with the campaign's model: the Param would change nothing.
    (tmp_path / "only").mkdir()
    only_hero = small_spec(tmp_path / "only", hero_of_its_own_only)
    with pytest.raises(ParamsError, match="every asset type draws with a model of its own"):
        validate.run(stage_ctx(only_hero, Settings.from_env(), {"model_version": tiny[:8]}, run_id="manual__3"))
