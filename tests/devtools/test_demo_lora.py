"""The committed style LoRA moves the demo model's pictures toward its style, measurably."""

from __future__ import annotations

import numpy as np
from darkroom.config import Settings
from darkroom.devtools.demo import lora
from darkroom.generation.local import LocalDiffusersBackend
from darkroom.generation.resolve import resolve_model
from darkroom.generation.types import Request
from darkroom.prompt_match import PromptMatcher
from darkroom.spec import LoraAdapter

NEGATIVE = "text, watermark, logo, hands, people, blurry, low quality, oversaturated"


def _pictures(ref, prompts: list[str]) -> list[np.ndarray]:
    backend = LocalDiffusersBackend(ref, "cpu")
    reqs = [Request(f"v{i}", p, NEGATIVE, 300 + i, 64, 64, 12, 5.0, "ddim") for i, p in enumerate(prompts)]
    return [np.asarray(r.image) for r in backend.generate(reqs)]


def test_the_lora_moves_the_palette_toward_its_style():
    settings = Settings.from_env()
    base = resolve_model("demo", None, settings)
    lora_file = settings.demo_model_dir / "lora" / lora.NAME / lora.WEIGHT_NAME
    styled = base.with_spec_loras([LoraAdapter(path=str(lora_file), name=lora.NAME)])
    prompts = lora.catalogue_prompts()[::2]  # six of the spring campaign's own prompts
    refs = lora.references()
    without = lora.palette_distance(_pictures(base, prompts), refs)
    with_lora = lora.palette_distance(_pictures(styled, prompts), refs)
    # The same prompts and seeds: only the LoRA differs. Toward the style by a clear margin.
    assert with_lora < 0.7 * without, (without, with_lora)
    # ...and the base model's own pictures come back when it is off again (the cached pipeline).
    again = lora.palette_distance(_pictures(base, prompts), refs)
    assert abs(again - without) < 1e-6


def test_the_lora_keeps_the_product():
    settings = Settings.from_env()
    base = resolve_model("demo", None, settings)
    lora_file = settings.demo_model_dir / "lora" / lora.NAME / lora.WEIGHT_NAME
    styled = base.with_spec_loras([LoraAdapter(path=str(lora_file), name=lora.NAME)])
    prompts = lora.catalogue_prompts()[::2]
    matcher = PromptMatcher(settings.demo_model_dir / "classifier")
    base_types = sum(m.read["type"][0] == m.asked["type"] for m in matcher.match_many(prompts, _pictures(base, prompts)))
    lora_types = sum(m.read["type"][0] == m.asked["type"] for m in matcher.match_many(prompts, _pictures(styled, prompts)))
    assert lora_types >= base_types - 1, (base_types, lora_types)
