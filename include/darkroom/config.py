"""Where Darkroom keeps its state and how it reaches the outside world, chosen in one place.

Everything comes from environment variables so that the CLI, Airflow workers and tests
agree without passing paths around. The Airflow adapters may override the catalog URL and
storage settings from Airflow connections (see ``darkroom_operators.hooks``).
"""

from __future__ import annotations

import os
from dataclasses import dataclass, field
from pathlib import Path

PROJECT_ROOT = Path(__file__).resolve().parents[2]


def _home() -> Path:
    return Path(os.environ.get("DARKROOM_HOME", PROJECT_ROOT / ".darkroom")).resolve()


def _paths(value: str) -> tuple[Path, ...]:
    return tuple(Path(p).resolve() for p in value.split(os.pathsep) if p.strip())


@dataclass(frozen=True)
class Settings:
    """Resolved configuration. Build with :func:`Settings.from_env`."""

    home: Path
    catalog_url: str
    storage_url: str
    campaigns_dir: Path
    mlflow_tracking_uri: str
    tiny_model_dir: Path
    s3_endpoint_url: str | None = None
    # Folders beyond the built-in ones that campaigns may read files from, and publish to
    # (darkroom.confine): os.pathsep-separated lists.
    input_roots: tuple[Path, ...] = ()
    publish_roots: tuple[Path, ...] = ()
    # C2PA signing (darkroom.provenance.credentials): PEM text or a file path each. Unset: a
    # local test CA under $DARKROOM_HOME/c2pa signs (made once); real deployments bring a
    # certificate from a CA their readers trust.
    c2pa_cert: str | None = None  # the signing certificate chain, leaf first
    c2pa_key: str | None = field(default=None, repr=False)  # its private key
    c2pa_trust_anchors: str | None = None  # root(s) a signature must chain to
    c2pa_tsa_url: str | None = None  # an RFC 3161 time-stamp authority, if any
    extra: dict = field(default_factory=dict)

    @classmethod
    def from_env(cls, **overrides) -> Settings:
        home = _home()
        values = dict(
            home=home,
            catalog_url=os.environ.get("DARKROOM_CATALOG_URL", f"sqlite:///{home / 'catalog.db'}"),
            storage_url=os.environ.get("DARKROOM_STORAGE_URL", (home / "assets").as_uri()),
            campaigns_dir=Path(
                os.environ.get("DARKROOM_CAMPAIGNS_DIR", PROJECT_ROOT / "include" / "campaigns")
            ),
            mlflow_tracking_uri=os.environ.get(
                "DARKROOM_MLFLOW_TRACKING_URI",
                os.environ.get("MLFLOW_TRACKING_URI", f"sqlite:///{home / 'mlflow.db'}"),
            ),
            tiny_model_dir=Path(
                os.environ.get("DARKROOM_TINY_MODEL", home / "models" / "tiny-sd")
            ),
            s3_endpoint_url=os.environ.get("DARKROOM_S3_ENDPOINT_URL")
            or os.environ.get("AWS_ENDPOINT_URL_S3"),
            input_roots=_paths(os.environ.get("DARKROOM_INPUT_ROOTS", "")),
            publish_roots=_paths(os.environ.get("DARKROOM_PUBLISH_ROOTS", "")),
            c2pa_cert=os.environ.get("DARKROOM_C2PA_CERT") or None,
            c2pa_key=os.environ.get("DARKROOM_C2PA_KEY") or None,
            c2pa_trust_anchors=os.environ.get("DARKROOM_C2PA_TRUST_ANCHORS") or None,
            c2pa_tsa_url=os.environ.get("DARKROOM_C2PA_TSA_URL") or None,
        )
        values.update({k: v for k, v in overrides.items() if v is not None})
        return cls(**values)

    @property
    def mlflow_artifacts_dir(self) -> Path:
        return self.home / "mlflow-artifacts"


def gpu_routing(queue: str | None = None, pool: str | None = None) -> dict[str, str]:
    """Task arguments that send the generate stage to the GPU workers: the spec's
    ``generation.queue``/``pool`` if set, else ``$DARKROOM_GPU_QUEUE``/``$DARKROOM_GPU_POOL``.

    Empty by default: the embedded default has no ``gpu`` pool, and a task in a pool that
    does not exist is never scheduled. The Celery stack sets both variables (docker/stack.env).
    """
    routing = {
        "queue": queue or os.environ.get("DARKROOM_GPU_QUEUE") or None,
        "pool": pool or os.environ.get("DARKROOM_GPU_POOL") or None,
    }
    return {k: v for k, v in routing.items() if v}


def airflow_env(settings: Settings) -> dict[str, str]:
    """Environment for the embedded Airflow (CLI runs, `make up`): defaults only, so a
    deployment's own AIRFLOW__* settings win."""
    airflow_home = settings.home / "airflow"
    return {
        "AIRFLOW_HOME": str(airflow_home),
        "AIRFLOW__CORE__DAGS_FOLDER": str(PROJECT_ROOT / "dags"),
        "AIRFLOW__CORE__PLUGINS_FOLDER": str(PROJECT_ROOT / "plugins"),
        "AIRFLOW__CORE__LOAD_EXAMPLES": "False",
        "AIRFLOW__CORE__UNIT_TEST_MODE": "False",
        "AIRFLOW__DATABASE__SQL_ALCHEMY_CONN": f"sqlite:///{airflow_home / 'airflow.db'}",
        "AIRFLOW__CORE__DAGBAG_IMPORT_TIMEOUT": "120",
        "AIRFLOW__LOGGING__BASE_LOG_FOLDER": str(airflow_home / "logs"),
        "DARKROOM_HOME": str(settings.home),
    }


def apply_airflow_env(settings: Settings | None = None) -> dict[str, str]:
    """Set :func:`airflow_env` defaults in this process (before Airflow is imported)."""
    env = airflow_env(settings or Settings.from_env())
    for key, value in env.items():
        os.environ.setdefault(key, value)
    (Path(os.environ["AIRFLOW_HOME"])).mkdir(parents=True, exist_ok=True)
    return env
