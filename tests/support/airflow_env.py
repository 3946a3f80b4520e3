"""Point Airflow at a throwaway home before anything imports it.

Airflow reads its configuration once, at import, so test modules that use Airflow in-process
import this module first. Subprocess runs (``darkroom run``) get the same variables.
"""

from __future__ import annotations

import atexit
import os
import shutil
import tempfile
from pathlib import Path

ROOT = Path(__file__).resolve().parents[2]
if os.environ.get("DARKROOM_TEST_AIRFLOW_HOME"):
    AIRFLOW_HOME = Path(os.environ["DARKROOM_TEST_AIRFLOW_HOME"])
else:
    AIRFLOW_HOME = Path(tempfile.mkdtemp(prefix="darkroom-airflow-"))
    atexit.register(shutil.rmtree, AIRFLOW_HOME, ignore_errors=True)

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
