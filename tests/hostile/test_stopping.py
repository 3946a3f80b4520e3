"""SIGTERM stops a run at once, and what it leaves is whole (issue #13, item 3).

A plan of 200,000 product rows takes the better part of a minute to render (32 s alone on
this machine); before, ``darkroom run`` ignored SIGTERM until the plan, and every task after
it, had run. Both tests send a real SIGTERM to a real process in the middle of that plan:
``darkroom run`` itself (dag.test, every task in one process), and the plan stage as an
Airflow worker's task process runs it (Airflow's own SIGTERM handler installed first, as
its task runner does). Each must end within STOP_TIMEOUT seconds, say why, and leave no
variant, plan row or file behind it: the plan is committed in one transaction, or not at all.
"""

from __future__ import annotations

import json
import os
import signal
import subprocess
import sys
import textwrap
import time
from pathlib import Path

import pytest
from darkroom.catalog import Catalog
from darkroom.catalog.tables import Campaign, PlanItem, Run, Variant
from sqlalchemy import func, select

from tests.hostile.helpers import CSV_HEADER, ROOT, files, write_spec

ROWS = 200_000
STOP_TIMEOUT = 30  # seconds from SIGTERM to exit: a hang fails here, not a slow machine
START_TIMEOUT = 300  # imports, Airflow's DB and the validation of 200,000 rows on 2 busy cores
DARKROOM = str(Path(sys.executable).with_name("darkroom"))


def _big_spec(folder: Path) -> Path:
    rows = CSV_HEADER + "".join(f"P{i:06d},mug {i},drinkware,sand,stoneware,12.00\n" for i in range(ROWS))

    def no_logo(data):  # the example's logo lives next to the example spec, not in tmp
        data["channels"]["marketplace"].pop("logo", None)

    return write_spec(folder, no_logo, rows)


def _env(home: Path) -> dict:
    env = {k: v for k, v in os.environ.items() if not k.startswith(("AIRFLOW", "DARKROOM_", "MLFLOW_"))}
    env.update(DARKROOM_HOME=str(home), PYTHONUNBUFFERED="1")
    return env


def _wait_for(predicate, proc: subprocess.Popen, out: Path, timeout: float, what: str) -> None:
    deadline = time.monotonic() + timeout
    while not predicate():
        if proc.poll() is not None:
            pytest.fail(f"the process ended (rc {proc.returncode}) before {what}:\n"
                        f"{out.read_text()[-3000:]}")
        if time.monotonic() > deadline:
            proc.kill()
            pytest.fail(f"no {what} within {timeout} s")
        time.sleep(0.2)


def _terminate(proc: subprocess.Popen, out: Path) -> None:
    proc.send_signal(signal.SIGTERM)
    try:
        proc.wait(timeout=STOP_TIMEOUT)
    except subprocess.TimeoutExpired:
        proc.kill()
        proc.wait()
        pytest.fail(f"still running {STOP_TIMEOUT} s after SIGTERM:\n{out.read_text()[-3000:]}")


def _plan_rows(catalog_url: str) -> tuple[int, int]:
    with Catalog(catalog_url).session() as s:
        return (s.scalar(select(func.count()).select_from(Variant)),
                s.scalar(select(func.count()).select_from(PlanItem)))


@pytest.mark.e2e
# On a fresh clone's CI run (2026-12-02) the SIGTERM sent 2 s into the plan once took effect
# only when the plan task ended, and its rows were committed; how the stop was lost is not
# known (it did not happen again in 40 runs). Since then a stop raised in a task body is
# raised again until the body ends, and no catalog commit follows it in that body (see
# test_a_stop_dropped_in_a_finalizer_is_not_lost).
def test_sigterm_stops_darkroom_run_in_the_middle_of_a_long_plan(tmp_path):
    spec = _big_spec(tmp_path)
    home = tmp_path / "home"
    log = tmp_path / "run.out"

    def planning() -> bool:
        logs = list((home / "logs").glob("*.log"))
        return bool(logs) and "running task <TaskInstance: campaign__spring_tiles.expand_prompts" \
            in logs[0].read_text(errors="replace")

    with log.open("w") as sink:
        proc = subprocess.Popen([DARKROOM, "run", str(spec)], env=_env(home), cwd=ROOT, text=True,
                                stdout=sink, stderr=subprocess.STDOUT)
        _wait_for(planning, proc, log, START_TIMEOUT, "expand_prompts task")
        time.sleep(2)  # into the rendering of the rows
        assets = home / "assets"
        before = files(assets)
        _terminate(proc, log)
    out = log.read_text()

    assert proc.returncode == 128 + signal.SIGTERM, out[-3000:]
    assert "Stopped by SIGTERM" in out and "run the same command again" in out, out[-3000:]
    assert "Traceback" not in out, out[-3000:]
    # Nothing half-written: no variant or plan row, no file the stop left (temp files included).
    catalog_url = f"sqlite:///{home / 'catalog.db'}"
    assert _plan_rows(catalog_url) == (0, 0), out[-3000:]
    assert files(assets) == before, (before, files(assets))
    assert not any(p.name.startswith(".tmp-") for p in before)
    with Catalog(catalog_url).session() as s:
        (run,) = s.scalars(select(Run)).all()
        assert (run.state, run.summary["ended"]) == ("stopped", "stopped by SIGTERM")


# The plan stage as an Airflow task process runs it: the task runner's SIGTERM handler (which
# calls the operator's on_kill and returns) is installed first, then DarkroomHook.run_context
# adds Darkroom's (stopping.stop_on_sigterm). "on_kill" shows that Airflow's still runs.
WORKER = textwrap.dedent('''
    import signal, sys
    from darkroom.stages import plan
    from darkroom_operators.stopping import stop_on_sigterm
    from tests.hostile.helpers import run_context
    signal.signal(signal.SIGTERM, lambda signum, frame: print("on_kill", flush=True))
    stop_on_sigterm()
    ctx = run_context(sys.argv[1])
    print("planning", flush=True)
    plan.run(ctx)
    print("planned (the signal did not stop it)", flush=True)
''')


def test_sigterm_stops_a_worker_task_in_the_middle_of_a_long_plan(tmp_path, darkroom_home):
    spec = _big_spec(tmp_path)
    log = tmp_path / "worker.out"
    with log.open("w") as sink:
        proc = subprocess.Popen([sys.executable, "-c", WORKER, str(spec)], cwd=ROOT, text=True,
                                stdout=sink, stderr=subprocess.STDOUT)
        _wait_for(lambda: "planning" in log.read_text(), proc, log, START_TIMEOUT, "plan")
        time.sleep(2)
        _terminate(proc, log)
    out = log.read_text()
    assert proc.returncode == 128 + signal.SIGTERM, out[-3000:]
    assert "on_kill" in out and "SIGTERM: stopping this task now" in out, out[-3000:]
    assert "planned" not in out.replace("planning", "")
    assert _plan_rows(f"sqlite:///{darkroom_home / 'catalog.db'}") == (0, 0)


# Airflow's own task timeout (a task's execution_timeout, which a deployment may set): the task
# runner's SIGALRM raises AirflowTaskTimeout in the task, a BaseException no stage catches.
# The DAG as `darkroom run` loads it, the plan's timeout set to TIMEOUT seconds, run by dag.test.
TIMED = textwrap.dedent('''
    import json, sys
    from datetime import timedelta
    from pathlib import Path
    from darkroom.config import Settings, apply_airflow_env
    spec = Path(sys.argv[1])
    apply_airflow_env(Settings.from_env(), campaigns_dir=spec.parent)
    from darkroom_operators.local_run import load_dag
    dag = load_dag("campaign__spring_tiles")
    dag.task_dict["expand_prompts"].execution_timeout = timedelta(seconds=float(sys.argv[2]))
    dr = dag.test(run_conf={})
    tis = dr.get_task_instances()
    states = {ti.task_id: str(ti.state) for ti in tis}
    seconds = {ti.task_id: (ti.end_date - ti.start_date).total_seconds() for ti in tis
               if ti.start_date and ti.end_date}
    print("RESULT " + json.dumps({"run": str(dr.state), "states": states, "seconds": seconds}), flush=True)
''')
TIMEOUT = 3


@pytest.mark.e2e
def test_airflows_task_timeout_ends_a_long_plan(tmp_path):
    spec = _big_spec(tmp_path)
    home = tmp_path / "home"
    proc = subprocess.run([sys.executable, "-c", TIMED, str(spec), str(TIMEOUT)], env=_env(home), cwd=ROOT,
                          capture_output=True, text=True, timeout=START_TIMEOUT + 60)
    out = proc.stdout + proc.stderr
    assert proc.returncode == 0, out[-3000:]
    result = json.loads(next(line for line in proc.stdout.splitlines() if line.startswith("RESULT "))[7:])
    assert result["run"] == "failed", result
    assert result["states"]["validate_inputs"] == "success"
    assert result["states"]["expand_prompts"] == "failed", result
    assert "AirflowTaskTimeout" in out
    print(result["seconds"])  # how long each task ran: for the log, not asserted
    # Ended in the middle of the plan (30 s or more of rendering), which committed nothing.
    assert _plan_rows(f"sqlite:///{home / 'catalog.db'}") == (0, 0)


# A signal handler's exception is dropped where Python cannot raise it: in a finalizer
# (``__del__``, a weakref callback), Python prints "Exception ignored" and goes on. The task
# process here sends itself SIGTERM from a finalizer, so the stop lands there for sure; what
# follows is either a catalog commit (refused: nothing the stopped task writes is kept) or
# more work (the stop is raised again each second until the task body ends).
LOST = textwrap.dedent('''
    import os, signal, sys, time
    from darkroom.catalog import Catalog
    from darkroom.catalog.tables import Campaign
    from darkroom_operators.stopping import stop_on_sigterm
    catalog = Catalog(sys.argv[1])
    signal.signal(signal.SIGTERM, lambda signum, frame: print("on_kill", flush=True))  # Airflow's
    stop_on_sigterm()

    class Finalized:
        def __del__(self):
            os.kill(os.getpid(), signal.SIGTERM)
            for _ in range(100_000):  # Python runs the handler here, in the finalizer
                pass

    Finalized()
    print("the stop was dropped in a finalizer", flush=True)
    if sys.argv[2] == "commit":
        with catalog.session() as s:
            s.add(Campaign(id="written_after_the_stop", spec_hash="x", spec_path="x", spec_body={}))
        print("committed after the stop", flush=True)
    else:
        started = time.monotonic()
        while time.monotonic() - started < 20:  # pure Python work: the stop comes again here
            pass
        print("ran on for 20 s after the stop", flush=True)
''')


@pytest.mark.parametrize("then", ["commit", "work"])
def test_a_stop_dropped_in_a_finalizer_is_not_lost(tmp_path, then):
    catalog_url = f"sqlite:///{tmp_path / 'catalog.db'}"
    proc = subprocess.run([sys.executable, "-c", LOST, catalog_url, then], cwd=ROOT, capture_output=True,
                          text=True, timeout=120)
    out = proc.stdout + proc.stderr
    assert "Exception ignored" in out and "the stop was dropped in a finalizer" in out, out[-3000:]
    assert proc.returncode == 128 + signal.SIGTERM, out[-3000:]
    assert "committed after the stop" not in out and "ran on for 20 s" not in out, out[-3000:]
    with Catalog(catalog_url).session() as s:
        assert s.scalars(select(Campaign)).all() == []
