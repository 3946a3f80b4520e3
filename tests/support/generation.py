"""Run a campaign up to its generated originals in-process (validate, expand, generate one
batch), for tests of the generate stage's inputs and outputs."""

from __future__ import annotations

from pathlib import Path

from darkroom.catalog.tables import Asset, PlanItem
from darkroom.stages import generate, plan, validate
from darkroom.stages.context import RunContext
from sqlalchemy import select


def generate_once(spec: Path, run_id: str, dag_id: str = "campaign__spring_tiles"):
    """Return (ctx, counts, {product_id: asset}) for the variants this run planned, reused
    ones included; each asset's variant is loaded while the session is open."""
    ctx = RunContext.open(spec, dag_id, run_id, {})
    validate.run(ctx)
    (batch,) = plan.run(ctx)
    counts = generate.run(ctx, batch)
    with ctx.catalog.session() as s:
        planned = select(PlanItem.variant_id).where(PlanItem.run_pk == ctx.run_pk)
        assets = {a.variant.product_id: a
                  for a in s.scalars(select(Asset).where(Asset.variant_id.in_(planned)))}
        for a in assets.values():
            _ = a.variant.params
    return ctx, counts, assets
