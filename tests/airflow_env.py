"""Point Airflow at a throwaway home before anything imports it.

Airflow reads its configuration once, at import, so test modules that use Airflow in-process
import this module first. Subprocess runs (``darkroom run``) get the same variables.
"""

from __future__ import annotations

import os
import tempfile
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
AIRFLOW_HOME = Path(os.environ.get("DARKROOM_TEST_AIRFLOW_HOME") or tempfile.mkdtemp(prefix="darkroom-airflow-"))

ENV = {
    "AIRFLOW_HOME": str(AIRFLOW_HOME),
    "AIRFLOW__CORE__DAGS_FOLDER": str(ROOT / "dags"),
    "AIRFLOW__CORE__PLUGINS_FOLDER": str(ROOT / "plugins"),
    "AIRFLOW__CORE__LOAD_EXAMPLES": "False",
    "AIRFLOW__DATABASE__SQL_ALCHEMY_CONN": f"sqlite:///{AIRFLOW_HOME / 'airflow.db'}",
    "AIRFLOW__LOGGING__BASE_LOG_FOLDER": str(AIRFLOW_HOME / "logs"),
}
os.environ.update(ENV)
os.environ["DARKROOM_TEST_AIRFLOW_HOME"] = str(AIRFLOW_HOME)
