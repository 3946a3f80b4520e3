"""The demo model: a small text-to-image model Darkroom trains itself, offline.

No registry ships text-to-image or CLIP weights, so the demo, QA and review would only ever
see noise. This package draws product photographs procedurally (``scenes``, ``captions``),
trains a Stable Diffusion pipeline on them (``generator``, ``tokenizer``, ``recipe``), a
classifier that reads product type and colour back (``classifier``; its runtime, which QA
uses, is :mod:`darkroom.prompt_match`), a style
LoRA (``lora``), and measures the result against the random tiny model (``bench``).
"""
