"""expand_prompts: templates x product rows x asset types x locales x seeds -> variants with
stable ids, stored in the catalog with this run's plan, chunked into the batches the DAG maps
over. Each planned variant carries the backend the spec's routing rules chose for it, so the
GPU workers never read the product source.

Variant ids are hashes of their identity, so a re-run (or a scheduled refresh) finds the
variants it already has, stores only the new ones, and generate skips what exists. The run
claims the assets it will draw (catalog.assets.claim): runs of one campaign at once never
draw the same variant twice at the same model, and what an unfinished earlier run left
undecided is adopted here and taken through QA, review and publishing. So the plan's
message counts what this run will really draw.
"""

from __future__ import annotations

import json
import logging
import statistics
from collections import Counter
from dataclasses import dataclass, field

from darkroom import confine, ids, prompts
from darkroom.catalog import assets, runs
from darkroom.config import PROJECT_ROOT
from darkroom.errors import ModelFilesMissing, PolicyError, ValidationFailed
from darkroom.generation import routing
from darkroom.products import iter_rows
from darkroom.spec import ASSET_TYPE_GENERATION
from darkroom.stages.context import RunContext
from darkroom.storage import read_uri, sha256_bytes

log = logging.getLogger("darkroom")

BENCH_FILE = PROJECT_ROOT / "docs" / "bench" / "generate.json"


def run(ctx: RunContext) -> list[int]:
    """Plan the run; return the batch numbers to map over (none for a dry run)."""
    # 1. Render products x asset types x locales x vary combinations x seeds: only what the
    #    Params select (``variants``, then ``limit``), rows read and rendered as they are
    #    reached, so a run limited to 2 variants of a million products touches 2 rows.
    frame = ctx.products_frame()
    variants = prompts.render_variants(
        ctx.loaded, iter_rows(frame), seed_offset=ctx.conf.seed_offset,
        inputs=lambda row: input_images(ctx, row), limit=ctx.conf.limit,
        wanted=set(ctx.conf.variants) if ctx.conf.variants else None)
    # 2. Policy: a restricted term rejects that variant only, naming the term and its field.
    allowed, rejected, terms = apply_policy(ctx, variants)
    # 3. Batches: never more mapped tasks than the spec's ceiling, and asset types drawn with
    #    different models or sizes in batches of their own (one pipeline per generate task).
    g = ctx.spec.generation
    drawn_with = {at.name: json.dumps(ctx.spec.generation_for(at.name).model_dump(
        mode="json", include=set(ASSET_TYPE_GENERATION)), sort_keys=True) for at in ctx.spec.asset_types}
    batches = prompts.chunk(allowed, g.variants_per_task, g.max_mapped_tasks,
                            key=lambda v: drawn_with[v.asset_type])
    # 4. Routing: each variant's backend, from its facts (product columns when rules ask).
    routes = routing.routes_for(ctx.spec, allowed, routing_rows(ctx, frame, allowed))
    # 5. Store new variants and the run's plan, in bulk.
    new = runs.store_plan(ctx.catalog, ctx.run_pk, ctx.spec.id, variants, batches, rejected, routes)
    new_allowed = sum(1 for v in allowed if v.id in new)
    # 6. Claim what this run draws (a dry run only looks): its own, what unfinished runs left.
    share = claim(ctx, allowed, reserve=not ctx.conf.dry_run)
    # 7. The plan as text (estimated GPU time and cost, per asset type) and the run's summary.
    size = max(map(len, batches), default=0)
    per_type = estimates(ctx, share.by_asset_type)
    text = plan_text(ctx, len(allowed), len(batches), rejected=len(rejected), size=size,
                     detail=share.describe(), estimate=per_type)
    runs.update_summary(ctx.catalog, ctx.run_pk, planned=len(allowed), policy_rejected=len(rejected),
                        policy_terms=dict(terms), new_variants=new_allowed, batches=len(batches),
                        plan=text, estimate=per_type, **share.summary())
    log.info("Planned %d variants (%d new; %s; %d rejected by policy) in %d batches of up to %d",
             len(allowed), new_allowed, share.describe(), len(rejected), len(batches), size)
    if ctx.conf.dry_run:
        log.info("Dry run: stopping after the plan.\n%s", text)
        return []
    return list(range(len(batches)))


@dataclass
class Share:
    """What this run draws of the variants it planned, and what others have (see claim)."""

    to_generate: int = 0
    made: int = 0  # already drawn by this run (a retried plan)
    adopted: int = 0  # of the above two, taken over from runs that ended without deciding them
    held: dict[str, int] = field(default_factory=dict)  # run id -> variants it still works on
    reused: int = 0  # settled by earlier runs: not drawn, checked or published again
    unresolved: bool = False  # the model is not visible here: generate claims on the GPU worker
    by_asset_type: dict[str, int] = field(default_factory=dict)  # asset type -> to generate

    def summary(self) -> dict:
        return {"to_generate": self.to_generate, "already_made": self.made, "adopted": self.adopted,
                "held_by_other_runs": dict(self.held), "reused": self.reused}

    def describe(self) -> str:
        if self.unresolved:
            return f"up to {self.to_generate} to generate (the GPU worker resolves the model)"
        parts = [f"{self.to_generate} to generate"]
        if self.made:
            parts.append(f"{self.made} already made by this run")
        if self.adopted:
            parts.append(f"{self.adopted} adopted from runs that ended before review")
        if self.reused:
            parts.append(f"{self.reused} reused from earlier runs")
        for run_id, n in self.held.items():
            parts.append(f"{n} drawn by run {run_id}, still running")
        return ", ".join(parts)


def claim(ctx: RunContext, variants: list, *, reserve: bool = True) -> Share:
    """Claim the assets of ``variants`` at the models of their asset types (catalog.assets.claim):
    what is left to draw, what this run made before, adopted, reused, or another run still has."""
    by_type = Counter(v.asset_type for v in variants)
    try:
        refs = {at: ctx.model(at)[0] for at in by_type}
    except ModelFilesMissing:  # a CPU worker without the model's folder: generate claims
        return Share(to_generate=len(variants), unresolved=True, by_asset_type=dict(by_type))
    wanted = {ids.asset_id(v.id, refs[v.asset_type].identity): v for v in variants}
    got = assets.claim(ctx.catalog, ctx.run_pk, {a: v.id for a, v in wanted.items()}, ctx.alive,
                       reserve=reserve)
    made = assets.generated_ids(ctx.catalog, got.mine)
    held: Counter = Counter()
    for owner in got.held.values():
        held[runs.get(ctx.catalog, owner).run_id] += 1
    to_generate = Counter(wanted[a].asset_type for a in got.mine - made)
    return Share(to_generate=len(got.mine - made), made=len(made - got.adopted),
                 adopted=len(got.adopted), held=dict(held), reused=len(got.reused),
                 by_asset_type={at: to_generate[at] for at in by_type})


def input_images(ctx: RunContext, row: dict) -> dict:
    """One product's reference (and mask) image for image2image, inpaint and IP-Adapter:
    where it is and its checksum. Empty when the campaign is text-to-image only."""
    g, p = ctx.spec.generation, ctx.spec.products
    if g.mode == "text2image" and not g.ip_adapter:
        return {}
    columns = [("reference", p.reference_image_column)]
    if g.mode == "inpaint":
        columns.append(("mask", p.mask_image_column))
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
            data = read_uri(uri, s3_client=ctx.s3)
        except Exception as exc:
            raise ValidationFailed(f"{ctx.loaded.path}: product {pid}, column {column!r} = "
                                   f"{value!r}: cannot read {uri}: {exc}; fix: point it at an "
                                   "existing file or s3:// object") from exc
        entry[key] = {"uri": uri, "sha256": sha256_bytes(data)}
    return entry


def routing_rows(ctx: RunContext, frame, variants: list) -> dict[str, dict] | None:
    """Product id -> row with the spec's column map applied (rules may use the mapped names),
    for the products of ``variants`` only; None when no routing rule tests a product column."""
    if not routing.needs_products(ctx.spec):
        return None
    p = ctx.spec.products
    wanted = {v.product_id for v in variants}
    out = {}
    for row in iter_rows(frame[frame[p.id_column].astype(str).isin(wanted)]):
        product = dict(row)
        for name, column in p.columns.items():
            product[name] = row.get(column)
        out[str(row[p.id_column])] = product
    return out


def apply_policy(ctx: RunContext, variants: list) -> tuple[list, list, Counter]:
    """(allowed, rejected, terms): a variant with a restricted term is rejected, logged with
    the term and the field it came from. Every variant rejected is an error."""
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
    return allowed, rejected, terms


def seconds_per_image(ctx: RunContext, g, model_name: str | None = None) -> tuple[float | None, str]:
    """Seconds per image at a generation's size and steps: recorded generations in the catalog
    first (the same work with the same model on the same kind of worker), else
    docs/bench/generate.json scaled by steps and pixels, else unknown."""
    values = assets.recent_generate_seconds(ctx.catalog, steps=g.steps, width=g.width, height=g.height,
                                            model_name=model_name)
    if values:
        return statistics.median(values), (f"median of the last {len(values)} recorded generations at "
                                           f"{g.width}x{g.height}, {g.steps} steps")
    try:
        data = json.loads(BENCH_FILE.read_text("utf-8"))
        # The operator path's rate (what a generate task achieves), at its best batch size.
        best = max(data["runs"], key=lambda r: r["operator_images_per_s"])
        rate = best["operator_images_per_s"]
        scale = (g.steps / data["steps"]) * (g.width * g.height) / (data["size"] ** 2)
        return scale / rate, (
            f"docs/bench/generate.json: {rate} images/s at {data['size']}px, "
            f"{data['steps']} steps on {data.get('device')}, scaled by steps and pixels")
    except (OSError, ValueError, KeyError, ZeroDivisionError):
        return None, "no measured throughput yet: run `darkroom bench generate` or one real run"


def estimates(ctx: RunContext, to_generate: dict[str, int]) -> dict[str, dict]:
    """Asset type -> what its variants to generate are drawn with and their estimated GPU time
    and cost: each asset type at its own model, size and steps."""
    price = ctx.settings.gpu_price(ctx.spec.generation.cost_per_gpu_hour)
    out = {}
    for at, n in to_generate.items():
        g = ctx.spec.generation_for(at)
        try:
            name = ctx.model(at)[0].name
        except ModelFilesMissing:  # the GPU worker resolves it: timings of any model at this size
            name = None
        spi, source = seconds_per_image(ctx, g, name)
        seconds = None if spi is None else n * spi
        out[at] = {"to_generate": n, "model": g.model, "width": g.width, "height": g.height,
                   "steps": g.steps, "seconds_per_image": spi, "source": source, "gpu_seconds": seconds,
                   "cost": None if seconds is None else seconds / 3600 * price}
    return out


def plan_text(ctx: RunContext, n: int, batches: int, *, rejected: int = 0, size: int = 0,
              detail: str = "", estimate: dict[str, dict]) -> str:
    """The dry-run plan: variants, batches, derivatives, estimated GPU time and cost (per asset
    type when there are several). ``detail``: what of the ``n`` this run draws and who has the
    rest (Share.describe); ``estimate``: from :func:`estimates`."""
    g = ctx.spec.generation
    per_variant = {at.name: len(at.channels) for at in ctx.spec.asset_types}
    drawn = {f"{e['width']}x{e['height']}, {e['steps']} steps" for e in estimate.values()}
    if len(drawn) > 1 or len({e["model"] for e in estimate.values()}) > 1:
        drawn = {"; ".join(f"{at}: {e['model']} at {e['width']}x{e['height']}, {e['steps']} steps"
                           for at, e in estimate.items())}
    lines = [
        f"Plan for {ctx.spec.id}: {n} variants ({detail}; "
        f"{rejected} rejected by policy), {batches} mapped task(s) per stage of up to {size} "
        f"variants (ceiling {g.max_mapped_tasks}); {', '.join(sorted(drawn)) or f'{g.width}x{g.height}'}; "
        f"channels: {', '.join(ctx.spec.channels)} (up to {n * max(per_variant.values())} derivatives)",
    ]
    new = sum(e["to_generate"] for e in estimate.values())
    unknown = [e for e in estimate.values() if e["gpu_seconds"] is None and e["to_generate"]]
    if unknown:
        lines.append(f"Estimated GPU time: unknown ({unknown[0]['source']})")
        return "\n".join(lines)
    seconds = sum(e["gpu_seconds"] or 0.0 for e in estimate.values())
    price = ctx.settings.gpu_price(g.cost_per_gpu_hour)
    where = ("generation.cost_per_gpu_hour" if g.cost_per_gpu_hour is not None
             else "DARKROOM_GPU_HOURLY_COST; a campaign sets its own with generation.cost_per_gpu_hour")
    if len(estimate) == 1:
        (e,) = estimate.values()
        lines.append(f"Estimated GPU time for the {new} variants to generate: {seconds:.1f} s "
                     f"({seconds / 3600:.3f} GPU-hours at {e['seconds_per_image'] or 0:.3f} s/image, from "
                     f"{e['source']}); cost {seconds / 3600 * price:.2f} at {price} per GPU-hour ({where})")
        return "\n".join(lines)
    lines.append(f"Estimated GPU time for the {new} variants to generate: {seconds:.1f} s "
                 f"({seconds / 3600:.3f} GPU-hours); cost {seconds / 3600 * price:.2f} at {price} "
                 f"per GPU-hour ({where}), by asset type:")
    for at, e in estimate.items():
        lines.append(f"  {at}: {e['to_generate']} with {e['model']} at {e['width']}x{e['height']}, "
                     f"{e['steps']} steps: {e['gpu_seconds'] or 0:.1f} s at "
                     f"{e['seconds_per_image'] or 0:.3f} s/image (from {e['source']}), "
                     f"cost {e['cost'] or 0:.2f}")
    return "\n".join(lines)
