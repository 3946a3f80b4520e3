"""MLflow: one experiment per campaign, one MLflow run per DAG run.

Re-running ``track`` for the same DAG run finds its MLflow run by tag and logs into it
again instead of making a second one.
"""

from __future__ import annotations

import json
import os
import subprocess
import tempfile
from collections import Counter
from pathlib import Path

from sqlalchemy import select

from darkroom.config import PROJECT_ROOT
from darkroom.models import Asset, QAResult, Run
from darkroom.prompts import template_version


def _git_commit() -> str:
    try:
        return subprocess.run(["git", "rev-parse", "HEAD"], cwd=PROJECT_ROOT, capture_output=True,
                              text=True, timeout=5).stdout.strip() or "unknown"
    except Exception:
        return "unknown"


def _client(ctx):
    import mlflow

    mlflow.set_tracking_uri(ctx.settings.mlflow_tracking_uri)
    name = f"darkroom/{ctx.spec.id}"
    exp = mlflow.get_experiment_by_name(name)
    if exp is None:
        artifacts = None
        if ctx.settings.mlflow_tracking_uri.startswith("sqlite:"):
            artifacts = ctx.settings.mlflow_artifacts_dir.as_uri()
        exp_id = mlflow.create_experiment(name, artifact_location=artifacts,
                                          tags={"campaign": ctx.spec.id})
    else:
        exp_id = exp.experiment_id
    return mlflow, exp_id


def find_run(ctx) -> str | None:
    mlflow, exp_id = _client(ctx)
    found = mlflow.search_runs([exp_id], filter_string=(
        f"tags.airflow_dag_id = '{ctx.dag_id}' and tags.airflow_run_id = '{ctx.run_id}'"),
        output_format="list")
    return found[0].info.run_id if found else None


def log_run(ctx, contact_sheet_uri: str) -> str:
    from darkroom.storage import read_uri

    mlflow, exp_id = _client(ctx)
    g = ctx.spec.generation
    with ctx.catalog.session() as s:
        run = s.get(Run, ctx.run_pk)
        assets = list(s.scalars(select(Asset).where(Asset.run_pk == ctx.run_pk)))
        checks = list(s.scalars(select(QAResult).join(Asset).where(Asset.run_pk == ctx.run_pk)))
        table = [{"asset_id": a.id, "product_id": a.variant.product_id, "seed": a.seed,
                  "status": a.status, "uri": a.uri, "prompt": a.variant.prompt} for a in assets]
        model_version, summary = run.model_version, dict(run.summary or {})
    statuses = Counter(a.status for a in assets)
    failures = Counter(c.check for c in checks if not c.passed)
    gen_seconds = sum((a.timings or {}).get("generate_s", 0) for a in assets)
    checked = statuses["qa_passed"] + statuses["qa_failed"] + statuses["needs_review"]
    existing = find_run(ctx)
    with mlflow.start_run(run_id=existing, experiment_id=exp_id,
                          run_name=None if existing else ctx.run_id) as active:
        mlflow.set_tags({"airflow_dag_id": ctx.dag_id, "airflow_run_id": ctx.run_id,
                         "campaign": ctx.spec.id, "spec_hash": ctx.spec.spec_hash,
                         "git_commit": _git_commit()})
        if not existing:
            mlflow.log_params({
                "model": g.model, "model_version": model_version or "", "revision": g.revision or "",
                "scheduler": g.scheduler, "steps": g.steps, "guidance": g.guidance,
                "size": f"{g.width}x{g.height}", "seeds_per_variant": g.seeds_per_variant,
                "batch_size": g.batch_size, "loras": "[]",
                "template_version": template_version(ctx.loaded),
                "conf": json.dumps(ctx.conf.__dict__),
            })
        metrics = {
            "variants_planned": summary.get("planned", 0),
            "images_generated": len([a for a in assets if a.uri]),
            "images_failed": statuses["failed"],
            "qa_passed": statuses["qa_passed"],
            "qa_failed": statuses["qa_failed"],
            "qa_pass_rate": statuses["qa_passed"] / checked if checked else 0.0,
            "generate_seconds": gen_seconds,
            "images_per_second": len(assets) / gen_seconds if gen_seconds else 0.0,
        }
        metrics.update({f"qa_fail_{k}": v for k, v in failures.items()})
        mlflow.log_metrics(metrics)
        with tempfile.TemporaryDirectory() as tmp:
            sheet = Path(tmp) / "contact_sheet.png"
            sheet.write_bytes(read_uri(contact_sheet_uri))
            mlflow.log_artifact(str(sheet))
            assets_file = Path(tmp) / "assets.json"
            assets_file.write_text(json.dumps(table, indent=2, default=str))
            mlflow.log_artifact(str(assets_file))
        return active.info.run_id


def log_publication(ctx, mlflow_run_id: str, summary: dict, approvals: dict) -> None:
    """Add the publish outcome to the DAG run's MLflow run."""
    mlflow, _ = _client(ctx)
    with mlflow.start_run(run_id=mlflow_run_id):
        mlflow.log_metrics({"approved": approvals.get("approved", 0),
                            "rejected": approvals.get("rejected", 0),
                            "published_files": summary.get("files", 0)})
        with tempfile.TemporaryDirectory() as tmp:
            m = Path(tmp) / "manifest.json"
            from darkroom.storage import read_uri

            m.write_bytes(read_uri(summary["manifest"]))
            mlflow.log_artifact(str(m))


os.environ.setdefault("MLFLOW_ENABLE_ARTIFACTS_PROGRESS_BAR", "false")
