"""Inference backends. The ``local`` backend runs diffusers in this process.

One pipeline per process per model key, cached, so every batch of a task (and every task a
worker runs) reuses it. Each variant's initial latents come from its own seeded generator,
so a variant's pixels do not depend on which batch it lands in.
"""

from __future__ import annotations

import hashlib
import threading
import time
from dataclasses import dataclass
from functools import lru_cache
from pathlib import Path
from typing import Any

from darkroom.config import Settings
from darkroom.errors import ModelError

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

    @property
    def identity(self) -> str:
        """What asset ids hash: the version alone for plain models (keeps their ids stable);
        profile name and version for profiles, whose version numbers restart per profile."""
        return f"models:/{self.profile}/{self.version}" if self.profile else self.version

    @property
    def lora_records(self) -> list[dict]:
        return [{"name": x.name, "version": x.version, "weight": x.weight} for x in self.loras]


def _file_digest(path: Path) -> str:
    h = hashlib.sha256()
    with path.open("rb") as fh:
        for block in iter(lambda: fh.read(1 << 20), b""):
            h.update(block)
    return h.hexdigest()


def _model_files(root: Path) -> list[Path]:
    return sorted(p for p in root.rglob("*") if p.is_file() and ".cache" not in p.parts)


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
    """Checksum of a saved pipeline folder (every file's name and content)."""
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


def pick_device(preference: str = "auto") -> tuple[str, Any]:
    import torch

    if preference == "auto":
        if torch.cuda.is_available():
            preference = "cuda"
        elif getattr(torch.backends, "mps", None) and torch.backends.mps.is_available():
            preference = "mps"
        else:
            preference = "cpu"
    dtype = {"cuda": torch.float16, "mps": torch.float16, "cpu": torch.float32}[preference]
    return preference, dtype


_pipelines: dict[tuple, Any] = {}
_pipelines_lock = threading.Lock()


def load_pipeline(ref: ModelRef, device: str, dtype) -> Any:
    """``from_pretrained`` once per (model, revision, device, dtype) per process."""
    key = (ref.location, ref.revision, device, str(dtype), ref.loras)
    with _pipelines_lock:
        pipe = _pipelines.get(key)
        if pipe is not None:
            return pipe
        from diffusers import AutoPipelineForText2Image

        kwargs: dict[str, Any] = {"dtype": dtype}
        if ref.revision and not ref.is_local:
            kwargs["revision"] = ref.revision
        try:
            pipe = AutoPipelineForText2Image.from_pretrained(ref.location, **kwargs)
        except (OSError, ValueError) as exc:
            raise ModelError(
                f"could not load model {ref.location!r} (revision {ref.revision}): {exc}. "
                "Fix: give a local pipeline folder, or make the hub reachable "
                "(HF_HUB_OFFLINE=1 uses the local cache only)"
            ) from exc
        if ref.loras:
            _apply_loras(pipe, ref)
        pipe = pipe.to(device)
        pipe.set_progress_bar_config(disable=True)
        _pipelines[key] = pipe
        return pipe


def _apply_loras(pipe: Any, ref: ModelRef) -> None:
    """Load each LoRA of a profile as a named adapter at its weight (diffusers + peft)."""
    names = []
    for lora in ref.loras:
        if not lora.path:
            raise ModelError(f"model profile {ref.profile} version {ref.version}: LoRA {lora.name}@"
                             f"{lora.version} has no path; fix: register it as NAME@VERSION:WEIGHT=PATH")
        adapter = f"{lora.name}_{lora.version}".replace(".", "_")
        try:
            pipe.load_lora_weights(lora.path, adapter_name=adapter)
        except (OSError, ValueError, ImportError) as exc:
            raise ModelError(f"could not load LoRA {lora.name}@{lora.version} from {lora.path}: {exc}. "
                             "Fix: check the path; LoRAs need the `peft` package installed") from exc
        names.append(adapter)
    pipe.set_adapters(names, adapter_weights=[lora.weight for lora in ref.loras])


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


@dataclass
class Result:
    variant_id: str
    image: Any | None  # PIL.Image
    seconds: float
    error: str | None = None  # "<reason>: <detail>": this variant failed, the others did not
    # Set when a routed batch mixes backends (darkroom.backends.routed): who made this image.
    backend: str | None = None
    sampler: str | None = None
    # The variant ids of the forward pass that made this image, in order. Batched GEMMs sum
    # in a shape-dependent order, so another batch can move a pixel by one level; replaying
    # this exact pass reproduces the image bit for bit.
    forward_pass: list[str] | None = None


class LocalDiffusersBackend:
    """diffusers in this process."""

    name = "local"

    def __init__(self, ref: ModelRef, device: str = "auto"):
        self.ref = ref
        self.device, self.dtype = pick_device(device)

    @property
    def pipeline(self) -> Any:
        return load_pipeline(self.ref, self.device, self.dtype)

    def sampler_name(self, scheduler: str) -> str:
        return SCHEDULERS[scheduler][2]

    def initial_latents(self, requests: list[Request]):
        """One generator per variant, seeded with the variant's seed, on the CPU."""
        import torch

        pipe = self.pipeline
        channels = pipe.unet.config.in_channels
        scale = pipe.vae_scale_factor
        latents = [
            torch.randn(
                (channels, r.height // scale, r.width // scale),
                generator=torch.Generator("cpu").manual_seed(r.seed),
                dtype=torch.float32,
            )
            for r in requests
        ]
        return torch.stack(latents).to(self.device, self.dtype)

    def generate(self, requests: list[Request]) -> list[Result]:
        """One forward pass for requests that share size, steps, guidance and scheduler."""
        first = requests[0]
        pipe = self.pipeline
        set_scheduler(pipe, first.scheduler)
        started = time.perf_counter()
        out = pipe(
            prompt=[r.prompt for r in requests],
            negative_prompt=[r.negative_prompt for r in requests],
            width=first.width,
            height=first.height,
            num_inference_steps=first.steps,
            guidance_scale=first.guidance,
            latents=self.initial_latents(requests),
            output_type="pil",
        )
        per_image = (time.perf_counter() - started) / len(requests)
        members = [r.variant_id for r in requests]
        return [Result(r.variant_id, img, per_image, forward_pass=members)
                for r, img in zip(requests, out.images, strict=True)]


def is_out_of_memory(exc: BaseException) -> bool:
    import torch

    return isinstance(exc, torch.OutOfMemoryError) or "out of memory" in str(exc).lower()


def generate_halving(backend, requests: list[Request], on_halve=None) -> list[Result]:
    """Generate; on out-of-memory, split the batch in two and retry each half.

    Seeds live in each variant's own latents, so a smaller batch gives the same pixels.
    A single image that does not fit raises.
    """
    try:
        return backend.generate(requests)
    except Exception as exc:
        if len(requests) == 1 or not is_out_of_memory(exc):
            raise
    _free_device_memory()
    half = len(requests) // 2
    if on_halve:
        on_halve(len(requests), half)
    return (generate_halving(backend, requests[:half], on_halve)
            + generate_halving(backend, requests[half:], on_halve))


def _free_device_memory() -> None:
    import gc

    import torch

    gc.collect()
    if torch.cuda.is_available():
        torch.cuda.empty_cache()
