"""DarkroomHook: the one place where Airflow configuration becomes Darkroom settings."""

from __future__ import annotations

import os
from typing import TYPE_CHECKING

from airflow.sdk import BaseHook, Context
from darkroom.config import Settings

if TYPE_CHECKING:  # the stages pull in SQLAlchemy's ORM: not at DAG parse time
    from darkroom.stages import RunContext

CATALOG_CONN_ID = os.environ.get("DARKROOM_CATALOG_CONN_ID", "darkroom_catalog")


def _connection_or_none(conn_id: str):
    try:
        return BaseHook.get_connection(conn_id)
    except Exception:  # AirflowNotFoundException, or no API server in plain unit use
        return None


MLFLOW_CONN_ID = os.environ.get("DARKROOM_MLFLOW_CONN_ID", "darkroom_mlflow")


def mlflow_uri_from_connection(conn_id: str = MLFLOW_CONN_ID) -> str | None:
    """The MLflow tracking URI from an Airflow connection (an HTTP connection: host, port,
    schema http/https), unless DARKROOM_MLFLOW_TRACKING_URI is set; None: Settings decides."""
    if "DARKROOM_MLFLOW_TRACKING_URI" in os.environ:
        return None
    conn = _connection_or_none(conn_id)
    if conn is None or not conn.host:
        return None
    if "://" in conn.host:  # the whole URI typed into the host field
        return conn.host
    port = f":{conn.port}" if conn.port else ""
    return f"{conn.schema or 'http'}://{conn.host}{port}"


MODEL_SERVER_CONN_ID = os.environ.get("DARKROOM_MODEL_SERVER_CONN_ID", "darkroom_model_server")
STABILITY_CONN_ID = os.environ.get("DARKROOM_STABILITY_CONN_ID", "darkroom_stability")


def backend_settings() -> dict[str, str]:
    """Inference backend settings from Airflow connections (darkroom.backends reads them from
    ``Settings.extra``); the DARKROOM_* environment variables win when set.

    - ``darkroom_model_server``: HTTP connection to a `darkroom serve-model` host.
    - ``darkroom_stability``: the API key as password; host (optional) overrides the base URL.
    """
    extra: dict[str, str] = {}
    if "DARKROOM_MODEL_SERVER_URL" not in os.environ:
        conn = _connection_or_none(MODEL_SERVER_CONN_ID)
        if conn is not None and conn.host:
            port = f":{conn.port}" if conn.port else ""
            extra["model_server_url"] = (conn.host if "://" in conn.host
                                         else f"{conn.schema or 'http'}://{conn.host}{port}")
    if "DARKROOM_STABILITY_API_KEY" not in os.environ:
        conn = _connection_or_none(STABILITY_CONN_ID)
        if conn is not None and conn.password:
            extra["stability_api_key"] = conn.password
            if conn.host:
                extra["stability_base_url"] = conn.host if "://" in conn.host else f"https://{conn.host}"
    return extra


C2PA_CONN_ID = os.environ.get("DARKROOM_C2PA_CONN_ID", "darkroom_c2pa")


def signing_settings(conn_id: str = C2PA_CONN_ID) -> dict[str, str]:
    """The C2PA signing key from an Airflow connection (darkroom.provenance.credentials), unless
    DARKROOM_C2PA_CERT is set: password = the private key (PEM), extra = {"certificate_chain":
    PEM, leaf first; "trust_anchors": PEM (optional); "tsa_url": URL (optional)}."""
    if "DARKROOM_C2PA_CERT" in os.environ:
        return {}
    conn = _connection_or_none(conn_id)
    if conn is None or not conn.password:
        return {}
    extra = conn.extra_dejson
    out = {"c2pa_key": conn.password, "c2pa_cert": extra.get("certificate_chain"),
           "c2pa_trust_anchors": extra.get("trust_anchors"), "c2pa_tsa_url": extra.get("tsa_url")}
    return {k: v for k, v in out.items() if v}


class DarkroomHook(BaseHook):
    """Settings from the environment, with the catalog taken from an Airflow connection
    (``darkroom_catalog``, a Postgres connection) when one is defined, and S3 clients from
    the Amazon provider's S3Hook so AWS connections (and their endpoint overrides) apply.

    :param catalog_conn_id: Airflow connection holding the catalog database.
    """

    conn_name_attr = "catalog_conn_id"
    default_conn_name = CATALOG_CONN_ID
    hook_name = "Darkroom"

    def __init__(self, catalog_conn_id: str = CATALOG_CONN_ID, **kwargs):
        super().__init__(**kwargs)
        self.catalog_conn_id = catalog_conn_id

    def settings(self) -> Settings:
        url = None
        if "DARKROOM_CATALOG_URL" not in os.environ:
            conn = _connection_or_none(self.catalog_conn_id)
            if conn is not None:
                from airflow.providers.postgres.hooks.postgres import PostgresHook

                sa_url = PostgresHook(postgres_conn_id=self.catalog_conn_id).sqlalchemy_url
                url = sa_url.render_as_string(hide_password=False)
        return Settings.from_env(catalog_url=url, mlflow_tracking_uri=mlflow_uri_from_connection(),
                                 extra=backend_settings() or None, **signing_settings())

    @staticmethod
    def s3_client(aws_conn_id: str | None, endpoint_url: str | None = None):
        """A boto3 S3 client for an AWS connection; the connection may be absent (env creds)."""
        if aws_conn_id and _connection_or_none(aws_conn_id) is not None:
            from airflow.providers.amazon.aws.hooks.s3 import S3Hook

            hook = S3Hook(aws_conn_id=aws_conn_id)
            if endpoint_url is None:  # the connection's own endpoint_url extra applies
                return hook.get_conn()
            return hook.get_session().client("s3", endpoint_url=endpoint_url, config=hook.config)
        import boto3

        return boto3.client("s3", endpoint_url=endpoint_url)

    @staticmethod
    def sql_url(conn_id: str) -> str:
        """A SQLAlchemy URL for an Airflow Postgres connection (``postgres://CONN_ID`` product
        sources); without such a connection, darkroom reads ``AIRFLOW_CONN_<CONN_ID>`` itself."""
        if _connection_or_none(conn_id) is None:
            from darkroom.products import sql_url_from_env

            return sql_url_from_env(conn_id)
        from airflow.providers.postgres.hooks.postgres import PostgresHook

        return PostgresHook(postgres_conn_id=conn_id).sqlalchemy_url.render_as_string(hide_password=False)

    def run_context(self, spec_path: str, context: Context) -> RunContext:
        from darkroom.stages import RunContext

        dag_run = context["dag_run"]
        settings = self.settings()
        return RunContext.open(
            spec_path,
            dag_id=dag_run.dag_id,
            run_id=dag_run.run_id,
            conf=dict(context["params"]),
            settings=settings,
            s3_client_factory=self.s3_client,
            sql_url_factory=self.sql_url,
        )
