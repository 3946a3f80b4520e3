"""Model profiles, versioned in the MLflow Model Registry.

A profile is everything that decides which network draws the pixels: the base model (a hub
id + revision, or a local ``save_pretrained`` folder) with the checksum of its weights, the
LoRAs (name, version, weight), the scheduler and default parameters. Each registered
version is an MLflow pyfunc model whose ``predict`` generates images with the profile, and
carries the profile as version tags so resolving ``models:/<profile>@champion`` needs no
artifact download.

Aliases (``champion``, ``challenger``) point at versions. ``promote`` moves an alias and
pushes the version on the alias's history (a registered-model tag); ``rollback`` pops it and
moves the alias back to the version before.
"""

from __future__ import annotations

import base64
import hashlib
import io
import json
import re
import tempfile
from dataclasses import dataclass, field
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

import mlflow
import pandas as pd
from mlflow.exceptions import MlflowException
from mlflow.pyfunc import PythonModel

from darkroom import tracking
from darkroom.config import Settings
from darkroom.errors import ModelError, ModelFilesMissing
from darkroom.generation.models import Lora, ModelRef, choices_file, local_model_digest
from darkroom.generation.types import SCHEDULERS, Request

PROFILE_TAG = "darkroom.profile"
HISTORY_TAG = "darkroom.alias_history.{alias}"  # JSON list of versions, oldest first
EVENTS_TAG = "darkroom.alias_events"  # JSON list of the last promotions and rollbacks
ALIASES = ("champion", "challenger")
# Generation parameters a profile may default; a campaign's explicit value wins. Size is
# not among them: QA checks the campaign's own width and height.
CAMPAIGN_DEFAULTS = ("scheduler", "steps", "guidance")
_URI = re.compile(r"^models:/(?P<name>[A-Za-z0-9_.\-]+)(?:@(?P<alias>[A-Za-z0-9_\-]+)|/(?P<version>\d+))$")


@dataclass(frozen=True)
class Profile:
    base: str  # hub id or local folder
    revision: str | None = None
    checksum: str | None = None  # sha256 of the weights folder (local) or as given (hub)
    loras: tuple[Lora, ...] = ()
    scheduler: str | None = None
    defaults: dict = field(default_factory=dict)  # steps, guidance, width, height

    def to_json(self) -> str:
        return json.dumps({"base": self.base, "revision": self.revision, "checksum": self.checksum,
                           "loras": [lora.__dict__ for lora in self.loras], "scheduler": self.scheduler,
                           "defaults": self.defaults}, sort_keys=True)

    @classmethod
    def from_json(cls, text: str) -> Profile:
        d = json.loads(text)
        return cls(base=d["base"], revision=d.get("revision"), checksum=d.get("checksum"),
                   loras=tuple(Lora(**x) for x in d.get("loras", [])), scheduler=d.get("scheduler"),
                   defaults=dict(d.get("defaults") or {}))

    @property
    def is_local(self) -> bool:
        return Path(self.base).expanduser().is_dir()


@dataclass(frozen=True)
class ResolvedProfile:
    name: str
    version: str  # the registry's version number, as a string
    profile: Profile
    alias: str | None = None

    @property
    def uri(self) -> str:
        return f"models:/{self.name}/{self.version}"


def parse_uri(uri: str) -> tuple[str, str | None, str | None]:
    """``models:/NAME@ALIAS`` or ``models:/NAME/VERSION`` -> (name, alias, version)."""
    m = _URI.match(uri)
    if not m:
        raise ModelError(f"generation.model = {uri!r} is not a profile reference; use "
                         "models:/<profile>@<alias> (e.g. models:/product_sd@champion) or "
                         "models:/<profile>/<version>")
    return m["name"], m["alias"], m["version"]


def client(settings: Settings):
    return tracking.use(settings)


def _tags_of(mv) -> Profile:
    text = (mv.tags or {}).get(PROFILE_TAG)
    if not text:
        raise ModelError(f"registered model {mv.name} version {mv.version} has no {PROFILE_TAG} tag: "
                         "it was not registered by `darkroom models register`; fix: register the "
                         "profile with darkroom")
    return Profile.from_json(text)


def resolve_profile(settings: Settings, uri: str, requested: str | None = None) -> ResolvedProfile:
    """Resolve a ``models:/`` reference to a concrete registry version.

    ``requested`` (the run's ``model_version`` Param) overrides what the reference selects:
    a version number (``3``) or an alias (``challenger``).
    """
    name, alias, version = parse_uri(uri)
    if requested:
        alias, version = (None, requested) if requested.isdigit() else (requested, None)
    c = client(settings)
    try:
        mv = c.get_model_version_by_alias(name, alias) if alias else c.get_model_version(name, version)
    except MlflowException as exc:
        what = f"alias @{alias}" if alias else f"version {version}"
        detail = exc.message if hasattr(exc, "message") else str(exc)
        if getattr(exc, "error_code", None) not in NOT_FOUND:
            raise ModelError(f"model profile {name!r} {what}: the registry at {settings.mlflow_tracking_uri} "
                             f"did not answer ({detail}); the task is retried", retryable=True) from None
        raise ModelError(
            f"model profile {name!r} has no {what} in the registry at {settings.mlflow_tracking_uri}"
            f"{_known(c, name)}; fix: use one of those as model_version, or `darkroom models register "
            f"{name} ...` then `darkroom models promote {name} VERSION --alias {alias or 'champion'}`"
        ) from None
    return ResolvedProfile(name=name, version=str(mv.version), profile=_tags_of(mv), alias=alias)


#: MLflow's error codes for a registered model, version or alias that does not exist.
NOT_FOUND = ("RESOURCE_DOES_NOT_EXIST", "INVALID_PARAMETER_VALUE", "NOT_FOUND")


def _known(c, name: str) -> str:
    """`` (it has versions 1, 2; aliases champion -> 2)`` for an error message; empty when
    the profile itself is unknown or the registry does not say."""
    try:
        rm = c.get_registered_model(name)
        versions = sorted((v.version for v in c.search_model_versions(f"name = '{name}'")), key=int)
    except Exception:
        return " (no such profile)"
    aliases = ", ".join(f"{a} -> {v}" for a, v in sorted((rm.aliases or {}).items()))
    return f" (it has versions {', '.join(map(str, versions)) or 'none'}; aliases {aliases or 'none'})"


def register(settings: Settings, name: str, base: str, *, revision: str | None = None,
             checksum: str | None = None, loras: list[Lora] | None = None, scheduler: str | None = None,
             defaults: dict | None = None, description: str = "") -> ResolvedProfile:
    """Register a new version of profile ``name``; returns it (no alias is moved)."""
    if scheduler and scheduler not in SCHEDULERS:
        raise ModelError(f"scheduler {scheduler!r} is not one of {sorted(SCHEDULERS)}")
    unknown = sorted(set(defaults or {}) - {"steps", "guidance", "width", "height"})
    if unknown:
        raise ModelError(f"profile defaults {unknown} are not known; allowed: steps, guidance, width, height")
    path = Path(base).expanduser()
    if path.is_dir():
        if not (path / "model_index.json").is_file():
            raise ModelError(f"{path} has no model_index.json: not a diffusers pipeline folder")
        digest = local_model_digest(path)
        if checksum and checksum != digest:
            raise ModelError(f"--checksum {checksum} does not match {path} (sha256 {digest})")
        base, checksum = str(path.resolve()), digest
    elif base.startswith(("/", ".", "~")):
        raise ModelError(f"base model {base!r}: folder does not exist")
    profile = Profile(base=base, revision=revision, checksum=checksum, loras=tuple(loras or ()),
                      scheduler=scheduler, defaults=dict(defaults or {}))
    c = client(settings)
    exp_id = tracking.experiment_id(settings, "darkroom/model-profiles", {"kind": "model_profiles"})
    with tempfile.TemporaryDirectory() as tmp, mlflow.start_run(experiment_id=exp_id,
                                                                run_name=f"register {name}"):
        spec = Path(tmp) / "profile.json"
        spec.write_text(profile.to_json())
        mlflow.log_params({"profile": name, "base": base, "revision": revision or "",
                           "checksum": checksum or "", "scheduler": scheduler or "",
                           "loras": json.dumps([lora.__dict__ for lora in profile.loras])})
        info = mlflow.pyfunc.log_model(
            name="profile", python_model=ProfileModel(), artifacts={"profile": str(spec)},
            # Explicit: inferring requirements would load the model and scan imports (slow).
            pip_requirements=["darkroom"], registered_model_name=name,
            metadata={"darkroom_profile": json.loads(profile.to_json())},
        )
    version = str(info.registered_model_version)
    c.set_model_version_tag(name, version, PROFILE_TAG, profile.to_json())
    c.set_model_version_tag(name, version, "base", base)
    if checksum:
        c.set_model_version_tag(name, version, "checksum", checksum)
    if description:
        c.update_model_version(name, version, description=description)
    remember_choices(settings, name)
    return ResolvedProfile(name=name, version=version, profile=profile)


def _history(c, name: str, alias: str) -> list[str]:
    tags = c.get_registered_model(name).tags or {}
    return json.loads(tags.get(HISTORY_TAG.format(alias=alias), "[]"))


def _record(c, name: str, alias: str, history: list[str], action: str, version: str) -> None:
    tags = c.get_registered_model(name).tags or {}
    events = json.loads(tags.get(EVENTS_TAG, "[]"))
    events.append({"alias": alias, "action": action, "version": version,
                   "at": datetime.now(UTC).isoformat(timespec="seconds")})
    # Tag values are size-limited: keep the last 100 versions and 30 events.
    c.set_registered_model_tag(name, HISTORY_TAG.format(alias=alias), json.dumps(history[-100:]))
    c.set_registered_model_tag(name, EVENTS_TAG, json.dumps(events[-30:]))


def promote(settings: Settings, name: str, version: str, alias: str = "champion") -> str | None:
    """Point ``alias`` at ``version``; return the version it pointed at before (or None)."""
    c = client(settings)
    try:
        c.get_model_version(name, str(version))
    except MlflowException:
        raise ModelError(f"model profile {name!r} has no version {version}; "
                         f"`darkroom models list {name}` shows its versions") from None
    history = _history(c, name, alias)
    previous = history[-1] if history else None
    if previous != str(version):
        history.append(str(version))
    c.set_registered_model_alias(name, alias, str(version))
    _record(c, name, alias, history, "promote", str(version))
    remember_choices(settings, name)
    return previous


def rollback(settings: Settings, name: str, alias: str = "champion") -> str:
    """Move ``alias`` back to the version it pointed at before the last promotion."""
    c = client(settings)
    history = _history(c, name, alias)
    if len(history) < 2:
        raise ModelError(f"model profile {name!r} alias @{alias} has no earlier version to roll back "
                         f"to (history: {history or 'empty'}); fix: promote a version explicitly")
    history.pop()
    version = history[-1]
    c.set_registered_model_alias(name, alias, version)
    _record(c, name, alias, history, "rollback", version)
    remember_choices(settings, name)
    return version


def describe(settings: Settings, name: str) -> dict:
    """Versions, aliases and alias history of one profile."""
    c = client(settings)
    rm = c.get_registered_model(name)
    versions = sorted(c.search_model_versions(f"name = '{name}'"), key=lambda v: int(v.version))
    aliases = dict(rm.aliases or {})
    # search_model_versions leaves each version's aliases empty: the registered model has them.
    by_version: dict[str, list[str]] = {}
    for alias, version in sorted(aliases.items()):
        by_version.setdefault(str(version), []).append(alias)
    remember_choices(settings, name, [v.version for v in versions], aliases)
    return {
        "name": name,
        "aliases": aliases,
        "history": {a: _history(c, name, a) for a in ALIASES},
        "events": json.loads((rm.tags or {}).get(EVENTS_TAG, "[]")),
        "versions": [{"version": v.version, "aliases": by_version.get(str(v.version), []),
                      "profile": json.loads((v.tags or {}).get(PROFILE_TAG, "{}"))} for v in versions],
    }


def remember_choices(settings: Settings, name: str, versions=None, aliases=None) -> None:
    """Note the profile's versions and aliases where the DAG file reads them at parse time
    (``models.profile_choices``: the trigger form's suggestions for ``model_version``). Best
    effort: the registry stays the truth, validate_inputs checks against it."""
    try:
        if versions is None or aliases is None:
            c = client(settings)
            aliases = dict(c.get_registered_model(name).aliases or {})
            versions = [v.version for v in c.search_model_versions(f"name = '{name}'")]
        path = choices_file(settings, name)
        path.parent.mkdir(parents=True, exist_ok=True)
        tmp = path.with_name(f".{path.name}.tmp")
        tmp.write_text(json.dumps({"versions": sorted({str(v) for v in versions}, key=int),
                                   "aliases": {a: str(v) for a, v in sorted(aliases.items())}}))
        tmp.replace(path)
    except Exception:  # a read-only home, a registry hiccup: suggestions are a convenience
        pass


# -- the pyfunc --------------------------------------------------------------------------

class ProfileModel(PythonModel):
    """``predict`` generates images with the profile.

    Input: a DataFrame with ``prompt`` and optionally ``negative_prompt``, ``seed``,
    ``steps``, ``guidance``, ``width``, ``height``. Output: the same rows with ``image_png``
    (base64 PNG) added.
    """

    def load_context(self, context) -> None:
        self.profile = Profile.from_json(Path(context.artifacts["profile"]).read_text())

    def predict(self, context, model_input, params: dict[str, Any] | None = None):
        # torch and diffusers: only a process that serves the pyfunc loads them.
        from darkroom.generation.local import LocalDiffusersBackend

        p = self.profile
        ref = model_ref(ResolvedProfile(name="pyfunc", version="0", profile=p))
        backend = LocalDiffusersBackend(ref, (params or {}).get("device", "auto"))
        d = {"steps": 20, "guidance": 7.5, "width": 512, "height": 512, **p.defaults}
        rows = model_input.to_dict("records") if hasattr(model_input, "to_dict") else list(model_input)
        out = []
        for i, row in enumerate(rows):
            req = Request(f"row{i}", row["prompt"], row.get("negative_prompt") or "",
                          int(row.get("seed", i)), int(row.get("width", d["width"])),
                          int(row.get("height", d["height"])), int(row.get("steps", d["steps"])),
                          float(row.get("guidance", d["guidance"])), p.scheduler or "ddim")
            [result] = backend.generate([req])
            buf = io.BytesIO()
            result.image.save(buf, format="PNG")
            out.append({**row, "image_png": base64.b64encode(buf.getvalue()).decode()})
        return pd.DataFrame(out)


def model_ref(rp: ResolvedProfile, verify: bool = True):
    """The :class:`darkroom.generation.models.ModelRef` of a resolved profile version.

    For a local base model the weights' checksum is verified: a folder that changed since
    registration would make the recorded version a lie.
    """
    p = rp.profile
    path = Path(p.base).expanduser()
    if path.is_dir():
        if verify and p.checksum:
            digest = local_model_digest(path)
            if digest != p.checksum:
                raise ModelError(
                    f"model profile {rp.name} version {rp.version}: weights at {path} have sha256 "
                    f"{digest[:12]}, the profile recorded {p.checksum[:12]}; fix: register the new "
                    f"weights as a new version (`darkroom models register {rp.name} {path}`)")
        location, is_local = str(path.resolve()), True
    elif p.base.startswith(("/", ".", "~")):
        raise ModelFilesMissing(f"model profile {rp.name} version {rp.version}: base folder {p.base} "
                                "is gone")
    else:
        location, is_local = p.base, False
    model_hash = (p.checksum or hashlib.sha256(f"{p.base}@{p.revision}".encode()).hexdigest())[:10]
    return ModelRef(name=rp.name, location=location, revision=p.revision, version=rp.version,
                    model_hash=model_hash, is_local=is_local, profile=rp.name,
                    loras=tuple(p.loras), base=p.base, base_checksum=p.checksum,
                    defaults=tuple(sorted({**p.defaults, "scheduler": p.scheduler}.items())))
