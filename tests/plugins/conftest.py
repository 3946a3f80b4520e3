"""Fixtures for the review gallery: a catalog filled by running the stages for real, and
``airflow api-server`` with our plugins folder, bound to 127.0.0.1 on a free port.

Module-scoped (they take seconds), so they pass settings explicitly instead of reading the
per-test ``$DARKROOM_HOME`` the autouse fixture sets.
"""

from __future__ import annotations

import contextlib
import json
import os
import shutil
import subprocess
import sys
import time
import urllib.error
import urllib.request
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path

import pytest

from tests.support.campaigns import write_campaign
from tests.support.servers import HOST, free_port

ROOT = Path(__file__).resolve().parents[2]
BIN = Path(sys.executable).parent


@dataclass
class Filled:
    home: Path
    catalog_url: str
    spec_path: Path
    dag_id: str
    run_id: str
    settings: object
    asset_ids: list[str]


@pytest.fixture(scope="session")
def tiny_model(tmp_path_factory) -> Path:
    from darkroom.devtools.tiny_model import build_tiny_pipeline

    path = tmp_path_factory.mktemp("models") / "tiny-sd"
    build_tiny_pipeline(path)  # in-process: the stages below load torch here anyway
    return path


def fill_catalog(home: Path, tiny: Path, *, catalog_url: str | None = None, limit: int = 6,
                 run_id: str = "manual__2026-11-20T10:00:00+00:00", failed_qa: bool = True) -> Filled:
    """Run the stages up to await_approval for one run (no Airflow): real images, real QA.

    Every asset passes QA except the last, marked failed (``failed_qa``) so the gallery
    shows a reason."""
    from darkroom.config import Settings
    from darkroom.stages import generate, plan, postprocess, qa, track
    from darkroom.stages.context import RunContext

    home.mkdir(parents=True, exist_ok=True)
    spec_path = write_campaign(home)
    settings = Settings.from_env(
        home=home, catalog_url=catalog_url or f"sqlite:///{home / 'catalog.db'}",
        storage_url=(home / "assets").as_uri(), tiny_model_dir=tiny,
        mlflow_tracking_uri=f"sqlite:///{home / 'mlflow.db'}")
    from darkroom.spec import load_spec

    dag_id = load_spec(spec_path).spec.dag_id
    ctx = RunContext.open(spec_path, dag_id, run_id, conf={"limit": limit}, settings=settings)
    _ = ctx.run_pk  # registers the campaign and run rows, as validate_inputs would first
    for batch in plan.run(ctx):
        generate.run(ctx, batch)
        qa.run(ctx, batch)
        postprocess.run(ctx, batch)
    from darkroom.catalog.tables import Asset, AssetStatus, QAResult
    from sqlalchemy import select

    with ctx.catalog.session() as s:
        ids = list(s.scalars(select(Asset.id).where(Asset.run_pk == ctx.run_pk).order_by(Asset.created_at)))
        bad = [(q.asset_id, q.check, q.detail) for q in s.scalars(select(QAResult).where(
            QAResult.asset_id.in_(ids), QAResult.passed.is_(False)))]
        assert len(ids) == limit and not bad, f"the gallery fixture needs every image to pass QA: {bad}"
        if failed_qa:  # one failure with a reason, as the sharpness check records it
            s.get(Asset, ids[-1]).status = AssetStatus.qa_failed
            row = s.scalar(select(QAResult).where(QAResult.asset_id == ids[-1], QAResult.check == "sharpness"))
            if row is None:
                row = QAResult(asset_id=ids[-1], check="sharpness")
                s.add(row)
            row.value, row.threshold, row.passed = 3.2, 20.0, False
            row.detail = "variance of Laplacian 3.2 < 20.0: blurry"
            if hasattr(row, "status"):
                row.status = "fail"
    track.contact_sheet(ctx)
    return Filled(home, settings.catalog_url, spec_path, dag_id, run_id, settings, ids)


# --------------------------------------------------------------------------- api-server


@dataclass
class ApiServer:
    url: str
    tokens: dict[str, str]  # user -> bearer token
    log: Path
    airflow_db: Path  # the API server's metadata database (where DAG run states live)

    def request(self, method: str, path: str, *, user: str | None = "admin", body=None,
                headers: dict | None = None, raw: bytes | None = None) -> tuple[int, dict, bytes]:
        hdrs = dict(headers or {})
        if user:
            hdrs.setdefault("Authorization", f"Bearer {self.tokens[user]}")
        data = raw
        if body is not None:
            data = json.dumps(body).encode()
            hdrs.setdefault("Content-Type", "application/json")
        req = urllib.request.Request(self.url + path, data=data, method=method, headers=hdrs)
        opener = urllib.request.build_opener(urllib.request.ProxyHandler({}))
        try:
            with opener.open(req, timeout=60) as resp:
                return resp.status, dict(resp.headers), resp.read()
        except urllib.error.HTTPError as exc:
            return exc.code, dict(exc.headers), exc.read()


def _get_token(url: str, user: str, password: str) -> str:
    req = urllib.request.Request(f"{url}/auth/token", method="POST",
                                 data=json.dumps({"username": user, "password": password}).encode(),
                                 headers={"Content-Type": "application/json"})
    opener = urllib.request.build_opener(urllib.request.ProxyHandler({}))
    with opener.open(req, timeout=30) as resp:
        return json.loads(resp.read())["access_token"]


@contextlib.contextmanager
def api_server(workdir: Path, darkroom_env: dict[str, str], *,
               reviewers: tuple[str, ...] = ()) -> Iterator[ApiServer]:
    """``airflow api-server`` with the plugin; users admin, viewer and ``reviewers`` (role
    user: they may decide), each with a bearer token."""
    airflow_home = workdir / "airflow"
    dags = workdir / "dags"  # empty: the API server needs no DAG files to serve the plugin
    dags.mkdir(parents=True, exist_ok=True)
    env = {k: v for k, v in os.environ.items() if not k.startswith(("AIRFLOW", "DARKROOM_"))}
    env.update({
        "AIRFLOW_HOME": str(airflow_home),
        "AIRFLOW__CORE__DAGS_FOLDER": str(dags),
        "AIRFLOW__CORE__PLUGINS_FOLDER": str(ROOT / "plugins"),
        "AIRFLOW__CORE__LOAD_EXAMPLES": "False",
        "AIRFLOW__DATABASE__SQL_ALCHEMY_CONN": f"sqlite:///{airflow_home / 'airflow.db'}",
        "AIRFLOW__CORE__SIMPLE_AUTH_MANAGER_USERS": ",".join(
            ["admin:admin", "viewer:viewer", *(f"{name}:user" for name in reviewers)]),
        "AIRFLOW__API__HOST": HOST,
        "PATH": f"{BIN}{os.pathsep}{os.environ.get('PATH', '')}",
        "NO_PROXY": "127.0.0.1,localhost", "no_proxy": "127.0.0.1,localhost",
        **darkroom_env,
    })
    airflow_home.mkdir(parents=True, exist_ok=True)
    subprocess.run([str(BIN / "airflow"), "db", "migrate"], env=env, check=True, capture_output=True,
                   timeout=300)
    log = workdir / "api-server.log"
    proc = None
    try:
        for _attempt in range(3):
            port = free_port()
            url = f"http://{HOST}:{port}"
            with log.open("ab") as fh:
                proc = subprocess.Popen([str(BIN / "airflow"), "api-server", "-H", HOST, "-p", str(port),
                                         "-w", "1"], env=env, stdout=fh, stderr=subprocess.STDOUT,
                                        stdin=subprocess.DEVNULL, start_new_session=True)
            deadline = time.monotonic() + 120
            while proc.poll() is None and time.monotonic() < deadline:
                try:
                    opener = urllib.request.build_opener(urllib.request.ProxyHandler({}))
                    opener.open(f"{url}/api/v2/monitor/health", timeout=2).close()
                    break
                except (OSError, urllib.error.HTTPError):
                    time.sleep(0.5)
            if proc.poll() is None:
                break
            if "address already in use" not in log.read_text(errors="replace").lower():
                raise RuntimeError(f"airflow api-server exited:\n{log.read_text()[-4000:]}")
        else:
            raise RuntimeError("airflow api-server could not bind a port (3 tried)")
        passwords = json.loads((airflow_home / "simple_auth_manager_passwords.json.generated").read_text())
        tokens = {user: _get_token(url, user, pw) for user, pw in passwords.items()}
        yield ApiServer(url, tokens, log, airflow_home / "airflow.db")
    finally:
        if proc is not None and proc.poll() is None:
            os.killpg(proc.pid, 15)
            try:
                proc.wait(timeout=20)
            except subprocess.TimeoutExpired:
                os.killpg(proc.pid, 9)
                proc.wait()


@pytest.fixture(scope="module")
def filled(tmp_path_factory, tiny_model) -> Filled:
    return fill_catalog(tmp_path_factory.mktemp("gallery") / "darkroom", tiny_model)


@pytest.fixture(scope="module")
def server(filled, tmp_path_factory) -> Iterator[ApiServer]:
    env = {"DARKROOM_HOME": str(filled.home), "DARKROOM_CATALOG_URL": filled.catalog_url}
    with api_server(tmp_path_factory.mktemp("airflow"), env) as srv:
        yield srv


def chromium_binary() -> str | None:
    return shutil.which("chromium") or shutil.which("chromium-browser")
