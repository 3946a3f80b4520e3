"""What differs between model families when Darkroom drives a diffusers pipeline.

Families: ``sd`` (Stable Diffusion 1.x/2.x), ``sdxl``, ``sd3``, ``flux``. They differ in
the shape of the initial latents (Flux packs them), the dtype that is safe on a GPU (SD3's
and Flux's activations overflow float16), how a negative prompt and the guidance number
reach the model, and which schedulers can step them (SD3 and Flux are flow-matching
models). Everything else (prompts, steps, sizes, output) is the same call.

No torch here (dtypes are named, ``"float16"``; darkroom.generation.local turns a name into
a ``torch.dtype``), so the spec's checks, the CLI and the stages can use these tables.
"""

from __future__ import annotations

from typing import Any

from darkroom.errors import ModelError

FAMILIES = ("sd", "sdxl", "sd3", "flux")

# Pipeline class name prefixes, most specific first: "StableDiffusionXL..." also starts
# with "StableDiffusion". A prefix covers a family's img2img, inpaint and ControlNet
# pipelines too, which take the same latents.
_CLASS_PREFIXES = (
    ("StableDiffusionXL", "sdxl"),
    ("StableDiffusion3", "sd3"),
    ("Flux", "flux"),
    ("StableDiffusion", "sd"),
)

# Flow-matching families are stepped along a straight noise-to-image path; the DDPM-family
# schedulers (DDIM, PNDM, LMS, ...) assume a different noise schedule and give garbage.
FLOW_MATCHING = frozenset({"sd3", "flux"})


def family_of_class_name(name: str) -> str:
    """The family of a pipeline class name, e.g. model_index.json's ``_class_name`` (read
    before loading: the dtype depends on the family)."""
    for prefix, family in _CLASS_PREFIXES:
        if name.startswith(prefix):
            return family
    raise ModelError(f"{name or 'a pipeline without _class_name'} is not a pipeline family Darkroom "
                     "can drive; fix: use a Stable Diffusion 1.x/2.x, SDXL, SD3 or Flux model")


def family_of(pipe: Any) -> str:
    """``sd``, ``sdxl``, ``sd3`` or ``flux``, from the pipeline's class (or a base class)."""
    for cls in type(pipe).__mro__:
        for prefix, family in _CLASS_PREFIXES:
            if cls.__name__.startswith(prefix):
                return family
    raise ModelError(
        f"{type(pipe).__name__} is not a pipeline family Darkroom can drive; fix: use a "
        "Stable Diffusion 1.x/2.x, SDXL, SD3 or Flux model as generation.model")


def _check_family(family: str) -> None:
    if family not in FAMILIES:
        raise ValueError(f"family={family!r} is unknown; fix: use one of {', '.join(FAMILIES)}")


def default_dtype(family: str, device: Any) -> str:
    """The dtype to run ``family`` in on ``device`` ("cuda", "cuda:1", "mps", "cpu" or a
    ``torch.device``), by name.

    - cuda: bfloat16 for SD3 and Flux, whose T5 encoder and transformer activations exceed
      float16's 65,504 and turn into NaN (black pictures); float16 for SD and SDXL, which
      were trained and are published in it (SDXL's VAE decodes in float32 by its config);
    - mps: float16 (bfloat16 needs macOS 14 and is slower there);
    - cpu: float32 (half-precision matrix products are slow or missing on most CPUs).
    """
    _check_family(family)
    kind = getattr(device, "type", None) or str(device).split(":", 1)[0]
    if kind == "cuda":
        return "bfloat16" if family in ("sd3", "flux") else "float16"
    if kind == "mps":
        return "float16"
    if kind == "cpu":
        return "float32"
    raise ValueError(f"device={device!r} has no default dtype; fix: use cuda, mps or cpu, "
                     "or name the dtype (float16, bfloat16, float32)")


_DTYPES = {"float16": "float16", "fp16": "float16", "half": "float16",
           "bfloat16": "bfloat16", "bf16": "bfloat16",
           "float32": "float32", "fp32": "float32", "float": "float32"}


def parse_dtype(name: str) -> str | None:
    """A dtype's canonical name (``fp16`` -> ``float16``); ``None`` for "auto" (then
    ``default_dtype``)."""
    key = str(name).strip().lower()
    if key == "auto":
        return None
    if key not in _DTYPES:
        raise ValueError(f"dtype {name!r} is unknown; fix: use auto, float16, bfloat16 or float32")
    return _DTYPES[key]


def resolve_dtype(name: str, family: str, device: Any) -> str:
    """``parse_dtype(name)``, with "auto" meaning ``default_dtype(family, device)``."""
    return parse_dtype(name) or default_dtype(family, device)


def latent_shape(pipe: Any, height: int, width: int, family: str | None = None) -> tuple[int, int, int]:
    """One variant's initial noise, (channels, rows, columns), *before* Flux's packing.

    The pipelines compute the same numbers in their ``prepare_latents``; they are repeated
    here because the latents are drawn outside the pipeline, one seeded generator per
    variant, so that a variant's pixels do not depend on its batch.
    """
    family = family or family_of(pipe)
    scale = pipe.vae_scale_factor
    if family == "flux":
        # 2x2 patches: the latent grid must be even, and the transformer's input channels
        # are four latent channels' worth.
        multiple = scale * 2
        channels = pipe.transformer.config.in_channels // 4
    elif family == "sd3":
        multiple = scale * pipe.transformer.config.patch_size
        channels = pipe.transformer.config.in_channels
    else:
        multiple = scale
        channels = pipe.unet.config.in_channels
    for field, value in (("height", height), ("width", width)):
        if value <= 0 or value % multiple:
            raise ModelError(
                f"generation.{field} = {value} does not fit this {family} model: it must be a "
                f"positive multiple of {multiple}; fix: use {max(multiple, value // multiple * multiple)}")
    if family == "flux":
        return channels, 2 * (height // multiple), 2 * (width // multiple)
    return channels, height // scale, width // scale


def takes_negative_prompt(family: str) -> bool:
    """Whether ``negative_prompt`` changes the picture with ``pipeline_kwargs``' settings.

    Flux is guidance-distilled: FLUX.1-dev reads the guidance number as an input and runs
    one pass per step; a negative prompt needs ``true_cfg_scale > 1``, a second pass per
    step the model was not trained for. Callers record the negative prompt as unused for
    Flux, instead of letting an asset claim one that had no effect.
    """
    _check_family(family)
    return family != "flux"


def pipeline_kwargs(family: str, *, guidance: float, negative_prompts: list[str] | None) -> dict:
    """The family-specific keyword arguments of a text-to-image call.

    SD, SDXL and SD3 use classifier-free guidance: ``guidance_scale`` weighs the prompt
    against the negative prompt (two passes per step when > 1). Flux takes
    ``guidance_scale`` as the distilled guidance embedding (FLUX.1-dev; FLUX.1-schnell
    ignores it) and no negative prompt (see ``takes_negative_prompt``).
    """
    _check_family(family)
    kwargs: dict[str, Any] = {"guidance_scale": guidance}
    if takes_negative_prompt(family):
        kwargs["negative_prompt"] = negative_prompts
    return kwargs


def check_scheduler(family: str, scheduler: str) -> None:
    """Refuse a spec scheduler that cannot step ``family``.

    SD and SDXL accept every DDPM-family scheduler Darkroom names (``types.SCHEDULERS``).
    SD3 and Flux ship a flow-matching Euler scheduler; ``euler`` means keeping it (callers
    must not swap it for ``EulerDiscreteScheduler``), and nothing else is offered.
    """
    _check_family(family)
    if family in FLOW_MATCHING and scheduler != "euler":
        raise ModelError(
            f"generation.scheduler = {scheduler!r} cannot step this {family} model, which is "
            "flow-matching; fix: use scheduler: euler (the model's own FlowMatchEulerDiscreteScheduler)")
