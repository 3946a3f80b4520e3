"""End to end through Airflow's own code path: `darkroom run` -> dag.test -> every stage.

These run the CLI in a subprocess with a fresh $DARKROOM_HOME (its own Airflow DB, catalog,
assets and MLflow store) and then read what it left: catalog rows, files, provenance,
the manifest and the MLflow run.
"""

from __future__ import annotations

import csv
import json
import os
import subprocess
import sys
import time
from pathlib import Path

import pytest
from darkroom import imaging
from darkroom.catalog import Catalog
from darkroom.catalog.tables import Asset, AssetStatus, Publication, QAResult, Review, Run
from sqlalchemy import select

pytestmark = pytest.mark.e2e
ROOT = Path(__file__).resolve().parents[2]
DARKROOM = str(Path(sys.executable).with_name("darkroom"))


def _env(home: Path, **extra) -> dict:
    # Each run gets its own Airflow home under $DARKROOM_HOME: drop any inherited AIRFLOW_*,
    # and MLFLOW_TRACKING_URI, which mlflow.set_tracking_uri leaves in this process's env.
    env = {k: v for k, v in os.environ.items() if not k.startswith(("AIRFLOW", "DARKROOM_", "MLFLOW_"))}
    env.update(DARKROOM_HOME=str(home), PYTHONUNBUFFERED="1", **extra)
    return env


@pytest.fixture(scope="module")
def tiny_model(tmp_path_factory) -> Path:
    path = tmp_path_factory.mktemp("models") / "tiny-sd"
    subprocess.run([DARKROOM, "models", "build-tiny", str(path)], check=True, capture_output=True)
    return path


def _run(home: Path, tiny: Path, *args: str, **env) -> subprocess.CompletedProcess:
    return subprocess.run([DARKROOM, "run", *args], env=_env(home, DARKROOM_TINY_MODEL=str(tiny), **env),
                          capture_output=True, text=True, timeout=900, cwd=ROOT)


@pytest.fixture(scope="module")
def tiles_run(tmp_path_factory, tiny_model):
    home = tmp_path_factory.mktemp("tiles") / "darkroom"
    proc = _run(home, tiny_model, "spring_tiles", "--approve-all")
    assert proc.returncode == 0, proc.stdout + proc.stderr
    return home, proc


def test_run_publishes_every_approved_asset(tiles_run):
    home, proc = tiles_run
    catalog = Catalog(f"sqlite:///{home / 'catalog.db'}")
    with catalog.session() as s:
        run = s.scalars(select(Run)).one()
        assets = list(s.scalars(select(Asset)))
        assert run.dag_id == "campaign__spring_tiles" and run.state == "published"
        assert run.summary["planned"] == 24  # 12 products x 1 asset type x 2 seeds
        assert len(assets) == 24
        assert {a.status for a in assets} == {AssetStatus.published}
        for a in assets:
            assert a.variant.prompt.startswith("studio product photograph of a")
            assert a.seed in (1000, 1001) and a.seed == a.variant.seed
            assert (a.model_name, a.steps, a.scheduler, a.guidance) == ("tiny-sd", 4, "ddim", 7.5)
            assert a.model_version == run.model_version and len(a.model_version) == 12
            assert (a.width, a.height, a.format) == (64, 64, "png") and len(a.sha256) == 64
            assert {q.check for q in a.qa_results} >= {"dimensions", "not_blank", "sharpness", "provenance"}
            assert all(q.passed for q in a.qa_results)
            assert [r.decision for r in a.reviews] == ["approved"]
            assert a.reviews[0].reviewer and a.reviews[0].note == "darkroom run --approve-all"
            assert sorted(d.channel for d in a.derivatives) == ["marketplace", "web_tile"]
            for d in a.derivatives:
                assert len(d.publications) == 1
                published = Path(d.publications[0].uri.removeprefix("file://"))
                assert published.is_file() and published.is_relative_to(home / "published" / "dam")
        assert s.scalar(select(Publication).limit(1)) is not None
    assert "published" in proc.stdout and "24" in proc.stdout


def test_files_carry_provenance(tiles_run):
    home, _ = tiles_run
    catalog = Catalog(f"sqlite:///{home / 'catalog.db'}")
    with catalog.session() as s:
        asset = s.scalars(select(Asset)).first()
        original = Path(asset.uri.removeprefix("file://")).read_bytes()
        prov = imaging.read_provenance(original)
        assert prov.darkroom["asset_id"] == asset.id
        assert f"Seed: {asset.seed}" in prov.parameters and "Model: tiny-sd" in prov.parameters
        assert prov.parameters.splitlines()[0] == asset.variant.prompt
        assert prov.parameters.splitlines()[1].startswith("Negative prompt: ")
        for d in asset.derivatives:
            data = Path(d.publications[0].uri.removeprefix("file://")).read_bytes()
            dprov = imaging.read_provenance(data)
            assert dprov.darkroom["asset_id"] == asset.id and dprov.darkroom["channel"] == d.channel
            assert dprov.parameters == prov.parameters
        web = next(d for d in asset.derivatives if d.channel == "web_tile")
        assert imaging.decode(Path(web.uri.removeprefix("file://")).read_bytes()).size == (512, 512)


def test_manifest_and_contact_sheet(tiles_run):
    home, _ = tiles_run
    run_dirs = list((home / "assets" / "spring_tiles").iterdir())
    assert len(run_dirs) == 1
    sheet = imaging.decode((run_dirs[0] / "contact_sheet.png").read_bytes())
    assert sheet.width > 600 and sheet.height > 300
    manifests = list((home / "published" / "dam" / "spring_tiles" / "manifests").glob("*.json"))
    assert len(manifests) == 1
    body = json.loads(manifests[0].read_text())
    assert len(body["files"]) == 48
    for row in body["files"]:
        assert Path(row["destination_uri"].removeprefix("file://")).is_file()
        assert row["approved_by"] and row["model_version"] and row["sha256"]
    with manifests[0].with_suffix(".csv").open() as fh:
        assert len(list(csv.DictReader(fh))) == 48


def test_mlflow_run_has_params_metrics_and_artifacts(tiles_run):
    home, _ = tiles_run
    from mlflow.tracking import MlflowClient

    client = MlflowClient(tracking_uri=f"sqlite:///{home / 'mlflow.db'}")
    exp = client.get_experiment_by_name("darkroom/spring_tiles")
    (run,) = client.search_runs([exp.experiment_id])
    assert run.data.tags["airflow_dag_id"] == "campaign__spring_tiles"
    assert run.data.params["steps"] == "4" and run.data.params["model_version"]
    assert run.data.metrics["images_generated"] == 24
    assert run.data.metrics["qa_pass_rate"] == 1.0
    assert run.data.metrics["published_files"] == 48
    names = {a.path for a in client.list_artifacts(run.info.run_id)}
    assert {"contact_sheet.png", "assets.json", "manifest.json"} <= names


def test_assets_search_json_has_lineage(tiles_run):
    home, _ = tiles_run
    out = subprocess.run([DARKROOM, "assets", "search", "--campaign", "spring_tiles", "--json"],
                         env=_env(home), capture_output=True, text=True, check=True)
    rows = json.loads(out.stdout)
    assert len(rows) == 24
    row = rows[0]
    for key in ("prompt", "negative_prompt", "seed", "model", "params", "qa", "review",
                "uri", "derivatives", "template_version"):
        assert row[key] not in (None, [], {}), key
    assert row["review"]["decision"] == "approved"
    assert all(d["published"] for d in row["derivatives"])


def test_rerun_generates_nothing_new(tiles_run, tiny_model):
    home, _ = tiles_run
    proc = _run(home, tiny_model, "spring_tiles", "--approve-all")
    assert proc.returncode == 0, proc.stdout + proc.stderr
    catalog = Catalog(f"sqlite:///{home / 'catalog.db'}")
    with catalog.session() as s:
        runs = list(s.scalars(select(Run).order_by(Run.id)))
        assert len(runs) == 2
        assert s.scalar(select(Asset).where(Asset.run_pk == runs[1].id)) is None
        assert len(list(s.scalars(select(Asset)))) == 24  # nothing duplicated


def test_sensor_waits_for_reviewers(tmp_path, tiny_model):
    """No --approve-all: the run defers at await_approval until decisions arrive."""
    home = tmp_path / "darkroom"
    proc = subprocess.Popen([DARKROOM, "run", "summer_social", "--conf", '{"limit": 4}'],
                            env=_env(home, DARKROOM_TINY_MODEL=str(tiny_model)),
                            stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True, cwd=ROOT)
    try:
        deadline = time.time() + 600
        log = None
        while time.time() < deadline:
            logs = list((home / "logs").glob("summer_social-*.log")) if (home / "logs").exists() else []
            if logs and "running trigger in line" in logs[0].read_text(errors="replace"):
                log = logs[0]
                break
            assert proc.poll() is None, proc.stdout.read()
            time.sleep(1)
        assert log is not None, "the approval sensor never deferred"
        time.sleep(3)  # a few trigger polls with nothing decided
        assert proc.poll() is None, "the run finished without any decision"

        catalog = Catalog(f"sqlite:///{home / 'catalog.db'}")
        with catalog.session() as s:
            waiting = [a.id for a in s.scalars(select(Asset).where(Asset.status == AssetStatus.qa_passed)
                                              .order_by(Asset.id))]
        assert len(waiting) == 4
        env = _env(home)
        subprocess.run([DARKROOM, "review", "reject", waiting[0], "--note", "off-brand", "--reviewer", "ana"],
                       env=env, check=True, capture_output=True)
        subprocess.run([DARKROOM, "review", "approve", "--all", "--campaign", "summer_social",
                        "--reviewer", "ben"], env=env, check=True, capture_output=True)
        out, _ = proc.communicate(timeout=600)
        assert proc.returncode == 0, out
    finally:
        if proc.poll() is None:
            proc.kill()
    assert "wait for a decision" in log.read_text()
    with catalog.session() as s:
        statuses = {a.id: a.status for a in s.scalars(select(Asset))}
        assert statuses.pop(waiting[0]) == AssetStatus.rejected
        assert set(statuses.values()) == {AssetStatus.published}
        rejected_review = s.scalars(select(Review).where(Review.asset_id == waiting[0])).one()
        assert (rejected_review.reviewer, rejected_review.note) == ("ana", "off-brand")
        published = list(s.scalars(select(Publication)))
        assert len(published) == 3 * 2  # 3 approved assets x feed + story
        assert not any(waiting[0] in p.uri for p in published)
        assert s.scalar(select(QAResult).limit(1)) is not None


def test_publish_emits_an_airflow_asset_event(tiles_run):
    """Downstream DAGs (a CMS sync, an ad upload) schedule on this event."""
    import sqlite3

    home, _ = tiles_run
    db = sqlite3.connect(home / "airflow" / "airflow.db")
    rows = db.execute(
        "select a.name, a.uri, e.source_dag_id, e.source_task_id from asset_event e "
        "join asset a on a.id = e.asset_id").fetchall()
    assert ("darkroom_spring_tiles_published", "darkroom://campaigns/spring_tiles/published",
            "campaign__spring_tiles", "publish") in rows
