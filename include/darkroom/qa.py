"""Automated QA checks. A failed check is data (a qa_result row), never a task failure.

Each check takes the decoded image, the asset's expectations and a threshold, and returns
the measured value and whether it passed. Thresholds come from the spec's QA rubric.
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass

import numpy as np
from PIL import Image


@dataclass(frozen=True)
class CheckResult:
    check: str
    value: float | None
    threshold: float | None
    passed: bool
    detail: str = ""


def _gray(img: Image.Image) -> np.ndarray:
    return np.asarray(img.convert("L"), dtype=np.float32)


def check_dimensions(img: Image.Image, expected: dict, threshold: float | None) -> CheckResult:
    want = (expected["width"], expected["height"])
    ok = img.size == want
    return CheckResult("dimensions", float(img.width * img.height), None, ok,
                       "" if ok else f"got {img.width}x{img.height}, expected {want[0]}x{want[1]}")


def check_not_blank(img: Image.Image, expected: dict, threshold: float | None) -> CheckResult:
    """Standard deviation of luminance: near zero means a blank or single-colour image."""
    t = 4.0 if threshold is None else threshold
    std = float(_gray(img).std())
    return CheckResult("not_blank", round(std, 3), t, std >= t,
                       "" if std >= t else f"luminance std {std:.2f} < {t}: blank or flat image")


def check_sharpness(img: Image.Image, expected: dict, threshold: float | None) -> CheckResult:
    """Variance of the Laplacian: low means blurry."""
    t = 20.0 if threshold is None else threshold
    g = _gray(img)
    lap = (-4 * g[1:-1, 1:-1] + g[:-2, 1:-1] + g[2:, 1:-1] + g[1:-1, :-2] + g[1:-1, 2:])
    var = float(lap.var()) if lap.size else 0.0
    return CheckResult("sharpness", round(var, 3), t, var >= t,
                       "" if var >= t else f"Laplacian variance {var:.1f} < {t}: blurry")


CHECKS: dict[str, Callable[[Image.Image, dict, float | None], CheckResult]] = {
    "dimensions": check_dimensions,
    "not_blank": check_not_blank,
    "sharpness": check_sharpness,
}


def run_checks(img: Image.Image, expected: dict, rubric: dict) -> list[CheckResult]:
    """Run the enabled checks of a rubric ({name: QACheck})."""
    return [CHECKS[name](img, expected, cfg.threshold) for name, cfg in rubric.items() if cfg.enabled]


def perceptual_hash(img: Image.Image) -> str:
    import imagehash

    return str(imagehash.phash(img))
