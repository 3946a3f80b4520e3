"""MLflow, the store of runs and experiments: one experiment per campaign, one MLflow run per
DAG run. What is logged is decided by the track and publish stages; this module only writes.

Re-logging a DAG run finds its MLflow run by tag (dag_id + run_id) and logs into it again
instead of making a second one. The tracking URI is ``Settings.mlflow_tracking_uri``:
``DARKROOM_MLFLOW_TRACKING_URI`` (or an Airflow connection, see ``darkroom_operators.hooks``),
by default a SQLite store under ``$DARKROOM_HOME`` whose artifacts go to
``$DARKROOM_HOME/mlflow-artifacts``.
"""

from __future__ import annotations

import subprocess
import tempfile
from dataclasses import dataclass
from pathlib import Path

import mlflow

from darkroom.config import PROJECT_ROOT, Settings, quiet_progress_bars


def git_commit() -> str:
    """The commit of the checkout the code runs from ("unknown" outside a git checkout)."""
    try:
        return subprocess.run(["git", "rev-parse", "HEAD"], cwd=PROJECT_ROOT, capture_output=True,
                              text=True, timeout=5).stdout.strip() or "unknown"
    except Exception:
        return "unknown"


def use(settings: Settings):
    """Point MLflow's tracking and registry at the settings' store; return an MlflowClient."""
    quiet_progress_bars()
    mlflow.set_tracking_uri(settings.mlflow_tracking_uri)
    mlflow.set_registry_uri(settings.mlflow_tracking_uri)
    return mlflow.MlflowClient(tracking_uri=settings.mlflow_tracking_uri,
                               registry_uri=settings.mlflow_tracking_uri)


def experiment_id(settings: Settings, name: str, tags: dict | None = None) -> str:
    """The id of experiment ``name``, created on first use."""
    use(settings)
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


def campaign_experiment(settings: Settings, campaign_id: str) -> str:
    return experiment_id(settings, f"darkroom/{campaign_id}", {"campaign": campaign_id})


def find_mlflow_run(settings: Settings, campaign_id: str, dag_id: str, run_id: str,
                    attempt: int = 0) -> str | None:
    """The MLflow run id logged for a DAG run (its attempt: a re-processed DAG run gets its
    own MLflow run; runs logged before attempts were tagged are attempt 0), if any."""
    exp_id = campaign_experiment(settings, campaign_id)
    found = mlflow.search_runs([exp_id], filter_string=(
        f"tags.airflow_dag_id = '{dag_id}' and tags.airflow_run_id = '{run_id}'"), output_format="list")
    found = [r for r in found if r.data.tags.get("darkroom_attempt", "0") == str(attempt)]
    return found[0].info.run_id if found else None


@dataclass(frozen=True)
class ProductRows:
    """The product rows a run was made from, for the run's MLflow dataset input."""

    frame: object  # a pandas DataFrame
    source: str  # the spec's product source: a path, s3:// or postgres:// URI
    name: str
    table: str | None = None  # postgres:// sources: the table or query read
    query: str | None = None


def log_run(settings: Settings, *, campaign_id: str, dag_id: str, run_id: str, tags: dict,
            params: dict, metrics: dict, artifacts: dict[str, bytes], samples: dict[str, bytes],
            table: dict[str, list], attempt: int = 0, products: ProductRows | None = None) -> str:
    """Create (or update) the DAG run's MLflow run; return its id.

    :param artifacts: file name -> bytes, logged as files (contact sheet, validation report).
    :param samples: artifact path -> image file, logged as its own bytes: ``mlflow.log_image``
        would re-encode it and drop its provenance chunks.
    :param table: columns for ``mlflow.log_table`` (shown as a table in the MLflow UI).
    :param products: the product rows, logged as the run's dataset input (source and digest).
    """
    exp_id = campaign_experiment(settings, campaign_id)
    existing = find_mlflow_run(settings, campaign_id, dag_id, run_id, attempt)
    name = run_id if not attempt else f"{run_id} (attempt {attempt})"
    with mlflow.start_run(run_id=existing, experiment_id=exp_id,
                          run_name=None if existing else name) as active:
        mlflow.set_tags({"airflow_dag_id": dag_id, "airflow_run_id": run_id, "campaign": campaign_id,
                         "darkroom_attempt": str(attempt), "git_commit": git_commit(), **tags})
        if not existing:  # params are immutable in MLflow: logged once per run
            mlflow.log_params(params)
        mlflow.log_metrics(metrics)
        with tempfile.TemporaryDirectory() as tmp:
            for name, data in [*artifacts.items(), *samples.items()]:
                path = Path(tmp) / name
                path.parent.mkdir(parents=True, exist_ok=True)
                path.write_bytes(data)
                folder = str(Path(name).parent)
                mlflow.log_artifact(str(path), artifact_path=None if folder == "." else folder)
        if products is not None:
            log_products(products)
        mlflow.log_table(table, artifact_file="assets.json")
        return active.info.run_id


def log_products(products: ProductRows) -> None:
    """The product rows as the active MLflow run's dataset input (context ``products``)."""
    source = products.source
    if source.startswith("postgres://"):  # MLflow has no source type for it: say what it is
        from mlflow.data.code_dataset_source import CodeDatasetSource

        source = CodeDatasetSource({"products.source": source, "table": products.table or "",
                                    "query": products.query or ""})
    mlflow.log_input(mlflow.data.from_pandas(products.frame, source=source, name=products.name),
                     context="products")


def log_publication(settings: Settings, mlflow_run_id: str, metrics: dict,
                    manifest: bytes | None) -> None:
    """Add the publish outcome (counts, the manifest) to a DAG run's MLflow run."""
    use(settings)
    with mlflow.start_run(run_id=mlflow_run_id):
        mlflow.log_metrics(metrics)
        if manifest is not None:
            with tempfile.TemporaryDirectory() as tmp:
                path = Path(tmp) / "manifest.json"
                path.write_bytes(manifest)
                mlflow.log_artifact(str(path))
