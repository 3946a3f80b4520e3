"""Sealing approved derivatives for publication: the approval written into the XMP, then
Content Credentials signed over the result, then read back and checked before anything is
copied out.

Why here, at publish, and not when postprocess makes the derivatives: the approval (who,
when, the note) is part of what the credentials assert, and it exists only once a reviewer
has decided; credentials signed earlier would either lack it or need a second manifest on
top. Signing only what is published also keeps the key away from the render workers (the
publish task alone reads it) and spends no signature on rejected images. The pixels are
not touched: the watermark went in at postprocess, so reviewers judged exactly the pixels
that are published; only the metadata differs from the reviewed file.

The signed file is stored beside the run's derivatives (``signed/{channel}/{variant}.ext``)
and recorded on the derivative row; a retry reuses it while it still verifies and was made
from the same derivative bytes for the same approval.
"""

from __future__ import annotations

import logging
from dataclasses import dataclass

from darkroom import imaging
from darkroom.errors import DarkroomError
from darkroom.models import Derivative
from darkroom.provenance import credentials, xmp
from darkroom.storage import read_uri, sha256_bytes

log = logging.getLogger("darkroom")


class PublishRefused(DarkroomError):
    """A derivative whose Content Credentials did not verify: it was not published."""


@dataclass(frozen=True)
class Signed:
    uri: str
    sha256: str
    bytes: int
    state: str  # what the read-back said: trusted


def approval_record(asset, variant, deriv, review) -> dict:
    """The ``darkroom.approval`` assertion, and the approval in the published file's XMP."""
    return {"asset_id": asset.id, "variant_id": variant.id, "channel": deriv.channel,
            "decision": review.decision, "reviewer": review.reviewer, "note": review.note or "",
            "at": review.at.isoformat(), "review_id": review.id,
            "derivative_sha256": deriv.sha256}


def _reusable(ctx, deriv, review, key) -> Signed | None:
    if not deriv.signed_uri or deriv.signed_review_id != review.id:
        return None
    try:
        data = read_uri(deriv.signed_uri, s3_client=getattr(ctx.storage, "client", None))
    except Exception:
        return None
    check = credentials.read(data, key.anchors)
    if (sha256_bytes(data) != deriv.signed_sha256 or check.state != "trusted"
            or (check.approval or {}).get("derivative_sha256") != deriv.sha256):
        return None
    return Signed(deriv.signed_uri, deriv.signed_sha256, len(data), check.state)


def _catalog_provenance(ctx, asset, variant, deriv) -> imaging.Provenance:
    parameters = imaging.infotext(
        prompt=variant.prompt, negative_prompt=variant.negative_prompt, steps=asset.steps,
        sampler=asset.scheduler, guidance=asset.guidance, seed=asset.seed, width=asset.width or 0,
        height=asset.height or 0, model_hash=asset.model_version, model=asset.model_name,
        extra={"Model version": asset.model_version, "Asset id": asset.id, "Version": "darkroom"})
    return imaging.Provenance(parameters, {
        "asset_id": asset.id, "variant_id": variant.id, "campaign": ctx.spec.id, "run_id": ctx.run_id,
        "product_id": variant.product_id, "model": asset.model_name,
        "model_version": asset.model_version, "channel": deriv.channel})


def _signed_original(ctx, asset, key) -> bytes | None:
    """The original with its own manifest (c2pa.created), to be the derivative's parent
    ingredient; None when it cannot be read (the derivative then claims the creation)."""
    try:
        original = read_uri(asset.uri, s3_client=getattr(ctx.storage, "client", None))
    except Exception as exc:
        log.warning("Original %s of asset %s unreadable (%s): its derivatives are signed without it",
                    asset.uri, asset.id, exc)
        return None
    prov = imaging.read_provenance(original)
    darkroom = prov.darkroom if prov else {"asset_id": asset.id, "model": asset.model_name,
                                           "model_version": asset.model_version}
    return credentials.sign(original, "png", credentials.original_manifest(
        prov.parameters if prov else "", darkroom, xmp.title({**darkroom, "channel": "original"})), key)


def sign_for_publication(ctx, work) -> tuple[dict[int, Signed], dict[str, str]]:
    """Seal each ``(asset, variant, derivative, approval review)`` of ``work``; return the
    signed files by derivative id, and for each asset with a refused derivative, why."""
    key = credentials.signing_key(ctx.settings)
    if key.test_ca:
        log.warning("Signing Content Credentials with the local test CA in %s: not for production; "
                    "set DARKROOM_C2PA_CERT and DARKROOM_C2PA_KEY (or the darkroom_c2pa connection)",
                    key.source)
    s3 = getattr(ctx.storage, "client", None)
    channels = ctx.spec.channels
    originals: dict[str, bytes] = {}
    signed: dict[int, Signed] = {}
    refused: dict[str, str] = {}
    for asset, variant, deriv, review in work:
        if (done := _reusable(ctx, deriv, review, key)) is not None:
            signed[deriv.id] = done
            continue
        try:
            data = read_uri(deriv.uri, s3_client=s3)
            # The file's own provenance; the catalog's record when the file lost it.
            prov = imaging.read_provenance(data) or _catalog_provenance(ctx, asset, variant, deriv)
            # 1. The approval into the XMP (pixels and every other chunk kept).
            approval = approval_record(asset, variant, deriv, review)
            approved = imaging.Provenance(prov.parameters, {**prov.darkroom, "approval": approval})
            data = xmp.replace(data, approved.xmp())
            # 2. The original's manifest (once per asset), then the derivative's over it.
            if asset.id not in originals:
                originals[asset.id] = _signed_original(ctx, asset, key)
            parent = originals[asset.id]
            manifest = credentials.derivative_manifest(prov.darkroom, channels[deriv.channel], approval,
                                                       xmp.title(prov.darkroom), deriv.format,
                                                       created=parent is None)
            data = credentials.sign(data, deriv.format, manifest, key,
                                    ingredient=(parent, "png", "original") if parent else None)
            # 3. Read back: only a file whose credentials hold and chain to our anchors goes out.
            check = credentials.read(data, key.anchors)
            if check.state != "trusted":
                raise PublishRefused(f"its Content Credentials read back as {check.state}: "
                                     + "; ".join(check.errors or ["no detail"]))
        except (DarkroomError, xmp.XmpError) as exc:
            refused.setdefault(asset.id, f"{deriv.uri} (asset {asset.id}, channel {deriv.channel}): {exc}")
            log.error("Not publishing %s: %s", deriv.uri, exc)
            continue
        ext = deriv.uri.rsplit(".", 1)[-1]
        stored = ctx.storage.put(ctx.key("signed", deriv.channel, f"{variant.id}.{ext}"), data,
                                 credentials.MIME[deriv.format])
        with ctx.catalog.session() as s:
            row = s.get(Derivative, deriv.id)
            row.signed_uri, row.signed_sha256, row.signed_bytes = stored.uri, stored.sha256, stored.bytes
            row.signed_review_id = review.id
        signed[deriv.id] = Signed(stored.uri, stored.sha256, stored.bytes, check.state)
    return signed, refused
