"""The procedural renderer and the captions the demo model learns from."""

from __future__ import annotations

import dataclasses
import re

import numpy as np
import pytest
from darkroom.devtools.demo import captions, scenes
from darkroom.devtools.demo import catalogue as cat
from darkroom.devtools.demo.tokenizer import MAX_LENGTH, train_tokenizer

SPRING = ("studio product photograph of a terracotta stoneware coffee mug, drinkware, centred, three-quarter "
          "view, shallow depth of field, soft natural daylight, warm neutral backdrop, high detail")
SUMMER = ("overhead flat lay on a pastel table of a chilled can of Brisa Grapefruit, pink grapefruit flavour, "
          "condensation droplets, bright summer sunlight, vivid but natural colours")


def _scene(seed: int = 3, **kw) -> scenes.Scene:
    return scenes.sample_scene(np.random.default_rng(seed), **kw)


def test_same_scene_same_pixels_and_another_seed_other_pixels():
    s = _scene(product="coffee mug", colour="terracotta", scene="studio")
    a, b = scenes.render(s), scenes.render(s)
    assert a.shape == (64, 64, 3) and a.dtype == np.uint8
    assert a.tobytes() == b.tobytes()
    other = scenes.render(dataclasses.replace(s, seed=s.seed + 1))
    assert np.abs(a.astype(int) - other).mean() > 0.5  # grain and noise follow the seed
    assert np.abs(a.astype(int) - other).mean() < 10  # ...but it is the same picture


def test_sampling_is_seeded():
    a = [_scene(9) for _ in range(3)]
    assert a[0] == a[1] == a[2]
    assert _scene(9) != _scene(10)


def _product_colour(img: np.ndarray, mask: np.ndarray) -> np.ndarray:
    """Median colour of the pixels the product fully covers."""
    return np.median(img[mask > 0.99].astype(float), axis=0)


@pytest.mark.parametrize(("product", "colour", "scene"), [
    ("coffee mug", "terracotta", "studio"),
    ("tea bowl", "moss green", "studio"),
    ("bud vase", "rust", "studio"),
    ("side plate", "charcoal", "studio"),
    (cat.CAN, "green", "beach"),
    (cat.CAN, "pink", "flatlay"),
])
def test_the_product_shows_in_its_colour(product, colour, scene):
    """The middle of the picture is the product, shaded but still nearest its own colour
    among the catalogue's colours (the backdrop's colour is not)."""
    s = _scene(product=product, colour=colour, scene=scene)
    img, mask = scenes.render(s, with_mask=True)
    assert 0.03 < mask.mean() < 0.5  # a product, centred, fully in frame
    assert mask[:, :2].max() < 0.5 and mask[:, -2:].max() < 0.5
    mean = _product_colour(img, mask)
    names = list(cat.COLOURS)
    dist = [np.linalg.norm(mean - np.array(cat.COLOURS[c])) for c in names]
    ranked = [names[i] for i in np.argsort(dist)]
    assert colour in ranked[:3], (colour, ranked[:3], mean)
    backdrop = np.median(img[mask == 0].astype(float), axis=0)
    assert np.linalg.norm(mean - backdrop) > 25  # the product stands out of its setting


def test_glossy_porcelain_has_a_highlight_matte_terracotta_does_not():
    base = _scene(product="coffee mug", colour="ink blue", scene="studio")
    glossy, mask = scenes.render(dataclasses.replace(base, material="porcelain"), with_mask=True)
    matte, _ = scenes.render(dataclasses.replace(base, material="terracotta"), with_mask=True)
    on = mask > 0.99
    assert int(glossy[on].max()) > int(matte[on].max()) + 40


def test_every_product_in_every_setting_renders():
    for i, name in enumerate(cat.product_types()):
        for setting in cat.SCENES:
            img = scenes.render(_scene(i, product=name, scene=setting))
            assert img.std() > 10, (name, setting)


def test_captions_speak_the_campaigns_language():
    rng = np.random.default_rng(0)
    mug = _scene(product="coffee mug", colour="terracotta", scene="studio")
    texts = [captions.caption(mug, rng) for _ in range(300)]
    spoken = [t for t in texts if t and not set(t.split(", ")) <= set(cat.NEGATIVE_WORDS)]
    assert 0.08 < texts.count("") / len(texts) < 0.14  # the unconditional share, for guidance
    assert all("coffee mug" in t for t in spoken)
    assert np.mean(["terracotta" in t for t in spoken]) > 0.85
    assert any(t.startswith("studio product photograph of a terracotta stoneware coffee mug, drinkware") for t in spoken)
    assert any("warm neutral backdrop" in t for t in spoken)
    assert len(set(spoken)) > 100  # varied, not one sentence learnt by heart

    can = _scene(product=cat.CAN, scene="beach")
    flavour = next(f for f in cat.FLAVOURS if f.title == can.flavour)
    can_texts = [captions.caption(can, rng) for _ in range(200)]
    assert any(t.startswith(f"beach picnic scene of a chilled can of {flavour.title}, {flavour.flavour} flavour")
               for t in can_texts)
    assert all("mug" not in t for t in can_texts)


def test_the_tokenizer_keeps_campaign_prompts_whole(tmp_path):
    rng = np.random.default_rng(1)
    corpus = captions.corpus([scenes.sample_scene(rng) for _ in range(800)], rng)
    tok = train_tokenizer(corpus, tmp_path)
    for prompt in (SPRING, SUMMER):
        ids = tok(prompt).input_ids
        assert len(ids) < MAX_LENGTH // 2 + 5  # far from truncation
        words = re.findall(r"[a-z]+|[^\sa-z]", prompt.lower())
        assert len(ids) - 2 == len(words)  # one token per word
    # A word the captions never used still encodes (as bytes), and differently from another.
    assert tok("zebra").input_ids != tok("quokka").input_ids
    assert tok.unk_token_id not in tok("a zebra-striped Überkanne").input_ids[1:-1]  # unk is CLIP's end token
