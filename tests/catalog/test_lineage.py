"""`darkroom assets search` filters, on SQLite and PostgreSQL, over catalog rows written here.

Rows are inserted through the ORM (they are data, not a stand-in for our code); the search
runs the real queries and the schema comes from the real migrations.
"""

from __future__ import annotations

from datetime import UTC, datetime

import pytest
from darkroom.catalog import Catalog
from darkroom.catalog.lineage import search
from darkroom.catalog.tables import Asset, AssetLora, Campaign, QAResult, Review, Run, Variant
from sqlalchemy import inspect


def _asset(s, run, n, *, product, created, status, loras=(), failed=(), reviewer=None, template="t1",
           model=("product_sd", "1")):
    v = Variant(id=f"var{n}", campaign_id=run.campaign_id, product_id=product, asset_type="hero",
                channels=["web"], template_version=template, prompt=f"p{n}", seed=n, params={})
    s.add(v)
    a = Asset(id=f"asset{n}", variant_id=v.id, version=1, run_pk=run.id, status=status,
              model_name=model[0], model_version=model[1], scheduler="ddim", steps=2, guidance=7.0,
              seed=n, backend="local", created_at=created,
              loras=[{"name": x, "version": ver, "weight": 0.8} for x, ver in loras])
    a.lora_rows = [AssetLora(name=x, version=ver, weight=0.8) for x, ver in loras]
    s.add(a)
    for check in ("sharpness", "not_blank"):
        s.add(QAResult(asset_id=a.id, check=check, value=1.0, threshold=2.0, passed=check not in failed))
    if reviewer:
        s.add(Review(asset_id=a.id, decision="approved" if status != "rejected" else "rejected",
                     reviewer=reviewer, note=""))


@pytest.fixture
def catalog(catalog_url):
    cat = Catalog(catalog_url)
    with cat.session() as s:
        s.add(Campaign(id="tiles", spec_hash="h", spec_path="x.yaml", spec_body={}))
        s.add(Campaign(id="social", spec_hash="h", spec_path="y.yaml", spec_body={}))
        s.flush()
        r1 = Run(campaign_id="tiles", dag_id="campaign__tiles", run_id="r1", spec_hash="h", conf={}, summary={})
        r2 = Run(campaign_id="social", dag_id="campaign__social", run_id="r2", spec_hash="h", conf={},
                 summary={})
        s.add_all([r1, r2])
        s.flush()
        jan, feb = datetime(2026, 1, 15, tzinfo=UTC), datetime(2026, 2, 3, tzinfo=UTC)
        jan31 = datetime(2026, 1, 31, 23, 0, tzinfo=UTC)
        _asset(s, r1, 1, product="SKU-1", created=jan, status="published", loras=[("style_v2", "3")],
               reviewer="ana")
        _asset(s, r1, 2, product="SKU-2", created=feb, status="published", loras=[("style_v2", "3")],
               reviewer="ana")
        _asset(s, r1, 3, product="SKU-3", created=jan31, status="qa_failed", failed=("sharpness",),
               loras=[("style_v2", "4")])
        _asset(s, r2, 4, product="SKU-1", created=jan, status="rejected", reviewer="ben", template="t2",
               model=("product_sd", "2"))
        _asset(s, r2, 5, product="SKU-9", created=feb, status="qa_failed", failed=("not_blank",))
    return cat


def _ids(rows):
    return sorted(r["asset_id"] for r in rows)


def test_the_readme_questions(catalog):
    # "all images generated with LoRA style_v2 in January"
    assert _ids(search(catalog, lora="style_v2", since="2026-01-01", until="2026-01-31")) == [
        "asset1", "asset3"]
    # "all rejected for blur": failed the sharpness check
    assert _ids(search(catalog, qa_failed="blur")) == ["asset3"]


@pytest.mark.parametrize(("filters", "expected"), [
    ({}, ["asset1", "asset2", "asset3", "asset4", "asset5"]),
    ({"campaign": "social"}, ["asset4", "asset5"]),
    ({"product": "SKU-1"}, ["asset1", "asset4"]),
    ({"model_profile": "product_sd", "model_version": "2"}, ["asset4"]),
    ({"lora": "style_v2@4"}, ["asset3"]),
    ({"template_version": "t2"}, ["asset4"]),
    ({"status": "rejected"}, ["asset4"]),
    ({"qa_failed": "not_blank"}, ["asset5"]),
    ({"reviewer": "ana"}, ["asset1", "asset2"]),
    ({"since": "2026-02-01"}, ["asset2", "asset5"]),
    ({"run_id": "r1", "status": "published"}, ["asset1", "asset2"]),
], ids=["all", "campaign", "product", "profile+version", "lora@version", "template", "status",
        "qa-check", "reviewer", "since", "run+status"])
def test_each_filter(catalog, filters, expected):
    assert _ids(search(catalog, **filters)) == expected


def test_record_carries_loras_and_review(catalog):
    [row] = search(catalog, product="SKU-2")
    assert row["model"]["loras"] == [{"name": "style_v2", "version": "3", "weight": 0.8}]
    assert row["review"]["reviewer"] == "ana"


def test_bad_date_names_the_value(catalog):
    with pytest.raises(ValueError, match="'last tuesday' is not ISO 8601"):
        search(catalog, since="last tuesday")


def test_migration_creates_the_lineage_indexes(catalog):
    insp = inspect(catalog.engine)
    assert {"ix_asset_created_at", "ix_asset_status_created_at"} <= {i["name"] for i in insp.get_indexes("asset")}
    assert "ix_qa_result_check_passed" in {i["name"] for i in insp.get_indexes("qa_result")}
    assert "ix_asset_lora_name_version" in {i["name"] for i in insp.get_indexes("asset_lora")}
