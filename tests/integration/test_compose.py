"""Static checks of docker-compose.yaml (no Docker engine needed): it parses, every service
is buildable and runnable, dependencies and ports are consistent, and its settings are the
ones the local integration stack uses (docker/stack.env, one source of truth)."""

from __future__ import annotations

import re

import pytest
import yaml

from tests.integration.stack import (
    COMPOSE_FILE,
    CONTAINER_ROOT,
    POSTGRES_INIT,
    ROOT,
    SERVICE_PORTS,
    STACK_ENV,
    addresses,
    localize,
    read_env,
)

# Services that run once and exit: no health check, `restart: "no"`.
ONE_SHOT = {"minio-init", "airflow-init"}
AIRFLOW_COMPONENTS = {
    "airflow-apiserver": "api-server",
    "airflow-scheduler": "scheduler",
    "airflow-dag-processor": "dag-processor",
    "airflow-triggerer": "triggerer",
    "airflow-worker": "celery worker",
    "airflow-worker-gpu": "celery worker",
}


@pytest.fixture(scope="module")
def compose() -> dict:
    return yaml.safe_load(COMPOSE_FILE.read_text())


@pytest.fixture(scope="module")
def services(compose) -> dict:
    return compose["services"]


@pytest.fixture(scope="module")
def env() -> dict[str, str]:
    return read_env()


def _command(service: dict) -> str:
    cmd = service.get("command", "")
    return " ".join(cmd) if isinstance(cmd, list) else str(cmd)


def _depends(service: dict) -> dict:
    deps = service.get("depends_on", {})
    return {d: {} for d in deps} if isinstance(deps, list) else deps


def test_every_service_has_an_image_or_build_and_a_command(services):
    for name, svc in services.items():
        assert "image" in svc or "build" in svc, name
        assert _command(svc).strip(), f"{name} has no command"


def test_expected_services_exist(services):
    assert set(SERVICE_PORTS) | set(AIRFLOW_COMPONENTS) | ONE_SHOT <= set(services)
    for name, sub in AIRFLOW_COMPONENTS.items():
        assert f"airflow {sub}" in _command(services[name]), name


def test_health_checks(services):
    for name, svc in services.items():
        if name in ONE_SHOT:
            assert "healthcheck" not in svc and svc.get("restart") == "no", name
            continue
        check = svc.get("healthcheck")
        assert check and check.get("test"), f"{name} has no health check"
        assert check["test"][0] in ("CMD", "CMD-SHELL"), name


def test_depends_on_targets_exist_and_conditions_fit(services):
    for name, svc in services.items():
        for dep, spec in _depends(svc).items():
            assert dep in services, f"{name} depends on unknown service {dep}"
            assert dep != name
            cond = spec.get("condition", "service_started")
            if dep in ONE_SHOT:
                assert cond == "service_completed_successfully", (name, dep)
            else:
                assert cond == "service_healthy", (name, dep)


def test_depends_on_has_no_cycle(services):
    visiting, done = set(), set()

    def visit(n, path):
        assert n not in visiting, f"dependency cycle: {' -> '.join([*path, n])}"
        if n in done:
            return
        visiting.add(n)
        for dep in _depends(services[n]):
            visit(dep, [*path, n])
        visiting.discard(n)
        done.add(n)

    for n in services:
        visit(n, [])


def test_airflow_components_start_after_init_and_backing_services(services):
    for name in AIRFLOW_COMPONENTS:
        deps = _depends(services[name])
        assert {"postgres", "redis", "airflow-init", "minio-init"} <= set(deps), name
    for worker in ("airflow-worker", "airflow-worker-gpu"):
        assert "airflow-apiserver" in _depends(services[worker])  # the execution API


def test_published_ports_match_the_ports_services_listen_on(services):
    published: dict[str, str] = {}
    for name, svc in services.items():
        for mapping in svc.get("ports", []):
            host, _, container = str(mapping).rpartition(":")
            assert host and container.isdigit(), (name, mapping)
            assert host not in published, f"host port {host} published twice ({published[host]}, {name})"
            published[host] = name
            listening = f"{container}" in _command(svc) or container in " ".join(
                map(str, svc.get("healthcheck", {}).get("test", [])))
            assert listening, f"{name} publishes {container} but neither command nor health check uses it"
    for name, port in SERVICE_PORTS.items():
        svc = services[name]
        text = _command(svc) + " ".join(map(str, svc.get("healthcheck", {}).get("test", [])))
        assert str(port) in text or name == "postgres", f"{name} does not listen on {port}"
    assert services["postgres"]["image"].startswith("postgres:")  # 5432 is the image's port


def test_addresses_in_stack_env_are_services_on_their_ports(env):
    found = addresses(env)
    assert found, "stack.env names no service address"
    for host, port in found:
        assert SERVICE_PORTS.get(host) == port, f"stack.env: {host}:{port} is not a compose service:port"


def test_airflow_containers_read_stack_env(services):
    for name in [*AIRFLOW_COMPONENTS, "airflow-init", "mlflow", "minio-init"]:
        env_file = services[name].get("env_file")
        files = env_file if isinstance(env_file, list) else [env_file]
        assert "docker/stack.env" in files, name
        # Inline environment would be a second source of truth that the local stack misses.
        assert not services[name].get("environment"), f"{name}: put settings in docker/stack.env"
    assert (ROOT / "docker" / "stack.env") == STACK_ENV


def test_stack_env_is_the_integration_tests_configuration(env, tmp_path):
    """The local stack's settings are stack.env's, with only addresses and paths moved."""
    ports = {name: 40000 + i for i, name in enumerate(SERVICE_PORTS)}
    local = localize(env, ports, tmp_path)
    assert set(local) == set(env)
    for key, value in env.items():
        moved = re.sub(r"(?<=[/@])[a-z][a-z0-9-]*:\d+", "ADDR", value)
        moved_local = re.sub(r"127\.0\.0\.1:\d+", "ADDR", local[key])
        moved_local = moved_local.replace(str(tmp_path), CONTAINER_ROOT + "/state").replace(
            str(ROOT), CONTAINER_ROOT)
        assert moved == moved_local, key
    with pytest.raises(KeyError, match="does not run"):
        localize({"X": "redis://elsewhere:1/0"}, ports, tmp_path)


def test_routing_and_executor_settings(env, services):
    assert env["AIRFLOW__CORE__EXECUTOR"] == "CeleryExecutor"
    assert env["AIRFLOW__CELERY__BROKER_URL"].startswith("redis://redis:6379/")
    assert env["DARKROOM_GPU_QUEUE"] == "gpu" and env["DARKROOM_GPU_POOL"] == "gpu"
    assert int(env["DARKROOM_GPU_POOL_SLOTS"]) >= 1
    gpu, default = services["airflow-worker-gpu"], services["airflow-worker"]
    assert "--queues gpu" in _command(gpu) and "--queues default" in _command(default)
    assert env["AIRFLOW__OPERATORS__DEFAULT_QUEUE"] == "default"
    devices = gpu["deploy"]["resources"]["reservations"]["devices"]
    assert any(d.get("driver") == "nvidia" and "gpu" in d.get("capabilities", []) for d in devices)
    assert "deploy" not in default
    init = _command(services["airflow-init"])
    assert "airflow db migrate" in init and "airflow pools set" in init and "DARKROOM_GPU_POOL" in init


def test_buckets_databases_and_connections_line_up(env, services):
    buckets = env["DARKROOM_BUCKETS"].split()
    assert env["DARKROOM_STORAGE_URL"].removeprefix("s3://").split("/")[0] in buckets
    mlflow = _command(services["mlflow"])
    dest = re.search(r"--artifacts-destination\s+s3://([^/\s]+)", mlflow)
    assert dest and dest[1] in buckets
    sql = POSTGRES_INIT.read_text()
    for url in (env["AIRFLOW__DATABASE__SQL_ALCHEMY_CONN"], env["AIRFLOW_CONN_DARKROOM_CATALOG"],
                re.search(r"--backend-store-uri\s+(\S+)", mlflow)[1]):
        user, db = re.search(r"//([^:]+):[^@]+@[^/]+/(\w+)", url).groups()
        assert f"CREATE DATABASE {db} OWNER {user}" in sql, url
    assert "init.sql" in " ".join(services["postgres"]["volumes"])
    import json

    aws = json.loads(env["AIRFLOW_CONN_AWS_DEFAULT"])
    assert aws["extra"]["endpoint_url"] == env["DARKROOM_S3_ENDPOINT_URL"]


def test_values_are_literal(env):
    """compose's env_file takes values verbatim; quotes or ${...} would reach the app as-is."""
    for key, value in env.items():
        assert not value.startswith(("'", '"')) and "${" not in value, key


def test_image_installs_the_project_from_the_pins():
    dockerfile = (ROOT / "Dockerfile").read_text()
    assert "requirements/constraints.txt" in dockerfile
    for folder in ("include/", "operators/", "dags/", "plugins/"):
        assert f"COPY {folder}" in dockerfile, folder
    assert f"WORKDIR {CONTAINER_ROOT}" in dockerfile
