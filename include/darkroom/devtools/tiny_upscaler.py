"""A tiny random-weight x4 upscaler pipeline, built offline, for tests of model upscaling
(``generation.upscaler``): the real component layout at a few channels' width."""

from __future__ import annotations

import json
from pathlib import Path

import torch
from diffusers import (
    AutoencoderKL,
    DDIMScheduler,
    DDPMScheduler,
    StableDiffusionUpscalePipeline,
    UNet2DConditionModel,
)
from transformers import CLIPTextConfig, CLIPTextModel, CLIPTokenizer

from darkroom.devtools.tiny_model import write_tokenizer
from darkroom.upscaler import SETTINGS_FILE


def build_tiny_upscaler(path: str | Path, *, seed: int = 0) -> Path:
    """Build and ``save_pretrained`` a tiny random-weight ``StableDiffusionUpscalePipeline``
    (x4) at ``path``, offline: the same component layout as the real
    stabilityai/stable-diffusion-x4-upscaler (UNet on 4 latent + 3 image channels with the
    noise level as class label, a 3-block VAE that decodes 4x, a DDPM low-res scheduler),
    with widths shrunk to a few channels so it runs on a CPU in seconds. Its output is noise
    over the input's colours, by design. Deterministic for a seed."""
    path = Path(path)
    tok_dir = path.parent / f".{path.name}-tokenizer"
    vocab_size = write_tokenizer(tok_dir)
    # vocab=/merges= (not vocab_file=): see darkroom.devtools.tiny_model.clip_tokenizer.
    tokenizer = CLIPTokenizer(vocab=str(tok_dir / "vocab.json"), merges=str(tok_dir / "merges.txt"),
                              model_max_length=77)
    bos, eos = vocab_size - 2, vocab_size - 1
    max_noise_level = 350

    torch.manual_seed(seed)
    unet = UNet2DConditionModel(
        block_out_channels=(4, 8, 8, 8),
        layers_per_block=1,
        sample_size=32,
        in_channels=7,  # 4 latent channels + the 3-channel low-res image, as the real model
        out_channels=4,
        # Attention only in the mid block (1/8 of the input's size, text cross-attention
        # only): the UNet runs at the pass input's size (512x512 on the way to 2048), where
        # CPU attention over every pixel takes tens of seconds per step.
        down_block_types=("DownBlock2D",) * 4,
        up_block_types=("UpBlock2D",) * 4,
        mid_block_only_cross_attention=True,
        cross_attention_dim=8,
        attention_head_dim=2,
        norm_num_groups=2,
        num_class_embeds=1000,  # the noise level is the class label, as in the real model
    )
    torch.manual_seed(seed)
    vae = AutoencoderKL(
        block_out_channels=[4, 4, 4],  # three blocks: the decoder upsamples 4x
        in_channels=3,
        out_channels=3,
        down_block_types=["DownEncoderBlock2D"] * 3,
        up_block_types=["UpDecoderBlock2D"] * 3,
        latent_channels=4,
        norm_num_groups=2,
        sample_size=256,  # VAE tiling's tile size: 64-latent tiles
        scaling_factor=0.08333,  # the x4 upscaler's; the pipeline insists on it
        mid_block_add_attention=False,  # quadratic in latent pixels, as above
    )
    torch.manual_seed(seed)
    text_encoder = CLIPTextModel(CLIPTextConfig(
        bos_token_id=bos, eos_token_id=eos, pad_token_id=eos, hidden_size=8, intermediate_size=16,
        layer_norm_eps=1e-05, num_attention_heads=2, num_hidden_layers=2, vocab_size=vocab_size))
    pipe = StableDiffusionUpscalePipeline(
        vae=vae,
        text_encoder=text_encoder,
        tokenizer=tokenizer,
        unet=unet,
        low_res_scheduler=DDPMScheduler(),
        # The real model predicts v; its scheduler config says so.
        scheduler=DDIMScheduler(prediction_type="v_prediction", beta_schedule="scaled_linear",
                                beta_start=0.0001, beta_end=0.02, clip_sample=False,
                                set_alpha_to_one=False, steps_offset=1),
        max_noise_level=max_noise_level,
    )
    pipe.save_pretrained(str(path))
    for f in tok_dir.iterdir():
        f.unlink()
    tok_dir.rmdir()
    (path / "DARKROOM_TINY_UPSCALER.txt").write_text(
        "Random weights built by darkroom.devtools.tiny_upscaler: it adds noise, not detail.\n"
        "Point generation.upscaler at a real upscaler (e.g. stabilityai/stable-diffusion-x4-upscaler).\n",
        "utf-8")
    # Few steps and no classifier-free guidance (one UNet batch, not two): random weights gain
    # nothing from more, and tests run it on a CPU.
    (path / SETTINGS_FILE).write_text(json.dumps({"steps": 2, "guidance": 1.0}) + "\n", "utf-8")
    return path
