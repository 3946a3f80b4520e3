"""``darkroom models train-demo``: the whole demo-model recipe, from nothing.

1. render the training pictures and their captions (procedural: nothing is downloaded);
2. learn the tokenizer from the captions;
3. train the autoencoder, then encode every picture once;
4. train the UNet and the text encoder together on the latents;
5. save the pipeline (``save_pretrained``, float16 weights);
6. train the prompt-match classifier on the renders and measure it on fresh renders;
7. train the mint-backdrop style LoRA and measure how it moves the palette (and keeps the products);
8. draw the sample grid and loss curves, and write the model card.

Everything is seeded: the same ``seed`` and ``steps`` give the same weights on the same
machine and library versions (bit-identical only single-threaded: parallel float sums may
round differently).
"""

from __future__ import annotations

import json
import os
import platform
import shutil
import time
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from dataclasses import asdict, dataclass, field
from datetime import UTC, datetime
from pathlib import Path

import numpy as np

from darkroom.devtools.demo import captions, charts, generator, lora, scenes
from darkroom.devtools.demo import catalogue as cat
from darkroom.devtools.demo import classifier as clf

CLASSIFIER_DIR = "classifier"
LORA_DIR = f"lora/{lora.NAME}"
CARD = "README.md"
NEGATIVE = "text, watermark, logo, hands, people, blurry, low quality, oversaturated"


@dataclass(frozen=True)
class Recipe:
    """Sizes of one training run. ``for_steps`` scales every phase with the generator's steps."""

    steps: int = 2000  # generator (UNet + text encoder) optimiser steps
    seed: int = 0
    images: int = 6000  # training renders
    vae_steps: int = 1000
    classifier_steps: int = 1200
    lora_steps: int = 250
    lora_images: int = 400
    heldout: int = 600  # fresh renders the classifier is measured on
    eval_seeds: int = 2  # seeds per sample-grid prompt
    eval_steps: int = generator.RECOMMENDED["steps"]
    batch: int = 64
    threads: int = 0  # torch threads; 0: torch's default (one per core)

    @classmethod
    def for_steps(cls, steps: int, seed: int = 0, threads: int = 0) -> Recipe:
        d = cls()
        f = steps / d.steps
        # A smoke run checks that every phase runs, not what it finds: small batches, a short
        # evaluation.
        smoke = {"batch": 16, "eval_seeds": 1, "eval_steps": 2}
        def scaled(default: int, floor: int) -> int:  # step counts follow the generator's
            return max(floor, int(default * f))

        def pictures(default: int, floor: int) -> int:  # picture counts shrink more slowly
            return int(min(default, max(floor, default * f * 4)))

        return cls(steps=steps, seed=seed, threads=threads, images=pictures(d.images, 96),
                   vae_steps=scaled(d.vae_steps, 2), classifier_steps=scaled(d.classifier_steps, 2),
                   lora_steps=scaled(d.lora_steps, 2), lora_images=pictures(d.lora_images, 32),
                   heldout=pictures(d.heldout, 48), **(smoke if steps < 200 else {}))


@dataclass
class Phases:
    """Wall time, CPU time and machine load per phase: how contended the run was."""

    rows: dict = field(default_factory=dict)

    @contextmanager
    def phase(self, name: str) -> Iterator[None]:
        wall, cpu, load = time.perf_counter(), time.process_time(), os.getloadavg()[0]
        yield
        self.rows[name] = {"wall_s": round(time.perf_counter() - wall, 1),
                           "cpu_s": round(time.process_time() - cpu, 1),
                           "load_avg_1m": round((load + os.getloadavg()[0]) / 2, 2)}

    @property
    def total_wall(self) -> float:
        return round(sum(r["wall_s"] for r in self.rows.values()), 1)


def sample_prompts() -> list[tuple[str, str]]:
    """(label, prompt): every catalogue product and can in its campaign's own wording."""
    out = [(f"{p.colour} {p.name}", prompt) for p, prompt in
           zip([p for p in cat.PRODUCTS if p.in_catalogue], lora.catalogue_prompts(), strict=True)]
    for f in (f for f in cat.FLAVOURS if f.in_catalogue):
        for scene, lead in cat.SUMMER_SCENES.items():
            out.append((f"{f.title} ({f.colour}), {scene}",
                        f"{lead} of a chilled can of {f.title}, {f.flavour} flavour, condensation droplets, "
                        f"{cat.SUMMER_BRAND}"))
    return out


def train_demo(out: Path, recipe: Recipe, progress: Callable[[str, int], Callable[[float], None]]) -> dict:
    """Run the recipe into ``out`` (replaced). ``progress(phase, total)`` returns a callback
    that is called once per unit of work with the current loss (or 0)."""
    import torch

    if recipe.threads:
        torch.set_num_threads(recipe.threads)
    threads = torch.get_num_threads()
    rng = np.random.default_rng(recipe.seed)
    torch.manual_seed(recipe.seed)
    phases = Phases()
    tmp = out.with_name(f".{out.name}.partial")
    shutil.rmtree(tmp, ignore_errors=True)
    tmp.mkdir(parents=True)

    # 1. Pictures and captions.
    with phases.phase("render"):
        tick = progress("render training pictures", recipe.images)
        train_scenes = [scenes.sample_scene(rng) for _ in range(recipe.images)]
        images = np.stack([_ticked(scenes.render(s), tick) for s in train_scenes])
    # 2. Tokenizer.
    with phases.phase("tokenizer"):
        tokenizer = _train_tokenizer(train_scenes, rng, tmp / ".tokenizer")
    # 3. Autoencoder, then every picture's latent.
    with phases.phase("autoencoder"):
        vae, vae_curve = generator.train_vae(images, recipe.vae_steps, rng,
                                             tick=progress("train autoencoder", recipe.vae_steps))
        latents = generator.encode(vae, images)
    # 4. UNet + text encoder.
    with phases.phase("generator"):
        unet, text_encoder, gen_curve = generator.train_generator(
            latents, train_scenes, tokenizer, captions.caption, recipe.steps, rng, batch=recipe.batch,
            tick=progress("train UNet + text encoder", recipe.steps))
    # 5. The pipeline, as every SD checkpoint is saved.
    with phases.phase("save"):
        pipe = generator.assemble(vae, unet, text_encoder, tokenizer)
        generator.save(pipe, tmp)
        shutil.rmtree(tmp / ".tokenizer", ignore_errors=True)
        pipe.set_progress_bar_config(disable=True)
    # 6. Prompt-match classifier, on renders only.
    with phases.phase("classifier"):
        tick = progress("train prompt-match classifier", recipe.classifier_steps)
        net, vocab = clf.train_classifier(images, train_scenes, recipe.classifier_steps, rng, tick=tick)
        clf.save_classifier(net, vocab, tmp / CLASSIFIER_DIR)
        held_rng = np.random.default_rng(recipe.seed + 1_000_003)  # never the training pictures
        held_scenes = [scenes.sample_scene(held_rng) for _ in range(recipe.heldout)]
        held = np.stack([scenes.render(s) for s in held_scenes])
        from darkroom.prompt_match import PromptMatcher

        matcher = PromptMatcher(tmp / CLASSIFIER_DIR)
        classifier_accuracy = clf.accuracy(matcher, held, held_scenes)
    # 7. Style LoRA.
    with phases.phase("lora"):
        lora_file, lora_curve = _train_style_lora(pipe, rng, recipe, progress, tmp)
    # 8. Evaluate, draw, describe.
    with phases.phase("evaluate"):
        evaluation = _evaluate(tmp, matcher, lora_file, recipe)
        charts.loss_chart([vae_curve, gen_curve, lora_curve]).save(tmp / "loss.png")
    summary = {
        "trained_at": datetime.now(UTC).strftime("%Y-%m-%dT%H:%M:%SZ"),
        "recipe": asdict(recipe),
        "torch_threads": threads,
        "machine": {"cpus": os.cpu_count(), "processor": platform.processor() or platform.machine(),
                    "torch": torch.__version__},
        "phases": phases.rows,
        "wall_s": phases.total_wall,
        "final_loss": {"autoencoder": round(vae_curve.final(), 5), "generator": round(gen_curve.final(), 5),
                       "lora": round(lora_curve.final(), 5)},
        "parameters": {name: int(sum(p.numel() for p in m.parameters())) for name, m in
                       (("unet", unet), ("vae", vae), ("text_encoder", text_encoder), ("classifier", net))},
        "vocabulary": len(tokenizer),
        "classifier_heldout": classifier_accuracy,
        **evaluation,
    }
    (tmp / "training.json").write_text(json.dumps(summary, indent=2) + "\n", "utf-8")
    (tmp / CARD).write_text(model_card(summary), "utf-8")
    shutil.rmtree(out, ignore_errors=True)
    tmp.rename(out)
    return summary


def finish_demo(partial: Path, out: Path, recipe: Recipe,
                progress: Callable[[str, int], Callable[[float], None]]) -> dict:
    """Phases 6 (measure only) to 8 on a run that stopped after its classifier: the saved
    pipeline and classifier in ``partial`` are kept as they are; the classifier is measured on
    fresh renders, the style LoRA trained, the samples drawn and the card written into ``out``.
    The earlier phases' times and losses were not recorded, and the card says so."""
    import torch
    from diffusers import StableDiffusionPipeline

    from darkroom.prompt_match import PromptMatcher

    if recipe.threads:
        torch.set_num_threads(recipe.threads)
    threads = torch.get_num_threads()
    for part in ("model_index.json", CLASSIFIER_DIR):
        if not (partial / part).exists():
            raise FileNotFoundError(f"{partial / part} is missing: --resume-from needs a run that saved "
                                    "its pipeline and classifier")
    rng = np.random.default_rng(recipe.seed + 7)  # not the first run's stream: that one is spent
    torch.manual_seed(recipe.seed + 7)
    phases = Phases()
    tmp = out.with_name(f".{out.name}.partial")
    if tmp.resolve() != partial.resolve():
        shutil.rmtree(tmp, ignore_errors=True)
        shutil.copytree(partial, tmp,
                        ignore=shutil.ignore_patterns("lora", "*.png", "README.md", "training.json"))
    with phases.phase("classifier (measured)"):
        matcher = PromptMatcher(tmp / CLASSIFIER_DIR)
        held_rng = np.random.default_rng(recipe.seed + 1_000_003)
        held_scenes = [scenes.sample_scene(held_rng) for _ in range(recipe.heldout)]
        held = np.stack([scenes.render(s) for s in held_scenes])
        classifier_accuracy = clf.accuracy(matcher, held, held_scenes)
    with phases.phase("lora"):
        pipe = StableDiffusionPipeline.from_pretrained(str(tmp), dtype=torch.float32)
        pipe.set_progress_bar_config(disable=True)
        lora_file, lora_curve = _train_style_lora(pipe, rng, recipe, progress, tmp)
    with phases.phase("evaluate"):
        evaluation = _evaluate(tmp, matcher, lora_file, recipe)
        charts.loss_chart([lora_curve]).save(tmp / "loss.png")
    net_params = sum(int(np.prod(t.shape)) for t in _tensors(tmp / CLASSIFIER_DIR / "model.safetensors"))
    summary = {
        "trained_at": datetime.now(UTC).strftime("%Y-%m-%dT%H:%M:%SZ"),
        "recipe": asdict(recipe),
        "resumed_from": str(partial),
        "torch_threads": threads,
        "machine": {"cpus": os.cpu_count(), "processor": platform.processor() or platform.machine(),
                    "torch": torch.__version__},
        "phases": phases.rows,
        "wall_s": phases.total_wall,
        "final_loss": {"autoencoder": None, "generator": None, "lora": round(lora_curve.final(), 5)},
        "parameters": {"unet": _count(pipe.unet), "vae": _count(pipe.vae),
                       "text_encoder": _count(pipe.text_encoder), "classifier": net_params},
        "vocabulary": len(pipe.tokenizer),
        "classifier_heldout": classifier_accuracy,
        **evaluation,
    }
    (tmp / "training.json").write_text(json.dumps(summary, indent=2) + "\n", "utf-8")
    (tmp / CARD).write_text(model_card(summary), "utf-8")
    if tmp.resolve() != out.resolve():
        shutil.rmtree(out, ignore_errors=True)
        tmp.rename(out)
    return summary


def retrain_lora(folder: Path, recipe: Recipe,
                 progress: Callable[[str, int], Callable[[float], None]]) -> dict:
    """Phase 7 alone on a finished demo model: train the style LoRA again on the pipeline saved
    in ``folder`` (kept as it is), replace ``lora/``, redraw ``lora/samples.png`` and rewrite
    the ``lora`` part of ``training.json``. The model card is left for a person to update: its
    hand-written measurements stay."""
    import torch
    from diffusers import StableDiffusionPipeline

    if recipe.threads:
        torch.set_num_threads(recipe.threads)
    if not (folder / "model_index.json").exists():
        raise FileNotFoundError(f"{folder / 'model_index.json'} is missing: --lora-only needs a saved "
                                "demo model")
    rng = np.random.default_rng(recipe.seed + 11)  # neither the first run's stream nor the resumed one's
    torch.manual_seed(recipe.seed + 11)
    started = time.perf_counter()
    pipe = StableDiffusionPipeline.from_pretrained(str(folder), dtype=torch.float32)
    pipe.set_progress_bar_config(disable=True)
    shutil.rmtree(folder / "lora", ignore_errors=True)
    lora_file, curve = _train_style_lora(pipe, rng, recipe, progress, folder)
    trained_s = round(time.perf_counter() - started, 1)
    measured = _measure_lora(pipe, lora.catalogue_prompts()[:12], lora_file, recipe, folder)
    summary = json.loads((folder / "training.json").read_text("utf-8"))
    summary["lora"] = {**measured, "retrained_at": datetime.now(UTC).strftime("%Y-%m-%dT%H:%M:%SZ"),
                       "retrained_alone": True, "steps": recipe.lora_steps, "images": recipe.lora_images,
                       "prior_images": recipe.lora_images, "wall_s": trained_s,
                       "load_avg_1m": round(os.getloadavg()[0], 2), "torch_threads": torch.get_num_threads(),
                       "final_loss": round(curve.final(), 5)}
    (folder / "training.json").write_text(json.dumps(summary, indent=2) + "\n", "utf-8")
    return summary


def _train_style_lora(pipe, rng, recipe: Recipe, progress, folder: Path):
    """Train the style LoRA on ``pipe`` (style renders mixed half and half with the base model's
    own kind of pictures) and save it under ``folder``."""
    pictures = lora.training_scenes(recipe.lora_images, rng)
    latents = generator.encode(pipe.vae, np.stack([scenes.render(s) for s in pictures]))
    config, curve = lora.train_lora(pipe, latents, pictures, recipe.lora_steps, rng,
                                    tick=progress("train style LoRA", recipe.lora_steps))
    return lora.save_lora(pipe, config, folder / LORA_DIR), curve


def _loss(value) -> str:
    return "not recorded" if value is None else str(value)


def _count(module) -> int:
    return int(sum(p.numel() for p in module.parameters()))


def _tensors(path: Path):
    from safetensors import safe_open

    with safe_open(str(path), "np") as f:
        return [f.get_tensor(k) for k in f.keys()]


def _ticked(value, tick):
    tick(0.0)
    return value


def _train_tokenizer(train_scenes, rng, directory: Path):
    from darkroom.devtools.demo.tokenizer import train_tokenizer

    return train_tokenizer(captions.corpus(train_scenes, rng), directory)


def _evaluate(folder: Path, matcher, lora_file: Path, recipe: Recipe) -> dict:
    """Reload the saved pipeline the way Darkroom does, draw the sample grid, read it back
    with the classifier, and measure the LoRA's palette shift."""
    import torch
    from diffusers import AutoPipelineForText2Image

    pipe = AutoPipelineForText2Image.from_pretrained(str(folder), dtype=torch.float32)
    pipe.set_progress_bar_config(disable=True)
    labelled = sample_prompts()
    prompts = [p for _, p in labelled]
    rec = {**generator.RECOMMENDED, "steps": recipe.eval_steps}
    images, labels, seconds = [], [], []
    for seed in range(1, recipe.eval_seeds + 1):
        imgs, sec = generator.generate(pipe, prompts, [seed * 1000 + i for i in range(len(prompts))],
                                       steps=rec["steps"], guidance=rec["guidance"], negative=NEGATIVE)
        images += imgs
        labels += [label for label, _ in labelled]
        seconds.append(sec)
    matches = matcher.match_many(prompts * recipe.eval_seeds, images)
    charts.labelled_grid(images, labels, columns=10).save(folder / "samples.png")
    pixels = np.stack(images).astype(np.float32)
    lora_measured = _measure_lora(pipe, prompts[:12 if recipe.eval_seeds > 1 else 2], lora_file, recipe,
                                  folder, matcher)
    return {
        "samples": {
            "prompts": len(images),
            "read_back": {"type": _share(m.read["type"][0] == m.asked["type"] for m in matches),
                          "colour": _share(m.read["colour"][0] == m.asked["colour"] for m in matches),
                          "both": _share(m.matched for m in matches)},
            "seconds_per_image": round(float(np.mean(seconds)), 4),
            "pixels": {"mean": round(float(pixels.mean()), 1), "std": round(float(pixels.std()), 1),
                       "nan": bool(np.isnan(pixels).any())},
            **rec,
        },
        "lora": lora_measured,
    }


def _measure_lora(pipe, prompts: list[str], lora_file: Path, recipe: Recipe, folder: Path,
                  matcher=None) -> dict:
    """The same prompts and seeds with and without the LoRA: palette distance to the style's
    renders, how often the classifier still reads the asked product type, and
    ``lora/samples.png``. Leaves the LoRA loaded and on."""
    from darkroom.prompt_match import PromptMatcher

    matcher = matcher or PromptMatcher(folder / CLASSIFIER_DIR)
    rec = {**generator.RECOMMENDED, "steps": recipe.eval_steps}
    seeds = [7000 + i for i in range(len(prompts))]
    base, _ = generator.generate(pipe, prompts, seeds, steps=rec["steps"], guidance=rec["guidance"],
                                 negative=NEGATIVE)
    pipe.load_lora_weights(str(lora_file.parent), weight_name=lora_file.name, adapter_name=lora.NAME)
    styled, _ = generator.generate(pipe, prompts, seeds, steps=rec["steps"], guidance=rec["guidance"],
                                   negative=NEGATIVE)
    refs = lora.references()
    k = min(6, len(base))
    charts.labelled_grid(base[:k] + styled[:k], ["base"] * k + ["+ LoRA"] * k, columns=k).save(
        folder / "lora" / "samples.png")

    def types(images) -> float:
        return _share(m.read["type"][0] == m.asked["type"] for m in matcher.match_many(prompts, images))

    return {"name": lora.NAME, "style": lora.STYLE,
            "palette_distance_base": round(lora.palette_distance(base, refs), 2),
            "palette_distance_lora": round(lora.palette_distance(styled, refs), 2),
            "type_read_back_base": types(base), "type_read_back_lora": types(styled)}


def _share(flags) -> float:
    flags = list(flags)
    return round(float(np.mean(flags)), 4) if flags else 0.0


def model_card(s: dict) -> str:
    """The model card: data, recipe, seed, steps, time, losses, figures, limits."""
    r, ph, ev, c = s["recipe"], s["phases"], s["samples"], s["classifier_heldout"]
    params = s["parameters"]
    loads = [row["load_avg_1m"] for row in ph.values()]
    cpu = sum(row["cpu_s"] for row in ph.values())
    phase_rows = "\n".join(f"| {name} | {row['wall_s']} | {row['cpu_s']} | {row['load_avg_1m']} |"
                           for name, row in ph.items())
    lo = s["lora"]
    resumed = (
        "**This run was finished in two parts.** The autoencoder, UNet, text encoder and classifier "
        "come from a full-recipe run that stopped after saving them (before the style LoRA); its "
        "times and loss curves were not recorded, so the table above times only the second part "
        "(`--resume-from`): the classifier's measurement, the style LoRA, the evaluation.\n\n"
        if s.get("resumed_from") else "")
    parts = "\n".join("| " + " | ".join(row) + " |" for row in (
        ("tokenizer", f"{s['vocabulary']} tokens, byte-level BPE learnt from the captions; 77 long", "—"),
        ("autoencoder", f"{params['vae'] / 1e6:.2f}M parameters, 64 px <-> 16x16x4",
         f"{r['vae_steps']} steps on 32 px crops, L1 + L2 + edge + colour + 1e-6 KL"),
        ("UNet", f"{params['unet'] / 1e6:.2f}M parameters, channels (32, 64, 128), cross-attention 8x8, 4x4",
         f"{r['steps']} steps, batch {r['batch']}, v-prediction, min-SNR-5, AdamW 8e-4 cosine, EMA 0.998"),
        ("text encoder", f"{params['text_encoder'] / 1e6:.2f}M parameters, 3 layers, 128 wide",
         "jointly with the UNet"),
        ("classifier", f"{params['classifier'] / 1e6:.2f}M parameters, `classifier/`",
         f"{r['classifier_steps']} steps on the renders"),
        ("style LoRA", f"rank 8, `lora/{lo['name']}/`",
         f"{r['lora_steps']} steps, batch 32, AdamW 2e-3 cosine, on {r['lora_images']} style renders + "
         f"{r['lora_images']} prior renders"),
    ))
    return f"""# darkroom-demo: a small text-to-image model trained by Darkroom itself

A Stable Diffusion pipeline (`StableDiffusionPipeline`: `AutoencoderKL`, `UNet2DConditionModel`,
`CLIPTextModel`, `CLIPTokenizer`, `DDIMScheduler`) small enough to train on a laptop CPU, so that
Darkroom's demo, QA and review have products to look at instead of noise. It loads through the
same `from_pretrained` code as any SD 1.x checkpoint: `generation.model: demo`.

![samples](samples.png)

*Sample grid: every product of `spring_tiles` and every can of `summer_social`, in their
campaigns' own prompt wording, {r['eval_seeds']} seed(s) each ({ev['steps']} {ev['scheduler']} steps, guidance
{ev['guidance']}, negative prompt "{NEGATIVE}").*

## Use

```yaml
generation:
  model: demo        # include/models/darkroom-demo, or $DARKROOM_DEMO_MODEL
  scheduler: {ev['scheduler']}    # any of ddim, euler, euler_a, dpmpp_2m, pndm, lms
  steps: {ev['steps']}
  guidance: {ev['guidance']}
  width: 64
  height: 64
```

Recommended: **{ev['scheduler']}, {ev['steps']} steps, guidance {ev['guidance']}, 64x64** —
{ev['seconds_per_image']} s per image on this machine's CPU (with guidance: two UNet passes per step).
The UNet predicts `v` on DDPM's linear noise schedule with `trailing` timestep spacing, so
every DDPM-family scheduler reads the same schedule and the first step starts from pure noise.

## Data

{r['images']} procedural renders (`darkroom.devtools.demo.scenes`, numpy + Pillow, seeded): the
catalogues' products (and two extras, teapot and tumbler) as shaded solids — Lambert light,
specular highlights by material (glossy porcelain, matte stoneware, earthenware, terracotta,
brushed-metal cans), lit inner walls, soft contact shadows — on the prompts' settings: a
studio sweep (warm neutral, white, light grey, pastel) in soft daylight, a beach picnic on a
gingham blanket in hard sun, an overhead flat lay on a pastel table. Each product appears in
every colour ({len(cat.COLOURS)} colours), most often in its catalogue colour. Captions
(`captions.py`) are the campaigns' own template wording, varied per training step: reordered and
dropped phrases, synonyms, filler words the picture does not show, 10% empty captions
(classifier-free guidance) and 4% negative-prompt words. **Nothing was downloaded.**

## Recipe

`darkroom models train-demo --steps {r['steps']} --seed {r['seed']}` (`darkroom.devtools.demo.recipe`):

| part | size | training |
| --- | --- | --- |
{parts}

Seed {r['seed']}. Weights are stored as float16 safetensors and load as float32 on CPUs.

## Training run

Trained {s['trained_at']} on {s['machine']['cpus']} CPU cores ({s['machine']['processor']}), torch
{s['machine']['torch']}, {s['torch_threads']} torch thread(s): **{s['wall_s']} s wall** ({cpu:.0f} s CPU). The
machine was shared with other jobs: the 1-minute load average during the phases was
{min(loads):.1f}-{max(loads):.1f} on {s['machine']['cpus']} cores, so an idle machine is faster.

| phase | wall s | CPU s | load avg |
| --- | --- | --- | --- |
{phase_rows}

{resumed}Final losses (mean of the last 50 steps): autoencoder {_loss(s['final_loss']['autoencoder'])},
generator {_loss(s['final_loss']['generator'])}, LoRA {_loss(s['final_loss']['lora'])}.

![loss curves](loss.png)

## Measured

- Sample pixels: mean {ev['pixels']['mean']}, std {ev['pixels']['std']} (0-255), NaN: {ev['pixels']['nan']}.
- The classifier reads back the asked type for {ev['read_back']['type']:.0%}, the asked colour for
  {ev['read_back']['colour']:.0%} and both for {ev['read_back']['both']:.0%} of the {ev['prompts']} sample
  pictures (`darkroom bench demo-model` measures more prompts, and the random tiny model beside it).
- Classifier on {c['images']} fresh renders (other seeds than its training pictures): type
  {c['type']:.1%}, colour {c['colour']:.1%}, both {c['both']:.1%}.
- Style LoRA ({lo['style']} backdrop): palette distance (the brand_palette check's) of 12
  campaign prompts' pictures to the style's renders {lo['palette_distance_base']} without,
  {lo['palette_distance_lora']} with it; the classifier reads the asked product type for
  {lo['type_read_back_base']:.0%} without, {lo['type_read_back_lora']:.0%} with it.
  `lora/samples.png`: base (top) and with the LoRA (bottom).

## Known limits

- 64x64 pixels, and it only knows what the renderer draws: the catalogues' products, twenty
  colours, three settings. Other words are ignored (their bytes encode, but mean nothing to it);
  a prompt about something else still gives one of these products.
- Colour neighbours (terracotta / rust / ochre, sand / cream / chalk white, charcoal / slate
  grey / ink blue) are sometimes swapped; shapes soften below ~8 steps.
- No people, text or logos; no image-to-image or inpainting training (the pipelines load, but
  were not trained for it). No IP-Adapter: an image encoder was out of this CPU budget.
- The style LoRA's backdrop is a light mint: the autoencoder never saw a dark backdrop and drew
  a forest-green one as teal streaks, and so did every LoRA fitted to its latents.
- Made for Darkroom's demo and tests, not for publishing.
"""


def run_cli(out: Path, *, steps: int | None, seed: int, threads: int, console,
            resume_from: Path | None = None, lora_only: bool = False) -> dict:
    """``darkroom models train-demo``: the recipe with a progress bar per phase."""
    from rich.progress import BarColumn, MofNCompleteColumn, Progress, TextColumn, TimeElapsedColumn

    recipe = Recipe.for_steps(steps, seed, threads) if steps else Recipe(seed=seed, threads=threads)
    columns = (TextColumn("{task.description:<32}"), BarColumn(), MofNCompleteColumn(),
               TextColumn("loss {task.fields[loss]:.4f}"), TimeElapsedColumn())
    with Progress(*columns, console=console) as bar:
        def progress(name: str, total: int) -> Callable[[float], None]:
            task = bar.add_task(name, total=total, loss=0.0)
            return lambda loss: bar.update(task, advance=1, loss=loss)

        if lora_only:
            summary = retrain_lora(Path(out), recipe, progress)
        else:
            summary = (finish_demo(Path(resume_from), Path(out), recipe, progress) if resume_from
                       else train_demo(Path(out), recipe, progress))
    if lora_only:
        lo = summary["lora"]
        console.print(f"Retrained the style LoRA in {Path(out) / LORA_DIR} in {lo['wall_s']} s: "
                      f"palette distance to the style {lo['palette_distance_base']} -> "
                      f"{lo['palette_distance_lora']}, product type read back "
                      f"{lo['type_read_back_base']:.0%} -> {lo['type_read_back_lora']:.0%}")
        return summary
    back, c = summary["samples"]["read_back"], summary["classifier_heldout"]
    console.print(f"Trained the demo model into {out} in {summary['wall_s']} s: generator loss "
                  f"{_loss(summary['final_loss']['generator'])}, samples read back as asked "
                  f"{back['both']:.0%} "
                  f"(type {back['type']:.0%}, colour {back['colour']:.0%}), classifier on "
                  f"fresh renders {c['both']:.0%}; see {Path(out) / CARD}")
    return summary
