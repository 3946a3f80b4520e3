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
import time
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



HOLD_S = 20  # a write held for longer than Python's 5 s default wait, as a busy scheduler's


def test_airflow_commands_with_only_airflow_home_wait_for_a_held_write(tmp_path, monkeypatch):
    """docs/regenerate.md runs `airflow backfill create` with only AIRFLOW_HOME set, beside the
    scheduler of `darkroom up`. SQLite has one writer at a time, and with Python's default
    5 s wait the command failed with "database is locked" while the scheduler wrote (#15).
    Darkroom's Airflow home gives every `airflow` command its longer wait: a command that
    writes while another connection holds the write lock waits for it, then succeeds."""
    from darkroom.config import AIRFLOW_SQLITE_TIMEOUT_S, Settings, airflow_env, settle_airflow_config
    from darkroom_operators.local_run import migrate_airflow_db

    for key in [k for k in os.environ if k.startswith("AIRFLOW")]:
        monkeypatch.delenv(key)
    monkeypatch.setenv("DARKROOM_HOME", str(tmp_path / "darkroom"))
    settings = Settings.from_env()
    for key, value in airflow_env(settings).items():  # what `darkroom up` and `darkroom run` set
        monkeypatch.setenv(key, value)
    migrate_airflow_db()  # a new home: Airflow writes its airflow.cfg, Darkroom settles it
    home = settings.home / "airflow"
    assert not settle_airflow_config(home)  # once is enough: nothing left to change
    only_home = {k: v for k, v in os.environ.items() if not k.startswith(("AIRFLOW", "DARKROOM_"))}
    only_home["AIRFLOW_HOME"] = str(home)
    url = _airflow(only_home, "config", "get-value", "database", "sql_alchemy_conn").stdout.strip()
    assert url == f"sqlite:///{home / 'airflow.db'}?timeout={AIRFLOW_SQLITE_TIMEOUT_S}"

    writer = sqlite3.connect(home / "airflow.db", isolation_level=None)
    writer.execute("BEGIN IMMEDIATE")  # the write lock, until COMMIT
    try:
        proc = subprocess.Popen([AIRFLOW, "variables", "set", "darkroom_probe", "waited"], env=only_home,
                                cwd=ROOT, stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True)
        time.sleep(HOLD_S)
        still_waiting = proc.poll() is None
    finally:
        writer.execute("COMMIT")
        writer.close()
    out = proc.communicate(timeout=300)[0]
    assert still_waiting, f"the command ended while the write was held:\n{out[-3000:]}"
    assert proc.returncode == 0, out[-3000:]
    got = _airflow(only_home, "variables", "get", "darkroom_probe").stdout.strip().splitlines()[-1]
    assert got == "waited"
