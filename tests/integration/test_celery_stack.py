"""The compose stack's shape, from local processes: a campaign triggered through Airflow's
REST API runs on CeleryExecutor, generate on the `gpu` worker, everything else on the
default worker, and reaches publish once a reviewer approves.

Slow (a few minutes): every Airflow component, two Celery workers, PostgreSQL, Redis,
moto's S3 server and an MLflow server start from scratch.
"""

from __future__ import annotations

import time
from pathlib import Path
from urllib.parse import quote

import pytest

from tests.conftest import unavailable
from tests.integration.stack import HOST, LocalStack, api, local_stack
from tests.support.servers import ServerUnavailable

pytestmark = [pytest.mark.integration, pytest.mark.postgres]

CAMPAIGN = "spring_tiles"  # no schedule: unpausing it starts nothing by itself
DAG_ID = f"campaign__{CAMPAIGN}"
LIMIT = 4


@pytest.fixture(scope="module")
def stack(tmp_path_factory) -> LocalStack:
    workdir = tmp_path_factory.mktemp("stack")
    try:
        cm = local_stack(workdir)
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
    waiting = [a["asset_id"] for a in api("GET", f"{review_api}/assets", token)
               if a["status"] in ("qa_passed", "needs_review")]
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
            "approved": approved["stdout"], "token": token, "run_url": run_url}


def test_run_reaches_publish(finished_run, stack):
    states = {(ti["task_id"], ti["map_index"]): ti["state"] for ti in finished_run["task_instances"]}
    assert finished_run["state"] == "success", f"{states}\n{stack.logs()}"
    assert states[("publish", -1)] == "success"
    # QA may hold back some noise images of the tiny model; every one that passed was approved.
    assert 1 <= finished_run["approved"].count("approved ") <= LIMIT


def test_generate_runs_on_the_gpu_worker_and_the_rest_on_the_default_worker(finished_run):
    tis = finished_run["task_instances"]
    generate = [ti for ti in tis if ti["task_id"] == "generate"]
    others = [ti for ti in tis if ti["task_id"] != "generate"]
    assert generate and others
    for ti in generate:
        assert (ti["queue"], ti["pool"], ti["hostname"]) == ("gpu", "gpu", "airflow-worker-gpu"), ti
    for ti in others:
        assert (ti["queue"], ti["pool"], ti["hostname"]) == ("default", "default_pool", "airflow-worker"), ti


def test_workers_logged_the_tasks_they_ran(finished_run, stack):
    """The workers' own logs agree with what Airflow recorded."""
    gpu_log = stack.processes["airflow-worker-gpu"].tail(10**7)
    default_log = stack.processes["airflow-worker"].tail(10**7)
    assert "task_id='generate'" in gpu_log
    assert "task_id='generate'" not in default_log
    for task_id in ("validate_inputs", "expand_prompts", "qa", "postprocess", "track", "publish"):
        assert f"task_id='{task_id}'" in default_log and f"task_id='{task_id}'" not in gpu_log, task_id


def test_assets_landed_in_object_storage_and_mlflow(finished_run, stack):
    import boto3
    from mlflow.tracking import MlflowClient

    env = stack.env
    s3 = boto3.client("s3", endpoint_url=env["DARKROOM_S3_ENDPOINT_URL"],
                      aws_access_key_id=env["AWS_ACCESS_KEY_ID"],
                      aws_secret_access_key=env["AWS_SECRET_ACCESS_KEY"], region_name=env["AWS_DEFAULT_REGION"])
    bucket, _, prefix = env["DARKROOM_STORAGE_URL"].removeprefix("s3://").partition("/")
    keys = [o["Key"] for o in s3.list_objects_v2(Bucket=bucket, Prefix=prefix).get("Contents", [])]
    assert len([k for k in keys if "/originals/" in k]) == LIMIT
    client = MlflowClient(tracking_uri=env["DARKROOM_MLFLOW_TRACKING_URI"])
    exp = client.get_experiment_by_name(f"darkroom/{CAMPAIGN}")
    (run,) = client.search_runs([exp.experiment_id])
    assert run.data.metrics["images_generated"] == LIMIT
    # Artifacts went through the MLflow server to its S3 destination.
    assert s3.list_objects_v2(Bucket="mlflow").get("KeyCount", 0) > 0
    published = Path(env["DARKROOM_HOME"]) / "published" / "dam" / CAMPAIGN
    assert len(list(published.glob("*/*.*"))) >= finished_run["approved"].count("approved ")
    assert HOST in env["DARKROOM_MLFLOW_TRACKING_URI"]
