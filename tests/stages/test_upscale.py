"""Model upscaling in the stages: the model's output reaches the derivatives, recorded in
their provenance."""

from __future__ import annotations

import io
from pathlib import Path

from darkroom import imaging, postprocess, upscaler
from darkroom.stages.sequence import run_to_review
from PIL import Image


def test_postprocess_stage_upscales_with_the_model(tiny_upscaler, use_tiny_model, tmp_path):
    from darkroom.catalog.tables import Asset, Derivative
    from darkroom.config import Settings
    from sqlalchemy import select

    from tests.support.campaigns import small_spec as _spec
    from tests.support.campaigns import stage_ctx as _ctx

    def mutate(d):
        d["generation"]["upscaler"] = str(tiny_upscaler)
        d["channels"]["web_tile"]["upscale_to"] = 2048

    ctx = _ctx(_spec(tmp_path, mutate), Settings.from_env(), {"limit": 1})
    run_to_review(ctx)
    with ctx.catalog.session() as s:
        asset = s.scalars(select(Asset)).one()
        rows = {d.channel: d for d in s.scalars(select(Derivative))}
    assert set(rows) == {"web_tile", "marketplace"}
    read = lambda uri: Path(uri.removeprefix("file://")).read_bytes()  # noqa: E731
    web = read(rows["web_tile"].uri)
    name = upscaler.load(str(tiny_upscaler)).name
    assert imaging.read_provenance(web).darkroom["upscaled"] == {"by": name, "to": 2048}
    assert Image.open(io.BytesIO(web)).size == (512, 512)
    assert "upscaled" not in imaging.read_provenance(read(rows["marketplace"].uri)).darkroom
    # Not the Lanczos path's pixels: the model's output reached the derivative.
    (lanczos,) = postprocess.render_all(read(asset.uri), {"web_tile": ctx.spec.channels["web_tile"]})
    assert imaging.read_provenance(lanczos.data).darkroom["upscaled"]["by"] == "lanczos"
    assert lanczos.data != web
