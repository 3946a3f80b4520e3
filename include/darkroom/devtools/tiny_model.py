"""``darkroom models build-tiny``: tiny random-weight diffusers pipelines, built offline.

No model hub is reachable on CI machines, so tests and the demo load these pipelines through
the same ``from_pretrained`` code a real model uses. Their pictures are noise, by design.
One builder per model family (``ARCHS``): Stable Diffusion 1.x/2.x (``sd``), SDXL, SD3 and
Flux, each saved so that ``AutoPipelineForText2Image`` loads the family's own pipeline class.
Component sizes follow diffusers' own test fixtures (``get_dummy_components``); the
tokenizers are generated here instead of downloaded: a byte-level CLIP BPE vocabulary and a
character-level T5 (Unigram) vocabulary.
"""

from __future__ import annotations

import json
import shutil
import string
from pathlib import Path

import torch
from diffusers import (
    AutoencoderKL,
    DDIMScheduler,
    EulerDiscreteScheduler,
    FlowMatchEulerDiscreteScheduler,
    FluxPipeline,
    FluxTransformer2DModel,
    SD3Transformer2DModel,
    StableDiffusion3Pipeline,
    StableDiffusionPipeline,
    StableDiffusionXLPipeline,
    UNet2DConditionModel,
)
from transformers import (
    CLIPTextConfig,
    CLIPTextModel,
    CLIPTextModelWithProjection,
    CLIPTokenizer,
    T5Config,
    T5EncoderModel,
    T5TokenizerFast,
)

ARCHS = ("sd", "sdxl", "sd3", "flux")


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


def clip_tokenizer(directory: Path, model_max_length: int = 77):
    """A byte-level ``CLIPTokenizer`` over the vocabulary ``write_tokenizer`` puts in
    ``directory``; checked to have loaded it. Returns ``(tokenizer, vocab_size)``."""
    vocab_size = write_tokenizer(directory)
    # transformers 5 takes the vocabulary itself (``vocab=``/``merges=``); the old
    # ``vocab_file=`` keyword is silently ignored and leaves a two-token vocabulary in which
    # every prompt encodes the same. Passing the paths as ``vocab``/``merges`` works in both.
    tokenizer = CLIPTokenizer(
        vocab=str(directory / "vocab.json"),
        merges=str(directory / "merges.txt"),
        model_max_length=model_max_length,  # CLIP's context; the default is "unlimited"
    )
    if len(tokenizer) < vocab_size or tokenizer("ab").input_ids == tokenizer("cd").input_ids:
        raise RuntimeError(f"the generated tokenizer did not load its {vocab_size}-token vocabulary")
    return tokenizer, vocab_size


def t5_tokenizer(model_max_length: int = 512):
    """A T5 tokenizer (Unigram, as T5's SentencePiece model is) over single characters.

    T5's real vocabulary is a 32k-piece SentencePiece model that only the hub has; one
    piece per printable character (and per word-initial character, ``▁x``) spells any
    Latin-1 prompt, so different prompts still encode differently. No sentinel
    ``<extra_id_N>`` tokens: nothing here does span corruption.
    """
    chars = [c for c in string.printable if not c.isspace()]
    chars += [chr(i) for i in range(0xA1, 0x100) if chr(i).isprintable()]
    # Ids 0, 1, 2 are pad, eos and unk in every T5 checkpoint; T5EncoderModel's config says so.
    vocab = [("<pad>", 0.0), ("</s>", 0.0), ("<unk>", 0.0), ("▁", -2.0)]
    vocab += [("▁" + c, -4.0) for c in chars] + [(c, -5.0) for c in chars]
    tokenizer = T5TokenizerFast(vocab=vocab, extra_ids=0, model_max_length=model_max_length)
    if tokenizer("ab").input_ids == tokenizer("cd").input_ids:
        raise RuntimeError("the generated T5 tokenizer encodes different prompts the same")
    return tokenizer


def build_tiny_pipeline(path: str | Path, *, seed: int = 0, arch: str = "sd") -> Path:
    """Build and ``save_pretrained`` a tiny pipeline of family ``arch`` (one of ``ARCHS``)
    at ``path``. Deterministic for a seed.

    The ``sd`` pipeline's files are a fixed point: their content digest is the model version
    recorded on every tiny-model asset, so changing its numerics or files would make those
    assets look like another model's. The other families are free to change.
    """
    if arch not in ARCHS:
        raise ValueError(f"arch={arch!r} is not a tiny pipeline family; fix: use one of {', '.join(ARCHS)}")
    path = Path(path)
    tok_dir = path.parent / f".{path.name}-tokenizer"
    try:
        tokenizer, vocab_size = clip_tokenizer(tok_dir)
        _BUILDERS[arch](seed, tokenizer, vocab_size).save_pretrained(str(path))
    finally:
        shutil.rmtree(tok_dir, ignore_errors=True)
    how = "`darkroom models build-tiny`" if arch == "sd" else f"`darkroom models build-tiny --arch {arch}`"
    (path / "DARKROOM_TINY_MODEL.txt").write_text(
        f"Random weights built by {how}: it makes noise, not pictures.\n"
        "Point a campaign's generation.model at a real model (hub id or local path) instead.\n",
        "utf-8",
    )
    return path


def _build_sd(seed: int, tokenizer, vocab_size: int):
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
    return StableDiffusionPipeline(
        vae=vae,
        text_encoder=text_encoder,
        tokenizer=tokenizer,
        unet=unet,
        scheduler=scheduler,
        safety_checker=None,
        feature_extractor=None,
        requires_safety_checker=False,
    )


# -- the other families ---------------------------------------------------------------------
# The real models' scheduler settings, so the tiny pipelines step the way the real ones do.

_SDXL_SCHEDULER = dict(beta_start=0.00085, beta_end=0.012, beta_schedule="scaled_linear",
                       steps_offset=1, timestep_spacing="leading")
_SD3_SCHEDULER = dict(shift=3.0)
_FLUX_SCHEDULER = dict(shift=3.0, use_dynamic_shifting=True, base_shift=0.5, max_shift=1.15,
                       base_image_seq_len=256, max_image_seq_len=4096)


def _clip(seed: int, vocab_size: int, *, hidden: int, projection: int | None = None):
    """A 2-layer CLIP text encoder; ``projection`` adds the pooled projection head
    (``CLIPTextModelWithProjection``) that SDXL's second and SD3's both encoders have."""
    config = CLIPTextConfig(
        bos_token_id=vocab_size - 2, eos_token_id=vocab_size - 1, pad_token_id=vocab_size - 1,
        hidden_size=hidden, intermediate_size=2 * hidden, layer_norm_eps=1e-05,
        num_attention_heads=2, num_hidden_layers=2, vocab_size=vocab_size,
        projection_dim=projection or hidden,
    )
    torch.manual_seed(seed)
    model = CLIPTextModelWithProjection(config) if projection else CLIPTextModel(config)
    _amplify_clip(model)
    return model


def _amplify_clip(model) -> None:
    # The SD builder's trick, for the same reason: a loud final layer norm makes the pooled
    # output (read after that norm) differ strongly between prompts, and every family feeds
    # it into the conditioning (SDXL's and SD3's time embedding, Flux's pooled projection).
    # Measured at 64 px, 2 steps: the mean difference between two prompts' pictures grows
    # from about 3 to about 30 grey levels. Louder token embeddings, tried for SDXL's and
    # SD3's pre-norm hidden states, made it smaller: the pooled token then echoes its own
    # embedding, the same for every prompt.
    # transformers 5's CLIPTextModel is the text transformer itself; the projection
    # variant still wraps one as ``text_model``.
    text_model = getattr(model, "text_model", model)
    with torch.no_grad():
        text_model.final_layer_norm.weight.fill_(100.0)


def _t5(seed: int, vocab_size: int, d_model: int):
    """A 2-layer T5 v1.1 encoder (gated GELU, as SD3's and Flux's T5-XXL)."""
    torch.manual_seed(seed)
    model = T5EncoderModel(T5Config(
        vocab_size=vocab_size, d_model=d_model, d_kv=d_model // 2, d_ff=2 * d_model,
        num_layers=2, num_heads=2, relative_attention_num_buckets=8,
        relative_attention_max_distance=32, feed_forward_proj="gated-gelu", dropout_rate=0.0,
        is_encoder_decoder=False, use_cache=False,
    ))
    with torch.no_grad():  # the same reason as the CLIP encoders' final norm
        model.encoder.final_layer_norm.weight.fill_(100.0)
    return model


def _vae(seed: int, latent_channels: int, **flow_matching):
    """Two blocks: the latent is half the picture's size (vae_scale_factor 2)."""
    torch.manual_seed(seed)
    return AutoencoderKL(
        block_out_channels=[4, 8], in_channels=3, out_channels=3,
        down_block_types=["DownEncoderBlock2D"] * 2, up_block_types=["UpDecoderBlock2D"] * 2,
        latent_channels=latent_channels, norm_num_groups=2, **flow_matching,
    )


def _build_sdxl(seed: int, tokenizer, vocab_size: int):
    hidden, projection, time_dim = 8, 8, 8
    torch.manual_seed(seed)
    unet = UNet2DConditionModel(
        block_out_channels=(4, 8), layers_per_block=1, sample_size=32, in_channels=4, out_channels=4,
        down_block_types=("DownBlock2D", "CrossAttnDownBlock2D"),
        up_block_types=("CrossAttnUpBlock2D", "UpBlock2D"),
        attention_head_dim=(2, 4), use_linear_projection=True, transformer_layers_per_block=(1, 2),
        # SDXL's micro-conditioning: six size/crop numbers embedded time_dim wide each, plus
        # the second encoder's pooled projection, feed the time embedding.
        addition_embed_type="text_time", addition_time_embed_dim=time_dim,
        projection_class_embeddings_input_dim=6 * time_dim + projection,
        cross_attention_dim=2 * hidden,  # both encoders' hidden states, concatenated
        norm_num_groups=2,
    )
    return StableDiffusionXLPipeline(
        vae=_vae(seed, 4),
        text_encoder=_clip(seed, vocab_size, hidden=hidden),
        text_encoder_2=_clip(seed + 1, vocab_size, hidden=hidden, projection=projection),
        tokenizer=tokenizer,
        tokenizer_2=tokenizer,
        unet=unet,
        scheduler=EulerDiscreteScheduler(**_SDXL_SCHEDULER),
        add_watermarker=False,
    )


def _build_sd3(seed: int, tokenizer, vocab_size: int):
    hidden, t5_dim = 8, 16
    tokenizer_3 = t5_tokenizer()
    torch.manual_seed(seed)
    transformer = SD3Transformer2DModel(
        sample_size=32, patch_size=2, in_channels=4, out_channels=4, num_layers=2,
        attention_head_dim=8, num_attention_heads=2,
        caption_projection_dim=16,  # must equal the inner width, heads x head dim
        # The CLIP hidden states (2 x 8 wide) are zero-padded to the T5 width and the two
        # token sequences concatenated; the pooled projections (2 x 8) are concatenated.
        joint_attention_dim=t5_dim, pooled_projection_dim=2 * hidden, pos_embed_max_size=64,
    )
    return StableDiffusion3Pipeline(
        transformer=transformer,
        vae=_vae(seed, 4, use_quant_conv=False, use_post_quant_conv=False,
                 scaling_factor=1.5305, shift_factor=0.0609),
        text_encoder=_clip(seed, vocab_size, hidden=hidden, projection=hidden),
        text_encoder_2=_clip(seed + 1, vocab_size, hidden=hidden, projection=hidden),
        text_encoder_3=_t5(seed, len(tokenizer_3), t5_dim),
        tokenizer=tokenizer,
        tokenizer_2=tokenizer,
        tokenizer_3=tokenizer_3,
        scheduler=FlowMatchEulerDiscreteScheduler(**_SD3_SCHEDULER),
    )


def _build_flux(seed: int, tokenizer, vocab_size: int):
    hidden, t5_dim, latent_channels = 8, 16, 4
    tokenizer_2 = t5_tokenizer()
    torch.manual_seed(seed)
    transformer = FluxTransformer2DModel(
        patch_size=1,
        in_channels=4 * latent_channels,  # latents travel as 2x2 patches, packed channel-wise
        num_layers=1, num_single_layers=1, attention_head_dim=8, num_attention_heads=2,
        joint_attention_dim=t5_dim, pooled_projection_dim=hidden,  # CLIP gives only the pooled
        guidance_embeds=True,  # as FLUX.1-dev: guidance is an input, not a second pass
        axes_dims_rope=(2, 2, 4),  # sums to the head dim
    )
    return FluxPipeline(
        transformer=transformer,
        vae=_vae(seed, latent_channels, use_quant_conv=False, use_post_quant_conv=False,
                 scaling_factor=0.3611, shift_factor=0.1159),
        text_encoder=_clip(seed, vocab_size, hidden=hidden),
        text_encoder_2=_t5(seed, len(tokenizer_2), t5_dim),
        tokenizer=tokenizer,
        tokenizer_2=tokenizer_2,
        scheduler=FlowMatchEulerDiscreteScheduler(**_FLUX_SCHEDULER),
    )


_BUILDERS = {"sd": _build_sd, "sdxl": _build_sdxl, "sd3": _build_sd3, "flux": _build_flux}
