"""Throwaway servers for tests: a PostgreSQL cluster and a moto S3 server, both bound to
127.0.0.1 only, both removed when their context manager exits.

Nothing here imports pytest: a missing binary raises :class:`ServerUnavailable`, and the
fixtures in ``conftest.py`` decide whether that is a skip (a developer's machine) or a
failure (CI).

PostgreSQL as root: ``initdb`` refuses to run as root, so when this process is root the
cluster's files are chowned to an unprivileged user (``postgres`` if it exists, else
``nobody``) and ``initdb``/``pg_ctl`` run as that user through ``runuser -u USER --``
(or, where runuser is missing, through ``subprocess``'s own ``user=``/``group=`` switch).
Clients connect over TCP with ``trust`` auth, so the tests themselves stay root.
"""

from __future__ import annotations

import contextlib
import os
import pwd
import shutil
import signal
import socket
import subprocess
import sys
import tempfile
import time
import urllib.error
import urllib.request
from collections.abc import Iterator
from pathlib import Path

HOST = "127.0.0.1"  # the only address anything here listens on


class ServerUnavailable(RuntimeError):
    """A server cannot be started on this machine because something is not installed."""


def free_port() -> int:
    """A TCP port on 127.0.0.1 that was free a moment ago (callers retry on a lost race)."""
    with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as s:
        s.bind((HOST, 0))
        return s.getsockname()[1]


# --------------------------------------------------------------------------- PostgreSQL


def _pg_binary(name: str) -> str:
    found = shutil.which(name)
    if found:
        return found
    pg_config = shutil.which("pg_config")
    if pg_config:
        bindir = subprocess.run([pg_config, "--bindir"], capture_output=True, text=True,
                                check=False).stdout.strip()
        candidate = Path(bindir) / name
        if bindir and candidate.is_file() and os.access(candidate, os.X_OK):
            return str(candidate)
    raise ServerUnavailable(
        f"PostgreSQL's {name!r} is neither on PATH nor in `pg_config --bindir`; "
        "install the PostgreSQL server package (e.g. apt-get install postgresql)")


def _unprivileged_user() -> pwd.struct_passwd | None:
    """The user to run PostgreSQL as: None when we are not root (run as ourselves)."""
    if os.geteuid() != 0:
        return None
    for name in ("postgres", "nobody"):
        with contextlib.suppress(KeyError):
            return pwd.getpwnam(name)
    raise ServerUnavailable("running as root, and neither a 'postgres' nor a 'nobody' user "
                            "exists to run initdb/pg_ctl as")


class _PgCommands:
    """Runs PostgreSQL's binaries, as an unprivileged user when we are root."""

    def __init__(self, workdir: Path):
        self.workdir = workdir
        self.user = _unprivileged_user()
        self.runuser = shutil.which("runuser") if self.user else None

    def run(self, argv: list[str], *, timeout: float = 60) -> subprocess.CompletedProcess:
        kwargs: dict = {}
        if self.user is not None:
            if self.runuser:
                argv = [self.runuser, "-u", self.user.pw_name, "--", *argv]
            else:
                kwargs = dict(user=self.user.pw_uid, group=self.user.pw_gid, extra_groups=[])
        # cwd: the unprivileged user may not be able to enter the caller's directory.
        return subprocess.run(argv, cwd=self.workdir, capture_output=True, text=True,
                              timeout=timeout, check=False, **kwargs)

    def chown(self, path: Path) -> None:
        if self.user is not None:
            os.chown(path, self.user.pw_uid, self.user.pw_gid)


def _check(proc: subprocess.CompletedProcess, what: str, log: Path | None = None) -> None:
    if proc.returncode == 0:
        return
    text = f"{what} failed (exit {proc.returncode}):\n{proc.stdout}\n{proc.stderr}"
    if log is not None and log.exists():
        text += f"\n--- server log {log} ---\n{log.read_text(errors='replace')[-4000:]}"
    raise RuntimeError(text)


def admin_connect(server_url: str):
    """A psycopg2 connection (autocommit) to the ``postgres`` database of the server at
    ``server_url``: for CREATE/DROP DATABASE, which cannot run inside a transaction."""
    import psycopg2
    from sqlalchemy.engine import make_url

    url = make_url(server_url)
    conn = psycopg2.connect(host=url.host, port=url.port, user=url.username, dbname="postgres",
                            connect_timeout=10)
    conn.autocommit = True
    return conn


def create_database(server_url: str, name: str) -> str:
    """Create database ``name`` on the server of ``server_url``; returns the URL to it."""
    from sqlalchemy.engine import make_url

    with contextlib.closing(admin_connect(server_url)) as conn, conn.cursor() as cur:
        cur.execute(f'CREATE DATABASE "{name}"')
    return make_url(server_url).set(database=name).render_as_string(hide_password=False)


def drop_database(server_url: str, name: str) -> None:
    """Drop database ``name``, disconnecting whoever is still connected to it."""
    with contextlib.closing(admin_connect(server_url)) as conn, conn.cursor() as cur:
        cur.execute(f'DROP DATABASE IF EXISTS "{name}" WITH (FORCE)')


@contextlib.contextmanager
def postgres_server(dbname: str = "darkroom") -> Iterator[str]:
    """A fresh PostgreSQL cluster on 127.0.0.1 with an empty database ``dbname``.

    Yields ``postgresql+psycopg2://postgres@127.0.0.1:PORT/dbname`` (trust auth, no
    password). The cluster is stopped (``-m immediate``) and its directory removed on exit.
    """
    initdb, pg_ctl = _pg_binary("initdb"), _pg_binary("pg_ctl")
    # A short path under the system temp dir: the Unix socket path must fit in ~107 bytes,
    # and /tmp is traversable by the unprivileged user when we run as root.
    workdir = Path(tempfile.mkdtemp(prefix="darkroom-pg-"))
    data, log = workdir / "data", workdir / "server.log"
    cmd = _PgCommands(workdir)
    started = False
    try:
        cmd.chown(workdir)
        _check(cmd.run([initdb, "-D", str(data), "-U", "postgres", "--auth=trust",
                        "--encoding=UTF8", "--locale=C", "--no-sync", "--no-instructions"]),
               "initdb")
        for _attempt in range(3):  # the port may be taken between free_port() and start
            port = free_port()
            opts = (f"-p {port} -k {workdir} -c listen_addresses={HOST} "
                    # a throwaway cluster: durability buys nothing, speed does
                    "-c fsync=off -c synchronous_commit=off -c full_page_writes=off")
            proc = cmd.run([pg_ctl, "-D", str(data), "-o", opts, "-l", str(log), "-w",
                            "-t", "60", "start"], timeout=90)
            if proc.returncode == 0:
                started = True
                break
            if "could not bind" not in (log.read_text(errors="replace") if log.exists() else ""):
                _check(proc, "pg_ctl start", log)
        else:
            _check(proc, "pg_ctl start (3 ports tried)", log)
        server_url = f"postgresql+psycopg2://postgres@{HOST}:{port}/postgres"
        yield create_database(server_url, dbname)
    finally:
        if started:
            cmd.run([pg_ctl, "-D", str(data), "-m", "immediate", "-w", "stop"])
        shutil.rmtree(workdir, ignore_errors=True)


# --------------------------------------------------------------------------- moto (S3)

#: Credentials and region for clients of the moto server: dummies, never real ones.
MOTO_ENV = {
    "AWS_ACCESS_KEY_ID": "testing",
    "AWS_SECRET_ACCESS_KEY": "testing",
    "AWS_DEFAULT_REGION": "us-east-1",
}


def _answers(url: str) -> bool:
    opener = urllib.request.build_opener(urllib.request.ProxyHandler({}))  # never a proxy
    try:
        opener.open(url, timeout=1).close()
    except urllib.error.HTTPError:
        return True  # an HTTP error is still an answer
    except OSError:
        return False
    return True


@contextlib.contextmanager
def moto_server(startup_timeout: float = 30) -> Iterator[str]:
    """``python -m moto.server`` on 127.0.0.1; yields its endpoint URL (``http://...``).

    Clients need :data:`MOTO_ENV` in their environment (or as client arguments).
    """
    import importlib.util

    if importlib.util.find_spec("moto") is None or importlib.util.find_spec("flask") is None:
        raise ServerUnavailable("moto's server is not installed; pip install 'moto[server]'")
    logdir = Path(tempfile.mkdtemp(prefix="darkroom-moto-"))
    proc: subprocess.Popen | None = None
    try:
        for attempt in range(3):  # the port may be taken between free_port() and bind
            port = free_port()
            endpoint = f"http://{HOST}:{port}"
            log = logdir / f"moto-{attempt}.log"
            with log.open("wb") as fh:
                proc = subprocess.Popen(
                    [sys.executable, "-m", "moto.server", "-H", HOST, "-p", str(port)],
                    stdout=fh, stderr=subprocess.STDOUT, stdin=subprocess.DEVNULL,
                    env={**os.environ, **MOTO_ENV}, start_new_session=True)
            deadline = time.monotonic() + startup_timeout
            while proc.poll() is None and time.monotonic() < deadline:
                if _answers(endpoint + "/"):
                    break
                time.sleep(0.1)
            if proc.poll() is None and _answers(endpoint + "/"):
                yield endpoint
                return
            output = log.read_text(errors="replace")[-4000:]
            stop_server(proc)
            if "Address already in use" not in output:
                raise RuntimeError(f"moto server did not answer at {endpoint}:\n{output}")
        raise RuntimeError("moto server could not bind a port (3 tried)")
    finally:
        if proc is not None:
            stop_server(proc)
        shutil.rmtree(logdir, ignore_errors=True)


def stop_server(proc: subprocess.Popen, timeout: float = 15) -> None:
    """Stop a server started with ``start_new_session=True``, with every child it spawned
    (its process group): SIGTERM, then SIGKILL after ``timeout`` seconds."""
    if proc.poll() is not None:
        return
    with contextlib.suppress(ProcessLookupError):
        os.killpg(proc.pid, signal.SIGTERM)
    try:
        proc.wait(timeout=timeout)
    except subprocess.TimeoutExpired:
        with contextlib.suppress(ProcessLookupError):
            os.killpg(proc.pid, signal.SIGKILL)
        proc.wait()

# --------------------------------------------------------------------------- model server


@contextlib.contextmanager
def model_server(tiny_model: Path, home: Path, *extra: str,
                 startup_timeout: float = 120) -> Iterator[tuple[str, subprocess.Popen]]:
    """``darkroom serve-model`` with the tiny model on the CPU, on 127.0.0.1: its base URL
    and its process (a test may stop it mid-run with :func:`stop_server`)."""
    port = free_port()
    env = {**os.environ, "DARKROOM_HOME": str(home), "DARKROOM_TINY_MODEL": str(tiny_model),
           "NO_PROXY": "127.0.0.1,localhost", "no_proxy": "127.0.0.1,localhost"}
    log_path = home / "server.log"
    url = f"http://{HOST}:{port}"
    with log_path.open("w") as log:
        proc = subprocess.Popen([str(Path(sys.executable).with_name("darkroom")), "serve-model",
                                 "--host", HOST, "--port", str(port), "--model", "tiny", "--device",
                                 "cpu", *extra], env=env, stdout=log, stderr=subprocess.STDOUT,
                                start_new_session=True)
        try:
            deadline = time.monotonic() + startup_timeout
            while not _answers(f"{url}/healthz"):
                if proc.poll() is not None:
                    raise RuntimeError(f"serve-model exited with {proc.returncode}: {log_path.read_text()}")
                if time.monotonic() > deadline:
                    raise RuntimeError(f"serve-model did not start: {log_path.read_text()}")
                time.sleep(0.2)
            yield url, proc
        finally:
            stop_server(proc)
