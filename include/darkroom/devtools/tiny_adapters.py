"""Tiny random LoRAs and IP-Adapters for the tiny pipeline (``darkroom.tiny_model``), built offline.

No model hub is reachable on CI machines, so tests of LoRA and IP-Adapter handling load these
through the very same diffusers calls a real adapter goes through:

* LoRA: ``pipe.load_lora_weights(path, adapter_name=...)`` reads
  ``<path>/pytorch_lora_weights.safetensors`` (peft format, ``unet.``/``text_encoder.`` prefixes).
* IP-Adapter: ``pipe.load_ip_adapter(path, subfolder="models",
  weight_name="ip-adapter_sd15.safetensors")`` reads the adapter file plus the CLIP image encoder
  at ``<path>/models/image_encoder``, laid out as in the ``h94/IP-Adapter`` repository.

Their weights are random, but deliberately large: random adapters at a trained adapter's scale
would change the tiny model's (already random) pictures by a rounding error, and a test could not
tell "adapter applied" from "adapter ignored". Both builders are deterministic for a seed, and two
seeds give two different adapters. No Airflow import; torch/diffusers are imported lazily.
"""

from __future__ import annotations

import json
from pathlib import Path

import torch
from diffusers import StableDiffusionPipeline, UNet2DConditionModel
from peft import LoraConfig
from peft.utils import get_peft_model_state_dict
from safetensors.torch import save_file
from transformers import CLIPImageProcessor, CLIPTextModel, CLIPVisionConfig, CLIPVisionModelWithProjection

LORA_WEIGHT_NAME = "pytorch_lora_weights.safetensors"  # diffusers' default LoRA file name
IP_ADAPTER_SUBFOLDER = "models"  # as in h94/IP-Adapter: models/ip-adapter_sd15.safetensors
IP_ADAPTER_WEIGHT_NAME = "ip-adapter_sd15.safetensors"
IMAGE_ENCODER_FOLDER = "image_encoder"  # load_ip_adapter's default, looked up inside the subfolder

# The attention projections a typical SD 1.x LoRA trains (diffusers' train_text_to_image_lora).
UNET_LORA_TARGETS = ("to_q", "to_k", "to_v", "to_out.0")
TEXT_ENCODER_LORA_TARGETS = ("q_proj", "k_proj", "v_proj", "out_proj")

# Standard deviation of the random LoRA A/B matrices. The tiny model's own weights are about
# 0.3 in size (nn.Linear's default init for 8-wide layers); with std 0.5 and rank 4 each entry of
# B @ A is about 0.5, so the LoRA moves every attention projection by more than its own size.
_LORA_STD = 0.5
# IP-Adapter: the image tokens' LayerNorm gain and the to_k_ip/to_v_ip std. Large, so that the
# image branch of each cross-attention is as loud as the (amplified) text branch.
_IP_NORM_GAIN = 10.0
_IP_KV_STD = 1.0
# The tiny image encoder's width and CLIP image-embedding (projection) size.
_IMAGE_SIZE = 32
_IMAGE_EMBED_DIM = 8


def _require_unet(base: Path) -> None:
    # The adapters are shaped for a UNet2DConditionModel (the "sd" family of
    # darkroom.tiny_model); SD3/Flux bases have a transformer instead and other key layouts.
    if not (base / "unet" / "config.json").is_file():
        raise ValueError(
            f"{base} has no unet/config.json: tiny LoRAs and IP-Adapters are built for the UNet "
            "(Stable Diffusion 1.x) tiny pipeline, `build_tiny_pipeline(path, arch='sd')`"
        )


def _generator(seed: int):
    # A private generator: the artifact depends on ``seed`` only, not on whatever the global
    # RNG went through before (test order, earlier model builds).
    return torch.Generator().manual_seed(seed)


def build_tiny_lora(
    path: str | Path,
    base_model_dir: str | Path,
    *,
    seed: int,
    rank: int = 4,
    text_encoder: bool = False,
) -> Path:
    """Save a random LoRA for the tiny pipeline at ``base_model_dir`` into directory ``path``.

    It targets the UNet's attention projections (and, with ``text_encoder=True``, the CLIP text
    encoder's), at rank ``rank`` and ``lora_alpha == rank`` (scale 1). Returns ``path``, which
    ``pipe.load_lora_weights(path, adapter_name=...)`` loads.
    """
    path, base = Path(path), Path(base_model_dir)
    _require_unet(base)
    gen = _generator(seed)

    def randomize(model: torch.nn.Module) -> None:
        # peft initialises lora_B to zeros (a no-op LoRA) -- replace A and B with seeded noise.
        with torch.no_grad():
            for name, param in sorted(model.named_parameters()):
                if ".lora_A." in name or ".lora_B." in name:
                    param.copy_(torch.randn(param.shape, generator=gen) * _LORA_STD)

    # The base weights only serve as the skeleton peft attaches to; the shapes are what matter.
    unet = UNet2DConditionModel.from_pretrained(base, subfolder="unet")
    unet_config = LoraConfig(r=rank, lora_alpha=rank, target_modules=list(UNET_LORA_TARGETS))
    with torch.random.fork_rng(devices=[]):  # peft's own init draws from the global RNG
        unet.add_adapter(unet_config)
    randomize(unet)
    # save_embedding_layers=False: no embedding is adapted, and "auto" would look for a hub
    # config.json at the model's name_or_path (and warn when it is not there).
    layers = {"unet_lora_layers": get_peft_model_state_dict(unet, save_embedding_layers=False)}
    # The metadata carries rank and alpha, so the loader does not have to guess them from shapes.
    metadata = {"unet_lora_adapter_metadata": unet_config.to_dict()}

    if text_encoder:
        te = CLIPTextModel.from_pretrained(base, subfolder="text_encoder")
        te_config = LoraConfig(r=rank, lora_alpha=rank, target_modules=list(TEXT_ENCODER_LORA_TARGETS))
        with torch.random.fork_rng(devices=[]):
            te.add_adapter(te_config)
        randomize(te)
        layers["text_encoder_lora_layers"] = get_peft_model_state_dict(te, save_embedding_layers=False)
        metadata["text_encoder_lora_adapter_metadata"] = te_config.to_dict()

    StableDiffusionPipeline.save_lora_weights(
        str(path), weight_name=LORA_WEIGHT_NAME, safe_serialization=True, **layers, **metadata
    )
    return path


def ip_adapter_state_dict(base_model_dir: str | Path, *, seed: int, image_embed_dim: int = _IMAGE_EMBED_DIM):
    """The flat ``{"image_proj.*", "ip_adapter.*"}`` tensors of a random IP-Adapter (SD 1.5 kind).

    Keys follow diffusers' converters (``UNet2DConditionLoadersMixin``):
    ``_convert_ip_adapter_image_proj_to_diffusers`` recognises the plain IP-Adapter by
    ``proj.weight`` (``Linear(image_embed_dim -> 4 * cross_attention_dim)``) plus ``norm``
    (``LayerNorm(cross_attention_dim)``); ``_convert_ip_adapter_attn_to_diffusers`` walks the
    UNet's attention processors in order and takes ``"<n>.to_k_ip.weight"`` /
    ``"<n>.to_v_ip.weight"`` for each cross-attention one, with n = 1, 3, 5, ... (the original
    IP-Adapter numbered all processors and only the odd, cross-attention ones carry weights).
    """
    _require_unet(Path(base_model_dir))
    # Only the processor names and sizes are needed: build from the config, load no weights.
    config = UNet2DConditionModel.load_config(Path(base_model_dir), subfolder="unet")
    unet = UNet2DConditionModel.from_config(config)
    cross_dim = unet.config.cross_attention_dim
    blocks = list(unet.config.block_out_channels)
    gen = _generator(seed)

    def randn(*shape: int, std: float) -> torch.Tensor:
        return torch.randn(shape, generator=gen) * std

    num_tokens = 4  # the plain IP-Adapter turns one image embedding into 4 context tokens
    sd = {
        "image_proj.proj.weight": randn(num_tokens * cross_dim, image_embed_dim, std=image_embed_dim**-0.5),
        "image_proj.proj.bias": randn(num_tokens * cross_dim, std=0.1),
        "image_proj.norm.weight": torch.full((cross_dim,), _IP_NORM_GAIN),
        "image_proj.norm.bias": torch.zeros(cross_dim),
    }
    key_id = 1
    for name in unet.attn_processors:
        if name.endswith("attn1.processor"):  # self-attention: no image branch, no key number
            continue
        # The same hidden-size rule as diffusers' loader, so the shapes match what it builds.
        if name.startswith("mid_block"):
            hidden = blocks[-1]
        elif name.startswith("up_blocks"):
            hidden = list(reversed(blocks))[int(name[len("up_blocks.")])]
        else:
            hidden = blocks[int(name[len("down_blocks.")])]
        sd[f"ip_adapter.{key_id}.to_k_ip.weight"] = randn(hidden, cross_dim, std=_IP_KV_STD)
        sd[f"ip_adapter.{key_id}.to_v_ip.weight"] = randn(hidden, cross_dim, std=_IP_KV_STD)
        key_id += 2
    return {k: v.contiguous() for k, v in sd.items()}


def build_tiny_ip_adapter(path: str | Path, base_model_dir: str | Path, *, seed: int) -> Path:
    """Save a random IP-Adapter plus a tiny CLIP image encoder for the tiny pipeline into ``path``.

    Layout (that of ``h94/IP-Adapter``)::

        <path>/models/ip-adapter_sd15.safetensors
        <path>/models/image_encoder/{config.json, model.safetensors, preprocessor_config.json}

    The encoder's ``projection_dim`` equals the adapter's ``image_proj`` input size. Returns
    ``path``; load it with ``pipe.load_ip_adapter(path, subfolder="models",
    weight_name="ip-adapter_sd15.safetensors")``.
    """
    path = Path(path)
    models = path / IP_ADAPTER_SUBFOLDER
    encoder_dir = models / IMAGE_ENCODER_FOLDER
    encoder_dir.mkdir(parents=True, exist_ok=True)

    save_file(ip_adapter_state_dict(base_model_dir, seed=seed), str(models / IP_ADAPTER_WEIGHT_NAME))

    # transformers initialises from the global RNG: seed it so the encoder is reproducible too,
    # inside fork_rng so the caller's RNG stream is left as it was. (Offset from ``seed`` so the
    # encoder is not drawn from the same numbers as the adapter.)
    with torch.random.fork_rng(devices=[]):
        torch.manual_seed(seed + 1_000_003)
        encoder = CLIPVisionModelWithProjection(
            CLIPVisionConfig(
                hidden_size=8,
                intermediate_size=16,
                projection_dim=_IMAGE_EMBED_DIM,
                num_hidden_layers=2,
                num_attention_heads=2,
                image_size=_IMAGE_SIZE,  # 32 px, 4x4 patches of 8 px: 17 tokens
                patch_size=8,
                num_channels=3,
            )
        )
    encoder.save_pretrained(str(encoder_dir), safe_serialization=True)
    # CLIP's own normalisation at the encoder's resolution. diffusers builds an equivalent
    # processor itself when the pipeline has none (the tiny pipeline has none); a real
    # pipeline keeps its own, so this file is for code that builds it explicitly, e.g.
    # CLIPImageProcessor.from_pretrained(<path>/models/image_encoder).
    CLIPImageProcessor(
        size={"shortest_edge": _IMAGE_SIZE}, crop_size={"height": _IMAGE_SIZE, "width": _IMAGE_SIZE}
    ).save_pretrained(str(encoder_dir))
    (path / "DARKROOM_TINY_ADAPTER.txt").write_text(
        json.dumps({"kind": "ip-adapter", "seed": seed, "base_model": str(base_model_dir)}) + "\n", "utf-8"
    )
    return path
