"""Shared fixtures. Real servers, no mocks of our own code.

Servers (session-scoped, started on first use, bound to 127.0.0.1 only; see servers.py):
    postgres_url   URL of an empty database on a throwaway PostgreSQL cluster
    s3_endpoint    endpoint URL of a throwaway moto S3 server; also puts dummy AWS
                   credentials and region in the environment for the session

Per test:
    darkroom_home  (autouse) $DARKROOM_HOME -> a folder in tmp_path, so nothing writes
                   into the repository or the developer's own ~/.darkroom
    catalog_url    a fresh, empty catalog database, once on SQLite and once on PostgreSQL
                   (parametrized; the PostgreSQL case carries the ``postgres`` marker)
    s3_client      a boto3 S3 client on the moto server
    bucket         a new, uniquely named bucket on the moto server

A missing server binary skips the tests that need it on a developer machine, and fails
them when $CI is set (CI must never pass by skipping).

Keep this file free of Airflow imports: importing airflow is slow, and these fixtures
serve the domain tests too. Airflow fixtures belong next to the tests that need them.
"""

from __future__ import annotations

import contextlib
import os
import uuid
from collections.abc import Iterator
from pathlib import Path

import pytest

from tests.support.servers import (
    MOTO_ENV,
    ServerUnavailable,
    create_database,
    drop_database,
    moto_server,
    postgres_server,
)

# Settings that would send a test's writes somewhere other than $DARKROOM_HOME.
_REDIRECTING_ENV = (
    "DARKROOM_CATALOG_URL",
    "DARKROOM_STORAGE_URL",
    "DARKROOM_S3_ENDPOINT_URL",
    "DARKROOM_MLFLOW_TRACKING_URI",
    "MLFLOW_TRACKING_URI",
)


def in_ci() -> bool:
    return os.environ.get("CI", "").strip().lower() not in ("", "0", "false", "no")


def unavailable(reason: str):
    """Skip (developer machine) or fail (CI) a test whose server cannot be started."""
    if in_ci():
        pytest.fail(f"{reason} (CI is set, so this is a failure, not a skip)", pytrace=False)
    pytest.skip(reason)


def _start(stack: contextlib.ExitStack, server) -> str:
    """Enter ``server()`` on ``stack``, or skip/fail when it is not installed here."""
    try:
        return stack.enter_context(server())
    except ServerUnavailable as exc:
        reason = str(exc)
    unavailable(reason)  # outside the except: no "during handling..." noise in the report


# --------------------------------------------------------------------------- environment


@pytest.fixture(autouse=True)
def darkroom_home(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> Path:
    """Point $DARKROOM_HOME at this test's tmp_path (and drop settings that bypass it)."""
    home = tmp_path / "darkroom-home"
    home.mkdir()
    monkeypatch.setenv("DARKROOM_HOME", str(home))
    for name in _REDIRECTING_ENV:
        monkeypatch.delenv(name, raising=False)
    return home


# --------------------------------------------------------------------------- PostgreSQL


@pytest.fixture(scope="session")
def postgres_url() -> Iterator[str]:
    """``postgresql+psycopg2://postgres@127.0.0.1:PORT/darkroom`` on a throwaway cluster."""
    with contextlib.ExitStack() as stack:
        url = _start(stack, postgres_server)
        yield url


def _forget_engine(url: str) -> None:
    """Dispose the engine darkroom.catalog cached for ``url``: each test has its own
    database, and pooled connections to dropped databases must not pile up."""
    from darkroom.catalog import db as catalog

    engine = catalog._engines.pop(url, None)
    if engine is not None:
        engine.dispose()
    catalog._migrated.discard(url)


@pytest.fixture(params=["sqlite", pytest.param("postgres", marks=pytest.mark.postgres)])
def catalog_url(request: pytest.FixtureRequest, tmp_path: Path) -> Iterator[str]:
    """URL of a new, empty (unmigrated) catalog database, private to this test."""
    if request.param == "sqlite":
        url = f"sqlite:///{tmp_path / 'catalog.db'}"
        yield url
        _forget_engine(url)
        return
    server_url = request.getfixturevalue("postgres_url")
    name = f"t_{uuid.uuid4().hex[:16]}"
    url = create_database(server_url, name)
    try:
        yield url
    finally:
        _forget_engine(url)
        drop_database(server_url, name)


# --------------------------------------------------------------------------- S3 (moto)


@pytest.fixture(scope="session")
def s3_endpoint() -> Iterator[str]:
    """Endpoint URL of a moto S3 server on 127.0.0.1, with dummy AWS settings in the
    environment for the whole session (so code that builds its own boto3 client works)."""
    with contextlib.ExitStack() as stack:
        mp = stack.enter_context(pytest.MonkeyPatch.context())
        for key, value in MOTO_ENV.items():
            mp.setenv(key, value)
        for key in ("AWS_PROFILE", "AWS_SESSION_TOKEN", "AWS_SECURITY_TOKEN",
                    "AWS_ENDPOINT_URL", "AWS_ENDPOINT_URL_S3"):
            mp.delenv(key, raising=False)
        # Never send loopback traffic through a proxy a developer has configured.
        no_proxy = ",".join(filter(None, [os.environ.get("NO_PROXY"), "127.0.0.1,localhost"]))
        mp.setenv("NO_PROXY", no_proxy)
        mp.setenv("no_proxy", no_proxy)
        endpoint = _start(stack, moto_server)
        yield endpoint


@pytest.fixture
def s3_client(s3_endpoint: str):
    """A boto3 S3 client talking to the moto server."""
    import boto3

    return boto3.client("s3", endpoint_url=s3_endpoint,
                        aws_access_key_id=MOTO_ENV["AWS_ACCESS_KEY_ID"],
                        aws_secret_access_key=MOTO_ENV["AWS_SECRET_ACCESS_KEY"],
                        region_name=MOTO_ENV["AWS_DEFAULT_REGION"])


@pytest.fixture
def bucket(s3_client) -> Iterator[str]:
    """A new bucket with a unique name; emptied and deleted after the test."""
    name = f"darkroom-test-{uuid.uuid4().hex[:12]}"
    s3_client.create_bucket(Bucket=name)
    yield name
    for page in s3_client.get_paginator("list_objects_v2").paginate(Bucket=name):
        for obj in page.get("Contents", []):
            s3_client.delete_object(Bucket=name, Key=obj["Key"])
    s3_client.delete_bucket(Bucket=name)


@pytest.fixture(scope="session")
def tiny_model(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """The offline tiny pipeline, built once per session (the same code `make demo` runs)."""
    from darkroom.devtools.tiny_model import build_tiny_pipeline

    return build_tiny_pipeline(tmp_path_factory.mktemp("models") / "tiny-sd")


@pytest.fixture(scope="session")
def tiny_upscaler(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """The offline tiny x4 upscaler pipeline, built once per session."""
    from darkroom.devtools.tiny_upscaler import build_tiny_upscaler

    return build_tiny_upscaler(tmp_path_factory.mktemp("upscalers") / "tiny-x4")


@pytest.fixture
def use_tiny_model(tiny_model: Path, monkeypatch: pytest.MonkeyPatch) -> Path:
    """Point `generation.model: tiny` at the session's tiny pipeline."""
    monkeypatch.setenv("DARKROOM_TINY_MODEL", str(tiny_model))
    return tiny_model


# --------------------------------------------------------------------------- MLflow


@pytest.fixture(scope="session")
def mlflow_server() -> Iterator[str]:
    """Tracking URI of a throwaway ``mlflow server`` on 127.0.0.1 (SQLite backend store and
    artifact root in a temp dir), shared by the session."""
    from tests.support.mlflow_server import mlflow_server as start

    with contextlib.ExitStack() as stack:
        yield _start(stack, start)


@pytest.fixture
def mlflow_uri(mlflow_server: str, monkeypatch: pytest.MonkeyPatch) -> str:
    """Send this test's tracking and registry calls to the session's MLflow server."""
    monkeypatch.setenv("DARKROOM_MLFLOW_TRACKING_URI", mlflow_server)
    no_proxy = ",".join(filter(None, [os.environ.get("NO_PROXY"), "127.0.0.1,localhost"]))
    monkeypatch.setenv("NO_PROXY", no_proxy)
    monkeypatch.setenv("no_proxy", no_proxy)
    return mlflow_server
