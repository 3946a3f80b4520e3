"""Review under load (issue 16, item 5): one run with many assets in a PostgreSQL catalog,
``airflow api-server`` serving the review plugin on loopback, and reviewers deciding
through the REST API at once.

Used by ``tests/plugins/test_review_load.py`` (small, in ``make test``) and by the
benchmark ``make bench-review`` (``python -m tests.plugins.review_load``, 10,000 assets,
figures to docs/bench/review_load.json). Both are bounded: a fixed number of assets and
requests, and a deadline on the reviewers.

The run's rows are written straight into the catalog (its own tables, through its own
session): what is measured is the gallery and the decision API, not the generation of
10,000 images. Every asset has its own small JPEG, so thumbnails are real work.
"""

from __future__ import annotations

import argparse
import concurrent.futures
import io
import json
import os
import platform
import random
import statistics
import tempfile
import threading
import time
import urllib.error
import urllib.request
from collections import Counter
from dataclasses import dataclass, field
from datetime import UTC, datetime, timedelta
from pathlib import Path
from urllib.parse import quote

CAMPAIGN = "review_load"
DAG_ID = f"campaign__{CAMPAIGN}"
RUN_ID = "manual__2026-12-02T08:00:00+00:00"
CHECKS = ("sharpness", "not_blank", "dimensions")


def seed_run(catalog_url: str, files: Path, assets: int) -> list[str]:
    """One run of ``assets`` QA-passed assets waiting for people, each with its own 256 px
    JPEG under ``files`` and three passed QA checks. Returns the asset ids, oldest first."""
    from darkroom.catalog import Catalog
    from darkroom.catalog.tables import Asset, AssetStatus, Campaign, QAResult, Run, Variant
    from PIL import Image
    from sqlalchemy import insert

    files.mkdir(parents=True, exist_ok=True)
    catalog = Catalog(catalog_url)
    start = datetime(2026, 12, 2, 8, tzinfo=UTC)
    ids = [f"a{i:05d}" for i in range(assets)]
    with catalog.session() as s:
        s.add(Campaign(id=CAMPAIGN, spec_hash="load", spec_path="load.yaml", spec_body={}))
        run = Run(campaign_id=CAMPAIGN, dag_id=DAG_ID, run_id=RUN_ID, spec_hash="load", conf={},
                  summary={})
        s.add(run)
        s.flush()
        run_pk = run.id
    # In batches of 1,000 rows: one INSERT ... VALUES per batch and table.
    for lo in range(0, assets, 1000):
        batch = list(enumerate(ids[lo:lo + 1000], start=lo))
        variants, rows, qa = [], [], []
        for i, asset_id in batch:
            path = files / f"{asset_id}.jpg"
            buf = io.BytesIO()
            Image.new("RGB", (256, 256), ((i * 37) % 256, (i * 91) % 256, (i * 13) % 256)).save(
                buf, format="JPEG", quality=85)
            path.write_bytes(buf.getvalue())
            variants.append(dict(id=f"v{i:05d}", campaign_id=CAMPAIGN, product_id=f"P{i:05d}",
                                 asset_type="lifestyle", channels=["web"], template_version="t1",
                                 prompt=f"product {i} on a sandstone table", negative_prompt="",
                                 seed=i, params={}))
            rows.append(dict(id=asset_id, variant_id=f"v{i:05d}", run_pk=run_pk,
                             status=AssetStatus.qa_passed, uri=path.as_uri(), width=256, height=256,
                             format="JPEG", bytes=len(buf.getvalue()), model_name="tiny",
                             model_version="1", scheduler="ddim", steps=2, guidance=5.0, seed=i,
                             backend="local", loras=[], timings={},
                             created_at=start + timedelta(milliseconds=i)))
            qa += [dict(asset_id=asset_id, check=c, value=50.0, threshold=20.0, passed=True,
                        status="pass", detail="") for c in CHECKS]
        with catalog.session() as s:
            s.execute(insert(Variant), variants)
            s.execute(insert(Asset), rows)
            s.execute(insert(QAResult), qa)
    return ids


# --------------------------------------------------------------------------- HTTP


def _opener():
    return urllib.request.build_opener(urllib.request.ProxyHandler({}))


def timed_get(url: str, token: str) -> tuple[int, float, int]:
    """(status, seconds to the last byte, body bytes) of one GET."""
    req = urllib.request.Request(url, headers={"Authorization": f"Bearer {token}"})
    started = time.perf_counter()
    try:
        with _opener().open(req, timeout=300) as resp:
            body = resp.read()
            code = resp.status
    except urllib.error.HTTPError as exc:
        body, code = exc.read(), exc.code
    return code, time.perf_counter() - started, len(body)


def gallery_url(base: str) -> str:
    return f"{base}/darkroom/review/{quote(DAG_ID)}/{quote(RUN_ID, safe='')}"


def thumbnail_url(base: str, asset_id: str) -> str:
    """The gallery's own thumbnails: made once (here, on the first request: the seeded run has
    none from postprocess) and stored; served from storage with ETag after that."""
    return f"{base}/darkroom/files/thumbnail/{asset_id}"


def decide_url(base: str, asset_id: str, decision: str) -> str:
    return f"{base}/darkroom/api/assets/{asset_id}/{decision}"


# --------------------------------------------------------------------------- reviewers


@dataclass
class Sent:
    """One decision a reviewer sent, and what the API answered."""

    asset_id: str
    decision: str
    reviewer: str
    status: int = 0
    review_id: int | None = None
    seconds: float = 0.0
    error: str = ""


@dataclass
class ReviewersResult:
    sent: list[Sent] = field(default_factory=list)
    wall_s: float = 0.0

    def latencies(self) -> list[float]:
        return sorted(s.seconds for s in self.sent if s.status == 200)


def plan_decisions(asset_ids: list[str], reviewers: int, contested: float,
                   seed: int = 16) -> list[list[tuple[str, str]]]:
    """Each asset to one reviewer (round robin), with a random decision; a ``contested``
    share of the assets is also decided, the other way, by a second reviewer at the same
    time: the newest of the two decisions must win, and both must be kept."""
    rng = random.Random(seed)
    queues: list[list[tuple[str, str]]] = [[] for _ in range(reviewers)]
    for i, asset_id in enumerate(asset_ids):
        decision = rng.choice(("approve", "reject"))
        queues[i % reviewers].append((asset_id, decision))
        if rng.random() < contested:
            other = "reject" if decision == "approve" else "approve"
            queues[(i + 1) % reviewers].append((asset_id, other))
    for q in queues:
        rng.shuffle(q)
    return queues


def run_reviewers(base: str, tokens: dict[str, str], queues: list[list[tuple[str, str]]], *,
                  deadline_s: float) -> ReviewersResult:
    """One thread per reviewer, all started together, each sending its queue one decision
    after another (as a person in the gallery does), until the queue or ``deadline_s`` ends."""
    names = sorted(tokens)
    result = ReviewersResult()
    lock = threading.Lock()
    go = threading.Barrier(len(queues))
    stop_at = time.monotonic() + deadline_s

    def reviewer(index: int) -> None:
        name = names[index]
        opener = _opener()
        go.wait()
        for asset_id, decision in queues[index]:
            if time.monotonic() > stop_at:
                return
            sent = Sent(asset_id, decision, name)
            req = urllib.request.Request(
                decide_url(base, asset_id, decision), method="POST",
                data=json.dumps({"note": f"{name} load test"}).encode(),
                headers={"Authorization": f"Bearer {tokens[name]}", "Content-Type": "application/json",
                         "X-Darkroom-CSRF": "1"})
            started = time.perf_counter()
            try:
                with opener.open(req, timeout=120) as resp:
                    sent.status = resp.status
                    sent.review_id = json.loads(resp.read())["review_id"]
            except urllib.error.HTTPError as exc:
                sent.status, sent.error = exc.code, exc.read().decode(errors="replace")[:300]
            except OSError as exc:
                sent.error = f"{type(exc).__name__}: {exc}"
            sent.seconds = time.perf_counter() - started
            with lock:
                result.sent.append(sent)

    started = time.perf_counter()
    with concurrent.futures.ThreadPoolExecutor(len(queues)) as pool:
        for f in [pool.submit(reviewer, i) for i in range(len(queues))]:
            f.result()
    result.wall_s = time.perf_counter() - started
    return result


def check_final_state(catalog_url: str, result: ReviewersResult) -> dict:
    """What the catalog holds after the reviewers, against what they were told: every
    answered decision is one review row (none lost, none twice, none invented), and each
    asset's status is its newest row's decision. Returns the counts; the lists name problems."""
    from darkroom.catalog import Catalog
    from darkroom.catalog.tables import Asset, Review
    from sqlalchemy import select

    sent = {(s.asset_id, s.reviewer): s for s in result.sent}
    with Catalog(catalog_url).session() as s:
        rows = s.execute(select(Review.id, Review.asset_id, Review.reviewer, Review.decision)).all()
        status = dict(s.execute(select(Asset.id, Asset.status)).all())
    by_id = {r.id: r for r in rows}
    lost = [s.asset_id for s in result.sent if s.status == 200 and s.review_id not in by_id]
    duplicated = sorted(k for k, n in Counter((r.asset_id, r.reviewer) for r in rows).items() if n > 1)
    invented = [r.id for r in rows if (r.asset_id, r.reviewer) not in sent
                or sent[(r.asset_id, r.reviewer)].review_id != r.id]
    newest: dict[str, tuple[int, str]] = {}
    for r in rows:
        if r.asset_id not in newest or r.id > newest[r.asset_id][0]:
            newest[r.asset_id] = (r.id, r.decision)
    wrong = [a for a, (_id, decision) in newest.items() if str(status[a]) != decision]
    decided = {s.asset_id for s in result.sent if s.status == 200}
    return {"answered": sum(s.status == 200 for s in result.sent),
            "refused": [(s.asset_id, s.status, s.error) for s in result.sent if s.status != 200],
            "review_rows": len(rows), "assets_decided": len(decided),
            "lost": lost, "duplicated": duplicated, "invented": invented, "wrong_status": wrong}


# --------------------------------------------------------------------------- benchmark


def _summary(values: list[float]) -> dict:
    values = sorted(values)
    return {"n": len(values), "median_s": round(statistics.median(values), 4),
            "p95_s": round(values[min(len(values) - 1, int(0.95 * len(values)))], 4),
            "max_s": round(values[-1], 4)}


def bench(assets: int, reviewers: int, decisions: int, out: Path, deadline_s: float) -> dict:
    from tests.plugins.conftest import api_server
    from tests.support.servers import create_database, postgres_server

    with tempfile.TemporaryDirectory(prefix="darkroom-review-load-") as tmp, \
            postgres_server() as server_url:
        work = Path(tmp)
        url = create_database(server_url, "review_load")
        t0 = time.perf_counter()
        ids = seed_run(url, work / "files", assets)
        seed_s = time.perf_counter() - t0
        users = tuple(f"reviewer{i:02d}" for i in range(reviewers))
        env = {"DARKROOM_HOME": str(work / "home"), "DARKROOM_CATALOG_URL": url}
        with api_server(work / "airflow", env, reviewers=users) as srv:
            token = srv.tokens["admin"]
            gallery = [timed_get(gallery_url(srv.url), token) for _ in range(3)]
            assert all(code == 200 for code, _s, _n in gallery), gallery
            thumbs = [timed_get(thumbnail_url(srv.url, a), token) for a in ids[:100]]
            assert all(code == 200 for code, _s, _n in thumbs), thumbs[:3]
            stored = [timed_get(thumbnail_url(srv.url, a), token) for a in ids[:100]]  # made already
            assert all(code == 200 for code, _s, _n in stored), stored[:3]
            # A browser fetches a page's images 6 at a time.
            t0 = time.perf_counter()
            with concurrent.futures.ThreadPoolExecutor(6) as pool:
                parallel = list(pool.map(lambda a: timed_get(thumbnail_url(srv.url, a), token), ids[100:200]))
            thumbs6_s = time.perf_counter() - t0
            assert all(code == 200 for code, _s, _n in parallel)
            queues = plan_decisions(ids[:decisions], reviewers, contested=0.1)
            result = run_reviewers(srv.url, {u: srv.tokens[u] for u in users}, queues,
                                   deadline_s=deadline_s)
        state = check_final_state(url, result)
    sent = sum(len(q) for q in queues)
    figures = {
        "what": "review gallery and decision API under load: one run on PostgreSQL, airflow "
                "api-server (1 worker) with the review plugin, on loopback",
        "machine": {"cpus": os.cpu_count(), "python": platform.python_version()},
        "when": datetime.now(UTC).isoformat(timespec="seconds"),
        "assets": assets, "seed_s": round(seed_s, 1),
        "gallery_first_page": {**_summary([s for _c, s, _n in gallery]),
                               "bytes": gallery[0][2],
                               "note": "the run's first page of 100 assets, with its per-status counts"},
        "thumbnails_100_made_on_first_request": {**_summary([s for _c, s, _n in thumbs]),
                                                 "total_s": round(sum(s for _c, s, _n in thumbs), 3)},
        "thumbnails_100_stored": {**_summary([s for _c, s, _n in stored]),
                                  "total_s": round(sum(s for _c, s, _n in stored), 3)},
        "thumbnails_100_six_at_a_time": {"total_s": round(thumbs6_s, 3)},
        "reviewers": {"reviewers": reviewers, "assets": decisions, "decisions_sent": sent,
                      "contested_assets": sent - decisions, "wall_s": round(result.wall_s, 2),
                      "decisions_per_s": round(len(result.sent) / result.wall_s, 1),
                      "latency": _summary(result.latencies()),
                      "answered": state["answered"], "refused": len(state["refused"]),
                      "review_rows": state["review_rows"], "lost": len(state["lost"]),
                      "duplicated": len(state["duplicated"]), "invented": len(state["invented"]),
                      "wrong_final_status": len(state["wrong_status"])},
    }
    out.parent.mkdir(parents=True, exist_ok=True)
    out.write_text(json.dumps(figures, indent=2) + "\n")
    return figures


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    p.add_argument("--assets", type=int, default=10_000)
    p.add_argument("--reviewers", type=int, default=20)
    p.add_argument("--decisions", type=int, default=2_000, help="assets the reviewers decide")
    p.add_argument("--deadline", type=float, default=900, help="seconds the reviewers get, at most")
    p.add_argument("--out", type=Path, default=Path("docs/bench/review_load.json"))
    a = p.parse_args()
    if not (0 < a.decisions <= a.assets <= 20_000 and 0 < a.reviewers <= 50):
        p.error("bounded: 0 < decisions <= assets <= 20000, 0 < reviewers <= 50")
    print(json.dumps(bench(a.assets, a.reviewers, a.decisions, a.out, a.deadline), indent=2))


if __name__ == "__main__":
    main()
