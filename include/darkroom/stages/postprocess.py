"""postprocess: each QA-passed asset's channel derivatives (darkroom.postprocess recipes:
crop or pad, resize, overlays, format), provenance carried into each; rendered in parallel
over the machine's cores, streaming, each stored and recorded as it comes back. A model
upscaler's output was made on the GPU queue (the upscale stage) and is only read here.
Each asset also gets the review gallery's thumbnail, from the same job, so the gallery never
decodes an original to show it."""

from __future__ import annotations

import logging

from darkroom import postprocess as recipes
from darkroom.catalog import assets
from darkroom.catalog.tables import REVIEWABLE, Asset, AssetStatus
from darkroom.errors import StorageError
from darkroom.imaging import BadImage
from darkroom.parallel import default_workers, pool_size, process_map
from darkroom.stages import upscale
from darkroom.stages.brand import brand_channels
from darkroom.stages.context import RunContext
from darkroom.storage import Storage, read_uri

log = logging.getLogger("darkroom")


def run(ctx: RunContext, batch: int) -> dict:
    """Make the batch's derivatives; return the counts (derivatives, assets, failed)."""
    channels = brand_channels(ctx)
    # 1. A recipe that cannot work (missing logo or font, no upscaler) fails the task now,
    #    with the field to fix, instead of failing every asset one by one.
    recipes.check_recipes(channels, model_upscaler=ctx.spec.generation.upscaler)
    model_upscaled = ctx.spec.uses_model_upscaler
    todo = assets.of_batch(ctx.catalog, ctx.run_pk, batch, REVIEWABLE)
    largest = max((c.width * c.height for c in channels.values()), default=0)
    workers = pool_size(len(todo), largest, ctx.spec.qa.workers or default_workers())
    made = failed = 0
    # 2. Render in worker processes; store each derivative and its row as it comes back.
    work = jobs(ctx, todo, channels, model_upscaled)
    for asset, res in process_map(recipes.render_for_review, work, workers=workers):
        if isinstance(res, Exception):  # one bad original never stops the batch
            log.error("Postprocess: asset %s failed: %s", asset.id, res)
            assets.fail(ctx.catalog, asset.id, f"postprocess: {type(res).__name__}: {res}")
            failed += 1
            continue
        rendered, thumb = res
        for d in rendered:
            store(ctx, asset, d)
            made += 1
        store_thumbnail(ctx.catalog, ctx.storage, asset.id, ctx.key("thumbnails", f"{asset.variant_id}.webp"),
                        thumb)
    # 3. The assets QA failed show in the gallery too, beside the versions regenerated from
    #    them: their thumbnails now, so the gallery decodes no original of this run.
    for a in assets.of_batch(ctx.catalog, ctx.run_pk, batch, (AssetStatus.qa_failed,)):
        if a.uri and not a.thumbnail_uri:
            try:
                review_thumbnail(ctx.catalog, ctx.storage, a.id)
            except (BadImage, StorageError) as exc:  # the gallery tries again on first request
                log.warning("Postprocess: no thumbnail for asset %s: %s", a.id, exc)
    log.info("Postprocess batch %d: %d derivatives for %d assets, %d failed", batch, made, len(todo),
             failed)
    return {"batch": batch, "derivatives": made, "assets": len(todo), "failed": failed}


def jobs(ctx: RunContext, todo: list[Asset], channels: dict, model_upscaled: bool):
    """process_map jobs for render_for_review: the original, its channels' recipes (``channels``,
    brand files resolved), its locale, and the model upscaler's output when the spec has one
    and a channel needs it."""
    for a in todo:
        v = a.variant
        original = read_uri(a.uri, s3_client=ctx.s3)
        recipe = {n: channels[n] for n in v.channels}
        kwargs = {"locale": (v.params or {}).get("locale")}
        if model_upscaled and recipes.upscale_target(original, recipe):
            kwargs["upscaled"] = upscale.upscaled_for(ctx, a) or recipes.Upscaled(
                ctx.spec.generation.upscaler, recipes.upscale_target(original, recipe),
                error="no model-upscaled original is recorded: the batch's upscale task did not run")
        yield a, (original, recipe), kwargs


def store(ctx: RunContext, asset: Asset, d: recipes.Rendered) -> None:
    """One derivative into storage (``{campaign}/{run}/derivatives/{channel}/{variant}.{ext}``)
    and its row into the catalog; the product mask it was cut with beside them
    (``{campaign}/{run}/masks/{variant}.png``, one per original: every channel's is the same)."""
    if d.mask is not None:
        ctx.storage.put(ctx.key("masks", f"{asset.variant_id}.png"), d.mask, "image/png")
    stored = ctx.storage.put(ctx.key("derivatives", d.channel, f"{asset.variant_id}.{d.extension}"),
                             d.data, f"image/{d.format}")
    assets.record_derivative(ctx.catalog, asset.id, d.channel, stored, width=d.width, height=d.height,
                             format=d.format, phash=d.phash, watermark=d.watermark,
                             watermark_key=d.watermark_key)


def store_thumbnail(catalog, storage: Storage, asset_id: str, key: str, data: bytes):
    """The gallery's thumbnail into storage (``{campaign}/{run}/thumbnails/{variant}.webp``)
    and onto the asset's row; returns where storage put it."""
    stored = storage.put(key, data, "image/webp")
    assets.record_thumbnail(catalog, asset_id, stored)
    return stored


def review_thumbnail(catalog, storage: Storage, asset_id: str) -> tuple[str, str]:
    """The asset's gallery thumbnail as (uri, sha256). An asset postprocess never took (a
    failed QA, a run from before thumbnails) gets it made now from its original, once: it is
    stored and recorded, so no later request decodes the original again.

    :raises LookupError: no such asset, or it has no original (nothing was generated).
    """
    src = assets.thumbnail_source(catalog, asset_id)
    if src is None or not src.original_uri:
        raise LookupError(f"asset {asset_id!r} has no original in the catalog to make a thumbnail of")
    if src.thumbnail_uri and src.thumbnail_sha256:
        return src.thumbnail_uri, src.thumbnail_sha256
    data = recipes.thumbnail(read_uri(src.original_uri, s3_client=getattr(storage, "client", None)))
    stored = store_thumbnail(catalog, storage, asset_id, src.key, data)
    return stored.uri, stored.sha256
