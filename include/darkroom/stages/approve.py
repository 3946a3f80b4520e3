"""await_approval: the human decisions a run waits for, and the spec's policies that decide
for people (``approval.required: false``, the timeout's ``on_timeout``).

Waiting itself is Airflow's job (a deferrable sensor, darkroom_operators.approval); these are
the plain functions it calls.
"""

from __future__ import annotations

import logging

from darkroom.catalog import reviews, runs
from darkroom.stages.context import RunContext

log = logging.getLogger("darkroom")



def settle_undecided(ctx: RunContext, decision: str, reviewer: str, note: str) -> int:
    """Record ``decision`` for every asset still waiting (timeout policy, auto-approval);
    return how many. Policy decisions are final: they count as a quorum on their own."""
    waiting = reviews.waiting_ids(ctx.catalog, ctx.run_pk)
    for asset_id in waiting:
        reviews.decide(ctx.catalog, asset_id, decision, reviewer, note, quorum=1)
    return len(waiting)


def when_not_required(ctx: RunContext) -> int:
    """``approval.required: false``: approve every waiting asset as the policy; return how many."""
    return settle_undecided(ctx, "approve", "darkroom:policy",
                            "approval.required is false in the campaign spec")


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
