"""SIGTERM stops a Darkroom task at once, and ``darkroom run`` with it.

Airflow 3.3's task runner answers SIGTERM by calling the operator's ``on_kill()`` and carrying
on (``task_runner._run_task_and_map_outcome``). For a Python task that is nothing: a task its
worker stops (a shutdown, a task marked failed or cleared) runs on until the supervisor's
SIGKILL five seconds later, with no clean-up; and ``darkroom run``, where dag.test runs every
task in one process, ignored SIGTERM from its first task on (a plan of many rows, a GX
validation, a wait for reviewers ran to their end).

Every task's context (``DarkroomHook.run_context``) calls :func:`stop_on_sigterm`: Airflow's
handler still runs (the operator's ``on_kill``), then :class:`Stopped` ends the task where it
is, unwinding through the clean-up on the way (storage removes the temp file of a write it
did not finish, an open catalog transaction rolls back). ``Stopped`` is a ``SystemExit``, so
the stages' ``except Exception`` (one bad image must not stop a batch) never swallows it,
and Airflow retries the task when it has retries left: every stage resumes.

A stop is not lost where Python drops the exception of a signal handler: one that runs while
a finalizer (``__del__``, a weakref callback) is executing raises there, and Python prints
"Exception ignored" and goes on. So once SIGTERM came, the task body gets the stop again each
second until it has ended (:func:`_redeliver`), and no catalog transaction commits in it
(:func:`_refuse_commit`): what a stopped task writes is rolled back, however it goes on.

:func:`stops_run` is ``darkroom run``'s side: SIGTERM or Ctrl-C there ends the whole run once
the task they stopped has failed, instead of dag.test going on to the next task.
"""

from __future__ import annotations

import _thread
import contextlib
import logging
import os
import signal
import threading
import time

from sqlalchemy import event
from sqlalchemy.orm import Session

log = logging.getLogger("darkroom")

#: Set by any stop signal this process received; dag.test starts no task after it.
requested = threading.Event()
_signals: list[int] = []
#: The read end of stops_run's wake-up pipe, while it runs.
_wakeup: int | None = None
#: A Darkroom task body runs in this process (from stop_on_sigterm to task_ended).
_in_task = threading.Event()
#: Seconds between re-raisings of a stop the task body has not ended on.
REDELIVER_S = 1.0


def _drain() -> None:
    """Note the stop signals the wake-up pipe saw. Read here, in the thread that checks:
    a reader thread could still be waiting for the GIL when the check runs."""
    if _wakeup is None:
        return
    while True:
        try:
            data = os.read(_wakeup, 64)
        except BlockingIOError:
            return
        if not data:
            return
        for signum in data:
            if signum in (signal.SIGTERM, signal.SIGINT):
                _signals.append(signum)
                requested.set()


class Stopped(SystemExit):
    """A stop signal ended the task (or the local run): exit status 128 + the signal."""

    def __init__(self, signum: int):
        super().__init__(128 + signum)
        self.signum = signum

    def __str__(self) -> str:
        return f"stopped by {signal.Signals(self.signum).name}"


def _raise_stopped(signum: int, frame) -> None:
    _signals.append(signum)
    requested.set()
    raise Stopped(signum)


_raise_stopped.darkroom = True  # type: ignore[attr-defined]


def _redeliver(signum: int) -> None:
    """Raise the stop in the main thread again, each REDELIVER_S, while the task body runs:
    the first one may have landed in a finalizer, where Python drops it."""
    while _in_task.is_set():
        time.sleep(REDELIVER_S)
        if _in_task.is_set():
            _thread.interrupt_main(signum)  # runs this process's SIGTERM handler, as a signal would


@event.listens_for(Session, "before_commit")
def _refuse_commit(session: Session) -> None:
    """No catalog transaction commits in a task body after a stop: it rolls back instead.
    Other databases' sessions (Airflow's own) are left alone: Airflow records the stop. The
    wake-up pipe is read first: it saw the signal even if no handler of ours ran for it."""
    if not (session.info.get("darkroom_catalog") and _in_task.is_set()):
        return
    _drain()
    if requested.is_set():
        raise Stopped(_signals[-1] if _signals else signal.SIGTERM)


def task_ended() -> None:
    """The task body has returned or raised: stops are no longer raised again in it."""
    _in_task.clear()


def stop_on_sigterm() -> None:
    """SIGTERM raises :class:`Stopped` in this task, after Airflow's own handler. In the
    main thread only (the only one Python delivers signals to)."""
    if threading.current_thread() is not threading.main_thread():
        return
    _in_task.set()
    _drain()
    if requested.is_set():  # the signal came while Airflow was starting this task
        raise Stopped(_signals[-1] if _signals else signal.SIGTERM)
    previous = signal.getsignal(signal.SIGTERM)
    if getattr(previous, "darkroom", False):
        return

    def handler(signum, frame):
        if requested.is_set():  # raised again (_redeliver), or a second signal
            if _in_task.is_set():
                raise Stopped(signum)
            return  # the body has ended: Airflow is recording the stop, let it
        _signals.append(signum)
        requested.set()
        log.warning("%s: stopping this task now; what it finished is kept, a retry resumes it",
                    signal.Signals(signum).name)
        if callable(previous):
            previous(signum, frame)  # Airflow's: the operator's on_kill()
        threading.Thread(target=_redeliver, args=(signum,), daemon=True,
                         name="darkroom-stop").start()
        raise Stopped(signum)

    handler.darkroom = True  # type: ignore[attr-defined]
    signal.signal(signal.SIGTERM, handler)


@contextlib.contextmanager
def stops_run():
    """While ``darkroom run`` runs: SIGTERM and SIGINT raise :class:`Stopped` outside tasks,
    and stop the task they arrive in (:func:`stop_on_sigterm`; Ctrl-C is Python's
    KeyboardInterrupt there). A wake-up pipe sees every signal, whichever handler was
    installed when it came (Airflow installs its own at each task's start and never puts
    back the one before), so that :func:`between_tasks` starts no task after one."""
    global _wakeup
    read_end, write_end = os.pipe()
    os.set_blocking(read_end, False)
    os.set_blocking(write_end, False)
    saved = {s: signal.getsignal(s) for s in (signal.SIGTERM, signal.SIGINT)}
    saved_fd = signal.set_wakeup_fd(write_end, warn_on_full_buffer=False)
    _wakeup = read_end
    for s in saved:
        signal.signal(s, _raise_stopped)
    try:
        yield
    finally:
        for s, handler in saved.items():
            signal.signal(s, handler)
        signal.set_wakeup_fd(saved_fd)
        _wakeup = None
        os.close(write_end)
        os.close(read_end)
        requested.clear()
        _signals.clear()
        _in_task.clear()


@contextlib.contextmanager
def between_tasks():
    """Inside :func:`stops_run`, around dag.test: no task starts once a stop was asked for,
    and the stop of the task that was running ends the run when that task has failed.

    dag.test cannot be stopped and catches whatever a task raises, so its per-task helper
    (``airflow.sdk.definitions.dag._run_task``, Airflow 3.3) is wrapped while it runs."""
    from airflow.sdk.definitions import dag as dag_module  # Airflow: after its environment is set

    run_task = dag_module._run_task

    def stop_check() -> None:
        _drain()
        if requested.is_set():
            raise Stopped(_signals[-1] if _signals else signal.SIGTERM)

    def run_task_unless_stopped(**kwargs):
        stop_check()
        try:
            return run_task(**kwargs)
        finally:
            task_ended()
            for s in (signal.SIGTERM, signal.SIGINT):  # between tasks: stop here
                signal.signal(s, _raise_stopped)
            stop_check()

    dag_module._run_task = run_task_unless_stopped
    try:
        yield
    finally:
        dag_module._run_task = run_task
