"""Scale benchmark (issue 8, item 5): a few hundred tiny-model images through the local
Celery stack of stack.py, first with one default-queue worker, then with two (the gpu
worker in both), on the same stack.

    nice .venv/bin/python -m tests.integration.bench_scale --images 240

Each configuration runs its own campaign (``bench_scale_w1``, ``bench_scale_w2``: same
products, prompts and settings, different ids), so the second run plans, generates and
publishes everything afresh instead of finding the first run's variants in the catalog.
The run is triggered through the REST API like the UI does and approved with
``darkroom review approve --all`` as soon as ``await_approval`` is deferred.

Figures: wall time (the DAG run's queued_at -> end_date, from the metadata DB), task
count, per-task overhead (``start_date - queued_dttm`` of every task instance), the idle
gap a busy worker leaves between two tasks, per-stage spans and per-image seconds, the CPU
seconds the stack's processes used, images/s. Written to docs/bench/scale.json; quoted
in docs/benchmarks.md. Not a test: no ``test_`` prefix, so ``make test`` never runs it.
"""

from __future__ import annotations

import argparse
import contextlib
import json
import os
import platform
import statistics
import subprocess
import tempfile
import threading
import time
from datetime import UTC, datetime
from pathlib import Path
from urllib.parse import quote

import yaml

from tests.integration.stack import BIN, ROOT, LocalStack, api, catalog_url, local_stack

CATEGORIES = ["drinkware", "tableware", "serveware", "decor"]
STAGES = ["validate_inputs", "expand_prompts", "generate", "qa", "postprocess", "track",
          "await_approval", "publish"]


def write_campaigns(campaigns_dir: Path, ids: list[str], *, images: int, per_task: int, steps: int,
                    size: int) -> None:
    """One CSV of ``images / 2`` products and one spec per id: spring_tiles' prompts, brand
    rules, channels and QA with 2 seeds per product, ``steps`` steps at ``size`` px and
    ``per_task`` variants (= images) per mapped task."""
    products = -(-images // 2)
    rows = [f"BEN-{i:04d},product {i},{CATEGORIES[i % 4]},{['sand', 'moss green', 'chalk white'][i % 3]},"
            f"stoneware,{10 + i % 90}" for i in range(products)]
    (campaigns_dir / "bench_scale.products.csv").write_text(
        "sku,name,category,colour,material,price_eur\n" + "\n".join(rows) + "\n")
    base = yaml.safe_load((ROOT / "include/campaigns/spring_tiles.yaml").read_text())
    for campaign_id in ids:
        spec = json.loads(json.dumps(base))  # a deep copy per campaign
        spec["id"] = campaign_id
        spec["brief"] = f"Scale benchmark: {images} tiny-model images.\n"
        spec["products"] = {
            "source": "bench_scale.products.csv", "id_column": "sku",
            "required_columns": ["sku", "name", "category", "colour", "material"],
            "expectations": [{"type": "expect_column_values_to_be_in_set",
                              "kwargs": {"column": "category", "value_set": CATEGORIES}}],
        }
        # The spec lives in a temp dir: brand files are resolved relative to it otherwise.
        spec["brand"]["restricted_terms_file"] = str(ROOT / "include/brand/restricted_terms.txt")
        spec["generation"].update(steps=steps, width=size, height=size, seeds_per_variant=2,
                                  batch_size=4, variants_per_task=per_task)
        # Serial QA and post-processing inside each task: a spawned process pool (which
        # postprocess starts from ~17 reviewable assets per batch with a 1000px channel) dies
        # under a Celery task, because its children re-run the `airflow` entry point with the
        # task's blocked metadata-DB URL; the task then fails and retries. Workers are the unit
        # of parallelism here anyway (Celery pool "solo"); see the report in docs/benchmarks.md.
        spec["qa"]["workers"] = 1
        (campaigns_dir / f"{campaign_id}.yaml").write_text(yaml.safe_dump(spec, sort_keys=False))


class LoadSampler:
    """The 1-minute load average every few seconds while a run is in flight: the machine is
    shared (2 cores), so the figures are only as good as the load they were taken under."""

    def __init__(self, interval: float = 5.0):
        self.interval, self.samples = interval, []
        self._stop = threading.Event()
        self._thread = threading.Thread(target=self._loop, daemon=True)

    def _loop(self) -> None:
        while not self._stop.is_set():
            self.samples.append(os.getloadavg()[0])
            self._stop.wait(self.interval)

    def __enter__(self) -> LoadSampler:
        self._thread.start()
        return self

    def __exit__(self, *exc) -> None:
        self._stop.set()
        self._thread.join()

    def summary(self) -> dict:
        s = self.samples or [os.getloadavg()[0]]
        return {"mean": round(statistics.fmean(s), 2), "max": round(max(s), 2), "samples": len(s)}


def stack_cpu_seconds(stack: LocalStack) -> float:
    """User + system CPU seconds of every live process in the stack's process groups, with
    what their reaped children used (task processes are forked and reaped by the workers, so
    they count). PostgreSQL and moto are not in these groups and are not counted."""
    import psutil

    groups = {p.popen.pid for p in stack.processes.values() if p.popen.poll() is None}
    total = 0.0
    for proc in psutil.process_iter():
        with contextlib.suppress(psutil.Error, ProcessLookupError):
            if os.getpgid(proc.pid) in groups:
                t = proc.cpu_times()
                total += t.user + t.system + t.children_user + t.children_system
    return total


def _pct(values: list[float], q: float) -> float | None:
    """Nearest-rank percentile (no interpolation: with tens of values it is one of them)."""
    if not values:
        return None
    ordered = sorted(values)
    return round(ordered[min(len(ordered) - 1, max(0, round(q / 100 * len(ordered) + 0.5) - 1))], 3)


def _dist(values: list[float]) -> dict:
    return {"n": len(values), "median": _pct(values, 50), "p95": _pct(values, 95),
            "max": round(max(values), 3) if values else None}


def run_stats(stack: LocalStack, dag_id: str, run_id: str) -> dict:
    """Timings of one DAG run from Airflow's metadata DB (task_instance, dag_run)."""
    from sqlalchemy import create_engine, text

    engine = create_engine(stack.env["AIRFLOW__DATABASE__SQL_ALCHEMY_CONN"])
    try:
        with engine.connect() as conn:
            dr = conn.execute(text("SELECT queued_at, start_date, end_date, state FROM dag_run "
                                   "WHERE dag_id = :d AND run_id = :r"), {"d": dag_id, "r": run_id}).one()
            tis = [dict(r._mapping) for r in conn.execute(text(
                "SELECT task_id, map_index, queue, hostname, state, try_number, scheduled_dttm, queued_dttm,"
                " start_date, end_date FROM task_instance WHERE dag_id = :d AND run_id = :r"),
                {"d": dag_id, "r": run_id})]
    finally:
        engine.dispose()

    def secs(a, b) -> float:
        return (b - a).total_seconds()

    # await_approval resumes from deferral with its first start_date kept and a new
    # queued_dttm, so its start - queued is negative: not a dispatch figure, left out.
    dispatched = [ti for ti in tis if ti["task_id"] != "await_approval" and ti["queued_dttm"] and ti["start_date"]]
    overhead = {"all": _dist([secs(ti["queued_dttm"], ti["start_date"]) for ti in dispatched])}
    for queue in sorted({ti["queue"] for ti in dispatched}):
        overhead[queue] = _dist([secs(ti["queued_dttm"], ti["start_date"])
                                 for ti in dispatched if ti["queue"] == queue])
    scheduled_to_queued = _dist([secs(ti["scheduled_dttm"], ti["queued_dttm"]) for ti in dispatched
                                 if ti["scheduled_dttm"] and ti["task_id"] != "generate"])
    # A worker with a backlog: the time between the end of one task and the start of the
    # next one that was already queued. Pure turnaround (result -> scheduler -> broker ->
    # worker -> supervisor), with no waiting-for-a-free-worker in it.
    gaps = []
    by_host: dict[str, list[dict]] = {}
    for ti in dispatched:
        by_host.setdefault(ti["hostname"], []).append(ti)
    for host_tis in by_host.values():
        host_tis.sort(key=lambda ti: ti["start_date"])
        for prev, nxt in zip(host_tis, host_tis[1:], strict=False):
            if prev["end_date"] and nxt["queued_dttm"] <= prev["end_date"]:
                gaps.append(secs(prev["end_date"], nxt["start_date"]))
    stages = {}
    for task_id in STAGES:
        group = [ti for ti in tis if ti["task_id"] == task_id and ti["start_date"] and ti["end_date"]]
        if not group:
            continue
        durations = [secs(ti["start_date"], ti["end_date"]) for ti in group]
        first_queued = min((ti["queued_dttm"] for ti in group if ti["queued_dttm"]), default=None)
        first_end = min(ti["end_date"] for ti in group)
        stages[task_id] = {
            "tasks": len(group), "hosts": sorted({ti["hostname"] for ti in group}),
            "span_s": round(secs(min(ti["start_date"] for ti in group), max(ti["end_date"] for ti in group)), 2),
            "first_queued_to_last_end_s": round(secs(first_queued, max(ti["end_date"] for ti in group)), 2)
            if first_queued else None,
            "task_seconds_sum": round(sum(durations), 2), "task_seconds": _dist(durations),
            # From the run's trigger: when the first task of this stage finished.
            "first_end_s": round(secs(dr.queued_at, first_end), 2),
        }
    # A reviewer can decide on an asset once QA passed it (the gallery reads the catalog), and
    # publish it once its channel derivatives exist: the first batch through postprocess.
    first_reviewable = stages.get("postprocess", {}).get("first_end_s")
    return {
        "state": dr.state, "wall_s": round(secs(dr.queued_at, dr.end_date), 2),
        "time_to_first_reviewable_s": first_reviewable,
        "time_to_first_qa_checked_s": stages.get("qa", {}).get("first_end_s"),
        "task_instances": len(tis), "mapped_task_instances": sum(1 for ti in tis if ti["map_index"] >= 0),
        "retries": sum(1 for ti in tis if (ti["try_number"] or 1) > 1),
        "hosts": {h: len(v) for h, v in sorted(by_host.items())},
        "queued_to_running_s": overhead, "scheduled_to_queued_s": scheduled_to_queued,
        "busy_worker_gap_s": _dist(gaps), "stages": stages,
    }


def _log_events(path: Path) -> list[tuple[datetime, str]]:
    """(timestamp, message) of a task log (Airflow 3 writes JSON lines)."""
    events = []
    for line in path.read_text(errors="replace").splitlines():
        with contextlib.suppress(ValueError, KeyError, TypeError):
            rec = json.loads(line)
            events.append((datetime.fromisoformat(rec["timestamp"].replace("Z", "+00:00")), str(rec["event"])))
    return events


def generate_breakdown(stack: LocalStack, dag_id: str, run_id: str) -> dict | None:
    """Where a generate task's seconds go, from its own log: start-up (task process start
    -> the stage's "Batch N: ... to generate" line: DAG file parse, imports, catalog,
    model resolution), the batch (that line -> "Batch N: generated": pipeline load,
    inference, PNG + provenance, storage writes, catalog rows) and the tail (-> the task's
    end). Start-up is paid once per mapped task, whatever its size."""
    from sqlalchemy import create_engine, text

    engine = create_engine(stack.env["AIRFLOW__DATABASE__SQL_ALCHEMY_CONN"])
    try:
        with engine.connect() as conn:
            tis = conn.execute(text("SELECT map_index, try_number, start_date, end_date FROM task_instance "
                                    "WHERE dag_id = :d AND run_id = :r AND task_id = 'generate'"),
                               {"d": dag_id, "r": run_id}).all()
    finally:
        engine.dispose()
    logs = Path(stack.env["AIRFLOW_HOME"]) / "logs" / f"dag_id={dag_id}" / f"run_id={run_id}" / "task_id=generate"
    startup, batch, tail = [], [], []
    for ti in tis:
        path = logs / f"map_index={ti.map_index}" / f"attempt={ti.try_number or 1}.log"
        if not path.is_file():
            continue
        events = _log_events(path)
        begin = next((t for t, e in events if e.startswith("Batch ") and "to generate" in e), None)
        done = next((t for t, e in events if e.startswith("Batch ") and ": generated " in e), None)
        if begin and done:
            startup.append((begin - ti.start_date).total_seconds())
            batch.append((done - begin).total_seconds())
            tail.append((ti.end_date - done).total_seconds())
    if not startup:
        return None
    return {"startup_s": _dist(startup), "batch_s": _dist(batch), "tail_s": _dist(tail)}


def run_campaign(stack: LocalStack, campaign_id: str, *, timeout: float) -> dict:
    """Trigger like the UI, approve everything as soon as the run waits for reviewers, wait
    for the end; then the metadata DB's figures."""
    dag_id = f"campaign__{campaign_id}"
    token = stack.token()
    dags = stack.unpause_when_parsed(dag_id, token, 300)
    cpu0 = stack_cpu_seconds(stack)
    with LoadSampler() as load:
        started = time.monotonic()
        run = api("POST", f"{dags}/{dag_id}/dagRuns", token, {"logical_date": None})
        run_url = f"{dags}/{dag_id}/dagRuns/{quote(run['dag_run_id'], safe='')}"

        def deferred_for_review():
            if api("GET", run_url, token)["state"] == "failed":
                raise RuntimeError(f"{dag_id} failed before review\n{stack.logs()}")
            ti = api("GET", f"{run_url}/taskInstances/await_approval", token)
            return ti["state"] == "deferred"

        stack.wait_for(f"{dag_id} to wait for reviewers", deferred_for_review, timeout, interval=2)
        deferred_at = time.monotonic()
        approved = subprocess.run(
            [str(BIN / "darkroom"), "review", "approve", "--all", "--campaign", campaign_id, "--reviewer",
             "bench"], env={**stack.env, "DARKROOM_CATALOG_URL": catalog_url(stack.env)},
            capture_output=True, text=True, timeout=300, check=False)
        if approved.returncode != 0:
            raise RuntimeError(f"approve failed:\n{approved.stdout}\n{approved.stderr}")
        approved_at = time.monotonic()

        def finished():
            state = api("GET", run_url, token)["state"]
            return state if state in ("success", "failed") else None

        state = stack.wait_for(f"{dag_id} to finish", finished, timeout, interval=2)
        observed = time.monotonic() - started
    cpu = stack_cpu_seconds(stack) - cpu0
    if state != "success":
        raise RuntimeError(f"{dag_id} ended {state}\n{stack.logs()}")
    stats = run_stats(stack, dag_id, run["dag_run_id"])
    stats["generate_breakdown"] = generate_breakdown(stack, dag_id, run["dag_run_id"])
    stats.update({
        "campaign": campaign_id, "run_id": run["dag_run_id"],
        "observed_wall_s": round(observed, 2),  # trigger -> success seen by polling (2 s steps)
        "approval_s": round(approved_at - deferred_at, 2),  # `review approve --all` itself
        "approved": approved.stdout.count("approved "),
        "stack_cpu_s": round(cpu, 1), "load_average_1m": load.summary(),
    })
    return stats


def summarise(run: dict, images: int) -> dict:
    """The headline figures of one run, and the per-image and per-task inputs of the paper
    extrapolation in docs/benchmarks.md."""
    st = run["stages"]
    cpu_stage_s = st["qa"]["task_seconds_sum"] + st["postprocess"]["task_seconds_sum"]
    return {
        "wall_s": run["wall_s"], "images_per_s": round(images / run["wall_s"], 3),
        "time_to_first_reviewable_s": run["time_to_first_reviewable_s"],
        "time_to_first_qa_checked_s": run["time_to_first_qa_checked_s"],
        "tasks": run["task_instances"],
        "queued_to_running_median_s": run["queued_to_running_s"]["all"]["median"],
        "queued_to_running_p95_s": run["queued_to_running_s"]["all"]["p95"],
        # Task-seconds per image, task start-up included (mapped tasks of `per_task` images).
        "generate_s_per_image": round(st["generate"]["task_seconds_sum"] / images, 3),
        "qa_postprocess_s_per_image": round(cpu_stage_s / images, 3),
        "generate_span_s": st["generate"]["span_s"],
        "qa_postprocess_span_s": round(st["qa"]["span_s"] + st["postprocess"]["span_s"], 2),
    }


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(prog="python -m tests.integration.bench_scale", description=__doc__.split("\n\n")[0])
    ap.add_argument("--images", type=int, default=240, help="images per campaign run (2 seeds per product)")
    ap.add_argument("--per-task", type=int, default=24, help="variants (= images) per mapped task")
    ap.add_argument("--steps", type=int, default=2)
    ap.add_argument("--size", type=int, default=64)
    ap.add_argument("--workers", type=int, nargs="+", default=[1, 2],
                    help="default-queue worker counts to measure, ascending (workers are added between runs)")
    ap.add_argument("--timeout", type=float, default=900, help="seconds per phase of one run")
    ap.add_argument("--out", type=Path, default=ROOT / "docs/bench/scale.json")
    args = ap.parse_args(argv)
    if args.workers != sorted(args.workers) or args.workers[0] < 1:
        ap.error("--workers: ascending counts >= 1 (one stack; workers are only added)")

    load_before = os.getloadavg()
    results = []
    with tempfile.TemporaryDirectory(prefix="darkroom-bench-scale-") as tmp:
        tmp = Path(tmp)
        campaigns = tmp / "campaigns"
        campaigns.mkdir()
        ids = [f"bench_scale_w{n}" for n in args.workers]
        write_campaigns(campaigns, ids, images=args.images, per_task=args.per_task, steps=args.steps,
                        size=args.size)
        t0 = time.monotonic()
        with local_stack(tmp / "stack", default_workers=args.workers[0],
                         extra_env={"DARKROOM_CAMPAIGNS_DIR": str(campaigns)}) as stack:
            startup_s = time.monotonic() - t0
            print(f"stack up in {startup_s:.0f}s", flush=True)
            for n, campaign_id in zip(args.workers, ids, strict=True):
                while sum(1 for p in stack.processes if p.startswith("airflow-worker")
                          and p != "airflow-worker-gpu") < n:
                    stack.add_default_worker()
                time.sleep(5)  # a new worker connects to the broker before the run starts
                print(f"{campaign_id}: {n} default worker(s) + 1 gpu worker ...", flush=True)
                run = run_campaign(stack, campaign_id, timeout=args.timeout)
                run["default_workers"] = n
                run["summary"] = summarise(run, args.images)
                print(json.dumps(run["summary"]), flush=True)
                results.append(run)
    commit = subprocess.run(["git", "rev-parse", "--short", "HEAD"], cwd=ROOT, capture_output=True,
                            text=True, check=False).stdout.strip()
    result = {
        "stage": "scale", "commit": commit, "images": args.images, "per_task": args.per_task, "steps": args.steps,
        "size": args.size, "seeds_per_variant": 2, "gpu_workers": 1, "gpu_pool_slots": 1,
        "celery_pool": "solo", "executor": "CeleryExecutor",
        "machine": platform.machine(), "cpus": os.cpu_count(), "python": platform.python_version(),
        "load_average_before": [round(x, 2) for x in load_before],
        "stack_startup_s": round(startup_s, 1), "bench_wall_s": round(time.monotonic() - t0, 1),
        "at": datetime.now(UTC).isoformat(timespec="seconds"), "runs": results,
    }
    args.out.parent.mkdir(parents=True, exist_ok=True)
    args.out.write_text(json.dumps(result, indent=2, default=str) + "\n")
    print(f"wrote {args.out}")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
