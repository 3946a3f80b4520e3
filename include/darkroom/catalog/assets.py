"""Assets and what hangs off them: the generated image's row and its LoRAs, QA results and
the perceptual hash, derivatives, publications.

The stages call these to record each result as it finishes (one short transaction each), so
a killed task loses only what it had not recorded.
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass, field
from datetime import datetime

from sqlalchemy import delete, or_, select, update
from sqlalchemy.dialects import postgresql, sqlite
from sqlalchemy.orm import selectinload

from darkroom.catalog.db import Catalog
from darkroom.catalog.tables import (
    Asset,
    AssetClaim,
    AssetLora,
    AssetStatus,
    Derivative,
    PlanItem,
    Publication,
    QAResult,
    Review,
    Run,
    Variant,
)
from darkroom.ids import key_part

#: Decided for good: an asset in one of these stays with the run that got it there, and a
#: later run that plans its variant reuses it instead of drawing, checking or publishing it
#: again.
SETTLED = (AssetStatus.published, AssetStatus.rejected, AssetStatus.qa_failed)


def generated_ids(catalog: Catalog, asset_ids) -> set[str]:
    """Those of ``asset_ids`` that exist and did not fail: what a retry skips."""
    with catalog.session() as s:
        return set(s.scalars(select(Asset.id).where(Asset.id.in_(list(asset_ids)),
                                                    Asset.status != AssetStatus.failed)))


# -- which run draws which asset -------------------------------------------------------------

@dataclass
class Claims:
    """What one run may do with the assets it planned (asset id -> variant id asked for).

    ``mine``: claimed by this run, now or by an earlier try of it, or adopted (among them,
    what it still has to draw); ``adopted``: taken over from runs that ended without
    deciding them; ``held``: another run, still running, draws or reviews them (asset id ->
    that run's pk); ``reused``: settled by runs before (published, rejected, failed QA).
    """

    mine: set[str] = field(default_factory=set)
    adopted: set[str] = field(default_factory=set)
    held: dict[str, int] = field(default_factory=dict)
    reused: set[str] = field(default_factory=set)


def _insert_ignoring_duplicates(s, rows: list[dict]) -> None:
    """INSERT ... ON CONFLICT DO NOTHING: the claims another run made first stay its own."""
    dialect = s.get_bind().dialect.name
    stmt = (postgresql if dialect == "postgresql" else sqlite).insert(AssetClaim)
    for i in range(0, len(rows), 2000):
        s.execute(stmt.on_conflict_do_nothing(), rows[i : i + 2000])


def claim(catalog: Catalog, run_pk: int, wanted: dict[str, str], alive: Callable[[int], bool], *,
          reserve: bool = True) -> Claims:
    """Claim the assets of ``wanted`` (asset id -> variant id) for run ``run_pk``.

    Each asset id is claimed by the first run to ask (a unique row: two runs planning the
    same variants at once split them, neither draws one twice). An asset another run
    claimed is that run's while ``alive(its pk)`` says it still runs; once it ended, what it
    left undecided (not drawn, drawn but not checked, checked but not reviewed, approved but
    not published) is adopted: the asset, and its claim, move to this run, which takes it
    through QA, review and publishing. Settled assets are reused. ``reserve=False`` (a dry
    run) answers the same without writing anything.
    """
    ids = list(wanted)
    out = Claims()
    if not ids:
        return out
    with catalog.session() as s:
        if reserve:
            _insert_ignoring_duplicates(s, [{"asset_id": a, "variant_id": wanted[a], "run_pk": run_pk}
                                            for a in ids])
        claimed: dict[str, int] = {}
        made: dict[str, tuple[int, str]] = {}
        for i in range(0, len(ids), 2000):
            chunk = ids[i : i + 2000]
            claimed.update(s.execute(select(AssetClaim.asset_id, AssetClaim.run_pk)
                                     .where(AssetClaim.asset_id.in_(chunk))).all())
            made.update((a, (pk, st)) for a, pk, st in s.execute(
                select(Asset.id, Asset.run_pk, Asset.status).where(Asset.id.in_(chunk))))
    # Whose is each: the asset's run once it exists, else the claim's.
    owners = {a: made[a][0] if a in made else claimed.get(a, run_pk) for a in ids}
    verdict: dict[int, bool] = {}
    to_adopt: dict[int, list[str]] = {}
    for a in ids:
        owner, status = owners[a], made.get(a, (None, None))[1]
        if status in SETTLED:
            (out.mine if owner == run_pk else out.reused).add(a)
        elif owner == run_pk:
            out.mine.add(a)
        else:
            if owner not in verdict:
                verdict[owner] = alive(owner)
            if verdict[owner]:
                out.held[a] = owner
            else:
                to_adopt.setdefault(owner, []).append(a)
    if not to_adopt:
        return out
    if not reserve:  # what a real run would adopt
        adopted = {a for group in to_adopt.values() for a in group}
        out.mine |= adopted
        out.adopted |= adopted
        return out
    with catalog.session() as s:
        for owner, group in to_adopt.items():
            for i in range(0, len(group), 2000):
                chunk = group[i : i + 2000]
                # Conditional on the owner, so two runs adopting at once cannot both win.
                s.execute(update(Asset).where(Asset.id.in_(chunk), Asset.run_pk == owner)
                          .values(run_pk=run_pk))
                s.execute(update(AssetClaim).where(AssetClaim.asset_id.in_(chunk),
                                                   AssetClaim.run_pk == owner).values(run_pk=run_pk))
        s.flush()
        group_ids = [a for group in to_adopt.values() for a in group]
        now = dict(s.execute(select(AssetClaim.asset_id, AssetClaim.run_pk)
                             .where(AssetClaim.asset_id.in_(group_ids))).all())
        assets_now = dict(s.execute(select(Asset.id, Asset.run_pk).where(Asset.id.in_(group_ids))).all())
    for a in group_ids:
        owner = assets_now.get(a, now.get(a))
        if owner == run_pk:
            out.mine.add(a)
            out.adopted.add(a)
        else:  # another run adopted it first: it is that run's now
            out.held[a] = owner
    return out


def claimed_by(catalog: Catalog, run_pk: int) -> set[str]:
    """The asset ids a run has claimed (drawn or still to draw)."""
    with catalog.session() as s:
        return set(s.scalars(select(AssetClaim.asset_id).where(AssetClaim.run_pk == run_pk)))


def record(catalog: Catalog, *, asset_id: str, variant, run_pk: int, ref, g, backend: str,
           **values) -> None:
    """Create or update one asset of ``variant`` made by ``ref`` (a ``ModelRef``) with the
    generation settings ``g``. A new asset of a variant that already has one is its next
    version and supersedes it."""
    with catalog.session() as s:
        asset = s.get(Asset, asset_id)
        if asset is None:
            prior = s.scalars(select(Asset).where(Asset.variant_id == variant.id, Asset.id != asset_id)
                              .order_by(Asset.version.desc())).first()
            asset = Asset(id=asset_id, variant_id=variant.id, version=prior.version + 1 if prior else 1,
                          supersedes_id=prior.id if prior else None)
            s.add(asset)
        asset.run_pk = run_pk
        asset.model_name, asset.model_version = ref.name, ref.version
        asset.loras, asset.scheduler, asset.steps = ref.lora_records, g.scheduler, g.steps
        asset.lora_rows = [AssetLora(name=x.name, version=x.version, weight=x.weight) for x in ref.loras]
        asset.guidance, asset.seed, asset.backend = g.guidance, variant.seed, backend
        for k, v in values.items():
            setattr(asset, k, v)


def get(catalog: Catalog, asset_id: str) -> Asset | None:
    """One asset with its variant loaded (detached), or None."""
    with catalog.session() as s:
        return s.scalar(select(Asset).where(Asset.id == asset_id).options(selectinload(Asset.variant)))


def fail(catalog: Catalog, asset_id: str, reason: str) -> None:
    with catalog.session() as s:
        a = s.get(Asset, asset_id)
        a.status = AssetStatus.failed
        a.failure_reason = reason[:2000]


def of_batch(catalog: Catalog, run_pk: int, batch: int | None, statuses) -> list[Asset]:
    """The run's assets in ``statuses`` (of one batch, or all when ``batch`` is None), in
    plan order, with their variant and reviews loaded."""
    q = (select(Asset).join(PlanItem, (PlanItem.variant_id == Asset.variant_id)
                            & (PlanItem.run_pk == Asset.run_pk))
         .where(Asset.run_pk == run_pk, Asset.status.in_(list(statuses)))
         .order_by(PlanItem.position)
         .options(selectinload(Asset.variant), selectinload(Asset.reviews)))
    if batch is not None:
        q = q.where(PlanItem.batch == batch)
    with catalog.session() as s:
        return list(s.scalars(q))


def of_run(catalog: Catalog, run_pk: int) -> list[Asset]:
    """Every asset of the run, oldest first, with variant, QA results and reviews loaded."""
    with catalog.session() as s:
        return list(s.scalars(
            select(Asset).where(Asset.run_pk == run_pk).order_by(Asset.created_at, Asset.id)
            .options(selectinload(Asset.variant), selectinload(Asset.qa_results),
                     selectinload(Asset.reviews))))


# -- QA ---------------------------------------------------------------------------------------

def campaign_hashes(catalog: Catalog, *, campaign_id: str, run_pk: int,
                    exclude=()) -> list[tuple[str, str]]:
    """(asset id, perceptual hash) to check new images against: the campaign's approved (and
    published) assets and every hashed asset of this run, except ``exclude``; oldest first."""
    skip = set(exclude)
    with catalog.session() as s:
        rows = s.execute(
            select(Asset.id, Asset.phash).join(Variant, Variant.id == Asset.variant_id)
            .where(Variant.campaign_id == campaign_id, Asset.phash.is_not(None),
                   or_(Asset.status.in_([AssetStatus.approved, AssetStatus.published]),
                       Asset.run_pk == run_pk))
            .order_by(Asset.created_at)).all()
    return [(asset_id, phash) for asset_id, phash in rows if asset_id not in skip]


def record_qa(catalog: Catalog, asset_id: str, results, *, phash: str | None, status: str,
              reasons: list[str], cpu_seconds: float) -> None:
    """An asset's QA results (``CheckResult``s, replacing earlier ones), its hash and outcome."""
    with catalog.session() as s:
        a = s.get(Asset, asset_id)
        s.execute(delete(QAResult).where(QAResult.asset_id == a.id))
        for r in results:
            s.add(QAResult(asset_id=a.id, check=r.check, value=r.value, threshold=r.threshold,
                           passed=r.passed, status=r.status, detail=r.detail))
        a.phash = phash
        a.status = AssetStatus(status)
        a.failure_reason = "; ".join(reasons)[:2000] or None
        a.timings = {**(a.timings or {}), "qa_cpu_s": round(cpu_seconds, 4)}


def recent_generate_seconds(catalog: Catalog, *, steps: int, width: int, height: int,
                            model_name: str | None = None, limit: int = 200) -> list[float]:
    """Seconds per image of the latest generations at this size and step count (and with
    this model, when given: a hero model and a fast one differ)."""
    where = [Asset.steps == steps, Asset.width == width, Asset.height == height,
             Asset.status != AssetStatus.failed]
    if model_name is not None:
        where.append(Asset.model_name == model_name)
    with catalog.session() as s:
        timings = list(s.scalars(
            select(Asset.timings).where(*where).order_by(Asset.created_at.desc()).limit(limit)))
    return [t["generate_s"] for t in timings if t and t.get("generate_s")]


def record_upscale(catalog: Catalog, asset_id: str, record: dict) -> None:
    """The model upscaler's output for an asset: {uri, sha256, by, to} or {by, to, error}."""
    with catalog.session() as s:
        s.get(Asset, asset_id).upscaled = record


# -- derivatives and publications -------------------------------------------------------------

def record_derivative(catalog: Catalog, asset_id: str, channel: str, stored, *, width: int,
                      height: int, format: str, phash: str | None = None, watermark: str | None = None,
                      watermark_key: str | None = None) -> None:
    """One channel's derivative of an asset (``stored``: where storage put it), with what
    ``darkroom verify`` traces it by: its perceptual hash, the watermark's method and key."""
    with catalog.session() as s:
        row = s.scalar(select(Derivative).where(Derivative.asset_id == asset_id,
                                                Derivative.channel == channel))
        if row is None:
            row = Derivative(asset_id=asset_id, channel=channel)
            s.add(row)
        row.uri, row.sha256, row.bytes = stored.uri, stored.sha256, stored.bytes
        row.width, row.height, row.format = width, height, format
        row.phash, row.watermark, row.watermark_key = phash, watermark, watermark_key


def record_thumbnail(catalog: Catalog, asset_id: str, stored) -> None:
    """The gallery's thumbnail of an asset (``stored``: where storage put it)."""
    with catalog.session() as s:
        s.execute(update(Asset).where(Asset.id == asset_id).values(
            thumbnail_uri=stored.uri, thumbnail_sha256=stored.sha256))


@dataclass(frozen=True)
class ThumbnailSource:
    """What making an asset's thumbnail needs: its original, and where the thumbnail goes."""

    asset_id: str
    original_uri: str | None
    thumbnail_uri: str | None
    thumbnail_sha256: str | None
    key: str  # {campaign}/{run}/thumbnails/{variant}.webp


def thumbnail_source(catalog: Catalog, asset_id: str) -> ThumbnailSource | None:
    """The asset's thumbnail as the catalog has it (None: no such asset)."""
    with catalog.session() as s:
        row = s.execute(select(Asset, Run).join(Run, Run.id == Asset.run_pk)
                        .where(Asset.id == asset_id)).first()
        if row is None:
            return None
        a, run = row
        return ThumbnailSource(a.id, a.uri, a.thumbnail_uri, a.thumbnail_sha256,
                               "/".join([run.campaign_id, run.key, *map(key_part, (
                                   "thumbnails", f"{a.variant_id}.webp"))]))


@dataclass(frozen=True)
class Claimed:
    """A derivative of an approved asset, claimed for publication."""

    asset_id: str
    asset_version: int
    model_name: str
    model_version: str
    seed: int
    variant_id: str
    product_id: str
    prompt: str
    derivative_id: int
    channel: str
    uri: str
    sha256: str
    bytes: int
    format: str
    approved_by: str
    approved_at: datetime
    approval_id: int  # the approving review's row
    approval_note: str | None
    original_uri: str  # the asset's original, the derivative's parent in its Content Credentials
    # The sealed file a publish before this one made (stages.sign), reused while it still holds.
    signed_uri: str | None = None
    signed_sha256: str | None = None
    signed_review_id: int | None = None


def claim_approved(catalog: Catalog, run_pk: int) -> list[Claimed]:
    """Claim every approved asset of the run for publication, in one transaction: the row
    is locked, its newest review re-checked, its status set to ``published``. A decision
    arriving after the claim is refused instead of silently losing to a copy under way; a
    retry (which selects approved and published assets) claims the same ones again."""
    work = []
    with catalog.session() as s:
        # From now on a decision on this run's assets could not take effect: refused (409).
        s.execute(update(Run).where(Run.id == run_pk).values(state="publishing"))
        assets = list(s.scalars(select(Asset).where(
            Asset.run_pk == run_pk, Asset.status.in_([AssetStatus.approved, AssetStatus.published]))
            .order_by(Asset.created_at, Asset.id).with_for_update()))
        for a in assets:
            approval = s.scalars(select(Review).where(Review.asset_id == a.id)
                                 .order_by(Review.id.desc())).first()
            if approval is None or approval.decision != AssetStatus.approved:
                continue  # never publish without an approval record
            a.status = AssetStatus.published
            v = a.variant
            for d in a.derivatives:
                work.append(Claimed(a.id, a.version, a.model_name, a.model_version, a.seed, v.id,
                                    v.product_id, v.prompt, d.id, d.channel, d.uri, d.sha256, d.bytes,
                                    d.format, approval.reviewer, approval.at, approval.id,
                                    approval.note, a.uri, d.signed_uri, d.signed_sha256,
                                    d.signed_review_id))
    return work


def record_signed(catalog: Catalog, derivative_id: int, stored, review_id: int) -> None:
    """The sealed file made for publication from a derivative (``stored``: where storage put
    it): Content Credentials carrying the approval ``review_id``."""
    with catalog.session() as s:
        row = s.get(Derivative, derivative_id)
        row.signed_uri, row.signed_sha256, row.signed_bytes = stored.uri, stored.sha256, stored.bytes
        row.signed_review_id = review_id


def record_publication(catalog: Catalog, *, derivative_id: int, run_pk: int, destination: str,
                       uri: str, sha256: str) -> None:
    """One derivative at one destination (a row per pair: publishing twice copies nothing)."""
    with catalog.session() as s:
        pub = s.scalar(select(Publication).where(Publication.derivative_id == derivative_id,
                                                 Publication.destination == destination))
        if pub is None:
            s.add(Publication(derivative_id=derivative_id, run_pk=run_pk, destination=destination,
                              uri=uri, sha256=sha256))
        elif (pub.uri, pub.sha256) != (uri, sha256):
            pub.uri, pub.sha256 = uri, sha256


def release_claims(catalog: Catalog, asset_ids) -> None:
    """Claimed assets that could not be published are ``approved`` again: a retry copies what
    is missing, and reviewers may still decide."""
    with catalog.session() as s:
        for asset_id in asset_ids:
            asset = s.get(Asset, asset_id)
            if asset is not None and asset.status == AssetStatus.published:
                asset.status = AssetStatus.approved
