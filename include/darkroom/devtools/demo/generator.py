"""The demo text-to-image model: a small Stable Diffusion pipeline trained on the renders.

Three parts, all standard diffusers / transformers classes so that the saved folder loads
through ``AutoPipelineForText2Image.from_pretrained`` like any SD 1.x checkpoint:

* ``AutoencoderKL``: 64 px pictures <-> 16x16x4 latents (scale factor 4). Fully
  convolutional (no mid-block attention), so it trains on 32 px crops, a quarter of the cost.
* ``UNet2DConditionModel`` on the latents, cross-attention at 8x8 and 4x4.
* ``CLIPTextModel`` (3 layers, 128 wide) trained jointly with the UNet, over a tokenizer
  learnt from the captions (``tokenizer.py``).

The noise schedule is DDPM's linear betas: their last step is pure noise (signal-to-noise
4e-5), so sampling from pure noise matches training, and every DDPM-family scheduler reads
the same betas (zero-terminal-SNR rescaling would not carry over to PNDM or LMS). The UNet
predicts ``v`` (stable at the noisiest steps, where few-step samplers spend their first
step), and ``trailing`` timestep spacing makes the first step start at t=999.
"""

from __future__ import annotations

import math
import time
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np

SCHEDULE = dict(num_train_timesteps=1000, beta_schedule="linear", beta_start=0.0001, beta_end=0.02,
                prediction_type="v_prediction", timestep_spacing="trailing", clip_sample=False)
RECOMMENDED = {"scheduler": "ddim", "steps": 20, "guidance": 5.0}
TEXT_WIDTH = 128


def vae_model():
    from diffusers import AutoencoderKL

    return AutoencoderKL(
        in_channels=3, out_channels=3, latent_channels=4,
        down_block_types=("DownEncoderBlock2D",) * 3, up_block_types=("UpDecoderBlock2D",) * 3,
        block_out_channels=(32, 64, 64), layers_per_block=1, norm_num_groups=16, sample_size=64,
        mid_block_add_attention=False,
    )


def unet_model():
    from diffusers import UNet2DConditionModel

    return UNet2DConditionModel(
        sample_size=16, in_channels=4, out_channels=4,
        down_block_types=("DownBlock2D", "CrossAttnDownBlock2D", "CrossAttnDownBlock2D"),
        up_block_types=("CrossAttnUpBlock2D", "CrossAttnUpBlock2D", "UpBlock2D"),
        block_out_channels=(32, 64, 128), layers_per_block=1, attention_head_dim=4,
        cross_attention_dim=TEXT_WIDTH, norm_num_groups=16,
    )


def text_encoder_model(tokenizer):
    from transformers import CLIPTextConfig, CLIPTextModel

    return CLIPTextModel(CLIPTextConfig(
        vocab_size=len(tokenizer), hidden_size=TEXT_WIDTH, intermediate_size=2 * TEXT_WIDTH,
        num_hidden_layers=3, num_attention_heads=4, max_position_embeddings=tokenizer.model_max_length,
        bos_token_id=tokenizer.bos_token_id, eos_token_id=tokenizer.eos_token_id,
        pad_token_id=tokenizer.pad_token_id, hidden_act="gelu",
    ))


def scheduler():
    from diffusers import DDIMScheduler

    # set_alpha_to_one: the last DDIM step lands on the clean picture. steps_offset only shifts
    # "leading" spacing; 1 is what diffusers expects of SD configs (0 draws a deprecation warning).
    return DDIMScheduler(**SCHEDULE, set_alpha_to_one=True, steps_offset=1)  # offset: unused when trailing


def to_tensor(images: np.ndarray):
    """uint8 (N, H, W, 3) -> float (N, 3, H, W) in -1..1."""
    import torch

    return torch.from_numpy(images).permute(0, 3, 1, 2).float().div(127.5).sub(1)


@dataclass
class Curve:
    """A loss curve: (step, loss) pairs, smoothed for the chart."""

    name: str
    points: list[tuple[int, float]] = field(default_factory=list)

    def add(self, step: int, loss: float) -> None:
        self.points.append((step, loss))

    def final(self, last: int = 50) -> float:
        tail = [v for _, v in self.points[-last:]]
        return float(np.mean(tail)) if tail else float("nan")


def _cosine(step: int, total: int, warmup: int) -> float:
    if step < warmup:
        return (step + 1) / warmup
    return 0.1 + 0.9 * 0.5 * (1 + math.cos(math.pi * (step - warmup) / max(1, total - warmup)))


def train_vae(images: np.ndarray, steps: int, rng: np.random.Generator, *, batch: int = 32,
              crop: int = 32, lr: float = 2e-3, tick: Callable[[float], None] = lambda loss: None):
    """Train the autoencoder on random crops: L1 + squared error + an edge term (keeps
    outlines crisp), a tiny KL term (keeps the latent a distribution), and two colour terms:
    the reconstruction's 4x4 block means must match the picture's, and the first three latent
    channels are pulled toward those block means. The second is a shortcut that makes colour
    come through in hundreds of steps instead of thousands, and leaves the UNet a latent whose
    colour it can read. Returns the VAE, its scaling factor set (1 / latent std, as SD's
    0.18215) and the loss curve."""
    import torch
    import torch.nn.functional as F

    vae = vae_model()
    opt = torch.optim.AdamW(vae.parameters(), lr=lr, weight_decay=0.0)
    curve = Curve("autoencoder")
    n, size = len(images), images.shape[1]
    for step in range(steps):
        for g in opt.param_groups:
            g["lr"] = lr * _cosine(step, steps, max(1, min(20, steps // 10)))
        idx = rng.integers(n, size=batch)
        y0, x0 = rng.integers(0, size - crop + 1, size=2)
        x = to_tensor(images[idx][:, y0:y0 + crop, x0:x0 + crop])
        if rng.random() < 0.5:
            x = x.flip(3)
        post = vae.encode(x).latent_dist
        rec = vae.decode(post.sample()).sample
        edge = ((rec[..., 1:, :] - rec[..., :-1, :]) - (x[..., 1:, :] - x[..., :-1, :])).abs().mean() + \
               ((rec[..., 1:] - rec[..., :-1]) - (x[..., 1:] - x[..., :-1])).abs().mean()
        blocks = F.avg_pool2d(x, 4)
        colour = 2 * (F.avg_pool2d(rec, 4) - blocks).pow(2).mean() + (post.mean[:, :3] - blocks).pow(2).mean()
        pixels = (rec - x).abs().mean() + (rec - x).pow(2).mean() + 0.5 * edge
        loss = pixels + colour + 1e-6 * post.kl().mean()
        opt.zero_grad(set_to_none=True)
        loss.backward()
        torch.nn.utils.clip_grad_norm_(vae.parameters(), 1.0)
        opt.step()
        curve.add(step, loss.item())
        tick(loss.item())
    vae.eval()
    with torch.no_grad():
        sample = to_tensor(images[rng.integers(n, size=min(n, 256))])
        std = float(vae.encode(sample).latent_dist.mean.std())
    vae.register_to_config(scaling_factor=1.0 / std)
    return vae, curve


def encode(vae, images: np.ndarray, batch: int = 128):
    """Latent means and standard deviations of every picture, already scaled."""
    import torch

    means, stds = [], []
    with torch.no_grad():
        for i in range(0, len(images), batch):
            dist = vae.encode(to_tensor(images[i:i + batch])).latent_dist
            means.append(dist.mean)
            stds.append(dist.std)
    s = vae.config.scaling_factor
    return torch.cat(means) * s, torch.cat(stds) * s


class _EMA:
    """Exponential moving average of a model's weights; sampling uses the average."""

    def __init__(self, models, decay: float):
        import torch

        self.decay = decay
        self.params = [p for m in models for p in m.parameters()]
        self.shadow = [p.detach().clone() for p in self.params]
        self._torch = torch

    def update(self, step: int) -> None:
        d = min(self.decay, (1 + step) / (10 + step))
        with self._torch.no_grad():
            for s, p in zip(self.shadow, self.params, strict=True):
                s.mul_(d).add_(p.detach(), alpha=1 - d)

    def copy_to_models(self) -> None:
        with self._torch.no_grad():
            for s, p in zip(self.shadow, self.params, strict=True):
                p.copy_(s)


def train_generator(latents, scenes, tokenizer, caption, steps: int, rng: np.random.Generator, *,
                    batch: int = 64, lr: float = 8e-4, tick: Callable[[float], None] = lambda loss: None):
    """Train UNet + text encoder jointly on (latent, fresh caption) pairs with the v-prediction
    loss, min-SNR-5 weighted (the noisiest and cleanest steps do not dominate). Returns the
    EMA weights' UNet and text encoder, and the loss curve."""
    import torch

    means, stds = latents
    unet, text_encoder = unet_model(), text_encoder_model(tokenizer)
    params = list(unet.parameters()) + list(text_encoder.parameters())
    opt = torch.optim.AdamW(params, lr=lr, weight_decay=1e-2)
    ema = _EMA([unet, text_encoder], decay=0.998)
    alphas = torch.cumprod(1 - torch.linspace(SCHEDULE["beta_start"], SCHEDULE["beta_end"], 1000), 0)
    gen = torch.Generator().manual_seed(int(rng.integers(2**31)))
    curve = Curve("generator")
    n = len(means)
    for step in range(steps):
        for g in opt.param_groups:
            g["lr"] = lr * _cosine(step, steps, max(1, steps // 25))
        idx = rng.integers(n, size=batch)
        z = means[idx] + stds[idx] * torch.randn(means[idx].shape, generator=gen)
        flip = torch.from_numpy(rng.random(batch) < 0.5)
        z = torch.where(flip[:, None, None, None], z.flip(3), z)
        ids = tokenizer([caption(scenes[i], rng) for i in idx], padding="max_length",
                        max_length=tokenizer.model_max_length, truncation=True, return_tensors="pt").input_ids
        t = torch.randint(0, 1000, (batch,), generator=gen)
        a = alphas[t].view(-1, 1, 1, 1)
        noise = torch.randn(z.shape, generator=gen)
        noisy = a.sqrt() * z + (1 - a).sqrt() * noise
        target = a.sqrt() * noise - (1 - a).sqrt() * z
        pred = unet(noisy, t, text_encoder(ids)[0]).sample
        snr = alphas[t] / (1 - alphas[t])
        weight = torch.clamp(snr, max=5.0) / (snr + 1)
        loss = (weight * (pred - target).pow(2).mean(dim=(1, 2, 3))).mean()
        opt.zero_grad(set_to_none=True)
        loss.backward()
        torch.nn.utils.clip_grad_norm_(params, 1.0)
        opt.step()
        ema.update(step)
        curve.add(step, loss.item())
        tick(loss.item())
    ema.copy_to_models()
    unet.eval()
    text_encoder.eval()
    return unet, text_encoder, curve


def assemble(vae, unet, text_encoder, tokenizer):
    from diffusers import StableDiffusionPipeline

    return StableDiffusionPipeline(
        vae=vae, text_encoder=text_encoder, tokenizer=tokenizer, unet=unet, scheduler=scheduler(),
        safety_checker=None, feature_extractor=None, requires_safety_checker=False,
    )


def save(pipe, path: Path, *, half: bool = True) -> None:
    """``save_pretrained`` with float16 weights (half the size; loaded back as float32 on CPUs,
    which ``from_pretrained(dtype=torch.float32)`` does)."""
    import torch

    if half:
        pipe = pipe.to(torch.float16)
    # Shards of at most 4 MB: the weights live in git, where files over 5 MB are refused;
    # from_pretrained reads the shard index the same way a hub checkpoint's.
    pipe.save_pretrained(str(path), safe_serialization=True, max_shard_size="4MB")
    if half:
        pipe.to(torch.float32)


def generate(pipe, prompts: list[str], seeds: list[int], *, steps: int, guidance: float,
             negative: str | list[str] | None = None, size: int = 64) -> tuple[list[np.ndarray], float]:
    """Pictures for ``prompts`` (one seeded generator each), and the seconds per picture."""
    import torch

    latents = torch.stack([torch.randn((4, size // 4, size // 4), generator=torch.Generator().manual_seed(s))
                           for s in seeds])
    started = time.perf_counter()
    with torch.inference_mode():
        out = pipe(prompt=prompts, negative_prompt=negative if negative is None or isinstance(negative, list)
                   else [negative] * len(prompts), latents=latents, num_inference_steps=steps,
                   guidance_scale=guidance, height=size, width=size, output_type="np")
    seconds = (time.perf_counter() - started) / len(prompts)
    return [np.clip(img * 255 + 0.5, 0, 255).astype(np.uint8) for img in out.images], seconds
