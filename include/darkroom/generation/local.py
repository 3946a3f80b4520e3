"""The ``local`` backend: diffusers in this process. The only module that imports torch and
diffusers for inference; the rest of Darkroom reaches it through
:func:`darkroom.generation.routing.make_backend`.

One pipeline per process per model key, cached, so every batch of a task (and every task a
worker runs) reuses it; image-to-image and inpainting pipelines are made from it with
``from_pipe`` (shared weights, no reload), LoRAs are switched with ``set_adapters``.

Reproducibility: each variant's initial noise comes from its own seeded generator, and every
forward pass has the same number of images (the spec's ``batch_size``; a short last batch is
padded with copies of its last variant). Batched GEMMs sum in an order that depends on the
batch *shape*, not on which rows are in it, so a variant's pixels are the same bit for bit
whichever batch it lands in and at whatever position (tests/generation/test_local.py).
"""

from __future__ import annotations

import gc
import inspect
import resource
import threading
import time
from contextlib import contextmanager
from functools import cache
from pathlib import Path
from typing import Any

import diffusers
import torch
import transformers
from diffusers import AutoPipelineForImage2Image, AutoPipelineForInpainting, AutoPipelineForText2Image
from diffusers.models.embeddings import ImageProjection

from darkroom.errors import ModelError
from darkroom.generation.families import (
    FLOW_MATCHING,
    check_scheduler,
    family_of,
    latent_shape,
    pipeline_kwargs,
    resolve_dtype,
)
from darkroom.generation.models import ModelRef, PipelineOptions, model_family
from darkroom.generation.types import SCHEDULERS, DeviceUse, Request, Result


def library_notices_through_logging() -> None:
    """diffusers and transformers print their notices and progress bars straight to stderr,
    which an Airflow task log files as errors: send the notices through Python logging at
    their own level (a prompt CLIP truncates at 77 tokens is a warning), and draw no bars (a
    batch logs its own progress). The torchvision fallback notice is dropped in
    darkroom.generation, before these imports emit it."""
    for lib in (diffusers, transformers):
        lib.utils.logging.disable_default_handler()
        lib.utils.logging.enable_propagation()
        lib.utils.logging.disable_progress_bar()


library_notices_through_logging()


def torch_dtype(name: str) -> torch.dtype:
    """``"float16"`` -> ``torch.float16``."""
    return getattr(torch, name)


def pick_device(preference: str = "auto", family: str = "sd", dtype: str = "auto") -> tuple[str, Any]:
    """(device, torch dtype): cuda, then mps, then cpu; half precision on accelerators
    (bfloat16 for the SD3/Flux transformers, which overflow in float16), float32 on CPUs."""
    if preference == "auto":
        if torch.cuda.is_available():
            preference = "cuda"
        elif getattr(torch.backends, "mps", None) and torch.backends.mps.is_available():
            preference = "mps"
        else:
            preference = "cpu"
    return preference, torch_dtype(resolve_dtype(dtype, family, preference))


def device_name(device: str) -> str:
    """The device with its hardware name where there is one: ``cuda:0 NVIDIA H200``."""
    if device.startswith("cuda") and torch.cuda.is_available():
        index = torch.device(device).index or 0
        return f"cuda:{index} {torch.cuda.get_device_name(index)}"
    return device


def reset_peak_memory(device: str) -> None:
    if device.startswith("cuda") and torch.cuda.is_available():
        torch.cuda.reset_peak_memory_stats(torch.device(device))


def peak_memory_bytes(device: str) -> int:
    """The accelerator's peak allocated memory since :func:`reset_peak_memory`; on a CPU the
    process's peak resident memory (everything the task holds, the model included)."""
    if device.startswith("cuda") and torch.cuda.is_available():
        return int(torch.cuda.max_memory_allocated(torch.device(device)))
    if device == "mps" and torch.backends.mps.is_available():
        return int(torch.mps.driver_allocated_memory())
    return resource.getrusage(resource.RUSAGE_SELF).ru_maxrss * 1024  # KiB on Linux


def free_device_memory() -> None:
    """After an out-of-memory error: give the cached blocks back before the next try."""
    gc.collect()
    if torch.cuda.is_available():
        torch.cuda.empty_cache()


_pipelines: dict[tuple, Any] = {}
_pipelines_lock = threading.Lock()


def load_pipeline(ref: ModelRef, device: str, dtype, options: PipelineOptions = PipelineOptions()) -> Any:
    """``from_pretrained`` once per (model, revision, device, dtype, options) per process;
    the LoRAs ``ref`` asks for are loaded into it once each and switched on (``use_loras``)."""
    key = (ref.location, ref.revision, device, str(dtype), options)
    with _pipelines_lock:
        pipe = _pipelines.get(key)
        if pipe is not None:
            use_loras(pipe, ref)
            return pipe
        kwargs: dict[str, Any] = {"dtype": dtype}
        if ref.revision and not ref.is_local:
            kwargs["revision"] = ref.revision
        started = time.perf_counter()
        try:
            pipe = AutoPipelineForText2Image.from_pretrained(ref.location, **kwargs)
        except (OSError, ValueError) as exc:
            raise ModelError(
                f"could not load model {ref.location!r} (revision {ref.revision}): {exc}. "
                "Fix: give a local pipeline folder, or make the hub reachable "
                "(HF_HUB_OFFLINE=1 uses the local cache only)"
            ) from exc
        use_loras(pipe, ref)
        if options.ip_adapter:
            _load_ip_adapter(pipe, *options.ip_adapter)
        pipe = pipe.to(device)
        _optimize(pipe, options)
        pipe.set_progress_bar_config(disable=True)
        pipe._darkroom_load_seconds = time.perf_counter() - started  # for the benchmark
        _pipelines[key] = pipe
        return pipe


def task_pipeline(base: Any, mode: str) -> Any:
    """The image-to-image or inpainting pipeline over the same components (``from_pipe``:
    no second copy of the weights, LoRAs and IP-Adapter carried over), cached on the base."""
    if mode == "text2image":
        return base
    cache = base.__dict__.setdefault("_darkroom_task_pipes", {})
    if mode not in cache:
        auto = {"image2image": AutoPipelineForImage2Image, "inpaint": AutoPipelineForInpainting}[mode]
        try:
            cache[mode] = auto.from_pipe(base)
        except ValueError as exc:
            raise ModelError(f"generation.mode: {mode} is not available for {type(base).__name__}: "
                             f"{exc}; fix: use mode text2image or a model family that has it") from exc
        cache[mode].set_progress_bar_config(disable=True)
    return cache[mode]


def _optimize(pipe: Any, options: PipelineOptions) -> None:
    denoiser = getattr(pipe, "unet", None) or getattr(pipe, "transformer", None)
    if options.channels_last:  # convolution layouts cuDNN prefers; a no-op for the math
        for module in (denoiser, getattr(pipe, "vae", None)):
            if module is not None:
                module.to(memory_format=torch.channels_last)
    vae = getattr(pipe, "vae", None)
    if vae is not None and options.vae_tiling:
        vae.enable_tiling()  # large images decode in overlapping tiles instead of at once
    if vae is not None and options.vae_slicing:
        vae.enable_slicing()  # a batch decodes one image at a time
    if options.compile and denoiser is not None:
        # In place (nn.Module.compile) so the pipeline still sees its UNet/transformer class;
        # the first forward pass compiles, the fixed pass size keeps later ones from recompiling.
        # options.compile_backend ($DARKROOM_COMPILE_BACKEND) picks another dynamo backend
        # (tests use "eager": inductor's code generation takes minutes on a small CPU).
        denoiser.compile(backend=options.compile_backend)


def use_loras(pipe: Any, ref: ModelRef) -> None:
    """Make ``ref``'s LoRAs (and weights) the active adapters. Each LoRA file is loaded once
    per pipeline; switching sets, weights or back to none is ``set_adapters`` /
    ``disable_lora``, never a pipeline reload."""
    loaded: dict[str, str] = pipe.__dict__.setdefault("_darkroom_loras", {})
    wanted = []
    for lora in ref.loras:
        if not lora.path:
            raise ModelError(f"model profile {ref.profile} version {ref.version}: LoRA {lora.name}@"
                             f"{lora.version} has no path; fix: register it as NAME@VERSION:WEIGHT=PATH")
        adapter = f"{lora.name}_{lora.version}".replace(".", "_").replace("-", "_")
        if adapter not in loaded:
            path = Path(lora.path)
            kwargs = {"weight_name": path.name} if path.is_file() else {}
            try:
                pipe.load_lora_weights(str(path.parent) if path.is_file() else lora.path,
                                       adapter_name=adapter, **kwargs)
            except (OSError, ValueError, ImportError, KeyError) as exc:
                raise ModelError(f"could not load LoRA {lora.name}@{lora.version} from {lora.path}: "
                                 f"{exc}. Fix: check generation.loras[].path (a .safetensors file, a "
                                 "folder holding one, or a hub id)") from exc
            loaded[adapter] = lora.path
        wanted.append((adapter, lora.weight))
    active = tuple(wanted)
    if pipe.__dict__.get("_darkroom_active_loras", ()) == active:
        return
    if active:
        pipe.enable_lora()
        pipe.set_adapters([a for a, _ in active], adapter_weights=[w for _, w in active])
    elif loaded:
        pipe.disable_lora()  # the base model's own pixels, bit for bit
    pipe._darkroom_active_loras = active


def _load_ip_adapter(pipe: Any, path: str, subfolder: str, weight_name: str, encoder: str | None) -> None:
    kwargs = {"image_encoder_folder": encoder} if encoder else {}
    try:
        pipe.load_ip_adapter(path, subfolder=subfolder, weight_name=weight_name, **kwargs)
    except (OSError, ValueError, KeyError) as exc:
        raise ModelError(f"generation.ip_adapter: could not load {weight_name} from {path}/{subfolder}: "
                         f"{exc}. Fix: check path, subfolder and weight_name (e.g. h94/IP-Adapter, "
                         "models, ip-adapter_sd15.safetensors)") from exc


def set_scheduler(pipe: Any, name: str) -> str:
    """Swap the scheduler by its spec name; return the AUTOMATIC1111 sampler name."""
    cls_name, extra, a1111 = SCHEDULERS[name]
    if type(pipe.scheduler).__name__ != cls_name:
        cls = getattr(diffusers, cls_name)
        pipe.scheduler = cls.from_config(pipe.scheduler.config, **extra)
    return a1111


def seeded_latents(pipe: Any, seeds: list[int], height: int, width: int, device: Any, dtype: Any):
    """The ``latents=`` argument for a batch: variant ``i``'s noise drawn in float32 on
    the CPU by its own ``torch.Generator("cpu").manual_seed(seeds[i])``.

    CPU generators give the same numbers on every machine and device, and a per-variant
    generator makes a variant's noise independent of its batch-mates. For SD and SDXL the
    result is (B, C, H/scale, W/scale), the very tensor ``LocalDiffusersBackend.
    initial_latents`` makes; SD3 likewise with the transformer's channels; Flux gets its
    noise packed into 2x2 patches, (B, H/(2 scale) x W/(2 scale), 4C), as ``FluxPipeline``
    expects (packing rearranges each variant's own numbers, so it commutes with batching).
    """
    family = family_of(pipe)
    shape = latent_shape(pipe, height, width, family)
    latents = torch.stack([
        torch.randn(shape, generator=torch.Generator("cpu").manual_seed(seed), dtype=torch.float32)
        for seed in seeds
    ])
    if family == "flux":
        latents = pipe._pack_latents(latents, len(seeds), *shape)
    return latents.to(device, dtype)


class LocalDiffusersBackend:
    """diffusers in this process."""

    name = "local"

    def __init__(self, ref: ModelRef, device: str = "auto", *, dtype: str = "auto",
                 options: PipelineOptions = PipelineOptions()):
        self.ref, self.options = ref, options
        self.family = model_family(ref)
        self.device, self.dtype = pick_device(device, self.family, dtype)

    def device_use(self) -> DeviceUse:
        return DeviceUse(device_name(self.device), str(self.dtype).removeprefix("torch."),
                         peak_memory_bytes(self.device))

    def reset_peak_memory(self) -> None:
        reset_peak_memory(self.device)

    def free_memory(self) -> None:
        free_device_memory()

    @property
    def pipeline(self) -> Any:
        return load_pipeline(self.ref, self.device, self.dtype, self.options)

    def sampler_name(self, scheduler: str) -> str:
        if self.family in FLOW_MATCHING:
            return "Euler (flow matching)"
        return SCHEDULERS[scheduler][2]

    def initial_latents(self, requests: list[Request]):
        """One generator per variant, seeded with the variant's seed, on the CPU."""
        first = requests[0]
        return seeded_latents(self.pipeline, [r.seed for r in requests], first.height, first.width,
                              self.device, self.dtype)

    def generate(self, requests: list[Request], pass_size: int | None = None) -> list[Result]:
        """One forward pass for requests that share mode, size, steps, guidance and scheduler,
        padded to ``pass_size`` images with copies of the last request (see the module doc)."""
        batch = requests + [requests[-1]] * max(0, (pass_size or 0) - len(requests))
        first = batch[0]
        pipe = task_pipeline(self.pipeline, first.mode)
        if self.family in FLOW_MATCHING:  # keep the model's own flow-matching scheduler
            check_scheduler(self.family, first.scheduler)
        else:
            set_scheduler(pipe, first.scheduler)
        kwargs: dict[str, Any] = {}
        if first.mode == "text2image":
            kwargs["latents"] = self.initial_latents(batch)
        else:
            # image2image/inpaint noise the encoded reference: one seeded generator per image,
            # which diffusers draws from image by image (latents= is not accepted by all).
            kwargs["generator"] = [torch.Generator("cpu").manual_seed(r.seed) for r in batch]
            kwargs["image"] = [r.reference for r in batch]
            kwargs["strength"] = first.strength
            if first.mode == "inpaint":
                kwargs["mask_image"] = [r.mask for r in batch]
        if self.options.ip_adapter:
            pipe.set_ip_adapter_scale(first.ip_adapter_scale if first.ip_adapter_scale is not None else 1.0)
            per_variant = self._ip_adapter_embeds(pipe, batch, first.guidance > 1)
        kwargs.update(prompt=[r.prompt for r in batch], width=first.width, height=first.height,
                      num_inference_steps=first.steps, output_type="pil",
                      **pipeline_kwargs(self.family, guidance=first.guidance,
                                        negative_prompts=[r.negative_prompt for r in batch]))
        # Pipelines differ in what they take (SD image2image sizes itself from the image; the
        # stage resized the reference already): pass only what this one accepts.
        accepted = _call_parameters(type(pipe))
        started = time.perf_counter()
        with torch.inference_mode(), _per_variant_image_embeds(pipe, per_variant if self.options.ip_adapter
                                                               else None, kwargs):
            out = pipe(**{k: v for k, v in kwargs.items() if k in accepted})
        per_image = (time.perf_counter() - started) / len(requests)
        members = [r.variant_id for r in batch]
        return [Result(r.variant_id, img, per_image, forward_pass=members)
                for r, img in zip(requests, out.images[: len(requests)], strict=True)]


    def _ip_adapter_embeds(self, pipe: Any, batch: list[Request], guided: bool):
        """Each variant's own reference image, encoded on its own (so independent of its
        batch), laid out as the UNet reads them: negatives (zeros, as diffusers makes them)
        then positives, in the prompt embeddings' order."""
        layer = pipe.unet.encoder_hid_proj.image_projection_layers[0]
        hidden = not isinstance(layer, ImageProjection)  # IP-Adapter Plus reads hidden states
        pairs = [pipe.encode_image(r.reference, self.device, 1, hidden) for r in batch]
        embeds = torch.cat([pos[None] for pos, _ in pairs])
        if guided:
            embeds = torch.cat([torch.cat([neg[None] for _, neg in pairs]), embeds])
        return embeds


@contextmanager
def _per_variant_image_embeds(pipe: Any, embeds, kwargs: dict):
    """diffusers' IP-Adapter API gives every image of a batch the same reference (it repeats
    one set of embeddings batch-size times). Pass it one variant's embeddings, so the call
    validates and allocates as usual, and swap in every variant's own, of the same shape,
    where the UNet receives them."""
    if embeds is None:
        yield
        return
    half = len(embeds) // 2
    guided = kwargs["guidance_scale"] > 1
    kwargs["ip_adapter_image_embeds"] = [embeds[[0, half]] if guided else embeds[:1]]

    def swap(module, args, call_kwargs):
        cond = call_kwargs.get("added_cond_kwargs") or {}
        if "image_embeds" in cond:
            if cond["image_embeds"][0].shape != embeds.shape:
                raise ModelError(f"IP-Adapter embeddings of shape {tuple(cond['image_embeds'][0].shape)} "
                                 f"where {tuple(embeds.shape)} were prepared")
            call_kwargs["added_cond_kwargs"] = {**cond, "image_embeds": [embeds.to(cond["image_embeds"][0])]}
        return args, call_kwargs

    handle = pipe.unet.register_forward_pre_hook(swap, with_kwargs=True)
    try:
        yield
    finally:
        handle.remove()


@cache
def _call_parameters(cls) -> frozenset[str]:
    return frozenset(inspect.signature(cls.__call__).parameters)
