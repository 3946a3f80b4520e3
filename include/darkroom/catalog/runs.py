"""Runs and their plans: registering a DAG run, the variants it plans and the batch each
belongs to, the model it resolved, its summary, and the status counts every reader shares
(the run summary, the gallery, the approval sensor and the CLI).
"""

from __future__ import annotations

from dataclasses import dataclass, field
from datetime import datetime

from sqlalchemy import delete, func, insert, select

from darkroom.catalog.db import Catalog
from darkroom.catalog.tables import (
    REVIEWABLE,
    Asset,
    AssetStatus,
    Campaign,
    Derivative,
    DeviceUse,
    PlanItem,
    Run,
    ValidationResult,
    Variant,
)
from darkroom.ids import regenerated_variant_id, run_key

#: Variant ids per IN (...) list: under SQLite's bound-parameter limit.
CHUNK = 5000


@dataclass(frozen=True)
class RunRef:
    """A run as readers see it (detached from any session)."""

    pk: int
    campaign: str
    dag_id: str
    run_id: str
    state: str
    model_ref: str | None
    model_version: str | None
    mlflow_run_id: str | None
    contact_sheet_uri: str | None
    manifest_uri: str | None
    summary: dict = field(default_factory=dict)
    started_at: datetime | None = None
    attempt: int = 0
    model_identity: str | None = None

    @property
    def key(self) -> str:
        """The attempt's storage key segment (``darkroom.ids.run_key``)."""
        return run_key(self.run_id, self.attempt)


def _ref(run: Run) -> RunRef:
    return RunRef(run.id, run.campaign_id, run.dag_id, run.run_id, run.state, run.model_ref,
                  run.model_version, run.mlflow_run_id, run.contact_sheet_uri, run.manifest_uri,
                  dict(run.summary or {}), run.started_at, run.attempt, run.model_identity)


def _newest(s, dag_id: str, run_id: str) -> Run | None:
    return s.scalars(select(Run).where(Run.dag_id == dag_id, Run.run_id == run_id)
                     .order_by(Run.attempt.desc())).first()


# -- registering and finding runs ------------------------------------------------------------

def register(catalog: Catalog, loaded, dag_id: str, run_id: str, conf: dict, *,
             start: bool = False, model_identity: str | None = None) -> int:
    """Upsert the campaign row (its spec) and the run's attempt; return its primary key.

    This is the DAG run's newest attempt (the first, when there is none yet). The first task
    of a run (validate_inputs) passes ``start`` and the model it resolved (None when its
    worker cannot see the model): when the newest attempt was made with other Params or
    another model, the DAG run was re-processed (an Airflow backfill clears it and keeps its
    run id) and a new attempt starts, so the earlier attempt's assets, decisions and manifest
    stay as they were."""
    spec = loaded.spec
    with catalog.session() as s:
        campaign = s.get(Campaign, spec.id)
        body = spec.model_dump(mode="json")
        if campaign is None:
            s.add(Campaign(id=spec.id, spec_hash=spec.spec_hash, spec_path=str(loaded.path),
                           spec_body=body))
        elif campaign.spec_hash != spec.spec_hash:
            campaign.spec_hash, campaign.spec_body = spec.spec_hash, body
            campaign.spec_path = str(loaded.path)
        run = _newest(s, dag_id, run_id)
        redone = run is not None and start and (
            run.conf != conf or None not in (run.model_identity, model_identity)
            and run.model_identity != model_identity)
        if run is None or redone:
            run = Run(campaign_id=spec.id, dag_id=dag_id, run_id=run_id, spec_hash=spec.spec_hash,
                      conf=conf, model_ref=spec.generation.model,
                      attempt=run.attempt + 1 if run is not None else 0)
            s.add(run)
        if model_identity is not None:
            run.model_identity = model_identity
        s.flush()
        return run.id


def find_run(catalog: Catalog, dag_id: str, run_id: str, attempt: int | None = None) -> RunRef | None:
    """The run of an Airflow DAG run, if the catalog has it: its newest attempt, or ``attempt``."""
    with catalog.session() as s:
        if attempt is None:
            run = _newest(s, dag_id, run_id)
        else:
            run = s.scalar(select(Run).where(Run.dag_id == dag_id, Run.run_id == run_id,
                                             Run.attempt == attempt))
        return _ref(run) if run else None


def superseded(catalog: Catalog, run_pk: int) -> bool:
    """Whether a later attempt of the same DAG run exists (the DAG run was re-processed)."""
    with catalog.session() as s:
        run = s.get(Run, run_pk)
        return s.scalar(select(func.count()).select_from(Run).where(
            Run.dag_id == run.dag_id, Run.run_id == run.run_id, Run.attempt > run.attempt)) > 0


def get(catalog: Catalog, run_pk: int) -> RunRef:
    with catalog.session() as s:
        return _ref(s.get(Run, run_pk))


def spec_path(catalog: Catalog, campaign_id: str) -> str | None:
    """The spec file a campaign's latest run was made from (relative paths resolve against it)."""
    with catalog.session() as s:
        campaign = s.get(Campaign, campaign_id)
        return campaign.spec_path if campaign else None


def latest_run(catalog: Catalog, dag_id: str, since: datetime) -> RunRef | None:
    """The newest run of ``dag_id`` started at or after ``since`` (a run this process started)."""
    with catalog.session() as s:
        run = s.scalars(select(Run).where(Run.dag_id == dag_id, Run.started_at >= since)
                        .order_by(Run.id.desc())).first()
        return _ref(run) if run else None


def by_any_id(catalog: Catalog, run_id: str) -> RunRef | None:
    """A run by its Airflow run id or its MLflow run id (the newest, if several match)."""
    with catalog.session() as s:
        run = s.scalars(select(Run).where((Run.run_id == run_id) | (Run.mlflow_run_id == run_id))
                        .order_by(Run.id.desc())).first()
        return _ref(run) if run else None


def recent_runs(catalog: Catalog, dag_ids: set[str] | None = None, limit: int = 200) -> list[dict]:
    """Recent runs, newest first, with how many assets wait; ``dag_ids`` narrows (None: all)."""
    with catalog.session() as s:
        q = select(Run).order_by(Run.started_at.desc()).limit(limit)
        if dag_ids is not None:
            q = q.where(Run.dag_id.in_(sorted(dag_ids)))
        found = [_ref(r) for r in s.scalars(q)]
    out = []
    for run in found:
        c = counts(catalog, run.pk)
        out.append({"campaign": run.campaign, "dag_id": run.dag_id, "run_id": run.run_id,
                    "attempt": run.attempt, "state": run.state, "started_at": run.started_at,
                    "waiting": c.waiting, "total": c.total})
    return out


# -- status counts ----------------------------------------------------------------------------

@dataclass(frozen=True)
class RunCounts:
    """How many of a run's assets are in each status, and its derivatives: the one count
    behind the run summary, the gallery's run list, the approval sensor and the CLI."""

    statuses: dict[str, int] = field(default_factory=dict)
    derivatives: int = 0

    def of(self, *statuses: str) -> int:
        return sum(self.statuses.get(s, 0) for s in statuses)

    @property
    def total(self) -> int:
        return sum(self.statuses.values())

    @property
    def failed(self) -> int:
        return self.of(AssetStatus.failed)

    @property
    def generated(self) -> int:
        return self.total - self.failed

    @property
    def checked(self) -> int:
        """Every asset QA has seen, whatever happened to it after."""
        return self.generated - self.of(AssetStatus.generated)

    @property
    def qa_failed(self) -> int:
        return self.of(AssetStatus.qa_failed)

    @property
    def decided(self) -> int:
        return self.of(AssetStatus.approved, AssetStatus.rejected, AssetStatus.published)

    @property
    def published(self) -> int:
        return self.of(AssetStatus.published)

    @property
    def waiting(self) -> int:
        """Reviewable assets without a decision: what the approval sensor waits for."""
        return self.of(*REVIEWABLE)

    @property
    def approved(self) -> int:
        return self.of(AssetStatus.approved, AssetStatus.published)

    @property
    def rejected(self) -> int:
        return self.of(AssetStatus.rejected)

    @property
    def done(self) -> bool:
        """Nothing waits for a decision."""
        return self.waiting == 0


def counts(catalog: Catalog, run_pk: int) -> RunCounts:
    with catalog.session() as s:
        statuses = dict(s.execute(select(Asset.status, func.count()).where(Asset.run_pk == run_pk)
                                  .group_by(Asset.status)).all())
        derivatives = s.scalar(select(func.count()).select_from(Derivative).join(Asset)
                               .where(Asset.run_pk == run_pk))
    return RunCounts({str(k): n for k, n in statuses.items()}, derivatives or 0)


def approval_state(catalog: Catalog, dag_id: str, run_id: str) -> RunCounts:
    """The counts of a DAG run's assets (none when the catalog does not know the run)."""
    run = find_run(catalog, dag_id, run_id)
    return counts(catalog, run.pk) if run else RunCounts()


# -- the run's own record -------------------------------------------------------------------

def update_summary(catalog: Catalog, run_pk: int, **values) -> dict:
    """Merge ``values`` into the run's summary; return the whole summary."""
    with catalog.session() as s:
        run = s.get(Run, run_pk)
        run.summary = {**(run.summary or {}), **values}
        return dict(run.summary)


def record_model(catalog: Catalog, run_pk: int, ref, asset_type: str, *, campaign_model: bool = True) -> None:
    """The model version the run resolved for an asset type (a ``ModelRef``): its full record
    (profile, base, checksum, LoRAs) in the summary's ``models`` for tracking and for pinning
    it; the campaign's own model (``campaign_model``) also on the run itself."""
    with catalog.session() as s:
        run = s.get(Run, run_pk)
        summary = dict(run.summary or {})
        summary["models"] = {**summary.get("models", {}), asset_type: ref.record()}
        if campaign_model:
            run.model_ref, run.model_version = ref.reference, ref.version
            summary["model"] = ref.record()
        run.summary = summary


def record_validation(catalog: Catalog, run_pk: int, report) -> None:
    """The run's product-data validation result (a ``ValidationReport``), replacing any
    earlier one of the same run."""
    with catalog.session() as s:
        s.execute(delete(ValidationResult).where(ValidationResult.run_pk == run_pk))
        s.add(ValidationResult(run_pk=run_pk, suite=report.suite, success=report.success,
                               rows=report.rows, summary=report.summary()))


def set_contact_sheet(catalog: Catalog, run_pk: int, uri: str) -> None:
    with catalog.session() as s:
        s.get(Run, run_pk).contact_sheet_uri = uri


def set_mlflow_run(catalog: Catalog, run_pk: int, mlflow_run_id: str) -> None:
    with catalog.session() as s:
        s.get(Run, run_pk).mlflow_run_id = mlflow_run_id


def mark_ended(catalog: Catalog, run_pk: int, state: str, reason: str) -> None:
    """End a run that will not publish: ``failed`` (every asset failed) or ``stopped`` (a
    signal ended ``darkroom run``), the reason kept in its summary."""
    with catalog.session() as s:
        run = s.get(Run, run_pk)
        run.state = state
        run.summary = {**(run.summary or {}), "ended": reason}


def mark_published(catalog: Catalog, run_pk: int, manifest_uri: str, published_assets: int) -> None:
    with catalog.session() as s:
        run = s.get(Run, run_pk)
        run.manifest_uri = manifest_uri
        run.summary = {**(run.summary or {}), "published": published_assets}
        run.state = "published"


# -- the plan ---------------------------------------------------------------------------------

def _in_chunks(s, column, ids: list[str], *where) -> set:
    found: set = set()
    for i in range(0, len(ids), CHUNK):
        found |= set(s.scalars(select(column).where(column.in_(ids[i : i + CHUNK]), *where)))
    return found


def store_plan(catalog: Catalog, run_pk: int, campaign_id: str, variants: list, batches: list[list],
               rejected: list, routes: dict[str, str]) -> set[str]:
    """Store the new variants and the run's plan, in bulk (10,000 variants in one go).

    ``variants``: every rendered variant (``PlannedVariant``); ``batches``: the allowed ones,
    batched; ``rejected``: those the policy refused, planned with their reasons; ``routes``:
    variant id -> the backend routing chose for it. The plan is rebuilt whole on a retry:
    same inputs, same rows. Returns the ids of the variants that were new to the catalog."""
    with catalog.session() as s:
        ids = list(dict.fromkeys(v.id for v in variants))
        known = _in_chunks(s, Variant.id, ids)
        new = {v.id: v for v in variants if v.id not in known}
        if new:
            s.execute(insert(Variant), [
                dict(id=v.id, campaign_id=campaign_id, product_id=v.product_id, asset_type=v.asset_type,
                     channels=v.channels, template_version=v.template_version, prompt=v.prompt,
                     negative_prompt=v.negative_prompt, seed=v.seed, params=v.params)
                for v in new.values()])
        s.execute(delete(PlanItem).where(PlanItem.run_pk == run_pk))
        items, position = [], 0
        for b, batch in enumerate(batches):
            for v in batch:
                items.append(dict(run_pk=run_pk, variant_id=v.id, batch=b, position=position,
                                  status="planned", backend=routes.get(v.id)))
                position += 1
        for v in rejected:
            items.append(dict(run_pk=run_pk, variant_id=v.id, batch=-1, position=position,
                              status="policy_rejected", reason="; ".join(map(str, v.violations)),
                              backend=None))
            position += 1
        if items:
            s.execute(insert(PlanItem), items)
    return set(new)


def planned(catalog: Catalog, run_pk: int, batch: int) -> list[tuple[Variant, str | None]]:
    """The batch's planned variants, in plan order (detached rows), each with the backend
    routing chose for it when the run was planned (None: planned before that was recorded)."""
    with catalog.session() as s:
        return [tuple(row) for row in s.execute(
            select(Variant, PlanItem.backend).join(PlanItem, PlanItem.variant_id == Variant.id)
            .where(PlanItem.run_pk == run_pk, PlanItem.batch == batch, PlanItem.status == "planned")
            .order_by(PlanItem.position))]


def plan_regenerations(catalog: Catalog, run_pk: int, batch: int, failed_variant_ids: list[str], *,
                       seed_step: int, limit: int) -> list[str]:
    """A linked new variant (seed + ``seed_step``) for each failed one with attempts left
    (fewer than ``limit``), planned in the same batch; return the new ids. Idempotent: a
    variant already planned is not planned again."""
    new: list[str] = []
    with catalog.session() as s:
        position = s.scalar(select(func.max(PlanItem.position)).where(PlanItem.run_pk == run_pk)) or 0
        routes = dict(s.execute(select(PlanItem.variant_id, PlanItem.backend).where(
            PlanItem.run_pk == run_pk, PlanItem.variant_id.in_(failed_variant_ids))).all())
        for parent in s.scalars(select(Variant).where(Variant.id.in_(failed_variant_ids))):
            if parent.attempt >= limit:
                continue
            child_id = regenerated_variant_id(parent.id, parent.attempt + 1)
            if s.get(Variant, child_id) is None:
                s.add(Variant(id=child_id, campaign_id=parent.campaign_id, product_id=parent.product_id,
                              asset_type=parent.asset_type, channels=parent.channels,
                              template_version=parent.template_version, prompt=parent.prompt,
                              negative_prompt=parent.negative_prompt, seed=parent.seed + seed_step,
                              params={**parent.params, "regenerated_from": parent.id},
                              regenerated_from=parent.id, attempt=parent.attempt + 1))
                s.flush()
            if s.get(PlanItem, (run_pk, child_id)) is None:
                position += 1
                # The same product, the same facts: the parent's backend.
                s.add(PlanItem(run_pk=run_pk, variant_id=child_id, batch=batch, position=position,
                               backend=routes.get(parent.id)))
                new.append(child_id)
    return new


# -- what the GPU stages ran on -----------------------------------------------------------------

def record_device_use(catalog: Catalog, run_pk: int, *, batch: int, stage: str, worker: str, use,
                      images: int, seconds: float) -> None:
    """One GPU-stage task's device (a ``generation.types.DeviceUse``), images and seconds."""
    with catalog.session() as s:
        s.add(DeviceUse(run_pk=run_pk, batch=batch, stage=stage, worker=worker, device=use.device,
                        dtype=use.dtype, images=images, seconds=seconds,
                        peak_memory_bytes=use.peak_memory_bytes))


def device_use(catalog: Catalog, run_pk: int) -> list[DeviceUse]:
    """What the run's GPU-stage tasks recorded, oldest first (detached rows)."""
    with catalog.session() as s:
        return list(s.scalars(select(DeviceUse).where(DeviceUse.run_pk == run_pk).order_by(DeviceUse.id)))
