"""publish: the approved derivatives copied to the spec's destinations (DAM folder, S3), a
manifest beside them, and the outcome added to the run's MLflow run.

Idempotent: a publication row per (derivative, destination) and a checksum check of what is
already there mean a retry or re-run copies nothing twice; only approved assets are copied.

Order matters for reviewers working while publish runs: first every approved asset is
*claimed* (row lock, newest review re-checked, status set to ``published``) in one
transaction, then files are copied. A decision arriving after the claim is refused (409 in
the gallery) instead of silently losing to a copy already under way; an asset with a file
that could not be copied has its claim released (``approved`` again), the task fails naming
the destination and the reason, and the retry (which selects approved and published assets)
copies what is missing.

What is copied is the sealed file (darkroom.stages.sign): the derivative with the approval in
its XMP and signed Content Credentials, read back before it goes out. An asset with a
derivative whose credentials do not verify is not published either: its claim is released
and the task fails naming the file and why.
"""

from __future__ import annotations

import csv
import io
import json
import logging
from pathlib import Path

from darkroom import confine, tracking
from darkroom.catalog import assets, runs
from darkroom.errors import StorageError, ValidationFailed
from darkroom.ids import key_part
from darkroom.stages import sign
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
    targets = [destination_storage(ctx, dest) for dest in ctx.spec.publish]
    # 2. Seal each derivative: the approval into its XMP, Content Credentials signed and read back.
    signed, refused = sign.for_publication(ctx, work)
    # 3. Copy each sealed file to each destination, unless it is there already.
    copied = verified = 0
    manifest = []
    failed: dict[str, str] = {}  # asset id -> the first file of it that could not be written
    for store in targets:
        for item in work:
            if item.asset_id in refused:
                continue  # a derivative's credentials did not verify: none of the asset goes out
            sealed = signed[item.derivative_id]
            try:
                uri, was_copied = copy(ctx, store, item, sealed)
            except Exception as exc:  # a destination that cannot be written: see release_claims
                why = exc.strerror if isinstance(exc, OSError) and exc.strerror else str(exc)
                failed.setdefault(item.asset_id, f"{store.uri_for(destination_key(ctx, item))}: "
                                                 f"{type(exc).__name__}: {why}")
                continue
            copied += was_copied
            verified += not was_copied
            assets.record_publication(ctx.catalog, derivative_id=item.derivative_id, run_pk=ctx.run_pk,
                                      destination=store.root_uri, uri=uri, sha256=sealed.sha256)
            manifest.append(manifest_row(item, uri, sealed.sha256))
    if refused:
        refuse(ctx, refused, failed)
    if failed:
        release_claims(ctx, failed)
    # 4. The manifest, beside the files and with the run.
    manifest_uri = write_manifest(ctx, targets, manifest)
    summary = {"published_assets": len({w.asset_id for w in work}), "files": len(manifest),
               "copied": copied, "verified": verified, "destinations": [t.root_uri for t in targets],
               "manifest": manifest_uri}
    runs.mark_published(ctx.catalog, ctx.run_pk, manifest_uri, summary["published_assets"])
    log.info("Published %d files for %d assets to %d destination(s): %d copied, %d verified",
             len(manifest), summary["published_assets"], len(targets), copied, verified)
    # 5. The outcome in the run's MLflow run (when track logged one).
    track(ctx, summary, approvals or {})
    return summary


def destination_root(ctx: RunContext, dest) -> Path | None:
    """A folder destination's resolved folder (under $DARKROOM_HOME or a publish root)."""
    if dest.kind != "folder":
        return None
    try:
        return confine.publish_folder(dest.path, ctx.settings)
    except confine.OutsideRoots as exc:
        raise ValidationFailed(f"{ctx.loaded.path}: field `publish` folder path = {dest.path!r}: "
                               f"{exc}") from None


def destination_storage(ctx: RunContext, dest) -> Storage:
    if dest.kind == "folder":
        return FileStorage(destination_root(ctx, dest))
    endpoint = dest.endpoint_url or ctx.settings.s3_endpoint_url
    client = ctx.s3_client_factory(dest.aws_conn_id, endpoint) if ctx.s3_client_factory else None
    return S3Storage(dest.bucket, dest.prefix, client=client, endpoint_url=endpoint)


def copy(ctx: RunContext, store: Storage, item: assets.Claimed, sealed: sign.Signed) -> tuple[str, bool]:
    """Put one derivative's sealed file at its destination key unless an identical file is
    there; return its URI there and whether it was copied."""
    key = destination_key(ctx, item)
    uri = store.uri_for(key)
    there = store.stat(uri)
    if there is not None and there.sha256 == sealed.sha256 and there.bytes == sealed.bytes:
        return uri, False
    if there is not None:
        log.warning("%s differs from the catalog (sha256 %s, expected %s): copying again",
                    uri, there.sha256, sealed.sha256)
    store.put(key, read_uri(sealed.uri, s3_client=ctx.s3), f"image/{item.format}")
    return uri, True


def destination_key(ctx: RunContext, item: assets.Claimed) -> str:
    """Where a derivative goes under a destination's root (every part a safe key part)."""
    ext = item.uri.rsplit(".", 1)[-1]
    return (f"{ctx.spec.id}/{key_part(item.channel)}/"
            f"{key_part(item.product_id)}-{item.variant_id}-v{item.asset_version}.{ext}")


def release_claims(ctx: RunContext, failed: dict[str, str]) -> None:
    """Assets with a file that could not be written are not published: their claim is
    released (approved again, so a retry copies what is missing and reviewers may still
    decide), and the task fails with the destination and the reason."""
    assets.release_claims(ctx.catalog, failed)
    first = next(iter(failed.values()))
    raise StorageError(f"{ctx.loaded.path}: publish could not write {len(failed)} asset(s), which "
                       f"stay approved, not published; first: {first}; fix the destination "
                       "(permissions, free space, the path) and run the publish task again")


def refuse(ctx: RunContext, refused: dict[str, str], failed: dict[str, str]) -> None:
    """Assets with a derivative whose credentials did not verify are not published (nor are
    those that could not be written): their claims are released, and the task fails naming
    each refused file and why."""
    assets.release_claims(ctx.catalog, [*refused, *failed])
    also = (f"\n({len(failed)} more could not be written; first: {next(iter(failed.values()))})"
            if failed else "")
    raise sign.PublishRefused(
        f"{ctx.loaded.path}: {len(refused)} asset(s) not published, stay approved: the Content "
        "Credentials of a derivative did not verify:\n  - " + "\n  - ".join(refused.values())
        + "\nfix the signing key (DARKROOM_C2PA_CERT / DARKROOM_C2PA_KEY / DARKROOM_C2PA_TRUST_ANCHORS)"
        " and run the publish task again" + also)


def manifest_row(item: assets.Claimed, uri: str, sha256: str) -> dict:
    """One published file: ``sha256`` is the sealed file's, as it is at the destination."""
    return {"asset_id": item.asset_id, "variant_id": item.variant_id, "product_id": item.product_id,
            "channel": item.channel, "destination_uri": uri, "sha256": sha256,
            "model": item.model_name, "model_version": item.model_version, "seed": item.seed,
            "prompt": item.prompt, "approved_by": item.approved_by,
            "approved_at": item.approved_at.isoformat()}


#: OWASP's CSV injection rule: no cell may begin with these, or a spreadsheet runs it as a formula.
FORMULA_PREFIXES = ("=", "+", "-", "@", "\t", "\r")


def csv_cell(value) -> str:
    """A manifest cell a spreadsheet shows as text: a value starting with a formula prefix
    gets a leading apostrophe (OWASP, CSV Injection). Quoting every cell (QUOTE_ALL, quotes
    doubled) keeps separators and quotes inside a value from starting a new cell."""
    text = "" if value is None else str(value)
    return "'" + text if text.startswith(FORMULA_PREFIXES) else text


def write_manifest(ctx: RunContext, targets: list[Storage], rows: list[dict]) -> str:
    """The manifest (JSON and CSV) at every destination and with the run; return its URI."""
    # The JSON manifest keeps every value exactly; the CSV is for people with spreadsheets.
    body = json.dumps({"campaign": ctx.spec.id, "run_id": ctx.run_id, "files": rows}, indent=2)
    buf = io.StringIO()
    writer = csv.DictWriter(buf, fieldnames=MANIFEST_FIELDS, extrasaction="ignore",
                            quoting=csv.QUOTE_ALL)
    writer.writeheader()
    writer.writerows({k: csv_cell(v) for k, v in row.items()} for row in rows)
    name = f"{ctx.spec.id}/manifests/{ctx.run_key}"
    for store in targets:
        try:
            store.put(f"{name}.json", body.encode(), "application/json")
            store.put(f"{name}.csv", buf.getvalue().encode(), "text/csv")
        except Exception as exc:  # the files are there (an S3 or OS error): only the manifest is missing
            why = exc.strerror if isinstance(exc, OSError) and exc.strerror else str(exc)
            raise StorageError(
                f"{ctx.loaded.path}: publish wrote every file but could not write the manifest "
                f"{store.uri_for(name + '.json')}: {type(exc).__name__}: {why}; fix the destination "
                "(permissions, free space, the path) and run the publish task again: it checks the "
                "files already there, copies none twice and writes the manifest") from None
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
