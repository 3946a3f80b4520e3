"""Which run owns which asset (#15 item 1, #13 "nothing lost after a crash"): the stages as
plain functions, on SQLite and PostgreSQL, with the real tiny model.

- Runs planning the same variants at once never draw one twice: each draws what it claimed
  (concurrent claims on one catalog, in threads; two runs' plans and generate tasks).
- A run that ended without deciding its assets (killed mid-generate, failed at track) leaves
  them to the next run that plans those variants: adopted, checked, reviewed, published there.
- A DAG run re-processed with another model (what an Airflow backfill with
  ``--reprocess-behavior completed`` does: same run id) is a new attempt: it draws new asset
  versions of its own variants, sends exactly those to review, and its manifest lists only
  them; the first attempt's files and manifest stay.
- Decisions that could no longer take effect are refused (409 in the gallery).
"""

from __future__ import annotations

import json
import threading
from pathlib import Path

import pytest
import yaml
from darkroom.catalog import Catalog, assets, reviews, runs
from darkroom.catalog.tables import Asset, AssetClaim, AssetStatus, Run
from darkroom.config import Settings
from darkroom.devtools.tiny_model import build_tiny_pipeline
from darkroom.stages import approve, generate, plan, postprocess, publish, qa, track, validate
from darkroom.stages.context import RunContext
from darkroom.stages.sequence import run_to_review
from darkroom.storage import read_uri
from sqlalchemy import func, select

from tests.support.campaigns import small_spec

DAG = "campaign__spring_tiles"


def _ctx(spec, settings, run_id, conf=None, states=None) -> RunContext:
    """A stage context whose orchestrator reports ``states`` (run id -> Airflow state)."""
    return RunContext.open(spec, DAG, run_id, conf or {}, settings=settings,
                           run_state=(lambda _dag, rid: (states or {}).get(rid)))


def _owned(catalog: Catalog, run_pk: int) -> set[str]:
    with catalog.session() as s:
        return set(s.scalars(select(Asset.variant_id).where(Asset.run_pk == run_pk)))


def _per_variant(catalog: Catalog) -> dict[str, int]:
    with catalog.session() as s:
        return dict(s.execute(select(Asset.variant_id, func.count()).group_by(Asset.variant_id)).all())


def _manifest(ctx: RunContext) -> dict:
    return json.loads(read_uri(runs.get(ctx.catalog, ctx.run_pk).manifest_uri))


@pytest.fixture
def settings(catalog_url) -> Settings:
    return Settings.from_env(catalog_url=catalog_url)


@pytest.fixture
def spec(tmp_path) -> Path:
    # Deterministic QA for noise pictures: dimensions only.
    return small_spec(tmp_path, lambda d: d.update(qa={"checks": {"dimensions": {}, "duplicate":
                                                                   {"enabled": False}}}))


# --------------------------------------------------------------------------- claims


def test_concurrent_claims_split_the_work(catalog_url, tmp_path, settings, spec):
    """Eight threads claim the same 300 assets at once: every asset goes to exactly one run."""
    runs_ = [_ctx(spec, settings, f"scheduled__{i}") for i in range(8)]
    pks = [r.run_pk for r in runs_]
    ctx = runs_[0]
    variants = [f"{i:016x}" for i in range(300)]
    from darkroom.catalog.tables import Variant

    with ctx.catalog.session() as s:
        s.add_all([Variant(id=v, campaign_id=ctx.spec.id, product_id="p", asset_type="t", channels=[],
                           template_version="1", prompt="x", seed=1, params={}) for v in variants])
    wanted = {f"a{v}": v for v in variants}
    got: dict[int, assets.Claims] = {}
    barrier = threading.Barrier(len(pks))

    def claim(pk: int) -> None:
        barrier.wait()
        got[pk] = assets.claim(ctx.catalog, pk, wanted, alive=lambda _pk: True)

    threads = [threading.Thread(target=claim, args=(pk,)) for pk in pks]
    for t in threads:
        t.start()
    for t in threads:
        t.join(timeout=120)
    mine = [got[pk].mine for pk in pks]
    assert sum(len(m) for m in mine) == len(wanted)  # disjoint...
    assert set().union(*mine) == set(wanted)  # ...and complete
    for pk in pks:  # what a run does not own, it knows who holds
        assert set(got[pk].held) == set(wanted) - got[pk].mine
        assert all(owner != pk for owner in got[pk].held.values())
    with ctx.catalog.session() as s:
        assert s.scalar(select(func.count()).select_from(AssetClaim)) == len(wanted)


@pytest.mark.usefixtures("use_tiny_model")
def test_two_running_runs_never_draw_a_variant_twice(settings, spec):
    """A refresh planned while an earlier run still works (both "running" for Airflow): the
    second draws only what the first did not claim, and reviews only its own."""
    states = {"scheduled__1": "running", "scheduled__2": "running"}
    first = _ctx(spec, settings, "scheduled__1", {"limit": 4}, states)
    validate.run(first)
    assert plan.run(first) == [0, 1]
    second = _ctx(spec, settings, "scheduled__2", {"limit": 6}, states)
    validate.run(second)
    batches = plan.run(second)
    summary = runs.get(second.catalog, second.run_pk).summary
    assert summary["to_generate"] == 2 and summary["held_by_other_runs"] == {"scheduled__1": 4}
    # The generate tasks of both runs interleave: batch by batch.
    for b in (0, 1):
        generate.run(first, b)
    for b in batches:
        generate.run(second, b)
    assert set(_per_variant(first.catalog).values()) == {1}  # one asset per variant
    assert len(_owned(first.catalog, first.run_pk)) == 4
    assert len(_owned(second.catalog, second.run_pk)) == 2
    for b in batches:
        qa.run(second, b)
    assert runs.counts(second.catalog, second.run_pk).waiting == 2


# --------------------------------------------------------------------------- adoption


@pytest.mark.usefixtures("use_tiny_model")
@pytest.mark.parametrize("died_at", ["generate", "track"])
def test_assets_of_a_run_that_died_are_adopted_reviewed_and_published(settings, spec, died_at):
    """A run killed mid-generate (or failed at track) leaves assets nobody checks; the next run
    that plans those variants adopts them: QA, review and publishing happen there, once."""
    dead = _ctx(spec, settings, "manual__dead", {"limit": 4})
    validate.run(dead)
    for b in plan.run(dead):
        generate.run(dead, b)
        if died_at == "track":
            qa.run(dead, b)
            postprocess.run(dead, b)
    left = _owned(dead.catalog, dead.run_pk)
    assert len(left) == 4
    # Airflow says the first run failed (the scheduler marks a killed run's tasks failed;
    # darkroom run marks its own dead in-process runs failed).
    states = {"manual__dead": "failed", "manual__next": "running"}
    ctx = _ctx(spec, settings, "manual__next", {"limit": 4}, states)
    run_to_review(ctx)
    summary = runs.get(ctx.catalog, ctx.run_pk).summary
    assert (summary["adopted"], summary["to_generate"], summary["reused"]) == (4, 0, 0)
    assert _owned(ctx.catalog, ctx.run_pk) == left and not _owned(ctx.catalog, dead.run_pk)
    c = runs.counts(ctx.catalog, ctx.run_pk)
    assert c.waiting == 4 and c.derivatives == 8  # checked here, derivatives made here
    assert runs.counts(ctx.catalog, dead.run_pk).total == 0
    approve.settle_undecided(ctx, "approve", "ana", "")
    out = publish.run(ctx)
    assert out["published_assets"] == 4
    assert {r["variant_id"] for r in _manifest(ctx)["files"]} == left
    assert set(_per_variant(ctx.catalog).values()) == {1}  # nothing drawn twice


@pytest.mark.usefixtures("use_tiny_model")
def test_a_finished_runs_settled_assets_are_reused_not_reviewed_again(settings, spec):
    done = _ctx(spec, settings, "manual__done", {"limit": 2})
    run_to_review(done)
    ids = reviews.waiting_ids(done.catalog, done.run_pk)
    reviews.decide(done.catalog, ids[0], "approve", "ana")
    reviews.decide(done.catalog, ids[1], "reject", "ana")
    publish.run(done)
    again = _ctx(spec, settings, "manual__again", {"limit": 2}, {"manual__done": "success"})
    run_to_review(again)
    summary = runs.get(again.catalog, again.run_pk).summary
    assert (summary["reused"], summary["adopted"], summary["to_generate"]) == (2, 0, 0)
    assert runs.counts(again.catalog, again.run_pk).total == 0
    assert publish.run(again)["published_assets"] == 0


# --------------------------------------------------------------------------- attempts


@pytest.fixture(scope="module")
def second_model(tmp_path_factory) -> Path:
    """Another tiny model (other random weights: another checksum, another version)."""
    return build_tiny_pipeline(tmp_path_factory.mktemp("tiny-b") / "tiny-sd-b", seed=1)


@pytest.mark.usefixtures("use_tiny_model")
def test_a_reprocessed_run_makes_and_publishes_only_its_new_versions(settings, spec, tmp_path,
                                                                     second_model):
    """The same DAG run id run again with another model: attempt 1 draws version 2 of each
    variant, reviewers see only those, its manifest lists only those; attempt 0 stays whole."""
    run_id = "scheduled__2026-01-11T00:00:00+00:00"
    first = _ctx(spec, settings, run_id, {"limit": 3})
    run_to_review(first)
    approve.settle_undecided(first, "approve", "ana", "")
    publish.run(first)
    v1_manifest = _manifest(first)
    v1_uri = runs.get(first.catalog, first.run_pk).manifest_uri
    # The spec now names another model (a backfill could as well pass model_version).
    data = yaml.safe_load(spec.read_text())
    data["generation"]["model"] = str(second_model)
    spec.write_text(yaml.safe_dump(data))
    again = _ctx(spec, settings, run_id, {"limit": 3}, {run_id: "running"})
    run_to_review(again)
    ref = runs.get(again.catalog, again.run_pk)
    assert (ref.attempt, ref.run_id) == (1, run_id) and again.run_pk != first.run_pk
    assert runs.find_run(again.catalog, DAG, run_id).pk == again.run_pk  # the newest attempt
    waiting = reviews.waiting_ids(again.catalog, again.run_pk)
    assert len(waiting) == 3
    with again.catalog.session() as s:
        new = list(s.scalars(select(Asset).where(Asset.id.in_(waiting))))
    assert {a.version for a in new} == {2} and all(a.supersedes_id for a in new)
    assert all(f"/{ref.key}/" in a.uri and ref.key.endswith("-attempt-1") for a in new)
    # A decision on the first attempt's assets could no longer publish anything: refused.
    with pytest.raises(reviews.AssetMovedOn, match="was superseded by"):
        reviews.decide(first.catalog, v1_manifest["files"][0]["asset_id"], "reject", "ana")
    approve.settle_undecided(again, "approve", "ana", "")
    out = publish.run(again)
    assert out["published_assets"] == 3
    files = _manifest(again)["files"]
    assert {r["asset_id"] for r in files} == set(waiting)
    assert {r["model_version"] for r in files} == {new[0].model_version} != {
        r["model_version"] for r in v1_manifest["files"]}
    # The first attempt's manifest and files are where they were, unchanged.
    assert json.loads(read_uri(v1_uri)) == v1_manifest
    for row in v1_manifest["files"]:
        assert read_uri(row["destination_uri"])
    assert set(_per_variant(first.catalog).values()) == {2}  # v1 and v2, one each


@pytest.mark.usefixtures("use_tiny_model")
def test_same_params_same_model_is_the_same_attempt(settings, spec):
    """A retry of the first task (or a re-process that changes nothing) is no new attempt."""
    ctx = _ctx(spec, settings, "manual__x", {"limit": 1})
    validate.run(ctx)
    again = _ctx(spec, settings, "manual__x", {"limit": 1})
    validate.run(again)
    assert again.run_pk == ctx.run_pk
    other = _ctx(spec, settings, "manual__x", {"limit": 2})
    validate.run(other)
    assert runs.get(other.catalog, other.run_pk).attempt == 1
    with ctx.catalog.session() as s:
        assert s.scalar(select(func.count()).select_from(Run)) == 2


# --------------------------------------------------------------------------- late decisions


@pytest.mark.usefixtures("use_tiny_model")
def test_decisions_after_publish_are_refused_and_the_gallery_closes(settings, spec):
    ctx = _ctx(spec, settings, "manual__late", {"limit": 2})
    run_to_review(ctx)
    ids = reviews.waiting_ids(ctx.catalog, ctx.run_pk)
    reviews.decide(ctx.catalog, ids[0], "approve", "ana")
    reviews.decide(ctx.catalog, ids[1], "reject", "ana")
    run = runs.get(ctx.catalog, ctx.run_pk)
    assert reviews.open_for_decisions(ctx.catalog, run)
    reviews.decide(ctx.catalog, ids[1], "reject", "bo", "changed my mind twice")  # still open
    publish.run(ctx)
    assert not reviews.open_for_decisions(ctx.catalog, runs.get(ctx.catalog, ctx.run_pk))
    with pytest.raises(reviews.AssetMovedOn, match=r"run manual__late has published.*regenerate"):
        reviews.decide(ctx.catalog, ids[1], "approve", "ana")
    with ctx.catalog.session() as s:
        assert s.get(Asset, ids[1]).status == AssetStatus.rejected
        assert len(s.get(Asset, ids[1]).reviews) == 2  # nothing written


@pytest.mark.usefixtures("use_tiny_model")
def test_track_keeps_attempts_apart_in_mlflow(settings, spec):
    """Each attempt of a DAG run gets its own MLflow run (params are immutable there)."""
    ctx = _ctx(spec, settings, "manual__ml", {"limit": 1})
    run_to_review(ctx)
    other = _ctx(spec, settings, "manual__ml", {"limit": 1, "seed_offset": 5})
    validate.run(other)
    for b in plan.run(other):
        generate.run(other, b)
    track.run(other)
    first, second = (runs.get(ctx.catalog, pk).mlflow_run_id for pk in (ctx.run_pk, other.run_pk))
    assert first and second and first != second
