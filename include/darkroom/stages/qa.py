"""qa: the automated checks of one batch. A failed check is data (a qa_result row and the
asset's status: qa_passed, qa_failed or needs_review), never a task failure.

Image checks run in parallel over the machine's cores (``qa.workers``), streaming; the
near-duplicate check runs here, in plan order, against the campaign's approved hashes and
the run's. With ``qa.max_regenerations`` > 0, QA plans a linked new variant (the next seed)
for each failed one; a GPU task (``regenerate_N``: the generate stage) draws them and the
next QA round checks them, up to ``max_regenerations`` rounds. QA itself never loads a model.
"""

from __future__ import annotations

import logging
from collections import Counter

from darkroom import qa
from darkroom.catalog import assets, runs
from darkroom.catalog.tables import Asset, AssetStatus
from darkroom.parallel import default_workers, pool_size, process_map
from darkroom.stages.brand import brand_rubric
from darkroom.stages.context import RunContext
from darkroom.storage import read_uri

log = logging.getLogger("darkroom")

#: Statuses QA (re)checks: everything generated that no reviewer has decided yet.
QA_INPUT = (AssetStatus.generated, AssetStatus.qa_passed, AssetStatus.qa_failed,
            AssetStatus.needs_review)


def run(ctx: RunContext, batch: int, regeneration: int = 0) -> dict:
    """Check the batch's images; store every result and the outcome; plan regenerations of
    the failed ones while rounds are left. Returns the counts, ``to_regenerate`` among them.

    :param regeneration: 0 checks every undecided image of the batch (a retry checks them
        again, with the same answers); N checks the images the N-th regeneration drew.
    """
    counts: Counter = Counter()
    # 1-4. Check: first everything undecided, after a regeneration what it drew.
    statuses = QA_INPUT if regeneration == 0 else (AssetStatus.generated,)
    failed = check(ctx, batch, counts, statuses)
    # 5. Plan the next drawing of each failed variant, while rounds are left.
    if failed and regeneration < ctx.spec.qa.max_regenerations:
        counts["to_regenerate"] = len(plan_regenerations(ctx, batch, failed))
    log.info("QA batch %d (after %d regenerations): %d checked, %d passed, %d need review, %d failed, "
             "%d to regenerate", batch, regeneration,
             sum(counts[k] for k in ("qa_passed", "qa_failed", "needs_review")), counts["qa_passed"],
             counts["needs_review"], counts["qa_failed"], counts["to_regenerate"])
    return {"batch": batch, "regeneration": regeneration, **counts}


def check(ctx: RunContext, batch: int, counts: Counter, statuses) -> list[str]:
    """QA the batch's undecided assets in ``statuses``; return the failed variant ids."""
    # 1. The assets to check, with each one's rubric (its asset type's checks).
    todo = [a for a in assets.of_batch(ctx.catalog, ctx.run_pk, batch, statuses) if not a.reviews]
    by_type = {t: brand_rubric(ctx, t) for t in {a.variant.asset_type for a in todo}}
    rubrics = {a.id: by_type[a.variant.asset_type] for a in todo}
    # 2. The hashes to compare against: approved assets of the campaign, this run's others.
    index = duplicate_index(ctx, rubrics.values(), exclude={a.id for a in todo})
    # 3. The image checks, in worker processes, in plan order.
    failed: list[str] = []
    for asset, res in process_map(qa.analyse, jobs(ctx, todo, rubrics), workers=workers(ctx, len(todo))):
        rubric = rubrics[asset.id]
        if isinstance(res, Exception):
            res = qa.Analysis([qa.CheckResult("readable", None, None, False,
                                              f"QA worker failed: {type(res).__name__}: {res}"[:300])], None)
        # 4. The near-duplicate check, then the outcome, recorded as each asset comes back.
        results = list(res.results)
        if "duplicate" in rubric:
            results.append(qa.check_duplicate(res.phash, index, rubric["duplicate"]))
        if res.phash:
            index.add(asset.id, res.phash)
        status, reasons = qa.outcome(results, rubric)
        assets.record_qa(ctx.catalog, asset.id, results, phash=res.phash, status=status, reasons=reasons,
                         cpu_seconds=res.seconds)
        counts[status] += 1
        if status == AssetStatus.qa_failed:
            failed.append(asset.variant_id)
    return failed


def duplicate_index(ctx: RunContext, rubrics, *, exclude: set[str]) -> qa.HashIndex:
    thresholds = [int(r["duplicate"].threshold if r["duplicate"].threshold is not None else 6)
                  for r in rubrics if "duplicate" in r]
    index = qa.HashIndex(max(thresholds or [0]))
    index.add_many(assets.campaign_hashes(ctx.catalog, campaign_id=ctx.spec.id, run_pk=ctx.run_pk,
                                          exclude=exclude))
    return index


def jobs(ctx: RunContext, todo: list[Asset], rubrics: dict):
    """process_map jobs, read lazily: at most ``inflight`` originals are in memory at once."""
    for a in todo:
        g = ctx.spec.generation_for(a.variant.asset_type)  # the size this asset type is drawn at
        try:
            data = read_uri(a.uri, s3_client=ctx.s3)
        except Exception as exc:
            data = b""
            log.error("QA: cannot read %s: %s", a.uri, exc)
        yield a, (data, {k: v for k, v in rubrics[a.id].items() if k in qa.CHECKS}), dict(
            width=g.width, height=g.height, asset_id=a.id, seed=a.seed, prompt=a.variant.prompt)


def workers(ctx: RunContext, n: int) -> int:
    pixels = max(ctx.spec.generation_for(at.name).width * ctx.spec.generation_for(at.name).height
                 for at in ctx.spec.asset_types)
    return pool_size(n, pixels, ctx.spec.qa.workers or default_workers())


def plan_regenerations(ctx: RunContext, batch: int, failed_variant_ids: list[str]) -> list[str]:
    """A linked new variant for each failed one with attempts left, in the same batch.

    The next seed is ``seed + seeds_per_variant``: ``seed + 1`` is usually a sibling variant
    of the same product, which would regenerate an image the run already has.
    """
    new = runs.plan_regenerations(ctx.catalog, ctx.run_pk, batch, failed_variant_ids,
                                  seed_step=ctx.spec.generation.seeds_per_variant,
                                  limit=ctx.spec.qa.max_regenerations)
    if new:
        log.info("QA batch %d: regenerating %d failed variant(s) with the next seed", batch, len(new))
    return new
