"""A campaign run for real through publish (tiny model, no Airflow), shared by the
provenance tests: originals, derivatives in three formats (one channel without the
watermark), signed published files in a DAM folder."""

from __future__ import annotations

import shutil
from dataclasses import dataclass
from pathlib import Path

import pytest
import yaml
from darkroom import stages
from darkroom.config import Settings
from darkroom.models import Asset, Derivative
from sqlalchemy import select
from sqlalchemy.orm import selectinload

ROOT = Path(__file__).resolve().parents[2]
CAMPAIGNS = ROOT / "include" / "campaigns"
APPROVER, NOTE = "ann", "colours match the brief"


@dataclass
class Published:
    ctx: stages.RunContext
    settings: Settings
    dam: Path
    spec_path: Path

    def files(self, channel: str) -> list[Path]:
        return sorted((self.dam / self.ctx.spec.id / channel).glob("*.*"))

    def derivatives(self) -> list[Derivative]:
        with self.ctx.catalog.session() as s:
            return list(s.scalars(select(Derivative).order_by(Derivative.id)))

    def assets(self) -> list[Asset]:
        with self.ctx.catalog.session() as s:
            return list(s.scalars(select(Asset).order_by(Asset.id).options(
                selectinload(Asset.variant), selectinload(Asset.derivatives))))


def write_spec(folder: Path, mutate=None) -> Path:
    """spring_tiles, one seed per product, a third channel: PNG without the watermark."""
    data = yaml.safe_load((CAMPAIGNS / "spring_tiles.yaml").read_text())
    data["brand"]["restricted_terms_file"] = str(ROOT / "include" / "brand" / "restricted_terms.txt")
    data["products"]["expectations"] = str(ROOT / "include" / "expectations" / "spring_tiles.json")
    shutil.copy(CAMPAIGNS / "spring_tiles.products.csv", folder / "products.csv")
    data["products"]["source"] = str(folder / "products.csv")
    data["generation"].update(seeds_per_variant=1, variants_per_task=4)
    data["channels"]["plain"] = {"width": 300, "height": 300, "format": "png", "watermark": False}
    data["asset_types"][0]["channels"] = ["web_tile", "marketplace", "plain"]
    # The tiny model's noise passes or fails blur checks by chance: keep QA deterministic.
    data["qa"] = {"checks": {"dimensions": {}, "duplicate": {"enabled": False}}}
    if mutate:
        mutate(data)
    path = folder / "spec.yaml"
    path.write_text(yaml.safe_dump(data))
    return path


def run_and_publish(folder: Path, limit: int = 2, mutate=None, publish: bool = True) -> Published:
    spec_path = write_spec(folder, mutate)
    settings = Settings.from_env()
    ctx = stages.RunContext.open(spec_path, "campaign__spring_tiles", "manual__1", {"limit": limit},
                                 settings=settings)
    stages.validate_inputs(ctx)
    for batch in stages.expand_prompts(ctx):
        stages.generate(ctx, batch)
        stages.run_qa(ctx, batch)
        stages.postprocess(ctx, batch)
    stages.settle_undecided(ctx, "approve", APPROVER, NOTE)
    if publish:
        stages.publish(ctx)
    return Published(ctx, settings, settings.home / "published" / "dam", spec_path)  # the spec's folder


@pytest.fixture
def published(tmp_path, use_tiny_model) -> Published:
    return run_and_publish(tmp_path)
