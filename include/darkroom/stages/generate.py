"""generate: the GPU stage. One mapped task draws the planned variants of one batch that have
no image yet, in forward passes of ``generation.batch_size`` images: the first drawings, and
after a QA round the regenerations QA planned (the DAG's ``regenerate_N`` tasks run this same
stage). Each image is written (a PNG with its provenance inside) and recorded in the catalog
as it finishes, so a retry redraws only what is missing. The task records what it ran on
(device, dtype, seconds in model passes, peak memory) for track to read.
"""

from __future__ import annotations

import logging
import time
from collections import Counter
from typing import Any

from PIL import Image

from darkroom import ids, imaging
from darkroom.catalog import assets, runs
from darkroom.catalog.tables import AssetStatus, Variant
from darkroom.generation import routing
from darkroom.generation.passes import generate_halving
from darkroom.generation.types import PRIVATE_BACKENDS, InvalidRequest, Request, device_use
from darkroom.stages.context import RunContext
from darkroom.storage import read_uri, sha256_bytes

log = logging.getLogger("darkroom")


def run(ctx: RunContext, batch: int, backend=None, progress=None) -> dict:
    """Generate one mapped batch; return the counts (generated, skipped, failed).

    :param backend: a ready backend to draw with (tests, benchmarks); default: the ones the
        spec's routing picks.
    :param progress: called with 1 for each image written.
    """
    # 1. What this run claimed in the batch, and the model each asset type draws with,
    #    resolved to a concrete version (recorded on the run and every asset). The plan keeps
    #    asset types of different models or sizes in batches of their own.
    planned = runs.planned(ctx.catalog, ctx.run_pk, batch)
    models = {}
    for at in dict.fromkeys(v.asset_type for v, _ in planned):
        models[at] = ctx.model(at)
        runs.record_model(ctx.catalog, ctx.run_pk, models[at][0], at,
                          campaign_model=not ctx.spec.asset_type(at).own_model)
    # 2. Draw what has no image yet (retries, re-runs and refreshes skip the rest; another run
    #    still working on a variant keeps it).
    variants = [v for v, _ in planned]
    asset_ids = {v.id: ids.asset_id(v.id, models[v.asset_type][0].identity) for v in variants}
    share = assets.claim(ctx.catalog, ctx.run_pk, {asset_ids[v.id]: v.id for v in variants}, ctx.alive)
    done = assets.generated_ids(ctx.catalog, share.mine)
    todo = [v for v in variants if asset_ids[v.id] in share.mine and asset_ids[v.id] not in done]
    counts = Counter(skipped=len(variants) - len(todo))
    log.info("Batch %d: %d variants, %d already generated with model(s) %s, %d drawn by other "
             "running runs, %d to generate", batch, len(variants), len(done | share.reused),
             ", ".join(sorted({f"{ref.name}@{ref.version}" for ref, _ in models.values()})),
             len(share.held), len(todo))
    seconds, used = 0.0, []
    for at, (ref, g) in models.items():
        mine = [v for v in todo if v.asset_type == at]
        if not mine:
            continue
        # 3. The backend routing chose for these variants when the run was planned.
        drawing = backend or backend_for_todo(ctx, planned, mine, ref, g)
        if drawing not in used:  # peak memory from this task's first pass on it
            used.append(drawing)
            reset = getattr(drawing, "reset_peak_memory", None)
            if reset is not None:
                reset()
        seconds += draw(ctx, mine, asset_ids, ref, g, drawing, counts, batch, progress)
    if not used:
        return {"batch": batch, **counts}
    # 6. What this task ran on, measured here, on the worker that ran it.
    use = device_use(used[-1])
    runs.record_device_use(ctx.catalog, ctx.run_pk, batch=batch, stage="generate", worker=ctx.worker,
                           use=use, images=counts["generated"], seconds=round(seconds, 4))
    log.info("Batch %d: generated %d, skipped %d, failed %d on %s (%s), %.1f s in model passes",
             batch, counts["generated"], counts["skipped"], counts["failed"], use.device, ctx.worker, seconds)
    return {"batch": batch, **counts}


def backend_for_todo(ctx: RunContext, planned: list, todo: list[Variant], ref, g):
    todo_ids = {v.id for v in todo}
    routes = {v.id: chosen or planned_route(ctx, v) for v, chosen in planned if v.id in todo_ids}
    return routing.backend_for_batch(routes, ref, ctx.settings, g, ctx.loaded.resolve)


def draw(ctx: RunContext, todo: list[Variant], asset_ids: dict, ref, g, backend, counts: Counter,
         batch: int, progress) -> float:
    """Draw the variants of one asset type with its model; return the seconds in model passes."""
    sampler = backend.sampler_name(g.scheduler)
    # 4. Batched inference, g.batch_size images per forward pass (a short last pass is padded:
    #    the pass size, not its company, decides a variant's pixels).
    seconds = 0.0
    for start in range(0, len(todo), g.batch_size):
        chunk, requests = [], []
        for v in todo[start : start + g.batch_size]:
            try:  # each variant's inputs on their own: one unreadable reference fails only its variant
                requests.append(request_for(ctx, v, g))
            except InputImageError as exc:
                log.warning("Variant %s (product %s) failed: %s", v.id, v.product_id, exc)
                record_failure(ctx, v, asset_ids[v.id], ref, g, backend.name, f"{exc.reason}: {exc}"[:500])
                counts["failed"] += 1
                continue
            chunk.append(v)
        if not chunk:
            continue
        try:
            started = time.perf_counter()
            try:
                results = generate_halving(
                    backend, requests, pass_size=g.batch_size,
                    on_halve=lambda n, h: log.warning("Out of memory at batch size %d: retrying as %d", n, h))
            finally:
                seconds += time.perf_counter() - started
        except Exception as exc:  # recorded per variant; the next run retries them
            reason = failure_reason(exc)
            log.error("Batch %d: %d images failed: %s", batch, len(chunk), reason)
            for v in chunk:
                record_failure(ctx, v, asset_ids[v.id], ref, g, backend.name, reason)
            counts["failed"] += len(chunk)
            continue
        # 5. Write each original with its provenance, then its catalog row.
        for v, result in zip(chunk, results, strict=True):
            made_by = result.backend or backend.name
            if result.error:  # this variant only (e.g. content_filtered); the next run retries it
                log.warning("Variant %s failed on %s: %s", v.id, made_by, result.error)
                record_failure(ctx, v, asset_ids[v.id], ref, g, made_by, result.error[:500])
                counts["failed"] += 1
                continue
            record_image(ctx, v, asset_ids[v.id], ref, g, made_by, result.sampler or sampler, result)
            counts["generated"] += 1
            if progress:
                progress(1)
    return seconds


def planned_route(ctx: RunContext, v: Variant) -> str:
    """The backend of a variant planned before routes were recorded on the plan: the spec's
    rules on what is known without the product row; a rule that needs the row fails closed,
    onto a private backend."""
    g = ctx.spec.generation
    if routing.needs_products(ctx.spec):
        return g.backend if g.backend in PRIVATE_BACKENDS else "local"
    return routing.backend_for(ctx.spec, {**routing.campaign_facts(ctx.spec), "asset_type": v.asset_type})


class InputImageError(InvalidRequest):
    """A variant's ``key`` image (reference or mask) cannot be used: unreadable, or changed
    since planning."""

    reason = "input_image"

    def __init__(self, key: str, message: str):
        super().__init__(message)
        self.key = key


def request_for(ctx: RunContext, v: Variant, g) -> Request:
    """The backend request for one planned variant; InputImageError names the product, the
    column and the URI of an input image that cannot be used."""
    p = ctx.spec.products
    try:
        fields = input_fields(v.params, g.width, g.height, s3_client=ctx.s3)
    except InputImageError as exc:
        column = p.mask_image_column if exc.key == "mask" else p.reference_image_column
        raise InputImageError(exc.key, f"product {v.product_id!r}, column {column!r}: {exc}") from None
    return Request(v.id, v.prompt, v.negative_prompt, v.seed, g.width, g.height, g.steps, g.guidance,
                   g.scheduler, **fields)


def input_fields(params: dict | None, width: int, height: int, *, s3_client=None) -> dict:
    """The Request fields a variant's recorded parameters ask for beyond text-to-image: mode,
    strength, IP-Adapter scale and the decoded input images. An input image that changed
    since planning is refused: its checksum is part of the variant's identity."""
    params = params or {}
    fields: dict[str, Any] = {}
    if params.get("mode"):
        fields.update(mode=params["mode"], strength=params.get("strength", 1.0))
    if params.get("ip_adapter"):
        fields["ip_adapter_scale"] = params["ip_adapter"].get("scale")
    for key in ("reference", "mask"):
        if key not in params:
            continue
        uri, expected = params[key]["uri"], params[key]["sha256"]
        try:
            data = read_uri(uri, s3_client=s3_client)
            if sha256_bytes(data) != expected:
                raise InputImageError(key, f"the {key} image {uri} changed since the variant was "
                                      "planned; fix: start a new run (it plans a new variant for the "
                                      "new image)")
            img = imaging.decode(data).convert("L" if key == "mask" else "RGB")
        except InputImageError:
            raise
        except Exception as exc:  # storage errors, S3 errors, imaging.BadImage: the reason is the text
            raise InputImageError(key, f"the {key} image {uri} cannot be read: {exc}; fix: restore "
                                  "the file, or start a new run") from None
        # To the output size: SD image-to-image takes its size from the image.
        fields[key] = img.resize((width, height), Image.Resampling.LANCZOS)
    return fields


def failure_reason(exc: Exception) -> str:
    """``<reason>: <detail>``: a backend error's own reason, ``oom``, or ``error``."""
    text = f"{type(exc).__name__}: {exc}"
    if getattr(exc, "reason", None):  # a BackendError: timeout, backend_unavailable...
        return f"{exc.reason}: {text}"[:500]
    if "out of memory" in text.lower():
        return f"oom: {text}"
    return f"error: {text}"[:500]


def record_failure(ctx: RunContext, variant: Variant, asset_id: str, ref, g, backend: str,
                   reason: str) -> None:
    assets.record(ctx.catalog, asset_id=asset_id, variant=variant, run_pk=ctx.run_pk, ref=ref, g=g,
                  backend=backend, status=AssetStatus.failed, failure_reason=reason)


def record_image(ctx: RunContext, variant: Variant, asset_id: str, ref, g, backend: str, sampler: str,
                 result) -> None:
    """Encode the image with both provenance records, store it, record the asset."""
    img = result.image
    prov = imaging.Provenance(
        parameters=imaging.infotext(
            prompt=variant.prompt, negative_prompt=variant.negative_prompt, steps=g.steps,
            sampler=sampler, guidance=g.guidance, seed=variant.seed, width=img.width,
            height=img.height, model_hash=ref.model_hash, model=ref.name,
            extra={**infotext_extras(variant, ref), "Model version": ref.version,
                   "Asset id": asset_id, "Version": "darkroom"}),
        darkroom={"asset_id": asset_id, "variant_id": variant.id, "campaign": ctx.spec.id,
                  "run_id": ctx.run_id, "product_id": variant.product_id,
                  "model": ref.location if not ref.is_local else ref.name,
                  "model_version": ref.version, "backend": backend,
                  "pass_size": len(result.forward_pass or [variant.id]),
                  **({"loras": [{k: x[k] for k in ("name", "version", "weight")} for x in ref.lora_records]}
                     if ref.loras else {}),
                  **{k: (variant.params or {})[k] for k in ("mode", "strength", "reference", "mask",
                                                           "ip_adapter") if k in (variant.params or {})}},
    )
    data = imaging.encode(img, "png", prov)
    stored = ctx.storage.put(ctx.key("originals", f"{variant.id}.png"), data, "image/png")
    assets.record(ctx.catalog, asset_id=asset_id, variant=variant, run_pk=ctx.run_pk, ref=ref, g=g,
                  backend=backend, status=AssetStatus.generated, failure_reason=None, uri=stored.uri,
                  sha256=stored.sha256, width=img.width, height=img.height, format="png",
                  bytes=stored.bytes, timings={"generate_s": round(result.seconds, 4)},
                  forward_pass=result.forward_pass)


def infotext_extras(variant: Variant, ref) -> dict:
    """AUTOMATIC1111's own keys for what went beyond text-to-image, so its tools read them."""
    params, extra = variant.params or {}, {}
    if params.get("mode"):
        extra["Denoising strength"] = params["strength"]
        extra["Mode"] = params["mode"]
    if ref.loras:
        extra["Lora hashes"] = ", ".join(f"{x.name}: {x.version}" for x in ref.loras)
        extra["Lora weights"] = ", ".join(f"{x.name}: {x.weight:g}" for x in ref.loras)
    if params.get("ip_adapter"):
        extra["IP-Adapter"] = f"{params['ip_adapter']['weight_name']}: {params['ip_adapter']['scale']:g}"
    return extra
