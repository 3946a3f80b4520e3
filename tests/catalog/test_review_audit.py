"""The exception policy's audit in the catalog: a person's rejection counts toward it
whichever way it comes (here: concurrent reviewers, and the `darkroom review` CLI), and the
policy's approvals are withdrawn once, in the transaction of the rejection that crosses
``audit_max_reject_rate``. (Routing itself, from a spec: tests/stages/test_approve.py.)"""

from __future__ import annotations

import subprocess
import sys
import threading
from pathlib import Path

from darkroom.catalog import Catalog, reviews
from darkroom.catalog.db import engine_for
from darkroom.catalog.tables import Asset, AssetStatus, Campaign, Review, Run, Variant
from sqlalchemy import event, select

POLICY = "policy:exception@1"


def _audited_run(catalog: Catalog, sample: int = 6, approved: int = 4, limit: float = 0.2) -> None:
    """A routed run: ``sample`` audit-sample assets waiting (s0..), ``approved`` approved by
    the exception policy (p0..), as the approval stage leaves them."""
    routing = {"tile": {"review": "exception", "audit_rate": 0.5, "audit_max_reject_rate": limit}}
    ids = [f"s{i}" for i in range(sample)] + [f"p{i}" for i in range(approved)]
    with catalog.session() as s:
        s.add(Campaign(id="c", spec_hash="h", spec_path="/x.yaml", spec_body={}))
        run = Run(campaign_id="c", dag_id="campaign__c", run_id="r1", spec_hash="h",
                  summary={"review_routing": routing})
        s.add(run)
        s.flush()
        for i, asset_id in enumerate(ids):
            s.add(Variant(id=f"v{asset_id}", campaign_id="c", product_id=f"P{i}", asset_type="tile",
                          channels=["web"], template_version="t", prompt="p", seed=i, params={}))
            s.add(Asset(id=asset_id, variant_id=f"v{asset_id}", run_pk=run.id, status=AssetStatus.qa_passed,
                        audit_sample=asset_id.startswith("s"), model_name="m", model_version="1",
                        scheduler="ddim", steps=2, guidance=7.5, seed=i, backend="test"))
    for i in range(approved):
        reviews.decide(catalog, f"p{i}", "approve", POLICY, "approval.review exception", by_policy=True)


def _withdrawals(catalog: Catalog) -> list[str]:
    with catalog.session() as s:
        return sorted(s.scalars(select(Review.asset_id).where(Review.decision == reviews.WITHDRAWN)))


def _status(catalog: Catalog, asset_id: str) -> str:
    with catalog.session() as s:
        return s.get(Asset, asset_id).status


def test_concurrent_rejections_cross_the_limit_together(catalog_url):
    """Six reviewers reject the six audit assets at once: each alone is within the limit (1 of
    6 <= 0.2), together they are not, so the last to commit must see the others and withdraw."""
    cat = Catalog(catalog_url)
    _audited_run(cat)
    barrier = threading.Barrier(6)
    errors: list[BaseException] = []

    def reject(asset_id: str) -> None:
        try:
            barrier.wait(timeout=30)
            reviews.decide(cat, asset_id, "reject", f"reviewer-{asset_id}", "wrong colour")
        except BaseException as exc:  # collected: a thread's exception is otherwise lost
            errors.append(exc)

    threads = [threading.Thread(target=reject, args=(f"s{i}",)) for i in range(6)]
    for t in threads:
        t.start()
    for t in threads:
        t.join(timeout=60)
    assert not errors, errors
    assert _withdrawals(cat) == ["p0", "p1", "p2", "p3"]  # each once
    assert {_status(cat, f"p{i}") for i in range(4)} == {AssetStatus.qa_passed}


def test_a_rejection_waits_for_another_decision_of_the_run_to_commit(catalog_url):
    """Deterministic form of the race above: the first reviewer's rejection is paused inside
    its transaction, its review row written; the second reviewer's rejection must wait for it
    and then count both, never decide from a count that misses the first."""
    cat = Catalog(catalog_url)
    _audited_run(cat)
    inside, release = threading.Event(), threading.Event()

    def pause_first(conn, cursor, statement, *args) -> None:
        if threading.current_thread().name == "first" and statement.startswith("INSERT INTO review"):
            inside.set()
            release.wait(timeout=30)

    event.listen(engine_for(catalog_url), "after_cursor_execute", pause_first)
    try:
        first = threading.Thread(name="first", target=reviews.decide, args=(cat, "s0", "reject", "ana"))
        second = threading.Thread(name="second", target=reviews.decide, args=(cat, "s1", "reject", "ben"))
        first.start()
        assert inside.wait(timeout=30)
        second.start()
        second.join(timeout=1.0)
        assert second.is_alive(), "the second rejection did not wait for the first to commit"
        release.set()
        first.join(timeout=30)
        second.join(timeout=30)
    finally:
        release.set()
        event.remove(engine_for(catalog_url), "after_cursor_execute", pause_first)
    assert _withdrawals(cat) == ["p0", "p1", "p2", "p3"]


def test_a_rejection_from_the_cli_counts_toward_the_audit(darkroom_home):
    cat = Catalog(f"sqlite:///{darkroom_home / 'catalog.db'}")
    _audited_run(cat, sample=4, approved=2, limit=0.25)  # a second rejection crosses it
    reviews.decide(cat, "s0", "reject", "ana")
    assert _withdrawals(cat) == []
    darkroom = str(Path(sys.executable).with_name("darkroom"))
    env = {"DARKROOM_HOME": str(darkroom_home), "PATH": "/usr/bin:/bin", "COLUMNS": "200"}
    out = subprocess.run([darkroom, "review", "reject", "s1", "--note", "logo cut off", "--reviewer", "ben"],
                         env=env, capture_output=True, text=True, timeout=120)
    assert out.returncode == 0, out.stderr
    assert _withdrawals(cat) == ["p0", "p1"]
    assert [(r["decision"], r["reviewer"]) for r in reviews.show(cat, "p0")["reviews"]] == [
        ("approved", POLICY), ("withdrawn", POLICY)]
