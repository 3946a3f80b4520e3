"""`darkroom bench qa`: CPU ms per 1024x1024 image of the default QA checks plus one JPEG
derivative, parallel throughput, and the near-duplicate lookup. A module of its own and
light on purpose: the process pool's workers import it, and must not load torch (the
generate benchmark, in devtools.bench, does)."""

from __future__ import annotations

import platform
import random
import statistics
import time
from datetime import UTC, datetime

import numpy as np
from PIL import Image, ImageDraw

from darkroom import imaging, postprocess, qa
from darkroom.parallel import default_workers, process_map
from darkroom.spec import Channel, QARubric


def _bench_image(seed: int, size: int):
    """A 1024px-class test picture: textured gradient with shapes (what QA sees from a model)."""
    rng = np.random.default_rng(seed)
    x, y = np.meshgrid(np.linspace(0, 1, size), np.linspace(0, 1, size))
    base = np.stack([170 + 60 * x, 110 + 70 * y, 80 + 60 * x * y], axis=-1)
    base += rng.normal(0, 6, (size, size, 3))
    img = Image.fromarray(np.clip(base, 0, 255).astype("uint8"))
    d = ImageDraw.Draw(img)
    for _ in range(6):
        x0, y0 = (int(v) for v in rng.integers(0, size * 3 // 4, 2))
        w, h = (int(v) for v in rng.integers(size // 10, size // 3, 2))
        d.ellipse([x0, y0, x0 + w, y0 + h], fill=tuple(int(c) for c in rng.integers(20, 235, 3)))
    return img


def _qa_one(data: bytes, rubric: dict, channels: dict, size: int) -> tuple[float, float]:
    """CPU seconds of QA (default checks) and of the derivatives, for one encoded original."""
    t0 = time.process_time()
    qa.analyse(data, {k: v for k, v in rubric.items() if k in qa.CHECKS}, width=size, height=size,
               asset_id="bench", seed=0)
    t1 = time.process_time()
    postprocess.render_all(data, channels)
    return t1 - t0, time.process_time() - t1


def bench_qa(*, images: int = 16, size: int = 1024, hashes: int = 100_000,
             workers: int | None = None) -> dict:
    """CPU ms per image of the default QA checks plus one JPEG derivative; parallel throughput
    over the machine's cores; the near-duplicate lookup at ``hashes`` stored hashes."""
    rubric = QARubric().for_asset_type("bench")
    # The example campaign's marketplace cut: a 1000x1000 JPEG from the 1024px original.
    channels = {"jpeg": Channel(width=1000, height=1000, format="jpeg", quality=90)}
    prov = imaging.Provenance(
        imaging.infotext(prompt="bench", negative_prompt="", steps=1, sampler="DDIM", guidance=7.5,
                         seed=0, width=size, height=size, model_hash="0", model="bench"),
        {"asset_id": "bench"})
    originals = [imaging.encode(_bench_image(i, size), "png", prov) for i in range(images)]
    # 1. One core: CPU time per image (after one warm-up, which pays imports and caches).
    _qa_one(originals[0], rubric, channels, size)
    per = [_qa_one(d, rubric, channels, size) for d in originals]
    qa_ms = [a * 1000 for a, _ in per]
    pp_ms = [b * 1000 for _, b in per]
    total = [a + b for a, b in zip(qa_ms, pp_ms, strict=True)]
    # 2. All cores: wall time through the same streaming process map the stages use.
    n_workers = workers or default_workers()
    jobs = ((i, (originals[i % images], rubric, channels, size), {}) for i in range(images * 2))
    started = time.perf_counter()
    for _, res in process_map(_qa_one, jobs, workers=n_workers):
        if isinstance(res, Exception):
            raise res
    wall = time.perf_counter() - started
    # 3. Near-duplicate lookup: multi-index hashing against a brute-force scan.
    rnd = random.Random(0)
    stored = [rnd.getrandbits(64) for _ in range(hashes)]
    t = time.perf_counter()
    index = qa.HashIndex(radius=6)
    index.add_many((str(i), h) for i, h in enumerate(stored))
    for i in range(64):  # and a batch's worth added one by one, as the qa stage does
        index.add(f"new{i}", rnd.getrandbits(64))
    build_s = time.perf_counter() - t
    queries = [stored[rnd.randrange(hashes)] ^ (1 << rnd.randrange(64)) for _ in range(500)]
    queries += [rnd.getrandbits(64) for _ in range(500)]  # mostly no match: the common case
    t = time.perf_counter()
    for q in queries:
        index.nearest(q)
    mih_us = (time.perf_counter() - t) / len(queries) * 1e6
    t = time.perf_counter()
    for q in queries[:50]:
        min((q ^ h).bit_count() for h in stored)
    brute_us = (time.perf_counter() - t) / 50 * 1e6
    return {
        "stage": "qa", "image_size": size, "images": images,
        "checks": sorted(rubric),
        "derivative": "1000x1000 JPEG q90 (decode, sRGB, crop, Lanczos, provenance)",
        "cpu_ms_per_image": {
            "qa_checks_median": round(statistics.median(qa_ms), 1),
            "jpeg_derivative_median": round(statistics.median(pp_ms), 1),
            "total_median": round(statistics.median(total), 1),
            "total_max": round(max(total), 1),
        },
        "parallel": {"workers": n_workers, "images": images * 2, "wall_s": round(wall, 3),
                     "images_per_s": round(images * 2 / wall, 2)},
        "near_duplicate_lookup": {"stored_hashes": hashes, "radius": 6, "build_s": round(build_s, 3),
                                  "multi_index_us_per_query": round(mih_us, 1),
                                  "brute_force_us_per_query": round(brute_us, 1)},
        "machine": platform.machine(), "processor": platform.processor(),
        "at": datetime.now(UTC).isoformat(timespec="seconds"),
    }
