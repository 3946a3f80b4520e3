"""Loss curves and labelled sample grids as PNGs, drawn with Pillow (no plotting library)."""

from __future__ import annotations

import math

import numpy as np
from PIL import Image, ImageDraw

from darkroom.devtools.demo.generator import Curve

_INK, _GRID, _LINE = (40, 40, 40), (225, 225, 225), (200, 80, 40)


def _smooth(values: list[float], window: int) -> list[float]:
    if len(values) < 3:
        return values
    window = max(1, min(window, len(values) // 3))
    kernel = np.ones(window) / window
    padded = np.concatenate([np.full(window - 1, values[0]), values])
    return list(np.convolve(padded, kernel, mode="valid"))


def loss_chart(curves: list[Curve], width: int = 380, height: int = 230) -> Image.Image:
    """One panel per curve, side by side: raw loss (light) and a running mean, log scale."""
    sheet = Image.new("RGB", (width * len(curves), height), "white")
    for k, curve in enumerate(curves):
        panel = Image.new("RGB", (width, height), "white")
        d = ImageDraw.Draw(panel)
        left, top, right, bottom = 48, 24, width - 12, height - 30
        steps = [s for s, _ in curve.points] or [0]
        values = [max(v, 1e-6) for _, v in curve.points] or [1.0]
        lo, hi = math.log10(min(values)), math.log10(max(values))
        if hi - lo < 1e-3:
            lo, hi = lo - 0.5, hi + 0.5

        xs = left + (right - left) * (np.array(steps) - steps[0]) / max(1, steps[-1] - steps[0])

        def line(vals: list[float]) -> list[tuple[float, float]]:
            ys = bottom - (bottom - top) * (np.log10(np.maximum(vals, 1e-6)) - lo) / (hi - lo)  # noqa: B023
            return list(zip(xs.tolist(), ys.tolist(), strict=True))  # noqa: B023

        for frac in (0, 0.25, 0.5, 0.75, 1):
            y = bottom - (bottom - top) * frac
            d.line([(left, y), (right, y)], fill=_GRID)
            d.text((4, y - 6), f"{10 ** (lo + frac * (hi - lo)):.3g}", fill=_INK)
        d.line([(left, top), (left, bottom), (right, bottom)], fill=_INK)
        if len(values) > 1:
            d.line(line(values), fill=(240, 200, 185))
            d.line(line(_smooth(values, 50)), fill=_LINE, width=2)
        d.text((left, 6), f"{curve.name}: final {curve.final():.4g}", fill=_INK)
        d.text((left, bottom + 8), f"step 0 .. {steps[-1]}", fill=_INK)
        sheet.paste(panel, (k * width, 0))
    return sheet


def labelled_grid(images: list[np.ndarray], labels: list[str], columns: int, scale: int = 2) -> Image.Image:
    """Pictures in a grid, each enlarged ``scale`` times with its label underneath."""
    h, w = images[0].shape[:2]
    tile_w, tile_h = w * scale, h * scale + 24
    rows = -(-len(images) // columns)
    sheet = Image.new("RGB", (columns * (tile_w + 4) + 4, rows * (tile_h + 4) + 4), "white")
    d = ImageDraw.Draw(sheet)
    for i, (arr, label) in enumerate(zip(images, labels, strict=True)):
        x, y = 4 + (i % columns) * (tile_w + 4), 4 + (i // columns) * (tile_h + 4)
        sheet.paste(Image.fromarray(arr).resize((tile_w, h * scale), Image.Resampling.NEAREST), (x, y))
        words, lines = label.split(), [""]
        for word in words:  # wrap at the tile's width (the default font is ~6 px a character)
            if len(lines[-1]) + len(word) + 1 > tile_w // 6:
                lines.append(word)
            else:
                lines[-1] = f"{lines[-1]} {word}".strip()
        d.multiline_text((x + 1, y + h * scale + 1), "\n".join(lines[:2]), fill=_INK, spacing=1)
    return sheet
