"""The compose stack's shape, from local processes: a campaign triggered through Airflow's
REST API runs on CeleryExecutor, every GPU stage on the `gpu` worker (generate, the QA
regeneration round, the model upscaler), everything else on the default worker, and reaches
publish once a reviewer approves. The device the GPU stages measured, their GPU seconds and
the worker they ran on reach the catalog and MLflow.

Slow (a few minutes): every Airflow component, two Celery workers, PostgreSQL, Redis,
moto's S3 server and an MLflow server start from scratch.

The campaign is spring_tiles with a second asset type whose QA rubric cannot pass (a file
size no tiny image reaches), so its variants are regenerated once (and fail again), and with
the offline tiny x4 upscaler for the web tile's upscale_to.
"""

from __future__ import annotations

import time
from pathlib import Path
from urllib.parse import quote

import pytest
import yaml

from tests.conftest import unavailable
from tests.integration.stack import HOST, ROOT, LocalStack, api, catalog_url, local_stack
from tests.support.servers import ServerUnavailable

pytestmark = [pytest.mark.integration, pytest.mark.postgres]

CAMPAIGN = "spring_tiles"  # no schedule: unpausing it starts nothing by itself
DAG_ID = f"campaign__{CAMPAIGN}"
LIMIT = 4  # product 1: two hero tiles (pass QA, upscaled) and two detail shots (fail QA)
REGENERATED = 2  # the detail shots, redrawn once by regenerate_1
GPU_TASKS = ("generate", "regenerate_1", "upscale")


def write_campaign(folder: Path, upscaler: Path) -> None:
    data = yaml.safe_load((ROOT / "include/campaigns/spring_tiles.yaml").read_text())
    data["products"]["source"] = str(ROOT / "include/campaigns/spring_tiles.products.csv")
    data["products"]["expectations"] = str(ROOT / "include/expectations/spring_tiles.json")
    data["brand"]["restricted_terms_file"] = str(ROOT / "include/brand/restricted_terms.txt")
    data["asset_types"].append({"name": "detail_shot", "description": "close-up of the glaze",
                                "channels": ["marketplace"]})
    data["qa"]["max_regenerations"] = 1
    data["qa"]["asset_types"] = {"detail_shot": {"file_size": {"threshold": 10**9, "max": 10**10}}}
    data["generation"]["upscaler"] = str(upscaler)
    data["channels"]["web_tile"]["upscale_to"] = 2048
    (folder / "spring_tiles.yaml").write_text(yaml.safe_dump(data, sort_keys=False))


@pytest.fixture(scope="module")
def stack(tmp_path_factory) -> LocalStack:
    from darkroom.devtools.tiny_upscaler import build_tiny_upscaler

    workdir = tmp_path_factory.mktemp("stack")
    campaigns = workdir / "campaigns"
    campaigns.mkdir()
    write_campaign(campaigns, build_tiny_upscaler(workdir / "tiny-x4"))
    try:
        cm = local_stack(workdir / "run", extra_env={"DARKROOM_CAMPAIGNS_DIR": str(campaigns)})
        local = cm.__enter__()
    except ServerUnavailable as exc:
        unavailable(str(exc))
    try:
        yield local
    finally:
        cm.__exit__(None, None, None)


@pytest.fixture(scope="module")
def finished_run(stack: LocalStack) -> dict:
    """Trigger the campaign like the UI does, approve through the review API (the gallery's
    own JSON endpoints, served by the API server), wait for the end."""
    token = stack.token()
    dags = stack.unpause_when_parsed(DAG_ID, token, 180)
    run = api("POST", f"{dags}/{DAG_ID}/dagRuns", token, {"logical_date": None, "conf": {"limit": LIMIT}})
    run_url = f"{dags}/{DAG_ID}/dagRuns/{quote(run['dag_run_id'], safe='')}"
    started = time.monotonic()

    def task_instances() -> list[dict]:
        return api("GET", f"{run_url}/taskInstances?limit=100", token)["task_instances"]

    def deferred_for_review():
        states = {ti["task_id"]: ti["state"] for ti in task_instances()}
        if api("GET", run_url, token)["state"] == "failed":
            raise AssertionError(f"run failed before review: {states}\n{stack.logs()}")
        return states.get("await_approval") == "deferred"

    stack.wait_for("the run to wait for reviewers", deferred_for_review, 600, interval=3)
    review_api = f"{stack.api_url}/darkroom/api/runs/{DAG_ID}/{quote(run['dag_run_id'], safe='')}"
    page = api("GET", f"{review_api}/assets", token)  # one page: the run has fewer than 100 assets
    assert page["next_after"] is None and page["total"] == len(page["assets"]), page["total"]
    waiting = [a["asset_id"] for a in page["assets"] if a["status"] in ("qa_passed", "needs_review")]
    decided = api("POST", f"{review_api}/approve", token, {"asset_ids": waiting, "note": "ci"},
                  headers={"X-Darkroom-CSRF": "1"})
    assert not decided["refused"], decided
    approved = {"stdout": "".join(f"approved {d['asset_id']} as {d['reviewer']}\n"
                                  for d in decided["decided"])}

    def finished():
        state = api("GET", run_url, token)["state"]
        return state if state in ("success", "failed") else None

    state = stack.wait_for("the run to finish", finished, 420, interval=3)
    return {"state": state, "task_instances": task_instances(), "seconds": time.monotonic() - started,
            "approved": approved["stdout"], "token": token, "run_url": run_url, "run_id": run["dag_run_id"]}


def test_run_reaches_publish(finished_run, stack):
    states = {(ti["task_id"], ti["map_index"]): ti["state"] for ti in finished_run["task_instances"]}
    assert finished_run["state"] == "success", f"{states}\n{stack.logs()}"
    assert states[("publish", -1)] == "success"
    # QA may hold back some noise images of the tiny model; every one that passed was approved.
    assert 1 <= finished_run["approved"].count("approved ") <= LIMIT


def test_gpu_stages_run_on_the_gpu_worker_and_the_rest_on_the_default_worker(finished_run):
    tis = finished_run["task_instances"]
    gpu = [ti for ti in tis if ti["task_id"] in GPU_TASKS]
    others = [ti for ti in tis if ti["task_id"] not in GPU_TASKS]
    assert {ti["task_id"] for ti in gpu} == set(GPU_TASKS) and others
    for ti in gpu:
        assert (ti["queue"], ti["pool"], ti["hostname"]) == ("gpu", "gpu", "airflow-worker-gpu"), ti
    for ti in others:
        assert (ti["queue"], ti["pool"], ti["hostname"]) == ("default", "default_pool", "airflow-worker"), ti


def test_workers_logged_the_tasks_they_ran(finished_run, stack):
    """The workers' own logs agree with what Airflow recorded."""
    gpu_log = stack.processes["airflow-worker-gpu"].tail(10**7)
    default_log = stack.processes["airflow-worker"].tail(10**7)
    for task_id in GPU_TASKS:
        assert f"task_id='{task_id}'" in gpu_log and f"task_id='{task_id}'" not in default_log, task_id
    for task_id in ("validate_inputs", "expand_prompts", "qa", "qa_1", "postprocess", "track", "publish"):
        assert f"task_id='{task_id}'" in default_log and f"task_id='{task_id}'" not in gpu_log, task_id


def test_the_regeneration_and_the_upscaler_did_their_work_on_the_gpu_worker(finished_run, stack):
    """What the GPU stages recorded in the catalog: their device, dtype and seconds, measured
    on the host Airflow says ran them; the regenerated variants and the upscaled originals."""
    from darkroom.catalog import Catalog, runs
    from darkroom.catalog.tables import Asset, Variant
    from sqlalchemy import select

    catalog = Catalog(catalog_url(stack.env))
    run = runs.find_run(catalog, DAG_ID, finished_run["run_id"])
    used = runs.device_use(catalog, run.pk)
    assert {u.stage for u in used} == {"generate", "upscale"}
    assert {u.worker for u in used} == {"airflow-worker-gpu"}
    assert all(u.device == "cpu" and u.dtype == "float32" and u.seconds > 0 for u in used)
    assert sorted(u.images for u in used if u.stage == "generate") == [REGENERATED, LIMIT]
    assert [u.images for u in used if u.stage == "upscale"] == [2]
    with catalog.session() as s:
        children = list(s.scalars(select(Variant).where(Variant.attempt == 1)))
        upscaled = [a.upscaled for a in s.scalars(select(Asset).where(Asset.upscaled.is_not(None)))]
    assert len(children) == REGENERATED and {c.asset_type for c in children} == {"detail_shot"}
    assert len(upscaled) == 2 and all(u["to"] == 2048 and u["uri"].startswith("s3://") for u in upscaled)


def test_assets_landed_in_object_storage_and_mlflow(finished_run, stack):
    import boto3
    from mlflow.tracking import MlflowClient

    env = stack.env
    s3 = boto3.client("s3", endpoint_url=env["DARKROOM_S3_ENDPOINT_URL"],
                      aws_access_key_id=env["AWS_ACCESS_KEY_ID"],
                      aws_secret_access_key=env["AWS_SECRET_ACCESS_KEY"], region_name=env["AWS_DEFAULT_REGION"])
    bucket, _, prefix = env["DARKROOM_STORAGE_URL"].removeprefix("s3://").partition("/")
    keys = [o["Key"] for o in s3.list_objects_v2(Bucket=bucket, Prefix=prefix).get("Contents", [])]
    assert len([k for k in keys if "/originals/" in k]) == LIMIT + REGENERATED
    assert len([k for k in keys if "/upscaled/" in k]) == 2
    client = MlflowClient(tracking_uri=env["DARKROOM_MLFLOW_TRACKING_URI"])
    exp = client.get_experiment_by_name(f"darkroom/{CAMPAIGN}")
    (run,) = client.search_runs([exp.experiment_id])
    assert run.data.metrics["images_generated"] == LIMIT + REGENERATED
    # GPU seconds as the GPU stages recorded them on their worker (track, on the default
    # worker, probed nothing): non-zero, and what the catalog holds.
    from darkroom.catalog import Catalog, runs

    catalog = Catalog(catalog_url(env))
    used = runs.device_use(catalog, runs.find_run(catalog, DAG_ID, finished_run["run_id"]).pk)
    assert run.data.metrics["gpu_seconds"] > 0
    assert run.data.metrics["gpu_seconds"] == pytest.approx(sum(u.seconds for u in used))
    assert run.data.tags["gpu_workers"] == "airflow-worker-gpu" and run.data.tags["device"] == "cpu"
    # Artifacts went through the MLflow server to its S3 destination.
    assert s3.list_objects_v2(Bucket="mlflow").get("KeyCount", 0) > 0
    published = Path(env["DARKROOM_HOME"]) / "published" / "dam" / CAMPAIGN
    assert len(list(published.glob("*/*.*"))) >= finished_run["approved"].count("approved ")
    assert HOST in env["DARKROOM_MLFLOW_TRACKING_URI"]
