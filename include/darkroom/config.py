"""Where Darkroom keeps its state and how it reaches the outside world, chosen in one place.

:class:`Settings` is the only reader of the process environment: every ``DARKROOM_*``
variable (and the ``AIRFLOW_CONN_*`` connections a product source may name) is read here,
once, into a frozen value that the stages, the CLI and the Airflow adapters pass around. The
Airflow adapters override some settings from Airflow connections (darkroom_operators.hooks).
"""

from __future__ import annotations

import getpass
import os
from dataclasses import dataclass, field, replace
from pathlib import Path

PROJECT_ROOT = Path(__file__).resolve().parents[2]
#: Brand files (logos, fonts, reference images); relative recipe paths are under it.
BRAND_DIR = PROJECT_ROOT / "include" / "brand"

#: Settings field -> the environment variable that sets it (the README's configuration table).
ENVIRONMENT = {
    "home": "DARKROOM_HOME",
    "catalog_url": "DARKROOM_CATALOG_URL",
    "storage_url": "DARKROOM_STORAGE_URL",
    "campaigns_dir": "DARKROOM_CAMPAIGNS_DIR",
    "mlflow_tracking_uri": "DARKROOM_MLFLOW_TRACKING_URI",
    "tiny_model_dir": "DARKROOM_TINY_MODEL",
    "demo_model_dir": "DARKROOM_DEMO_MODEL",
    "s3_endpoint_url": "DARKROOM_S3_ENDPOINT_URL",
    "catalog_conn_id": "DARKROOM_CATALOG_CONN_ID",
    "mlflow_conn_id": "DARKROOM_MLFLOW_CONN_ID",
    "model_server_conn_id": "DARKROOM_MODEL_SERVER_CONN_ID",
    "stability_conn_id": "DARKROOM_STABILITY_CONN_ID",
    "model_server_url": "DARKROOM_MODEL_SERVER_URL",
    "stability_api_key": "DARKROOM_STABILITY_API_KEY",
    "stability_base_url": "DARKROOM_STABILITY_BASE_URL",
    "gpu_queue": "DARKROOM_GPU_QUEUE",
    "gpu_pool": "DARKROOM_GPU_POOL",
    "gpu_hourly_cost": "DARKROOM_GPU_HOURLY_COST",
    "compile_backend": "DARKROOM_COMPILE_BACKEND",
    "input_roots": "DARKROOM_INPUT_ROOTS",
    "publish_roots": "DARKROOM_PUBLISH_ROOTS",
    "c2pa_conn_id": "DARKROOM_C2PA_CONN_ID",
    "c2pa_cert": "DARKROOM_C2PA_CERT",
    "c2pa_key": "DARKROOM_C2PA_KEY",
    "c2pa_trust_anchors": "DARKROOM_C2PA_TRUST_ANCHORS",
    "c2pa_tsa_url": "DARKROOM_C2PA_TSA_URL",
}
#: Other tools' variables Darkroom falls back to when its own are not set.
FALLBACKS = {"mlflow_tracking_uri": "MLFLOW_TRACKING_URI", "s3_endpoint_url": "AWS_ENDPOINT_URL_S3"}
CONNECTION_PREFIX = "AIRFLOW_CONN_"
_PATHS = {"home", "campaigns_dir", "tiny_model_dir", "demo_model_dir"}
_NUMBERS = {"gpu_hourly_cost"}
_PATH_LISTS = {"input_roots", "publish_roots"}  # os.pathsep-separated


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
    #: The committed demo model (``generation.model: demo``), trained by ``models train-demo``.
    demo_model_dir: Path = PROJECT_ROOT / "include" / "models" / "darkroom-demo"
    s3_endpoint_url: str | None = None
    # Airflow connections the adapters read (darkroom_operators.hooks).
    catalog_conn_id: str = "darkroom_catalog"
    mlflow_conn_id: str = "darkroom_mlflow"
    model_server_conn_id: str = "darkroom_model_server"
    stability_conn_id: str = "darkroom_stability"
    c2pa_conn_id: str = "darkroom_c2pa"
    # Inference backends other than local (darkroom.generation.routing.make_backend).
    model_server_url: str | None = None
    stability_api_key: str | None = field(default=None, repr=False)
    stability_base_url: str = "https://api.stability.ai"
    # Where the GPU stages run: None leaves Airflow's default queue / pool.
    gpu_queue: str | None = None
    gpu_pool: str | None = None
    #: Price of an accelerator hour: the dry-run plan's estimate and MLflow's estimated_cost.
    gpu_hourly_cost: float = 2.0
    compile_backend: str = "inductor"  # torch.compile's backend (tests use "eager")
    # Folders beyond the built-in ones that campaigns may read files from, and publish to
    # (darkroom.confine).
    input_roots: tuple[Path, ...] = ()
    publish_roots: tuple[Path, ...] = ()
    # C2PA signing (darkroom.provenance.credentials): PEM text or a file path each. Unset: a
    # local test CA under $DARKROOM_HOME/c2pa signs (made once); real deployments bring a
    # certificate from a CA their readers trust.
    c2pa_cert: str | None = None  # the signing certificate chain, leaf first
    c2pa_key: str | None = field(default=None, repr=False)  # its private key
    c2pa_trust_anchors: str | None = None  # root(s) a signature must chain to
    c2pa_tsa_url: str | None = None  # an RFC 3161 time-stamp authority, if any
    #: ``AIRFLOW_CONN_<ID>`` values: product sources outside Airflow read connections here.
    connections: dict[str, str] = field(default_factory=dict, repr=False)
    #: The fields a DARKROOM_* variable set (they win over the adapters' connections).
    from_environment: frozenset[str] = frozenset()

    @classmethod
    def from_env(cls, **overrides) -> Settings:
        """Settings from ``os.environ``; ``overrides`` that are not None win."""
        env = os.environ
        home = Path(env.get(ENVIRONMENT["home"], PROJECT_ROOT / ".darkroom")).resolve()
        values: dict = {
            "home": home,
            "catalog_url": f"sqlite:///{home / 'catalog.db'}",
            "storage_url": (home / "assets").as_uri(),
            "campaigns_dir": PROJECT_ROOT / "include" / "campaigns",
            "mlflow_tracking_uri": f"sqlite:///{home / 'mlflow.db'}",
            "tiny_model_dir": home / "models" / "tiny-sd",
        }
        given = {"home"} if ENVIRONMENT["home"] in env else set()
        for name, var in ENVIRONMENT.items():
            raw = env.get(var) or env.get(FALLBACKS.get(name, ""))
            if name == "home" or not raw:
                continue
            if env.get(var):  # a fallback (another tool's variable) does not beat a connection
                given.add(name)
            values[name] = (Path(raw) if name in _PATHS else float(raw) if name in _NUMBERS
                            else _paths(raw) if name in _PATH_LISTS else raw)
        values["connections"] = {k.removeprefix(CONNECTION_PREFIX): v for k, v in env.items()
                                 if k.startswith(CONNECTION_PREFIX)}
        values["from_environment"] = frozenset(given)
        values.update({k: v for k, v in overrides.items() if v is not None})
        return cls(**values)

    def with_connections(self, **values) -> Settings:
        """These settings with values the Airflow adapters read from connections; a value
        an environment variable set wins, and None leaves a setting as it is."""
        return replace(self, **{k: v for k, v in values.items()
                                if v is not None and k not in self.from_environment})

    @property
    def mlflow_artifacts_dir(self) -> Path:
        return self.home / "mlflow-artifacts"

    def gpu_routing(self, queue: str | None = None, pool: str | None = None) -> dict[str, str]:
        """Task arguments that send a GPU stage (generate, regenerate, upscale) to the GPU
        workers: the spec's ``generation.queue``/``pool`` if set, else ``$DARKROOM_GPU_QUEUE``/
        ``$DARKROOM_GPU_POOL``.

        Empty by default: the embedded default has no ``gpu`` pool, and a task in a pool that
        does not exist is never scheduled. The Celery stack sets both (docker/stack.env).
        """
        routing = {"queue": queue or self.gpu_queue, "pool": pool or self.gpu_pool}
        return {k: v for k, v in routing.items() if v}

    def gpu_price(self, campaign_price: float | None = None) -> float:
        """The price of a GPU-hour: the campaign's ``generation.cost_per_gpu_hour`` when it
        sets one, else ``$DARKROOM_GPU_HOURLY_COST``. The one source the plan and MLflow use."""
        return self.gpu_hourly_cost if campaign_price is None else campaign_price


def local_user() -> str:
    """Who the local user is, for decisions made from this machine (CLI, --approve-all)."""
    try:
        return getpass.getuser()
    except Exception:  # no login name in a container without a passwd entry
        return "local"


#: Seconds a connection to the embedded Airflow's SQLite database waits for another process's
#: write before "database is locked". Python's default is 5; on a busy 2-core machine the
#: scheduler's writes outlast it, and `airflow backfill create` beside a running scheduler
#: failed (issue #15). SQLite has one writer at a time: the others must wait, not fail.
AIRFLOW_SQLITE_TIMEOUT_S = 60


def airflow_sqlite_url(airflow_home: Path) -> str:
    """The embedded Airflow's database: SQLite in its home, waiting for writers (above)."""
    return f"sqlite:///{airflow_home / 'airflow.db'}?timeout={AIRFLOW_SQLITE_TIMEOUT_S}"


def settle_airflow_config(airflow_home: Path) -> bool:
    """Give the airflow.cfg that Airflow wrote for itself the database URL of
    :func:`airflow_env`, so that an ``airflow`` command run with only ``AIRFLOW_HOME`` set
    (docs/regenerate.md's backfill) waits for the scheduler's writes as Darkroom's processes
    do. Only Airflow's own default line is changed (a deployment's choice stays), and the
    file is otherwise Airflow's: its generated secrets must stay, or tasks cannot sign in.
    True when the file was changed."""
    cfg = airflow_home / "airflow.cfg"
    if not cfg.is_file():
        return False
    text = cfg.read_text()
    default = f"sql_alchemy_conn = sqlite:///{airflow_home / 'airflow.db'}\n"
    at = text.find(default)
    if at < 0 or (at > 0 and text[at - 1] != "\n"):
        return False
    tmp = cfg.with_name(".airflow.cfg.tmp")
    tmp.write_text(text[:at] + f"sql_alchemy_conn = {airflow_sqlite_url(airflow_home)}\n"
                   + text[at + len(default):])
    tmp.chmod(cfg.stat().st_mode)  # Airflow keeps it from group and others: it holds secrets
    tmp.replace(cfg)
    return True


def airflow_env(settings: Settings, campaigns_dir: Path | None = None) -> dict[str, str]:
    """Environment for the embedded Airflow (CLI runs, `make up`): defaults only, so a
    deployment's own AIRFLOW__* settings win. ``campaigns_dir``: the folder the DAG file
    builds campaigns from (a spec outside include/campaigns runs too)."""
    airflow_home = settings.home / "airflow"
    env = {
        "AIRFLOW_HOME": str(airflow_home),
        "AIRFLOW__CORE__DAGS_FOLDER": str(PROJECT_ROOT / "dags"),
        "AIRFLOW__CORE__PLUGINS_FOLDER": str(PROJECT_ROOT / "plugins"),
        "AIRFLOW__CORE__LOAD_EXAMPLES": "False",
        "AIRFLOW__CORE__UNIT_TEST_MODE": "False",
        "AIRFLOW__DATABASE__SQL_ALCHEMY_CONN": airflow_sqlite_url(airflow_home),
        "AIRFLOW__CORE__DAGBAG_IMPORT_TIMEOUT": "120",
        "AIRFLOW__LOGGING__BASE_LOG_FOLDER": str(airflow_home / "logs"),
        "DARKROOM_HOME": str(settings.home),
    }
    if campaigns_dir is not None:
        env[ENVIRONMENT["campaigns_dir"]] = str(campaigns_dir)
    return env


def apply_airflow_env(settings: Settings | None = None, campaigns_dir: Path | None = None) -> dict[str, str]:
    """Set :func:`airflow_env` in this process (before Airflow is imported): Airflow reads
    its configuration from the environment. The campaigns folder, when given, is set even
    if another one was: the run asked for that spec."""
    env = airflow_env(settings or Settings.from_env(), campaigns_dir)
    for key, value in env.items():
        if key == ENVIRONMENT["campaigns_dir"]:
            os.environ[key] = value
        else:
            os.environ.setdefault(key, value)
    Path(os.environ["AIRFLOW_HOME"]).mkdir(parents=True, exist_ok=True)
    return env


def quiet_progress_bars() -> None:
    """MLflow draws upload progress bars into task logs unless told not to (it reads its
    own environment variable at upload time)."""
    os.environ.setdefault("MLFLOW_ENABLE_ARTIFACTS_PROGRESS_BAR", "false")
