"""Publishing: only approved assets, to a folder and to S3 (moto's server), idempotent, with
checksums verified and a tampered or missing file copied again, and a manifest.

Catalog rows and derivative files are made directly (no model): a run with three assets,
one approved, one rejected, one undecided, each with two channel derivatives.
"""

from __future__ import annotations

import csv
import hashlib
import io
import json
from pathlib import Path

import pytest
import yaml
from darkroom.catalog import reviews
from darkroom.catalog.tables import Asset, AssetStatus, Derivative, Publication, Variant
from darkroom.config import Settings
from darkroom.stages import publish
from darkroom.stages.context import RunContext
from PIL import Image

from tests.support.campaigns import write_campaign

CHANNELS = ("marketplace", "web_tile")


def _png(seed: int) -> bytes:
    buf = io.BytesIO()
    Image.new("RGB", (8, 8), (seed * 40 % 256, 90, 160)).save(buf, format="PNG")
    return buf.getvalue()


@pytest.fixture
def published_run(tmp_path, darkroom_home, s3_endpoint, bucket, monkeypatch):
    """A RunContext whose spec publishes to a folder and to a moto bucket, and its assets."""
    # An absolute DAM folder outside $DARKROOM_HOME must be allowed explicitly.
    monkeypatch.setenv("DARKROOM_PUBLISH_ROOTS", str(tmp_path / "dam"))
    spec_path = write_campaign(tmp_path)
    spec = yaml.safe_load(spec_path.read_text())
    spec["publish"] = [{"kind": "folder", "path": str(tmp_path / "dam")},
                       {"kind": "s3", "bucket": bucket, "prefix": "drop", "endpoint_url": s3_endpoint}]
    spec_path.write_text(yaml.safe_dump(spec, sort_keys=False))
    settings = Settings.from_env()
    ctx = RunContext.open(spec_path, "campaign__gallery_test", "manual__1", settings=settings)
    ids = {}
    run_pk = ctx.run_pk  # registers the campaign and the run first
    with ctx.catalog.session() as s:
        for i, name in enumerate(("approved", "rejected", "undecided")):
            vid = f"v{i}"
            s.add(Variant(id=vid, campaign_id=ctx.spec.id, product_id=f"TER-00{i}", asset_type="hero_tile",
                          channels=list(CHANNELS), template_version="t", prompt=f"prompt {i}", seed=i, params={}))
            s.flush()
            a = Asset(id=f"asset{i}", variant_id=vid, run_pk=run_pk, status=AssetStatus.qa_passed,
                      uri="file:///unused.png", model_name="tiny-sd", model_version="abc", scheduler="ddim",
                      steps=2, guidance=7.5, seed=i, backend="test")
            s.add(a)
            for ch in CHANNELS:
                stored = ctx.storage.put(ctx.key("derivatives", ch, f"{vid}.png"), _png(i), "image/png")
                s.add(Derivative(asset_id=a.id, channel=ch, uri=stored.uri, sha256=stored.sha256,
                                 width=8, height=8, format="png", bytes=stored.bytes))
            ids[name] = a.id
    reviews.decide(ctx.catalog, ids["approved"], "approve", "ann", "ok")
    reviews.decide(ctx.catalog, ids["rejected"], "approve", "ann")
    reviews.decide(ctx.catalog, ids["rejected"], "reject", "bob", "changed my mind")
    return ctx, ids, tmp_path / "dam", bucket


def _s3_keys(s3_client, bucket: str) -> set[str]:
    return {o["Key"] for o in s3_client.list_objects_v2(Bucket=bucket).get("Contents", [])}


def test_only_approved_assets_are_published_to_every_destination(published_run, s3_client):
    ctx, ids, dam, bucket = published_run
    summary = publish.run(ctx)
    assert summary["published_assets"] == 1 and summary["copied"] == 4 and summary["verified"] == 0
    folder_files = {p.name for p in (dam / ctx.spec.id).rglob("*.png")}
    s3_files = {k.rsplit("/", 1)[-1] for k in _s3_keys(s3_client, bucket) if k.endswith(".png")}
    assert folder_files == s3_files == {"TER-000-v0-v1.png"}
    with ctx.catalog.session() as s:
        statuses = {a.id: a.status for a in s.query(Asset)}
        pubs = [(p.derivative.asset_id, p.destination) for p in s.query(Publication)]
    assert statuses == {ids["approved"]: "published", ids["rejected"]: "rejected",
                        ids["undecided"]: "qa_passed"}
    assert len(pubs) == 4 and {a for a, _ in pubs} == {ids["approved"]}
    # Published means no more decisions.
    with pytest.raises(reviews.AssetMovedOn):
        reviews.decide(ctx.catalog, ids["approved"], "reject", "eve")


def test_a_rerun_copies_nothing_and_a_tampered_or_missing_file_is_copied_again(published_run, s3_client):
    ctx, ids, dam, bucket = published_run
    publish.run(ctx)
    again = publish.run(ctx)
    assert (again["copied"], again["verified"]) == (0, 4)
    with ctx.catalog.session() as s:
        assert s.query(Publication).count() == 4
    tampered = next((dam / ctx.spec.id / "web_tile").glob("*.png"))
    tampered.write_bytes(b"not the approved image")
    key = next(k for k in _s3_keys(s3_client, bucket) if "/marketplace/" in k)
    s3_client.delete_object(Bucket=bucket, Key=key)
    repaired = publish.run(ctx)
    assert (repaired["copied"], repaired["verified"]) == (2, 2)
    with ctx.catalog.session() as s:
        # What is published is the signed file (darkroom.stages.sign), not the bare derivative.
        expected = {d.channel: d.signed_sha256 for d in s.query(Derivative).filter_by(asset_id=ids["approved"])}
    assert hashlib.sha256(tampered.read_bytes()).hexdigest() == expected["web_tile"]
    body = s3_client.get_object(Bucket=bucket, Key=key)["Body"].read()
    assert hashlib.sha256(body).hexdigest() == expected["marketplace"]


def test_manifest_lists_what_was_published_with_its_approval(published_run, s3_client):
    ctx, ids, dam, bucket = published_run
    publish.run(ctx)
    manifests = dam / ctx.spec.id / "manifests"
    data = json.loads((manifests / f"{ctx.run_key}.json").read_text())
    assert {r["asset_id"] for r in data["files"]} == {ids["approved"]}
    assert len(data["files"]) == 4  # 2 channels x 2 destinations
    for row in data["files"]:
        assert row["approved_by"] == "ann" and row["model_version"] == "abc" and len(row["sha256"]) == 64
    rows = list(csv.DictReader((manifests / f"{ctx.run_key}.csv").open()))
    assert [r["asset_id"] for r in rows] == [ids["approved"]] * 4
    s3_manifest = s3_client.get_object(Bucket=bucket, Key=f"drop/{ctx.spec.id}/manifests/{ctx.run_key}.json")
    assert json.loads(s3_manifest["Body"].read())["files"] == data["files"]


def test_approved_status_without_an_approval_record_is_not_published(published_run):
    ctx, ids, dam, _ = published_run
    with ctx.catalog.session() as s:  # e.g. a status edited by hand
        s.get(Asset, ids["undecided"]).status = AssetStatus.approved
    summary = publish.run(ctx)
    assert summary["published_assets"] == 1
    assert not list(Path(dam).rglob("TER-002-*"))
