"""Regeneration through an Airflow backfill of a scheduled campaign (summer_social, @weekly).

Airflow's own CLI against a freshly migrated Airflow DB: the DAG is serialized, then
`airflow backfill create ... --reprocess-behavior completed --max-active-runs 1 --dag-run-conf
'{"model_version": ...}'` must create one backfill run per schedule interval, each carrying
that conf, under the limit given. (The runs are not executed here: that is the scheduler's
job, and the conf is what reaches the generate stage as the model_version Param.) Also: `darkroom
up` unpauses the campaign DAGs an Airflow database already has.
"""

from __future__ import annotations

import json
import os
import sqlite3
import subprocess
import sys
from pathlib import Path

import pytest

pytestmark = pytest.mark.e2e
ROOT = Path(__file__).resolve().parents[2]
AIRFLOW = str(Path(sys.executable).with_name("airflow"))


def _airflow(env: dict, *args: str) -> subprocess.CompletedProcess:
    proc = subprocess.run([AIRFLOW, *args], env=env, capture_output=True, text=True, timeout=400, cwd=ROOT)
    assert proc.returncode == 0, f"airflow {' '.join(args)} failed:\n{proc.stdout[-3000:]}\n{proc.stderr[-3000:]}"
    return proc


@pytest.fixture(scope="module")
def airflow_home(tmp_path_factory) -> tuple[Path, dict]:
    """A migrated Airflow database with the example campaigns serialized (as the DAG
    processor writes them): paused, as Airflow makes every new DAG."""
    tmp = tmp_path_factory.mktemp("backfill")
    home = tmp / "airflow"
    env = {k: v for k, v in os.environ.items() if not k.startswith("AIRFLOW")}
    env.update({
        "AIRFLOW_HOME": str(home), "AIRFLOW__CORE__DAGS_FOLDER": str(ROOT / "dags"),
        "AIRFLOW__CORE__LOAD_EXAMPLES": "False",
        "AIRFLOW__DATABASE__SQL_ALCHEMY_CONN": f"sqlite:///{home / 'airflow.db'}",
        "DARKROOM_HOME": str(tmp / "darkroom"),
    })
    _airflow(env, "db", "migrate")
    _airflow(env, "dags", "reserialize")
    return home, env


def test_backfill_with_model_version_conf(airflow_home):
    """The command docs/regenerate.md gives, with its --max-active-runs: one run per
    interval, each with the conf, and the backfill's own limit (not Airflow's 10)."""
    home, env = airflow_home
    conf = {"model_version": "2"}
    _airflow(env, "backfill", "create", "--dag-id", "campaign__summer_social",
             "--from-date", "2026-01-05", "--to-date", "2026-01-25",
             "--reprocess-behavior", "completed", "--max-active-runs", "1",
             "--dag-run-conf", json.dumps(conf))
    with sqlite3.connect(home / "airflow.db") as db:
        rows = db.execute("select run_type, conf from dag_run where dag_id = 'campaign__summer_social'").fetchall()
        limits = db.execute("select max_active_runs from backfill where dag_id = 'campaign__summer_social'").fetchall()
    assert rows, "the backfill created no runs"
    assert {r[0] for r in rows} == {"backfill"}
    assert all(json.loads(r[1])["model_version"] == "2" for r in rows)
    assert limits == [(1,)]


def test_darkroom_up_unpauses_the_campaign_dags(airflow_home, monkeypatch):
    """`darkroom up` unpauses the campaign DAGs Airflow already has (a triggered run of a
    paused DAG stays queued), and new ones are made unpaused by its environment."""
    from darkroom_cli.app import local_stack_env, unpause_campaigns

    home, env = airflow_home

    def paused() -> dict[str, int]:
        with sqlite3.connect(home / "airflow.db") as db:
            return dict(db.execute("select dag_id, is_paused from dag where dag_id like 'campaign%'"))

    assert paused() and set(paused().values()) == {1}, paused()
    for key, value in env.items():  # as `darkroom up` sets them before it calls airflow
        monkeypatch.setenv(key, value)
    unpause_campaigns(Path(AIRFLOW).parent)
    assert set(paused().values()) == {0}, paused()
    stack = local_stack_env()
    assert stack["AIRFLOW__CORE__DAGS_ARE_PAUSED_AT_CREATION"] == "False"
    assert 2 <= int(stack["AIRFLOW__CORE__PARALLELISM"]) <= max(2, len(os.sched_getaffinity(0)))
    assert stack["AIRFLOW__DAG_PROCESSOR__PRINT_STATS_INTERVAL"] == "600"
    assert local_stack_env(keep_paused=True)["AIRFLOW__CORE__DAGS_ARE_PAUSED_AT_CREATION"] == "True"

