"""`darkroom bench post`: CPU ms per image of each post-processing step at the example
campaign's sizes (1024x1024 originals; spring_tiles' 512 px WebP tile and 1000 px JPEG cut),
against the default recipe (the default QA checks + one JPEG derivative).

CPU time (``time.process_time``: every thread of this process, so ncnn's and onnxruntime's
threads count too), median over a few images after a warm-up that pays the model load.
Real-ESRGAN is measured once per target it is asked for (``esrgan_targets``): at 4096 it is
minutes of CPU, so by default only 2048 is run and 4096 is estimated from the measured rate
per input pixel (the model's cost is linear in it: ncnn runs fixed-size tiles), and the file
says which is which.
"""

from __future__ import annotations

import platform
import statistics
import time
from datetime import UTC, datetime

from PIL import Image, ImageDraw

from darkroom import cutout, imaging, postprocess, qa, upscaler
from darkroom.devtools.bench_qa import _bench_image
from darkroom.spec import Channel, QACheck, QARubric

SIZE = 1024


def _product_shot(seed: int) -> Image.Image:
    """The QA benchmark's textured picture with a product standing on it, so that the
    cutout's sanity bounds hold (a mask of nothing would stop the render)."""
    img = _bench_image(seed, SIZE)
    ImageDraw.Draw(img).rounded_rectangle([380, 260, 660, 900], radius=40, fill=(40, 70, 150))
    return img


def _cpu_ms(fn, *args, **kw) -> float:
    t = time.process_time()
    fn(*args, **kw)
    return (time.process_time() - t) * 1000


def _median(fn, inputs) -> float:
    fn(inputs[0])  # warm-up: the model loads, caches fill
    return round(statistics.median(fn(x) for x in inputs), 1)


def bench_post(*, images: int = 4, esrgan_targets: tuple[int, ...] = (2048,)) -> dict:
    prov = imaging.Provenance(
        imaging.infotext(prompt="bench", negative_prompt="", steps=1, sampler="DDIM", guidance=7.5,
                         seed=0, width=SIZE, height=SIZE, model_hash="0", model="bench"),
        {"asset_id": "bench"})
    pictures = [_product_shot(i) for i in range(images)]
    originals = [imaging.encode(p, "png", prov) for p in pictures]
    rubric = {k: v for k, v in QARubric().for_asset_type("bench").items() if k in qa.CHECKS}
    jpeg = {"marketplace": Channel(width=1000, height=1000, format="jpeg", quality=90, fit="pad")}
    web = {"web_tile": Channel(width=512, height=512, format="webp", quality=85)}

    unmarked = {n: c.model_copy(update={"watermark": False}) for n, c in jpeg.items()}

    def default_recipe(channels):
        return lambda data: _cpu_ms(qa.analyse, data, rubric, width=SIZE, height=SIZE,
                                    asset_id="bench") + _cpu_ms(postprocess.render_all, data, channels)

    def removal(channels):
        cut = {n: Channel.model_validate({**c.model_dump(), "crop": "product", "background": {
            "remove": True, "fill": "#ffffff", "shadow": "soft"}}) for n, c in channels.items()}
        return lambda data: _cpu_ms(postprocess.render_all, data, cut) - _cpu_ms(
            postprocess.render_all, data, channels)

    steps = {
        # The default recipe: checks + one JPEG, with the invisible watermark (on by default
        # since #14) and without it: the mark is most of the cost.
        "default_recipe_qa_checks_plus_jpeg_1000": _median(default_recipe(jpeg), originals),
        "default_recipe_without_watermark": _median(default_recipe(unmarked), originals),
        "no_text_check": _median(lambda d: _cpu_ms(qa.analyse, d, {"no_text": QACheck()},
                                                   width=SIZE, height=SIZE), originals),
        "u2net_mask": _median(lambda p: _cpu_ms(cutout.mask, p), pictures),
        "cutout_check": _median(lambda d: _cpu_ms(qa.analyse, d, {"cutout": QACheck()},
                                                  width=SIZE, height=SIZE), originals),
        "background_removal_added_to_jpeg_1000": _median(removal(jpeg), originals),
        "background_removal_added_to_webp_512": _median(removal(web), originals),
        "lanczos_upscale_to_2048": _median(lambda p: _cpu_ms(postprocess.lanczos_upscale, p, 2048), pictures),
        "lanczos_upscale_to_4096": _median(lambda p: _cpu_ms(postprocess.lanczos_upscale, p, 4096), pictures),
    }
    model = upscaler.load("realesrgan-x4plus", "cpu")
    esrgan = {}
    for target in esrgan_targets:
        passes, first = upscaler.plan(SIZE, target, model.factor)
        ms = _cpu_ms(model.upscale, pictures[0], target)
        esrgan[str(target)] = {"cpu_ms": round(ms, 1), "measured": True,
                               "model_input_px": first * first * passes,
                               "cpu_us_per_input_px": round(ms * 1000 / (first * first * passes), 2)}
    rate = statistics.mean(e["cpu_us_per_input_px"] for e in esrgan.values())
    for target in (2048, 4096):
        if str(target) not in esrgan:
            passes, first = upscaler.plan(SIZE, target, model.factor)
            px = first * first * passes
            esrgan[str(target)] = {"cpu_ms": round(rate * px / 1000, 1), "measured": False,
                                   "model_input_px": px, "estimated_from_us_per_input_px": round(rate, 2)}
    return {
        "stage": "post", "original": f"{SIZE}x{SIZE}", "images": images,
        "cpu_ms_per_image": steps,
        "realesrgan_x4plus_from_1024": {"model": model.name, "device": model.device,
                                        "tile_px": upscaler.ESRGAN_TILE, **esrgan},
        "cutout_model": cutout.model_file()[1],
        "machine": platform.machine(), "processor": platform.processor(),
        "at": datetime.now(UTC).isoformat(timespec="seconds"),
    }


def summary_lines(result: dict) -> list[str]:
    lines = [f"{name}: {ms} CPU ms per {result['original']} image"
             for name, ms in result["cpu_ms_per_image"].items()]
    for target, e in result["realesrgan_x4plus_from_1024"].items():
        if isinstance(e, dict):
            lines.append(f"Real-ESRGAN 1024 -> {target}: {e['cpu_ms'] / 1000:.1f} CPU s "
                         f"({'measured' if e['measured'] else 'estimated'})")
    return lines
