"""Regeneration through an Airflow backfill of a scheduled campaign (summer_social, @weekly).

Airflow's own CLI against a freshly migrated Airflow DB: the DAG is serialized, then
`airflow backfill create ... --reprocess-behavior completed --dag-run-conf '{"model_version":
...}'` must create one backfill run per schedule interval, each carrying that conf. (The
runs are not executed here: that is the scheduler's job, and the conf is what reaches the
generate stage as the model_version Param.)
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


def test_backfill_with_model_version_conf(tmp_path):
    home = tmp_path / "airflow"
    env = {k: v for k, v in os.environ.items() if not k.startswith("AIRFLOW")}
    env.update({
        "AIRFLOW_HOME": str(home), "AIRFLOW__CORE__DAGS_FOLDER": str(ROOT / "dags"),
        "AIRFLOW__CORE__LOAD_EXAMPLES": "False",
        "AIRFLOW__DATABASE__SQL_ALCHEMY_CONN": f"sqlite:///{home / 'airflow.db'}",
        "DARKROOM_HOME": str(tmp_path / "darkroom"),
    })
    _airflow(env, "db", "migrate")
    _airflow(env, "dags", "reserialize")
    conf = {"model_version": "2"}
    _airflow(env, "backfill", "create", "--dag-id", "campaign__summer_social",
             "--from-date", "2026-01-05", "--to-date", "2026-01-25",
             "--reprocess-behavior", "completed", "--dag-run-conf", json.dumps(conf))
    with sqlite3.connect(home / "airflow.db") as db:
        rows = db.execute("select run_type, conf from dag_run where dag_id = 'campaign__summer_social'").fetchall()
    assert rows, "the backfill created no runs"
    assert {r[0] for r in rows} == {"backfill"}
    assert all(json.loads(r[1])["model_version"] == "2" for r in rows)
