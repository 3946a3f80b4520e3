"""Models as Darkroom records them: a resolved, versioned reference (:class:`ModelRef`), its
LoRAs, how its pipeline is prepared, and content digests of local weights.

No torch here: references are made, compared and recorded without loading anything.
"""

from __future__ import annotations

import hashlib
import json
import os
import re
from dataclasses import dataclass, replace
from functools import lru_cache
from pathlib import Path

from darkroom.config import Settings
from darkroom.errors import ModelError
from darkroom.generation.families import family_of_class_name
from darkroom.ids import key_part

# Generation parameters a profile may default; a campaign's explicit value wins. Size is
# not among them: QA checks the campaign's own width and height.
CAMPAIGN_DEFAULTS = ("scheduler", "steps", "guidance")


@dataclass(frozen=True)
class Lora:
    name: str
    version: str
    weight: float = 1.0
    path: str | None = None  # local folder or hub id holding the LoRA weights

    @classmethod
    def parse(cls, text: str) -> Lora:
        """``NAME@VERSION[:WEIGHT][=PATH]``, e.g. ``style_v2@3:0.8=/models/loras/style_v2``."""
        m = re.match(r"^(?P<n>[^@:=]+)@(?P<v>[^:=]+)(?::(?P<w>[0-9.]+))?(?:=(?P<p>.+))?$", text)
        if not m:
            raise ModelError(f"LoRA {text!r} is not NAME@VERSION[:WEIGHT][=PATH], "
                             "e.g. style_v2@3:0.8=/models/loras/style_v2")
        return cls(m["n"], m["v"], float(m["w"]) if m["w"] else 1.0, m["p"])


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
    loras: tuple[Lora, ...] = ()  # applied at load time
    defaults: tuple = ()  # (name, value) pairs the profile defaults: scheduler, steps, ...
    spec_loras: int = 0  # how many of ``loras`` (the last ones) the spec added to the model
    # A profile's registry record (base, revision, checksum): what MLflow logs for the run.
    base: str | None = None
    base_checksum: str | None = None

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
    def reference(self) -> str:
        """How the run records the model: the profile version, else the location."""
        return f"models:/{self.profile}/{self.version}" if self.profile else self.location

    @property
    def lora_records(self) -> list[dict]:
        return [{"name": x.name, "version": x.version, "weight": x.weight, "path": x.path}
                for x in self.loras]

    def record(self) -> dict:
        """What made the pixels, as the run records it for tracking: the model and version,
        the profile's base model, revision and checksum, the LoRAs."""
        return {"name": self.name, "reference": self.reference, "version": self.version,
                "profile": self.profile or "", "profile_version": self.version if self.profile else "",
                "base": self.base or self.location, "revision": self.revision or "",
                "checksum": self.base_checksum or "",
                "loras": [{k: x[k] for k in ("name", "version", "weight")} for x in self.lora_records]}

    def with_spec_loras(self, adapters, resolve=lambda p: p) -> ModelRef:
        """This model with the spec's ``generation.loras`` on top. A local LoRA's version is
        its content checksum, so changed weights make new asset versions."""
        if not adapters:
            return self
        added = []
        for i, a in enumerate(adapters):
            location = resolve_location(a.path, resolve)
            path = Path(location)
            if path.exists():  # hashed once per weights change, not once per task
                version = local_model_digest(path)[:12]
            elif looks_like_hub_id(a.path):
                version = "hub"
            else:
                raise ModelError(f"generation.loras[{i}].path = {a.path!r}: no such file or folder "
                                 f"(looked at {path}); fix: give a .safetensors file, a folder or a hub id")
            if a.weight_name and not path.is_file():
                location = str(Path(location) / a.weight_name) if path.is_dir() else location
            name = a.name or Path(a.weight_name or path.name).stem or f"lora{i}"
            added.append(Lora(name=name, version=version, weight=a.weight, path=location))
        return replace(self, loras=self.loras + tuple(added), spec_loras=len(added))


@dataclass(frozen=True)
class PipelineOptions:
    """How the local backend prepares a pipeline once after loading (part of its cache key)."""

    compile: bool = False
    channels_last: bool = False
    vae_tiling: bool = False
    vae_slicing: bool = False
    ip_adapter: tuple | None = None  # (path, subfolder, weight_name, image_encoder folder)
    compile_backend: str = "inductor"

    @classmethod
    def from_spec(cls, g, width: int | None = None, height: int | None = None,
                  resolve=lambda p: p, compile_backend: str = "inductor") -> PipelineOptions:
        o = g.optimizations
        w, h = width or g.width, height or g.height
        tiling = o.vae_tiling == "on" or (o.vae_tiling == "auto" and w * h > 1024 * 1024)
        ip = g.ip_adapter
        return cls(compile=o.compile, channels_last=o.channels_last, vae_tiling=tiling,
                   vae_slicing=o.vae_slicing, compile_backend=compile_backend,
                   ip_adapter=(resolve_location(ip.path, resolve), ip.subfolder, ip.weight_name,
                               ip.image_encoder and resolve_location(ip.image_encoder, resolve))
                   if ip else None)


def resolve_location(value: str, resolve) -> str:
    """A path relative to the spec when it exists there (or is plainly a path); otherwise a
    hub id such as ``h94/IP-Adapter``, left for ``from_pretrained`` to find."""
    local = Path(resolve(value)).expanduser()
    return str(local) if local.exists() or not looks_like_hub_id(value) else value


def looks_like_hub_id(value: str) -> bool:
    # "org/name", but not "loras/style.safetensors": a weights file is a local path.
    return (re.fullmatch(r"[\w.-]+/[\w.-]+", value) is not None
            and Path(value).suffix not in (".safetensors", ".bin", ".pt", ".pth", ".ckpt"))


def model_family(ref: ModelRef) -> str:
    """The model's family, read from its model_index.json before loading (the dtype depends
    on it). Hub models whose index is not in the local cache count as Stable Diffusion."""
    index = Path(ref.location) / "model_index.json"
    if not ref.is_local:
        try:
            # The hub client is only needed for hub ids, and may be missing offline.
            from huggingface_hub import hf_hub_download

            index = Path(hf_hub_download(ref.location, "model_index.json", revision=ref.revision))
        except Exception:  # offline or gated: the family only refines the dtype
            return "sd"
    try:
        return family_of_class_name(json.loads(index.read_text("utf-8")).get("_class_name") or "")
    except (OSError, ValueError, ModelError):
        return "sd"


# -- content digests -------------------------------------------------------------------------

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


def choices_file(settings: Settings, profile: str) -> Path:
    """Where a profile's versions and aliases are noted for parse time (profiles.remember_choices)."""
    return settings.home / "models" / "profiles" / f"{key_part(profile)}.json"


def profile_choices(settings: Settings, model: str) -> tuple[list[str], dict[str, str]]:
    """The versions and aliases a ``models:/<profile>...`` campaign can ask for, as last noted
    by a darkroom command (register, promote, rollback, list): ``([versions], {alias: version})``.
    Empty for other models or when nothing was noted. A JSON read: cheap at DAG parse time."""
    if not model.startswith("models:/"):
        return [], {}
    name = re.split(r"[@/]", model.removeprefix("models:/"), maxsplit=1)[0]
    try:
        data = json.loads(choices_file(settings, name).read_text("utf-8"))
        return [str(v) for v in data.get("versions", [])], {str(a): str(v) for a, v in
                                                           data.get("aliases", {}).items()}
    except (OSError, ValueError, AttributeError):
        return [], {}
