"""MLflow: one experiment per campaign, one MLflow run per DAG run.

Re-running ``track`` for the same DAG run finds its MLflow run by tag (dag_id + run_id) and
logs into it again instead of making a second one. The tracking URI is
``Settings.mlflow_tracking_uri``: ``DARKROOM_MLFLOW_TRACKING_URI`` (or an Airflow
connection, see ``darkroom_operators.hooks``), by default a SQLite store under
``$DARKROOM_HOME`` whose artifacts go to ``$DARKROOM_HOME/mlflow-artifacts``.
"""

from __future__ import annotations

import json
import os
import subprocess
import tempfile
from collections import Counter
from pathlib import Path

from sqlalchemy import select
from sqlalchemy.orm import selectinload

from darkroom.config import PROJECT_ROOT, Settings
from darkroom.ids import key_part
from darkroom.models import Asset, AssetStatus, Run
from darkroom.prompts import template_version

os.environ.setdefault("MLFLOW_ENABLE_ARTIFACTS_PROGRESS_BAR", "false")

SAMPLE_IMAGES = 8  # originals logged as artifacts (their own bytes) per run
# A rough price for an accelerator hour, for the estimated_cost metric; set it to yours.
GPU_HOURLY_COST_ENV = "DARKROOM_GPU_HOURLY_COST"
DEFAULT_GPU_HOURLY_COST = 2.0


def _git_commit() -> str:
    try:
        return subprocess.run(["git", "rev-parse", "HEAD"], cwd=PROJECT_ROOT, capture_output=True,
                              text=True, timeout=5).stdout.strip() or "unknown"
    except Exception:
        return "unknown"


def experiment_id(settings: Settings, name: str, tags: dict | None = None) -> str:
    """The id of experiment ``name``, created on first use."""
    import mlflow

    mlflow.set_tracking_uri(settings.mlflow_tracking_uri)
    exp = mlflow.get_experiment_by_name(name)
    if exp is not None:
        return exp.experiment_id
    artifacts = None
    if settings.mlflow_tracking_uri.startswith("sqlite:"):
        # A local store has no artifact server: keep artifacts under $DARKROOM_HOME, not ./mlruns.
        artifacts = settings.mlflow_artifacts_dir.as_uri()
    try:
        return mlflow.create_experiment(name, artifact_location=artifacts, tags=tags)
    except Exception:  # created meanwhile by a parallel task
        exp = mlflow.get_experiment_by_name(name)
        if exp is None:
            raise
        return exp.experiment_id


def experiment_name(campaign_id: str) -> str:
    return f"darkroom/{campaign_id}"


def _client(ctx):
    import mlflow

    return mlflow, experiment_id(ctx.settings, experiment_name(ctx.spec.id), {"campaign": ctx.spec.id})


def find_run(ctx) -> str | None:
    mlflow, exp_id = _client(ctx)
    found = mlflow.search_runs([exp_id], filter_string=(
        f"tags.airflow_dag_id = '{ctx.dag_id}' and tags.airflow_run_id = '{ctx.run_id}'"),
        output_format="list")
    return found[0].info.run_id if found else None


def model_params(ctx, run: Run, assets: list[Asset]) -> dict:
    """What made the pixels: profile and concrete version, base model + revision, LoRAs,
    scheduler, steps, guidance, size. Read from the assets (what generate really used) and,
    for a profile, from the registry version the run resolved."""
    g = ctx.spec.generation
    first = next((a for a in assets if a.uri), assets[0] if assets else None)
    params = {
        "model": g.model, "model_version": run.model_version or "",
        "model_profile": "", "model_profile_version": "",
        "base_model": run.model_ref or g.model, "base_revision": g.revision or "",
        "base_checksum": "",
        "loras": json.dumps(first.loras if first else []),
        "scheduler": first.scheduler if first else g.scheduler,
        "steps": first.steps if first else g.steps,
        "guidance": first.guidance if first else g.guidance,
        "size": f"{g.width}x{g.height}",
    }
    if run.model_ref and run.model_ref.startswith("models:/"):
        from darkroom import profiles

        rp = profiles.resolve(ctx.settings, run.model_ref)
        params.update({"model_profile": rp.name, "model_profile_version": rp.version,
                       "base_model": rp.profile.base, "base_revision": rp.profile.revision or "",
                       "base_checksum": rp.profile.checksum or "",
                       "loras": json.dumps([{"name": x.name, "version": x.version, "weight": x.weight}
                                            for x in rp.profile.loras])})
    return params


def run_metrics(assets: list[Asset], summary: dict, device_seconds_are_gpu: bool) -> dict:
    statuses = Counter(a.status for a in assets)
    failures = Counter(q.check for a in assets for q in a.qa_results if not q.passed)
    generated = [a for a in assets if a.uri]
    gen_seconds = sum((a.timings or {}).get("generate_s", 0) for a in assets)
    # Every asset that went through QA, whatever happened to it after (review, publishing).
    checked = [a for a in assets if a.qa_results]
    passed = sum(1 for a in checked if all(q.passed for q in a.qa_results))
    decided = Counter(a.reviews[-1].decision for a in assets if a.reviews)
    gpu_seconds = gen_seconds if device_seconds_are_gpu else 0.0
    rate = float(os.environ.get(GPU_HOURLY_COST_ENV, DEFAULT_GPU_HOURLY_COST))
    metrics = {
        "variants_planned": summary.get("planned", 0),
        "images_generated": len(generated),
        "images_failed": statuses[AssetStatus.failed],
        "qa_checked": len(checked),
        "qa_passed": passed,
        "qa_failed": len(checked) - passed,
        "qa_pass_rate": passed / len(checked) if checked else 0.0,
        "approved": decided["approved"],
        "rejected": decided["rejected"],
        "generate_seconds": gen_seconds,
        "images_per_second": len(generated) / gen_seconds if gen_seconds else 0.0,
        "gpu_seconds": gpu_seconds,
        "estimated_cost": gpu_seconds / 3600 * rate,
    }
    metrics.update({f"qa_fail_{k}": v for k, v in failures.items()})
    return metrics


def _asset_table(assets: list[Asset]) -> dict[str, list]:
    """Columns for mlflow.log_table (shown as a table in the MLflow UI)."""
    cols: dict[str, list] = {k: [] for k in ("asset_id", "version", "supersedes", "product_id",
                                             "asset_type", "seed", "status", "model", "model_version",
                                             "qa_failed", "uri", "prompt")}
    for a in assets:
        for k, v in (("asset_id", a.id), ("version", a.version), ("supersedes", a.supersedes_id or ""),
                     ("product_id", a.variant.product_id), ("asset_type", a.variant.asset_type),
                     ("seed", a.seed), ("status", str(a.status)), ("model", a.model_name),
                     ("model_version", a.model_version),
                     ("qa_failed", ",".join(q.check for q in a.qa_results if not q.passed)),
                     ("uri", a.uri or ""), ("prompt", a.variant.prompt)):
            cols[k].append(v)
    return cols


def _load_assets(ctx) -> tuple[Run, list[Asset]]:
    with ctx.catalog.session() as s:
        run = s.get(Run, ctx.run_pk)
        assets = list(s.scalars(
            select(Asset).where(Asset.run_pk == ctx.run_pk).order_by(Asset.created_at, Asset.id)
            .options(selectinload(Asset.variant), selectinload(Asset.qa_results),
                     selectinload(Asset.reviews))))
        return run, assets


def log_run(ctx, contact_sheet_uri: str) -> str:
    """Create (or update) the DAG run's MLflow run: tags, params, metrics, artifacts."""
    from darkroom.inference import pick_device
    from darkroom.storage import read_uri

    mlflow, exp_id = _client(ctx)
    run, assets = _load_assets(ctx)
    s3 = getattr(ctx.storage, "client", None)
    params = model_params(ctx, run, assets)
    params.update({"template_version": template_version(ctx.loaded),
                   "template_versions": json.dumps(sorted({a.variant.template_version for a in assets})),
                   "seeds_per_variant": ctx.spec.generation.seeds_per_variant,
                   "batch_size": ctx.spec.generation.batch_size,
                   "conf": json.dumps(ctx.conf.__dict__, default=str)[:6000]})
    device = pick_device(ctx.spec.generation.device)[0]
    metrics = run_metrics(assets, dict(run.summary or {}), device_seconds_are_gpu=device != "cpu")
    existing = find_run(ctx)
    with mlflow.start_run(run_id=existing, experiment_id=exp_id,
                          run_name=None if existing else ctx.run_id) as active:
        mlflow.set_tags({"airflow_dag_id": ctx.dag_id, "airflow_run_id": ctx.run_id,
                         "campaign": ctx.spec.id, "spec_hash": ctx.spec.spec_hash,
                         "git_commit": _git_commit(), "model_version": run.model_version or "",
                         "model_profile": params["model_profile"], "device": device})
        if not existing:  # params are immutable in MLflow: logged once per run
            mlflow.log_params(params)
        mlflow.log_metrics(metrics)
        with tempfile.TemporaryDirectory() as tmp:
            sheet = Path(tmp) / "contact_sheet.png"
            sheet.write_bytes(read_uri(contact_sheet_uri, s3_client=s3))
            mlflow.log_artifact(str(sheet))
            report_uri = ctx.storage.uri_for(ctx.key("validation.html"))
            if ctx.storage.stat(report_uri) is not None:  # written by validate_inputs when GX ran
                report = Path(tmp) / "validation.html"
                report.write_bytes(read_uri(report_uri, s3_client=s3))
                mlflow.log_artifact(str(report))
            # The originals' own bytes, not log_image's re-encode, which drops their provenance.
            samples = Path(tmp) / "samples"
            samples.mkdir()
            for a in [a for a in assets if a.uri][:SAMPLE_IMAGES]:
                (samples / f"{key_part(a.variant.product_id)}-{a.id}.png").write_bytes(
                    read_uri(a.uri, s3_client=s3))
            if any(samples.iterdir()):
                mlflow.log_artifacts(str(samples), artifact_path="samples")
        log_products(ctx, mlflow)
        mlflow.log_table(_asset_table(assets), artifact_file="assets.json")
        return active.info.run_id


def log_products(ctx, mlflow) -> None:
    """The product rows as the run's MLflow dataset input: source and digest, so a run says
    which data it was made from. Skipped with a warning when the source cannot be read now
    (validate_inputs read it; a source that moved since must not lose the run's tracking)."""
    import logging

    from darkroom.products import load_products_frame

    s3 = getattr(ctx.storage, "client", None) if ctx.loaded.product_source.startswith("s3://") else None
    try:
        df = load_products_frame(ctx.loaded, s3_client=s3, sql_url_factory=ctx.sql_url_factory)
    except Exception as exc:
        logging.getLogger("darkroom").warning("MLflow: product data not logged as a dataset: %s", exc)
        return
    source = ctx.loaded.product_source
    if source.startswith("postgres://"):  # MLflow has no source type for it: say what it is
        from mlflow.data.code_dataset_source import CodeDatasetSource

        source = CodeDatasetSource({"products.source": source, "table": ctx.spec.products.table or "",
                                    "query": ctx.spec.products.query or ""})
    dataset = mlflow.data.from_pandas(df, source=source, name=f"{ctx.spec.id}.products")
    mlflow.log_input(dataset, context="products")


def log_publication(ctx, mlflow_run_id: str, summary: dict, approvals: dict) -> None:
    """Add the publish outcome (approvals, files, the manifest) to the DAG run's MLflow run."""
    from darkroom.storage import read_uri

    mlflow, _ = _client(ctx)
    with mlflow.start_run(run_id=mlflow_run_id):
        mlflow.log_metrics({"approved": approvals.get("approved", 0),
                            "rejected": approvals.get("rejected", 0),
                            "published_files": summary.get("files", 0)})
        if summary.get("manifest"):
            with tempfile.TemporaryDirectory() as tmp:
                m = Path(tmp) / "manifest.json"
                m.write_bytes(read_uri(summary["manifest"], s3_client=getattr(ctx.storage, "client", None)))
                mlflow.log_artifact(str(m))
