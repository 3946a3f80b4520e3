"""Benchmarks: measured here, written to a file, quoted in docs/benchmarks.md."""

from __future__ import annotations

import platform
import time
from datetime import UTC, datetime

from darkroom.config import Settings


def bench_generate(settings: Settings, *, images: int, batch_sizes: list[int], size: int,
                   steps: int, model: str = "tiny") -> dict:
    """images/s of the local backend at each batch size, after one warm-up batch."""
    from darkroom.inference import LocalDiffusersBackend, Request, resolve_model

    ref = resolve_model(model, None, settings)
    backend = LocalDiffusersBackend(ref)
    runs = []
    for bs in batch_sizes:
        reqs = [Request(f"v{i}", "studio photo of a mug", "blurry", i, size, size, steps, 7.5, "ddim")
                for i in range(images)]
        backend.generate(reqs[:bs])  # warm-up: load, allocate
        started = time.perf_counter()
        for i in range(0, images, bs):
            backend.generate(reqs[i : i + bs])
        elapsed = time.perf_counter() - started
        runs.append({"batch_size": bs, "images": images, "seconds": round(elapsed, 3),
                     "images_per_s": round(images / elapsed, 3)})
    return {"stage": "generate", "model": ref.name, "model_version": ref.version,
            "device": backend.device, "dtype": str(backend.dtype), "size": size, "steps": steps,
            "machine": platform.machine(), "processor": platform.processor(),
            "at": datetime.now(UTC).isoformat(timespec="seconds"), "runs": runs}
