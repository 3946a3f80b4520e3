"""`darkroom bench generate`: measured here, written to a file, quoted in docs/benchmarks.md
(the QA benchmark is devtools.bench_qa, the planning one devtools.bench_planning)."""

from __future__ import annotations

import platform
import tempfile
import time
from dataclasses import replace
from datetime import UTC, datetime
from pathlib import Path

import yaml

from darkroom.config import PROJECT_ROOT, Settings
from darkroom.generation.local import LocalDiffusersBackend
from darkroom.generation.resolve import resolve_model
from darkroom.generation.types import Request
from darkroom.stages import generate, plan
from darkroom.stages.context import RunContext


def bench_generate(settings: Settings, *, images: int, batch_sizes: list[int], size: int,
                   steps: int, model: str = "tiny") -> dict:
    """images/s at each batch size, two ways, after a warm-up:

    - ``bare``: the backend's forward passes alone (what a hand-written diffusers loop does);
    - ``operator``: ``stages.generate.run`` as the Airflow task runs it (plan lookup, per-variant
      latents, PNG encoding with provenance, storage writes, one catalog commit per image).

    Their ratio is the cost of traceability. Both use one warm pipeline.
    """
    ref = resolve_model(model, None, settings)
    backend = LocalDiffusersBackend(ref)
    runs = []
    for bs in batch_sizes:
        reqs = [Request(f"v{i}", f"studio photo of product {i}", "blurry", i, size, size, steps, 7.5,
                        "ddim") for i in range(images)]
        backend.generate(reqs[:bs])  # warm-up: load, allocate
        started = time.perf_counter()
        for i in range(0, images, bs):
            backend.generate(reqs[i : i + bs])
        bare = time.perf_counter() - started
        with tempfile.TemporaryDirectory() as tmp:
            operator = _time_operator_path(replace(settings, home=Path(tmp),
                                                   catalog_url=f"sqlite:///{tmp}/catalog.db",
                                                   storage_url=Path(tmp, "assets").as_uri()),
                                           model, images, bs, size, steps, backend)
        runs.append({"batch_size": bs, "images": images,
                     "bare_seconds": round(bare, 3), "bare_images_per_s": round(images / bare, 3),
                     "operator_seconds": round(operator, 3),
                     "operator_images_per_s": round(images / operator, 3),
                     "operator_vs_bare": round(bare / operator, 3)})
    return {"stage": "generate", "model": ref.name, "model_version": ref.version,
            "device": backend.device, "dtype": str(backend.dtype), "size": size, "steps": steps,
            "machine": platform.machine(), "processor": platform.processor(),
            "at": datetime.now(UTC).isoformat(timespec="seconds"), "runs": runs}


def _time_operator_path(settings: Settings, model: str, images: int, batch_size: int, size: int,
                        steps: int, backend) -> float:
    """Seconds of ``stages.generate.run`` for ``images`` planned variants of a synthetic campaign."""
    home = settings.home
    (home / "products.csv").write_text(
        "sku,name\n" + "".join(f"P{i:05d},product {i}\n" for i in range(images)))
    spec = yaml.safe_load((PROJECT_ROOT / "include" / "campaigns" / "spring_tiles.yaml").read_text())
    spec.update(id="bench_generate", publish=[], brand={},
                prompts={"positive": "studio photo of {{ product.name }}", "negative": "blurry"},
                products={"source": str(home / "products.csv"), "id_column": "sku"})
    spec["generation"].update(model=model, width=size, height=size, steps=steps, seeds_per_variant=1,
                              batch_size=batch_size, variants_per_task=images)
    (home / "spec.yaml").write_text(yaml.safe_dump(spec))
    ctx = RunContext.open(home / "spec.yaml", "campaign__bench_generate", "bench", {},
                                 settings=settings)
    (batch,) = plan.run(ctx)
    started = time.perf_counter()
    generate.run(ctx, batch, backend=backend)
    return time.perf_counter() - started
