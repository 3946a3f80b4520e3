"""The brand's reference pictures are renders of its look (issue #19, item 6): the brand_palette
check, at its default threshold, passes the demo model's pictures of the spring campaign
(studio, warm neutral backdrop) and fails its pictures of another campaign's look (a beach
picnic), and the committed references are what include/brand/make_assets.py draws."""

from __future__ import annotations

import importlib.util
import io

import numpy as np
from darkroom import qa
from darkroom.config import BRAND_DIR, Settings
from darkroom.devtools.demo import catalogue, lora
from darkroom.generation.local import LocalDiffusersBackend
from darkroom.generation.resolve import resolve_model
from darkroom.generation.types import Request
from darkroom.spec import QACheck
from PIL import Image

NEGATIVE = "text, watermark, logo, hands, people, blurry, low quality, oversaturated"
BEACH = [f"{catalogue.SUMMER_SCENES['beach']} of a chilled can of Brisa {flavour}, {catalogue.SUMMER_BRAND}"
         for flavour in ("lemon", "cherry", "lime", "orange")]


def _make_assets():
    spec = importlib.util.spec_from_file_location("make_assets", BRAND_DIR / "make_assets.py")
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module


def test_the_references_are_the_renders_make_assets_draws(tmp_path):
    drawn = _make_assets().references(tmp_path)
    committed = sorted((BRAND_DIR / "references").glob("*.png"))
    assert [p.name for p in drawn] == [p.name for p in committed]
    for new, old in zip(drawn, committed, strict=True):
        assert np.array_equal(np.asarray(Image.open(new)), np.asarray(Image.open(old))), old.name


def _palette_checks(prompts: list[str], seed: int) -> list[qa.CheckResult]:
    backend = LocalDiffusersBackend(resolve_model("demo", None, Settings.from_env()), "cpu")
    reqs = [Request(f"v{i}", p, NEGATIVE, seed + i, 64, 64, 20, 5.0, "ddim") for i, p in enumerate(prompts)]
    checks = []
    for i, result in enumerate(backend.generate(reqs)):
        buf = io.BytesIO()
        result.image.save(buf, format="PNG")
        analysis = qa.analyse(buf.getvalue(), {"brand_palette": QACheck()}, width=64, height=64,
                              asset_id=f"a{i}", seed=seed + i)
        checks.append(next(r for r in analysis.results if r.check == "brand_palette"))
    return checks


def test_brand_palette_passes_on_brand_demo_pictures_and_fails_off_brand_ones():
    on_brand = _palette_checks(lora.catalogue_prompts()[::2], 100)
    off_brand = _palette_checks(BEACH, 200)
    assert all(c.passed for c in on_brand), [c.detail for c in on_brand]
    assert not any(c.passed for c in off_brand), [c.detail for c in off_brand]
    assert {c.threshold for c in on_brand + off_brand} == {qa.BRAND_PALETTE_THRESHOLD}
    # Apart by a margin, not by luck: the worst on-brand picture is well inside the best off-brand.
    assert max(c.value for c in on_brand) + 10 < min(c.value for c in off_brand), \
        ([c.value for c in on_brand], [c.value for c in off_brand])
