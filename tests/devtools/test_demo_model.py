"""The committed demo model, through the code every campaign uses: resolve_model + the local
diffusers backend. A test about pictures, so it uses the demo model, not the tiny one."""

from __future__ import annotations

import shutil

import numpy as np
import pytest
from darkroom.config import Settings
from darkroom.devtools.demo.generator import RECOMMENDED
from darkroom.errors import ModelError
from darkroom.generation.local import LocalDiffusersBackend
from darkroom.generation.resolve import resolve_model
from darkroom.generation.types import Request
from darkroom.prompt_match import PromptMatcher

SPRING_NEGATIVE = "text, watermark, logo, hands, people, blurry, low quality, oversaturated"
SUMMER_NEGATIVE = "text, people's faces, logos of other brands, dark, gloomy"
MUG = ("studio product photograph of a terracotta stoneware coffee mug, drinkware, centred, three-quarter "
       "view, shallow depth of field, soft natural daylight, warm neutral backdrop, high detail")
LIME = ("beach picnic scene of a chilled can of Brisa Lime, lime and mint flavour, condensation droplets, "
        "bright summer sunlight, vivid but natural colours")
VASE = ("studio product photograph of a rust earthenware bud vase, decor, centred, three-quarter view, "
        "shallow depth of field, soft natural daylight, warm neutral backdrop, high detail")
PLATE = ("studio product photograph of a chalk white stoneware dinner plate, tableware, centred, three-quarter "
         "view, shallow depth of field, soft natural daylight, warm neutral backdrop, high detail")


@pytest.fixture(scope="module")
def backend() -> LocalDiffusersBackend:
    ref = resolve_model("demo", None, Settings.from_env())
    assert ref.name == "darkroom-demo" and ref.is_local
    return LocalDiffusersBackend(ref, "cpu")


@pytest.fixture(scope="module")
def matcher() -> PromptMatcher:
    return PromptMatcher(Settings.from_env().demo_model_dir / "classifier")


def _requests(scheduler: str, steps: int, guidance: float, seeds=(11, 12, 13), vase: bool = False) -> list[Request]:
    cases = [(MUG, SPRING_NEGATIVE), (LIME, SUMMER_NEGATIVE)] + ([(VASE, SPRING_NEGATIVE)] if vase else [])
    return [Request(f"{i}-{seed}", p, n, seed, 64, 64, steps, guidance, scheduler)
            for i, (p, n) in enumerate(cases) for seed in seeds]


def test_a_mug_a_lime_can_and_a_rust_vase_read_back_as_asked(backend, matcher):
    # demo_tiles' settings (make demo's): ddim, 20 steps, guidance 2.5.
    reqs = _requests(RECOMMENDED["scheduler"], RECOMMENDED["steps"], 2.5, vase=True)
    results = backend.generate(reqs)
    images = [r.image for r in results]
    pixels = np.stack([np.asarray(im, np.float32) for im in images])
    assert images[0].size == (64, 64)
    assert not np.isnan(pixels).any()
    assert pixels.std() > 25  # pictures, not grey mush
    matches = matcher.match_many([r.prompt for r in reqs], images)
    mugs, cans, vases = matches[:3], matches[3:6], matches[6:]
    # Most seeds read back as asked; a single miss is allowed (the card and docs/benchmarks.md
    # give the rates). The mug's shape, not its colour: this model often draws terracotta as
    # its neighbour ochre (the card's known limits), and QA's prompt_match fails those.
    assert sum(m.read["type"][0] == "coffee mug" for m in mugs) >= 2, [m.read for m in mugs]
    assert sum(m.matched for m in cans) >= 2, [m.read for m in cans]
    assert sum(m.matched for m in vases) >= 2, [m.read for m in vases]
    # The can is green: its pixels' hue, measured directly, not only through the classifier.
    can = pixels[3:, 16:56, 20:44].reshape(-1, 3)
    assert (can[:, 1] > can[:, 0] + 20).mean() > 0.15


def test_the_prompt_decides_the_picture(backend):
    """Same seed, other prompt: another product (a model that ignored its text would not)."""
    mug, plate = backend.generate([Request("a", MUG, SPRING_NEGATIVE, 5, 64, 64, 12, 5.0, "ddim"),
                                   Request("b", PLATE, SPRING_NEGATIVE, 5, 64, 64, 12, 5.0, "ddim")])
    a, b = (np.asarray(r.image, np.float32) for r in (mug, plate))
    assert np.abs(a - b).mean() > 12


@pytest.mark.parametrize("scheduler", ["ddim", "euler", "euler_a", "dpmpp_2m", "pndm", "lms"])
def test_every_campaign_scheduler_draws_pictures(backend, matcher, scheduler):
    """The campaigns name their scheduler; each must step this v-prediction model sanely."""
    results = backend.generate(_requests(scheduler, 10, 5.0, seeds=(21,)))
    pixels = np.stack([np.asarray(r.image, np.float32) for r in results])
    assert not np.isnan(pixels).any() and pixels.std() > 25, scheduler
    assert 40 < pixels.mean() < 230, scheduler
    matches = matcher.match_many([MUG, LIME], [r.image for r in results])
    assert sum(m.read["type"][0] == m.asked["type"] for m in matches) >= 1, (scheduler, [m.read for m in matches])


def test_demo_model_folder_comes_from_the_environment(monkeypatch, tmp_path):
    committed = Settings.from_env().demo_model_dir
    copy = tmp_path / "my-demo"
    shutil.copytree(committed, copy, ignore=shutil.ignore_patterns("classifier", "lora", "*.png"))
    monkeypatch.setenv("DARKROOM_DEMO_MODEL", str(copy))
    ref = resolve_model("demo", None, Settings.from_env())
    assert ref.location == str(copy.resolve())
    monkeypatch.setenv("DARKROOM_DEMO_MODEL", str(tmp_path / "nowhere"))
    with pytest.raises(ModelError, match="train-demo"):
        resolve_model("demo", None, Settings.from_env())
