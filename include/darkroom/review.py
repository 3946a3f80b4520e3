"""Human decisions on assets. Each decision is an audit-logged row in ``review``.

The rule for the current state: an asset's decision is its newest review row (highest id);
the asset's status mirrors it. A decision on an asset that has moved on (published, failed
QA, failed, or superseded by a newer version) is refused.
"""

from __future__ import annotations

from sqlalchemy import select

from darkroom.catalog import Catalog
from darkroom.errors import ReviewError
from darkroom.models import REVIEWABLE, Asset, AssetStatus, Review, Run

DECISIONS = {"approve": AssetStatus.approved, "approved": AssetStatus.approved,
             "reject": AssetStatus.rejected, "rejected": AssetStatus.rejected}
DECIDABLE = (*REVIEWABLE, AssetStatus.approved, AssetStatus.rejected)


def decide(catalog: Catalog, asset_id: str, decision: str, reviewer: str, note: str = "") -> Review:
    if decision not in DECISIONS:
        raise ReviewError(f"decision {decision!r} is not one of approve, reject")
    if not reviewer:
        raise ReviewError("a decision needs a reviewer")
    status = DECISIONS[decision]
    with catalog.session() as s:
        # Lock the row where the database can (PostgreSQL) so two reviewers serialize.
        asset = s.scalar(select(Asset).where(Asset.id == asset_id).with_for_update())
        if asset is None:
            raise ReviewError(f"no asset {asset_id!r}; `darkroom review list` shows the waiting ones")
        newer = s.scalar(select(Asset.id).where(Asset.supersedes_id == asset.id))
        if newer:
            raise ReviewError(f"asset {asset_id} was superseded by {newer}; review that one")
        if asset.status not in DECIDABLE:
            raise ReviewError(f"asset {asset_id} is {asset.status}; only assets that passed QA "
                              "and are not yet published take a decision")
        row = Review(asset_id=asset.id, decision=status.value, reviewer=reviewer, note=note)
        s.add(row)
        asset.status = status
        s.flush()
        return row


def waiting(catalog: Catalog, campaign: str | None = None, run_id: str | None = None) -> list[Asset]:
    with catalog.session() as s:
        q = select(Asset).join(Run, Run.id == Asset.run_pk).where(Asset.status.in_(list(REVIEWABLE)))
        if campaign:
            q = q.where(Run.campaign_id == campaign)
        if run_id:
            q = q.where(Run.run_id == run_id)
        assets = list(s.scalars(q.order_by(Asset.created_at)))
        for a in assets:
            _ = a.variant, a.qa_results
        return assets
