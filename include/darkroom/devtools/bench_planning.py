"""Planning benchmark: validate + expand (render, policy, catalog insert, batching) for a
synthetic campaign of N variants, on the catalog URL given (SQLite or PostgreSQL).

``darkroom bench plan --variants 10000`` writes the figures; docs/benchmarks.md quotes them.
"""

from __future__ import annotations

import os
import platform
import resource
import tempfile
import time
from datetime import UTC, datetime
from pathlib import Path

import pandas as pd
import yaml

from darkroom import prompts
from darkroom.catalog import runs
from darkroom.config import PROJECT_ROOT, Settings
from darkroom.products import frame_to_rows, load_products_frame
from darkroom.stages import plan, validate
from darkroom.stages.context import RunContext

CATEGORIES = ["drinkware", "tableware", "serveware", "decor"]


def _campaign(workdir: Path, variants: int) -> Path:
    """Products x 1 asset type x 2 seeds = ``variants`` (rounded up to even)."""
    products = -(-variants // 2)
    pd.DataFrame({
        "sku": [f"BEN-{i:06d}" for i in range(products)],
        "name": [f"product {i}" for i in range(products)],
        "category": [CATEGORIES[i % 4] for i in range(products)],
        "colour": [["sand", "moss green", "chalk white"][i % 3] for i in range(products)],
        "material": ["stoneware"] * products,
        "price_eur": [10 + i % 90 for i in range(products)],
    }).to_csv(workdir / "products.csv", index=False)
    spec = yaml.safe_load((PROJECT_ROOT / "include/campaigns/spring_tiles.yaml").read_text())
    spec["id"] = "bench_planning"
    spec["products"] = {
        "source": "products.csv", "id_column": "sku",
        "required_columns": ["sku", "name", "category", "colour", "material"],
        "expectations": [
            {"type": "expect_column_values_to_be_in_set",
             "kwargs": {"column": "category", "value_set": CATEGORIES}},
            {"type": "expect_column_values_to_be_between",
             "kwargs": {"column": "price_eur", "min_value": 1, "max_value": 500}},
        ],
    }
    spec["brand"]["restricted_terms_file"] = str(PROJECT_ROOT / "include/brand/restricted_terms.txt")
    spec["generation"]["seeds_per_variant"] = 2
    path = workdir / "bench_planning.yaml"
    path.write_text(yaml.safe_dump(spec, sort_keys=False))
    return path


def _peak_rss_mb() -> float:
    return round(resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024, 1)  # KiB on Linux


def bench_plan(*, variants: int, catalog_url: str | None = None, label: str | None = None) -> dict:
    """Seconds for validate_inputs and expand_prompts (first plan, then a re-plan that finds
    every variant already in the catalog), variants/s, mapped task count, peak memory."""
    started = time.perf_counter()
    import great_expectations  # noqa: F401  (its import is a one-off per worker, timed apart)

    gx_import_s = time.perf_counter() - started
    with tempfile.TemporaryDirectory(prefix="darkroom-bench-") as tmp:
        workdir = Path(tmp)
        spec = _campaign(workdir, variants)
        settings = Settings.from_env(catalog_url=catalog_url or f"sqlite:///{workdir / 'catalog.db'}",
                                     storage_url=(workdir / "assets").as_uri())
        ctx = RunContext.open(spec, "campaign__bench_planning", "bench__1", settings=settings)
        ctx.run_pk  # noqa: B018  (migrations and run row outside the timings)
        c0, t0 = time.process_time(), time.perf_counter()
        validate.run(ctx)
        t1 = time.perf_counter()
        batches = plan.run(ctx)
        c2, t2 = time.process_time(), time.perf_counter()
        load = os.getloadavg()[0]

        rows = frame_to_rows(load_products_frame(ctx.loaded))
        t3 = time.perf_counter()
        rendered = prompts.render_variants(ctx.loaded, rows)
        render_s = time.perf_counter() - t3
        again = RunContext.open(spec, "campaign__bench_planning", "bench__2", settings=settings)
        again.run_pk  # noqa: B018
        t4 = time.perf_counter()
        validate.run(again)
        plan.run(again)
        replan_s = time.perf_counter() - t4
        summary = runs.get(ctx.catalog, ctx.run_pk).summary
        ctx.catalog.engine.dispose()
    total = t2 - t0
    return {
        "catalog": label or (catalog_url or "sqlite").split(":", 1)[0].split("+")[0],
        "variants": len(rendered), "products": len(rows),
        "validate_s": round(t1 - t0, 3), "expand_s": round(t2 - t1, 3),
        "render_only_s": round(render_s, 3), "total_s": round(total, 3),
        # This process's CPU seconds: the figure to compare when the machine is shared.
        "total_cpu_s": round(c2 - c0, 3), "load_average_1m": round(load, 2),
        "variants_per_s": round(len(rendered) / total, 1),
        "replan_s": round(replan_s, 3),
        "mapped_tasks": len(batches), "batch_size": -(-len(rendered) // len(batches)) if batches else 0,
        "planned": summary.get("planned"),
        "gx_import_s": round(gx_import_s, 3), "peak_rss_mb": _peak_rss_mb(),
    }


def bench_planning(*, variants: int, catalog_urls: dict[str, str | None]) -> dict:
    runs = [bench_plan(variants=variants, catalog_url=url, label=label)
            for label, url in catalog_urls.items()]
    return {"stage": "planning", "variants": variants, "machine": platform.machine(),
            "processor": platform.processor(), "python": platform.python_version(),
            "at": datetime.now(UTC).isoformat(timespec="seconds"), "runs": runs}
