"""The catalog on real databases: every test runs on SQLite and on PostgreSQL (catalog_url).

Covers the Alembic migrations (create, idempotent, reversible, identical to the models),
a full campaign -> publication chain, the unique and foreign-key constraints, and the
review rules in darkroom.catalog.reviews.
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass

import pytest
from alembic import command
from alembic.autogenerate import compare_metadata
from alembic.runtime.migration import MigrationContext
from alembic.script import ScriptDirectory
from darkroom.catalog.db import Catalog, alembic_config, engine_for, migrate
from darkroom.catalog.reviews import decide, waiting
from darkroom.catalog.tables import (
    Asset,
    AssetStatus,
    Base,
    Campaign,
    Derivative,
    PlanItem,
    Publication,
    QAResult,
    Review,
    Run,
    ValidationResult,
    Variant,
)
from darkroom.errors import ReviewError
from sqlalchemy import func, inspect, select
from sqlalchemy.exc import IntegrityError
from sqlalchemy.orm import Session

BIG_SEED = 2**63 - 1  # the largest BIGINT: a 32-bit column would overflow on PostgreSQL


# --------------------------------------------------------------------------- helpers


def head_revision(url: str) -> str:
    return ScriptDirectory.from_config(alembic_config(url)).get_current_head()


def current_revision(url: str) -> str | None:
    with engine_for(url).connect() as conn:
        return MigrationContext.configure(conn).get_current_revision()


def table_names(url: str) -> set[str]:
    return set(inspect(engine_for(url)).get_table_names())


def count(catalog: Catalog, model) -> int:
    with catalog.session() as s:
        return s.scalar(select(func.count()).select_from(model))


@dataclass
class Chain:
    """Primary keys of one campaign's rows, as made by :func:`make_chain`."""

    campaign: str = "summer-sale"
    run: int = 0
    variant: str = "v" * 32
    asset: str = "a" * 32
    derivative: int = 0
    publication: int = 0


def add_run(s: Session, campaign: str, run_id: str) -> Run:
    run = Run(campaign_id=campaign, dag_id="darkroom_campaign", run_id=run_id,
              spec_hash="f" * 64, conf={"limit": 2}, model_ref="tiny://sd",
              model_version="1")
    s.add(run)
    s.flush()
    return run


def add_asset(s: Session, asset_id: str, variant_id: str, run_pk: int, *, version: int = 1,
              status: str = AssetStatus.qa_passed, supersedes: str | None = None) -> Asset:
    asset = Asset(id=asset_id, variant_id=variant_id, version=version, run_pk=run_pk,
                  status=status, supersedes_id=supersedes, uri=f"file:///x/{asset_id}.png",
                  sha256="0" * 64, width=64, height=64, format="png", bytes=1234,
                  model_name="tiny-sd", model_version="1", loras=[{"name": "brand", "w": 0.7}],
                  scheduler="ddim", steps=4, guidance=7.5, seed=BIG_SEED, backend="cpu",
                  timings={"generate_s": 0.25})
    s.add(asset)
    s.flush()
    return asset


def make_chain(catalog: Catalog, *, status: str = AssetStatus.qa_passed) -> Chain:
    """campaign -> run -> variant -> asset -> qa_result/derivative -> publication."""
    ids = Chain()
    with catalog.session() as s:
        s.add(Campaign(id=ids.campaign, spec_hash="f" * 64, spec_path="campaigns/summer.yaml",
                       spec_body={"id": ids.campaign, "products": ["sku-1"]}))
        s.flush()
        run = add_run(s, ids.campaign, "manual__2026-01-01T00:00:00")
        s.add(Variant(id=ids.variant, campaign_id=ids.campaign, product_id="sku-1",
                      asset_type="hero", channels=["web", "social"], template_version="t1",
                      prompt="a red kettle on a table", negative_prompt="blurry",
                      seed=BIG_SEED, params={"width": 64, "height": 64}))
        s.flush()
        s.add(PlanItem(run_pk=run.id, variant_id=ids.variant, batch=0, position=0))
        s.add(ValidationResult(run_pk=run.id, suite="products", success=True, rows=1,
                               summary={"failed": 0}))
        add_asset(s, ids.asset, ids.variant, run.id, status=status)
        s.add_all([
            QAResult(asset_id=ids.asset, check="sharpness", value=0.9, threshold=0.5, passed=True),
            QAResult(asset_id=ids.asset, check="nsfw", value=0.01, threshold=0.2, passed=True),
        ])
        deriv = Derivative(asset_id=ids.asset, channel="web", uri="file:///x/web.webp",
                           sha256="1" * 64, width=32, height=32, format="webp", bytes=99)
        s.add(deriv)
        s.flush()
        pub = Publication(derivative_id=deriv.id, run_pk=run.id, destination="file:///dam",
                          uri="file:///dam/web.webp", sha256="1" * 64)
        s.add(pub)
        s.flush()
        ids.run, ids.derivative, ids.publication = run.id, deriv.id, pub.id
    return ids


@pytest.fixture
def catalog(catalog_url: str) -> Catalog:
    """A migrated, empty catalog (SQLite or PostgreSQL)."""
    return Catalog(catalog_url)


# --------------------------------------------------------------------------- migrations


def test_migrate_creates_every_table_at_head(catalog_url):
    assert table_names(catalog_url) == set()

    migrate(catalog_url)

    assert table_names(catalog_url) == set(Base.metadata.tables) | {"alembic_version"}
    assert current_revision(catalog_url) == head_revision(catalog_url)


def test_many_threads_opening_a_new_catalog_at_once(catalog_url):
    """The gallery's first requests arrive together, each opening the catalog: Alembic's
    context is one per process, and upgrades run side by side broke each other."""
    import concurrent.futures
    import threading

    go = threading.Barrier(8)

    def open_catalog() -> None:
        go.wait()
        Catalog(catalog_url)

    with concurrent.futures.ThreadPoolExecutor(8) as pool:
        for f in [pool.submit(open_catalog) for _ in range(8)]:
            f.result()
    assert current_revision(catalog_url) == head_revision(catalog_url)


def test_migrate_is_idempotent_and_keeps_data(catalog_url):
    catalog = Catalog(catalog_url)
    make_chain(catalog)
    cfg = alembic_config(catalog_url)

    # The per-process cache makes a second migrate() free; run Alembic itself (the
    # command-line path through env.py) twice more to prove the upgrade is a no-op.
    migrate(catalog_url)
    command.upgrade(cfg, "head")
    command.upgrade(cfg, "head")

    assert current_revision(catalog_url) == head_revision(catalog_url)
    with engine_for(catalog_url).connect() as conn:
        assert conn.exec_driver_sql("SELECT count(*) FROM alembic_version").scalar() == 1
    assert count(catalog, Asset) == 1
    assert count(catalog, Publication) == 1


def test_migrations_downgrade_to_nothing_and_back(catalog_url):
    migrate(catalog_url)
    cfg = alembic_config(catalog_url)

    command.downgrade(cfg, "base")
    assert table_names(catalog_url) == {"alembic_version"}
    assert current_revision(catalog_url) is None

    command.upgrade(cfg, "head")
    assert table_names(catalog_url) == set(Base.metadata.tables) | {"alembic_version"}


def test_migrated_schema_matches_models(catalog_url):
    migrate(catalog_url)

    with engine_for(catalog_url).connect() as conn:
        context = MigrationContext.configure(conn, opts={"compare_type": True})
        differences = compare_metadata(context, Base.metadata)

    assert differences == [], "models and migrations disagree; add an Alembic revision"


# --------------------------------------------------------------------------- rows


def test_chain_round_trip(catalog):
    ids = make_chain(catalog)

    with catalog.session() as s:
        asset = s.get(Asset, ids.asset)
        assert asset.variant.product_id == "sku-1"
        assert asset.variant.channels == ["web", "social"]
        assert asset.variant.params == {"width": 64, "height": 64}
        assert asset.variant.seed == BIG_SEED
        assert (asset.seed, asset.version, asset.status) == (BIG_SEED, 1, "qa_passed")
        assert asset.loras == [{"name": "brand", "w": 0.7}]
        assert asset.timings == {"generate_s": 0.25}
        assert asset.created_at is not None
        assert [q.check for q in asset.qa_results] == ["nsfw", "sharpness"]  # ordered by check
        assert all(q.passed for q in asset.qa_results)
        assert [d.channel for d in asset.derivatives] == ["web"]
        [pub] = asset.derivatives[0].publications
        assert (pub.id, pub.destination, pub.run_pk) == (ids.publication, "file:///dam", ids.run)
        run = s.get(Run, ids.run)
        assert (run.conf, run.summary, run.state) == ({"limit": 2}, {}, "running")
        assert s.get(Campaign, ids.campaign).spec_body["products"] == ["sku-1"]
        assert s.get(PlanItem, (ids.run, ids.variant)).status == "planned"
        assert s.scalar(select(ValidationResult.success)) is True


def add_asset_row(ids: Chain, asset_id: str, version: int) -> Asset:
    return Asset(id=asset_id, variant_id=ids.variant, version=version, run_pk=ids.run,
                 model_name="tiny-sd", model_version="2", scheduler="ddim", steps=4,
                 guidance=7.5, seed=1, backend="cpu")


def _derivative(ids: Chain, channel: str) -> Derivative:
    return Derivative(asset_id=ids.asset, channel=channel, uri="file:///x/d.webp",
                      sha256="2" * 64, width=8, height=8, format="webp", bytes=1)


def _publication(ids: Chain, destination: str) -> Publication:
    return Publication(derivative_id=ids.derivative, run_pk=ids.run, destination=destination,
                       uri="s3://b/k", sha256="1" * 64)


def _qa(ids: Chain, check: str) -> QAResult:
    return QAResult(asset_id=ids.asset, check=check, value=1.0, passed=True)


def _run(ids: Chain, run_id: str) -> Run:
    return Run(campaign_id=ids.campaign, dag_id="darkroom_campaign", run_id=run_id,
               spec_hash="f" * 64)


# (allowed row, duplicate row): the allowed one differs only in the constrained columns,
# so the duplicate's IntegrityError can only come from the unique constraint.
UNIQUE_CASES: dict[str, Callable[[Chain], tuple[object, object]]] = {
    "asset(variant_id,version)": lambda ids: (add_asset_row(ids, "b" * 32, 2),
                                              add_asset_row(ids, "c" * 32, 1)),
    "publication(derivative_id,destination)": lambda ids: (_publication(ids, "s3://b"),
                                                           _publication(ids, "file:///dam")),
    "derivative(asset_id,channel)": lambda ids: (_derivative(ids, "social"),
                                                 _derivative(ids, "web")),
    "qa_result(asset_id,check)": lambda ids: (_qa(ids, "contrast"), _qa(ids, "nsfw")),
    "run(dag_id,run_id)": lambda ids: (_run(ids, "scheduled__2"),
                                       _run(ids, "manual__2026-01-01T00:00:00")),
}


@pytest.mark.parametrize("case", list(UNIQUE_CASES), ids=list(UNIQUE_CASES))
def test_unique_constraint_holds(catalog, case):
    ids = make_chain(catalog)
    allowed, duplicate = UNIQUE_CASES[case](ids)

    with catalog.session() as s:
        s.add(allowed)
    with pytest.raises(IntegrityError, match="(?i)unique"), catalog.session() as s:
        s.add(duplicate)


def test_foreign_keys_are_enforced(catalog):
    ids = make_chain(catalog)

    with pytest.raises(IntegrityError, match="(?i)foreign key"), catalog.session() as s:
        s.add(Derivative(asset_id="no-such-asset", channel="web", uri="u", sha256="s",
                         width=1, height=1, format="png", bytes=1))
    with catalog.session() as s:  # the same row with a real asset is fine
        s.add(Derivative(asset_id=ids.asset, channel="print", uri="u", sha256="s",
                         width=1, height=1, format="png", bytes=1))


# --------------------------------------------------------------------------- review


def reviews_of(catalog: Catalog, asset_id: str) -> list[tuple[str, str]]:
    with catalog.session() as s:
        return [(r.decision, r.reviewer) for r in
                s.scalars(select(Review).where(Review.asset_id == asset_id).order_by(Review.id))]


def status_of(catalog: Catalog, asset_id: str) -> str:
    with catalog.session() as s:
        return s.get(Asset, asset_id).status


@pytest.mark.parametrize(
    ("from_status", "decision", "expected"),
    [
        pytest.param(AssetStatus.qa_passed, "approve", "approved", id="qa_passed-approve"),
        pytest.param(AssetStatus.needs_review, "approved", "approved", id="needs_review-approved"),
        pytest.param(AssetStatus.qa_passed, "reject", "rejected", id="qa_passed-reject"),
        pytest.param(AssetStatus.needs_review, "rejected", "rejected", id="needs_review-rejected"),
        pytest.param(AssetStatus.approved, "reject", "rejected", id="approved-change-of-mind"),
        pytest.param(AssetStatus.rejected, "approve", "approved", id="rejected-change-of-mind"),
    ],
)
def test_decide_records_review_and_sets_status(catalog, from_status, decision, expected):
    ids = make_chain(catalog, status=from_status)

    row = decide(catalog, ids.asset, decision, "ana@example.com", note="looks right")

    assert (row.asset_id, row.decision, row.reviewer, row.note) == (
        ids.asset, expected, "ana@example.com", "looks right")
    assert row.id is not None and row.at is not None
    assert reviews_of(catalog, ids.asset) == [(expected, "ana@example.com")]
    assert status_of(catalog, ids.asset) == expected


@pytest.mark.parametrize(
    ("status", "asset_id", "decision", "reviewer", "message"),
    [
        pytest.param(AssetStatus.qa_passed, None, "maybe", "ana", "not one of",
                     id="unknown-decision"),
        pytest.param(AssetStatus.qa_passed, None, "", "ana", "not one of", id="empty-decision"),
        pytest.param(AssetStatus.qa_passed, None, "approve", "", "needs a reviewer",
                     id="no-reviewer"),
        pytest.param(AssetStatus.qa_passed, "f" * 32, "approve", "ana", "no asset",
                     id="unknown-asset"),
        pytest.param(AssetStatus.qa_failed, None, "approve", "ana", "is qa_failed",
                     id="qa_failed"),
        pytest.param(AssetStatus.published, None, "reject", "ana", "is published",
                     id="published"),
        pytest.param(AssetStatus.failed, None, "approve", "ana", "is failed", id="failed"),
        pytest.param(AssetStatus.pending, None, "approve", "ana", "is pending", id="pending"),
    ],
)
def test_decide_refuses_and_writes_nothing(catalog, status, asset_id, decision, reviewer,
                                           message):
    ids = make_chain(catalog, status=status)

    with pytest.raises(ReviewError, match=message):
        decide(catalog, asset_id or ids.asset, decision, reviewer)

    assert count(catalog, Review) == 0
    assert status_of(catalog, ids.asset) == status


def test_decide_refuses_superseded_asset(catalog):
    ids = make_chain(catalog)
    with catalog.session() as s:
        add_asset(s, "b" * 32, ids.variant, ids.run, version=2, supersedes=ids.asset)

    with pytest.raises(ReviewError, match="superseded by " + "b" * 32):
        decide(catalog, ids.asset, "approve", "ana")

    assert count(catalog, Review) == 0
    assert status_of(catalog, ids.asset) == AssetStatus.qa_passed
    decide(catalog, "b" * 32, "approve", "ana")  # the newer version takes decisions
    assert status_of(catalog, "b" * 32) == AssetStatus.approved


@pytest.mark.parametrize(
    ("decisions", "final"),
    [
        pytest.param(["approve", "reject"], "rejected", id="approve-then-reject"),
        pytest.param(["reject", "approve"], "approved", id="reject-then-approve"),
        pytest.param(["approve", "reject", "approve"], "approved", id="three-decisions"),
    ],
)
def test_latest_decision_wins(catalog, decisions, final):
    ids = make_chain(catalog)
    reviewers = [f"reviewer-{i}" for i in range(len(decisions))]

    for decision, reviewer in zip(decisions, reviewers, strict=True):
        decide(catalog, ids.asset, decision, reviewer)

    history = reviews_of(catalog, ids.asset)
    assert [r for _, r in history] == reviewers  # every decision is kept, in order
    assert history[-1][0] == final
    assert status_of(catalog, ids.asset) == final
    with catalog.session() as s:  # the asset's reviews relationship has the same order
        assert [r.reviewer for r in s.get(Asset, ids.asset).reviews] == reviewers


def test_waiting_lists_only_reviewable_assets(catalog):
    ids = make_chain(catalog, status=AssetStatus.needs_review)
    with catalog.session() as s:
        add_asset(s, "b" * 32, ids.variant, ids.run, version=2, status=AssetStatus.qa_failed)
        add_asset(s, "c" * 32, ids.variant, ids.run, version=3, status=AssetStatus.qa_passed)
        other = add_run(s, ids.campaign, "manual__other")
        add_asset(s, "d" * 32, ids.variant, other.id, version=4, status=AssetStatus.approved)

    assert {a.id for a in waiting(catalog)} == {ids.asset, "c" * 32}
    assert {a.id for a in waiting(catalog, run_id="manual__other")} == set()
    assert waiting(catalog, campaign="another-campaign") == []
    decide(catalog, ids.asset, "approve", "ana")
    assert [a.id for a in waiting(catalog, campaign=ids.campaign)] == ["c" * 32]
