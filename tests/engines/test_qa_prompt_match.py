"""QA's prompt_match check with the committed demo classifier: a picture of what the prompt
names passes, a picture of something else and noise fail, and without weights it does not run."""

from __future__ import annotations

import numpy as np
import pytest
from darkroom import qa
from darkroom.config import Settings
from darkroom.devtools.demo import scenes
from darkroom.spec import QACheck
from PIL import Image

MUG = ("studio product photograph of a terracotta stoneware coffee mug, drinkware, centred, three-quarter "
       "view, shallow depth of field, soft natural daylight, warm neutral backdrop, high detail")


@pytest.fixture(scope="module")
def check() -> QACheck:
    folder = Settings.from_env().demo_model_dir / "classifier"
    return QACheck(threshold=0.2, review_band=0.05, params={"model_path": str(folder)})


def _run(img: Image.Image, prompt: str, cfg: QACheck) -> qa.CheckResult:
    data = qa.image_bytes(img)
    res = qa.analyse(data, {"prompt_match": cfg}, width=img.width, height=img.height, prompt=prompt)
    (result,) = res.results
    return result


def _render(product: str, colour: str, seed: int) -> Image.Image:
    rng = np.random.default_rng(seed)
    return scenes.render_image(scenes.sample_scene(rng, scene="studio", product=product, colour=colour, seed=seed))


def test_the_asked_product_in_the_asked_colour_passes(check):
    passed = [_run(_render("coffee mug", "terracotta", s), MUG, check) for s in range(4)]
    assert all(r.status == qa.PASS and r.value > 0.2 for r in passed), passed


@pytest.mark.parametrize(("product", "colour"), [("dinner plate", "terracotta"), ("coffee mug", "sky blue"),
                                                 ("bud vase", "ink blue")])
def test_another_product_or_colour_fails_and_says_what_it_shows(check, product, colour):
    result = _run(_render(product, colour, 11), MUG, check)
    assert result.status == qa.FAIL and result.value < 0.2, result
    assert "reads as" in result.detail


def test_noise_fails(check):
    noise = Image.fromarray(np.random.default_rng(0).integers(0, 256, (64, 64, 3), dtype=np.uint8))
    result = _run(noise, MUG, check)
    assert result.status == qa.FAIL, result


def test_a_prompt_naming_nothing_it_knows_passes_unmeasured(check):
    result = _run(_render("coffee mug", "terracotta", 1), "a photograph of a bicycle in the rain", check)
    assert result.passed and result.value is None
    assert "names no product type or colour" in result.detail


def test_without_weights_it_does_not_run():
    result = _run(_render("coffee mug", "terracotta", 1), MUG, QACheck())
    assert result.status == qa.NOT_RUN and "model_path" in result.detail
    assert qa.outcome([result], {"prompt_match": QACheck()})[0] == "needs_review"
