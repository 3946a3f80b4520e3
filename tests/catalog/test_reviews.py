"""Review decisions: the audit log, the current-state rule, refusals, and concurrency.

Catalog rows are made directly (a run, a variant, assets) so these tests need no model;
the concurrent test runs real threads against SQLite and PostgreSQL.
"""

from __future__ import annotations

import threading

import pytest
from darkroom.catalog import Catalog, reviews, runs
from darkroom.catalog.tables import Asset, AssetStatus, Campaign, QAResult, Review, Run, Variant
from sqlalchemy import select


def _seed(catalog: Catalog, n: int = 3, status: str = AssetStatus.qa_passed) -> list[str]:
    with catalog.session() as s:
        s.add(Campaign(id="c", spec_hash="h", spec_path="/x.yaml", spec_body={}))
        run = Run(campaign_id="c", dag_id="campaign__c", run_id="r1", spec_hash="h")
        s.add(run)
        s.flush()
        ids = []
        for i in range(n):
            s.add(Variant(id=f"v{i}", campaign_id="c", product_id=f"P{i}", asset_type="tile",
                          channels=["web"], template_version="t", prompt="p", seed=i, params={}))
            s.add(Asset(id=f"a{i}", variant_id=f"v{i}", run_pk=run.id, status=status, uri=f"file:///a{i}.png",
                        model_name="m", model_version="1", scheduler="ddim", steps=2, guidance=7.5,
                        seed=i, backend="test"))
            ids.append(f"a{i}")
    return ids


def test_each_decision_is_a_row_and_the_newest_wins(catalog_url):
    cat = Catalog(catalog_url)
    a, *_ = _seed(cat)
    reviews.decide(cat, a, "approve", "ann", "ok")
    reviews.decide(cat, a, "reject", "bob", "logo cut off")
    shown = reviews.show(cat, a)
    assert [(r["decision"], r["reviewer"], r["note"]) for r in shown["reviews"]] == [
        ("approved", "ann", "ok"), ("rejected", "bob", "logo cut off")]
    assert shown["status"] == AssetStatus.rejected and shown["review"]["reviewer"] == "bob"


@pytest.mark.parametrize("status", [AssetStatus.published, AssetStatus.qa_failed, AssetStatus.failed])
def test_decision_on_an_asset_that_moved_on_is_refused(catalog_url, status):
    cat = Catalog(catalog_url)
    a, *_ = _seed(cat, 1, status)
    with pytest.raises(reviews.AssetMovedOn, match=str(status)):
        reviews.decide(cat, a, "approve", "ann")
    assert reviews.show(cat, a)["reviews"] == []


def test_decision_on_a_superseded_asset_is_refused(catalog_url):
    cat = Catalog(catalog_url)
    a, b, _ = _seed(cat)
    with cat.session() as s:
        s.get(Asset, b).supersedes_id = a
    with pytest.raises(reviews.AssetMovedOn, match=f"superseded by {b}"):
        reviews.decide(cat, a, "approve", "ann")


@pytest.mark.parametrize("args, error", [
    (("a0", "maybe", "ann"), reviews.BadDecision),
    (("a0", "approve", ""), reviews.BadDecision),
    (("a0", "approve", "ann", "x" * (reviews.MAX_NOTE + 1)), reviews.BadDecision),
    (("nope", "approve", "ann"), reviews.AssetNotFound),
], ids=["bad-word", "no-reviewer", "long-note", "unknown-asset"])
def test_bad_requests_are_refused(catalog_url, args, error):
    cat = Catalog(catalog_url)
    _seed(cat, 1)
    with pytest.raises(error):
        reviews.decide(cat, *args)


def test_concurrent_decisions_are_all_kept_and_status_follows_the_newest(catalog_url):
    cat = Catalog(catalog_url)
    ids = _seed(cat, 2)
    reviewers = 8
    barrier = threading.Barrier(reviewers * len(ids))
    errors: list[BaseException] = []

    def one(asset_id: str, i: int) -> None:
        try:
            barrier.wait(timeout=30)
            reviews.decide(cat, asset_id, "approve" if i % 2 else "reject", f"r{i}", f"note {i}")
        except BaseException as exc:  # collected: a thread's exception is otherwise lost
            errors.append(exc)

    threads = [threading.Thread(target=one, args=(a, i)) for a in ids for i in range(reviewers)]
    for t in threads:
        t.start()
    for t in threads:
        t.join(timeout=60)
    assert not errors, errors
    with cat.session() as s:
        for a in ids:
            rows = list(s.scalars(select(Review).where(Review.asset_id == a).order_by(Review.id)))
            assert sorted(r.reviewer for r in rows) == sorted(f"r{i}" for i in range(reviewers))
            # The documented rule: the asset's status is the newest row's decision.
            assert s.get(Asset, a).status == rows[-1].decision


def test_run_page_filters_and_file_uri_only_returns_catalog_uris(catalog_url):
    cat = Catalog(catalog_url)
    a, b, c = _seed(cat)
    reviews.decide(cat, a, "approve", "ann")
    with cat.session() as s:
        s.get(Asset, c).audit_sample = True
        s.get(Variant, "v1").channels = ["web", "print_a4"]
        s.add(QAResult(asset_id=b, check="sharpness", value=3.0, threshold=20.0, passed=False, status="fail"))
    run = runs.find_run(cat, "campaign__c", "r1")

    def ids(**filters) -> list[str]:
        return [r["asset_id"] for r in reviews.run_page(cat, run, reviews.GalleryFilters(**filters)).assets]

    assert ids(status="approved") == [a]
    assert ids(channel="print_a4") == [b]
    assert ids(channel="print") == [] and ids(channel="print%a4") == []  # whole names, no wildcards
    assert ids(channel="web") == [a, b, c]
    assert ids(product="P2") == [c]
    assert ids(qa_failed="blur") == [b] and ids(qa_failed="any") == [b] and ids(qa_failed="not_blank") == []
    assert ids(audit_sample=True) == [c] and ids(audit_sample=False) == [a, b]
    page = reviews.run_page(cat, run, reviews.GalleryFilters(status="qa_passed", product="P1"))
    assert (page.counts, page.total) == ({"qa_passed": 1}, 1)  # counts: every filter but the status
    assert reviews.run_page(cat, run).counts == {"approved": 1, "qa_passed": 2}
    with pytest.raises(reviews.BadPage, match="status 'aproved' is not one of"):
        reviews.GalleryFilters(status="aproved")
    assert reviews.file_uri(cat, b, "original") == "file:///a1.png"
    with pytest.raises(reviews.AssetNotFound):
        reviews.file_uri(cat, b, "../../etc/passwd")
    assert reviews.asset_run(cat, b).dag_id == "campaign__c"
    assert runs.recent_runs(cat, {"other"}) == []
    assert runs.recent_runs(cat)[0]["waiting"] == 2


def test_run_pages_follow_the_last_asset_seen_so_decisions_skip_nothing(catalog_url):
    """Reviewing the ``needs_review`` filter page by page: each decision takes an asset out
    of the filter, so an offset would skip as many as were decided; the keyset cursor (the
    last asset seen) does not."""
    cat = Catalog(catalog_url)
    ids = _seed(cat, 7, AssetStatus.needs_review)
    run = runs.find_run(cat, "campaign__c", "r1")
    waiting = reviews.GalleryFilters(status="needs_review")
    first = reviews.run_page(cat, run, waiting, limit=3)
    assert [r["asset_id"] for r in first.assets] == ids[:3]
    assert (first.total, first.position, first.prev_before, first.next_after) == (7, 0, None, ids[2])
    for r in first.assets:
        reviews.decide(cat, r["asset_id"], "approve", "ann")
    second = reviews.run_page(cat, run, waiting, after=first.next_after, limit=3)
    assert [r["asset_id"] for r in second.assets] == ids[3:6]
    assert (second.total, second.position, second.next_after) == (4, 0, ids[5])
    last = reviews.run_page(cat, run, waiting, after=second.next_after, limit=3)
    assert ([r["asset_id"] for r in last.assets], last.next_after) == ([ids[6]], None)
    everything = reviews.GalleryFilters()
    back = reviews.run_page(cat, run, everything, before=ids[6], limit=2)
    assert [r["asset_id"] for r in back.assets] == ids[4:6]
    assert (back.position, back.prev_before, back.next_after) == (4, ids[4], ids[5])
    with pytest.raises(reviews.BadPage, match="no asset of run"):
        reviews.run_page(cat, run, after="not-an-asset")
    with pytest.raises(reviews.BadPage, match="1 to 500"):
        reviews.run_page(cat, run, limit=0)


@pytest.mark.postgres
def test_a_decision_waits_for_the_asset_to_settle(catalog_url):
    """Deterministic form of the race: the publish task holds the asset row while it marks
    it published; a reviewer deciding at that moment must wait, see "published" and be
    refused, never overwrite the status from a stale read."""
    if not catalog_url.startswith("postgresql"):
        pytest.skip("row locks are PostgreSQL's; SQLite serializes whole write transactions")
    cat = Catalog(catalog_url)
    a, *_ = _seed(cat, 1, AssetStatus.approved)
    outcome: list[object] = []

    def reviewer() -> None:
        try:
            outcome.append(reviews.decide(cat, a, "reject", "bob"))
        except reviews.ReviewError as exc:
            outcome.append(exc)

    with cat.session() as s:  # the publish task, mid-transaction
        asset = s.scalar(select(Asset).where(Asset.id == a).with_for_update())
        t = threading.Thread(target=reviewer)
        t.start()
        t.join(timeout=1.0)
        assert t.is_alive(), "the decision did not wait for the asset row"
        asset.status = AssetStatus.published
    t.join(timeout=30)
    assert len(outcome) == 1 and isinstance(outcome[0], reviews.AssetMovedOn), outcome
    with cat.session() as s:
        assert s.get(Asset, a).status == AssetStatus.published
        assert s.scalars(select(Review).where(Review.asset_id == a)).all() == []


def test_cli_review_show_prints_the_audit_log(tmp_path, darkroom_home):
    import json
    import subprocess
    import sys
    from pathlib import Path

    url = f"sqlite:///{darkroom_home / 'catalog.db'}"
    cat = Catalog(url)
    a, *_ = _seed(cat, 1)
    reviews.decide(cat, a, "approve", "ann", "[red]markup stays text[/]")
    darkroom = str(Path(sys.executable).with_name("darkroom"))
    env = {"DARKROOM_HOME": str(darkroom_home), "PATH": "/usr/bin:/bin", "COLUMNS": "200"}
    out = subprocess.run([darkroom, "review", "show", a], env=env, capture_output=True, text=True, timeout=120)
    assert out.returncode == 0, out.stderr
    assert "approved by ann" in out.stdout and "[red]markup stays text[/]" in out.stdout
    data = json.loads(subprocess.run([darkroom, "review", "show", a, "--json"], env=env, capture_output=True,
                                     text=True, timeout=120).stdout)
    assert data["reviews"][0]["note"] == "[red]markup stays text[/]" and data["status"] == "approved"
    missing = subprocess.run([darkroom, "review", "show", "nope"], env=env, capture_output=True, text=True,
                             timeout=120)
    assert missing.returncode != 0 and "no asset 'nope'" in missing.stderr


def test_gallery_pages_of_a_10000_asset_run_read_only_indexes(tmp_path):
    """Every query a gallery page makes (the page, the counts, the position, the facets) on
    a run of 10,000 assets, with each filter: SQLite's plan searches an index and scans no
    table (an index the migration forgot, or a filter that reads every variant, fails here)."""
    from datetime import UTC, datetime, timedelta

    from sqlalchemy import event, insert

    cat = Catalog(f"sqlite:///{tmp_path / 'catalog.db'}")
    n = 10_000
    statuses = [AssetStatus.qa_passed, AssetStatus.needs_review, AssetStatus.approved, AssetStatus.qa_failed]
    with cat.session() as s:
        s.add(Campaign(id="c", spec_hash="h", spec_path="/x.yaml", spec_body={"channels": {"web": {}}}))
        s.add(Run(campaign_id="c", dag_id="campaign__c", run_id="r1", spec_hash="h"))
        s.flush()
        start = datetime(2026, 12, 1, tzinfo=UTC)
        s.execute(insert(Variant), [dict(id=f"v{i}", campaign_id="c", product_id=f"P{i % 50}",
                                         asset_type="tile", channels=["web"], template_version="t",
                                         prompt="p", negative_prompt="", seed=i, params={}) for i in range(n)])
        s.execute(insert(Asset), [dict(id=f"a{i:05d}", variant_id=f"v{i}", run_pk=1, version=1,
                                       status=statuses[i % 4], uri="file:///x.png", model_name="m",
                                       model_version="1", scheduler="ddim", steps=2, guidance=7.5, seed=i,
                                       backend="t", loras=[], timings={}, audit_sample=i % 100 == 3,
                                       created_at=start + timedelta(seconds=i)) for i in range(n)])
        s.execute(insert(QAResult), [dict(asset_id=f"a{i:05d}", check="sharpness", value=1.0, threshold=2.0,
                                          passed=False, status="fail", detail="")
                                     for i in range(3, n, 4)])
    run = runs.find_run(cat, "campaign__c", "r1")
    seen: list[tuple[str, object]] = []
    event.listen(cat.engine, "before_cursor_execute",
                 lambda conn, cur, statement, params, ctx, many: seen.append((statement, params)))
    pages = [
        reviews.run_page(cat, run),
        reviews.run_page(cat, run, after="a05000"),
        reviews.run_page(cat, run, before="a09000"),
        reviews.run_page(cat, run, reviews.GalleryFilters(status="needs_review"), after="a08001"),
        reviews.run_page(cat, run, reviews.GalleryFilters(product="P3", channel="web")),
        reviews.run_page(cat, run, reviews.GalleryFilters(qa_failed="sharpness", audit_sample=False)),
    ]
    reviews.run_facets(cat, run)
    assert [(p.total, p.position, len(p.assets)) for p in pages] == [
        (10_000, 0, 100), (10_000, 5001, 100), (10_000, 8900, 100), (2500, 2001, 100), (200, 0, 100),
        (2400, 0, 100)]
    assert pages[0].counts == {s: 2500 for s in statuses}
    bad = []
    with cat.engine.connect() as c:
        for statement, params in seen:
            if not statement.lstrip().upper().startswith("SELECT"):
                continue
            plan = [row[-1] for row in c.exec_driver_sql("EXPLAIN QUERY PLAN " + statement, params)]
            # A scan anywhere; or the run's assets sorted in memory (their index gives the order).
            bad += [(p, statement) for p in plan if p.startswith("SCAN")
                    or ("TEMP B-TREE FOR ORDER BY" in p and "FROM asset" in statement)]
    assert seen and not bad, bad


def test_run_page_shows_the_version_each_asset_replaced_and_its_review_band(catalog_url):
    """Where judgment happens: a new model version beside the asset it superseded, a QA
    regeneration beside the asset of the variant it replaced, and the checks (with values
    and thresholds) that put an asset in the review band."""
    cat = Catalog(catalog_url)
    a0, a1, _ = _seed(cat)
    common = dict(model_name="m", scheduler="ddim", steps=2, guidance=7.5, backend="test")
    with cat.session() as s:
        run_pk = s.get(Asset, a0).run_pk
        s.get(Asset, a1).status = AssetStatus.qa_failed
        s.add(QAResult(asset_id=a1, check="sharpness", value=3.0, threshold=20.0, passed=False,
                       status="fail", detail="variance of Laplacian 3 < 20: blurry"))
        s.add(Asset(id="new0", variant_id="v0", version=2, supersedes_id=a0, run_pk=run_pk,
                    status=AssetStatus.needs_review, uri="file:///n0.png", model_version="2", seed=0, **common))
        s.add(QAResult(asset_id="new0", check="sharpness", value=22.0, threshold=20.0, passed=True,
                       status="borderline", detail="variance of Laplacian 22 >= 20 (within review band 5)"))
        s.add(Variant(id="v1r", campaign_id="c", product_id="P1", asset_type="tile", channels=["web"],
                      template_version="t", prompt="p", seed=101, params={}, regenerated_from="v1", attempt=1))
        s.add(Asset(id="regen1", variant_id="v1r", run_pk=run_pk, status=AssetStatus.qa_passed,
                    uri="file:///r1.png", model_version="1", seed=101, **common))
    run = runs.find_run(cat, "campaign__c", "r1")
    shown = {r["asset_id"]: r for r in reviews.run_page(cat, run).assets}
    assert shown["new0"]["previous"] == {"asset_id": a0, "version": 1, "status": "qa_passed", "seed": 0,
                                         "model_version": "1", "why": "an earlier model version",
                                         "failed_checks": []}
    before = shown["regen1"]["previous"]
    assert (before["asset_id"], before["status"], before["why"]) == (a1, "qa_failed", "regenerated with the next seed")
    assert before["failed_checks"] == [{"check": "sharpness", "value": 3.0, "threshold": 20.0,
                                        "detail": "variance of Laplacian 3 < 20: blurry"}]
    assert [(q["check"], q["value"], q["threshold"], q["status"]) for q in shown["new0"]["doubts"]] == [
        ("sharpness", 22.0, 20.0, "borderline")]
    assert shown[a0]["previous"] is None and shown[a0]["doubts"] == []
