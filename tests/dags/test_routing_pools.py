"""The generate tasks' Airflow pool comes from the spec's routing rules."""

from __future__ import annotations

import shutil
from pathlib import Path

import yaml

from tests.dags.test_dag_integrity import _bag
from tests.support import airflow_env  # noqa: F401  (must precede airflow imports)

CAMPAIGNS = Path(__file__).resolve().parents[2] / "include" / "campaigns"


def test_high_priority_generate_tasks_run_in_their_own_pool(tmp_path, monkeypatch):
    monkeypatch.delenv("DARKROOM_GPU_POOL", raising=False)
    data = yaml.safe_load((CAMPAIGNS / "spring_tiles.yaml").read_text())
    root = CAMPAIGNS.parent
    data["brand"]["restricted_terms_file"] = str(root / "brand" / "restricted_terms.txt")
    data["products"]["expectations"] = str(root / "expectations" / "spring_tiles.json")
    data["generation"].update(priority="high", pool="gpu",
                              routing=[{"when": {"priority": "high"}, "pool": "gpu_high"}])
    (tmp_path / "spring_tiles.yaml").write_text(yaml.safe_dump(data))
    shutil.copy(CAMPAIGNS / "spring_tiles.products.csv", tmp_path)
    bag = _bag(monkeypatch, tmp_path)
    assert bag.import_errors == {}
    dag = bag.dags["campaign__spring_tiles"]
    assert dag.get_task("generate").pool == "gpu_high"
    assert dag.get_task("postprocess").pool != "gpu_high"  # only the GPU stage is routed
