"""upscale: the model upscaler (``generation.upscaler``) for channels' ``upscale_to``, on the
GPU queue. Once per QA-passed asset of the batch, to the largest ``upscale_to`` its channels
ask for above its size; the upscaled original goes to storage and onto the asset, where the
postprocess stage (on the CPU workers) picks it up. Without a model upscaler the DAG has no
upscale task and postprocess upscales with Lanczos.
"""

from __future__ import annotations

import logging
import time

from darkroom import postprocess as recipes
from darkroom.catalog import assets, runs
from darkroom.catalog.tables import REVIEWABLE
from darkroom.stages.context import RunContext
from darkroom.storage import read_uri, sha256_bytes
from darkroom.upscaler import load as load_upscaler

log = logging.getLogger("darkroom")


def run(ctx: RunContext, batch: int) -> dict:
    """Upscale the batch's reviewable originals that need it; return the counts."""
    counts = {"batch": batch, "upscaled": 0, "failed": 0, "skipped": 0}
    if not ctx.spec.uses_model_upscaler:
        return counts
    # 1. Which originals need the model, and to what size (done ones are skipped: retries).
    todo = []
    for a in assets.of_batch(ctx.catalog, ctx.run_pk, batch, REVIEWABLE):
        original = read_uri(a.uri, s3_client=ctx.s3)
        target = recipes.upscale_target(original, {n: ctx.spec.channels[n] for n in a.variant.channels})
        if not target or (a.upscaled or {}).get("to") == target and "uri" in (a.upscaled or {}):
            counts["skipped"] += 1
            continue
        todo.append((a, original, target))
    if not todo:
        return counts
    # 2. The model, once for the batch (a model that cannot load fails the task: every asset
    #    would fail the same way).
    model = load_upscaler(ctx.spec.generation.upscaler, ctx.spec.generation.device)
    model.reset_peak_memory()
    # 3. Each original: upscale, store, record (an image the model fails on fails alone).
    seconds = 0.0
    for a, original, target in todo:
        started = time.perf_counter()
        up = recipes.upscale_original(original, target, model)
        seconds += time.perf_counter() - started
        if up.error is not None:
            log.error("Upscale: asset %s failed: %s", a.id, up.error)
            assets.record_upscale(ctx.catalog, a.id, {"by": up.by, "to": up.to, "error": up.error[:2000]})
            counts["failed"] += 1
            continue
        stored = ctx.storage.put(ctx.key("upscaled", f"{a.variant_id}.png"), up.data, "image/png")
        assets.record_upscale(ctx.catalog, a.id, {"uri": stored.uri, "sha256": stored.sha256,
                                                  "by": up.by, "to": up.to})
        counts["upscaled"] += 1
    # 4. What this task ran on, measured here, on the worker that ran it.
    use = model.device_use()
    runs.record_device_use(ctx.catalog, ctx.run_pk, batch=batch, stage="upscale", worker=ctx.worker,
                           use=use, images=counts["upscaled"], seconds=round(seconds, 4))
    log.info("Upscale batch %d: %d upscaled, %d failed, %d skipped on %s (%s), %.1f s", batch,
             counts["upscaled"], counts["failed"], counts["skipped"], use.device, ctx.worker, seconds)
    return counts


def upscaled_for(ctx: RunContext, asset) -> recipes.Upscaled | None:
    """The model-upscaled original recorded on the asset, read back for the render (checked
    against its checksum); None when the asset has none."""
    rec = asset.upscaled
    if not rec:
        return None
    if "error" in rec:
        return recipes.Upscaled(rec["by"], rec["to"], error=rec["error"])
    data = read_uri(rec["uri"], s3_client=ctx.s3)
    if sha256_bytes(data) != rec["sha256"]:
        return recipes.Upscaled(rec["by"], rec["to"], error=f"{rec['uri']} changed since it was upscaled")
    return recipes.Upscaled(rec["by"], rec["to"], data=data)
