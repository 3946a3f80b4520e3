"""Model profiles in a real MLflow registry, tracking into a real MLflow server, and
regenerating a campaign with a newly promoted profile version (stages called directly).

One module-scoped scenario keeps the slow parts (two tiny pipelines, one MLflow server,
two campaign runs) to one pass; the tests then read what it left.
"""

from __future__ import annotations

import json
import shutil
from pathlib import Path

import pytest
import yaml
from darkroom.catalog import Catalog, lineage, reviews
from darkroom.catalog.tables import Asset, QAResult, Run
from darkroom.config import Settings
from darkroom.devtools.tiny_model import build_tiny_pipeline
from darkroom.errors import ModelError
from darkroom.generation import profiles
from darkroom.generation.resolve import resolve_model
from darkroom.stages import plan, publish
from darkroom.stages.context import RunContext
from darkroom.stages.sequence import run_to_review
from sqlalchemy import select

ROOT = Path(__file__).resolve().parents[2]
PROFILE = "social_tiny"


@pytest.fixture(scope="module")
def scenario(tmp_path_factory, mlflow_server):
    """Register v1, run the campaign, promote v2, regenerate; return what tests need."""
    mp = pytest.MonkeyPatch()
    base = tmp_path_factory.mktemp("regen")
    home = base / "home"
    mp.setenv("DARKROOM_HOME", str(home))
    mp.setenv("DARKROOM_MLFLOW_TRACKING_URI", mlflow_server)
    for name in ("DARKROOM_CATALOG_URL", "DARKROOM_STORAGE_URL", "MLFLOW_TRACKING_URI"):
        mp.delenv(name, raising=False)
    mp.setenv("NO_PROXY", "127.0.0.1,localhost")
    try:
        model_a = build_tiny_pipeline(base / "tiny-a")
        model_b = build_tiny_pipeline(base / "tiny-b", seed=1)
        spec_dir = base / "campaigns"
        spec_dir.mkdir()
        data = yaml.safe_load((ROOT / "include/campaigns/summer_social.yaml").read_text())
        data["products"]["source"] = str(ROOT / "include/campaigns" / data["products"]["source"])
        data["generation"]["model"] = f"models:/{PROFILE}@champion"
        # The profile supplies the scheduler and steps: the spec must not set them.
        data["generation"].pop("scheduler", None)
        data["generation"].pop("steps", None)
        # The tiny model draws near-identical noise: the near-duplicate check would fail all but one.
        data.setdefault("qa", {}).setdefault("checks", {})["duplicate"] = {"enabled": False}
        spec = spec_dir / "summer_social.yaml"
        spec.write_text(yaml.safe_dump(data))
        settings = Settings.from_env()

        v1 = profiles.register(settings, PROFILE, str(model_a), scheduler="euler", defaults={"steps": 2})
        profiles.promote(settings, PROFILE, v1.version, "champion")
        run1 = _run_all(spec, "manual__first", {"limit": 3})
        v2 = profiles.register(settings, PROFILE, str(model_b), scheduler="euler", defaults={"steps": 2})
        profiles.promote(settings, PROFILE, v2.version, "challenger")
        profiles.promote(settings, PROFILE, v2.version, "champion")
        run2 = _run_all(spec, "manual__regen", {"limit": 3})
        yield {"settings": settings, "spec": spec, "v1": v1, "v2": v2, "run1": run1, "run2": run2,
               "catalog": Catalog(settings.catalog_url), "model_a": model_a, "uri": mlflow_server}
    finally:
        mp.undo()


def _run_all(spec: Path, run_id: str, conf: dict) -> dict:
    ctx = RunContext.open(spec, "campaign__summer_social", run_id, conf)
    run_to_review(ctx)
    with ctx.catalog.session() as s:
        tracked = {"mlflow_run_id": s.get(Run, ctx.run_pk).mlflow_run_id}  # what track recorded
    waiting = [a.id for a in reviews.waiting(ctx.catalog, run_id=run_id)]
    for asset_id in waiting:
        reviews.decide(ctx.catalog, asset_id, "approve", "ana", "ok")
    published = publish.run(ctx, {"approved": len(waiting)})  # adds the outcome to MLflow
    with ctx.catalog.session() as s:
        statuses = dict(s.execute(select(Asset.id, Asset.status).where(Asset.run_pk == ctx.run_pk)).all())
    return {"statuses": statuses, "ctx_run_pk": ctx.run_pk, "mlflow_run_id": tracked["mlflow_run_id"], "reviewed": waiting,
            "published": published}


def _client(uri: str):
    from mlflow import MlflowClient

    return MlflowClient(tracking_uri=uri, registry_uri=uri)


def test_registry_aliases_and_history(scenario):
    c = _client(scenario["uri"])
    v1, v2 = scenario["v1"].version, scenario["v2"].version
    assert c.get_model_version_by_alias(PROFILE, "champion").version == v2
    assert c.get_model_version_by_alias(PROFILE, "challenger").version == v2
    mv = c.get_model_version(PROFILE, v1)
    stored = profiles.Profile.from_json(mv.tags[profiles.PROFILE_TAG])
    assert stored.base == str(scenario["model_a"].resolve()) and stored.scheduler == "euler"
    assert stored.checksum and len(stored.checksum) == 64 and stored.defaults == {"steps": 2}
    info = profiles.describe(scenario["settings"], PROFILE)
    assert info["history"]["champion"] == [v1, v2]


def test_rollback_moves_the_alias_back_and_keeps_history(scenario, mlflow_uri):
    settings = Settings.from_env()
    v1 = profiles.register(settings, "rollback_me", str(scenario["model_a"]))
    v2 = profiles.register(settings, "rollback_me", str(scenario["model_a"]))
    profiles.promote(settings, "rollback_me", v1.version)
    assert profiles.promote(settings, "rollback_me", v2.version) == v1.version
    assert profiles.rollback(settings, "rollback_me") == v1.version
    c = _client(mlflow_uri)
    assert c.get_model_version_by_alias("rollback_me", "champion").version == v1.version
    events = profiles.describe(settings, "rollback_me")["events"]
    assert [e["action"] for e in events] == ["promote", "promote", "rollback"]
    with pytest.raises(ModelError, match="no earlier version"):
        profiles.rollback(settings, "rollback_me")


def test_resolve_model_accepts_models_uris(scenario):
    settings = scenario["settings"]
    ref = resolve_model(f"models:/{PROFILE}@champion", None, settings)
    assert (ref.name, ref.version, ref.profile) == (PROFILE, scenario["v2"].version, PROFILE)
    assert ref.identity == f"models:/{PROFILE}/{scenario['v2'].version}"
    # The model_version Param picks a version number or an alias instead.
    assert resolve_model(f"models:/{PROFILE}@champion", None, settings, "1").version == "1"
    with pytest.raises(ModelError, match=r"has no alias @nope in the registry .*\(it has versions 1, 2; "
                                         r"aliases .*champion -> 2"):
        resolve_model(f"models:/{PROFILE}@nope", None, settings)
    with pytest.raises(ModelError, match="is not a profile reference"):
        resolve_model("models:/bad name", None, settings)


def test_pyfunc_predict_generates_with_the_profile(scenario):
    import base64
    import io

    import mlflow
    import pandas as pd
    from PIL import Image

    mlflow.set_tracking_uri(scenario["uri"])
    model = mlflow.pyfunc.load_model(f"models:/{PROFILE}/{scenario['v1'].version}")
    out = model.predict(pd.DataFrame([{"prompt": "a can", "seed": 3, "width": 64, "height": 64}]))
    img = Image.open(io.BytesIO(base64.b64decode(out.loc[0, "image_png"])))
    assert img.size == (64, 64)


def test_regenerated_assets_are_new_versions_linked_to_the_old(scenario):
    catalog, v1, v2 = scenario["catalog"], scenario["v1"].version, scenario["v2"].version
    with catalog.session() as s:
        runs = {r.run_id: r for r in s.scalars(select(Run))}
        assets = list(s.scalars(select(Asset).order_by(Asset.version)))
    assert runs["manual__first"].model_version == v1 and runs["manual__regen"].model_version == v2
    assert runs["manual__regen"].model_ref == f"models:/{PROFILE}/{v2}"
    old = [a for a in assets if a.model_version == v1]
    new = [a for a in assets if a.model_version == v2]
    assert len(old) == len(new) == 3
    by_variant = {a.variant_id: a for a in old}
    for a in new:
        prior = by_variant[a.variant_id]
        assert (a.version, a.supersedes_id) == (prior.version + 1, prior.id)
        assert a.model_name == PROFILE and a.sha256 != prior.sha256  # another model drew it
        assert (a.scheduler, a.steps) == ("euler", 2)  # the profile's defaults
        # The old version stays as run 1 left it (published, or whatever QA made of it).
        assert prior.status == scenario["run1"]["statuses"][prior.id]
        history = lineage.versions(catalog, a.variant_id)
        assert [(h["version"], h["model_version"], h["supersedes"]) for h in history] == [
            (1, v1, None), (2, v2, prior.id)]


def test_qa_review_and_publish_run_again_for_the_new_version_only(scenario):
    catalog = scenario["catalog"]
    run2 = scenario["run2"]
    with catalog.session() as s:
        new_ids = {a.id for a in s.scalars(select(Asset).where(Asset.run_pk == run2["ctx_run_pk"]))}
        old_qa = s.scalars(select(QAResult).join(Asset).where(Asset.run_pk != run2["ctx_run_pk"])).all()
    assert run2["reviewed"] and set(run2["reviewed"]) <= new_ids
    assert old_qa and all(q.asset_id not in new_ids for q in old_qa)
    manifest = json.loads(Path(run2["published"]["manifest"].removeprefix("file://")).read_text())
    assert {f["asset_id"] for f in manifest["files"]} == set(run2["reviewed"])
    found = lineage.search(catalog, model_profile=PROFILE, model_version=scenario["v2"].version,
                           status="published")
    assert {r["asset_id"] for r in found} == set(run2["reviewed"])


def test_mlflow_run_has_tags_params_metrics_and_artifacts(scenario):
    c = _client(scenario["uri"])
    run = c.get_run(scenario["run2"]["mlflow_run_id"])
    exp = c.get_experiment(run.info.experiment_id)
    assert exp.name == "darkroom/summer_social"
    tags, params, metrics = run.data.tags, run.data.params, run.data.metrics
    assert tags["airflow_dag_id"] == "campaign__summer_social" and tags["airflow_run_id"] == "manual__regen"
    assert tags["campaign"] == "summer_social" and len(tags["spec_hash"]) == 64 and tags["git_commit"]
    assert params["model_profile"] == PROFILE and params["model_profile_version"] == scenario["v2"].version
    assert params["base_model"].endswith("tiny-b") and len(params["base_checksum"]) == 64
    assert (params["scheduler"], params["steps"], params["size"]) == ("euler", "2", "64x64")
    assert json.loads(params["loras"]) == [] and params["template_version"]
    assert metrics["variants_planned"] == 3 and metrics["images_generated"] == 3
    assert 0 <= metrics["qa_pass_rate"] <= 1 and metrics["approved"] == len(scenario["run2"]["reviewed"])
    assert metrics["images_per_second"] > 0 and "estimated_cost" in metrics and "gpu_seconds" in metrics
    names = {f.path for f in c.list_artifacts(run.info.run_id)}
    assert {"contact_sheet.png", "validation.html", "assets.json", "manifest.json", "samples"} <= names
    samples = c.list_artifacts(run.info.run_id, "samples")
    assert len(samples) == 3
    table = json.loads(Path(c.download_artifacts(run.info.run_id, "assets.json")).read_text())
    assert len(table["data"]) == 3 and "supersedes" in table["columns"]
    # One MLflow run per DAG run: tracking again logs into the same run.
    ctx = RunContext.open(scenario["spec"], "campaign__summer_social", "manual__regen", {"limit": 3},
                          settings=scenario["settings"])
    from darkroom import tracking
    from darkroom.stages import track

    assert tracking.find_mlflow_run(ctx.settings, ctx.spec.id, ctx.dag_id, ctx.run_id) == run.info.run_id
    assert track.run(ctx)["mlflow_run_id"] == run.info.run_id


def test_compare_puts_contact_sheets_side_by_side(scenario, tmp_path):
    from PIL import Image

    out = tmp_path / "cmp.png"
    result = lineage.compare_runs(scenario["catalog"], "manual__first", scenario["run2"]["mlflow_run_id"], out)
    rows = {name: (a, b) for name, a, b in result["rows"]}
    assert rows["model_version"] == (scenario["v1"].version, scenario["v2"].version)
    assert rows["assets"] == (3, 3)
    sheets = [Image.open(Path(r["contact_sheet"].removeprefix("file://"))) for r in (result["a"], result["b"])]
    assert Image.open(out).width == sum(s.width for s in sheets) + 16


def test_checksum_mismatch_is_refused(scenario, tmp_path, mlflow_uri):
    settings = Settings.from_env()
    copy = tmp_path / "tiny-copy"
    shutil.copytree(scenario["model_a"], copy)
    rp = profiles.register(settings, "drifting", str(copy))
    (copy / "scheduler" / "scheduler_config.json").write_text("{}")
    with pytest.raises(ModelError, match="register the new weights as a new version"):
        resolve_model(f"models:/drifting/{rp.version}", None, settings)


def test_regenerate_where_narrows_the_run_to_matching_variants(scenario):
    """`darkroom regenerate --where ...` passes the matching variant ids as conf."""
    from darkroom.catalog.lineage import search_query

    catalog = scenario["catalog"]
    with catalog.session() as s:
        rows = s.execute(search_query(campaign="summer_social", run_id="manual__first")).all()
    wanted = sorted({a.variant_id for a, _run in rows})[:1]
    ctx = RunContext.open(scenario["spec"], "campaign__summer_social", "manual__where",
                                 {"model_version": "1", "variants": wanted, "dry_run": True},
                                 settings=scenario["settings"])
    assert plan.run(ctx) == []  # dry run: plans only
    with catalog.session() as s:
        assert s.get(Run, ctx.run_pk).summary["planned"] == 1
