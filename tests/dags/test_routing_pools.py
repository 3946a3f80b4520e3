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


def test_every_gpu_stage_goes_to_the_gpu_queue_and_the_rest_does_not(tmp_path, monkeypatch):
    """QA's regeneration rounds and the model upscaler are GPU tasks, as generate is; QA and
    derivatives stay on the default queue."""
    monkeypatch.setenv("DARKROOM_GPU_QUEUE", "gpu")
    monkeypatch.setenv("DARKROOM_GPU_POOL", "gpu")
    data = yaml.safe_load((CAMPAIGNS / "spring_tiles.yaml").read_text())
    root = CAMPAIGNS.parent
    data["brand"]["restricted_terms_file"] = str(root / "brand" / "restricted_terms.txt")
    data["products"]["expectations"] = str(root / "expectations" / "spring_tiles.json")
    data["qa"]["max_regenerations"] = 2
    data["generation"]["upscaler"] = "stabilityai/stable-diffusion-x4-upscaler"
    data["channels"]["web_tile"]["upscale_to"] = 2048
    (tmp_path / "spring_tiles.yaml").write_text(yaml.safe_dump(data))
    shutil.copy(CAMPAIGNS / "spring_tiles.products.csv", tmp_path)
    bag = _bag(monkeypatch, tmp_path)
    assert bag.import_errors == {}
    dag = bag.dags["campaign__spring_tiles"]
    chain = ["generate", "qa", "regenerate_1", "qa_1", "regenerate_2", "qa_2", "upscale", "postprocess"]
    for up, down in zip(chain, chain[1:], strict=False):
        assert down in dag.get_task(up).downstream_task_ids, f"{up} -> {down}"
    for task_id in chain:
        gpu = task_id.startswith(("generate", "regenerate", "upscale"))
        task = dag.get_task(task_id)
        assert (task.queue == "gpu") is gpu and (task.pool == "gpu") is gpu, (task_id, task.queue, task.pool)
    assert dag.get_task("track").queue != "gpu"
