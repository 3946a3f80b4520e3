"""The local backend's speed and memory switches on the tiny pipeline: each is applied once
at load, changes nothing it should not, and is part of the pipeline cache key."""

from __future__ import annotations

import numpy as np
import pytest
import torch
from darkroom.config import Settings
from darkroom.generation.local import LocalDiffusersBackend, pick_device
from darkroom.generation.models import PipelineOptions
from darkroom.generation.resolve import resolve_model
from darkroom.generation.types import Request
from darkroom.spec import Generation


def _requests(n: int = 2) -> list[Request]:
    return [Request(f"v{i}", f"studio photo of item {i}", "blurry", 7 + i, 64, 64, 2, 7.5, "ddim")
            for i in range(n)]


def _images(backend) -> list[np.ndarray]:
    return [np.asarray(r.image, dtype=int) for r in backend.generate(_requests(), pass_size=2)]


@pytest.fixture(scope="module")
def ref(tiny_model):
    return resolve_model(str(tiny_model), None, Settings.from_env())


def test_channels_last_and_vae_slicing_are_applied_and_keep_the_picture(ref):
    plain = LocalDiffusersBackend(ref, "cpu")
    tuned = LocalDiffusersBackend(ref, "cpu", options=PipelineOptions(channels_last=True, vae_slicing=True))
    assert tuned.pipeline is not plain.pipeline  # options are part of the cache key
    assert tuned.pipeline.unet.conv_in.weight.is_contiguous(memory_format=torch.channels_last)
    assert not plain.pipeline.unet.conv_in.weight.is_contiguous(memory_format=torch.channels_last)
    assert tuned.pipeline.vae.use_slicing and not plain.pipeline.vae.use_slicing
    # Memory layout and decoding one image at a time change the arithmetic order only.
    for a, b in zip(_images(plain), _images(tuned), strict=True):
        assert np.abs(a - b).max() <= 1


def test_vae_tiling_decodes_in_blended_tiles(ref):
    """The tiny VAE's tile is 32 px, so a 64 px image decodes as four overlapping tiles:
    the seams are blended, so pixels move near them, but the picture stays the same one."""
    plain = LocalDiffusersBackend(ref, "cpu")
    tiled = LocalDiffusersBackend(ref, "cpu", options=PipelineOptions(vae_tiling=True))
    assert tiled.pipeline.vae.use_tiling and not plain.pipeline.vae.use_tiling
    assert tiled.pipeline.vae.tile_sample_min_size < 64
    for a, b in zip(_images(plain), _images(tiled), strict=True):
        assert a.shape == b.shape and np.abs(a - b).max() > 1  # tiling really ran
        assert np.abs(a - b).mean() < 8


def test_torch_compile_wraps_the_denoiser_in_place(ref, monkeypatch):
    monkeypatch.setenv("DARKROOM_COMPILE_BACKEND", "eager")  # dynamo tracing, no codegen
    compiled = LocalDiffusersBackend(ref, "cpu", options=PipelineOptions(compile=True))
    unet = compiled.pipeline.unet
    assert type(unet).__name__ == "UNet2DConditionModel" and unet._compiled_call_impl is not None
    plain = LocalDiffusersBackend(ref, "cpu")
    for a, b in zip(_images(plain), _images(compiled), strict=True):
        assert np.abs(a - b).max() <= 1


def test_vae_tiling_auto_turns_on_above_a_megapixel():
    assert not PipelineOptions.from_spec(Generation(width=1024, height=1024)).vae_tiling
    assert PipelineOptions.from_spec(Generation(width=2048, height=1024)).vae_tiling
    assert not PipelineOptions.from_spec(
        Generation(width=2048, height=2048, optimizations={"vae_tiling": "off"})).vae_tiling
    assert PipelineOptions.from_spec(Generation(optimizations={"vae_tiling": "on"})).vae_tiling


@pytest.mark.parametrize("family,expected", [
    ("sd", torch.float16), ("sdxl", torch.float16), ("sd3", torch.bfloat16), ("flux", torch.bfloat16)])
def test_dtype_by_device_and_family(family, expected):
    """bfloat16 on CUDA for the transformer families (float16 overflows in their attention),
    float16 for the UNets; float32 on CPUs; an explicit dtype wins."""
    assert pick_device("cuda", family) == ("cuda", expected)
    assert pick_device("mps", family) == ("mps", torch.float16)
    assert pick_device("cpu", family) == ("cpu", torch.float32)
    assert pick_device("cpu", family, "bfloat16") == ("cpu", torch.bfloat16)


def test_attention_is_pytorch_sdpa(ref):
    """diffusers picks torch's scaled_dot_product_attention (flash / memory-efficient kernels
    on CUDA) when torch >= 2; nothing in Darkroom may swap in the slow classic processor."""
    pipe = LocalDiffusersBackend(ref, "cpu").pipeline
    kinds = {type(p).__name__ for p in pipe.unet.attn_processors.values()}
    assert kinds == {"AttnProcessor2_0"}, kinds
