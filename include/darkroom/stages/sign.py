"""Sealing approved derivatives for publication (a step of publish): the approval written into
the XMP, then Content Credentials signed over the result, then read back and checked before
anything is copied out.

Why at publish, and not when postprocess makes the derivatives: the approval (who, when, the
note) is part of what the credentials assert, and it exists only once a reviewer has decided;
credentials signed earlier would either lack it or need a second manifest on top. Signing only
what is published also keeps the key away from the render workers (the publish task alone
reads it) and spends no signature on rejected images. The pixels are not touched: the
watermark went in at postprocess, so reviewers judged exactly the pixels that are published;
only the metadata differs from the reviewed file.

The signed file is stored beside the run's derivatives (``signed/{channel}/{variant}.ext``)
and recorded on the derivative row; a retry reuses it while it still verifies and was made
from the same derivative bytes for the same approval.
"""

from __future__ import annotations

import logging
from dataclasses import dataclass

from darkroom import imaging
from darkroom.catalog import assets
from darkroom.errors import DarkroomError
from darkroom.provenance import credentials, xmp
from darkroom.stages.context import RunContext
from darkroom.storage import read_uri, sha256_bytes

log = logging.getLogger("darkroom")


class PublishRefused(DarkroomError):
    """A derivative whose Content Credentials did not verify: it was not published."""


@dataclass(frozen=True)
class Signed:
    """The sealed file of one derivative: what publish copies."""

    uri: str
    sha256: str
    bytes: int
    state: str  # what the read-back said: trusted


def for_publication(ctx: RunContext, work: list[assets.Claimed]) -> tuple[dict[int, Signed], dict[str, str]]:
    """Seal each claimed derivative of ``work``; return the signed files by derivative id,
    and for each asset with a refused derivative, why."""
    key = credentials.signing_key(ctx.settings)
    if key.test_ca:
        log.warning("Signing Content Credentials with the local test CA in %s: not for production; "
                    "set DARKROOM_C2PA_CERT and DARKROOM_C2PA_KEY (or the darkroom_c2pa connection)",
                    key.source)
    originals: dict[str, bytes | None] = {}
    signed: dict[int, Signed] = {}
    refused: dict[str, str] = {}
    for item in work:
        if (done := reusable(ctx, item, key)) is not None:
            signed[item.derivative_id] = done
            continue
        try:
            data, state = seal(ctx, item, key, originals)
        except (DarkroomError, xmp.XmpError) as exc:
            refused.setdefault(item.asset_id, f"{item.uri} (asset {item.asset_id}, channel "
                                              f"{item.channel}): {exc}")
            log.error("Not publishing %s: %s", item.uri, exc)
            continue
        ext = item.uri.rsplit(".", 1)[-1]
        stored = ctx.storage.put(ctx.key("signed", item.channel, f"{item.variant_id}.{ext}"), data,
                                 credentials.MIME[item.format])
        assets.record_signed(ctx.catalog, item.derivative_id, stored, item.approval_id)
        signed[item.derivative_id] = Signed(stored.uri, stored.sha256, stored.bytes, state)
    return signed, refused


def seal(ctx: RunContext, item: assets.Claimed, key: credentials.SigningKey,
         originals: dict[str, bytes | None]) -> tuple[bytes, str]:
    """One derivative with the approval in its XMP and its Content Credentials signed and
    read back; ``originals`` caches each asset's signed original (its parent ingredient)."""
    data = read_uri(item.uri, s3_client=ctx.s3)
    # The file's own provenance; the catalog's record when the file lost it.
    prov = imaging.read_provenance(data) or catalog_provenance(ctx, item)
    # 1. The approval into the XMP (pixels and every other chunk kept).
    approval = approval_record(item)
    approved = imaging.Provenance(prov.parameters, {**prov.darkroom, "approval": approval})
    data = xmp.replace(data, approved.xmp())
    # 2. The original's manifest (once per asset), then the derivative's over it.
    if item.asset_id not in originals:
        originals[item.asset_id] = signed_original(ctx, item, key)
    parent = originals[item.asset_id]
    manifest = credentials.derivative_manifest(prov.darkroom, ctx.spec.channels[item.channel], approval,
                                               xmp.title(prov.darkroom), item.format,
                                               created=parent is None)
    data = credentials.sign(data, item.format, manifest, key,
                            ingredient=(parent, "png", "original") if parent else None)
    # 3. Read back: only a file whose credentials hold and chain to our anchors goes out.
    check = credentials.read(data, key.anchors)
    if check.state != "trusted":
        raise PublishRefused(f"its Content Credentials read back as {check.state}: "
                             + "; ".join(check.errors or ["no detail"]))
    return data, check.state


def approval_record(item: assets.Claimed) -> dict:
    """The ``darkroom.approval`` assertion, and the approval in the published file's XMP."""
    return {"asset_id": item.asset_id, "variant_id": item.variant_id, "channel": item.channel,
            "decision": "approved", "reviewer": item.approved_by, "note": item.approval_note or "",
            "at": item.approved_at.isoformat(), "review_id": item.approval_id,
            "derivative_sha256": item.sha256}


def reusable(ctx: RunContext, item: assets.Claimed, key: credentials.SigningKey) -> Signed | None:
    """The sealed file an earlier publish made, if it is still there, still trusted, and was
    made from this derivative for this approval."""
    if not item.signed_uri or item.signed_review_id != item.approval_id:
        return None
    try:
        data = read_uri(item.signed_uri, s3_client=ctx.s3)
    except Exception:  # gone or unreadable: sealed again
        return None
    check = credentials.read(data, key.anchors)
    if (sha256_bytes(data) != item.signed_sha256 or check.state != "trusted"
            or (check.approval or {}).get("derivative_sha256") != item.sha256):
        return None
    return Signed(item.signed_uri, item.signed_sha256, len(data), check.state)


def catalog_provenance(ctx: RunContext, item: assets.Claimed) -> imaging.Provenance:
    """The provenance the catalog records for a derivative whose file lost its own."""
    asset = assets.get(ctx.catalog, item.asset_id)
    v = asset.variant
    parameters = imaging.infotext(
        prompt=v.prompt, negative_prompt=v.negative_prompt, steps=asset.steps,
        sampler=asset.scheduler, guidance=asset.guidance, seed=asset.seed, width=asset.width or 0,
        height=asset.height or 0, model_hash=asset.model_version, model=asset.model_name,
        extra={"Model version": asset.model_version, "Asset id": asset.id, "Version": "darkroom"})
    return imaging.Provenance(parameters, {
        "asset_id": asset.id, "variant_id": v.id, "campaign": ctx.spec.id, "run_id": ctx.run_id,
        "product_id": v.product_id, "model": asset.model_name,
        "model_version": asset.model_version, "channel": item.channel})


def signed_original(ctx: RunContext, item: assets.Claimed, key: credentials.SigningKey) -> bytes | None:
    """The original with its own manifest (c2pa.created), to be the derivative's parent
    ingredient; None when it cannot be read (the derivative then claims the creation)."""
    try:
        original = read_uri(item.original_uri, s3_client=ctx.s3)
    except Exception as exc:
        log.warning("Original %s of asset %s unreadable (%s): its derivatives are signed without it",
                    item.original_uri, item.asset_id, exc)
        return None
    prov = imaging.read_provenance(original)
    darkroom = prov.darkroom if prov else {"asset_id": item.asset_id, "model": item.model_name,
                                           "model_version": item.model_version}
    return credentials.sign(original, "png", credentials.original_manifest(
        prov.parameters if prov else "", darkroom, xmp.title({**darkroom, "channel": "original"})), key)
