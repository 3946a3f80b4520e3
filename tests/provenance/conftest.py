"""A campaign run for real through publish (tiny model, no Airflow), shared by the
provenance tests: originals, derivatives in three formats (one channel without the
watermark), signed published files in a DAM folder."""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path

import pytest
from darkroom.catalog.tables import Asset, Derivative
from darkroom.config import Settings
from darkroom.stages import approve, plan, sequence, validate
from darkroom.stages import publish as publish_stage
from darkroom.stages.context import RunContext
from sqlalchemy import select
from sqlalchemy.orm import selectinload

from tests.support.campaigns import small_spec

APPROVER, NOTE = "ann", "colours match the brief"


@dataclass
class Published:
    ctx: RunContext
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
    def provenance_campaign(data: dict) -> None:
        data["generation"].update(variants_per_task=4)
        data["channels"]["plain"] = {"width": 300, "height": 300, "format": "png", "watermark": False}
        data["asset_types"][0]["channels"] = ["web_tile", "marketplace", "plain"]
        # The tiny model's noise passes or fails blur checks by chance: keep QA deterministic.
        data["qa"] = {"checks": {"dimensions": {}, "duplicate": {"enabled": False}}}
        if mutate:
            mutate(data)

    return small_spec(folder, provenance_campaign)


def run_and_publish(folder: Path, limit: int = 2, mutate=None, publish: bool = True) -> Published:
    spec_path = write_spec(folder, mutate)
    settings = Settings.from_env()
    ctx = RunContext.open(spec_path, "campaign__spring_tiles", "manual__1", {"limit": limit},
                          settings=settings)
    validate.run(ctx)
    for batch in plan.run(ctx):
        sequence.run_batch(ctx, batch)
    approve.settle_undecided(ctx, "approve", APPROVER, NOTE)
    if publish:
        publish_stage.run(ctx)
    return Published(ctx, settings, settings.home / "published" / "dam", spec_path)  # the spec's folder


@pytest.fixture
def published(tmp_path, use_tiny_model) -> Published:
    return run_and_publish(tmp_path)
