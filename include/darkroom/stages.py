"""The stages of a campaign run, as plain functions.

Each Airflow task calls one of these with a :class:`RunContext`; tests call them directly.
Every stage is idempotent: it reads its work from the catalog, skips what is done, and
writes each result as it finishes, so a retried or resumed task repeats nothing.
"""

from __future__ import annotations

import getpass
import logging
import time
from collections import Counter
from dataclasses import dataclass, field
from pathlib import Path

from sqlalchemy import delete, func, select

from darkroom import imaging, prompts, qa
from darkroom.catalog import Catalog
from darkroom.config import Settings
from darkroom.errors import PolicyError, ValidationFailed
from darkroom.models import (
    REVIEWABLE,
    Asset,
    AssetStatus,
    Campaign,
    Derivative,
    PlanItem,
    QAResult,
    Run,
    ValidationResult,
    Variant,
    safe_key,
)
from darkroom.spec import LoadedSpec, load_spec
from darkroom.storage import Storage, open_storage, read_uri

log = logging.getLogger("darkroom")


@dataclass
class RunConf:
    """The Params a person sets when triggering a run (Airflow UI, CLI --conf)."""

    model_version: str | None = None
    limit: int | None = None
    seed_offset: int = 0
    dry_run: bool = False

    @classmethod
    def from_dict(cls, conf: dict | None) -> RunConf:
        conf = dict(conf or {})
        limit = conf.get("limit")
        return cls(
            model_version=conf.get("model_version") or None,
            limit=int(limit) if limit not in (None, "", 0) else None,
            seed_offset=int(conf.get("seed_offset") or 0),
            dry_run=bool(conf.get("dry_run", False)),
        )


@dataclass
class RunContext:
    """Everything a stage needs: the spec, the run's identity and the outside world."""

    loaded: LoadedSpec
    dag_id: str
    run_id: str
    conf: RunConf
    settings: Settings
    catalog: Catalog
    storage: Storage
    s3_client_factory: object = None  # callable(aws_conn_id, endpoint_url) -> boto3 client
    _run_pk: int | None = field(default=None, repr=False)

    @classmethod
    def open(cls, spec_path: str | Path, dag_id: str, run_id: str, conf: dict | None = None,
             settings: Settings | None = None, s3_client=None, s3_client_factory=None) -> RunContext:
        settings = settings or Settings.from_env()
        return cls(
            loaded=load_spec(spec_path),
            dag_id=dag_id,
            run_id=run_id,
            conf=RunConf.from_dict(conf),
            settings=settings,
            catalog=Catalog(settings.catalog_url),
            storage=open_storage(settings.storage_url, s3_client=s3_client,
                                 endpoint_url=settings.s3_endpoint_url),
            s3_client_factory=s3_client_factory,
        )

    @property
    def spec(self):
        return self.loaded.spec

    @property
    def run_key(self) -> str:
        return safe_key(self.run_id)

    @property
    def run_pk(self) -> int:
        if self._run_pk is None:
            self._run_pk = register_run(self)
        return self._run_pk

    def key(self, *parts: str) -> str:
        return "/".join([self.spec.id, self.run_key, *parts])


def register_run(ctx: RunContext) -> int:
    """Upsert the campaign and run rows; return the run's primary key."""
    spec = ctx.spec
    with ctx.catalog.session() as s:
        campaign = s.get(Campaign, spec.id)
        body = spec.model_dump(mode="json")
        if campaign is None:
            s.add(Campaign(id=spec.id, spec_hash=spec.spec_hash, spec_path=str(ctx.loaded.path),
                           spec_body=body))
        elif campaign.spec_hash != spec.spec_hash:
            campaign.spec_hash, campaign.spec_body = spec.spec_hash, body
            campaign.spec_path = str(ctx.loaded.path)
        run = s.scalar(select(Run).where(Run.dag_id == ctx.dag_id, Run.run_id == ctx.run_id))
        if run is None:
            run = Run(campaign_id=spec.id, dag_id=ctx.dag_id, run_id=ctx.run_id,
                      spec_hash=spec.spec_hash, conf=ctx.conf.__dict__, model_ref=spec.generation.model)
            s.add(run)
            s.flush()
        return run.id


# 1. validate_inputs -------------------------------------------------------------------

def validate_inputs(ctx: RunContext) -> dict:
    """Check the product data with Great Expectations; store the result; fail on any miss."""
    from darkroom.products import load_products_frame
    from darkroom.validation import validate_products

    df = load_products_frame(ctx.loaded, s3_client=_s3_for_products(ctx))
    report = validate_products(ctx.loaded, df)
    with ctx.catalog.session() as s:
        s.execute(delete(ValidationResult).where(ValidationResult.run_pk == ctx.run_pk))
        s.add(ValidationResult(run_pk=ctx.run_pk, suite=report.suite, success=report.success,
                               rows=report.rows, summary=report.summary()))
    log.info("Validated %d product rows against %d expectations: %s", report.rows,
             report.evaluated, "passed" if report.success else "FAILED")
    if not report.success:
        raise ValidationFailed(f"{ctx.loaded.path}: product data failed validation; nothing was "
                               f"generated.\n{report.describe()}")
    return report.summary()


def _s3_for_products(ctx: RunContext):
    if ctx.loaded.product_source.startswith("s3://") and ctx.s3_client_factory:
        return ctx.s3_client_factory("aws_default", ctx.settings.s3_endpoint_url)
    return None


# 2. expand_prompts --------------------------------------------------------------------

def expand_prompts(ctx: RunContext) -> list[int]:
    """Render variants, store them and this run's plan; return the batch numbers to map over."""
    from darkroom.products import frame_to_rows, load_products_frame

    rows = frame_to_rows(load_products_frame(ctx.loaded, s3_client=_s3_for_products(ctx)))
    variants = prompts.render_variants(ctx.loaded, rows, seed_offset=ctx.conf.seed_offset)
    if ctx.conf.limit:
        variants = variants[: ctx.conf.limit]
    allowed = [v for v in variants if not v.violations]
    rejected = [v for v in variants if v.violations]
    for v in rejected:
        log.warning("Variant %s (product %s) rejected by policy: %s", v.id, v.product_id,
                    "; ".join(v.violations))
    if variants and not allowed:
        raise PolicyError(f"{ctx.loaded.path}: every variant broke the restricted-terms policy: "
                          + "; ".join(sorted({x for v in rejected for x in v.violations})))
    g = ctx.spec.generation
    batches = prompts.chunk(allowed, g.variants_per_task, g.max_mapped_tasks)
    with ctx.catalog.session() as s:
        known = set(s.scalars(select(Variant.id).where(Variant.id.in_([v.id for v in variants]))))
        for v in variants:
            if v.id not in known:
                s.add(Variant(id=v.id, campaign_id=ctx.spec.id, product_id=v.product_id,
                              asset_type=v.asset_type, channels=v.channels,
                              template_version=v.template_version, prompt=v.prompt,
                              negative_prompt=v.negative_prompt, seed=v.seed, params=v.params))
        s.flush()
        # The plan is rebuilt whole on a retry: same inputs, same rows.
        s.execute(delete(PlanItem).where(PlanItem.run_pk == ctx.run_pk))
        position = 0
        for b, batch in enumerate(batches):
            for v in batch:
                s.add(PlanItem(run_pk=ctx.run_pk, variant_id=v.id, batch=b, position=position))
                position += 1
        for v in rejected:
            s.add(PlanItem(run_pk=ctx.run_pk, variant_id=v.id, batch=-1, position=position,
                           status="policy_rejected", reason="; ".join(v.violations)))
            position += 1
        run = s.get(Run, ctx.run_pk)
        run.summary = {**(run.summary or {}), "planned": len(allowed), "policy_rejected": len(rejected),
                       "batches": len(batches)}
    log.info("Planned %d variants (%d rejected by policy) in %d batches of up to %d",
             len(allowed), len(rejected), len(batches), len(batches[0]) if batches else 0)
    if ctx.conf.dry_run:
        log.info("Dry run: stopping after the plan. %s", plan_text(ctx, len(allowed), len(batches)))
        return []
    return list(range(len(batches)))


def plan_text(ctx: RunContext, n: int, batches: int) -> str:
    g = ctx.spec.generation
    return (f"{n} variants x {g.steps} steps at {g.width}x{g.height}, {batches} mapped "
            f"task(s) per stage, channels: {', '.join(ctx.spec.channels)}")


# 3. generate --------------------------------------------------------------------------

def asset_id_for(variant_id: str, model_version: str) -> str:
    return prompts.short_hash(variant_id, model_version, length=24)


def _planned(s, ctx: RunContext, batch: int) -> list[Variant]:
    return list(s.scalars(
        select(Variant).join(PlanItem, PlanItem.variant_id == Variant.id)
        .where(PlanItem.run_pk == ctx.run_pk, PlanItem.batch == batch,
               PlanItem.status == "planned")
        .order_by(PlanItem.position)))


def generate(ctx: RunContext, batch: int, backend=None, progress=None) -> dict:
    """Generate one mapped batch. Each image is written and committed as it finishes."""
    from darkroom.inference import LocalDiffusersBackend, Request, resolve_model

    g = ctx.spec.generation
    # 1. Resolve the model to a concrete version (recorded on the run and every asset).
    ref = resolve_model(g.model, g.revision, ctx.settings, ctx.conf.model_version)
    with ctx.catalog.session() as s:
        run = s.get(Run, ctx.run_pk)
        run.model_ref, run.model_version = ref.location, ref.version
        variants = _planned(s, ctx, batch)
        ids = {v.id: asset_id_for(v.id, ref.version) for v in variants}
        done = {a.id for a in s.scalars(select(Asset).where(
            Asset.id.in_(ids.values()), Asset.status != AssetStatus.failed))}
    # 2. Skip variants already generated with this identity (retries, re-runs, refreshes).
    todo = [v for v in variants if ids[v.id] not in done]
    counts = Counter(skipped=len(variants) - len(todo))
    log.info("Batch %d: %d variants, %d already generated with model %s@%s, %d to generate",
             batch, len(variants), counts["skipped"], ref.name, ref.version, len(todo))
    if not todo:
        return {"batch": batch, **counts}
    backend = backend or LocalDiffusersBackend(ref, g.device)
    sampler = backend.sampler_name(g.scheduler)
    # 3. Batched inference, g.batch_size images per forward pass.
    for start in range(0, len(todo), g.batch_size):
        chunk = todo[start : start + g.batch_size]
        requests = [Request(v.id, v.prompt, v.negative_prompt, v.seed, g.width, g.height,
                            g.steps, g.guidance, g.scheduler) for v in chunk]
        try:
            results = backend.generate(requests)
        except Exception as exc:  # recorded per variant; the next run retries them
            reason = _failure_reason(exc)
            log.error("Batch %d: %d images failed: %s", batch, len(chunk), reason)
            for v in chunk:
                _record_failure(ctx, v, ids[v.id], ref, backend.name, reason)
            counts["failed"] += len(chunk)
            continue
        # 4. Write each original with its provenance, then its catalog row.
        for v, result in zip(chunk, results, strict=True):
            _record_image(ctx, v, ids[v.id], ref, backend.name, sampler, result)
            counts["generated"] += 1
            if progress:
                progress(1)
    log.info("Batch %d: generated %d, skipped %d, failed %d", batch, counts["generated"],
             counts["skipped"], counts["failed"])
    return {"batch": batch, **counts}


def _failure_reason(exc: Exception) -> str:
    text = f"{type(exc).__name__}: {exc}"
    if "out of memory" in text.lower():
        return f"oom: {text}"
    return f"error: {text}"[:500]


def _version_fields(s, variant_id: str, asset_id: str) -> tuple[int, str | None]:
    prior = s.scalars(select(Asset).where(Asset.variant_id == variant_id, Asset.id != asset_id)
                      .order_by(Asset.version.desc())).first()
    return (prior.version + 1, prior.id) if prior else (1, None)


def _upsert_asset(ctx: RunContext, variant: Variant, asset_id: str, ref, backend: str, **values):
    g = ctx.spec.generation
    with ctx.catalog.session() as s:
        asset = s.get(Asset, asset_id)
        if asset is None:
            version, supersedes = _version_fields(s, variant.id, asset_id)
            asset = Asset(id=asset_id, variant_id=variant.id, version=version,
                          supersedes_id=supersedes)
            s.add(asset)
        asset.run_pk = ctx.run_pk
        asset.model_name, asset.model_version = ref.name, ref.version
        asset.loras, asset.scheduler, asset.steps = [], g.scheduler, g.steps
        asset.guidance, asset.seed, asset.backend = g.guidance, variant.seed, backend
        for k, v in values.items():
            setattr(asset, k, v)


def _record_failure(ctx, variant, asset_id, ref, backend, reason):
    _upsert_asset(ctx, variant, asset_id, ref, backend, status=AssetStatus.failed,
                  failure_reason=reason)


def _record_image(ctx, variant: Variant, asset_id: str, ref, backend: str, sampler: str, result):
    g = ctx.spec.generation
    img = result.image
    prov = imaging.Provenance(
        parameters=imaging.infotext(
            prompt=variant.prompt, negative_prompt=variant.negative_prompt, steps=g.steps,
            sampler=sampler, guidance=g.guidance, seed=variant.seed, width=img.width,
            height=img.height, model_hash=ref.model_hash, model=ref.name,
            extra={"Model version": ref.version, "Version": "darkroom"}),
        darkroom={"asset_id": asset_id, "variant_id": variant.id, "campaign": ctx.spec.id,
                  "run_id": ctx.run_id, "product_id": variant.product_id,
                  "model": ref.location if not ref.is_local else ref.name,
                  "model_version": ref.version, "backend": backend},
    )
    data = imaging.encode(img, "png", prov)
    stored = ctx.storage.put(ctx.key("originals", f"{variant.id}.png"), data, "image/png")
    _upsert_asset(ctx, variant, asset_id, ref, backend, status=AssetStatus.generated,
                  failure_reason=None, uri=stored.uri, sha256=stored.sha256, width=img.width,
                  height=img.height, format="png", bytes=stored.bytes,
                  timings={"generate_s": round(result.seconds, 4)})


# 4. qa --------------------------------------------------------------------------------

def _run_assets(s, ctx: RunContext, batch: int | None, statuses) -> list[Asset]:
    q = (select(Asset).join(PlanItem, (PlanItem.variant_id == Asset.variant_id)
                            & (PlanItem.run_pk == Asset.run_pk))
         .where(Asset.run_pk == ctx.run_pk, Asset.status.in_(list(statuses)))
         .order_by(PlanItem.position))
    if batch is not None:
        q = q.where(PlanItem.batch == batch)
    return list(s.scalars(q))


QA_INPUT = (AssetStatus.generated, AssetStatus.qa_passed, AssetStatus.qa_failed,
            AssetStatus.needs_review)


def run_qa(ctx: RunContext, batch: int) -> dict:
    """Check each generated image of the batch; store every result and the outcome."""
    rubric = ctx.spec.qa.checks
    with ctx.catalog.session() as s:
        assets = [a for a in _run_assets(s, ctx, batch, QA_INPUT) if not a.reviews]
    counts = Counter()
    for asset in assets:
        started = time.perf_counter()
        expected = {"width": ctx.spec.generation.width, "height": ctx.spec.generation.height}
        try:
            data = read_uri(asset.uri, s3_client=getattr(ctx.storage, "client", None))
            img = imaging.decode(data)
            results = qa.run_checks(img, expected, rubric)
            prov = imaging.read_provenance(data)
            ok = prov is not None and prov.darkroom.get("asset_id") == asset.id
            results.append(qa.CheckResult("provenance", None, None, ok,
                                          "" if ok else "provenance chunks missing or for another asset"))
            phash = qa.perceptual_hash(img)
        except (imaging.BadImage, Exception) as exc:
            results = [qa.CheckResult("readable", None, None, False, str(exc)[:300])]
            phash = None
        passed = all(r.passed for r in results)
        with ctx.catalog.session() as s:
            a = s.get(Asset, asset.id)
            s.execute(delete(QAResult).where(QAResult.asset_id == a.id))
            for r in results:
                s.add(QAResult(asset_id=a.id, check=r.check, value=r.value, threshold=r.threshold,
                               passed=r.passed, detail=r.detail))
            a.phash = phash
            a.status = AssetStatus.qa_passed if passed else AssetStatus.qa_failed
            a.timings = {**(a.timings or {}), "qa_s": round(time.perf_counter() - started, 4)}
        counts["qa_passed" if passed else "qa_failed"] += 1
    log.info("QA batch %d: %d checked, %d passed, %d failed", batch, len(assets),
             counts["qa_passed"], counts["qa_failed"])
    return {"batch": batch, **counts}


# 5. postprocess -----------------------------------------------------------------------

def postprocess(ctx: RunContext, batch: int) -> dict:
    """Make each QA-passed asset's channel derivatives, provenance carried into each."""
    channels = ctx.spec.channels
    with ctx.catalog.session() as s:
        assets = _run_assets(s, ctx, batch, REVIEWABLE)
        variants = {a.id: a.variant for a in assets}
    made = 0
    for asset in assets:
        variant = variants[asset.id]
        original = read_uri(asset.uri, s3_client=getattr(ctx.storage, "client", None))
        prov = imaging.read_provenance(original)
        img = imaging.decode(original)
        for name in variant.channels:
            ch = channels[name]
            out = imaging.fit(img, ch.width, ch.height, ch.fit, ch.background)
            dprov = imaging.Provenance(prov.parameters, {**prov.darkroom, "channel": name})
            data = imaging.encode(out, ch.format, dprov, ch.quality)
            stored = ctx.storage.put(ctx.key("derivatives", name, f"{variant.id}.{ch.extension}"),
                                     data, f"image/{ch.format}")
            with ctx.catalog.session() as s:
                d = s.scalar(select(Derivative).where(Derivative.asset_id == asset.id,
                                                      Derivative.channel == name))
                if d is None:
                    d = Derivative(asset_id=asset.id, channel=name)
                    s.add(d)
                d.uri, d.sha256, d.bytes = stored.uri, stored.sha256, stored.bytes
                d.width, d.height, d.format = out.width, out.height, ch.format
            made += 1
    log.info("Postprocess batch %d: %d derivatives for %d assets", batch, made, len(assets))
    return {"batch": batch, "derivatives": made, "assets": len(assets)}


# 6. track -----------------------------------------------------------------------------

def contact_sheet(ctx: RunContext) -> str:
    """The run's contact sheet (every image, captioned, failures marked); return its URI."""
    with ctx.catalog.session() as s:
        assets = list(s.scalars(select(Asset).where(Asset.run_pk == ctx.run_pk)
                                .order_by(Asset.created_at)))
        tiles = []
        for a in assets:
            if a.uri is None:
                continue
            img = imaging.decode(read_uri(a.uri, s3_client=getattr(ctx.storage, "client", None)))
            tiles.append((img, f"{a.variant.product_id} {a.variant.asset_type} s{a.seed}", a.status))
    sheet = imaging.contact_sheet(tiles, title=f"{ctx.spec.id} / {ctx.run_id} / {len(tiles)} images")
    import io

    buf = io.BytesIO()
    sheet.save(buf, format="PNG")
    stored = ctx.storage.put(ctx.key("contact_sheet.png"), buf.getvalue(), "image/png")
    with ctx.catalog.session() as s:
        s.get(Run, ctx.run_pk).contact_sheet_uri = stored.uri
    return stored.uri


def run_counts(ctx: RunContext) -> dict:
    with ctx.catalog.session() as s:
        rows = s.execute(select(Asset.status, func.count()).where(Asset.run_pk == ctx.run_pk)
                         .group_by(Asset.status)).all()
    return {status: n for status, n in rows}


def track(ctx: RunContext) -> dict:
    """Contact sheet, then the MLflow run for this DAG run (params, metrics, artifacts)."""
    from darkroom import tracking

    sheet_uri = contact_sheet(ctx)
    mlflow_run_id = tracking.log_run(ctx, sheet_uri)
    with ctx.catalog.session() as s:
        s.get(Run, ctx.run_pk).mlflow_run_id = mlflow_run_id
    log.info("Tracked run in MLflow %s (run %s); contact sheet %s",
             ctx.settings.mlflow_tracking_uri, mlflow_run_id, sheet_uri)
    return {"mlflow_run_id": mlflow_run_id, "contact_sheet": sheet_uri}


# 7. await_approval --------------------------------------------------------------------

@dataclass(frozen=True)
class ApprovalState:
    waiting: int
    approved: int
    rejected: int

    @property
    def done(self) -> bool:
        return self.waiting == 0


def approval_state(catalog: Catalog, dag_id: str, run_id: str) -> ApprovalState:
    """How many of the run's reviewable assets still wait for a decision."""
    with catalog.session() as s:
        run = s.scalar(select(Run).where(Run.dag_id == dag_id, Run.run_id == run_id))
        if run is None:
            return ApprovalState(0, 0, 0)
        rows = dict(s.execute(select(Asset.status, func.count()).where(Asset.run_pk == run.id)
                              .group_by(Asset.status)).all())
    return ApprovalState(
        waiting=sum(rows.get(st, 0) for st in REVIEWABLE),
        approved=rows.get(AssetStatus.approved, 0) + rows.get(AssetStatus.published, 0),
        rejected=rows.get(AssetStatus.rejected, 0),
    )


def settle_undecided(ctx: RunContext, decision: str, reviewer: str, note: str) -> int:
    """Record ``decision`` for every asset still waiting (timeout policy, auto-approval)."""
    from darkroom import review

    with ctx.catalog.session() as s:
        waiting = [a.id for a in _run_assets(s, ctx, None, REVIEWABLE)]
    for asset_id in waiting:
        review.decide(ctx.catalog, asset_id, decision, reviewer, note)
    return len(waiting)


def local_user() -> str:
    try:
        return getpass.getuser()
    except Exception:
        return "local"


# 8. publish ---------------------------------------------------------------------------

def publish(ctx: RunContext) -> dict:
    from darkroom.publishing import publish_run

    return publish_run(ctx)
