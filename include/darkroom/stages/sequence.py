"""Every stage before await_approval, in the DAG's order, in this process: for scripts,
notebooks and tests. The DAG maps the batch stages instead (docs/architecture.md)."""

from __future__ import annotations

from darkroom.stages import generate, plan, postprocess, qa, track, upscale, validate
from darkroom.stages.context import RunContext


def run_batch(ctx: RunContext, batch: int, backend=None) -> None:
    """One batch through the stages the DAG's batch group runs: generate, QA (with each
    regeneration round QA asks for), the model upscaler when the spec uses one, derivatives.
    ``backend``: draws every image (default: the spec's routing)."""
    generate.run(ctx, batch, backend=backend)
    qa.run(ctx, batch)
    for n in range(1, ctx.spec.qa.max_regenerations + 1):
        generate.run(ctx, batch, backend=backend)  # the regenerate_N task
        qa.run(ctx, batch, regeneration=n)
    if ctx.spec.uses_model_upscaler:
        upscale.run(ctx, batch)
    postprocess.run(ctx, batch)


def run_to_review(ctx: RunContext, backend=None) -> list[int]:
    """Validate, plan, every batch (:func:`run_batch`), then track; return the batch numbers."""
    validate.run(ctx)
    batches = plan.run(ctx)
    for b in batches:
        run_batch(ctx, b, backend=backend)
    track.run(ctx)
    return batches
