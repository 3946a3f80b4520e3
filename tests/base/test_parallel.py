"""process_map: order, bounded read-ahead, errors as results; and its spawned workers inside
a host program such as an Airflow worker."""

from __future__ import annotations

import subprocess
import sys
import textwrap

import pytest
from darkroom import parallel

ENTRY = '''
import sys
if __name__ != "__main__":
    # What the `airflow` CLI does, in effect, when a task's child re-runs it: it cannot start.
    raise SystemExit("re-ran the parent's __main__")
import contextlib
from darkroom import parallel
if "--unprotected" in sys.argv:
    parallel._main_not_rerun = contextlib.nullcontext
out = list(parallel.process_map(abs, ((i, (-i,), {}) for i in range(6)), workers=2))
bad = [r for _, r in out if isinstance(r, BaseException)]
print("results", [r for _, r in out if not isinstance(r, BaseException)], "errors", len(bad))
sys.exit(1 if bad else 0)
'''


@pytest.mark.parametrize("flag,ok", [("", True), ("--unprotected", False)], ids=["protected", "unprotected"])
def test_workers_do_not_rerun_the_parents_main(tmp_path, flag, ok):
    script = tmp_path / "entry.py"
    script.write_text(textwrap.dedent(ENTRY))
    proc = subprocess.run([sys.executable, str(script), *filter(None, [flag])],
                          capture_output=True, text=True, timeout=180)
    if ok:
        assert proc.returncode == 0, proc.stdout + proc.stderr
        assert "results [0, 1, 2, 3, 4, 5] errors 0" in proc.stdout
    else:  # the failure this guards against, reproduced without the guard: every job fails,
        # as errors (the batch goes on), never as a crash of the task process
        assert proc.returncode == 1 and "errors 6" in proc.stdout, proc.stdout + proc.stderr
        assert "re-ran the parent's __main__" in proc.stderr


def _square(x: int) -> int:
    if x == 3:
        raise ValueError("three is bad")
    return x * x



@pytest.mark.parametrize("workers", [1, 2])
def test_process_map_keeps_order_bounds_memory_and_yields_errors(workers):
    consumed = []

    def jobs():
        for i in range(8):
            consumed.append(i)
            yield i, (i,), {}

    out = []
    for tag, res in parallel.process_map(_square, jobs(), workers=workers, inflight=3):
        out.append((tag, res))
        assert len(consumed) - len(out) <= 3  # never more than `inflight` jobs read ahead
    assert [t for t, _ in out] == list(range(8))
    assert [r for t, r in out if t != 3] == [i * i for i in range(8) if i != 3]
    assert isinstance(out[3][1], ValueError)
