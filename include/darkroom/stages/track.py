"""track: the run's contact sheet, then its MLflow run (params, metrics, artifacts), all read
from the catalog: what generate recorded is what gets tracked, the device the GPU stages ran on
and their GPU seconds included. track runs on a CPU worker and never probes its own device."""

from __future__ import annotations

import io
import json
import logging
from collections import Counter

from PIL import Image

from darkroom import imaging, tracking
from darkroom.catalog import assets, runs
from darkroom.catalog.tables import Asset, AssetStatus
from darkroom.errors import RunFailed
from darkroom.ids import key_part
from darkroom.prompts import template_version
from darkroom.stages.context import RunContext
from darkroom.storage import read_uri

log = logging.getLogger("darkroom")

SAMPLE_IMAGES = 8  # originals logged per run, as their own bytes


def run(ctx: RunContext) -> dict:
    """Draw the contact sheet and log the MLflow run; return both their ids."""
    # 1. The contact sheet: every image, captioned, failures marked.
    sheet_uri = contact_sheet(ctx)
    # 2. What the catalog knows of the run and its assets.
    run_ref = runs.get(ctx.catalog, ctx.run_pk)
    run_assets = assets.of_run(ctx.catalog, ctx.run_pk)
    used = runs.device_use(ctx.catalog, ctx.run_pk)
    # 3. The MLflow run: params, metrics, artifacts.
    mlflow_run_id = tracking.log_run(
        ctx.settings, campaign_id=ctx.spec.id, dag_id=ctx.dag_id, run_id=ctx.run_id,
        tags=run_tags(ctx, run_ref, used), params=run_params(ctx, run_ref, run_assets),
        metrics=run_metrics(ctx, run_assets, run_ref.summary, used), artifacts=artifacts(ctx, sheet_uri),
        samples=samples(ctx, run_assets), table=asset_table(run_assets), attempt=run_ref.attempt,
        products=product_rows(ctx))
    runs.set_mlflow_run(ctx.catalog, ctx.run_pk, mlflow_run_id)
    log.info("Tracked run in MLflow %s (run %s); contact sheet %s",
             ctx.settings.mlflow_tracking_uri, mlflow_run_id, sheet_uri)
    # 4. A run whose every asset failed has nothing to review or publish: it ends failed here,
    #    with the reasons, once its contact sheet and MLflow run are kept.
    check_something_to_review(ctx, run_assets)
    return {"mlflow_run_id": mlflow_run_id, "contact_sheet": sheet_uri}


def check_something_to_review(ctx: RunContext, run_assets: list[Asset]) -> None:
    """RunFailed, with the reasons counted, when the run made assets and every one of them
    failed (generation, QA or derivatives). A run that made none (everything was generated
    by an earlier run) is not a failure."""
    if not run_assets or any(a.status not in (AssetStatus.failed, AssetStatus.qa_failed)
                             for a in run_assets):
        return
    reasons = Counter(
        a.failure_reason[:300] if a.status == AssetStatus.failed and a.failure_reason
        else "failed QA: " + ", ".join(q.check for q in a.qa_results if not q.passed)
        if a.status == AssetStatus.qa_failed else "failed (no reason recorded)"
        for a in run_assets)
    lines = "\n".join(f"  - {n} x {reason}" for reason, n in reasons.most_common(10))
    more = f"\n  - and {len(reasons) - 10} other reasons" if len(reasons) > 10 else ""
    message = (
        f"{ctx.loaded.path}: all {len(run_assets)} assets of run {ctx.run_id} failed, so nothing "
        f"can be reviewed or published:\n{lines}{more}\nfix the causes above: the next run draws "
        "a failed image again; an image that failed QA needs another prompt, seed_offset or QA "
        "threshold (the contact sheet and the MLflow run show every asset)")
    runs.mark_ended(ctx.catalog, ctx.run_pk, "failed", message)
    raise RunFailed(message)


def contact_sheet(ctx: RunContext) -> str:
    """The run's contact sheet: every image, captioned with variant, channels and QA status,
    failures marked; stored with the run. Return its URI."""
    tiles = []
    for a in assets.of_run(ctx.catalog, ctx.run_pk):
        img = None
        if a.uri is not None:
            try:  # thumbnail at once: the sheet holds thumbnails, never full images
                img = imaging.decode(read_uri(a.uri, s3_client=ctx.s3))
                img.thumbnail((320, 320), Image.Resampling.LANCZOS)
            except Exception as exc:
                log.warning("Contact sheet: cannot read %s: %s", a.uri, exc)
        v = a.variant
        caption = (f"{v.id[:10]} s{a.seed}" + (f" (retry {v.attempt})" if v.attempt else "")
                   + f"\n{v.product_id} {v.asset_type}\n{', '.join(v.channels)}")
        tiles.append((img, caption, a.status))
    attempt = runs.get(ctx.catalog, ctx.run_pk).attempt
    label = ctx.run_id + (f" (attempt {attempt})" if attempt else "")
    sheet = imaging.contact_sheet(tiles, title=f"{ctx.spec.id} / {label} / {len(tiles)} images")
    buf = io.BytesIO()
    sheet.save(buf, format="PNG")
    stored = ctx.storage.put(ctx.key("contact_sheet.png"), buf.getvalue(), "image/png")
    runs.set_contact_sheet(ctx.catalog, ctx.run_pk, stored.uri)
    return stored.uri


def run_tags(ctx: RunContext, run_ref: runs.RunRef, used: list) -> dict:
    """The spec, the model version, and where the GPU stages ran: their devices, dtypes and
    workers as they recorded them (several when tasks ran on different hosts)."""
    model = run_ref.summary.get("model") or {}

    def joined(values) -> str:
        return ", ".join(sorted({v for v in values if v}))

    return {"spec_hash": ctx.spec.spec_hash, "model_version": run_ref.model_version or "",
            "model_profile": model.get("profile", ""), "device": joined(u.device for u in used),
            "dtype": joined(u.dtype for u in used), "gpu_workers": joined(u.worker for u in used)}


def run_params(ctx: RunContext, run_ref: runs.RunRef, run_assets: list[Asset]) -> dict:
    """What made the pixels: profile and concrete version, base model + revision, LoRAs,
    scheduler, steps, guidance, size; read from the assets (what generate really used) and
    the model record generate left on the run."""
    g = ctx.spec.generation
    model = run_ref.summary.get("model") or {}
    first = next((a for a in run_assets if a.uri), run_assets[0] if run_assets else None)
    return {
        "model": g.model, "model_version": run_ref.model_version or "",
        "model_profile": model.get("profile", ""), "model_profile_version": model.get("profile_version", ""),
        "base_model": model.get("base") or run_ref.model_ref or g.model,
        "base_revision": model.get("revision") or g.revision or "",
        "base_checksum": model.get("checksum", ""),
        "loras": json.dumps(model.get("loras", [{k: x[k] for k in ("name", "version", "weight")}
                                                for x in (first.loras if first else [])])),
        "scheduler": first.scheduler if first else g.scheduler,
        "steps": first.steps if first else g.steps,
        "guidance": first.guidance if first else g.guidance,
        "size": f"{g.width}x{g.height}",
        "template_version": template_version(ctx.loaded),
        "template_versions": json.dumps(sorted({a.variant.template_version for a in run_assets})),
        "seeds_per_variant": g.seeds_per_variant,
        "batch_size": g.batch_size,
        "conf": json.dumps(ctx.conf.as_conf(), default=str)[:6000],
        **asset_type_params(ctx, run_ref, run_assets),
    }


def asset_type_params(ctx: RunContext, run_ref: runs.RunRef, run_assets: list[Asset]) -> dict:
    """``<asset type>.model``, ``.model_version``, ``.size``... for each asset type, when some
    asset type draws with a generation of its own (the campaign-wide params above then tell
    only the campaign's): from the model records generate left and the assets it made."""
    if not any(at.generation for at in ctx.spec.asset_types):
        return {}
    models = run_ref.summary.get("models") or {}
    out = {}
    for at in ctx.spec.asset_types:
        g, model = ctx.spec.generation_for(at.name), models.get(at.name) or {}
        first = next((a for a in run_assets if a.uri and a.variant.asset_type == at.name), None)
        out.update({
            f"{at.name}.model": g.model, f"{at.name}.model_version": model.get("version", ""),
            f"{at.name}.model_profile": model.get("profile", ""),
            f"{at.name}.loras": json.dumps(model.get("loras", [])),
            f"{at.name}.scheduler": first.scheduler if first else g.scheduler,
            f"{at.name}.steps": first.steps if first else g.steps,
            f"{at.name}.guidance": first.guidance if first else g.guidance,
            f"{at.name}.size": f"{g.width}x{g.height}",
        })
    return out


def run_metrics(ctx: RunContext, run_assets: list[Asset], summary: dict, used: list) -> dict:
    """Counts and rates of the run: generated, QA outcomes and failures by check, decisions,
    seconds; GPU seconds (the GPU stages' seconds in model passes, as they recorded them),
    their estimated cost and the peak memory."""
    statuses = Counter(a.status for a in run_assets)
    failures = Counter(q.check for a in run_assets for q in a.qa_results if not q.passed)
    generated = [a for a in run_assets if a.uri]
    gen_seconds = sum((a.timings or {}).get("generate_s", 0) for a in run_assets)
    # Every asset that went through QA, whatever happened to it after (review, publishing).
    checked = [a for a in run_assets if a.qa_results]
    passed = sum(1 for a in checked if all(q.passed for q in a.qa_results))
    decided = Counter(a.reviews[-1].decision for a in run_assets if a.reviews)
    gpu_seconds = sum(u.seconds for u in used)
    peaks = [u.peak_memory_bytes for u in used if u.peak_memory_bytes]
    price = ctx.settings.gpu_price(ctx.spec.generation.cost_per_gpu_hour)
    metrics = {
        "variants_planned": summary.get("planned", 0),
        "images_generated": len(generated),
        "images_failed": statuses[AssetStatus.failed],
        "qa_checked": len(checked),
        "qa_passed": passed,
        "qa_failed": len(checked) - passed,
        "qa_pass_rate": passed / len(checked) if checked else 0.0,
        "approved": decided["approved"],
        "rejected": decided["rejected"],
        "generate_seconds": gen_seconds,
        "images_per_second": len(generated) / gen_seconds if gen_seconds else 0.0,
        "gpu_seconds": gpu_seconds,
        "upscale_gpu_seconds": sum(u.seconds for u in used if u.stage == "upscale"),
        "estimated_cost": gpu_seconds / 3600 * price,
        "peak_memory_mb": round(max(peaks) / 2**20, 1) if peaks else 0.0,
    }
    metrics.update({f"qa_fail_{k}": v for k, v in failures.items()})
    return metrics


def artifacts(ctx: RunContext, sheet_uri: str) -> dict[str, bytes]:
    """The contact sheet, and the validation report when validate_inputs wrote one."""
    out = {"contact_sheet.png": read_uri(sheet_uri, s3_client=ctx.s3)}
    report_uri = ctx.storage.uri_for(ctx.key("validation.html"))
    if ctx.storage.stat(report_uri) is not None:
        out["validation.html"] = read_uri(report_uri, s3_client=ctx.s3)
    return out


def samples(ctx: RunContext, run_assets: list[Asset]) -> dict[str, bytes]:
    """The first originals' files as generate stored them, provenance chunks and all."""
    return {f"samples/{key_part(a.variant.product_id)}-{a.id}.png": read_uri(a.uri, s3_client=ctx.s3)
            for a in [a for a in run_assets if a.uri][:SAMPLE_IMAGES]}


def product_rows(ctx: RunContext) -> tracking.ProductRows | None:
    """The product rows, for the run's MLflow dataset input; None, with a warning, when the
    source cannot be read now (validate_inputs read it; a source moved since must not cost
    the run its tracking)."""
    try:
        frame = ctx.products_frame()
    except Exception as exc:
        log.warning("MLflow: product data not logged as a dataset: %s", exc)
        return None
    p = ctx.spec.products
    return tracking.ProductRows(frame, ctx.loaded.product_source, f"{ctx.spec.id}.products",
                                table=p.table, query=p.query)


def asset_table(run_assets: list[Asset]) -> dict[str, list]:
    """Columns for mlflow.log_table (shown as a table in the MLflow UI)."""
    cols: dict[str, list] = {k: [] for k in ("asset_id", "version", "supersedes", "product_id",
                                             "asset_type", "seed", "status", "model", "model_version",
                                             "qa_failed", "uri", "prompt")}
    for a in run_assets:
        for k, v in (("asset_id", a.id), ("version", a.version), ("supersedes", a.supersedes_id or ""),
                     ("product_id", a.variant.product_id), ("asset_type", a.variant.asset_type),
                     ("seed", a.seed), ("status", str(a.status)), ("model", a.model_name),
                     ("model_version", a.model_version),
                     ("qa_failed", ",".join(q.check for q in a.qa_results if not q.passed)),
                     ("uri", a.uri or ""), ("prompt", a.variant.prompt)):
            cols[k].append(v)
    return cols
