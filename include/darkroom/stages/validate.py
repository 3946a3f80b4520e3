"""validate_inputs: the run's Params and model, then the product data checked with Great
Expectations, before anything is generated; the result goes to the catalog, the HTML report
to storage, and a failure stops the run with every failing expectation named.

A model version the registry or the folder does not have, or variant ids that are not the
campaign's, fail here in seconds instead of in generate after every retry."""

from __future__ import annotations

import logging

from darkroom import postprocess as recipes
from darkroom.catalog import lineage, runs
from darkroom.errors import ModelError, ModelFilesMissing, ParamsError, ValidationFailed
from darkroom.stages.brand import brand_channels, brand_rubric
from darkroom.stages.context import RunContext
from darkroom.stages.publish import destination_root
from darkroom.validation import ValidationReport, validate_products

log = logging.getLogger("darkroom")


def run(ctx: RunContext) -> dict:
    """Validate the run's product data; return the report's summary."""
    # 1. The files the spec names, and where it publishes: refused now, before any GPU work.
    check_paths(ctx)
    # 2. The models this run draws with (the model_version Param; asset types' own models):
    #    resolved once, recorded. A DAG run re-processed with another model or other Params
    #    starts a new attempt here.
    refs = check_models(ctx)
    ctx.start(models_identity(refs) if refs else None)
    for at in ctx.spec.asset_types if refs else ():
        runs.record_model(ctx.catalog, ctx.run_pk, refs[at.name], at.name, campaign_model=not at.own_model)
    check_variants(ctx)
    # 3. Read the product rows from the spec's source.
    df = ctx.products_frame()
    # 4. Check them: the campaign's suite, required columns, reference images.
    report = validate_products(ctx.loaded, df, s3_client_factory=ctx.s3_client, settings=ctx.settings)
    # 5. Store the report and the result.
    store_report(ctx, report)
    log.info("Validated %d product rows against %d expectations: %s (report %s)", report.rows,
             report.evaluated, "passed" if report.success else "FAILED", report.report_uri)
    # 6. Any miss fails the task: nothing downstream runs.
    if not report.success:
        raise ValidationFailed(f"{ctx.loaded.path}: product data failed validation; nothing was "
                               f"generated.\n{report.describe()}")
    return report.summary()


def check_models(ctx: RunContext) -> dict | None:
    """Asset type -> the model its variants are drawn with, resolved (``ModelRef``), or None
    when a model's files are not on this worker (a CPU worker without the GPU workers' model
    folder: generate checks it there).

    :raises ModelError: the model_version Param, or a model of the spec, names a version the
        registry or the folder does not have; the message names the Param or field and the fix.
    """
    if ctx.conf.model_version and all(at.own_model for at in ctx.spec.asset_types):
        raise ParamsError(
            f"{ctx.loaded.path}: Param `model_version` = {ctx.conf.model_version!r} names a version "
            "of the campaign's generation.model, but every asset type draws with a model of its own "
            "(asset_types[].generation.model); fix: leave model_version empty, or change the asset "
            "types' models in the spec")
    refs = {}
    for i, at in enumerate(ctx.spec.asset_types):
        try:
            refs[at.name], _ = ctx.model(at.name, pinned=False)
        except ModelFilesMissing as exc:
            log.warning("The model's files are not on this worker (%s); generate checks them on the "
                        "GPU worker", exc)
            return None
        except ModelError as exc:
            if exc.retryable:
                raise
            version = ctx.conf.model_version
            if at.own_model:
                field = (f"field `asset_types.{i}.generation.model` = "
                         f"{ctx.spec.generation_for(at.name).model!r}")
            elif version:
                field = f"Param `model_version` = {version!r}"
            else:
                field = f"field `generation.model` = {ctx.spec.generation.model!r}"
            raise ModelError(f"{ctx.loaded.path}: {field}: {exc}; nothing was generated") from None
        log.info("Model of asset type %s: %s version %s", at.name, refs[at.name].name,
                 refs[at.name].version)
    return refs


def models_identity(refs: dict) -> str:
    """The identity a run's attempt is compared by: its one model's, or when asset types draw
    with different models, each asset type's."""
    identities = {at: ref.identity for at, ref in refs.items()}
    if len(set(identities.values())) == 1:
        return next(iter(identities.values()))
    return ",".join(f"{at}={identity}" for at, identity in sorted(identities.items()))


def check_variants(ctx: RunContext) -> None:
    """The ``variants`` Param names variants of this campaign only (ids the catalog has)."""
    wanted = ctx.conf.variants
    if not wanted:
        return
    known = lineage.known_variants(ctx.catalog, ctx.spec.id, wanted)
    unknown = [v for v in wanted if v not in known]
    if unknown:
        raise ParamsError(
            f"{ctx.loaded.path}: Param `variants` names {len(unknown)} variant(s) that campaign "
            f"{ctx.spec.id} does not have, e.g. {', '.join(unknown[:5])}; fix: take ids from "
            f"`darkroom assets search --campaign {ctx.spec.id} --json`, or leave `variants` empty "
            "for every variant")


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
