"""Full-size Stable Diffusion 1.5 and SDXL base with random weights, for GPU benchmarks.

A benchmark needs the real models' compute (layer widths, attention heads, transformer
depth, the 77-token context), not their weights, and CI machines cannot download the real
ones. The component configs below are the published ``config.json`` files of
``stable-diffusion-v1-5/stable-diffusion-v1-5`` and ``stabilityai/stable-diffusion-xl-base-1.0``
(unet, vae, text_encoder, text_encoder_2, scheduler), copied here; ``PUBLISHED_PARAMETERS``
holds each component's parameter count, and the tests build the models on the meta device
to prove the configs reproduce them. The pipelines are saved with ``save_pretrained`` so
the ordinary loading code (``resolve_model`` on a folder) benchmarks them.

The one difference from the real models: the tokenizer is the offline byte-level one
(``tiny_model.write_tokenizer``; one token per byte) with CLIP's 77-token context. The
text encoders keep CLIP's 49,408-row embedding, so their size and compute are the real ones.
"""

from __future__ import annotations

import shutil
from pathlib import Path

import diffusers
import torch
import transformers

from darkroom.devtools.tiny_model import clip_tokenizer

ARCHS = ("sd15", "sdxl")
NATIVE_SIZE = {"sd15": 512, "sdxl": 1024}  # the resolution each was trained at

_SD15_UNET = {
    "act_fn": "silu",
    "attention_head_dim": 8,  # diffusers' legacy name: 8 *heads* per block in SD 1.x
    "block_out_channels": [320, 640, 1280, 1280],
    "center_input_sample": False,
    "cross_attention_dim": 768,
    "down_block_types": ["CrossAttnDownBlock2D", "CrossAttnDownBlock2D", "CrossAttnDownBlock2D",
                         "DownBlock2D"],
    "downsample_padding": 1,
    "flip_sin_to_cos": True,
    "freq_shift": 0,
    "in_channels": 4,
    "layers_per_block": 2,
    "mid_block_scale_factor": 1,
    "norm_eps": 1e-05,
    "norm_num_groups": 32,
    "out_channels": 4,
    "sample_size": 64,
    "up_block_types": ["UpBlock2D", "CrossAttnUpBlock2D", "CrossAttnUpBlock2D", "CrossAttnUpBlock2D"],
}

_SDXL_UNET = {
    "act_fn": "silu",
    "addition_embed_type": "text_time",
    "addition_embed_type_num_heads": 64,
    "addition_time_embed_dim": 256,
    "attention_head_dim": [5, 10, 20],  # heads per block (legacy name), 64 wide each
    "block_out_channels": [320, 640, 1280],
    "center_input_sample": False,
    "class_embed_type": None,
    "class_embeddings_concat": False,
    "conv_in_kernel": 3,
    "conv_out_kernel": 3,
    "cross_attention_dim": 2048,
    "cross_attention_norm": None,
    "down_block_types": ["DownBlock2D", "CrossAttnDownBlock2D", "CrossAttnDownBlock2D"],
    "downsample_padding": 1,
    "dual_cross_attention": False,
    "encoder_hid_dim": None,
    "encoder_hid_dim_type": None,
    "flip_sin_to_cos": True,
    "freq_shift": 0,
    "in_channels": 4,
    "layers_per_block": 2,
    "mid_block_only_cross_attention": None,
    "mid_block_scale_factor": 1,
    "mid_block_type": "UNetMidBlock2DCrossAttn",
    "norm_eps": 1e-05,
    "norm_num_groups": 32,
    "num_attention_heads": None,
    "num_class_embeds": None,
    "only_cross_attention": False,
    "out_channels": 4,
    "projection_class_embeddings_input_dim": 2816,  # 6 x 256 size/crop embeddings + 1280 pooled
    "resnet_out_scale_factor": 1.0,
    "resnet_skip_time_act": False,
    "resnet_time_scale_shift": "default",
    "sample_size": 128,
    "time_cond_proj_dim": None,
    "time_embedding_act_fn": None,
    "time_embedding_dim": None,
    "time_embedding_type": "positional",
    "timestep_post_act": None,
    "transformer_layers_per_block": [1, 2, 10],
    "up_block_types": ["CrossAttnUpBlock2D", "CrossAttnUpBlock2D", "UpBlock2D"],
    "upcast_attention": None,
    "use_linear_projection": True,
}

_VAE = {
    "act_fn": "silu",
    "block_out_channels": [128, 256, 512, 512],
    "down_block_types": ["DownEncoderBlock2D"] * 4,
    "in_channels": 3,
    "latent_channels": 4,
    "layers_per_block": 2,
    "norm_num_groups": 32,
    "out_channels": 3,
    "up_block_types": ["UpDecoderBlock2D"] * 4,
}
_SD15_VAE = {**_VAE, "sample_size": 512, "scaling_factor": 0.18215}
# SDXL's VAE overflows in float16 at some activations; the published config asks diffusers
# to decode in float32, which is part of SDXL's real cost.
_SDXL_VAE = {**_VAE, "sample_size": 1024, "scaling_factor": 0.13025, "force_upcast": True}

# OpenAI CLIP ViT-L/14's text tower: SD 1.5's only encoder, SDXL's first.
_CLIP_L = {
    "attention_dropout": 0.0,
    "dropout": 0.0,
    "hidden_act": "quick_gelu",
    "hidden_size": 768,
    "initializer_factor": 1.0,
    "initializer_range": 0.02,
    "intermediate_size": 3072,
    "layer_norm_eps": 1e-05,
    "max_position_embeddings": 77,
    "num_attention_heads": 12,
    "num_hidden_layers": 12,
    "projection_dim": 768,
    "vocab_size": 49408,
}
# OpenCLIP ViT-bigG/14's text tower with its projection: SDXL's second encoder.
_CLIP_BIGG = {
    "attention_dropout": 0.0,
    "dropout": 0.0,
    "hidden_act": "gelu",
    "hidden_size": 1280,
    "initializer_factor": 1.0,
    "initializer_range": 0.02,
    "intermediate_size": 5120,
    "layer_norm_eps": 1e-05,
    "max_position_embeddings": 77,
    "num_attention_heads": 20,
    "num_hidden_layers": 32,
    "projection_dim": 1280,
    "vocab_size": 49408,
}

_SCHEDULER_BASE = {"beta_start": 0.00085, "beta_end": 0.012, "beta_schedule": "scaled_linear",
                   "num_train_timesteps": 1000, "set_alpha_to_one": False, "steps_offset": 1,
                   "trained_betas": None}
_SD15_SCHEDULER = ("PNDMScheduler", {**_SCHEDULER_BASE, "clip_sample": False, "skip_prk_steps": True})
_SDXL_SCHEDULER = ("EulerDiscreteScheduler", {
    **_SCHEDULER_BASE, "interpolation_type": "linear", "prediction_type": "epsilon",
    "timestep_spacing": "leading", "use_karras_sigmas": False})

# component -> (class, config); classes are diffusers' or transformers' names.
CONFIGS: dict[str, dict[str, tuple[str, dict]]] = {
    "sd15": {
        "unet": ("UNet2DConditionModel", _SD15_UNET),
        "vae": ("AutoencoderKL", _SD15_VAE),
        "text_encoder": ("CLIPTextModel", _CLIP_L),
    },
    "sdxl": {
        "unet": ("UNet2DConditionModel", _SDXL_UNET),
        "vae": ("AutoencoderKL", _SDXL_VAE),
        "text_encoder": ("CLIPTextModel", _CLIP_L),
        "text_encoder_2": ("CLIPTextModelWithProjection", _CLIP_BIGG),
    },
}

# Parameter counts of the published checkpoints' components.
PUBLISHED_PARAMETERS = {
    "sd15": {"unet": 859_520_964, "vae": 83_653_863, "text_encoder": 123_060_480},
    "sdxl": {"unet": 2_567_463_684, "vae": 83_653_863, "text_encoder": 123_060_480,
             "text_encoder_2": 694_659_840},
}


def _check_arch(arch: str) -> None:
    if arch not in ARCHS:
        raise ValueError(f"arch={arch!r} has no full-size config; fix: use one of {', '.join(ARCHS)}")


def build_components(arch: str, *, text_token_ids: tuple[int, int, int] | None = None) -> dict:
    """The models of ``arch`` (unet, vae, text encoders), randomly initialised on the current
    default device: under ``with torch.device("meta")`` they cost no memory, which is how
    the tests count their parameters. ``text_token_ids`` = (bos, eos, pad) of the tokenizer
    the text encoders will read; CLIP pools its output at the eos token."""
    _check_arch(arch)
    models = {}
    for name, (cls_name, config) in CONFIGS[arch].items():
        if cls_name.startswith("CLIP"):
            ids = dict(zip(("bos_token_id", "eos_token_id", "pad_token_id"), text_token_ids, strict=True)) \
                if text_token_ids else {}
            models[name] = getattr(transformers, cls_name)(transformers.CLIPTextConfig(**config, **ids))
        else:
            models[name] = getattr(diffusers, cls_name)(**config)
    return models


def build_random_pipeline(arch: str, path: str | Path, *, seed: int = 0) -> Path:
    """Save a full-size ``arch`` pipeline ("sd15" or "sdxl") with random weights at ``path``.

    Weights are initialised on the GPU when there is one (seconds, against minutes for 3.5
    billion parameters on a few CPU cores) and saved in float16, the dtype the benchmark
    runs them in on CUDA: half the disk and load time. Loading in float32 (CPU) upcasts.
    """


    _check_arch(arch)
    path = Path(path)
    tok_dir = path.parent / f".{path.name}-tokenizer"
    tokenizer, vocab_size = clip_tokenizer(tok_dir, model_max_length=77)
    ids = (vocab_size - 2, vocab_size - 1, vocab_size - 1)
    device = "cuda" if torch.cuda.is_available() else "cpu"
    torch.manual_seed(seed)
    with torch.device(device):
        models = build_components(arch, text_token_ids=ids)
    # Back on the CPU before saving: the GPU is left empty for the benchmark that follows.
    models = {k: m.to(device="cpu", dtype=torch.float16).eval() for k, m in models.items()}
    if device == "cuda":
        torch.cuda.empty_cache()
    cls_name, config = (_SD15_SCHEDULER if arch == "sd15" else _SDXL_SCHEDULER)
    scheduler = getattr(diffusers, cls_name).from_config(config)
    if arch == "sd15":
        pipe = diffusers.StableDiffusionPipeline(
            **models, tokenizer=tokenizer, scheduler=scheduler, safety_checker=None,
            feature_extractor=None, requires_safety_checker=False)
    else:
        pipe = diffusers.StableDiffusionXLPipeline(
            **models, tokenizer=tokenizer, tokenizer_2=tokenizer, scheduler=scheduler,
            add_watermarker=False)
    # Write beside the target and rename, so an interrupted build never leaves a folder
    # that looks complete (the bench reuses any folder with a model_index.json).
    partial = path.parent / f".{path.name}-partial"
    shutil.rmtree(partial, ignore_errors=True)
    pipe.save_pretrained(str(partial))
    shutil.rmtree(tok_dir, ignore_errors=True)
    (partial / "DARKROOM_RANDOM_MODEL.txt").write_text(
        f"Full-size {arch} architecture with random weights, built by darkroom.full_size for "
        "benchmarks: the real model's compute, noise for pictures.\n", "utf-8")
    if path.exists():
        shutil.rmtree(path)
    partial.rename(path)
    return path


def ensure_random_pipeline(arch: str, models_dir: Path, *, seed: int = 0) -> Path:
    """``models_dir/random-<arch>``, built on first use and reused after."""
    path = Path(models_dir) / f"random-{arch}"
    if not (path / "model_index.json").is_file():
        path.parent.mkdir(parents=True, exist_ok=True)
        build_random_pipeline(arch, path, seed=seed)
    return path
