"""Product data sources: CSV, Parquet (local and s3://), PostgreSQL table and query."""

from __future__ import annotations

import shutil
import uuid

import pandas as pd
import pytest
from darkroom.config import Settings
from darkroom.errors import SpecError, ValidationFailed
from darkroom.products import frame_to_rows, load_products_frame, sql_url
from darkroom.spec import load_spec
from sqlalchemy import create_engine, text

from tests.support.campaigns import CSV, make_spec
from tests.support.servers import create_database


def expected_rows() -> list[dict]:
    return frame_to_rows(pd.read_csv(CSV, dtype={"sku": str}))


@pytest.mark.parametrize("fmt", ["csv", "parquet"])
def test_local_files(tmp_path, fmt):
    src = tmp_path / f"products.{fmt}"
    if fmt == "csv":
        shutil.copy(CSV, src)
    else:
        pd.read_csv(CSV).to_parquet(src)
    loaded = load_spec(make_spec(tmp_path, source=src.name))
    rows = frame_to_rows(load_products_frame(loaded))
    assert rows == expected_rows()
    assert all(isinstance(r["sku"], str) for r in rows)


@pytest.mark.parametrize("fmt", ["csv", "parquet"])
def test_s3_objects(tmp_path, s3_client, bucket, fmt):
    body = CSV.read_bytes()
    if fmt == "parquet":
        local = tmp_path / "p.parquet"
        pd.read_csv(CSV).to_parquet(local)
        body = local.read_bytes()
    s3_client.put_object(Bucket=bucket, Key=f"in/products.{fmt}", Body=body)
    loaded = load_spec(make_spec(tmp_path, source=f"s3://{bucket}/in/products.{fmt}"))
    assert frame_to_rows(load_products_frame(loaded, s3_client=s3_client)) == expected_rows()


@pytest.fixture
def products_db(postgres_url, monkeypatch):
    """A database holding the spring_tiles products, reachable as connection products_db."""
    url = create_database(postgres_url, f"p_{uuid.uuid4().hex[:12]}")
    engine = create_engine(url)
    with engine.begin() as conn:
        conn.execute(text("CREATE SCHEMA shop"))
        pd.read_csv(CSV, dtype={"sku": str}).to_sql("products", conn, schema="shop", index=False)
    engine.dispose()
    monkeypatch.setenv("AIRFLOW_CONN_PRODUCTS_DB", url)
    return url


@pytest.mark.postgres
def test_postgres_table(tmp_path, products_db):
    loaded = load_spec(make_spec(tmp_path, source="postgres://products_db", table="shop.products"))
    assert frame_to_rows(load_products_frame(loaded)) == expected_rows()


@pytest.mark.postgres
def test_postgres_query_read_only(tmp_path, products_db):
    q = "SELECT * FROM shop.products WHERE category = 'drinkware' ORDER BY sku"
    loaded = load_spec(make_spec(tmp_path, source="postgres://products_db", query=q))
    rows = frame_to_rows(load_products_frame(loaded))
    assert [r["sku"] for r in rows] == [r["sku"] for r in expected_rows() if r["category"] == "drinkware"]
    # A statement that writes is refused by the read-only transaction, named in the error.
    sneaky = "WITH d AS (DELETE FROM shop.products RETURNING *) SELECT * FROM d"
    loaded = load_spec(make_spec(tmp_path, source="postgres://products_db", query=sneaky))
    with pytest.raises(ValidationFailed, match=r"reading the query failed: .*read-only"):
        load_products_frame(loaded)


@pytest.mark.postgres
def test_postgres_factory_supplies_url(tmp_path, products_db, monkeypatch):
    # How the Airflow hook plugs in: a factory from connection id to URL.
    monkeypatch.delenv("AIRFLOW_CONN_PRODUCTS_DB")
    asked = []
    loaded = load_spec(make_spec(tmp_path, source="postgres://products_db", table="shop.products"))
    df = load_products_frame(loaded, sql_url_factory=lambda conn_id: asked.append(conn_id) or products_db)
    assert asked == ["products_db"] and len(df) == 12


def test_missing_connection_names_the_fix(tmp_path, monkeypatch):
    monkeypatch.delenv("AIRFLOW_CONN_NOWHERE", raising=False)
    loaded = load_spec(make_spec(tmp_path, source="postgres://nowhere", table="products"))
    with pytest.raises(ValidationFailed, match=r"AIRFLOW_CONN_NOWHERE=postgresql://"):
        load_products_frame(loaded)


def test_airflow_style_uri_becomes_sqlalchemy_url(monkeypatch):
    monkeypatch.setenv("AIRFLOW_CONN_SHOP", "postgres://u:p@db:5432/shop")
    assert sql_url("shop", Settings.from_env()) == "postgresql://u:p@db:5432/shop"


@pytest.mark.parametrize("products,message", [
    ({"source": "postgres://db"}, "exactly one of `table`"),
    ({"source": "postgres://db", "table": "a", "query": "select 1"}, "exactly one of `table`"),
    ({"source": "postgres://db", "query": "delete from products"}, "must be a SELECT"),
    ({"source": "products.xlsx"}, "must be a .csv or .parquet file"),
    ({"source": "spring.csv", "table": "products"}, "apply only to postgres:// sources"),
], ids=["no-table-or-query", "both", "not-select", "xlsx", "table-on-file"])
def test_source_spec_errors_name_the_field(tmp_path, products, message):
    with pytest.raises(SpecError, match=r"field `products(.source)?`") as err:
        load_spec(make_spec(tmp_path, **products))
    assert message in str(err.value)


def test_missing_file_names_path(tmp_path):
    with pytest.raises(SpecError, match=r"field `products.source` = 'nope.csv'.*does not exist"):
        load_spec(make_spec(tmp_path, source="nope.csv"))
