"""Crafted test images: a good one (sharp, exposed, contrasty, unique per seed), an on-brand
one, and the provenance records our originals carry."""

from __future__ import annotations

import numpy as np
from darkroom import imaging
from PIL import Image, ImageDraw

W = H = 64


def good_image(seed: int = 0, size: tuple[int, int] = (W, H)) -> Image.Image:
    """A textured gradient with a few shapes: sharp, exposed, contrasty, unique per seed."""
    rng = np.random.default_rng(seed)
    w, h = size
    x, y = np.meshgrid(np.linspace(0, 1, w), np.linspace(0, 1, h))
    base = np.stack([170 + 60 * x, 110 + 70 * y, 80 + 60 * x * y], axis=-1)
    base += rng.normal(0, 6, base.shape)
    img = Image.fromarray(np.clip(base, 0, 255).astype("uint8"))
    d = ImageDraw.Draw(img)
    for _ in range(4):
        x0, y0 = rng.integers(0, w * 3 // 4), rng.integers(0, h * 3 // 4)
        x1, y1 = x0 + rng.integers(w // 8, w // 3), y0 + rng.integers(h // 8, h // 3)
        fill = tuple(int(c) for c in rng.integers(20, 235, 3))
        (d.ellipse if rng.random() < 0.5 else d.rectangle)([x0, y0, x1, y1], fill=fill)
    return img


def on_brand_image(size: tuple[int, int] = (W, H)) -> Image.Image:
    """Warm neutral backdrop and a terracotta product: the look of include/brand/references."""
    w, h = size
    img = Image.new("RGB", size, (222, 210, 194))
    d = ImageDraw.Draw(img)
    d.rounded_rectangle([w * 0.35, h * 0.27, w * 0.65, h * 0.78], radius=4, fill=(184, 92, 56))
    d.ellipse([w * 0.27, h * 0.74, w * 0.74, h * 0.84], fill=(155, 147, 136))
    return img


PROV_SEED = 1234


def provenance(asset_id: str = "asset-1", seed: int = PROV_SEED, size=(W, H)) -> imaging.Provenance:
    return imaging.Provenance(
        imaging.infotext(prompt="a mug", negative_prompt="blurry", steps=4, sampler="DDIM",
                         guidance=7.5, seed=seed, width=size[0], height=size[1], model_hash="abc",
                         model="tiny-sd"),
        {"asset_id": asset_id, "variant_id": "v1"})


def png(img: Image.Image, asset_id: str = "asset-1") -> bytes:
    return imaging.encode(img, "png", provenance(asset_id, size=img.size))
