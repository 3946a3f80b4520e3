"""Captions for the renders, in the example campaigns' own prompt language.

``include/campaigns/spring_tiles.yaml`` renders "studio product photograph of a terracotta
stoneware coffee mug, drinkware, centred, three-quarter view, shallow depth of field, soft
natural daylight, warm neutral backdrop, high detail"; ``summer_social.yaml`` renders "beach
picnic scene of a chilled can of Brisa Lime, lime and mint flavour, condensation droplets,
bright summer sunlight, vivid but natural colours". Each render's caption is that wording for
its scene, varied: phrases reordered or dropped, synonyms, filler words that say nothing
about the picture (so the model learns to ignore words it cannot draw), and now and then the
caption of no picture at all (the unconditional prompt classifier-free guidance needs).
"""

from __future__ import annotations

import numpy as np

from darkroom.devtools.demo import catalogue as cat
from darkroom.devtools.demo.scenes import Scene

STYLES = ("studio product photograph", "product photograph", "studio photo", "product shot",
          "catalogue photograph", "photograph")
FILLERS = ("sharp focus", "professional lighting", "minimal", "e-commerce", "catalogue image",
           "clean composition", "8k", "award winning", "elegant", "simple", "spring refresh",
           "summer launch", "new collection", "bestseller", "lifestyle", "for social", "web shop",
           "hero tile", "marketplace listing", "handmade", "terra ceramics", "premium")
NEGATIVE_SHARE = 0.04  # captions made of negative-prompt words: "nothing in particular"
EMPTY_SHARE = 0.1  # empty captions: the unconditional prompt


def _pick(rng: np.random.Generator, options):
    return options[int(rng.integers(len(options)))]


def _maybe(rng: np.random.Generator, p: float) -> bool:
    return bool(rng.random() < p)


def _subject(scene: Scene, rng: np.random.Generator) -> list[str]:
    """The product phrase(s): the spring template's "a {colour} {material} {name}, {category}",
    or the summer template's "a chilled can of {title}, {flavour} flavour"."""
    if scene.product == cat.CAN:
        flavour = next((f for f in cat.FLAVOURS if f.title == scene.flavour), None)
        colour = f"{scene.colour} " if flavour is None or _maybe(rng, 0.2) else ""
        lead = _pick(rng, ("a chilled can", "a chilled can", "a can", "a cold can", "a drink can"))
        if flavour is None:
            return [f"{lead.replace('can', colour + 'can', 1)}" + _pick(rng, ("", " of Brisa", " of soda"))]
        lead = lead.replace("can", colour + "can", 1)
        pieces = [f"{lead} of {flavour.title}" if _maybe(rng, 0.85) else f"{lead} of Brisa"]
        if _maybe(rng, 0.85) or pieces[0].endswith("Brisa"):
            pieces.append(f"{flavour.flavour} flavour")
        if scene.droplets and _maybe(rng, 0.9):
            pieces.append("condensation droplets")
        return pieces
    p = cat.product(scene.product)
    words = []
    if _maybe(rng, 0.93):
        words.append(scene.colour)
    if _maybe(rng, 0.85):
        words.append(_pick(rng, cat.MATERIAL_WORDS[scene.material]) if _maybe(rng, 0.3) else scene.material)
    words.append(p.name)
    pieces = ["a " + " ".join(words)]
    if _maybe(rng, 0.75):
        pieces.append(p.category)
    return pieces


def _setting(scene: Scene, rng: np.random.Generator) -> tuple[str | None, list[str]]:
    """(lead phrase, trailing phrases): the style or asset-type description that starts the
    prompt, and the composition, light and backdrop phrases after the subject."""
    if scene.scene == "studio":
        lead = cat.SPRING_STYLE if _maybe(rng, 0.6) else _pick(rng, STYLES)
        comp = [c for c in cat.SPRING_COMPOSITION.split(", ") if _maybe(rng, 0.8)]
        tail = comp
        if _maybe(rng, 0.75):
            tail.append("soft natural daylight")
        if _maybe(rng, 0.85):
            tail.append(f"{scene.backdrop} backdrop")
        return lead, tail
    lead = cat.SUMMER_SCENES[scene.scene]
    if scene.scene == "flatlay" and _maybe(rng, 0.3):
        lead = f"overhead flat lay on a pastel {scene.backdrop} table"
    elif scene.scene == "beach" and _maybe(rng, 0.2):
        lead = _pick(rng, ("beach picnic", "picnic on the beach", "summer beach scene"))
    tail = []
    if _maybe(rng, 0.8):
        tail.append("bright summer sunlight")
    if _maybe(rng, 0.7):
        tail.append("vivid but natural colours")
    return lead, tail


def caption(scene: Scene, rng: np.random.Generator) -> str:
    """One caption for ``scene``; ``rng`` decides the variation (call again for another)."""
    roll = rng.random()
    if roll < EMPTY_SHARE:
        return ""
    if roll < EMPTY_SHARE + NEGATIVE_SHARE:
        k = int(rng.integers(2, 7))
        return ", ".join(rng.permutation(cat.NEGATIVE_WORDS)[:k])
    subject = _subject(scene, rng)
    lead, tail = _setting(scene, rng)
    if scene.scene == "studio" and _maybe(rng, 0.5):
        tail.append("high detail")
    for _ in range(int(rng.integers(0, 3)) if _maybe(rng, 0.35) else 0):
        tail.insert(int(rng.integers(len(tail) + 1)), _pick(rng, FILLERS))
    if _maybe(rng, 0.65):  # the templates' own order
        head = f"{lead} of {subject[0]}" if lead else subject[0]
        return ", ".join([head, *subject[1:], *tail])
    pieces = [*subject, *tail] + ([lead] if lead and _maybe(rng, 0.85) else [])
    return ", ".join(pieces[int(i)] for i in rng.permutation(len(pieces)))


def corpus(scenes: list[Scene], rng: np.random.Generator, per_scene: int = 3) -> list[str]:
    """Captions for a tokenizer to learn from: several per scene, plus the negative words."""
    out = [caption(s, rng) for s in scenes for _ in range(per_scene)]
    return out + [", ".join(cat.NEGATIVE_WORDS)] * 20
