"""A process pool for per-image work (QA checks, derivatives): streaming, order-keeping, and
safe inside an Airflow task process."""

from __future__ import annotations

import contextlib
import multiprocessing
import os
import sys
from collections import deque
from concurrent.futures import ProcessPoolExecutor


def default_workers() -> int:
    """CPU cores this process may use (cgroup/affinity aware where the OS says)."""
    try:
        return max(1, len(os.sched_getaffinity(0)))
    except AttributeError:  # pragma: no cover - macOS
        return max(1, os.cpu_count() or 1)


def pool_size(items: int, pixels_per_item: int, workers: int) -> int:
    """Workers worth starting: spawning a pool costs ~1 s of imports per process, so small
    work (the tiny model's 64px images, short batches) runs in this process."""
    if items < 2 * workers or items * pixels_per_item < 64 * 512 * 512:  # ~1-2 s of work
        return 1
    return workers


@contextlib.contextmanager
def _main_not_rerun():
    """Spawned children re-run the parent's ``__main__`` before working. In an Airflow worker
    that is the ``airflow`` CLI, which cannot start inside a task process (its database is
    blocked there): the children die. Our jobs are importable functions, so the children need
    no ``__main__``: hide it from multiprocessing while the pool starts its workers."""
    main = sys.modules.get("__main__")
    saved = {k: main.__dict__.pop(k) for k in ("__file__",) if main is not None and k in main.__dict__}
    spec = getattr(main, "__spec__", None)
    if main is not None:
        main.__spec__ = None
    try:
        yield
    finally:
        if main is not None:
            main.__dict__.update(saved)
            main.__spec__ = spec


def process_map(fn, jobs, *, workers: int, inflight: int | None = None):
    """Run ``fn(*args, **kwargs)`` for each ``(tag, args, kwargs)`` of ``jobs`` over
    ``workers`` processes; yield ``(tag, result_or_exception)`` in the order of ``jobs``.

    Streaming: ``jobs`` is consumed lazily and at most ``inflight`` (default 2 x workers)
    jobs are submitted or waiting to be yielded, so memory stays flat however long the batch.
    An exception in one job is yielded as its result, never raised: one bad image must not
    stop the batch. ``workers <= 1`` runs in this process (no start-up cost for small work).
    Worker processes are spawned, not forked: a forked copy of an Airflow task process (with
    its threads and open connections) is not safe.
    """
    # A daemonic process (a Celery prefork child) may not have children: work serially there.
    if workers <= 1 or multiprocessing.current_process().daemon:
        for tag, args, kwargs in jobs:
            try:
                yield tag, fn(*args, **kwargs)
            except Exception as exc:
                yield tag, exc
        return
    inflight = inflight or 2 * workers
    pending: deque = deque()
    it = iter(jobs)
    with _main_not_rerun(), ProcessPoolExecutor(
            workers, mp_context=multiprocessing.get_context("spawn")) as pool:
        while True:
            while len(pending) < inflight:
                job = next(it, None)
                if job is None:
                    break
                tag, args, kwargs = job
                try:
                    pending.append((tag, pool.submit(fn, *args, **kwargs)))
                except Exception as exc:  # the pool broke (a worker died): this job's result
                    pending.append((tag, exc))
            if not pending:
                return
            tag, fut = pending.popleft()
            if isinstance(fut, BaseException):
                yield tag, fut
                continue
            try:
                yield tag, fut.result()
            except Exception as exc:  # includes a worker killed by the OS (BrokenProcessPool)
                yield tag, exc
