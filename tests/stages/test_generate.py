"""The generate stage as a plain function: what it records about the device it ran on, and
that a retry redraws nothing it already has."""

from __future__ import annotations

import pytest
from darkroom.catalog import runs
from darkroom.config import Settings
from darkroom.stages import generate, plan, validate

from tests.support.campaigns import small_spec, stage_ctx


@pytest.mark.usefixtures("use_tiny_model")
def test_generate_records_its_device_dtype_seconds_and_peak_memory(tmp_path):
    ctx = stage_ctx(small_spec(tmp_path), Settings.from_env(), {"limit": 2})
    ctx.worker = "airflow-worker-gpu"  # what Airflow names the host (the hook passes it)
    validate.run(ctx)
    (batch,) = plan.run(ctx)
    counts = generate.run(ctx, batch)
    assert counts["generated"] == 2
    (use,) = runs.device_use(ctx.catalog, ctx.run_pk)
    assert (use.stage, use.batch, use.worker, use.images) == ("generate", batch, "airflow-worker-gpu", 2)
    assert (use.device, use.dtype) == ("cpu", "float32")  # no GPU here; cuda:0 <name> on one
    assert use.seconds > 0 and use.peak_memory_bytes > 50 * 2**20  # a process holding a model
    # The model version it resolved, with its record for tracking, is on the run.
    run = runs.get(ctx.catalog, ctx.run_pk)
    assert run.model_version and run.summary["model"]["version"] == run.model_version
    # A retry has nothing to draw: it records no device time.
    assert generate.run(ctx, batch) == {"batch": batch, "skipped": 2}
    assert len(runs.device_use(ctx.catalog, ctx.run_pk)) == 1
