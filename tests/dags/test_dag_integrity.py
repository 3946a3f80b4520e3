"""DAG integrity: every campaign DAG imports, has tags and retries, and parsing stays cheap.

Modelled on the astro CLI template's tests/dags/test_dag_example.py.
"""

from __future__ import annotations

import json
import shutil
import subprocess
import sys
import textwrap
from pathlib import Path

import pytest

from tests.support import airflow_env  # noqa: F401  (must precede airflow imports)

ROOT = Path(__file__).resolve().parents[2]
DAG_FILE = ROOT / "dags" / "campaigns.py"
CAMPAIGNS = ROOT / "include" / "campaigns"


def _bag(monkeypatch, campaigns_dir: Path | None = None):
    from airflow.dag_processing.dagbag import DagBag

    if campaigns_dir is not None:
        monkeypatch.setenv("DARKROOM_CAMPAIGNS_DIR", str(campaigns_dir))
    return DagBag(dag_folder=str(DAG_FILE))


@pytest.fixture(scope="module")
def dagbag():
    from airflow.dag_processing.dagbag import DagBag

    return DagBag(dag_folder=str(DAG_FILE))


def test_no_import_errors(dagbag):
    assert dagbag.import_errors == {}


def test_one_dag_per_example_spec(dagbag):
    import yaml

    ids = {yaml.safe_load(p.read_text())["id"] for p in CAMPAIGNS.glob("*.yaml")}
    assert len(ids) >= 2
    assert set(dagbag.dag_ids) == {f"campaign__{i}" for i in ids}


@pytest.fixture(params=["campaign__spring_tiles", "campaign__summer_social"])
def dag(request, dagbag):
    return dagbag.dags[request.param]


def test_tags_and_retries(dag):
    assert "darkroom" in dag.tags
    assert any(t.startswith("campaign:") for t in dag.tags)
    for task in dag.tasks:
        assert task.retries >= 2, f"{task.task_id} has retries={task.retries}"


def test_doc_md_is_the_brief(dag):
    assert dag.doc_md and "Spec:" in dag.doc_md
    assert len(dag.doc_md.splitlines()) > 2


def test_stage_shape(dag):
    tasks = {t.task_id: t for t in dag.tasks}
    assert set(tasks) == {"validate_inputs", "expand_prompts", "generate", "qa", "postprocess",
                          "track", "await_approval", "publish"}
    chain = ["validate_inputs", "expand_prompts", "generate", "qa", "postprocess", "track",
             "await_approval", "publish"]
    for up, down in zip(chain, chain[1:], strict=False):
        assert down in tasks[up].downstream_task_ids, f"{up} -> {down} missing"
    from airflow.sdk.definitions.taskgroup import MappedTaskGroup

    # The batch stages are one mapped task group over expand_prompts' batches (never over
    # single images): batch k's qa waits for batch k's generate only, so batches stream.
    group = tasks["generate"].task_group
    assert isinstance(group, MappedTaskGroup) and group.group_id == "batch"
    for mapped in ("generate", "qa", "postprocess"):
        assert tasks[mapped].task_group is group, f"{mapped} must map over batches"
    assert tasks["qa"].upstream_task_ids == {"generate"}
    assert tasks["postprocess"].upstream_task_ids == {"qa"}
    assert type(tasks["generate"]).__name__ == "GenerateImagesOperator"
    assert tasks["publish"].outlets, "publish must emit an Airflow Asset"


def test_params_for_ui_triggers(dag):
    assert set(dag.params.keys()) >= {"model_version", "limit", "seed_offset", "dry_run"}
    assert dag.params["dry_run"] is False
    assert dag.params["seed_offset"] == 0


def test_trigger_form_explains_each_param(dagbag):
    """A marketer starting a regeneration reads what each Param does, what it takes and its
    default in the trigger form (Airflow renders title, description and the JSON Schema)."""
    dag = dagbag.dags["campaign__summer_social"]
    for name in ("model_version", "limit", "seed_offset", "dry_run", "variants"):
        param = dag.params.get_param(name)
        assert param.schema.get("title") and len(param.description or "") > 30, name
    mv = dag.params.get_param("model_version")
    assert mv.value is None and mv.schema["type"] == ["null", "string"]
    assert "Leave empty for the campaign's own model" in mv.description
    assert f"The spec's model: {load_spec_model('summer_social')}." in mv.description
    assert dag.params.get_param("limit").schema["minimum"] == 1


def load_spec_model(campaign: str) -> str:
    from darkroom.spec import load_spec

    return load_spec(CAMPAIGNS / f"{campaign}.yaml").spec.generation.model


def test_max_active_runs_comes_from_the_spec(dagbag, tmp_path, monkeypatch):
    """Runs waiting for reviewers count as active in Airflow: the default leaves room for a
    refresh while one waits, and a spec can set its own."""
    assert dagbag.dags["campaign__summer_social"].max_active_runs == 4
    folder = tmp_path / "campaigns"
    folder.mkdir()
    for f in ("summer_social.yaml", "summer_social.products.csv"):
        shutil.copy(CAMPAIGNS / f, folder / f)
    spec = folder / "summer_social.yaml"
    spec.write_text(spec.read_text() + "\nmax_active_runs: 2\n")
    bag = _bag(monkeypatch, folder)
    assert not bag.import_errors, bag.import_errors
    assert bag.dags["campaign__summer_social"].max_active_runs == 2


def test_schedule_comes_from_spec(dagbag):
    weekly = dagbag.dags["campaign__summer_social"].timetable
    assert type(weekly).__name__ == "CronTriggerTimetable"
    assert weekly.expression == "0 0 * * 0"  # @weekly
    assert type(dagbag.dags["campaign__spring_tiles"].timetable).__name__ == "NullTimetable"


def test_broken_spec_is_an_import_error_and_others_still_load(tmp_path, monkeypatch):
    shutil.copy(CAMPAIGNS / "spring_tiles.yaml", tmp_path / "spring_tiles.yaml")
    shutil.copy(CAMPAIGNS / "spring_tiles.products.csv", tmp_path / "spring_tiles.products.csv")
    (tmp_path / "broken.yaml").write_text(
        (CAMPAIGNS / "summer_social.yaml").read_text()
        .replace("id: summer_social", "id: broken_one")
        .replace("steps: 3", "steps: 0")
        .replace("source: summer_social.products.csv", f"source: {CAMPAIGNS / 'summer_social.products.csv'}")
    )
    # rewrite the relative restricted-terms path of the copied good spec
    good = tmp_path / "spring_tiles.yaml"
    good.write_text(good.read_text().replace("../brand/", f"{ROOT / 'include' / 'brand'}/"))
    bag = _bag(monkeypatch, tmp_path)
    assert "campaign__spring_tiles" in bag.dag_ids
    assert "campaign__broken_one" not in bag.dag_ids
    assert len(bag.import_errors) == 1
    message = next(iter(bag.import_errors.values()))
    assert str(tmp_path / "broken.yaml") in message  # the file
    assert "generation.steps" in message  # the field
    assert "= 0" in message  # the value
    assert "greater than or equal to 1" in message  # the fix


HEAVY = ("torch", "diffusers", "transformers", "great_expectations", "mlflow", "numpy", "PIL",
         "imagehash", "sqlalchemy")
#: What the DAG file may import of ours at parse time: the spec, the settings, the routing
#: rules (with the light types they name) and the Airflow adapters.
PARSE_TIME_MODULES = {"darkroom", "darkroom.config", "darkroom.errors", "darkroom.spec", "darkroom.generation",
                      "darkroom.generation.routing", "darkroom.generation.types", "darkroom.generation.models",
                      "darkroom.generation.families", "darkroom_operators", "darkroom_operators.approval",
                      "darkroom_operators.generate", "darkroom_operators.hooks",
                      "darkroom_operators.failures", "darkroom.params", "darkroom.ids",
                      # what the spec loads with (pathlib, Jinja2 and PyYAML only)
                      "darkroom.confine", "darkroom.sandbox", "darkroom.yaml_safe"}


def test_parsing_does_no_expensive_work():
    """In a clean interpreter: loading every example spec (what the factory does per campaign)
    imports none of the heavy libraries, SQLAlchemy included; then the DAG file imports none
    beyond what Airflow's task SDK brings itself (it brings SQLAlchemy), and of ours only the
    light modules: no catalog, no stage, no engine, no model code."""
    code = textwrap.dedent(f"""
        import json, runpy, sys
        from darkroom.config import Settings
        from darkroom.generation.routing import pool_for
        from darkroom.spec import load_spec, spec_files
        from pathlib import Path
        specs = [load_spec(p) for p in spec_files(Path({str(CAMPAIGNS)!r}))]
        routes = [Settings.from_env().gpu_routing(s.spec.generation.queue, pool_for(s.spec)) for s in specs]
        after_specs = [m for m in {HEAVY!r} if m in sys.modules]
        import airflow.sdk
        before_dag = set(sys.modules)
        runpy.run_path({str(DAG_FILE)!r})
        added = set(sys.modules) - before_dag
        print(json.dumps({{"specs": len(specs), "after_specs": after_specs,
                          "heavy_added": [m for m in {HEAVY!r} if m in added],
                          "ours": sorted(m for m in sys.modules if m.startswith("darkroom"))}}))
    """)
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, check=True,
                         cwd=ROOT, env={**__import__("os").environ})
    result = json.loads(out.stdout.strip().splitlines()[-1])
    assert result["specs"] >= 2
    assert result["after_specs"] == [], "loading the specs imported " + ", ".join(result["after_specs"])
    assert result["heavy_added"] == [], "the DAG file imported " + ", ".join(result["heavy_added"])
    assert set(result["ours"]) <= PARSE_TIME_MODULES, sorted(set(result["ours"]) - PARSE_TIME_MODULES)
