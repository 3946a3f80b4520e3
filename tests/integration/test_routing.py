"""Routing: generate goes to the GPU queue and pool, from the spec or the deployment; the
other stages stay on the default queue; the embedded default routes nothing."""

from __future__ import annotations

from pathlib import Path

import pytest
import yaml

from tests.support import airflow_env  # noqa: F401  (must precede airflow imports)

ROOT = Path(__file__).resolve().parents[2]
DAG_FILE = ROOT / "dags" / "campaigns.py"
CAMPAIGNS = ROOT / "include" / "campaigns"
DAG_ID = "campaign__spring_tiles"


def _dag(monkeypatch, campaigns_dir: Path = CAMPAIGNS, **env: str):
    from airflow.dag_processing.dagbag import DagBag

    for key in ("DARKROOM_GPU_QUEUE", "DARKROOM_GPU_POOL"):
        monkeypatch.delenv(key, raising=False)
    for key, value in env.items():
        monkeypatch.setenv(key, value)
    monkeypatch.setenv("DARKROOM_CAMPAIGNS_DIR", str(campaigns_dir))
    bag = DagBag(dag_folder=str(DAG_FILE))
    assert bag.import_errors == {}
    return bag.dags[DAG_ID]  # the parsed DAG; get_dag() would ask the metadata DB


def _routes(dag) -> dict[str, tuple[str, str]]:
    return {t.task_id: (t.queue, t.pool) for t in dag.tasks}


def test_embedded_default_routes_nothing(monkeypatch):
    from airflow.configuration import conf

    default_queue = conf.get("operators", "default_queue")
    routes = _routes(_dag(monkeypatch))
    assert set(routes.values()) == {(default_queue, "default_pool")}, routes


def test_deployment_sends_generate_to_the_gpu_queue_and_pool(monkeypatch):
    routes = _routes(_dag(monkeypatch, DARKROOM_GPU_QUEUE="gpu", DARKROOM_GPU_POOL="gpu"))
    assert routes.pop("generate") == ("gpu", "gpu")
    assert {q for q, _ in routes.values()} == {"default"} and {p for _, p in routes.values()} == {"default_pool"}
    assert {"qa", "postprocess", "publish", "await_approval"} <= set(routes)


def test_spec_routing_wins_over_the_deployment(monkeypatch, tmp_path):
    for f in CAMPAIGNS.glob("spring_tiles*"):
        (tmp_path / f.name).write_bytes(f.read_bytes())
    spec = yaml.safe_load((CAMPAIGNS / "spring_tiles.yaml").read_text())
    spec["generation"].update(queue="a100", pool="a100_slots")
    spec["brand"]["restricted_terms_file"] = str(CAMPAIGNS.parent / "brand" / "restricted_terms.txt")
    spec["products"]["expectations"] = None
    (tmp_path / "spring_tiles.yaml").write_text(yaml.safe_dump(spec))
    routes = _routes(_dag(monkeypatch, tmp_path, DARKROOM_GPU_QUEUE="gpu", DARKROOM_GPU_POOL="gpu"))
    assert routes["generate"] == ("a100", "a100_slots")
    assert routes["qa"][0] == "default"


@pytest.mark.parametrize(("spec", "env", "expected"), [
    ((None, None), {}, {}),
    ((None, None), {"DARKROOM_GPU_QUEUE": "gpu"}, {"queue": "gpu"}),
    (("q", "p"), {"DARKROOM_GPU_QUEUE": "gpu", "DARKROOM_GPU_POOL": "gpu"}, {"queue": "q", "pool": "p"}),
    ((None, None), {"DARKROOM_GPU_QUEUE": "", "DARKROOM_GPU_POOL": "gpu"}, {"pool": "gpu"}),
], ids=["nothing", "env-queue", "spec-wins", "empty-env-ignored"])
def test_gpu_routing(monkeypatch, spec, env, expected):
    from darkroom.config import Settings

    for key in ("DARKROOM_GPU_QUEUE", "DARKROOM_GPU_POOL"):
        monkeypatch.delenv(key, raising=False)
    for key, value in env.items():
        monkeypatch.setenv(key, value)
    assert Settings.from_env().gpu_routing(*spec) == expected
