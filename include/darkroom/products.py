"""Product data: read the spec's source into rows.

Sources: CSV or Parquet (a path relative to the spec file, or s3://bucket/key), or
``postgres://CONN_ID`` with ``table`` or ``query``. The domain reads PostgreSQL through
SQLAlchemy with a URL; who supplies the URL is the caller's business: in Airflow the
Postgres provider's hook (operators/hooks.py), elsewhere ``AIRFLOW_CONN_<CONN_ID>`` (the
variable Airflow itself reads connections from, as ``Settings.connections`` holds it).

The source is the user's product database, not the catalog: the SQL here only reads it.
"""

from __future__ import annotations

import io
import json
import math
from collections.abc import Callable
from pathlib import Path

import pandas as pd
from sqlalchemy import MetaData, Table, create_engine, select, text
from sqlalchemy.engine import URL

from darkroom.config import Settings
from darkroom.errors import ValidationFailed
from darkroom.spec import SQL_SCHEME, LoadedSpec
from darkroom.storage import read_uri

SqlUrlFactory = Callable[[str], str]


def sql_url(conn_id: str, settings: Settings) -> str:
    """A SQLAlchemy URL for ``conn_id`` from ``AIRFLOW_CONN_<CONN_ID>`` (URI or JSON form)."""
    key = conn_id.upper().replace("-", "_").replace(".", "_")  # as Airflow names the variable
    name = f"AIRFLOW_CONN_{key}"
    raw = settings.connections.get(key)
    if not raw:
        raise ValidationFailed(
            f"products.source postgres://{conn_id}: no connection {conn_id!r}; fix: define the "
            f"Airflow connection, or set {name}=postgresql://user:password@host:5432/dbname"
        )
    if raw.lstrip().startswith("{"):
        c = json.loads(raw)
        return URL.create("postgresql+psycopg2", username=c.get("login"), password=c.get("password"),
                          host=c.get("host"), port=c.get("port"),
                          database=c.get("schema")).render_as_string(hide_password=False)
    # Airflow writes postgres://; SQLAlchemy 2 only knows postgresql://.
    return "postgresql://" + raw.split("://", 1)[1] if raw.startswith(("postgres://",)) else raw


def _read_sql(loaded: LoadedSpec, url: str):
    p = loaded.spec.products
    engine = create_engine(url, pool_pre_ping=True)
    try:
        with engine.connect() as conn:
            if engine.dialect.name == "postgresql":
                # Reading products must never write: the spec's query runs read-only.
                conn = conn.execution_options(postgresql_readonly=True)
            if p.table:
                schema, _, name = p.table.rpartition(".")
                # Reflected, not pasted into SQL: a table name cannot inject anything.
                table = Table(name, MetaData(), schema=schema or None, autoload_with=conn)
                stmt = select(table)
            else:
                stmt = text(p.query)
            return pd.read_sql_query(stmt, conn, dtype={p.id_column: str})
    finally:
        engine.dispose()


def load_products_frame(loaded: LoadedSpec, *, s3_client=None, sql_url_factory: SqlUrlFactory | None = None):
    """The product rows as a DataFrame. ``sql_url_factory`` turns a ``postgres://CONN_ID``
    source's connection id into a SQLAlchemy URL (default: ``AIRFLOW_CONN_<CONN_ID>``)."""
    src = loaded.product_source
    where = f"{loaded.path}: products.source {loaded.spec.products.source!r}"
    if src.startswith(SQL_SCHEME):
        conn_id = src.removeprefix(SQL_SCHEME)
        url = (sql_url_factory or (lambda c: sql_url(c, Settings.from_env())))(conn_id)
        try:
            return _read_sql(loaded, url)
        except ValidationFailed:
            raise
        except Exception as exc:  # driver errors name the table, column or syntax problem
            what = f"table {loaded.spec.products.table!r}" if loaded.spec.products.table else "query"
            msg = str(exc).splitlines()[0]
            raise ValidationFailed(f"{where}: reading the {what} failed: {msg}; fix the "
                                   f"products.table/products.query field or the connection") from exc
    if src.startswith("s3://"):
        raw: io.BytesIO | Path = io.BytesIO(read_uri(src, s3_client=s3_client))
    else:
        raw = Path(src)
    try:
        if src.lower().endswith(".parquet"):
            df = pd.read_parquet(raw)
            id_col = loaded.spec.products.id_column
            if id_col in df.columns:  # ids are text everywhere, whatever the file typed them as
                df[id_col] = df[id_col].map(lambda v: None if pd.isna(v) else str(v))
            return df
        # Ids stay text ("00123" is not 123); other columns get pandas' inference.
        return pd.read_csv(raw, dtype={loaded.spec.products.id_column: str})
    except FileNotFoundError:
        fix = "fix the path (relative to the spec file)"
        raise ValidationFailed(f"{where}: {src} does not exist; {fix}") from None
    except Exception as exc:  # pandas' parser errors name the line
        raise ValidationFailed(f"{where}: {src} could not be read: {exc}") from exc


def frame_to_rows(df) -> list[dict]:
    """Plain Python values (no numpy scalars, NaN -> None), so rows hash and serialize."""
    return list(iter_rows(df))


def iter_rows(df):
    """:func:`frame_to_rows` one row at a time: a reader that stops early (a run with
    ``limit``) converts only the rows it reads."""
    columns = [str(c) for c in df.columns]
    for values in df.itertuples(index=False, name=None):
        clean = {}
        for k, v in zip(columns, values, strict=True):
            if hasattr(v, "item"):
                v = v.item()
            if isinstance(v, float) and math.isnan(v):
                v = None
            elif v is not None and not isinstance(v, str | int | float | bool):
                v = str(v)  # dates, decimals from SQL: hashable, serializable text
            clean[k] = v
        yield clean
