"""From the spec's ``generation.model`` to a concrete, versioned :class:`ModelRef`.

``tiny`` (the offline random model), ``demo`` (the committed demo model), a local
``save_pretrained`` folder (its version is a content checksum), a hub id (its version is
the revision), or a model profile in the MLflow Model Registry (``models:/<profile>@<alias>``
or ``models:/<profile>/<version>``).
"""

from __future__ import annotations

import hashlib
from pathlib import Path

from darkroom.config import Settings
from darkroom.errors import ModelError, ModelFilesMissing
from darkroom.generation.models import CAMPAIGN_DEFAULTS, ModelRef, local_model_digest


def resolve_model(model: str, revision: str | None, settings: Settings,
                  requested_version: str | None = None) -> ModelRef:
    """Turn the spec's ``generation.model`` into a concrete, versioned reference.

    For a local folder the version is its content checksum; a requested ``model_version``
    must match it. For a hub id the version is the revision (the Param overrides the spec).
    For ``models:/<profile>@<alias>`` the registry at ``settings.mlflow_tracking_uri``
    resolves the alias to a version number; the Param may name a version or an alias.
    """
    if model.startswith("models:/"):
        # MLflow takes seconds to import: only runs of profile-based campaigns pay for it.
        from darkroom.generation import profiles

        return profiles.model_ref(profiles.resolve_profile(settings, model, requested_version))
    if model == "tiny":
        path = settings.tiny_model_dir
        if not (path / "model_index.json").is_file():
            raise ModelFilesMissing(
                f"the offline tiny model is not built at {path}; fix: run "
                f"`darkroom models build-tiny {path}` (make demo does this)"
            )
        return _local_ref(path, "tiny-sd", requested_version)
    if model == "demo":
        path = settings.demo_model_dir
        if not (path / "model_index.json").is_file():
            raise ModelError(
                f"the demo model is not at {path}; fix: run `darkroom models train-demo --out {path}` "
                "(about 30 minutes on a CPU), or unset DARKROOM_DEMO_MODEL to use the committed one"
            )
        return _local_ref(path, "darkroom-demo", requested_version)
    path = Path(model).expanduser()
    if path.is_dir():
        if not (path / "model_index.json").is_file():
            raise ModelError(f"{path} has no model_index.json: not a diffusers pipeline folder")
        return _local_ref(path, path.name, requested_version)
    if model.startswith(("/", ".", "~")):
        raise ModelFilesMissing(f"generation.model = {model!r}: folder does not exist")
    rev = requested_version or revision or "main"
    return ModelRef(name=model, location=model, revision=rev, version=rev,
                    model_hash=hashlib.sha256(f"{model}@{rev}".encode()).hexdigest()[:10],
                    is_local=False)


def _local_ref(path: Path, name: str, requested: str | None) -> ModelRef:
    digest = local_model_digest(path)
    version = digest[:12]
    if requested and not digest.startswith(requested):
        raise ModelError(
            f"model_version {requested!r} is not a version of {name} at {path}: a local folder has "
            f"one version, its checksum ({version}); fix: leave model_version empty, or give "
            f"{version}; to try another model, register both folders as versions of a profile "
            "(`darkroom models register NAME FOLDER`) and point generation.model at "
            "models:/NAME@champion (docs/regenerate.md)"
        )
    return ModelRef(name=name, location=str(path.resolve()), revision=None, version=version,
                    model_hash=digest[:10], is_local=True)


def effective_generation(g, ref: ModelRef):
    """The spec's generation block with the model profile's defaults (scheduler, steps,
    guidance) filled in where the spec does not set them itself."""
    update = {k: v for k, v in ref.defaults if k in CAMPAIGN_DEFAULTS and v is not None
              and k not in g.model_fields_set}
    return g.model_copy(update=update) if update else g


def for_asset_type(loaded, asset_type: str, settings: Settings, requested_version: str | None = None):
    """The model one asset type's variants are drawn with: its ``generation.model`` (the
    campaign's unless the asset type sets its own) resolved, its LoRAs on top, and its
    generation block with the profile's defaults. Returns ``(ref, generation)``."""
    g = loaded.spec.generation_for(asset_type)
    ref = resolve_model(g.model, g.revision, settings, requested_version)
    ref = ref.with_spec_loras(g.loras, loaded.resolve)
    return ref, effective_generation(g, ref)
