"""``darkroom assets regenerate ASSET_ID``: make an asset again from what was recorded.

Reads the parameters from the catalog, loads the same model version (refusing another),
replays the recorded forward pass (the same variants, in the same order, each with its own
seed), encodes with the recorded provenance, writes a new file next to the original, and
compares checksums. Identical bytes prove the record is complete.

Why the whole pass: batched GEMMs sum in a shape-dependent order, so the same variant in
another batch can differ by one grey level in a handful of pixels (tests/test_inference.py
measures it). Seeds and latents are per variant; only that rounding is shared.
"""

from __future__ import annotations

from dataclasses import dataclass

from sqlalchemy import select

from darkroom import imaging
from darkroom.catalog import Catalog
from darkroom.config import Settings
from darkroom.errors import DarkroomError
from darkroom.models import Asset, Run, Variant
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
    from darkroom.inference import LocalDiffusersBackend, Request, resolve_model

    catalog = Catalog(settings.catalog_url)
    with catalog.session() as s:
        asset = s.get(Asset, asset_id)
        if asset is None or asset.uri is None:
            raise DarkroomError(f"no generated asset {asset_id!r}; `darkroom assets search` lists them")
        run = s.scalar(select(Run).where(Run.id == asset.run_pk))
        # The whole forward pass that made it, in order (one variant when not recorded).
        members = asset.forward_pass or [asset.variant_id]
        variants = {v.id: v for v in s.scalars(select(Variant).where(Variant.id.in_(members)))}
        missing = [m for m in members if m not in variants]
        if missing or asset.variant_id not in members:
            raise DarkroomError(
                f"asset {asset_id}: its recorded forward pass names unknown variants {missing}")
    # 1. The same model version, or nothing: another version cannot reproduce the pixels.
    ref = resolve_model(run.model_ref, None, settings, requested_version=asset.model_version)
    # 2. The recorded parameters, the same forward pass, each variant with its own seed.
    original = read_uri(asset.uri)
    provenance = imaging.read_provenance(original)
    if provenance is None:
        raise DarkroomError(f"{asset.uri} carries no provenance chunks; it cannot be checked")
    backend = LocalDiffusersBackend(ref, device)
    seeds = {m: variants[m].seed for m in members} | {asset.variant_id: asset.seed}
    requests = [Request(v.id, v.prompt, v.negative_prompt, seeds[v.id], asset.width, asset.height,
                        asset.steps, asset.guidance, asset.scheduler)
                for v in (variants[m] for m in members)]
    result = backend.generate(requests)[members.index(asset.variant_id)]
    # 3. Same encoder, same provenance: equal pixels give equal bytes.
    data = imaging.encode(result.image, asset.format or "png", provenance)
    storage = open_storage(settings.storage_url, endpoint_url=settings.s3_endpoint_url)
    key = f"{run.campaign_id}/{run.key}/regenerated/{asset.id}.{asset.format or 'png'}"
    stored = storage.put(key, data, "image/png")
    return Reproduction(asset.id, asset.uri, asset.sha256, stored.uri, stored.sha256)
