"""Rebuild the shipped brand assets (deterministic): logo.png and references/studio_*.png.

Run: .venv/bin/python include/brand/make_assets.py
"""

from pathlib import Path

import numpy as np
from PIL import Image, ImageDraw, ImageFilter, ImageFont

ROOT = Path(__file__).resolve().parent


def logo() -> None:
    """A terracotta badge with the word mark, transparent around it."""
    img = Image.new("RGBA", (256, 96), (0, 0, 0, 0))
    d = ImageDraw.Draw(img)
    d.rounded_rectangle([0, 0, 255, 95], radius=24, fill=(184, 92, 56, 255))
    font = ImageFont.truetype(str(ROOT / "fonts" / "DejaVuSans.ttf"), 40)
    d.text((128, 48), "darkroom", font=font, fill="white", anchor="mm")
    img.save(ROOT / "logo.png", optimize=True)


def references() -> None:
    """Warm neutral studio backdrop, a ceramic product shape, a soft shadow."""
    rng = np.random.default_rng(7)
    looks = [((226, 214, 198), (184, 92, 56)), ((214, 206, 190), (92, 120, 110))]
    for i, (bg, prod) in enumerate(looks):
        w = h = 256
        y = np.linspace(0, 1, h)[:, None, None]
        base = np.array(bg, dtype=np.float32) * (1.05 - 0.15 * y) * np.ones((h, w, 1))
        img = Image.fromarray(np.clip(base, 0, 255).astype("uint8"))
        d = ImageDraw.Draw(img)
        d.ellipse([70, 190, 190, 215], fill=tuple(int(c * 0.7) for c in bg))
        if i == 0:
            d.rounded_rectangle([88, 70, 168, 200], radius=18, fill=prod)
            d.ellipse([150, 100, 195, 150], outline=prod, width=10)
        else:
            d.polygon([(128, 50), (180, 200), (76, 200)], fill=prod)
        img = img.filter(ImageFilter.GaussianBlur(0.8))
        arr = np.asarray(img).astype(np.float32) + rng.normal(0, 3, (h, w, 3))
        out = Image.fromarray(np.clip(arr, 0, 255).astype("uint8"))
        out = out.resize((128, 128), Image.Resampling.LANCZOS)
        out.save(ROOT / "references" / f"studio_{i + 1}.png", optimize=True)


if __name__ == "__main__":
    logo()
    references()
