"""``darkroom models build-tiny``: a tiny random-weight Stable Diffusion pipeline, built offline.

No model hub is reachable on CI machines, so tests and the demo load this pipeline through
the same ``from_pretrained`` code a real model uses. Its pictures are noise, by design.
Component sizes follow diffusers' own test fixtures (``get_dummy_components``); the
tokenizer is a byte-level CLIP BPE vocabulary generated here instead of downloaded.
"""

from __future__ import annotations

import json
from pathlib import Path


def _bytes_to_unicode() -> dict[int, str]:
    # GPT-2's reversible byte -> printable character table, which CLIP's BPE also uses.
    bs = list(range(ord("!"), ord("~") + 1)) + list(range(ord("¡"), ord("¬") + 1)) + list(
        range(ord("®"), ord("ÿ") + 1)
    )
    cs = bs[:]
    n = 0
    for b in range(256):
        if b not in bs:
            bs.append(b)
            cs.append(256 + n)
            n += 1
    return dict(zip(bs, map(chr, cs), strict=True))


def write_tokenizer(directory: Path) -> int:
    """Write vocab.json + merges.txt for a byte-level CLIP tokenizer; return the vocab size."""
    directory.mkdir(parents=True, exist_ok=True)
    chars = list(_bytes_to_unicode().values())
    vocab_list = chars + [c + "</w>" for c in chars] + ["<|startoftext|>", "<|endoftext|>"]
    vocab = {tok: i for i, tok in enumerate(vocab_list)}
    (directory / "vocab.json").write_text(json.dumps(vocab, ensure_ascii=False), "utf-8")
    (directory / "merges.txt").write_text("#version: 0.2\n", "utf-8")
    return len(vocab)


def build_tiny_pipeline(path: str | Path, *, seed: int = 0) -> Path:
    """Build and ``save_pretrained`` the tiny pipeline at ``path``. Deterministic for a seed."""
    import torch
    from diffusers import (
        AutoencoderKL,
        DDIMScheduler,
        StableDiffusionPipeline,
        UNet2DConditionModel,
    )
    from transformers import CLIPTextConfig, CLIPTextModel, CLIPTokenizer

    path = Path(path)
    tok_dir = path.parent / f".{path.name}-tokenizer"
    vocab_size = write_tokenizer(tok_dir)
    # transformers 5 takes the vocabulary itself (``vocab=``/``merges=``); the old
    # ``vocab_file=`` keyword is silently ignored and leaves a two-token vocabulary in which
    # every prompt encodes the same. Passing the paths as ``vocab``/``merges`` works in both.
    tokenizer = CLIPTokenizer(
        vocab=str(tok_dir / "vocab.json"),
        merges=str(tok_dir / "merges.txt"),
        model_max_length=77,  # CLIP's context; the default is "unlimited"
    )
    if len(tokenizer) < vocab_size or tokenizer("ab").input_ids == tokenizer("cd").input_ids:
        raise RuntimeError(f"the generated tokenizer did not load its {vocab_size}-token vocabulary")
    bos, eos = vocab_size - 2, vocab_size - 1

    torch.manual_seed(seed)
    unet = UNet2DConditionModel(
        block_out_channels=(4, 8),
        layers_per_block=1,
        sample_size=32,
        in_channels=4,
        out_channels=4,
        down_block_types=("DownBlock2D", "CrossAttnDownBlock2D"),
        up_block_types=("CrossAttnUpBlock2D", "UpBlock2D"),
        cross_attention_dim=8,
        norm_num_groups=2,
    )
    torch.manual_seed(seed)
    vae = AutoencoderKL(
        block_out_channels=[4, 8],
        in_channels=3,
        out_channels=3,
        down_block_types=["DownEncoderBlock2D", "DownEncoderBlock2D"],
        up_block_types=["UpDecoderBlock2D", "UpDecoderBlock2D"],
        latent_channels=4,
        norm_num_groups=2,
    )
    torch.manual_seed(seed)
    text_encoder = CLIPTextModel(
        CLIPTextConfig(
            bos_token_id=bos,
            eos_token_id=eos,
            pad_token_id=eos,
            hidden_size=8,
            intermediate_size=16,
            layer_norm_eps=1e-05,
            num_attention_heads=2,
            num_hidden_layers=2,
            vocab_size=vocab_size,
        )
    )
    # Random cross-attention barely hears an 8-wide text embedding: every prompt would draw
    # the same picture for a seed, and QA's duplicate check would (rightly) flag them.
    # Amplifying the embedding makes different prompts give different pictures, as a real
    # model does.
    with torch.no_grad():
        text_encoder.final_layer_norm.weight.fill_(100.0)
    scheduler = DDIMScheduler(
        beta_start=0.00085,
        beta_end=0.012,
        beta_schedule="scaled_linear",
        clip_sample=False,
        set_alpha_to_one=False,
        steps_offset=1,
    )
    pipe = StableDiffusionPipeline(
        vae=vae,
        text_encoder=text_encoder,
        tokenizer=tokenizer,
        unet=unet,
        scheduler=scheduler,
        safety_checker=None,
        feature_extractor=None,
        requires_safety_checker=False,
    )
    pipe.save_pretrained(str(path))
    for f in tok_dir.iterdir():
        f.unlink()
    tok_dir.rmdir()
    (path / "DARKROOM_TINY_MODEL.txt").write_text(
        "Random weights built by `darkroom models build-tiny`: it makes noise, not pictures.\n"
        "Point a campaign's generation.model at a real model (hub id or local path) instead.\n",
        "utf-8",
    )
    return path
