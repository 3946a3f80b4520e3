"""``darkroom run``: one DAG run in this process, through Airflow's own ``dag.test``.

:func:`run_campaign` sets the embedded Airflow environment (the DAG file builds the spec's
folder) before Airflow is imported. A progress display reads the catalog while the DAG runs;
with ``approve_all`` a reviewer thread records the local user's approval for every QA-passed
asset once the run reaches review.
"""

from __future__ import annotations

import contextlib
import os
import subprocess
import sys
import threading
from dataclasses import dataclass, field
from datetime import UTC, datetime
from pathlib import Path

from darkroom.catalog import reviews, runs
from darkroom.catalog.db import Catalog
from darkroom.catalog.tables import REVIEWABLE
from darkroom.config import PROJECT_ROOT, Settings, apply_airflow_env, local_user, settle_airflow_config
from darkroom.spec import load_spec
from darkroom_operators import stopping
from rich.progress import BarColumn, MofNCompleteColumn, Progress, TextColumn, TimeElapsedColumn


@dataclass
class LocalRunResult:
    dag_id: str
    run_id: str
    state: str
    failed_tasks: list[str]
    log_file: Path
    not_run: list[str] = field(default_factory=list)
    errors: list[str] = field(default_factory=list)
    counts: runs.RunCounts = field(default_factory=runs.RunCounts)
    run: runs.RunRef | None = None
    #: The signal that stopped the run (SIGTERM, SIGINT), if one did.
    stopped_by: int | None = None


def domain_errors(log_file: Path) -> list[str]:
    """The Darkroom errors (with their explanation lines) that failed tasks raised.

    They are what a user can act on; the tracebacks around them stay in the log file.
    """
    if not log_file.is_file():
        return []
    errors, current = [], None
    for line in log_file.read_text(errors="replace").splitlines():
        if line.startswith("darkroom.errors."):
            current = [line.split(": ", 1)[-1]]
            errors.append(current)
        elif current is not None and line and not line[:4].isdigit():
            current.append(line)  # continuation of the message, until the next log record
        else:
            current = None
    return list(dict.fromkeys("\n".join(e) for e in errors))


def migrate_airflow_db() -> None:
    """``airflow db migrate`` (idempotent, a few seconds), in a child so this process's
    Airflow settings are read only once, after the DB exists. The child writes Airflow's
    airflow.cfg on a new home; it then gets the database URL Darkroom's processes use, so an
    ``airflow`` command with only AIRFLOW_HOME set waits for their writes too."""
    subprocess.run([sys.executable, "-m", "airflow", "db", "migrate"], check=True,
                   stdout=subprocess.DEVNULL, stderr=subprocess.PIPE, text=True)
    settle_airflow_config(Path(os.environ["AIRFLOW_HOME"]))


def load_dag(dag_id: str):
    """The campaign's DAG, parsed by Airflow's DagBag from the factory file, set to fail
    fast: in-process runs report a failed task now instead of retrying it minutes later."""
    migrate_airflow_db()
    from airflow.dag_processing.dagbag import DagBag  # Airflow reads its config when imported

    dagbag = DagBag(dag_folder=str(PROJECT_ROOT / "dags" / "campaigns.py"))
    dag = dagbag.get_dag(dag_id)
    if dag is None:
        errors = "\n".join(str(v) for v in dagbag.import_errors.values())
        raise RuntimeError(f"DAG {dag_id} did not load from {PROJECT_ROOT / 'dags'}:\n{errors}")
    for t in dag.tasks:
        t.retries = 0
    return dag


class _Reviewer(threading.Thread):
    """--approve-all: approve, as the local user, once the run is waiting for review."""

    def __init__(self, catalog: Catalog, dag_id: str, since: datetime):
        super().__init__(daemon=True, name="darkroom-approve-all")
        self.catalog, self.dag_id, self.since = catalog, dag_id, since
        self.stop = threading.Event()
        self.user = local_user()

    def run(self) -> None:
        while not self.stop.wait(0.5):
            run = runs.latest_run(self.catalog, self.dag_id, self.since)
            if run is None or run.mlflow_run_id is None:  # not yet at await_approval
                continue
            for asset in reviews.waiting(self.catalog, run_id=run.run_id):
                if asset.status in REVIEWABLE:
                    reviews.decide(self.catalog, asset.id, "approve", self.user,
                                  "darkroom run --approve-all")


@contextlib.contextmanager
def _output_to(log_file: Path, enabled: bool):
    """Send Airflow's task logs (written to fds 1 and 2) to a file while the display runs."""
    if not enabled:
        yield
        return
    log_file.parent.mkdir(parents=True, exist_ok=True)
    sys.stdout.flush()
    sys.stderr.flush()
    saved = os.dup(1), os.dup(2)
    with open(log_file, "ab") as fh:
        os.dup2(fh.fileno(), 1)
        os.dup2(fh.fileno(), 2)
        try:
            yield
        finally:
            sys.stdout.flush()
            sys.stderr.flush()
            os.dup2(saved[0], 1)
            os.dup2(saved[1], 2)
            os.close(saved[0])
            os.close(saved[1])


def run_campaign(spec_path: Path, conf: dict, *, approve_all: bool, settings: Settings,
                 console, quiet_logs: bool = True) -> LocalRunResult:
    """Run the spec's DAG once in this process; return its outcome and the catalog's counts.
    SIGTERM or Ctrl-C stops it (darkroom_operators.stopping): the result says how far it got."""
    # The DAG file builds the campaigns of the spec's folder, so a spec outside
    # include/campaigns runs too; Airflow reads all of it from the environment.
    apply_airflow_env(settings, campaigns_dir=spec_path.parent)
    loaded = load_spec(spec_path)
    dag_id = loaded.spec.dag_id
    since = datetime.now(UTC)
    log_file = settings.home / "logs" / f"{loaded.spec.id}-{since.strftime('%Y%m%dT%H%M%S')}.log"
    catalog = Catalog(settings.catalog_url)
    with stopping.stops_run():
        try:
            return _run(dag_id, conf, approve_all=approve_all, catalog=catalog, since=since,
                        log_file=log_file, console=console, quiet_logs=quiet_logs)
        except stopping.Stopped as stop:
            return stopped(catalog, dag_id, since, log_file, stop, quiet_logs)


def _run(dag_id: str, conf: dict, *, approve_all: bool, catalog: Catalog, since: datetime,
         log_file: Path, console, quiet_logs: bool) -> LocalRunResult:
    with console.status("Preparing Airflow (database, DAG parsing)"), _output_to(log_file, quiet_logs):
        dag = load_dag(dag_id)

    reviewer = _Reviewer(catalog, dag_id, since) if approve_all else None
    if reviewer:
        reviewer.start()

    progress = Progress(TextColumn("{task.description:<12}"), BarColumn(), MofNCompleteColumn(),
                        TextColumn("{task.fields[note]}"), TimeElapsedColumn(), console=console,
                        transient=False)
    bars = {name: progress.add_task(name, total=None, note="") for name in
            ("plan", "generate", "qa", "derivatives", "review", "publish")}
    done = threading.Event()

    def watch() -> None:
        while not done.wait(0.5):
            run = runs.latest_run(catalog, dag_id, since)
            if run is None:
                continue
            planned = run.summary.get("planned")
            c = runs.counts(catalog, run.pk)
            progress.update(bars["plan"], total=1, completed=1 if planned is not None else 0,
                            note=f"{planned} variants" if planned is not None else "")
            if planned is not None:
                progress.update(bars["generate"], total=planned, completed=c.generated + c.failed,
                                note=f"{c.failed} failed" if c.failed else "")
                progress.update(bars["qa"], total=c.generated or None, completed=c.checked,
                                note=f"{c.qa_failed} failed" if c.qa_failed else "")
                progress.update(bars["derivatives"], total=None, completed=c.derivatives, note="")
                passed = c.checked - c.qa_failed
                waiting = run.mlflow_run_id and c.decided < passed
                progress.update(bars["review"], total=passed or None, completed=c.decided,
                                note="waiting for reviewers" if waiting else "")
                progress.update(bars["publish"], total=passed or None, completed=c.published)

    watcher = threading.Thread(target=watch, daemon=True)
    try:
        with progress:
            watcher.start()
            with _output_to(log_file, quiet_logs), stopping.between_tasks():
                dr = dag.test(run_conf=conf)
    finally:
        done.set()
        if watcher.is_alive():
            watcher.join()
        if reviewer:
            reviewer.stop.set()
            reviewer.join()

    from airflow.utils.state import TaskInstanceState  # after apply_airflow_env, as above

    def label(ti) -> str:
        return ti.task_id + (f"[{ti.map_index}]" if ti.map_index >= 0 else "")

    tis = dr.get_task_instances()
    result = LocalRunResult(
        dag_id=dag_id, run_id=dr.run_id, state=str(dr.state), log_file=log_file,
        failed_tasks=sorted(label(ti) for ti in tis if ti.state == TaskInstanceState.FAILED),
        not_run=sorted(label(ti) for ti in tis if ti.state == TaskInstanceState.UPSTREAM_FAILED),
        errors=domain_errors(log_file) if quiet_logs else [],
    )
    result.run = runs.find_run(catalog, dag_id, dr.run_id)
    if result.run is not None:
        result.counts = runs.counts(catalog, result.run.pk)
    return result


def stopped(catalog: Catalog, dag_id: str, since: datetime, log_file: Path, stop: stopping.Stopped,
            quiet_logs: bool) -> LocalRunResult:
    """The outcome of a run a signal stopped, from the catalog: how far it got. Its catalog
    run ends ``stopped``: the next ``darkroom run`` is a new run, which reuses its images."""
    run = runs.latest_run(catalog, dag_id, since)
    if run is not None:
        runs.mark_ended(catalog, run.pk, "stopped", str(stop))
        run = runs.get(catalog, run.pk)
    result = LocalRunResult(dag_id=dag_id, run_id=run.run_id if run else "-", state=str(stop),
                            failed_tasks=[], log_file=log_file, run=run, stopped_by=stop.signum,
                            errors=domain_errors(log_file) if quiet_logs else [])
    if run is not None:
        result.counts = runs.counts(catalog, run.pk)
    return result
