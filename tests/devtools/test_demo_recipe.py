"""`darkroom models train-demo` reruns the recipe end to end (here at smoke-test size)."""

from __future__ import annotations

import json

import numpy as np
from darkroom.prompt_match import PromptMatcher
from darkroom_cli.app import app
from typer.testing import CliRunner


def test_train_demo_writes_a_loadable_pipeline(tmp_path):
    out = tmp_path / "demo"
    result = CliRunner().invoke(app, ["models", "train-demo", "--steps", "6", "--seed", "3", "--out", str(out)])
    assert result.exit_code == 0, result.output
    assert "Trained the demo model" in result.output
    for name in ("model_index.json", "README.md", "loss.png", "samples.png", "training.json",
                 "classifier/model.safetensors", "classifier/labels.json",
                 "lora/mint_backdrop/pytorch_lora_weights.safetensors"):
        assert (out / name).is_file(), name
    assert not list(tmp_path.glob(".demo.partial"))  # written aside, then moved in place

    import torch
    from diffusers import AutoPipelineForText2Image, StableDiffusionPipeline

    pipe = AutoPipelineForText2Image.from_pretrained(str(out), dtype=torch.float32)
    assert isinstance(pipe, StableDiffusionPipeline)
    assert pipe.unet.dtype == torch.float32  # stored as float16, loaded as float32
    image = pipe("a terracotta coffee mug", num_inference_steps=2, height=64, width=64,
                 generator=torch.Generator().manual_seed(0), output_type="np").images[0]
    assert image.shape == (64, 64, 3) and not np.isnan(image).any()

    summary = json.loads((out / "training.json").read_text())
    assert summary["recipe"]["steps"] == 6 and summary["recipe"]["seed"] == 3
    assert set(summary["phases"]) >= {"render", "autoencoder", "generator", "classifier", "lora"}
    card = (out / "README.md").read_text()
    assert "Nothing was downloaded" in card and "--steps 6 --seed 3" in card
    matcher = PromptMatcher(out / "classifier")
    assert matcher.read([image])[0]["type"][0] in matcher.labels["type"]
