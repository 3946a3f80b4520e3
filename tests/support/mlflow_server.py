"""A throwaway MLflow tracking server for tests: ``mlflow server`` on 127.0.0.1, its backend
store (SQLite) and artifact root in a temp dir, removed on exit. No pytest import here; the
``mlflow_server`` fixture in conftest.py wraps it.
"""

from __future__ import annotations

import contextlib
import os
import shutil
import subprocess
import sys
import tempfile
import time
import urllib.request
from collections.abc import Iterator
from pathlib import Path

from tests.support.servers import HOST, ServerUnavailable, free_port, stop_server


def _healthy(url: str) -> bool:
    opener = urllib.request.build_opener(urllib.request.ProxyHandler({}))  # never a proxy
    try:
        with opener.open(f"{url}/health", timeout=2) as resp:
            return resp.status == 200
    except OSError:
        return False


@contextlib.contextmanager
def mlflow_server(startup_timeout: float = 240) -> Iterator[str]:
    """Yields the tracking URI (``http://127.0.0.1:PORT``) of a fresh MLflow server.

    The timeout is generous on purpose: the server imports most of MLflow before it binds,
    which takes close to a minute on a loaded two-core machine.
    """
    mlflow_bin = Path(sys.executable).with_name("mlflow")
    if not mlflow_bin.is_file():
        raise ServerUnavailable(f"no mlflow executable beside {sys.executable}; pip install mlflow")
    workdir = Path(tempfile.mkdtemp(prefix="darkroom-mlflow-"))
    log = workdir / "server.log"
    proc: subprocess.Popen | None = None
    # No background job runner: it starts a pool of huey workers that tests never use.
    env = {**os.environ, "MLFLOW_SERVER_ENABLE_JOB_EXECUTION": "false"}
    try:
        for _attempt in range(3):  # the port may be taken between free_port() and bind
            port = free_port()
            url = f"http://{HOST}:{port}"
            with log.open("wb") as fh:
                proc = subprocess.Popen(
                    [str(mlflow_bin), "server", "--host", HOST, "--port", str(port), "--workers", "1",
                     "--backend-store-uri", f"sqlite:///{workdir / 'mlflow.db'}",
                     "--artifacts-destination", (workdir / "artifacts").as_uri()],
                    stdout=fh, stderr=subprocess.STDOUT, cwd=workdir, env=env,
                    start_new_session=True)  # its uvicorn child goes down with it
            deadline = time.monotonic() + startup_timeout
            while time.monotonic() < deadline and proc.poll() is None:
                if _healthy(url):
                    yield url
                    return
                time.sleep(0.5)
            output = log.read_text(errors="replace")[-4000:]
            stop_server(proc)
            if "address already in use" not in output.lower():
                raise RuntimeError(f"mlflow server did not answer at {url}:\n{output}")
        raise RuntimeError("mlflow server could not bind a port (3 tried)")
    finally:
        if proc is not None:
            stop_server(proc)
        shutil.rmtree(workdir, ignore_errors=True)
