"""validate_inputs: the product data checked with Great Expectations before anything is
generated; the result goes to the catalog, the HTML report to storage, and a failure stops
the run with every failing expectation named."""

from __future__ import annotations

import logging

from darkroom import postprocess as recipes
from darkroom.catalog import runs
from darkroom.errors import ValidationFailed
from darkroom.stages.brand import brand_channels, brand_rubric
from darkroom.stages.context import RunContext
from darkroom.stages.publish import destination_root
from darkroom.validation import ValidationReport, validate_products

log = logging.getLogger("darkroom")


def run(ctx: RunContext) -> dict:
    """Validate the run's product data; return the report's summary."""
    # 1. The files the spec names, and where it publishes: refused now, before any GPU work.
    check_paths(ctx)
    # 2. Read the product rows from the spec's source.
    df = ctx.products_frame()
    # 3. Check them: the campaign's suite, required columns, reference images.
    report = validate_products(ctx.loaded, df, s3_client_factory=ctx.s3_client, settings=ctx.settings)
    # 4. Store the report and the result.
    store_report(ctx, report)
    log.info("Validated %d product rows against %d expectations: %s (report %s)", report.rows,
             report.evaluated, "passed" if report.success else "FAILED", report.report_uri)
    # 5. Any miss fails the task: nothing downstream runs.
    if not report.success:
        raise ValidationFailed(f"{ctx.loaded.path}: product data failed validation; nothing was "
                               f"generated.\n{report.describe()}")
    return report.summary()


def check_paths(ctx: RunContext) -> None:
    """Brand files (logos, fonts, QA references) and publish folders outside the allowed
    roots (darkroom.confine) fail validation, naming the field; so do logos and fonts that
    cannot be read (postprocess.check_recipes), which used to surface after the GPU work."""
    try:
        recipes.check_recipes(brand_channels(ctx), model_upscaler=ctx.spec.generation.upscaler)
    except recipes.RecipeError as exc:
        raise ValidationFailed(f"{ctx.loaded.path}: {exc}; nothing was generated") from None
    for at in ctx.spec.asset_types:
        brand_rubric(ctx, at.name)
    for dest in ctx.spec.publish:
        destination_root(ctx, dest)


def store_report(ctx: RunContext, report: ValidationReport) -> None:
    """The HTML report into storage (its URI on the report), the result into the catalog."""
    stored = ctx.storage.put(ctx.key("validation.html"),
                             report.to_html(f"{ctx.spec.id} / {ctx.run_id}: product data").encode(),
                             "text/html")
    report.report_uri = stored.uri
    runs.record_validation(ctx.catalog, ctx.run_pk, report)
