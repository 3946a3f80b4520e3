"""Every stage as a plain function (no Airflow), on SQLite and PostgreSQL catalogs, with
originals in S3 (moto's server) and publishing to S3 and a DAM folder."""

from __future__ import annotations

from pathlib import Path

import pytest
from darkroom import imaging
from darkroom.catalog import runs
from darkroom.catalog.tables import (
    Asset,
    AssetClaim,
    AssetStatus,
    PlanItem,
    Publication,
    Run,
    ValidationResult,
    Variant,
)
from darkroom.config import Settings
from darkroom.errors import ValidationFailed
from darkroom.stages import approve, generate, plan, postprocess, publish, validate
from darkroom.stages.sequence import run_to_review
from darkroom.storage import S3Storage
from sqlalchemy import select

from tests.support.campaigns import small_spec as _spec
from tests.support.campaigns import stage_ctx as _ctx

ROOT = Path(__file__).resolve().parents[2]
CAMPAIGNS = ROOT / "include" / "campaigns"


@pytest.mark.usefixtures("use_tiny_model")
def test_stages_on_s3_storage_publish_to_s3_and_folder(tmp_path, catalog_url, s3_client, bucket, monkeypatch):
    monkeypatch.setenv("DARKROOM_PUBLISH_ROOTS", str(tmp_path / "dam"))  # a DAM folder outside $DARKROOM_HOME
    spec = _spec(tmp_path, lambda d: d.update(publish=[
        {"kind": "s3", "bucket": bucket, "prefix": "dam"},
        {"kind": "folder", "path": str(tmp_path / "dam")},
    ]))
    settings = Settings.from_env(catalog_url=catalog_url, storage_url=f"s3://{bucket}/work")
    ctx = _ctx(spec, settings, {"limit": 3}, s3=s3_client)
    batches = run_to_review(ctx)
    assert batches == [0, 1]  # 3 variants, 2 per task

    with ctx.catalog.session() as s:
        assets = list(s.scalars(select(Asset).order_by(Asset.id)))
        assert len(assets) == 3 and all(a.uri.startswith(f"s3://{bucket}/work/spring_tiles/manual__1/originals/")
                                        for a in assets)
        assert all(a.status == AssetStatus.qa_passed for a in assets)
        # The review gallery's thumbnails, made by postprocess beside the derivatives.
        thumbs = {a.id: (a.thumbnail_uri, a.thumbnail_sha256) for a in assets}
        assert all(uri.startswith(f"s3://{bucket}/work/spring_tiles/manual__1/thumbnails/") and sha
                   for uri, sha in thumbs.values())
    first = assets[0].id
    assert postprocess.review_thumbnail(ctx.catalog, ctx.storage, first) == thumbs[first]
    assert not runs.approval_state(ctx.catalog, ctx.dag_id, ctx.run_id).done

    approve.settle_undecided(ctx, "approve", "tester", "")
    summary = publish.run(ctx)
    assert summary["files"] == 3 * 2 * 2  # assets x channels x destinations
    assert summary["copied"] == 12 and summary["verified"] == 0

    keys = [o["Key"] for o in s3_client.list_objects_v2(Bucket=bucket, Prefix="dam/")["Contents"]]
    assert sum(k.endswith((".webp", ".jpg")) for k in keys) == 6
    assert "dam/spring_tiles/manifests/manual__1.json" in keys
    published = next(k for k in keys if k.endswith(".jpg"))
    data = S3Storage(bucket, client=s3_client).read(f"s3://{bucket}/{published}")
    assert imaging.read_provenance(data).darkroom["channel"] == "marketplace"
    assert len(list((tmp_path / "dam" / "spring_tiles").rglob("*.webp"))) == 3

    again = publish.run(_ctx(spec, settings, {"limit": 3}, s3=s3_client))
    assert (again["copied"], again["verified"]) == (0, 12)
    with ctx.catalog.session() as s:
        assert len(list(s.scalars(select(Publication)))) == 12


@pytest.mark.usefixtures("use_tiny_model")
def test_generate_is_resumable_and_idempotent(tmp_path):
    settings = Settings.from_env()
    ctx = _ctx(_spec(tmp_path), settings, {"limit": 4})
    validate.run(ctx)
    assert plan.run(ctx) == [0, 1]
    first = generate.run(ctx, 0)
    assert (first["generated"], first["skipped"]) == (2, 0)
    with ctx.catalog.session() as s:
        before = {a.id: (a.sha256, a.uri) for a in s.scalars(select(Asset))}
    # a retry of the same batch, and a re-expansion of the plan, change nothing
    assert plan.run(ctx) == [0, 1]
    retry = generate.run(ctx, 0)
    assert (retry.get("generated", 0), retry["skipped"]) == (0, 2)
    with ctx.catalog.session() as s:
        assert {a.id: (a.sha256, a.uri) for a in s.scalars(select(Asset))} == before
        assert len(list(s.scalars(select(PlanItem)))) == 4


@pytest.mark.usefixtures("use_tiny_model")
def test_same_variant_same_pixels_across_runs(tmp_path):
    settings = Settings.from_env()
    a = _ctx(_spec(tmp_path), settings, {"limit": 1}, run_id="run_a")
    plan.run(a)
    generate.run(a, 0)
    with a.catalog.session() as s:
        first = s.scalars(select(Asset)).one()
        s.delete(first)  # pretend it was never made (nor claimed): the next run must reproduce it
        s.delete(s.get(AssetClaim, first.id))
        pixels = imaging.decode(Path(first.uri.removeprefix("file://")).read_bytes()).tobytes()
    b = _ctx(_spec(tmp_path), settings, {"limit": 1}, run_id="run_b")
    plan.run(b)
    generate.run(b, 0)
    with b.catalog.session() as s:
        again = s.scalars(select(Asset)).one()
        # The files differ (their provenance names the run); the pixels may not.
        assert imaging.decode(Path(again.uri.removeprefix("file://")).read_bytes()).tobytes() == pixels


def test_failed_validation_writes_result_and_no_variants(tmp_path):
    rows = (CAMPAIGNS / "spring_tiles.products.csv").read_text().splitlines()
    rows[3] = rows[3].replace("drinkware", "furniture").replace("TER-003", "TER-001")
    ctx = _ctx(_spec(tmp_path, rows="\n".join(rows) + "\n"), Settings.from_env())
    with pytest.raises(ValidationFailed) as info:
        validate.run(ctx)
    message = str(info.value)
    assert "nothing was generated" in message
    assert "expect_column_values_to_be_unique on column 'sku': 2 failing row(s)" in message
    assert "expect_column_values_to_be_in_set on column 'category'" in message and "furniture" in message
    assert "validation.html" in message  # the report, for the details
    with ctx.catalog.session() as s:
        result = s.scalars(select(ValidationResult)).one()
        assert result.success is False
        assert {f["expectation"] for f in result.summary["failures"]} == {
            "expect_column_values_to_be_unique", "expect_column_values_to_be_in_set"}
        assert s.scalar(select(Variant).limit(1)) is None


def test_missing_column_names_file_and_fix(tmp_path):
    ctx = _ctx(_spec(tmp_path, rows="sku,name\nTER-001,mug\n"), Settings.from_env())
    with pytest.raises(ValidationFailed) as info:
        validate.run(ctx)
    message = str(info.value)
    assert str(tmp_path / "spec.yaml") in message
    for column in ("category", "colour", "material"):
        assert f"column '{column}' is missing (has ['name', 'sku'])" in message


def test_policy_rejects_variant_and_dry_run_stops(tmp_path):
    rows = (CAMPAIGNS / "spring_tiles.products.csv").read_text().replace("coffee mug", "guaranteed mug")
    ctx = _ctx(_spec(tmp_path, rows=rows), Settings.from_env(), {"dry_run": True})
    assert plan.run(ctx) == []  # dry run: plan stored, nothing mapped
    with ctx.catalog.session() as s:
        items = list(s.scalars(select(PlanItem)))
        rejected = [i for i in items if i.status == "policy_rejected"]
        assert len(items) == 12 and len(rejected) == 1
        assert rejected[0].reason == "restricted term 'guaranteed' from product column `name`"
        summary = s.scalars(select(Run)).one().summary
        assert (summary["planned"], summary["policy_rejected"], summary["batches"]) == (11, 1, 6)


def test_limit_and_seed_offset(tmp_path):
    ctx = _ctx(_spec(tmp_path), Settings.from_env(), {"limit": 5, "seed_offset": 100})
    assert plan.run(ctx) == [0, 1, 2]
    with ctx.catalog.session() as s:
        seeds = {v.seed for v in s.scalars(select(Variant))}
    assert seeds == {1100}
