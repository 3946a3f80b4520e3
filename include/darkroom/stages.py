"""The stages of a campaign run, as plain functions.

Each Airflow task calls one of these with a :class:`RunContext`; tests call them directly.
Every stage is idempotent: it reads its work from the catalog, skips what is done, and
writes each result as it finishes, so a retried or resumed task repeats nothing.
"""

from __future__ import annotations

import getpass
import logging
from collections import Counter
from dataclasses import dataclass, field
from pathlib import Path

from sqlalchemy import delete, func, insert, select

from darkroom import confine, imaging, prompts, publishing, qa
from darkroom.catalog import Catalog
from darkroom.config import Settings
from darkroom.errors import PolicyError, ValidationFailed
from darkroom.ids import key_part
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
)
from darkroom.spec import LoadedSpec, load_spec
from darkroom.storage import Storage, open_storage, read_uri, sha256_bytes

log = logging.getLogger("darkroom")


@dataclass
class RunConf:
    """The Params a person sets when triggering a run (Airflow UI, CLI --conf)."""

    model_version: str | None = None
    limit: int | None = None
    seed_offset: int = 0
    dry_run: bool = False
    # Only these variant ids (darkroom regenerate --where ...); None: every variant.
    variants: list[str] | None = None

    @classmethod
    def from_dict(cls, conf: dict | None) -> RunConf:
        conf = dict(conf or {})
        limit = conf.get("limit")
        return cls(
            model_version=conf.get("model_version") or None,
            limit=int(limit) if limit not in (None, "", 0) else None,
            seed_offset=int(conf.get("seed_offset") or 0),
            dry_run=bool(conf.get("dry_run", False)),
            variants=list(conf["variants"]) if conf.get("variants") else None,
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
    sql_url_factory: object = None  # callable(conn_id) -> SQLAlchemy URL (postgres:// products)
    _run_pk: int | None = field(default=None, repr=False)

    @classmethod
    def open(cls, spec_path: str | Path, dag_id: str, run_id: str, conf: dict | None = None,
             settings: Settings | None = None, s3_client=None, s3_client_factory=None,
             sql_url_factory=None) -> RunContext:
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
            sql_url_factory=sql_url_factory,
        )

    @property
    def spec(self):
        return self.loaded.spec

    @property
    def run_key(self) -> str:
        return key_part(self.run_id)

    @property
    def run_pk(self) -> int:
        if self._run_pk is None:
            self._run_pk = register_run(self)
        return self._run_pk

    def key(self, *parts: str) -> str:
        """The storage key ``{campaign}/{run}/{parts...}``, every part one safe segment."""
        return "/".join([self.spec.id, self.run_key, *map(key_part, parts)])


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
    """Check the product data with Great Expectations; store the result (catalog row and an
    HTML report in storage); fail on any miss, so nothing downstream runs."""
    from darkroom.validation import validate_products

    # 1. The files the spec names, and where it publishes: refused now, before any GPU work.
    brand_channels(ctx)
    for at in ctx.spec.asset_types:
        brand_rubric(ctx, at.name)
    for dest in ctx.spec.publish:
        publishing.destination_root(ctx, dest)
    # 2. The product data, with Great Expectations (reference images included).
    df = _products_frame(ctx)
    report = validate_products(ctx.loaded, df, s3_client_factory=lambda: _s3_client(ctx),
                               settings=ctx.settings)
    stored = ctx.storage.put(ctx.key("validation.html"),
                             report.to_html(f"{ctx.spec.id} / {ctx.run_id}: product data").encode(),
                             "text/html")
    report.report_uri = stored.uri
    with ctx.catalog.session() as s:
        s.execute(delete(ValidationResult).where(ValidationResult.run_pk == ctx.run_pk))
        s.add(ValidationResult(run_pk=ctx.run_pk, suite=report.suite, success=report.success,
                               rows=report.rows, summary=report.summary()))
    log.info("Validated %d product rows against %d expectations: %s (report %s)", report.rows,
             report.evaluated, "passed" if report.success else "FAILED", stored.uri)
    if not report.success:
        raise ValidationFailed(f"{ctx.loaded.path}: product data failed validation; nothing was "
                               f"generated.\n{report.describe()}")
    return report.summary()


def _confined(ctx: RunContext, field: str, raw: str) -> Path:
    try:
        return confine.brand_file(raw, ctx.loaded.path.parent, ctx.settings, what=field)
    except confine.OutsideRoots as exc:
        raise ValidationFailed(f"{ctx.loaded.path}: field `{field}` = {raw!r}: {exc}; nothing was "
                               "generated") from None


def brand_channels(ctx: RunContext) -> dict:
    """The spec's channels with their logo and font paths resolved under the brand roots
    (darkroom.confine), so recipes read only allowed files; ValidationFailed if one is not."""
    out = {}
    for name, ch in ctx.spec.channels.items():
        update = {}
        if ch.logo is not None:
            path = _confined(ctx, f"channels.{name}.logo.path", ch.logo.path)
            update["logo"] = ch.logo.model_copy(update={"path": str(path)})
        if ch.text is not None:
            path = _confined(ctx, f"channels.{name}.text.font", ch.text.font)
            update["text"] = ch.text.model_copy(update={"font": str(path)})
        out[name] = ch.model_copy(update=update) if update else ch
    return out


def brand_rubric(ctx: RunContext, asset_type: str) -> dict:
    """An asset type's QA rubric, brand reference folders resolved under the brand roots."""
    rubric = dict(ctx.spec.qa.for_asset_type(asset_type))
    for name, cfg in rubric.items():
        if cfg.params.get("references"):
            path = _confined(ctx, f"qa.checks.{name}.params.references", str(cfg.params["references"]))
            rubric[name] = cfg.model_copy(update={"params": {**cfg.params, "references": str(path)}})
    return rubric


def _s3_client(ctx: RunContext):
    """The client for s3:// product files and reference images (same endpoint as storage)."""
    if ctx.s3_client_factory:
        return ctx.s3_client_factory("aws_default", ctx.settings.s3_endpoint_url)
    client = getattr(ctx.storage, "client", None)
    if client is not None:
        return client
    import boto3

    return boto3.client("s3", endpoint_url=ctx.settings.s3_endpoint_url)


def _products_frame(ctx: RunContext):
    from darkroom.products import load_products_frame

    s3 = _s3_client(ctx) if ctx.loaded.product_source.startswith("s3://") else None
    return load_products_frame(ctx.loaded, s3_client=s3, sql_url_factory=ctx.sql_url_factory)


# 2. expand_prompts --------------------------------------------------------------------

def _input_images(ctx: RunContext, rows: list[dict]) -> dict[str, dict]:
    """Each product's reference (and mask) image for image2image, inpaint and IP-Adapter:
    where it is and its checksum. Empty when the campaign is text-to-image only."""
    g, p = ctx.spec.generation, ctx.spec.products
    if g.mode == "text2image" and not g.ip_adapter:
        return {}
    columns = [("reference", p.reference_image_column)]
    if g.mode == "inpaint":
        columns.append(("mask", p.mask_image_column))
    s3 = getattr(ctx.storage, "client", None)
    out: dict[str, dict] = {}
    for row in rows:
        pid = str(row[p.id_column])
        entry = {}
        for key, column in columns:
            value = row.get(column)
            if value is None or str(value).strip() == "":
                raise ValidationFailed(
                    f"{ctx.loaded.path}: product {pid} has no {key} image (column {column!r} is "
                    f"empty) but generation.mode is {g.mode}"
                    + (" with ip_adapter" if g.ip_adapter else "")
                    + "; fix: fill the column for every product, or remove the product")
            value = str(value).strip()
            try:
                uri = ctx.loaded.image_uri(value, ctx.settings)
            except confine.OutsideRoots as exc:
                raise ValidationFailed(f"{ctx.loaded.path}: product {pid}, column {column!r} = "
                                       f"{value!r}: {exc}") from None
            try:
                data = read_uri(uri, s3_client=s3)
            except Exception as exc:
                raise ValidationFailed(f"{ctx.loaded.path}: product {pid}, column {column!r} = "
                                       f"{value!r}: cannot read {uri}: {exc}; fix: point it at an "
                                       "existing file or s3:// object") from exc
            entry[key] = {"uri": uri, "sha256": sha256_bytes(data)}
        out[pid] = entry
    return out


def expand_prompts(ctx: RunContext) -> list[int]:
    """Render variants, store them and this run's plan; return the batch numbers to map over.

    Variant ids are hashes of their identity, so a re-run (or a scheduled refresh) finds the
    variants it already has, stores only the new ones, and generate skips what exists.
    """
    from darkroom.products import frame_to_rows

    # 1. Render products x asset types x locales x vary combinations x seeds.
    rows = frame_to_rows(_products_frame(ctx))
    variants = prompts.render_variants(ctx.loaded, rows, seed_offset=ctx.conf.seed_offset,
                                       inputs=_input_images(ctx, rows))
    if ctx.conf.variants:
        wanted = set(ctx.conf.variants)
        variants = [v for v in variants if v.id in wanted]
    if ctx.conf.limit:
        variants = variants[: ctx.conf.limit]
    # 2. Policy: a restricted term rejects that variant only, naming the term and its field.
    allowed = [v for v in variants if not v.violations]
    rejected = [v for v in variants if v.violations]
    terms = Counter(str(x) for v in rejected for x in v.violations)
    for v in rejected:
        log.warning("Variant %s (product %s, %s, seed %d) rejected by policy: %s", v.id, v.product_id,
                    v.asset_type, v.seed, "; ".join(map(str, v.violations)))
    if rejected:
        log.warning("Policy rejected %d of %d variants: %s", len(rejected), len(variants),
                    "; ".join(f"{t} x{n}" for t, n in terms.most_common()))
    if variants and not allowed:
        raise PolicyError(f"{ctx.loaded.path}: every variant broke the restricted-terms policy: "
                          + "; ".join(sorted(terms)))
    # 3. Batches: never more mapped tasks than the spec's ceiling.
    g = ctx.spec.generation
    batches = prompts.chunk(allowed, g.variants_per_task, g.max_mapped_tasks)
    # 4. Store new variants and the run's plan, in bulk (10,000 variants in one go).
    run_pk = ctx.run_pk  # registers the campaign row the variants point at
    with ctx.catalog.session() as s:
        ids = list(dict.fromkeys(v.id for v in variants))
        known: set[str] = set()
        for i in range(0, len(ids), 5000):  # under SQLite's bound-parameter limit
            known |= set(s.scalars(select(Variant.id).where(Variant.id.in_(ids[i : i + 5000]))))
        new = {v.id: v for v in variants if v.id not in known}
        if new:
            s.execute(insert(Variant), [
                dict(id=v.id, campaign_id=ctx.spec.id, product_id=v.product_id, asset_type=v.asset_type,
                     channels=v.channels, template_version=v.template_version, prompt=v.prompt,
                     negative_prompt=v.negative_prompt, seed=v.seed, params=v.params)
                for v in new.values()])
        # The plan is rebuilt whole on a retry: same inputs, same rows.
        s.execute(delete(PlanItem).where(PlanItem.run_pk == run_pk))
        items, position = [], 0
        for b, batch in enumerate(batches):
            for v in batch:
                items.append(dict(run_pk=run_pk, variant_id=v.id, batch=b, position=position,
                                  status="planned"))
                position += 1
        for v in rejected:
            items.append(dict(run_pk=run_pk, variant_id=v.id, batch=-1, position=position,
                              status="policy_rejected", reason="; ".join(map(str, v.violations))))
            position += 1
        if items:
            s.execute(insert(PlanItem), items)
        new_allowed = sum(1 for v in allowed if v.id in new)
        # Already generated (by any model version): what a re-run reuses when the model is unchanged.
        done: set[str] = set()
        allowed_ids = [v.id for v in allowed]
        for i in range(0, len(allowed_ids), 5000):
            done |= set(s.scalars(select(Asset.variant_id).where(
                Asset.variant_id.in_(allowed_ids[i : i + 5000]), Asset.status != AssetStatus.failed)))
        to_generate = len(allowed) - len(done)
        text = plan_text(ctx, len(allowed), len(batches), rejected=len(rejected), new=to_generate,
                         size=len(batches[0]) if batches else 0, session=s)
        run = s.get(Run, run_pk)
        run.summary = {**(run.summary or {}), "planned": len(allowed), "policy_rejected": len(rejected),
                       "policy_terms": dict(terms), "new_variants": new_allowed,
                       "to_generate": to_generate,
                       "batches": len(batches), "plan": text}
    log.info("Planned %d variants (%d new, %d to generate, %d rejected by policy) in %d batches of up to %d",
             len(allowed), new_allowed, to_generate, len(rejected), len(batches),
             len(batches[0]) if batches else 0)
    if ctx.conf.dry_run:
        log.info("Dry run: stopping after the plan.\n%s", text)
        return []
    return list(range(len(batches)))


def measured_seconds_per_image(ctx: RunContext, session=None) -> tuple[float | None, str]:
    """Seconds per image at this spec's size and steps: recorded generations in the catalog
    first (the same work on the same kind of worker), else docs/bench/generate.json scaled by
    steps and pixels, else unknown."""
    import json
    import statistics

    from darkroom.config import PROJECT_ROOT

    g = ctx.spec.generation
    q = (select(Asset.timings).where(Asset.steps == g.steps, Asset.width == g.width,
                                     Asset.height == g.height, Asset.status != AssetStatus.failed)
         .order_by(Asset.created_at.desc()).limit(200))
    if session is not None:
        timings = list(session.scalars(q))
    else:
        with ctx.catalog.session() as s:
            timings = list(s.scalars(q))
    values = [t["generate_s"] for t in timings if t and t.get("generate_s")]
    if values:
        return statistics.median(values), (f"median of the last {len(values)} recorded generations at "
                                           f"{g.width}x{g.height}, {g.steps} steps")
    bench = PROJECT_ROOT / "docs" / "bench" / "generate.json"
    try:
        data = json.loads(bench.read_text("utf-8"))
        best = max(data["runs"], key=lambda r: r["images_per_s"])
        scale = (g.steps / data["steps"]) * (g.width * g.height) / (data["size"] ** 2)
        return scale / best["images_per_s"], (
            f"docs/bench/generate.json: {best['images_per_s']} images/s at {data['size']}px, "
            f"{data['steps']} steps on {data.get('device')}, scaled by steps and pixels")
    except (OSError, ValueError, KeyError, ZeroDivisionError):
        return None, "no measured throughput yet: run `darkroom bench generate` or one real run"


def plan_text(ctx: RunContext, n: int, batches: int, *, rejected: int = 0, new: int | None = None,
              size: int = 0, session=None) -> str:
    """The dry-run plan: variants, batches, derivatives, estimated GPU time and cost."""
    g = ctx.spec.generation
    new = n if new is None else new
    per_variant = {at.name: len(at.channels) for at in ctx.spec.asset_types}
    lines = [
        f"Plan for {ctx.spec.id}: {n} variants ({new} to generate, {n - new} already generated; "
        f"{rejected} rejected by policy), {batches} mapped task(s) per stage of up to {size} "
        f"variants (ceiling {g.max_mapped_tasks}); {g.width}x{g.height}, {g.steps} steps; "
        f"channels: {', '.join(ctx.spec.channels)} (up to {n * max(per_variant.values())} derivatives)",
    ]
    spi, source = measured_seconds_per_image(ctx, session)
    if spi is None:
        lines.append(f"Estimated GPU time: unknown ({source})")
    else:
        hours = new * spi / 3600
        cost = (f"cost {hours * g.cost_per_gpu_hour:.2f} at {g.cost_per_gpu_hour} per GPU-hour"
                if g.cost_per_gpu_hour is not None
                else "cost: set generation.cost_per_gpu_hour to estimate it")
        lines.append(f"Estimated GPU time for the {new} variants to generate: {hours * 3600:.1f} s "
                     f"({hours:.3f} GPU-hours at {spi:.3f} s/image, from {source}); {cost}")
    return "\n".join(lines)


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
    from darkroom.inference import Request, generate_halving, input_fields, resolve_model

    g = ctx.spec.generation
    # 1. Resolve the model to a concrete version (recorded on the run and every asset).
    ref = resolve_model(g.model, g.revision, ctx.settings, ctx.conf.model_version)
    ref = ref.with_spec_loras(g.loras, ctx.loaded.resolve)
    g = effective_generation(g, ref)
    with ctx.catalog.session() as s:
        run = s.get(Run, ctx.run_pk)
        run.model_ref = f"models:/{ref.profile}/{ref.version}" if ref.profile else ref.location
        run.model_version = ref.version
        variants = _planned(s, ctx, batch)
        ids = {v.id: asset_id_for(v.id, ref.identity) for v in variants}
        done = {a.id for a in s.scalars(select(Asset).where(
            Asset.id.in_(ids.values()), Asset.status != AssetStatus.failed))}
    # 2. Skip variants already generated with this identity (retries, re-runs, refreshes).
    todo = [v for v in variants if ids[v.id] not in done]
    counts = Counter(skipped=len(variants) - len(todo))
    log.info("Batch %d: %d variants, %d already generated with model %s@%s, %d to generate",
             batch, len(variants), counts["skipped"], ref.name, ref.version, len(todo))
    if not todo:
        return {"batch": batch, **counts}
    if backend is None:  # generation.backend, or the backend a routing rule picks per variant
        from darkroom.backends.routed import backend_for_batch

        backend = backend_for_batch(ctx, ref, g, todo)
    sampler = backend.sampler_name(g.scheduler)
    # 3. Batched inference, g.batch_size images per forward pass (a short last pass is padded:
    #    the pass size, not its company, decides a variant's pixels).
    for start in range(0, len(todo), g.batch_size):
        chunk = todo[start : start + g.batch_size]
        try:
            requests = [Request(v.id, v.prompt, v.negative_prompt, v.seed, g.width, g.height,
                                g.steps, g.guidance, g.scheduler,
                                **input_fields(v.params, g.width, g.height,
                                               s3_client=getattr(ctx.storage, "client", None)))
                        for v in chunk]
            results = generate_halving(
                backend, requests, pass_size=g.batch_size,
                on_halve=lambda n, h: log.warning("Out of memory at batch size %d: retrying as %d", n, h))
        except Exception as exc:  # recorded per variant; the next run retries them
            reason = _failure_reason(exc)
            log.error("Batch %d: %d images failed: %s", batch, len(chunk), reason)
            for v in chunk:
                _record_failure(ctx, v, ids[v.id], ref, backend.name, reason)
            counts["failed"] += len(chunk)
            continue
        # 4. Write each original with its provenance, then its catalog row.
        for v, result in zip(chunk, results, strict=True):
            made_by = result.backend or backend.name
            if result.error:  # this variant only (e.g. content_filtered); the next run retries it
                log.warning("Variant %s failed on %s: %s", v.id, made_by, result.error)
                _record_failure(ctx, v, ids[v.id], ref, made_by, result.error[:500])
                counts["failed"] += 1
                continue
            _record_image(ctx, v, ids[v.id], ref, made_by, result.sampler or sampler, result)
            counts["generated"] += 1
            if progress:
                progress(1)
    log.info("Batch %d: generated %d, skipped %d, failed %d", batch, counts["generated"],
             counts["skipped"], counts["failed"])
    return {"batch": batch, **counts}


def _failure_reason(exc: Exception) -> str:
    text = f"{type(exc).__name__}: {exc}"
    if getattr(exc, "reason", None):  # darkroom.backends.BackendError: timeout, backend_unavailable...
        return f"{exc.reason}: {text}"[:500]
    if "out of memory" in text.lower():
        return f"oom: {text}"
    return f"error: {text}"[:500]


def _version_fields(s, variant_id: str, asset_id: str) -> tuple[int, str | None]:
    prior = s.scalars(select(Asset).where(Asset.variant_id == variant_id, Asset.id != asset_id)
                      .order_by(Asset.version.desc())).first()
    return (prior.version + 1, prior.id) if prior else (1, None)


def effective_generation(g, ref):
    """The spec's generation block with the model profile's defaults (scheduler, steps,
    guidance) filled in where the spec does not set them itself."""
    from darkroom.profiles import CAMPAIGN_DEFAULTS

    update = {k: v for k, v in ref.defaults if k in CAMPAIGN_DEFAULTS and v is not None
              and k not in g.model_fields_set}
    return g.model_copy(update=update) if update else g


def _upsert_asset(ctx: RunContext, variant: Variant, asset_id: str, ref, backend: str, **values):
    from darkroom.models import AssetLora

    g = effective_generation(ctx.spec.generation, ref)
    with ctx.catalog.session() as s:
        asset = s.get(Asset, asset_id)
        if asset is None:
            version, supersedes = _version_fields(s, variant.id, asset_id)
            asset = Asset(id=asset_id, variant_id=variant.id, version=version,
                          supersedes_id=supersedes)
            s.add(asset)
        asset.run_pk = ctx.run_pk
        asset.model_name, asset.model_version = ref.name, ref.version
        asset.loras, asset.scheduler, asset.steps = ref.lora_records, g.scheduler, g.steps
        asset.lora_rows = [AssetLora(name=x.name, version=x.version, weight=x.weight) for x in ref.loras]
        asset.guidance, asset.seed, asset.backend = g.guidance, variant.seed, backend
        for k, v in values.items():
            setattr(asset, k, v)


def _record_failure(ctx, variant, asset_id, ref, backend, reason):
    _upsert_asset(ctx, variant, asset_id, ref, backend, status=AssetStatus.failed,
                  failure_reason=reason)


def _record_image(ctx, variant: Variant, asset_id: str, ref, backend: str, sampler: str, result):
    g = effective_generation(ctx.spec.generation, ref)
    img = result.image
    prov = imaging.Provenance(
        parameters=imaging.infotext(
            prompt=variant.prompt, negative_prompt=variant.negative_prompt, steps=g.steps,
            sampler=sampler, guidance=g.guidance, seed=variant.seed, width=img.width,
            height=img.height, model_hash=ref.model_hash, model=ref.name,
            extra={**_infotext_extras(variant, ref), "Model version": ref.version,
                   "Asset id": asset_id, "Version": "darkroom"}),
        darkroom={"asset_id": asset_id, "variant_id": variant.id, "campaign": ctx.spec.id,
                  "run_id": ctx.run_id, "product_id": variant.product_id,
                  "model": ref.location if not ref.is_local else ref.name,
                  "model_version": ref.version, "backend": backend,
                  "pass_size": len(result.forward_pass or [variant.id]),
                  **({"loras": [{k: x[k] for k in ("name", "version", "weight")} for x in ref.lora_records]}
                     if ref.loras else {}),
                  **{k: (variant.params or {})[k] for k in ("mode", "strength", "reference", "mask",
                                                           "ip_adapter") if k in (variant.params or {})}},
    )
    data = imaging.encode(img, "png", prov)
    stored = ctx.storage.put(ctx.key("originals", f"{variant.id}.png"), data, "image/png")
    _upsert_asset(ctx, variant, asset_id, ref, backend, status=AssetStatus.generated,
                  failure_reason=None, uri=stored.uri, sha256=stored.sha256, width=img.width,
                  height=img.height, format="png", bytes=stored.bytes,
                  timings={"generate_s": round(result.seconds, 4)}, forward_pass=result.forward_pass)


def _infotext_extras(variant: Variant, ref) -> dict:
    """AUTOMATIC1111's own keys for what went beyond text-to-image, so its tools read them."""
    params, extra = variant.params or {}, {}
    if params.get("mode"):
        extra["Denoising strength"] = params["strength"]
        extra["Mode"] = params["mode"]
    if ref.loras:
        extra["Lora hashes"] = ", ".join(f"{x.name}: {x.version}" for x in ref.loras)
        extra["Lora weights"] = ", ".join(f"{x.name}: {x.weight:g}" for x in ref.loras)
    if params.get("ip_adapter"):
        extra["IP-Adapter"] = f"{params['ip_adapter']['weight_name']}: {params['ip_adapter']['scale']:g}"
    return extra


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


def run_qa(ctx: RunContext, batch: int, backend=None) -> dict:
    """Check each generated image of the batch; store every result and the outcome.

    Image checks run in parallel over the machine's cores (``qa.workers``), streaming;
    the near-duplicate check runs here, in plan order, against the campaign's approved
    hashes and the run's. With ``qa.max_regenerations`` > 0, failed variants get a linked
    new variant with the next seed, which is generated (``backend``, or the run's model) and
    checked in turn.
    """
    counts: Counter = Counter()
    only: set[str] | None = None  # None: every asset of the batch; then only regenerated ones
    for attempt in range(ctx.spec.qa.max_regenerations + 1):
        failed = _qa_assets(ctx, batch, counts, only)
        if attempt == ctx.spec.qa.max_regenerations or not failed:
            break
        new = _plan_regenerations(ctx, batch, failed)
        if not new:
            break
        generate(ctx, batch, backend=backend)
        with ctx.catalog.session() as s:
            only = set(s.scalars(select(Asset.id).where(Asset.run_pk == ctx.run_pk,
                                                        Asset.variant_id.in_(new))))
        counts["regenerated"] += len(new)
    log.info("QA batch %d: %d checked, %d passed, %d need review, %d failed, %d regenerated", batch,
             sum(counts[k] for k in ("qa_passed", "qa_failed", "needs_review")), counts["qa_passed"],
             counts["needs_review"], counts["qa_failed"], counts["regenerated"])
    return {"batch": batch, **counts}


def _qa_assets(ctx: RunContext, batch: int, counts: Counter, only: set[str] | None) -> list[str]:
    """QA the batch's unreviewed assets (or ``only`` these); return the failed variant ids."""
    from darkroom.imaging import default_workers, pool_size, process_map

    spec = ctx.spec
    with ctx.catalog.session() as s:
        assets = [a for a in _run_assets(s, ctx, batch, QA_INPUT)
                  if not a.reviews and (only is None or a.id in only)]
        variants = {a.id: a.variant for a in assets}
        by_type = {t: brand_rubric(ctx, t) for t in {v.asset_type for v in variants.values()}}
        rubrics = {a.id: by_type[variants[a.id].asset_type] for a in assets}
        dup_ts = [int(r["duplicate"].threshold if r["duplicate"].threshold is not None else 6)
                  for r in rubrics.values() if "duplicate" in r]
        index = qa.hash_index(s, campaign_id=spec.id, run_pk=ctx.run_pk, radius=max(dup_ts or [0]),
                              exclude={a.id for a in assets})
    s3 = getattr(ctx.storage, "client", None)

    def jobs():  # lazily read: at most `inflight` originals are in memory at once
        for a in assets:
            try:
                data = read_uri(a.uri, s3_client=s3)
            except Exception as exc:
                data = b""
                log.error("QA: cannot read %s: %s", a.uri, exc)
            yield a, (data, {k: v for k, v in rubrics[a.id].items() if k in qa.CHECKS}), dict(
                width=spec.generation.width, height=spec.generation.height, asset_id=a.id,
                seed=a.seed, prompt=variants[a.id].prompt)

    workers = pool_size(len(assets), spec.generation.width * spec.generation.height,
                        spec.qa.workers or default_workers())
    failed: list[str] = []
    for asset, res in process_map(qa.analyse, jobs(), workers=workers):
        rubric = rubrics[asset.id]
        if isinstance(res, Exception):
            res = qa.Analysis([qa.CheckResult("readable", None, None, False,
                                              f"QA worker failed: {type(res).__name__}: {res}"[:300])], None)
        results = list(res.results)
        if "duplicate" in rubric:
            results.append(qa.check_duplicate(res.phash, index, rubric["duplicate"]))
        if res.phash:
            index.add(asset.id, res.phash)
        status, reasons = qa.outcome(results, rubric)
        with ctx.catalog.session() as s:
            a = s.get(Asset, asset.id)
            s.execute(delete(QAResult).where(QAResult.asset_id == a.id))
            for r in results:
                s.add(QAResult(asset_id=a.id, check=r.check, value=r.value, threshold=r.threshold,
                               passed=r.passed, status=r.status, detail=r.detail))
            a.phash = res.phash
            a.status = AssetStatus(status)
            a.failure_reason = "; ".join(reasons)[:2000] or None
            a.timings = {**(a.timings or {}), "qa_cpu_s": round(res.seconds, 4)}
        counts[status] += 1
        if status == AssetStatus.qa_failed:
            failed.append(asset.variant_id)
    return failed


def _plan_regenerations(ctx: RunContext, batch: int, failed_variant_ids: list[str]) -> list[str]:
    """A linked new variant (the next unused seed) for each failed one with attempts left.

    The next seed is ``seed + seeds_per_variant``: ``seed + 1`` is usually a sibling variant
    of the same product, which would regenerate an image the run already has.
    """
    step = ctx.spec.generation.seeds_per_variant
    limit = ctx.spec.qa.max_regenerations
    new: list[str] = []
    with ctx.catalog.session() as s:
        position = s.scalar(select(func.max(PlanItem.position)).where(PlanItem.run_pk == ctx.run_pk)) or 0
        for parent in s.scalars(select(Variant).where(Variant.id.in_(failed_variant_ids))):
            if parent.attempt >= limit:
                continue
            child_id = prompts.short_hash(parent.id, "regenerate", parent.attempt + 1, length=len(parent.id))
            if s.get(Variant, child_id) is None:
                s.add(Variant(id=child_id, campaign_id=parent.campaign_id, product_id=parent.product_id,
                              asset_type=parent.asset_type, channels=parent.channels,
                              template_version=parent.template_version, prompt=parent.prompt,
                              negative_prompt=parent.negative_prompt, seed=parent.seed + step,
                              params={**parent.params, "regenerated_from": parent.id},
                              regenerated_from=parent.id, attempt=parent.attempt + 1))
                s.flush()
            if s.get(PlanItem, (ctx.run_pk, child_id)) is None:
                position += 1
                s.add(PlanItem(run_pk=ctx.run_pk, variant_id=child_id, batch=batch, position=position))
                new.append(child_id)
    if new:
        log.info("QA batch %d: regenerating %d failed variant(s) with the next seed", batch, len(new))
    return new


# 5. postprocess -----------------------------------------------------------------------

def postprocess(ctx: RunContext, batch: int) -> dict:
    """Make each QA-passed asset's channel derivatives (darkroom.postprocess recipes),
    provenance carried into each; in parallel over the machine's cores, streaming."""
    from darkroom import postprocess as pp
    from darkroom.imaging import default_workers, pool_size, process_map

    channels = brand_channels(ctx)
    # 1. A recipe that cannot work (missing logo or font, no upscaler) fails the task now,
    #    with the field to fix, instead of failing every asset one by one.
    pp.check_recipes(channels, model_upscaler=ctx.spec.generation.upscaler)
    with ctx.catalog.session() as s:
        assets = _run_assets(s, ctx, batch, REVIEWABLE)
        variants = {a.id: a.variant for a in assets}
    s3 = getattr(ctx.storage, "client", None)

    def jobs():
        for a in assets:
            v = variants[a.id]
            yield a, (read_uri(a.uri, s3_client=s3), {n: channels[n] for n in v.channels}), \
                {"locale": (v.params or {}).get("locale")}

    largest = max((c.width * c.height for c in channels.values()), default=0)
    workers = pool_size(len(assets), largest, ctx.spec.qa.workers or default_workers())
    made = failed = 0
    # 2. Render in worker processes; store each derivative and its row as it comes back.
    #    A model upscaler (generation.upscaler) runs here, in this process, as jobs are pulled.
    upscaled_jobs = pp.model_upscaled(jobs(), ctx.spec.generation.upscaler)
    for asset, res in process_map(pp.render_all, upscaled_jobs, workers=workers):
        variant = variants[asset.id]
        if isinstance(res, Exception):  # one bad original never stops the batch
            log.error("Postprocess: asset %s failed: %s", asset.id, res)
            with ctx.catalog.session() as s:
                a = s.get(Asset, asset.id)
                a.status = AssetStatus.failed
                a.failure_reason = f"postprocess: {type(res).__name__}: {res}"[:2000]
            failed += 1
            continue
        for d in res:
            stored = ctx.storage.put(ctx.key("derivatives", d.channel, f"{variant.id}.{d.extension}"),
                                     d.data, f"image/{d.format}")
            with ctx.catalog.session() as s:
                row = s.scalar(select(Derivative).where(Derivative.asset_id == asset.id,
                                                        Derivative.channel == d.channel))
                if row is None:
                    row = Derivative(asset_id=asset.id, channel=d.channel)
                    s.add(row)
                row.uri, row.sha256, row.bytes = stored.uri, stored.sha256, stored.bytes
                row.width, row.height, row.format = d.width, d.height, d.format
                row.phash, row.watermark, row.watermark_key = d.phash, d.watermark, d.watermark_key
            made += 1
    log.info("Postprocess batch %d: %d derivatives for %d assets, %d failed", batch, made,
             len(assets), failed)
    return {"batch": batch, "derivatives": made, "assets": len(assets), "failed": failed}


# 6. track -----------------------------------------------------------------------------

def contact_sheet(ctx: RunContext) -> str:
    """The run's contact sheet: every image, captioned with variant, channels and QA status,
    failures marked; stored with the run. Return its URI."""
    import io

    s3 = getattr(ctx.storage, "client", None)
    with ctx.catalog.session() as s:
        assets = list(s.scalars(select(Asset).where(Asset.run_pk == ctx.run_pk)
                                .order_by(Asset.created_at, Asset.id)))
        tiles = []
        for a in assets:
            img = None
            if a.uri is not None:
                try:  # thumbnail at once: the sheet holds thumbnails, never full images
                    img = imaging.decode(read_uri(a.uri, s3_client=s3))
                    img.thumbnail((320, 320), imaging.Image.Resampling.LANCZOS)
                except Exception as exc:
                    log.warning("Contact sheet: cannot read %s: %s", a.uri, exc)
            v = a.variant
            caption = (f"{v.id[:10]} s{a.seed}" + (f" (retry {v.attempt})" if v.attempt else "")
                       + f"\n{v.product_id} {v.asset_type}\n{', '.join(v.channels)}")
            tiles.append((img, caption, a.status))
    sheet = imaging.contact_sheet(tiles, title=f"{ctx.spec.id} / {ctx.run_id} / {len(tiles)} images")
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


def run_to_review(ctx: RunContext) -> list[int]:
    """Every stage before await_approval, in the DAG's order, in this process (scripts,
    notebooks, tests); return the batch numbers. The DAG maps the batch stages instead."""
    validate_inputs(ctx)
    batches = expand_prompts(ctx)
    for b in batches:
        generate(ctx, b)
        run_qa(ctx, b)
        postprocess(ctx, b)
    track(ctx)
    return batches


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
        # The same set approval_state counts: every reviewable asset of the run.
        waiting = list(s.scalars(select(Asset.id).where(
            Asset.run_pk == ctx.run_pk, Asset.status.in_(list(REVIEWABLE))).order_by(Asset.id)))
    for asset_id in waiting:
        review.decide(ctx.catalog, asset_id, decision, reviewer, note, quorum=1)  # policy: final
    return len(waiting)


def local_user() -> str:
    try:
        return getpass.getuser()
    except Exception:
        return "local"


# 8. publish ---------------------------------------------------------------------------

def publish(ctx: RunContext) -> dict:
    return publishing.publish_run(ctx)
