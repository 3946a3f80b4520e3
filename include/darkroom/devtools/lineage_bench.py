"""Benchmark of `assets search` on a large synthetic catalog.

    python -m darkroom.devtools.lineage_bench CATALOG_URL [--assets 100000] [--out docs/bench/search.json]

Fills an empty catalog with synthetic rows (campaigns, runs, variants, assets, LoRAs, QA
results, reviews) in bulk, then times each query (median of several runs, after one warm-up):
the full search as the CLI runs it (first 100 records with their lineage) and a COUNT of
all matches, which shows how selective the indexes make each filter.
"""

from __future__ import annotations

import argparse
import json
import platform
import random
import statistics
import time
from datetime import UTC, datetime, timedelta
from pathlib import Path

from sqlalchemy import func, insert, select, text

from darkroom.catalog import Catalog
from darkroom.catalog.lineage import search, search_query
from darkroom.catalog.tables import Asset, AssetLora, Campaign, QAResult, Review, Run, Variant

QUERIES = {
    "lora style_v2 in January": {"lora": "style_v2", "since": "2026-01-01", "until": "2026-01-31"},
    "rejected for blur": {"qa_failed": "blur"},
    "campaign + status": {"campaign": "c03", "status": "published"},
    "product": {"product": "SKU-00042"},
    "model profile + version": {"model_profile": "product_sd", "model_version": "3"},
    "reviewer": {"reviewer": "reviewer7"},
    "template version": {"template_version": "t5"},
}


def fill(catalog: Catalog, n_assets: int, seed: int = 0, chunk: int = 10_000) -> None:
    rnd = random.Random(seed)
    start = datetime(2025, 11, 1, tzinfo=UTC)
    with catalog.session() as s:
        s.execute(insert(Campaign), [{"id": f"c{i:02d}", "spec_hash": "h", "spec_path": f"c{i}.yaml",
                                      "spec_body": {}, "updated_at": start} for i in range(20)])
        s.execute(insert(Run), [{"id": r + 1, "campaign_id": f"c{r % 20:02d}",
                                 "dag_id": f"campaign__c{r % 20:02d}", "run_id": f"run{r}", "spec_hash": "h",
                                 "conf": {}, "state": "published",
                                 "summary": {}, "started_at": start} for r in range(200)])
    statuses = ["published"] * 6 + ["rejected", "qa_failed", "approved", "qa_passed"]
    for lo in range(0, n_assets, chunk):
        variants, assets, loras, qa, reviews = [], [], [], [], []
        for i in range(lo, min(lo + chunk, n_assets)):
            run = rnd.randrange(200)
            created = start + timedelta(minutes=rnd.randrange(60 * 24 * 120))
            status = rnd.choice(statuses)
            vid, aid = f"v{i:09d}", f"a{i:09d}"
            variants.append({"id": vid, "campaign_id": f"c{run % 20:02d}",
                             "product_id": f"SKU-{rnd.randrange(5000):05d}", "asset_type": "hero",
                             "channels": ["web"], "template_version": f"t{rnd.randrange(10)}",
                             "prompt": f"prompt {i}", "negative_prompt": "", "seed": i, "params": {},
                             "created_at": created})
            lora = [{"name": rnd.choice(["style_v1", "style_v2", "grain"]),
                     "version": str(rnd.randrange(1, 4)), "weight": 0.8}] if rnd.random() < 0.5 else []
            assets.append({"id": aid, "variant_id": vid, "version": 1, "run_pk": run + 1, "status": status,
                           "model_name": "product_sd", "model_version": str(rnd.randrange(1, 6)),
                           "loras": lora,
                           "scheduler": "ddim", "steps": 20, "guidance": 7.5, "seed": i, "backend": "local",
                           "timings": {}, "created_at": created, "uri": f"file:///x/{aid}.png"})
            loras += [{"asset_id": aid, **x} for x in lora]
            for check in ("dimensions", "not_blank", "sharpness"):
                passed = not (status == "qa_failed" and (check == "sharpness" or rnd.random() < 0.2))
                qa.append({"asset_id": aid, "check": check, "value": 1.0, "threshold": 1.0, "passed": passed,
                           "detail": "", "at": created})
            if status in ("published", "rejected", "approved"):
                decision = "rejected" if status == "rejected" else "approved"
                reviews.append({"asset_id": aid, "decision": decision,
                                "reviewer": f"reviewer{rnd.randrange(20)}", "note": "", "at": created})
        with catalog.session() as s:
            for model, rows in ((Variant, variants), (Asset, assets), (AssetLora, loras), (QAResult, qa),
                                (Review, reviews)):
                if rows:
                    s.execute(insert(model), rows)
    if catalog.engine.dialect.name == "postgresql":
        with catalog.engine.begin() as conn:
            conn.execute(text("ANALYZE"))


def _median_ms(fn, repeat: int) -> float:
    fn()  # warm-up: plans, caches
    times = []
    for _ in range(repeat):
        t = time.perf_counter()
        fn()
        times.append((time.perf_counter() - t) * 1000)
    return round(statistics.median(times), 2)


def run(url: str, n_assets: int, repeat: int = 5) -> dict:
    catalog = Catalog(url)
    started = time.perf_counter()
    fill(catalog, n_assets)
    fill_s = time.perf_counter() - started
    results = []
    for name, filters in QUERIES.items():
        def count(filters=filters):
            with catalog.session() as s:
                return s.scalar(select(func.count()).select_from(search_query(**filters).subquery()))

        results.append({"query": name, "filters": filters, "matches": count(),
                        "count_ms": _median_ms(count, repeat),
                        "search_first_100_ms": _median_ms(lambda f=filters: search(catalog, limit=100, **f),
                                                          repeat)})
    return {"benchmark": "assets search", "backend": catalog.engine.dialect.name,
            "server_version": ".".join(map(str, catalog.engine.dialect.server_version_info or ())),
            "assets": n_assets, "fill_seconds": round(fill_s, 1), "repeat": repeat,
            "machine": platform.machine(), "at": datetime.now(UTC).isoformat(timespec="seconds"),
            "queries": results}


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("url", help="an empty catalog database (it is migrated, then filled)")
    p.add_argument("--assets", type=int, default=100_000)
    p.add_argument("--out", type=Path, default=Path("docs/bench/search.json"))
    args = p.parse_args()
    result = run(args.url, args.assets)
    args.out.parent.mkdir(parents=True, exist_ok=True)
    args.out.write_text(json.dumps(result, indent=2) + "\n")
    for q in result["queries"]:
        print(f"{q['query']:<28} {q['matches']:>7} matches  count {q['count_ms']:>8} ms  "
              f"first 100 {q['search_first_100_ms']:>8} ms")


if __name__ == "__main__":
    main()
