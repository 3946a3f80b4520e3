"""The track stage: the MLflow run is made from what the catalog holds, the device and GPU
seconds the generate tasks recorded included, and track itself never loads torch to probe
the worker it happens to run on."""

from __future__ import annotations

import json
import subprocess
import sys

import pytest
from darkroom.catalog import runs
from darkroom.config import Settings
from darkroom.generation.types import DeviceUse
from darkroom.stages import generate, plan, qa, validate
from mlflow import MlflowClient

from tests.support.campaigns import ROOT, small_spec, stage_ctx

TRACK_ALONE = """
import json, sys
from darkroom.stages import track
from darkroom.stages.context import RunContext
ctx = RunContext.open(sys.argv[1], "campaign__spring_tiles", "manual__1", {"limit": 2})
out = track.run(ctx)
print(json.dumps({"out": out, "torch": "torch" in sys.modules,
                  "local": "darkroom.generation.local" in sys.modules}))
"""


@pytest.mark.usefixtures("use_tiny_model")
def test_track_logs_what_the_gpu_stages_recorded_and_probes_nothing(tmp_path):
    spec = small_spec(tmp_path)
    ctx = stage_ctx(spec, Settings.from_env(), {"limit": 2})
    ctx.worker = "gpu-host-7"
    validate.run(ctx)
    (batch,) = plan.run(ctx)
    generate.run(ctx, batch)
    qa.run(ctx, batch)
    # An upscale task on another GPU host, as the catalog would hold it.
    runs.record_device_use(ctx.catalog, ctx.run_pk, batch=batch, stage="upscale", worker="gpu-host-8",
                           use=DeviceUse("cuda:0 NVIDIA H200", "float16", 3 * 2**30), images=2,
                           seconds=1.5)
    used = runs.device_use(ctx.catalog, ctx.run_pk)
    generate_seconds = next(u.seconds for u in used if u.stage == "generate")
    # track in a process of its own, as on a CPU worker: it must not need torch.
    proc = subprocess.run([sys.executable, "-c", TRACK_ALONE, str(spec)], capture_output=True, text=True,
                          timeout=600, cwd=ROOT)
    assert proc.returncode == 0, proc.stderr[-3000:]
    result = json.loads(proc.stdout.strip().splitlines()[-1])
    assert result["torch"] is False and result["local"] is False
    client = MlflowClient(tracking_uri=Settings.from_env().mlflow_tracking_uri)
    run = client.get_run(result["out"]["mlflow_run_id"])
    metrics, tags = run.data.metrics, run.data.tags
    assert metrics["gpu_seconds"] == pytest.approx(generate_seconds + 1.5)
    assert metrics["upscale_gpu_seconds"] == pytest.approx(1.5)
    price = Settings.from_env().gpu_hourly_cost
    assert metrics["estimated_cost"] == pytest.approx((generate_seconds + 1.5) / 3600 * price)
    # The largest peak recorded: the upscale host's 3 GiB, unless this process's own peak RSS
    # (what generate on a CPU records) is larger already, as after the in-process model tests.
    peaks = [u.peak_memory_bytes for u in used if u.peak_memory_bytes]
    assert metrics["peak_memory_mb"] == round(max(peaks) / 2**20, 1) >= 3072.0
    assert tags["device"] == "cpu, cuda:0 NVIDIA H200" and tags["dtype"] == "float16, float32"
    assert tags["gpu_workers"] == "gpu-host-7, gpu-host-8"
    assert runs.get(ctx.catalog, ctx.run_pk).mlflow_run_id == run.info.run_id
