"""DarkroomHook: the one place where Airflow configuration becomes Darkroom settings."""

from __future__ import annotations

from typing import TYPE_CHECKING

from airflow.sdk import BaseHook, Context
from darkroom.config import Settings

if TYPE_CHECKING:  # the stages pull in SQLAlchemy's ORM: not at DAG parse time
    from darkroom.stages.context import RunContext

#: The catalog's connection when none is named (Settings.catalog_conn_id's default).
CATALOG_CONN_ID = Settings.catalog_conn_id


def _connection_or_none(conn_id: str):
    try:
        return BaseHook.get_connection(conn_id)
    except Exception:  # AirflowNotFoundException, or no API server in plain unit use
        return None


def _dag_run_state(ti):
    """Airflow's state of any DAG run, asked through the task's own API channel (the Task
    SDK's ``get_dagrun_state``); None when there is no task instance or no answer."""
    if ti is None or not hasattr(ti, "get_dagrun_state"):
        return None

    def state(dag_id: str, run_id: str) -> str | None:
        try:
            value = ti.get_dagrun_state(dag_id=dag_id, run_id=run_id)
        except Exception:  # no such run (deleted), or no API server: the catalog decides
            return None
        return str(getattr(value, "value", value)) if value is not None else None

    return state


def _http_url(conn) -> str | None:
    """An HTTP connection as a base URL (host, port, schema http/https); the whole URI may be
    typed into the host field."""
    if conn is None or not conn.host:
        return None
    if "://" in conn.host:
        return conn.host
    port = f":{conn.port}" if conn.port else ""
    return f"{conn.schema or 'http'}://{conn.host}{port}"


class DarkroomHook(BaseHook):
    """Settings from the environment, completed from Airflow connections where the
    environment does not set a value:

    - ``darkroom_catalog`` (Postgres): the catalog;
    - ``darkroom_mlflow`` (HTTP): the MLflow tracking server;
    - ``darkroom_model_server`` (HTTP): a `darkroom serve-model` host;
    - ``darkroom_stability``: Stability AI's API key as password, host overriding the base URL;
    - ``darkroom_c2pa``: the Content Credentials signing key (:meth:`signing`).

    S3 clients come from the Amazon provider's S3Hook, so AWS connections (and their endpoint
    overrides) apply. The ids are ``Settings``' ``*_conn_id`` (``DARKROOM_*_CONN_ID``).

    :param catalog_conn_id: Airflow connection holding the catalog database.
    """

    conn_name_attr = "catalog_conn_id"
    default_conn_name = CATALOG_CONN_ID
    hook_name = "Darkroom"

    def __init__(self, catalog_conn_id: str | None = None, **kwargs):
        super().__init__(**kwargs)
        self.base = Settings.from_env()
        self.catalog_conn_id = catalog_conn_id or self.base.catalog_conn_id

    def settings(self) -> Settings:
        base = self.base
        stability = _connection_or_none(base.stability_conn_id)
        return base.with_connections(
            catalog_url=self.catalog_url(),
            mlflow_tracking_uri=_http_url(_connection_or_none(base.mlflow_conn_id)),
            model_server_url=_http_url(_connection_or_none(base.model_server_conn_id)),
            stability_api_key=stability.password if stability is not None else None,
            stability_base_url=(None if stability is None or not stability.host else stability.host
                                if "://" in stability.host else f"https://{stability.host}"),
            **self.signing(),
        )

    def signing(self) -> dict[str, str]:
        """The C2PA signing key from the ``darkroom_c2pa`` connection (darkroom.provenance.
        credentials): password = the private key (PEM), extra = {"certificate_chain": PEM,
        leaf first; "trust_anchors": PEM (optional); "tsa_url": URL (optional)}. Nothing
        when a DARKROOM_C2PA_* variable sets the key or certificate: a key and a chain from
        two places would not belong together."""
        if self.base.from_environment & {"c2pa_cert", "c2pa_key"}:
            return {}
        conn = _connection_or_none(self.base.c2pa_conn_id)
        if conn is None or not conn.password:
            return {}
        extra = conn.extra_dejson
        return {"c2pa_key": conn.password, "c2pa_cert": extra.get("certificate_chain"),
                "c2pa_trust_anchors": extra.get("trust_anchors"), "c2pa_tsa_url": extra.get("tsa_url")}

    def catalog_url(self) -> str | None:
        """The catalog connection's SQLAlchemy URL (None without such a connection). It holds
        the password: build it where it is used, never pass it around (triggers get the id)."""
        if "catalog_url" in self.base.from_environment:
            return None
        if _connection_or_none(self.catalog_conn_id) is None:
            return None
        from airflow.providers.postgres.hooks.postgres import PostgresHook  # only with the connection

        return PostgresHook(postgres_conn_id=self.catalog_conn_id).sqlalchemy_url.render_as_string(
            hide_password=False)

    @staticmethod
    def s3_client(aws_conn_id: str | None, endpoint_url: str | None = None):
        """A boto3 S3 client for an AWS connection; the connection may be absent (env creds)."""
        if aws_conn_id and _connection_or_none(aws_conn_id) is not None:
            from airflow.providers.amazon.aws.hooks.s3 import S3Hook  # the provider: seconds to import

            hook = S3Hook(aws_conn_id=aws_conn_id)
            if endpoint_url is None:  # the connection's own endpoint_url extra applies
                return hook.get_conn()
            return hook.get_session().client("s3", endpoint_url=endpoint_url, config=hook.config)
        import boto3  # ~0.5 s to import: only runs that touch S3 need it

        return boto3.client("s3", endpoint_url=endpoint_url)

    def sql_url(self, conn_id: str) -> str:
        """A SQLAlchemy URL for an Airflow Postgres connection (``postgres://CONN_ID`` product
        sources); without such a connection, darkroom reads ``AIRFLOW_CONN_<CONN_ID>`` itself."""
        if _connection_or_none(conn_id) is None:
            from darkroom.products import sql_url  # pandas and SQLAlchemy: not at parse time

            return sql_url(conn_id, self.base)
        from airflow.providers.postgres.hooks.postgres import PostgresHook  # only with the connection

        return PostgresHook(postgres_conn_id=conn_id).sqlalchemy_url.render_as_string(hide_password=False)

    def run_context(self, spec_path: str, context: Context) -> RunContext:
        from darkroom.stages.context import RunContext  # the catalog (SQLAlchemy ORM): not at parse time
        from darkroom_operators.stopping import stop_on_sigterm  # the DAG file needs none of it

        stop_on_sigterm()  # every task starts here: SIGTERM stops it (Airflow's handler does not)
        dag_run = context["dag_run"]
        ti = context.get("ti")
        return RunContext.open(
            spec_path,
            dag_id=dag_run.dag_id,
            run_id=dag_run.run_id,
            conf=dict(context["params"]),
            settings=self.settings(),
            s3_client_factory=self.s3_client,
            sql_url_factory=self.sql_url,
            # The host Airflow records for the task: what the GPU stages note beside their device.
            worker=getattr(ti, "hostname", None),
            # Whether a run that claimed an asset still works on it: Airflow knows.
            run_state=_dag_run_state(ti),
        )
