"""Inference backends. The ``local`` backend runs diffusers in this process.

One pipeline per process per model key, cached, so every batch of a task (and every task a
worker runs) reuses it; image-to-image and inpainting pipelines are made from it with
``from_pipe`` (shared weights, no reload), LoRAs are switched with ``set_adapters``.

Reproducibility: each variant's initial noise comes from its own seeded generator, and every
forward pass has the same number of images (the spec's ``batch_size``; a short last batch is
padded with copies of its last variant). Batched GEMMs sum in an order that depends on the
batch *shape*, not on which rows are in it, so a variant's pixels are the same bit for bit
whichever batch it lands in and at whatever position (tests/test_inference.py).
"""

from __future__ import annotations

import hashlib
import threading
import time
from contextlib import contextmanager
from dataclasses import dataclass
from functools import cache, lru_cache
from pathlib import Path
from typing import Any

from darkroom.config import Settings
from darkroom.errors import ModelError
from darkroom.families import FLOW_MATCHING, check_scheduler, pipeline_kwargs

SCHEDULERS = {
    "ddim": ("DDIMScheduler", {}, "DDIM"),
    "pndm": ("PNDMScheduler", {}, "PLMS"),
    "euler": ("EulerDiscreteScheduler", {}, "Euler"),
    "euler_a": ("EulerAncestralDiscreteScheduler", {}, "Euler a"),
    "dpmpp_2m": ("DPMSolverMultistepScheduler", {}, "DPM++ 2M"),
    "lms": ("LMSDiscreteScheduler", {}, "LMS"),
}


@dataclass(frozen=True)
class ModelRef:
    """A model as the spec names it, resolved to something ``from_pretrained`` accepts."""

    name: str  # what people call it: 'tiny-sd', 'stabilityai/stable-diffusion-2-1', a folder name
    location: str  # local path or hub id
    revision: str | None
    version: str  # concrete version recorded on every asset
    model_hash: str  # 10 hex chars, as AUTOMATIC1111's "Model hash"
    is_local: bool
    profile: str | None = None  # set when resolved from a models:/ registry reference
    loras: tuple = ()  # darkroom.profiles.Lora, applied at load time
    defaults: tuple = ()  # (name, value) pairs the profile defaults: scheduler, steps, ...
    spec_loras: int = 0  # how many of ``loras`` (the last ones) the spec added to the model

    @property
    def identity(self) -> str:
        """What asset ids hash: the version alone for plain models (keeps their ids stable);
        profile name and version for profiles, whose version numbers restart per profile;
        plus the spec's LoRAs (name, content version, weight) when it lists any."""
        base = f"models:/{self.profile}/{self.version}" if self.profile else self.version
        if not self.spec_loras:
            return base
        added = ",".join(f"{x.name}@{x.version}:{x.weight:g}" for x in self.loras[-self.spec_loras:])
        return f"{base}+{added}"

    @property
    def lora_records(self) -> list[dict]:
        return [{"name": x.name, "version": x.version, "weight": x.weight, "path": x.path}
                for x in self.loras]

    def with_spec_loras(self, adapters, resolve=lambda p: p) -> ModelRef:
        """This model with the spec's ``generation.loras`` on top. A local LoRA's version is
        its content checksum, so changed weights make new asset versions."""
        from dataclasses import replace

        from darkroom.profiles import Lora

        if not adapters:
            return self
        added = []
        for i, a in enumerate(adapters):
            location = _resolve_location(a.path, resolve)
            path = Path(location)
            if path.exists():  # hashed once per weights change, not once per task
                version = local_model_digest(path)[:12]
            elif _looks_like_hub_id(a.path):
                version = "hub"
            else:
                raise ModelError(f"generation.loras[{i}].path = {a.path!r}: no such file or folder "
                                 f"(looked at {path}); fix: give a .safetensors file, a folder or a hub id")
            if a.weight_name and not path.is_file():
                location = str(Path(location) / a.weight_name) if path.is_dir() else location
            name = a.name or Path(a.weight_name or path.name).stem or f"lora{i}"
            added.append(Lora(name=name, version=version, weight=a.weight, path=location))
        return replace(self, loras=self.loras + tuple(added), spec_loras=len(added))


def _file_digest(path: Path) -> str:
    h = hashlib.sha256()
    with path.open("rb") as fh:
        for block in iter(lambda: fh.read(1 << 20), b""):
            h.update(block)
    return h.hexdigest()


def _model_files(root: Path) -> list[Path]:
    if root.is_file():  # a single weights file (a LoRA's .safetensors)
        return [root]
    # A download tool's own .cache folder inside the model is not the model; judged on the
    # path *inside* the model folder, since models themselves live under ~/.cache (the hub's).
    return sorted(p for p in root.rglob("*") if p.is_file() and ".cache" not in p.relative_to(root).parts)


def _dir_digest(root: Path, files: list[Path]) -> str:
    h = hashlib.sha256()
    for f in files:
        h.update(str(f.relative_to(root)).encode())
        h.update(_file_digest(f).encode())
    return h.hexdigest()


@lru_cache(maxsize=32)
def _cached_digest(path: str, signature: str) -> str:
    """Every Airflow task is a new process, and hashing a multi-GB checkpoint takes seconds
    to minutes: keep digests on disk, keyed by the files' names, sizes and mtimes."""
    import json
    import os

    from darkroom.config import Settings

    cache = Settings.from_env().home / "cache" / "model-digests.json"
    try:
        known = json.loads(cache.read_text("utf-8"))
    except (OSError, ValueError):
        known = {}
    entry = known.get(path)
    if entry and entry.get("signature") == signature:
        return entry["digest"]
    root = Path(path)
    digest = _dir_digest(root, _model_files(root))
    known[path] = {"signature": signature, "digest": digest}
    try:
        cache.parent.mkdir(parents=True, exist_ok=True)
        tmp = cache.with_suffix(f".{os.getpid()}.tmp")
        tmp.write_text(json.dumps(known, indent=1), "utf-8")
        os.replace(tmp, cache)
    except OSError:
        pass  # a read-only home only costs the next process the hashing again
    return digest


def local_model_digest(path: Path) -> str:
    """Checksum of a saved pipeline folder (every file's name and content) or of one
    weights file, kept on disk keyed by the files' sizes and mtimes."""
    root = path.resolve()
    stats = [(str(f.relative_to(root)), f.stat().st_size, f.stat().st_mtime_ns)
             for f in _model_files(root)]
    signature = hashlib.sha256(repr(stats).encode()).hexdigest()
    return _cached_digest(str(root), signature)


def resolve_model(model: str, revision: str | None, settings: Settings,
                  requested_version: str | None = None) -> ModelRef:
    """Turn the spec's ``generation.model`` into a concrete, versioned reference.

    For a local folder the version is its content checksum; a requested ``model_version``
    must match it. For a hub id the version is the revision (the Param overrides the spec).
    For ``models:/<profile>@<alias>`` the registry at ``settings.mlflow_tracking_uri``
    resolves the alias to a version number; the Param may name a version or an alias.
    """
    if model.startswith("models:/"):
        from darkroom import profiles

        return profiles.model_ref(profiles.resolve(settings, model, requested_version))
    if model == "tiny":
        path = settings.tiny_model_dir
        if not (path / "model_index.json").is_file():
            raise ModelError(
                f"the offline tiny model is not built at {path}; fix: run "
                f"`darkroom models build-tiny {path}` (make demo does this)"
            )
        return _local_ref(path, "tiny-sd", requested_version)
    path = Path(model).expanduser()
    if path.is_dir():
        if not (path / "model_index.json").is_file():
            raise ModelError(f"{path} has no model_index.json: not a diffusers pipeline folder")
        return _local_ref(path, path.name, requested_version)
    if model.startswith(("/", ".", "~")):
        raise ModelError(f"generation.model = {model!r}: folder does not exist")
    rev = requested_version or revision or "main"
    return ModelRef(name=model, location=model, revision=rev, version=rev,
                    model_hash=hashlib.sha256(f"{model}@{rev}".encode()).hexdigest()[:10],
                    is_local=False)


def _local_ref(path: Path, name: str, requested: str | None) -> ModelRef:
    digest = local_model_digest(path)
    version = digest[:12]
    if requested and not digest.startswith(requested):
        raise ModelError(
            f"model_version {requested!r} was requested but {path} is version {version}; "
            "fix: point generation.model at the folder holding that version, or drop the Param"
        )
    return ModelRef(name=name, location=str(path.resolve()), revision=None, version=version,
                    model_hash=digest[:10], is_local=True)


def model_family(ref: ModelRef) -> str:
    """The model's family, read from its model_index.json before loading (the dtype depends
    on it). Hub models whose index is not in the local cache count as Stable Diffusion."""
    import json

    index = Path(ref.location) / "model_index.json"
    if not ref.is_local:
        try:
            from huggingface_hub import hf_hub_download

            index = Path(hf_hub_download(ref.location, "model_index.json", revision=ref.revision))
        except Exception:  # offline or gated: the family only refines the dtype
            return "sd"
    from darkroom.families import family_of_class_name

    try:
        return family_of_class_name(json.loads(index.read_text("utf-8")).get("_class_name") or "")
    except (OSError, ValueError, ModelError):
        return "sd"


def pick_device(preference: str = "auto", family: str = "sd", dtype: str = "auto") -> tuple[str, Any]:
    """(device, torch dtype): cuda, then mps, then cpu; half precision on accelerators
    (bfloat16 for the SD3/Flux transformers, which overflow in float16), float32 on CPUs."""
    import torch

    if preference == "auto":
        if torch.cuda.is_available():
            preference = "cuda"
        elif getattr(torch.backends, "mps", None) and torch.backends.mps.is_available():
            preference = "mps"
        else:
            preference = "cpu"
    from darkroom.families import resolve_dtype

    return preference, resolve_dtype(dtype, family, preference)


@dataclass(frozen=True)
class PipelineOptions:
    """How a pipeline is prepared once after loading (part of the cache key)."""

    compile: bool = False
    channels_last: bool = False
    vae_tiling: bool = False
    vae_slicing: bool = False
    ip_adapter: tuple | None = None  # (path, subfolder, weight_name, image_encoder folder)

    @classmethod
    def from_spec(cls, g, width: int | None = None, height: int | None = None,
                  resolve=lambda p: p) -> PipelineOptions:
        o = g.optimizations
        w, h = width or g.width, height or g.height
        tiling = o.vae_tiling == "on" or (o.vae_tiling == "auto" and w * h > 1024 * 1024)
        ip = g.ip_adapter
        return cls(compile=o.compile, channels_last=o.channels_last, vae_tiling=tiling,
                   vae_slicing=o.vae_slicing,
                   ip_adapter=(_resolve_location(ip.path, resolve), ip.subfolder, ip.weight_name,
                               ip.image_encoder and _resolve_location(ip.image_encoder, resolve))
                   if ip else None)


def _resolve_location(value: str, resolve) -> str:
    """A path relative to the spec when it exists there (or is plainly a path); otherwise a
    hub id such as ``h94/IP-Adapter``, left for ``from_pretrained`` to find."""
    local = Path(resolve(value)).expanduser()
    return str(local) if local.exists() or not _looks_like_hub_id(value) else value


def _looks_like_hub_id(value: str) -> bool:
    import re

    # "org/name", but not "loras/style.safetensors": a weights file is a local path.
    return (re.fullmatch(r"[\w.-]+/[\w.-]+", value) is not None
            and Path(value).suffix not in (".safetensors", ".bin", ".pt", ".pth", ".ckpt"))


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
        from diffusers import AutoPipelineForText2Image

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
        from diffusers import AutoPipelineForImage2Image, AutoPipelineForInpainting

        auto = {"image2image": AutoPipelineForImage2Image, "inpaint": AutoPipelineForInpainting}[mode]
        try:
            cache[mode] = auto.from_pipe(base)
        except ValueError as exc:
            raise ModelError(f"generation.mode: {mode} is not available for {type(base).__name__}: "
                             f"{exc}; fix: use mode text2image or a model family that has it") from exc
        cache[mode].set_progress_bar_config(disable=True)
    return cache[mode]


def _optimize(pipe: Any, options: PipelineOptions) -> None:
    import torch

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
        # DARKROOM_COMPILE_BACKEND picks another dynamo backend (tests use "eager": inductor's
        # code generation takes minutes on a small CPU).
        import os

        denoiser.compile(backend=os.environ.get("DARKROOM_COMPILE_BACKEND", "inductor"))


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
    import diffusers

    cls_name, extra, a1111 = SCHEDULERS[name]
    if type(pipe.scheduler).__name__ != cls_name:
        cls = getattr(diffusers, cls_name)
        pipe.scheduler = cls.from_config(pipe.scheduler.config, **extra)
    return a1111


@dataclass
class Request:
    variant_id: str
    prompt: str
    negative_prompt: str
    seed: int
    width: int
    height: int
    steps: int
    guidance: float
    scheduler: str
    # image2image / inpaint / IP-Adapter: the product's reference image and mask (PIL images).
    mode: str = "text2image"
    reference: Any = None
    mask: Any = None
    strength: float = 1.0
    ip_adapter_scale: float | None = None


@dataclass
class Result:
    variant_id: str
    image: Any | None  # PIL.Image
    seconds: float
    error: str | None = None  # "<reason>: <detail>": this variant failed, the others did not
    # Set when a routed batch mixes backends (darkroom.backends.routed): who made this image.
    backend: str | None = None
    sampler: str | None = None
    # The forward pass that made this image, in order, padding included. Its length (the
    # pass size) decides the GEMM shapes, so replaying a pass of that size reproduces the image.
    forward_pass: list[str] | None = None


def input_fields(params: dict | None, width: int, height: int, *, s3_client=None) -> dict:
    """The Request fields a variant's recorded parameters ask for beyond text-to-image: mode,
    strength, IP-Adapter scale and the decoded input images. An input image that changed
    since planning is refused: its checksum is part of the variant's identity."""
    from darkroom import imaging
    from darkroom.backends import InvalidRequest
    from darkroom.storage import read_uri, sha256_bytes

    params = params or {}
    fields: dict[str, Any] = {}
    if params.get("mode"):
        fields.update(mode=params["mode"], strength=params.get("strength", 1.0))
    if params.get("ip_adapter"):
        fields["ip_adapter_scale"] = params["ip_adapter"].get("scale")
    for key in ("reference", "mask"):
        if key not in params:
            continue
        uri, expected = params[key]["uri"], params[key]["sha256"]
        data = read_uri(uri, s3_client=s3_client)
        if sha256_bytes(data) != expected:
            raise InvalidRequest(f"the {key} image {uri} changed since the variant was planned; "
                                 "fix: start a new run (it plans a new variant for the new image)")
        img = imaging.decode(data).convert("L" if key == "mask" else "RGB")
        # To the output size: SD image-to-image takes its size from the image.
        fields[key] = img.resize((width, height), imaging.Image.Resampling.LANCZOS)
    return fields


class LocalDiffusersBackend:
    """diffusers in this process."""

    name = "local"

    def __init__(self, ref: ModelRef, device: str = "auto", *, dtype: str = "auto",
                 options: PipelineOptions = PipelineOptions()):
        self.ref, self.options = ref, options
        self.family = model_family(ref)
        self.device, self.dtype = pick_device(device, self.family, dtype)

    @property
    def pipeline(self) -> Any:
        return load_pipeline(self.ref, self.device, self.dtype, self.options)

    def sampler_name(self, scheduler: str) -> str:
        if self.family in FLOW_MATCHING:
            return "Euler (flow matching)"
        return SCHEDULERS[scheduler][2]

    def initial_latents(self, requests: list[Request]):
        """One generator per variant, seeded with the variant's seed, on the CPU."""
        from darkroom.families import seeded_latents

        first = requests[0]
        return seeded_latents(self.pipeline, [r.seed for r in requests], first.height, first.width,
                              self.device, self.dtype)

    def generate(self, requests: list[Request], pass_size: int | None = None) -> list[Result]:
        """One forward pass for requests that share mode, size, steps, guidance and scheduler,
        padded to ``pass_size`` images with copies of the last request (see the module doc)."""
        import torch

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
        import torch
        from diffusers.models.embeddings import ImageProjection

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
    import inspect

    return frozenset(inspect.signature(cls.__call__).parameters)


def is_out_of_memory(exc: BaseException) -> bool:
    import torch

    return isinstance(exc, torch.OutOfMemoryError) or "out of memory" in str(exc).lower()


def generate_halving(backend, requests: list[Request], on_halve=None,
                     pass_size: int | None = None) -> list[Result]:
    """Generate; on out-of-memory, halve the pass size and retry in passes of that size.

    Seeds live in each variant's own latents, so a smaller pass gives the same picture (up
    to a grey level: another pass size is another GEMM shape; each asset records its pass).
    A single image that does not fit raises.
    """
    size = pass_size or len(requests)
    try:
        return backend.generate(requests, pass_size=pass_size)
    except Exception as exc:
        if size == 1 or not is_out_of_memory(exc):
            raise
    _free_device_memory()
    half = size // 2
    if on_halve:
        on_halve(size, half)
    results: list[Result] = []
    for start in range(0, len(requests), half):
        results += generate_halving(backend, requests[start : start + half], on_halve, half)
    return results


def _free_device_memory() -> None:
    import gc

    import torch

    gc.collect()
    if torch.cuda.is_available():
        torch.cuda.empty_cache()
