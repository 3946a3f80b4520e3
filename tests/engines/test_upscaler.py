"""Model upscaling (generation.upscaler): the tiny offline x4 upscaler pipeline loaded through
from_pretrained like a real one; its output's size, determinism and provenance name; the
postprocess stage upscaling with it end to end; the errors for an unusable upscaler.

Cost: the tiny model carries darkroom-upscaler.json (2 steps, no guidance), so 64 px -> 2048
px (Lanczos to 128, then two x4 passes, the second with the UNet at 512x512 and a tiled VAE
decode to 2048x2048) takes ~10 s on a CPU; everything else here is ~1 s.
"""

from __future__ import annotations

import json
import re

import numpy as np
import pytest
from darkroom import imaging, postprocess, upscaler
from darkroom.errors import ModelError
from darkroom.generation.models import local_model_digest
from darkroom.spec import Channel
from PIL import Image

from tests.support.images import good_image, provenance


@pytest.mark.parametrize(("side", "target", "expected"), [
    (512, 2048, (1, 512)),  # exactly x4: one pass, no resize
    (1024, 4096, (1, 1024)),
    (512, 4096, (1, 1024)),  # x8: Lanczos x2 first, the model makes the last x4
    (1024, 2048, (1, 512)),  # x2: Lanczos down first, so the UNet never works above target/4
    (64, 2048, (2, 128)),  # the tiny test model: 64 -> 128 -> 512 -> 2048
])
def test_passes_land_on_the_target(side, target, expected):
    assert upscaler.plan(side, target, 4) == expected


def test_model_upscale_size_determinism_and_name(tiny_upscaler):
    up = upscaler.load(str(tiny_upscaler))
    assert upscaler.load(str(tiny_upscaler)) is up  # loaded once per process
    assert up.name == f"diffusers:tiny-x4@{local_model_digest(tiny_upscaler)[:12]}"
    assert up.settings == {"steps": 2, "guidance": 1.0, "noise_level": 20}
    src = good_image(3, (96, 64))
    a, b = up(src, 256), up(src, 256)
    assert a.size == postprocess.long_side_size(src.size, 256) == (256, 171) and a.mode == "RGB"
    assert a.tobytes() == b.tobytes()  # seeded: same input, same pixels
    # The model ran: its (random-weight) output is nowhere near a Lanczos resize.
    lanczos = postprocess.lanczos_upscale(src, 256)
    assert np.abs(np.asarray(a, int) - np.asarray(lanczos, int)).mean() > 10
    # Alpha cannot go through the model: it is resized and put back.
    rgba = src.convert("RGBA")
    rgba.putalpha(Image.new("L", src.size, 128))
    out = up(rgba, 256)
    assert out.mode == "RGBA" and out.getchannel("A").getextrema() == (128, 128)
    assert out.convert("RGB").tobytes() == a.tobytes()


def test_an_unusable_upscaler_is_refused_naming_the_field(tiny_upscaler, tiny_model, tmp_path):
    missing = tmp_path / "nope"
    with pytest.raises(ModelError, match=re.escape(f"generation.upscaler = '{missing}': {missing} does not "
                                                   "exist") + ".*; fix: set generation.upscaler to "
                                                   "realesrgan-x4plus"):
        upscaler.resolve_upscaler(str(missing))
    with pytest.raises(ModelError, match="is a StableDiffusionPipeline, not an upscaler pipeline "
                                         r"\(supported: StableDiffusionUpscalePipeline\)"):
        upscaler.load(str(tiny_model))
    (tmp_path / "empty").mkdir()
    with pytest.raises(ModelError, match="has no model_index.json, so it is not a diffusers pipeline"):
        upscaler.resolve_upscaler(str(tmp_path / "empty"))
    # The postprocess task fails before rendering anything, naming the field.
    ch = Channel(width=300, height=200, upscale_to=2048)
    with pytest.raises(postprocess.RecipeError, match=re.escape(f"generation.upscaler = '{tiny_model}' is a "
                                                                "StableDiffusionPipeline")):
        postprocess.check_recipes({"web": ch}, model_upscaler=str(tiny_model))
    postprocess.check_recipes({"web": ch}, model_upscaler=str(tiny_upscaler))
    # Bad call settings in the folder are errors too, not silently ignored.
    bad = tmp_path / "bad-x4"
    bad.mkdir()
    for f in tiny_upscaler.rglob("*"):
        if f.is_file():
            (bad / f.relative_to(tiny_upscaler)).parent.mkdir(parents=True, exist_ok=True)
            (bad / f.relative_to(tiny_upscaler)).write_bytes(f.read_bytes())
    (bad / upscaler.SETTINGS_FILE).write_text(json.dumps({"steps": 0, "strength": 1}))
    with pytest.raises(ModelError, match=r"unknown key 'strength'; steps = 0 \(a whole number >= 1\)"):
        upscaler.load(str(bad))


def test_one_failed_upscale_fails_that_asset_only():
    data = imaging.encode(good_image(3, (64, 64)), "png", provenance(size=(64, 64)))
    ch = {"web": Channel(width=300, height=200, upscale_to=2048)}
    failed = postprocess.Upscaled("diffusers:x@1", 2048, error="OutOfMemoryError: CUDA out of memory")
    with pytest.raises(postprocess.RecipeError, match="model upscaler diffusers:x@1 failed on this "
                                                      "original .to 2048 px.: OutOfMemoryError"):
        postprocess.render_all(data, ch, upscaled=failed)
    # The model is prompted with the asset's own prompt, read back from the original.
    assert postprocess.prompts_from_infotext(provenance().parameters) == ("a mug", "blurry")
    # What the upscale stage asks the model for: the largest upscale_to above the original.
    assert postprocess.upscale_target(data, ch) == 2048
    assert postprocess.upscale_target(data, {**ch, "big": Channel(width=9, height=9, upscale_to=4096)}) == 4096
    assert postprocess.upscale_target(data, {"web": Channel(width=300, height=200)}) == 0
    assert postprocess.upscale_target(b"not an image", ch) == 0  # render_all names the problem
