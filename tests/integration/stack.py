"""The production-shaped stack of docker-compose.yaml, started from local processes.

Settings come from docker/stack.env, the same file the compose services read; only service
addresses (``postgres:5432`` -> ``127.0.0.1:<port>``) and container paths (``/opt/darkroom``)
are rewritten. Every server binds 127.0.0.1; every process runs in its own process group
and the whole group is killed on exit, on success or failure.

Used by tests/integration/test_celery_stack.py and the scale benchmark (bench_scale.py).
Nothing here imports pytest or Airflow.
"""

from __future__ import annotations

import contextlib
import json
import os
import re
import shutil
import signal
import subprocess
import sys
import time
import urllib.error
import urllib.request
from collections.abc import Iterator
from dataclasses import dataclass, field
from pathlib import Path

from tests.support.servers import (
    HOST,
    ServerUnavailable,
    admin_connect,
    free_port,
    moto_server,
    postgres_server,
)

ROOT = Path(__file__).resolve().parents[2]
COMPOSE_FILE = ROOT / "docker-compose.yaml"
STACK_ENV = ROOT / "docker" / "stack.env"
POSTGRES_INIT = ROOT / "docker" / "postgres" / "init.sql"
BIN = Path(sys.executable).parent

#: Compose service -> the port it listens on inside the compose network. stack.env may only
#: name these; test_compose.py checks each against the service's command and health check.
SERVICE_PORTS = {"postgres": 5432, "redis": 6379, "minio": 9000, "mlflow": 5000, "airflow-apiserver": 8080}
#: Paths inside the image; the local stack maps them to the checkout and a tmp state dir.
CONTAINER_ROOT = "/opt/darkroom"
CONTAINER_STATE = "/opt/darkroom/state"
#: host:port inside a URL (after '//' or '@'), e.g. postgres:5432 or airflow-apiserver:8080.
ADDRESS = re.compile(r"(?<=[/@])([a-z][a-z0-9-]*):(\d+)")
#: Every local worker names the compose service it stands for (see worker_hostname).
HOSTNAME_CALLABLE = {"AIRFLOW__CORE__HOSTNAME_CALLABLE": "tests.integration.stack.worker_hostname"}


def read_env(path: Path = STACK_ENV) -> dict[str, str]:
    """KEY=VALUE lines as compose's env_file reads them: no quoting, no interpolation."""
    env: dict[str, str] = {}
    for n, line in enumerate(path.read_text().splitlines(), 1):
        line = line.strip()
        if not line or line.startswith("#"):
            continue
        key, sep, value = line.partition("=")
        if not sep or not re.fullmatch(r"[A-Z_][A-Z0-9_]*", key):
            raise ValueError(f"{path}:{n}: expected KEY=VALUE, got {line!r}")
        env[key] = value
    return env


def addresses(env: dict[str, str]) -> set[tuple[str, int]]:
    """Every (service, port) the settings point at."""
    return {(m[1], int(m[2])) for value in env.values() for m in ADDRESS.finditer(value)}


def localize(env: dict[str, str], ports: dict[str, int], state_dir: Path) -> dict[str, str]:
    """The stack settings for local processes: service addresses -> 127.0.0.1:<local port>,
    container paths -> the checkout and ``state_dir``. An address without a local port is
    an error: a service added to stack.env must be added to the local stack too."""
    def address(m: re.Match) -> str:
        if m[1] not in ports:
            raise KeyError(f"stack.env names {m[0]}, which the local stack does not run")
        return f"{HOST}:{ports[m[1]]}"

    out = {}
    for key, value in env.items():
        value = ADDRESS.sub(address, value)
        value = value.replace(CONTAINER_STATE, str(state_dir)).replace(CONTAINER_ROOT, str(ROOT))
        out[key] = value
    return out


def catalog_url(env: dict[str, str]) -> str:
    """The SQLAlchemy URL of the Airflow connection ``darkroom_catalog`` (for the CLI)."""
    return env["AIRFLOW_CONN_DARKROOM_CATALOG"].replace("postgres://", "postgresql+psycopg2://", 1)


def init_postgres(server_url: str) -> None:
    """Run docker/postgres/init.sql (what the postgres image runs at first start)."""
    sql = "\n".join(line for line in POSTGRES_INIT.read_text().splitlines()
                    if not line.lstrip().startswith("--"))
    with contextlib.closing(admin_connect(server_url)) as conn, conn.cursor() as cur:
        for statement in filter(None, (s.strip() for s in sql.split(";"))):
            cur.execute(statement)  # autocommit: CREATE DATABASE cannot run in a transaction


def worker_hostname() -> str:
    """``[core] hostname_callable`` of the local workers: all run on one host, so each says
    which compose service it stands for (in compose every container has its own hostname)."""
    import socket

    return os.environ.get("DARKROOM_WORKER_NAME") or socket.getfqdn()


# --------------------------------------------------------------------------- processes


@dataclass
class Process:
    name: str
    popen: subprocess.Popen
    log: Path

    def tail(self, n: int = 3000) -> str:
        return self.log.read_text(errors="replace")[-n:] if self.log.exists() else ""


def stop(proc: subprocess.Popen, timeout: float = 15) -> None:
    """SIGTERM the process group, then SIGKILL what is left of it."""
    if proc.poll() is None:
        with contextlib.suppress(ProcessLookupError):
            os.killpg(proc.pid, signal.SIGTERM)
        try:
            proc.wait(timeout=timeout)
        except subprocess.TimeoutExpired:
            pass
    # Children (Celery pool, gunicorn workers, task supervisors) may outlive the leader.
    with contextlib.suppress(ProcessLookupError):
        os.killpg(proc.pid, signal.SIGKILL)
    with contextlib.suppress(subprocess.TimeoutExpired):
        proc.wait(timeout=5)


def _get(url: str, token: str | None = None, timeout: float = 5) -> tuple[int, bytes]:
    req = urllib.request.Request(url, headers={"Authorization": f"Bearer {token}"} if token else {})
    opener = urllib.request.build_opener(urllib.request.ProxyHandler({}))  # never a proxy
    try:
        with opener.open(req, timeout=timeout) as resp:
            return resp.status, resp.read()
    except urllib.error.HTTPError as exc:
        return exc.code, exc.read()
    except OSError:  # not listening yet
        return 0, b""


def api(method: str, url: str, token: str | None = None, body: dict | None = None,
        timeout: float = 60, headers: dict | None = None) -> dict:
    """One JSON request to the Airflow REST API; raises with the answer on an HTTP error."""
    headers = {"Content-Type": "application/json", **(headers or {})}
    if token:
        headers["Authorization"] = f"Bearer {token}"
    data = json.dumps(body).encode() if body is not None else None
    req = urllib.request.Request(url, data=data, method=method, headers=headers)
    opener = urllib.request.build_opener(urllib.request.ProxyHandler({}))
    try:
        with opener.open(req, timeout=timeout) as resp:
            return json.loads(resp.read() or b"{}")
    except urllib.error.HTTPError as exc:
        raise RuntimeError(f"{method} {url} -> {exc.code}: {exc.read()[:2000]!r}") from None


@dataclass
class LocalStack:
    """A running local stack: addresses, settings and processes."""

    workdir: Path
    env: dict[str, str]
    api_url: str
    processes: dict[str, Process] = field(default_factory=dict)

    def start(self, name: str, argv: list[str], **extra_env: str) -> Process:
        log = self.workdir / "logs" / f"{name}.log"
        log.parent.mkdir(parents=True, exist_ok=True)
        with log.open("ab") as fh:
            popen = subprocess.Popen(argv, stdout=fh, stderr=subprocess.STDOUT, stdin=subprocess.DEVNULL,
                                     env={**self.env, **extra_env}, cwd=ROOT, start_new_session=True)
        self.processes[name] = proc = Process(name, popen, log)
        return proc

    def run(self, argv: list[str], timeout: float = 300, **extra_env: str) -> str:
        out = subprocess.run(argv, env={**self.env, **extra_env}, cwd=ROOT, capture_output=True,
                             text=True, timeout=timeout, check=False)
        if out.returncode != 0:
            raise RuntimeError(f"{' '.join(argv)} failed ({out.returncode}):\n{out.stdout[-3000:]}\n"
                               f"{out.stderr[-3000:]}")
        return out.stdout

    def check_alive(self) -> None:
        dead = [p for p in self.processes.values() if p.popen.poll() is not None]
        if dead:
            raise RuntimeError("\n\n".join(f"{p.name} exited with {p.popen.returncode}:\n{p.tail()}"
                                           for p in dead))

    def logs(self) -> str:
        return "\n\n".join(f"===== {p.name} =====\n{p.tail(2500)}" for p in self.processes.values())

    def wait_for(self, what: str, probe, timeout: float, interval: float = 1.0):
        """Poll ``probe()`` until it returns something truthy; fail with the logs."""
        deadline = time.monotonic() + timeout
        while time.monotonic() < deadline:
            self.check_alive()
            try:
                result = probe()
            except OSError:  # an API server too busy to answer in time: ask again
                result = None
            if result:
                return result
            time.sleep(interval)
        raise TimeoutError(f"{what}: not within {timeout:.0f}s\n{self.logs()}")

    def add_default_worker(self, concurrency: int = 2) -> Process:
        """One more Celery worker on the default queue (``docker compose up --scale
        airflow-worker=N``): airflow-worker, airflow-worker-2, ... The scale benchmark adds
        the second one between its runs, on the same stack."""
        n = sum(1 for name in self.processes if re.fullmatch(r"airflow-worker(-\d+)?", name))
        name = "airflow-worker" if n == 0 else f"airflow-worker-{n + 1}"
        return self.start(name, [str(BIN / "airflow"), "celery", "worker", "--queues", "default",
                                 "--concurrency", str(concurrency), "--celery-hostname", f"{name}@%h",
                                 "--skip-serve-logs"], DARKROOM_WORKER_NAME=name, **HOSTNAME_CALLABLE)

    # -- Airflow's REST API, the way the UI talks to it -------------------------------
    def token(self) -> str:
        """A bearer token for the simple auth manager's admin (generated password)."""
        pw_file = Path(self.env["AIRFLOW_HOME"]) / "simple_auth_manager_passwords.json.generated"
        password = json.loads(pw_file.read_text())["admin"]
        return api("POST", f"{self.api_url}/auth/token", body={"username": "admin", "password": password})[
            "access_token"]

    def unpause_when_parsed(self, dag_id: str, token: str, timeout: float) -> str:
        """Wait for the dag-processor to parse ``dag_id``, unpause it; return the DAGs URL."""
        dags = f"{self.api_url}/api/v2/dags"

        def parsed():
            try:
                return api("GET", f"{dags}/{dag_id}", token)
            except RuntimeError:
                return None

        self.wait_for(f"{dag_id} parsed by the dag-processor", parsed, timeout, interval=2)
        api("PATCH", f"{dags}/{dag_id}", token, {"is_paused": False})
        return dags


@contextlib.contextmanager
def local_stack(workdir: Path, *, default_workers: int = 1, default_concurrency: int = 2,
                startup_timeout: float = 300, extra_env: dict[str, str] | None = None) -> Iterator[LocalStack]:
    """Start PostgreSQL, Redis, moto (for MinIO), MLflow, and Airflow's api-server,
    scheduler, dag-processor, triggerer, ``default_workers`` Celery workers on the default
    queue and one on ``gpu``: the shape of docker-compose.yaml. ``extra_env`` is applied
    over the stack settings for every process (e.g. ``DARKROOM_CAMPAIGNS_DIR``, which is
    otherwise dropped with the rest of the caller's ``DARKROOM_*``). Raises
    :class:`ServerUnavailable` when redis-server or PostgreSQL is not installed."""
    redis_bin = shutil.which("redis-server")
    if redis_bin is None:
        raise ServerUnavailable("redis-server is not installed (apt-get install redis-server)")
    with contextlib.ExitStack() as stack:
        # 1. Backing services, each on a free loopback port.
        pg_url = stack.enter_context(postgres_server(dbname="stack_scratch"))
        init_postgres(pg_url)
        s3 = stack.enter_context(moto_server())
        redis_port = free_port()
        redis_dir = workdir / "redis"
        redis_dir.mkdir(parents=True)
        from sqlalchemy.engine import make_url

        ports = {"postgres": make_url(pg_url).port, "redis": redis_port,
                 "minio": int(s3.rsplit(":", 1)[1]), "mlflow": free_port(),
                 "airflow-apiserver": free_port()}
        state = workdir / "state"
        state.mkdir()
        env = {k: v for k, v in os.environ.items() if not k.startswith(("AIRFLOW", "DARKROOM_", "AWS_",
                                                                          "MLFLOW_"))}
        no_proxy = ",".join(filter(None, [os.environ.get("NO_PROXY"), "127.0.0.1,localhost"]))
        env.update(localize(read_env(), ports, state))
        env.update({
            "AIRFLOW_HOME": str(workdir / "airflow"),
            "PATH": f"{BIN}{os.pathsep}{env.get('PATH', '')}",  # `airflow` for its own children
            # worker_hostname above, imported by the workers (after the caller's own path)
            "PYTHONPATH": os.pathsep.join(filter(None, [os.environ.get("PYTHONPATH"), str(ROOT)])),
            "PYTHONUNBUFFERED": "1",
            "NO_PROXY": no_proxy, "no_proxy": no_proxy,
            # Loopback only, on free ports: the scheduler's health server binds 0.0.0.0:8974
            # otherwise, and two local stacks must not collide.
            "AIRFLOW__SCHEDULER__SCHEDULER_HEALTH_CHECK_SERVER_HOST": HOST,
            "AIRFLOW__SCHEDULER__SCHEDULER_HEALTH_CHECK_SERVER_PORT": str(free_port()),
            "AIRFLOW__API__HOST": HOST,
            "AIRFLOW__API__PORT": str(ports["airflow-apiserver"]),
            "AIRFLOW__API__BASE_URL": f"http://{HOST}:{ports['airflow-apiserver']}",
        })
        env.update(extra_env or {})
        local = LocalStack(workdir, env, f"http://{HOST}:{ports['airflow-apiserver']}")
        stack.callback(lambda: [stop(p.popen) for p in reversed(local.processes.values())])

        local.start("redis", [redis_bin, "--bind", HOST, "--port", str(redis_port), "--save", "",
                              "--appendonly", "no", "--dir", str(redis_dir)])
        import boto3

        client = boto3.client("s3", endpoint_url=env["DARKROOM_S3_ENDPOINT_URL"],
                              aws_access_key_id=env["AWS_ACCESS_KEY_ID"],
                              aws_secret_access_key=env["AWS_SECRET_ACCESS_KEY"],
                              region_name=env["AWS_DEFAULT_REGION"])
        for bucket in env["DARKROOM_BUCKETS"].split():  # what minio-init does in compose
            client.create_bucket(Bucket=bucket)

        # 2. One-off jobs of airflow-init: the tiny model, the metadata DB, the gpu pool.
        tiny = local.start("build-tiny", [str(BIN / "darkroom"), "models", "build-tiny",
                                          env["DARKROOM_TINY_MODEL"]])
        local.run([str(BIN / "airflow"), "db", "migrate"], timeout=startup_timeout)
        local.run([str(BIN / "airflow"), "pools", "set", env["DARKROOM_GPU_POOL"],
                   env["DARKROOM_GPU_POOL_SLOTS"], "GPU slots: one per GPU"])
        tiny.popen.wait(timeout=startup_timeout)
        if tiny.popen.returncode != 0:
            raise RuntimeError(f"build-tiny failed:\n{tiny.tail()}")
        del local.processes["build-tiny"]

        # 3. Long-running services, as the compose file starts them.
        airflow = str(BIN / "airflow")
        local.start("mlflow", [
            str(BIN / "mlflow"), "server", "--host", HOST, "--port", str(ports["mlflow"]), "--workers", "1",
            "--backend-store-uri", f"postgresql://airflow:airflow@{HOST}:{ports['postgres']}/mlflow",
            "--serve-artifacts", "--artifacts-destination", "s3://mlflow/"])
        local.start("airflow-apiserver", [airflow, "api-server", "--host", HOST, "--port",
                                          str(ports["airflow-apiserver"]), "--workers", "1"])
        local.start("airflow-scheduler", [airflow, "scheduler", "--skip-serve-logs"])
        local.start("airflow-dag-processor", [airflow, "dag-processor"])
        local.start("airflow-triggerer", [airflow, "triggerer", "--skip-serve-logs"])
        for _ in range(default_workers):
            local.add_default_worker(default_concurrency)
        local.start("airflow-worker-gpu", [airflow, "celery", "worker", "--queues", env["DARKROOM_GPU_QUEUE"],
                                           "--concurrency", "1", "--celery-hostname", "airflow-worker-gpu@%h",
                                           "--skip-serve-logs"],
                    DARKROOM_WORKER_NAME="airflow-worker-gpu", **HOSTNAME_CALLABLE)

        local.wait_for("the Airflow API server", lambda: _get(f"{local.api_url}/api/v2/version")[0] == 200,
                       startup_timeout)
        local.wait_for("the MLflow server",
                       lambda: _get(f"http://{HOST}:{ports['mlflow']}/health")[0] == 200, startup_timeout)
        yield local
