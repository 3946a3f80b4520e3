"""Every stage before await_approval, in the DAG's order, in this process: for scripts,
notebooks and tests. The DAG maps the batch stages instead."""

from __future__ import annotations

from darkroom.stages import generate, plan, postprocess, qa, track, validate
from darkroom.stages.context import RunContext


def run_to_review(ctx: RunContext, backend=None) -> list[int]:
    """Validate, plan, then each batch through generate, qa and postprocess, then track;
    return the batch numbers. ``backend``: draws every image (default: the spec's routing)."""
    validate.run(ctx)
    batches = plan.run(ctx)
    for b in batches:
        generate.run(ctx, b, backend=backend)
        qa.run(ctx, b, backend=backend)
        postprocess.run(ctx, b)
    track.run(ctx)
    return batches
