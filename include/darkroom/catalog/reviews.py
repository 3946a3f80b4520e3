"""Human decisions on assets. Each decision is an audit-logged row in ``review``.

The rule for the current state, with the campaign's ``approval.quorum`` of 1 (the default):
an asset's decision is its newest review row (highest id); the asset's status mirrors it.
With a quorum of N > 1, each reviewer's latest row counts: any rejection rejects the asset,
N distinct approvals approve it, and until then it keeps waiting. Policy decisions (the
timeout policy, the review modes ``automated`` and ``exception``) are final and count as a
quorum on their own. A ``withdrawn`` row (the exception policy taking its approval back) ends
every decision before it: the asset waits for people again, and only rows after it count.

The exception policy's audit: when a person's rejection makes the rejected share of an
asset type's audit sample exceed ``audit_max_reject_rate``, the same transaction withdraws
the run's other approvals of that asset type by the policy (:func:`decide`, whichever way the
rejection came: gallery, API or CLI).

Deciding locks the run row, then the asset row (``SELECT ... FOR UPDATE`` on PostgreSQL, the
database write lock on SQLite; publishing takes them in the same order), so two reviewers
deciding at once are serialized: both rows are kept, the status follows the rule above, and
the audit counts every rejection. A decision on an asset that has moved on
(published, failed QA, failed, or superseded by a newer version) is refused with
:class:`AssetMovedOn`, and so is one that could no longer take effect: on an asset of a run
whose publish step has started or ended (the run is ``publishing`` or ``published``), or of a
run attempt a re-processed DAG run replaced. Decisions never re-open publishing: what a
finished run did not publish is published by a new run of a new version
(``darkroom regenerate``), whose reviewers decide on it.
"""

from __future__ import annotations

from dataclasses import dataclass

from sqlalchemy import String, cast, func, literal, select, tuple_, update
from sqlalchemy.orm import aliased, selectinload

from darkroom.catalog.db import Catalog
from darkroom.catalog.lineage import QA_ALIASES, asset_record
from darkroom.catalog.runs import RunRef
from darkroom.catalog.runs import get as get_run
from darkroom.catalog.tables import (
    REVIEWABLE,
    Asset,
    AssetStatus,
    Campaign,
    Derivative,
    QAResult,
    Review,
    Run,
    Variant,
)
from darkroom.errors import ReviewError

DECISIONS = {"approve": AssetStatus.approved, "approved": AssetStatus.approved,
             "reject": AssetStatus.rejected, "rejected": AssetStatus.rejected}
DECIDABLE = (*REVIEWABLE, AssetStatus.approved, AssetStatus.rejected)
MAX_NOTE = 4000
#: A review row that takes a policy's approval back (the exception policy's audit).
WITHDRAWN = "withdrawn"
#: The version of the review policies' rules; a change to what they approve bumps it, so
#: the audit log says which rules decided.
POLICY_VERSION = 1


def policy_reviewer(mode: str) -> str:
    """The reviewer name a review mode's decisions carry, e.g. ``policy:exception@1``."""
    return f"policy:{mode}@{POLICY_VERSION}"


class BadDecision(ReviewError):
    """The request itself is wrong (unknown decision word, no reviewer, note too long)."""


class AssetNotFound(ReviewError):
    """No asset with that id in the catalog."""


class AssetMovedOn(ReviewError):
    """The asset is past the point where a decision means anything (HTTP 409)."""


def decide(catalog: Catalog, asset_id: str, decision: str, reviewer: str, note: str = "", *,
           by_policy: bool = False) -> Review:
    """Record one decision; return its review row.

    :param by_policy: a policy decides (timeout, review modes): the decision is final (a
        quorum on its own) and never counts toward the exception policy's audit.

    :raises BadDecision: ``decision`` is not approve/reject, no reviewer, or the note is too long.
    :raises AssetNotFound: no such asset.
    :raises AssetMovedOn: the asset is published, superseded, failed or failed QA.
    """
    if decision not in DECISIONS:
        raise BadDecision(f"decision {decision!r} is not one of approve, reject")
    if not reviewer:
        raise BadDecision("a decision needs a reviewer")
    note = note or ""
    if len(note) > MAX_NOTE:
        raise BadDecision(f"note is {len(note)} characters; keep it under {MAX_NOTE}")
    status = DECISIONS[decision]
    with catalog.session() as s:
        # The run row first (publishing locks it first too): the audit's count of rejections
        # then sees every other decision of the run, committed before this one.
        run_pk = s.scalar(select(Asset.run_pk).where(Asset.id == asset_id))
        if run_pk is None:
            raise AssetNotFound(f"no asset {asset_id!r}; `darkroom review list` shows the waiting ones")
        run = s.scalar(select(Run).where(Run.id == run_pk).with_for_update())
        # Take the write lock before reading, so two reviewers serialize and the second reads
        # the first one's decision: a no-op UPDATE does it on SQLite (no row locks; its write
        # lock is per database), FOR UPDATE on PostgreSQL. Reading first on SQLite could see a
        # stale status, and an unchanged attribute emits no UPDATE: a lost decision.
        s.execute(update(Asset).where(Asset.id == asset_id).values(status=Asset.status))
        asset = s.scalar(select(Asset).where(Asset.id == asset_id).with_for_update())
        newer = s.scalar(select(Asset.id).where(Asset.supersedes_id == asset.id))
        if newer:
            raise AssetMovedOn(f"asset {asset_id} was superseded by {newer}; review that one")
        late = _too_late(s, run)
        if late:
            raise AssetMovedOn(f"asset {asset_id}: {late}")
        if asset.status not in DECIDABLE:
            raise AssetMovedOn(f"asset {asset_id} is {asset.status}; only assets that passed QA "
                               "and are not yet published take a decision")
        row = Review(asset_id=asset.id, decision=status.value, reviewer=reviewer, note=note)
        s.add(row)
        s.flush()
        asset.status = _status_after(s, asset, 1 if by_policy else _quorum(s, asset))
        s.flush()
        if not by_policy and asset.audit_sample and asset.status == AssetStatus.rejected:
            _audit(s, run, asset.variant.asset_type)
        return row


def _audit(s, run: Run, asset_type: str) -> int:
    """Reviewers rejected more than ``audit_max_reject_rate`` of the audit sample of
    ``asset_type``: withdraw the run's approvals of that type still standing by the exception
    policy, so people decide them. Returns how many (0 below the rate, and once done: the
    withdrawn approvals are no longer the assets' decisions)."""
    routing = ((run.summary or {}).get("review_routing") or {}).get(asset_type)
    if not routing or routing["review"] != "exception":
        return 0
    of_type = (select(Asset).join(Variant, Variant.id == Asset.variant_id)
               .where(Asset.run_pk == run.id, Variant.asset_type == asset_type))
    sample = list(s.scalars(of_type.where(Asset.audit_sample.is_(True))))
    rejected = sum(a.status == AssetStatus.rejected for a in sample)
    limit = routing["audit_max_reject_rate"]
    if rejected <= limit * len(sample):
        return 0
    policy = policy_reviewer("exception")
    note = (f"audit: reviewers rejected {rejected} of the {len(sample)} {asset_type} assets in the "
            f"audit sample, more than audit_max_reject_rate {limit:g}; the policy's approval is "
            "withdrawn and a person decides")
    withdrawn = 0
    for a in list(s.scalars(of_type.where(Asset.status == AssetStatus.approved).order_by(Asset.id)
                            .with_for_update())):
        latest = s.scalars(select(Review).where(Review.asset_id == a.id)
                           .order_by(Review.id.desc())).first()
        if latest is None or latest.reviewer != policy or latest.decision != AssetStatus.approved:
            continue  # a person's approval stands
        s.add(Review(asset_id=a.id, decision=WITHDRAWN, reviewer=policy, note=note))
        a.status = AssetStatus.qa_passed  # the policy approved only clean passes
        withdrawn += 1
    s.flush()
    return withdrawn


def _too_late(s, run: Run) -> str | None:
    """Why no decision on the run's assets can take effect any more, or None."""
    if run.state in ("publishing", "published"):
        return (f"run {run.run_id} has {'published' if run.state == 'published' else 'started publishing'}"
                "; a decision now would never be published; fix: regenerate it in a new run "
                "(`darkroom regenerate CAMPAIGN --model-version V --where status=rejected`), whose "
                "reviewers decide on the new version")
    newer = s.scalar(select(Run.attempt).where(Run.dag_id == run.dag_id, Run.run_id == run.run_id,
                                               Run.attempt > run.attempt).limit(1))
    if newer is not None:
        return (f"run {run.run_id} was re-processed (attempt {newer} replaced attempt {run.attempt}); "
                "decide in the newest attempt's gallery")
    return None


def open_for_decisions(catalog: Catalog, run: RunRef) -> bool:
    """Whether decisions on the run's assets can still take effect (the gallery's buttons)."""
    with catalog.session() as s:
        return _too_late(s, s.get(Run, run.pk)) is None


def _quorum(s, asset: Asset) -> int:
    """The campaign's approval.quorum, from the spec the run was made with."""
    campaign = s.scalar(select(Campaign).join(Run, Run.campaign_id == Campaign.id)
                        .where(Run.id == asset.run_pk))
    return int(((campaign.spec_body if campaign else {}) or {}).get("approval", {}).get("quorum", 1))


def _status_after(s, asset: Asset, quorum: int) -> AssetStatus:
    rows = list(s.scalars(select(Review).where(Review.asset_id == asset.id).order_by(Review.id)))
    withdrawals = [i for i, r in enumerate(rows) if r.decision == WITHDRAWN]
    rows = rows[withdrawals[-1] + 1:] if withdrawals else rows  # a withdrawal ends what came before
    if quorum <= 1:
        return DECISIONS[rows[-1].decision]
    latest = {r.reviewer: r.decision for r in rows}  # each reviewer's newest decision
    if AssetStatus.rejected in latest.values():
        return AssetStatus.rejected
    if sum(d == AssetStatus.approved for d in latest.values()) >= quorum:
        return AssetStatus.approved
    # Still waiting for more approvals: keep (or go back to) the outcome QA gave it.
    if asset.status in REVIEWABLE:
        return AssetStatus(asset.status)
    borderline = s.scalar(select(QAResult.id).where(
        QAResult.asset_id == asset.id, QAResult.status.in_(["borderline", "not_run"])).limit(1))
    return AssetStatus.needs_review if borderline else AssetStatus.qa_passed


def waiting_ids(catalog: Catalog, run_pk: int) -> list[str]:
    """The run's assets that wait for a decision (the set the approval sensor counts)."""
    with catalog.session() as s:
        return list(s.scalars(select(Asset.id).where(
            Asset.run_pk == run_pk, Asset.status.in_(list(REVIEWABLE))).order_by(Asset.id)))


@dataclass(frozen=True)
class Undecided:
    """A waiting asset nobody (person or policy) has decided on yet: what routing needs."""

    asset_id: str
    asset_type: str
    status: str  # qa_passed | needs_review
    doubts: list[str]  # needs_review: the borderline and not-run checks


def undecided(catalog: Catalog, run_pk: int) -> list[Undecided]:
    """The run's waiting assets without a single review row, in id order."""
    with catalog.session() as s:
        rows = s.execute(select(Asset.id, Variant.asset_type, Asset.status)
                         .join(Variant, Variant.id == Asset.variant_id)
                         .where(Asset.run_pk == run_pk, Asset.status.in_(list(REVIEWABLE)),
                                ~select(Review.id).where(Review.asset_id == Asset.id).exists())
                         .order_by(Asset.id)).all()
        doubts: dict[str, list[str]] = {}
        for q in s.scalars(select(QAResult).join(Asset, Asset.id == QAResult.asset_id).where(
                Asset.run_pk == run_pk, Asset.status == AssetStatus.needs_review,
                QAResult.status.in_(["borderline", "not_run"])).order_by(QAResult.check)):
            doubts.setdefault(q.asset_id, []).append(f"{q.check} {q.status}: {q.detail}")
    return [Undecided(r.id, r.asset_type, r.status, doubts.get(r.id, [])) for r in rows]


def mark_audit_sample(catalog: Catalog, asset_ids: list[str]) -> None:
    """Put assets in their run's audit sample (the exception policy's: people decide them)."""
    with catalog.session() as s:
        s.execute(update(Asset).where(Asset.id.in_(asset_ids)).values(audit_sample=True))


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


# -- reading, for the gallery, the JSON API and `darkroom review show` --------------------

def asset_run(catalog: Catalog, asset_id: str) -> RunRef:
    """The run an asset belongs to (whose DAG decides who may see and decide it)."""
    with catalog.session() as s:
        row = s.execute(select(Run).join(Asset, Asset.run_pk == Run.id)
                        .where(Asset.id == asset_id)).scalar()
        if row is None:
            raise AssetNotFound(f"no asset {asset_id!r}")
        run_pk = row.id
    return get_run(catalog, run_pk)


def show(catalog: Catalog, asset_id: str) -> dict:
    """Everything about one asset: lineage, QA, every review row (the audit log)."""
    with catalog.session() as s:
        a = s.scalar(select(Asset).where(Asset.id == asset_id).options(
            selectinload(Asset.qa_results), selectinload(Asset.reviews), selectinload(Asset.variant),
            selectinload(Asset.derivatives).selectinload(Derivative.publications)))
        if a is None:
            raise AssetNotFound(f"no asset {asset_id!r}; `darkroom assets search --json` lists them")
        run = s.get(Run, a.run_pk)
        record = asset_record(a, run)
        record["reviews"] = [{"id": r.id, "decision": r.decision, "reviewer": r.reviewer,
                              "note": r.note, "at": r.at} for r in a.reviews]
        record["superseded_by"] = s.scalar(select(Asset.id).where(Asset.supersedes_id == a.id))
        record["channels"] = list(a.variant.channels)
        record["variant_params"] = a.variant.params
        return record


#: The gallery's page size: a page of thumbnails renders at once, 10,000 assets do not.
PAGE_SIZE = 100
MAX_PAGE_SIZE = 500


class BadPage(ReviewError):
    """A gallery request that names an unknown status, cursor or page size (HTTP 400)."""


@dataclass(frozen=True)
class GalleryFilters:
    """The gallery's filters (each a query parameter); None: any."""

    status: str | None = None
    channel: str | None = None
    qa_failed: str | None = None  # a QA check's name (blur, blank: aliases), or "any"
    product: str | None = None
    audit_sample: bool | None = None

    def __post_init__(self):
        if self.status and self.status not in set(AssetStatus):
            raise BadPage(f"status {self.status!r} is not one of {', '.join(AssetStatus)}")

    def where(self, q, *, status: bool = True):
        """``q`` (a select over Asset) narrowed to these filters; ``status=False`` leaves the
        status out (the per-status counts)."""
        if status and self.status:
            q = q.where(Asset.status == self.status)
        if self.product:
            q = q.where(Asset.variant_id.in_(select(Variant.id).where(Variant.product_id == self.product)))
        if self.channel:
            # variant.channels is a JSON list of names; its text holds each as "name".
            quoted = '"' + self.channel.replace("\\", "\\\\").replace("%", "\\%").replace("_", "\\_") + '"'
            # Correlated, so each of the run's assets looks up its own variant (by key), not
            # every variant of every campaign.
            q = q.where(select(Variant.id).where(
                Variant.id == Asset.variant_id,
                cast(Variant.channels, String).like(f"%{quoted}%", escape="\\")).exists())
        if self.qa_failed:
            failed = select(QAResult.id).where(QAResult.asset_id == Asset.id, QAResult.passed.is_(False))
            if self.qa_failed != "any":
                failed = failed.where(QAResult.check == QA_ALIASES.get(self.qa_failed, self.qa_failed))
            q = q.where(failed.exists())
        if self.audit_sample is not None:
            q = q.where(Asset.audit_sample.is_(self.audit_sample))
        return q


@dataclass(frozen=True)
class GalleryPage:
    """One page of a run's gallery: keyset-paginated on (created_at, id), the order assets
    were made in, so a page boundary does not move when decisions take assets out of a
    status filter, and assets of batches still running appear at the end."""

    assets: list[dict]
    counts: dict[str, int]  # per status, under every filter but the status
    total: int  # assets matching every filter
    position: int  # matching assets before this page
    next_after: str | None  # the ``after`` cursor of the next page, None on the last
    prev_before: str | None  # the ``before`` cursor of the previous page, None on the first


def run_page(catalog: Catalog, run: RunRef, filters: GalleryFilters = GalleryFilters(), *,
             after: str | None = None, before: str | None = None, limit: int = PAGE_SIZE) -> GalleryPage:
    """A page of the run's assets that have an image (``after``/``before``: an asset id, the
    last of the page before / the first of the page after), with the per-status counts."""
    if not 1 <= limit <= MAX_PAGE_SIZE:
        raise BadPage(f"a page holds 1 to {MAX_PAGE_SIZE} assets, not {limit}")
    if after and before:
        raise BadPage("give after or before, not both")
    of_run = select(Asset).where(Asset.run_pk == run.pk, Asset.uri.is_not(None))
    with catalog.session() as s:
        cursor_id = after or before
        if cursor_id and s.scalar(select(Asset.id).where(Asset.id == cursor_id,
                                                         Asset.run_pk == run.pk)) is None:
            raise BadPage(f"cursor {cursor_id!r} is no asset of run {run.run_id!r}; "
                          "start from the first page")
        matching = filters.where(of_run)
        q = matching.options(selectinload(Asset.qa_results), selectinload(Asset.reviews),
                             selectinload(Asset.variant),
                             selectinload(Asset.derivatives).selectinload(Derivative.publications))
        if before:
            rows = list(s.scalars(q.where(_before(before)).order_by(Asset.created_at.desc(), Asset.id.desc())
                                  .limit(limit)))[::-1]
        else:
            q = q.where(_after(after)) if after else q
            rows = list(s.scalars(q.order_by(Asset.created_at, Asset.id).limit(limit + 1)))
        more_after = (len(rows) > limit) if not before else bool(rows) and s.scalar(
            select(func.count()).select_from(matching.where(_after(rows[-1].id)).subquery())) > 0
        rows = rows[:limit]
        counts = dict(s.execute(filters.where(select(Asset.status, func.count()).where(
            Asset.run_pk == run.pk, Asset.uri.is_not(None)), status=False).group_by(Asset.status)).all())
        total = counts.get(filters.status, 0) if filters.status else sum(counts.values())
        position = (s.scalar(select(func.count()).select_from(matching.where(_before(rows[0].id)).subquery()))
                    if rows else (total if after else 0))
        db_run = s.get(Run, run.pk)
        previous = _previous_versions(s, rows)
        records = [_gallery_record(a, db_run, previous.get(a.id)) for a in rows]
    return GalleryPage(records, counts, total, position,
                       next_after=rows[-1].id if rows and more_after else None,
                       prev_before=rows[0].id if rows and position > 0 else None)


def _key(asset_id: str):
    """(created_at, id) of an asset: the gallery's order."""
    at = aliased(Asset)
    return tuple_(select(at.created_at).where(at.id == asset_id).scalar_subquery(), literal(asset_id))


# Row values, so the run's (run_pk, created_at, id) index serves the range.
def _after(asset_id: str):
    return tuple_(Asset.created_at, Asset.id) > _key(asset_id)


def _before(asset_id: str):
    return tuple_(Asset.created_at, Asset.id) < _key(asset_id)


def _gallery_record(a: Asset, db_run: Run, previous: dict | None = None) -> dict:
    rec = asset_record(a, db_run)
    rec["channels"] = list(a.variant.channels)
    rec["reviews"] = [{"id": r.id, "decision": r.decision, "reviewer": r.reviewer,
                       "note": r.note, "at": r.at} for r in a.reviews]
    rec["failed_checks"] = [q for q in rec["qa"] if not q["passed"]]
    # What put it in the review band: the checks inside their band, and those that could not run.
    rec["doubts"] = [q for q in rec["qa"] if q["status"] in ("borderline", "not_run")]
    rec["previous"] = previous
    return rec


def _previous_versions(s, rows: list[Asset]) -> dict[str, dict]:
    """The version each asset of a page replaced, to show beside it: the older asset of the
    same variant (a new model version: ``supersedes``) or, for a QA regeneration (the next
    seed: a new variant), the newest asset of the variant it was regenerated from."""
    older_ids = {a.id: a.supersedes_id for a in rows if a.supersedes_id}
    from_variant = {a.id: a.variant.regenerated_from for a in rows
                    if not a.supersedes_id and a.variant.regenerated_from}
    found: dict[str, Asset] = {}
    if older_ids:
        found.update((a.id, a) for a in s.scalars(select(Asset).where(Asset.id.in_(set(older_ids.values())))
                                                  .options(selectinload(Asset.qa_results))))
    newest: dict[str, Asset] = {}
    if from_variant:
        for a in s.scalars(select(Asset).where(Asset.variant_id.in_(set(from_variant.values())))
                           .options(selectinload(Asset.qa_results)).order_by(Asset.version)):
            newest[a.variant_id] = a
    out = {}
    for asset_id, older in older_ids.items():
        if older in found:
            out[asset_id] = _previous_record(found[older], "an earlier model version")
    for asset_id, variant_id in from_variant.items():
        if variant_id in newest:
            out[asset_id] = _previous_record(newest[variant_id], "regenerated with the next seed")
    return out


def _previous_record(a: Asset, why: str) -> dict:
    return {"asset_id": a.id, "version": a.version, "status": a.status, "seed": a.seed,
            "model_version": a.model_version, "why": why,
            "failed_checks": [{"check": q.check, "value": q.value, "threshold": q.threshold,
                               "detail": q.detail} for q in a.qa_results if not q.passed]}


def campaign_spec(catalog: Catalog, run: RunRef) -> tuple[dict, str]:
    """The run's campaign spec as the catalog keeps it: (body, the spec file's path)."""
    with catalog.session() as s:
        row = s.execute(select(Campaign.spec_body, Campaign.spec_path)
                        .join(Run, Run.campaign_id == Campaign.id).where(Run.id == run.pk)).first()
    return (row[0] or {}, row[1]) if row else ({}, "")


def run_facets(catalog: Catalog, run: RunRef) -> dict[str, list[str]]:
    """What the run's filters can choose: its campaign's channels, its products, the QA
    checks some of its assets failed."""
    with catalog.session() as s:
        spec = s.scalar(select(Campaign.spec_body).join(Run, Run.campaign_id == Campaign.id)
                        .where(Run.id == run.pk)) or {}
        of_run = select(Asset.variant_id).where(Asset.run_pk == run.pk)
        products = list(s.scalars(select(Variant.product_id).where(Variant.id.in_(of_run))
                                  .distinct().order_by(Variant.product_id)))
        checks = list(s.scalars(select(QAResult.check).join(Asset, Asset.id == QAResult.asset_id)
                                .where(Asset.run_pk == run.pk, QAResult.passed.is_(False))
                                .distinct().order_by(QAResult.check)))
    return {"channels": sorted(spec.get("channels") or {}), "products": products, "qa_checks": checks}


def file_uri(catalog: Catalog, asset_id: str, kind: str) -> str:
    """The catalog's URI for an asset's original (``kind="original"``) or a channel's
    derivative (``kind=<channel>``). Only URIs recorded in the catalog are ever returned."""
    with catalog.session() as s:
        if kind == "original":
            uri = s.scalar(select(Asset.uri).where(Asset.id == asset_id))
        else:
            uri = s.scalar(select(Derivative.uri).where(Derivative.asset_id == asset_id,
                                                        Derivative.channel == kind))
    if not uri:
        raise AssetNotFound(f"asset {asset_id!r} has no {kind!r} file in the catalog")
    return uri
