"""``darkroom assets regenerate ASSET_ID``: make an asset again from what was recorded.

Reads the parameters from the catalog, loads the same model version and LoRAs (refusing
others), runs the variant with its seed in a forward pass of the recorded size, encodes with
the recorded provenance, writes a new file next to the original, and compares checksums.
Identical bytes prove the record is complete.

Why the pass size: batched GEMMs sum in an order that depends on the batch shape (not on the
other rows), so the same variant in a pass of another size can differ by one grey level in a
handful of pixels (tests/generation/test_local.py measures both).
"""

from __future__ import annotations

from dataclasses import dataclass, replace
from pathlib import Path

from darkroom import imaging
from darkroom.catalog import assets, runs
from darkroom.catalog.db import Catalog
from darkroom.config import Settings
from darkroom.errors import DarkroomError
from darkroom.generation import routing
from darkroom.generation.models import Lora, PipelineOptions, local_model_digest, resolve_location
from darkroom.generation.resolve import resolve_model
from darkroom.generation.types import Request
from darkroom.ids import key_part
from darkroom.stages.generate import input_fields
from darkroom.storage import open_storage, read_uri


@dataclass(frozen=True)
class Reproduction:
    asset_id: str
    original_uri: str
    original_sha256: str
    new_uri: str
    new_sha256: str

    @property
    def identical(self) -> bool:
        return self.original_sha256 == self.new_sha256


def regenerate_asset(asset_id: str, settings: Settings, *, device: str = "auto") -> Reproduction:
    """Make ``asset_id`` again from its record; write it beside the original; compare."""
    catalog = Catalog(settings.catalog_url)
    asset = assets.get(catalog, asset_id)
    if asset is None or asset.uri is None:
        raise DarkroomError(f"no generated asset {asset_id!r}; `darkroom assets search` lists them")
    run = runs.get(catalog, asset.run_pk)
    spec_path = runs.spec_path(catalog, run.campaign)
    spec_dir = Path(spec_path).parent if spec_path else Path.cwd()
    variant = asset.variant
    # The pass size decides the GEMM shapes (one variant when not recorded).
    pass_size = len(asset.forward_pass or [asset.variant_id])
    # 1. The same model version and LoRAs, or nothing: others cannot reproduce the pixels.
    ref = resolve_model(run.model_ref, None, settings, requested_version=asset.model_version)
    ref = with_recorded_loras(ref, asset.loras or [], spec_dir)
    # 2. The recorded parameters, this variant's seed, a forward pass of the recorded size.
    original = read_uri(asset.uri)
    provenance = imaging.read_provenance(original)
    if provenance is None:
        raise DarkroomError(f"{asset.uri} carries no provenance chunks; it cannot be checked")
    params = variant.params or {}
    backend = routing.make_backend("local", ref, settings, device=device,
                                   options=pipeline_options(params, spec_dir))
    request = Request(variant.id, variant.prompt, variant.negative_prompt, asset.seed, asset.width,
                      asset.height, asset.steps, asset.guidance, asset.scheduler,
                      **input_fields(params, asset.width, asset.height))
    [result] = backend.generate([request], pass_size=pass_size)
    # 3. Same encoder, same provenance: equal pixels give equal bytes.
    data = imaging.encode(result.image, asset.format or "png", provenance)
    storage = open_storage(settings.storage_url, endpoint_url=settings.s3_endpoint_url)
    key = f"{run.campaign}/{key_part(run.run_id)}/regenerated/{asset.id}.{asset.format or 'png'}"
    stored = storage.put(key, data, "image/png")
    return Reproduction(asset.id, asset.uri, asset.sha256, stored.uri, stored.sha256)


def with_recorded_loras(ref, records: list[dict], spec_dir: Path):
    """The spec's LoRAs as recorded on the asset (after the profile's own), checked against
    the files as they are now."""
    added = records[len(ref.loras):]
    if not added:
        return ref
    loras = tuple(Lora(r["name"], r["version"], r["weight"], r.get("path")) for r in added)
    for lora in loras:
        if lora.version != "hub" and lora.path and Path(lora.path).exists():
            now = local_model_digest(Path(lora.path))[:12]
            if now != lora.version:
                raise DarkroomError(f"LoRA {lora.name} at {lora.path} is now version {now}, the asset "
                                    f"was made with {lora.version}; it cannot be reproduced from it")
    return replace(ref, loras=ref.loras + loras, spec_loras=len(loras))


def pipeline_options(params: dict, spec_dir: Path) -> PipelineOptions:
    """The local pipeline's options the variant's parameters need (its IP-Adapter)."""
    ip = params.get("ip_adapter")
    if not ip:
        return PipelineOptions()
    resolve = lambda p: p if Path(p).is_absolute() else (spec_dir / p).resolve()  # noqa: E731
    return PipelineOptions(ip_adapter=(
        resolve_location(ip["path"], resolve), ip.get("subfolder", "models"), ip["weight_name"],
        ip.get("image_encoder") and resolve_location(ip["image_encoder"], resolve)))
