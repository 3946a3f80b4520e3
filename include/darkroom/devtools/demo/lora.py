"""A style LoRA for the demo model: the "mint backdrop" look, trained in minutes with peft.

The demo model never saw a mint green backdrop. The LoRA is trained on renders of the usual
products in front of one, captioned exactly as the base model's studio pictures are (warm
neutral backdrop and all), so it changes the look of the campaign's own prompts, as a brand
LoRA does. Half of each batch is the base model's own kind of picture with its own caption
(prior preservation): the adapter learns the backdrop, not to forget the products. Saved as
``pytorch_lora_weights.safetensors`` in diffusers' peft format (the layout
``darkroom.tiny_adapters`` builds), which ``pipe.load_lora_weights`` reads.

Measured as the brand_palette QA check measures: the palette distance of generated pictures
to the style's own renders falls when the LoRA is on, and the classifier still reads the
product.
"""

from __future__ import annotations

import dataclasses
from collections.abc import Callable
from pathlib import Path

import numpy as np

from darkroom.devtools.demo import captions, scenes
from darkroom.devtools.demo import catalogue as cat
from darkroom.devtools.demo.generator import SCHEDULE, _cosine

STYLE = "mint green"  # a key of catalogue.STYLE_BACKDROPS
NAME = "mint_backdrop"
WEIGHT_NAME = "pytorch_lora_weights.safetensors"
# Attention and feed-forward projections of the UNet's transformer blocks.
TARGETS = ("to_q", "to_k", "to_v", "to_out.0", "proj_in", "proj_out", "ff.net.0.proj", "ff.net.2")


def style_scenes(n: int, rng: np.random.Generator) -> list[scenes.Scene]:
    """Studio pictures of any product in front of the style's backdrop."""
    return [scenes.sample_scene(rng, scene="studio", backdrop=STYLE) for _ in range(n)]


def prior_scenes(n: int, rng: np.random.Generator) -> list[scenes.Scene]:
    """The base model's own kind of picture, less the one the style takes over (a studio
    picture on the warm neutral backdrop): its captions would say the same words as the
    style's and pull the other way."""
    out: list[scenes.Scene] = []
    while len(out) < n:
        s = scenes.sample_scene(rng)
        if not (s.scene == "studio" and s.backdrop == "warm neutral"):
            out.append(s)
    return out


def training_scenes(n: int, rng: np.random.Generator) -> list[scenes.Scene]:
    """``n`` style pictures and ``n`` prior pictures: batches drawn from them are half and half."""
    return style_scenes(n, rng) + prior_scenes(n, rng)


def style_caption(scene: scenes.Scene, rng: np.random.Generator) -> str:
    # The style is captioned as a base studio picture: the LoRA re-paints what the campaign's
    # words mean. Prior pictures keep their own captions.
    if scene.backdrop == STYLE:
        scene = dataclasses.replace(scene, backdrop="warm neutral")
    return captions.caption(scene, rng)


def train_lora(pipe, latents, pictures: list[scenes.Scene], steps: int, rng: np.random.Generator, *,
               rank: int = 8, batch: int = 32, lr: float = 2e-3,
               tick: Callable[[float], None] = lambda loss: None):
    """Add a rank-``rank`` LoRA to ``pipe.unet`` and train it (base weights frozen) on the
    latents of ``pictures`` (``training_scenes``: style and prior) with the base model's own
    v-prediction loss. Returns the loss curve."""
    import torch
    from peft import LoraConfig

    from darkroom.devtools.demo.generator import Curve

    unet, text_encoder, tokenizer = pipe.unet, pipe.text_encoder, pipe.tokenizer
    unet.requires_grad_(False)
    text_encoder.requires_grad_(False)
    config = LoraConfig(r=rank, lora_alpha=rank, init_lora_weights="gaussian", target_modules=list(TARGETS))
    with torch.random.fork_rng(devices=[]):
        torch.manual_seed(int(rng.integers(2**31)))
        unet.add_adapter(config, adapter_name=NAME)
    params = [p for p in unet.parameters() if p.requires_grad]
    opt = torch.optim.AdamW(params, lr=lr, weight_decay=0.0)
    means, stds = latents
    alphas = torch.cumprod(1 - torch.linspace(SCHEDULE["beta_start"], SCHEDULE["beta_end"], 1000), 0)
    gen = torch.Generator().manual_seed(int(rng.integers(2**31)))
    curve = Curve("lora")
    unet.train()
    for step in range(steps):
        for g in opt.param_groups:
            g["lr"] = lr * _cosine(step, steps, max(1, steps // 20))
        idx = rng.integers(len(means), size=batch)
        z = means[idx] + stds[idx] * torch.randn(means[idx].shape, generator=gen)
        ids = tokenizer([style_caption(pictures[i], rng) for i in idx], padding="max_length",
                        max_length=tokenizer.model_max_length, truncation=True, return_tensors="pt").input_ids
        with torch.no_grad():
            enc = text_encoder(ids)[0]
        t = torch.randint(0, 1000, (batch,), generator=gen)
        a = alphas[t].view(-1, 1, 1, 1)
        noise = torch.randn(z.shape, generator=gen)
        pred = unet(a.sqrt() * z + (1 - a).sqrt() * noise, t, enc).sample
        target = a.sqrt() * noise - (1 - a).sqrt() * z
        snr = alphas[t] / (1 - alphas[t])
        loss = (torch.clamp(snr, max=5.0) / (snr + 1) * (pred - target).pow(2).mean(dim=(1, 2, 3))).mean()
        opt.zero_grad(set_to_none=True)
        loss.backward()
        # Clipped as the base model's training is.
        torch.nn.utils.clip_grad_norm_(params, 1.0)
        opt.step()
        curve.add(step, loss.item())
        tick(loss.item())
    unet.eval()
    return config, curve


def save_lora(pipe, config, directory: Path) -> Path:
    """Write the trained adapter where ``load_lora_weights(directory)`` finds it, and take it
    off the pipeline again (the base model is saved without it)."""
    from diffusers import StableDiffusionPipeline
    from peft.utils import get_peft_model_state_dict

    layers = get_peft_model_state_dict(pipe.unet, adapter_name=NAME, save_embedding_layers=False)
    StableDiffusionPipeline.save_lora_weights(
        str(directory), unet_lora_layers=layers, weight_name=WEIGHT_NAME, safe_serialization=True,
        unet_lora_adapter_metadata=config.to_dict())
    pipe.unet.delete_adapters(NAME)
    return directory / WEIGHT_NAME


def references(n: int = 8, seed: int = 4242) -> list[np.ndarray]:
    """Renders of the style (the LoRA's kind of picture), for palette comparisons."""
    rng = np.random.default_rng(seed)
    return [scenes.render(s) for s in style_scenes(n, rng)]


def palette_distance(images: list[np.ndarray], refs: list[np.ndarray]) -> float:
    """Mean over ``images`` of the brand_palette check's distance to the nearest reference."""
    from PIL import Image

    from darkroom.qa import palette
    from darkroom.qa import palette_distance as distance

    ref_palettes = [palette(Image.fromarray(r)) for r in refs]
    return float(np.mean([min(distance(palette(Image.fromarray(img)), r) for r in ref_palettes)
                          for img in images]))


def catalogue_prompts() -> list[str]:
    """The spring campaign's wording for each of its products."""
    return [f"{cat.SPRING_STYLE} of a {p.colour} {p.material} {p.name}, {p.category}, "
            f"{cat.SPRING_COMPOSITION}, {cat.SPRING_BRAND}" for p in cat.PRODUCTS if p.in_catalogue]
