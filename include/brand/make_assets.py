"""Rebuild the shipped brand assets (deterministic): logo.png and references/studio_*.png.

Run: .venv/bin/python include/brand/make_assets.py
"""

from pathlib import Path

import numpy as np
from PIL import Image, ImageDraw, ImageFont

ROOT = Path(__file__).resolve().parent


def logo() -> None:
    """A terracotta badge with the word mark, transparent around it."""
    img = Image.new("RGBA", (256, 96), (0, 0, 0, 0))
    d = ImageDraw.Draw(img)
    d.rounded_rectangle([0, 0, 255, 95], radius=24, fill=(184, 92, 56, 255))
    font = ImageFont.truetype(str(ROOT / "fonts" / "DejaVuSans.ttf"), 40)
    d.text((128, 48), "darkroom", font=font, fill="white", anchor="mm")
    img.save(ROOT / "logo.png", optimize=True)


def references(out: Path = ROOT / "references") -> list[Path]:
    """The brand's look, rendered: the spring catalogue's products in their own colours on
    the warm neutral studio backdrop, in soft daylight (darkroom.devtools.demo.scenes, the
    renderer the demo model learnt from). The brand checks compare pictures with these, so an
    on-brand picture of the demo model passes brand_palette and a beach picnic fails it."""
    from darkroom.devtools.demo import catalogue, scenes

    rng = np.random.default_rng(11)
    products = [p for p in catalogue.PRODUCTS if p.in_catalogue][:6]
    out.mkdir(parents=True, exist_ok=True)
    for stale in out.glob("studio_*.png"):
        stale.unlink()
    written = []
    for i, product in enumerate(products, start=1):
        scene = scenes.sample_scene(rng, scene="studio", product=product.name, colour=product.colour,
                                    backdrop="warm neutral")
        path = out / f"studio_{i}.png"
        Image.fromarray(scenes.render(scene, size=128)).save(path, optimize=True)
        written.append(path)
    return written


if __name__ == "__main__":
    logo()
    references()
