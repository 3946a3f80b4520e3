"""publish: the approved derivatives copied to the spec's destinations (DAM folder, S3), a
manifest beside them, and the outcome added to the run's MLflow run.

Idempotent: a publication row per (derivative, destination) and a checksum check of what is
already there mean a retry or re-run copies nothing twice; only approved assets are copied.

Order matters for reviewers working while publish runs: first every approved asset is
*claimed* (row lock, newest review re-checked, status set to ``published``) in one
transaction, then files are copied. A decision arriving after the claim is refused (409 in
the gallery) instead of silently losing to a copy already under way; a copy that fails
leaves the asset ``published`` with its approval, and the retry (which selects approved and
published assets) copies what is missing.
"""

from __future__ import annotations

import csv
import io
import json
import logging
from pathlib import Path

from darkroom import tracking
from darkroom.catalog import assets, runs
from darkroom.stages.context import RunContext
from darkroom.storage import FileStorage, S3Storage, Storage, read_uri

log = logging.getLogger("darkroom")

MANIFEST_FIELDS = ["asset_id", "variant_id", "product_id", "channel", "destination_uri", "sha256",
                   "model", "model_version", "seed", "approved_by", "approved_at", "prompt"]


def run(ctx: RunContext, approvals: dict | None = None) -> dict:
    """Publish the run's approved assets; return the summary (files, copied, manifest).

    :param approvals: the approval step's counts, added to the MLflow run with the outcome.
    """
    # 1. Claim every approved asset (nothing reaches a destination without an approval).
    work = assets.claim_approved(ctx.catalog, ctx.run_pk)
    # 2. Copy each derivative to each destination, unless it is there already.
    targets = [destination_storage(ctx, dest) for dest in ctx.spec.publish]
    copied = verified = 0
    manifest = []
    for store in targets:
        for item in work:
            uri, was_copied = copy(ctx, store, item)
            copied += was_copied
            verified += not was_copied
            assets.record_publication(ctx.catalog, derivative_id=item.derivative_id, run_pk=ctx.run_pk,
                                      destination=store.root_uri, uri=uri, sha256=item.sha256)
            manifest.append(manifest_row(item, uri))
    # 3. The manifest, beside the files and with the run.
    manifest_uri = write_manifest(ctx, targets, manifest)
    summary = {"published_assets": len({w.asset_id for w in work}), "files": len(manifest),
               "copied": copied, "verified": verified, "destinations": [t.root_uri for t in targets],
               "manifest": manifest_uri}
    runs.mark_published(ctx.catalog, ctx.run_pk, manifest_uri, summary["published_assets"])
    log.info("Published %d files for %d assets to %d destination(s): %d copied, %d verified",
             len(manifest), summary["published_assets"], len(targets), copied, verified)
    # 4. The outcome in the run's MLflow run (when track logged one).
    track(ctx, summary, approvals or {})
    return summary


def destination_storage(ctx: RunContext, dest) -> Storage:
    if dest.kind == "folder":
        path = Path(dest.path)
        return FileStorage(path if path.is_absolute() else ctx.settings.home / path)
    endpoint = dest.endpoint_url or ctx.settings.s3_endpoint_url
    client = ctx.s3_client_factory(dest.aws_conn_id, endpoint) if ctx.s3_client_factory else None
    return S3Storage(dest.bucket, dest.prefix, client=client, endpoint_url=endpoint)


def copy(ctx: RunContext, store: Storage, item: assets.Claimed) -> tuple[str, bool]:
    """Put one derivative at its destination key unless an identical file is there; return
    its URI there and whether it was copied."""
    ext = item.uri.rsplit(".", 1)[-1]
    key = f"{ctx.spec.id}/{item.channel}/{item.product_id}-{item.variant_id}-v{item.asset_version}.{ext}"
    uri = store.uri_for(key)
    there = store.stat(uri)
    if there is not None and there.sha256 == item.sha256 and there.bytes == item.bytes:
        return uri, False
    if there is not None:
        log.warning("%s differs from the catalog (sha256 %s, expected %s): copying again",
                    uri, there.sha256, item.sha256)
    store.put(key, read_uri(item.uri, s3_client=ctx.s3), f"image/{item.format}")
    return uri, True


def manifest_row(item: assets.Claimed, uri: str) -> dict:
    return {"asset_id": item.asset_id, "variant_id": item.variant_id, "product_id": item.product_id,
            "channel": item.channel, "destination_uri": uri, "sha256": item.sha256,
            "model": item.model_name, "model_version": item.model_version, "seed": item.seed,
            "prompt": item.prompt, "approved_by": item.approved_by,
            "approved_at": item.approved_at.isoformat()}


def write_manifest(ctx: RunContext, targets: list[Storage], rows: list[dict]) -> str:
    """The manifest (JSON and CSV) at every destination and with the run; return its URI."""
    body = json.dumps({"campaign": ctx.spec.id, "run_id": ctx.run_id, "files": rows}, indent=2)
    buf = io.StringIO()
    writer = csv.DictWriter(buf, fieldnames=MANIFEST_FIELDS, extrasaction="ignore")
    writer.writeheader()
    writer.writerows(rows)
    name = f"{ctx.spec.id}/manifests/{ctx.run_key}"
    for store in targets:
        store.put(f"{name}.json", body.encode(), "application/json")
        store.put(f"{name}.csv", buf.getvalue().encode(), "text/csv")
    ctx.storage.put(ctx.key("manifest.csv"), buf.getvalue().encode(), "text/csv")
    return ctx.storage.put(ctx.key("manifest.json"), body.encode(), "application/json").uri


def track(ctx: RunContext, summary: dict, approvals: dict) -> None:
    """Add the approvals, the files and the manifest to the DAG run's MLflow run (the one
    track recorded in the catalog; none, nothing to add to)."""
    mlflow_run_id = runs.get(ctx.catalog, ctx.run_pk).mlflow_run_id
    if mlflow_run_id is None:
        return
    manifest = read_uri(summary["manifest"], s3_client=ctx.s3) if summary.get("manifest") else None
    tracking.log_publication(ctx.settings, mlflow_run_id, {
        "approved": approvals.get("approved", 0), "rejected": approvals.get("rejected", 0),
        "published_files": summary.get("files", 0)}, manifest)
