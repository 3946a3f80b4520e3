"""Publishing approved derivatives to destinations (DAM folder, S3), with a manifest.

Idempotent: a publication row per (derivative, destination) and a checksum check of what is
already there mean a retry or re-run copies nothing twice; only approved assets are copied.

Order matters for reviewers working while publish runs: first every approved asset is
*claimed* (row lock, newest review re-checked, status set to ``published``) in one
transaction, then files are copied. A decision arriving after the claim is refused (409 in
the gallery) instead of silently losing to a copy already under way; an asset with a file
that could not be copied has its claim released (``approved`` again), the task fails naming
the destination and the reason, and the retry (which selects approved and published assets)
copies what is missing.

What is copied is the sealed file (darkroom.provenance.signing): the derivative with the
approval in its XMP and signed Content Credentials, read back before it goes out. An asset
with a derivative whose credentials do not verify is not published either: its claim is
released and the task fails naming the file and why.
"""

from __future__ import annotations

import csv
import io
import json
import logging
from pathlib import Path

from sqlalchemy import select

from darkroom import confine
from darkroom.errors import StorageError, ValidationFailed
from darkroom.ids import key_part
from darkroom.models import Asset, AssetStatus, Publication, Review, Run
from darkroom.provenance import signing
from darkroom.storage import FileStorage, S3Storage, Storage, read_uri

log = logging.getLogger("darkroom")


def destination_root(ctx, dest) -> Path | None:
    """A folder destination's resolved folder (under $DARKROOM_HOME or a publish root)."""
    if dest.kind != "folder":
        return None
    try:
        return confine.publish_folder(dest.path, ctx.settings)
    except confine.OutsideRoots as exc:
        raise ValidationFailed(f"{ctx.loaded.path}: field `publish` folder path = {dest.path!r}: "
                               f"{exc}") from None


def destination_storage(ctx, dest) -> Storage:
    if dest.kind == "folder":
        return FileStorage(destination_root(ctx, dest))
    endpoint = dest.endpoint_url or ctx.settings.s3_endpoint_url
    client = ctx.s3_client_factory(dest.aws_conn_id, endpoint) if ctx.s3_client_factory else None
    return S3Storage(dest.bucket, dest.prefix, client=client, endpoint_url=endpoint)


def publish_run(ctx) -> dict:
    spec = ctx.spec
    with ctx.catalog.session() as s:
        # Locked so a concurrent decision waits for the claim, then sees "published".
        assets = list(s.scalars(select(Asset).where(
            Asset.run_pk == ctx.run_pk,
            Asset.status.in_([AssetStatus.approved, AssetStatus.published]))
            .order_by(Asset.created_at, Asset.id).with_for_update()))
        work = []
        for a in assets:
            approval = s.scalars(select(Review).where(Review.asset_id == a.id)
                                 .order_by(Review.id.desc())).first()
            if approval is None or approval.decision != AssetStatus.approved:
                continue  # never publish without an approval record
            a.status = AssetStatus.published  # the claim; see the module docstring
            for d in a.derivatives:
                work.append((a, a.variant, d, approval))
    targets = [(dest, destination_storage(ctx, dest)) for dest in spec.publish]
    # Approval into the XMP, Content Credentials signed and read back (darkroom.provenance.signing).
    signed, refused = signing.sign_for_publication(ctx, work)
    copied = verified = 0
    manifest = []
    failed: dict[str, str] = {}  # asset id -> the first file of it that could not be written
    for _dest, store in targets:
        for asset, variant, deriv, approval in work:
            if deriv.id not in signed or asset.id in refused:
                continue  # refused: a derivative's credentials did not verify (raised below)
            sig = signed[deriv.id]
            ext = deriv.uri.rsplit(".", 1)[-1]
            key = (f"{spec.id}/{key_part(deriv.channel)}/"
                   f"{key_part(variant.product_id)}-{variant.id}-v{asset.version}.{ext}")
            uri = store.uri_for(key)
            try:
                there = store.stat(uri)
                if there is None or there.sha256 != sig.sha256 or there.bytes != sig.bytes:
                    if there is not None:
                        log.warning("%s differs from the catalog (sha256 %s, expected %s): copying "
                                    "again", uri, there.sha256, sig.sha256)
                    data = read_uri(sig.uri, s3_client=getattr(ctx.storage, "client", None))
                    store.put(key, data, f"image/{deriv.format}")
                    copied += 1
                else:
                    verified += 1
            except Exception as exc:  # a destination that cannot be written: see below
                why = exc.strerror if isinstance(exc, OSError) and exc.strerror else str(exc)
                failed.setdefault(asset.id, f"{uri}: {type(exc).__name__}: {why}")
                continue
            with ctx.catalog.session() as s:
                pub = s.scalar(select(Publication).where(Publication.derivative_id == deriv.id,
                                                         Publication.destination == store.root_uri))
                if pub is None:
                    s.add(Publication(derivative_id=deriv.id, run_pk=ctx.run_pk,
                                      destination=store.root_uri, uri=uri, sha256=sig.sha256))
                elif (pub.uri, pub.sha256) != (uri, sig.sha256):
                    pub.uri, pub.sha256 = uri, sig.sha256
            manifest.append({
                "asset_id": asset.id, "variant_id": variant.id, "product_id": variant.product_id,
                "channel": deriv.channel, "destination_uri": uri, "sha256": sig.sha256,
                "model": asset.model_name, "model_version": asset.model_version,
                "seed": asset.seed, "prompt": variant.prompt,
                "approved_by": approval.reviewer, "approved_at": approval.at.isoformat(),
            })
    if refused:
        _release_claims(ctx, refused, raise_error=False)
        raise signing.PublishRefused(
            f"{ctx.loaded.path}: {len(refused)} asset(s) not published, stay approved: the Content "
            "Credentials of a derivative did not verify:\n  - " + "\n  - ".join(refused.values())
            + "\nfix the signing key (DARKROOM_C2PA_CERT / DARKROOM_C2PA_KEY / DARKROOM_C2PA_TRUST_ANCHORS)"
            " and run the publish task again")
    if failed:
        _release_claims(ctx, failed)
    manifest_uri = _write_manifest(ctx, targets, manifest)
    summary = {"published_assets": len({w[0].id for w in work}), "files": len(manifest),
               "copied": copied, "verified": verified, "destinations": [t[1].root_uri for t in targets],
               "manifest": manifest_uri}
    with ctx.catalog.session() as s:
        run = s.get(Run, ctx.run_pk)
        run.manifest_uri = manifest_uri
        run.summary = {**(run.summary or {}), "published": summary["published_assets"]}
        run.state = "published"
    log.info("Published %d files for %d assets to %d destination(s): %d copied, %d verified",
             len(manifest), summary["published_assets"], len(targets), copied, verified)
    return summary


def _release_claims(ctx, failed: dict[str, str], raise_error: bool = True) -> None:
    """Assets with a file that could not be written are not published: their claim is
    released (approved again, so a retry copies what is missing and reviewers may still
    decide), and the task fails with the destination and the reason."""
    with ctx.catalog.session() as s:
        for asset_id in failed:
            asset = s.get(Asset, asset_id)
            if asset is not None and asset.status == AssetStatus.published:
                asset.status = AssetStatus.approved
    if not raise_error:
        return
    first = next(iter(failed.values()))
    raise StorageError(f"{ctx.loaded.path}: publish could not write {len(failed)} asset(s), which "
                       f"stay approved, not published; first: {first}; fix the destination "
                       "(permissions, free space, the path) and run the publish task again")


#: OWASP's CSV injection rule: no cell may begin with these, or a spreadsheet runs it as a formula.
FORMULA_PREFIXES = ("=", "+", "-", "@", "\t", "\r")


def csv_cell(value) -> str:
    """A manifest cell a spreadsheet shows as text: a value starting with a formula prefix
    gets a leading apostrophe (OWASP, CSV Injection). Quoting every cell (QUOTE_ALL, quotes
    doubled) keeps separators and quotes inside a value from starting a new cell."""
    text = "" if value is None else str(value)
    return "'" + text if text.startswith(FORMULA_PREFIXES) else text


def _write_manifest(ctx, targets, rows: list[dict]) -> str:
    # The JSON manifest keeps every value exactly; the CSV is for people with spreadsheets.
    body = json.dumps({"campaign": ctx.spec.id, "run_id": ctx.run_id, "files": rows}, indent=2)
    buf = io.StringIO()
    fields = ["asset_id", "variant_id", "product_id", "channel", "destination_uri", "sha256",
              "model", "model_version", "seed", "approved_by", "approved_at", "prompt"]
    writer = csv.DictWriter(buf, fieldnames=fields, extrasaction="ignore", quoting=csv.QUOTE_ALL)
    writer.writeheader()
    writer.writerows({k: csv_cell(v) for k, v in row.items()} for row in rows)
    name = f"{ctx.spec.id}/manifests/{ctx.run_key}"
    for _dest, store in targets:
        store.put(f"{name}.json", body.encode(), "application/json")
        store.put(f"{name}.csv", buf.getvalue().encode(), "text/csv")
    ctx.storage.put(ctx.key("manifest.csv"), buf.getvalue().encode(), "text/csv")
    return ctx.storage.put(ctx.key("manifest.json"), body.encode(), "application/json").uri
