"""await_approval: the human decisions a run waits for, and the spec's policies that decide
for people (the review modes of ``approval.review``, the timeout's ``on_timeout``).

Waiting itself is Airflow's job (a deferrable sensor, darkroom_operators.approval); these are
the plain functions it calls.

Review routing, per asset type (:func:`route`, when the run reaches await_approval):

``human``
    people decide every QA-passed asset (and every needs_review one).
``automated``
    QA decides, nothing waits: a pass is approved, a needs_review asset rejected (QA was not
    sure, and no person looks), each as a review row by ``policy:automated@1``.
``exception``
    a pass (every check cleared its threshold by more than its ``review_band``: QA's
    ``qa_passed``) is approved by ``policy:exception@1``, except the audit sample, which
    waits for people with the needs_review assets. Reviewers rejecting more than
    ``audit_max_reject_rate`` of the sample withdraw the policy's approvals
    (darkroom.catalog.reviews).

The policy decides only assets nobody has decided on yet, so a retry changes nothing a
person or an earlier try decided, and draws the same audit sample.
"""

from __future__ import annotations

import hashlib
import logging
from collections import Counter

from darkroom.catalog import reviews, runs
from darkroom.catalog.tables import AssetStatus
from darkroom.stages.context import RunContext

log = logging.getLogger("darkroom")


def in_audit_sample(run_id: str, asset_id: str, audit_rate: float) -> bool:
    """Whether an asset is in the run's audit sample: a hash of the run id and the asset id
    (not a random draw), so every retry of the run draws the same sample."""
    digest = hashlib.sha256(f"{run_id}/{asset_id}".encode()).digest()
    return int.from_bytes(digest[:8], "big") < audit_rate * 2**64


def route(ctx: RunContext) -> Counter:
    """Apply each asset type's review mode to the run's undecided assets; return the counts
    (``approved`` / ``rejected`` by the policies, ``audit``, ``for_people``)."""
    approval = ctx.spec.approval
    # 1. The routing of each asset type, kept on the run: the audit reads it when people decide.
    routing = {t.name: approval.for_asset_type(t.name) for t in ctx.spec.asset_types}
    runs.update_summary(ctx.catalog, ctx.run_pk,
                        review_routing={name: r.model_dump() for name, r in routing.items()})
    # 2. Each undecided asset: the policy decides, or people do.
    counts: Counter = Counter()
    audit: list[str] = []
    for asset in reviews.undecided(ctx.catalog, ctx.run_pk):
        r = routing.get(asset.asset_type)
        mode = r.review if r else "human"  # an asset type the spec no longer has: people
        where = f"approval.review {mode} for asset type {asset.asset_type}"
        if mode == "human" or (mode == "exception" and asset.status == AssetStatus.needs_review):
            counts["for_people"] += 1
        elif mode == "exception" and in_audit_sample(ctx.run_id, asset.asset_id, r.audit_rate):
            audit.append(asset.asset_id)
        elif asset.status == AssetStatus.qa_passed:
            note = f"{where}: QA passed every check" + (
                f" by more than its review band; audit_rate {r.audit_rate:g}" if mode == "exception" else "")
            reviews.decide(ctx.catalog, asset.asset_id, "approve", reviews.policy_reviewer(mode), note,
                           by_policy=True)
            counts["approved"] += 1
        else:  # automated, needs_review
            note = (f"{where}: QA was not sure and no person reviews this asset type "
                    f"({'; '.join(asset.doubts) or 'needs review'})")[:reviews.MAX_NOTE]
            reviews.decide(ctx.catalog, asset.asset_id, "reject", reviews.policy_reviewer(mode), note,
                           by_policy=True)
            counts["rejected"] += 1
    # 3. The audit sample waits for people, marked so their rejections count; marked last, so
    #    no approval of the policy is made after a withdrawal of them.
    if audit:
        reviews.mark_audit_sample(ctx.catalog, audit)
    counts["audit"] = len(audit)
    log.info("Review routing: %d approved and %d rejected by the policies, %d in the audit sample, "
             "%d for people", counts["approved"], counts["rejected"], counts["audit"],
             counts["for_people"])
    return counts


def settle_undecided(ctx: RunContext, decision: str, reviewer: str, note: str) -> int:
    """Record ``decision`` for every asset still waiting (the timeout policy); return how
    many. Policy decisions are final: they count as a quorum on their own."""
    waiting = reviews.waiting_ids(ctx.catalog, ctx.run_pk)
    for asset_id in waiting:
        reviews.decide(ctx.catalog, asset_id, decision, reviewer, note, by_policy=True)
    return len(waiting)


def at_deadline(ctx: RunContext, waiting: int | None = None) -> dict:
    """The spec's ``approval.timeout`` passed: ``reject_undecided`` rejects what is left (and
    the run publishes what was approved); ``fail`` raises TimeoutError. Returns the counts."""
    policy = ctx.spec.approval
    if policy.on_timeout == "reject_undecided":
        n = settle_undecided(ctx, "reject", "darkroom:timeout", f"no decision within {policy.timeout}")
        log.warning("Approval deadline passed: rejected %d undecided assets", n)
        counts = runs.counts(ctx.catalog, ctx.run_pk)
        return {"approved": counts.approved, "rejected": counts.rejected}
    if waiting is None:
        waiting = runs.counts(ctx.catalog, ctx.run_pk).waiting
    raise TimeoutError(
        f"{waiting} assets had no decision within {policy.timeout}; set approval.on_timeout: "
        "reject_undecided to publish what was approved instead of failing")
