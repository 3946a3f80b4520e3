"""The QA benchmark measures what the qa and postprocess stages' worker processes do, so its
module must be as light as they are: the pool's workers import it to run each job."""

from __future__ import annotations

import subprocess
import sys

MODEL_LIBRARIES = ("torch", "diffusers", "transformers", "mlflow", "sqlalchemy")


def test_the_qa_benchmark_module_loads_no_model_library():
    code = ("import sys, darkroom.devtools.bench_qa; "
            f"print(','.join(m for m in {MODEL_LIBRARIES!r} if m in sys.modules))")
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, timeout=120,
                         check=True)
    assert out.stdout.strip() == "", f"importing devtools.bench_qa loaded {out.stdout.strip()}"


def test_the_qa_benchmark_runs_small():
    from darkroom.devtools.bench_qa import bench_qa

    result = bench_qa(images=2, size=128, hashes=1_000, workers=1)
    assert result["stage"] == "qa" and result["images"] == 2
    assert result["cpu_ms_per_image"]["total_median"] > 0
    assert result["parallel"]["images"] == 4 and result["parallel"]["images_per_s"] > 0
    assert result["near_duplicate_lookup"]["stored_hashes"] == 1_000
