"""The qa stage on a real catalog: regeneration with the next seed, near-duplicates within
the run and against approved assets of earlier runs, the contact sheet."""

from __future__ import annotations

import shutil
from pathlib import Path

import pytest
import yaml
from darkroom import imaging
from darkroom.catalog import reviews, runs
from darkroom.catalog.tables import Asset, AssetStatus, PlanItem, QAResult, Variant
from darkroom.config import Settings
from darkroom.generation.types import Result
from darkroom.stages import approve, generate, plan, track
from darkroom.stages import postprocess as postprocess_stage
from darkroom.stages import qa as qa_stage
from darkroom.stages.context import RunContext
from PIL import Image, ImageEnhance
from sqlalchemy import func, select

from tests.support.images import good_image

ROOT = Path(__file__).resolve().parents[2]
CAMPAIGNS = ROOT / "include" / "campaigns"


class CraftedBackend:
    """An offline inference backend drawing crafted images: good ones by default, a blank
    one for variants in ``blank``, a near-copy of another variant's image for those in
    ``copies`` ({variant: (other variant, its seed)})."""

    name = "crafted"

    def __init__(self, blank=(), copies=None):
        self.blank, self.copies = set(blank), dict(copies or {})

    def sampler_name(self, scheduler: str) -> str:
        return "DDIM"

    def image_for(self, variant_id: str, seed: int, size) -> Image.Image:
        if variant_id in self.blank:
            return Image.new("RGB", size, (90, 90, 90))
        if variant_id in self.copies:  # another variant's picture (at its seed), slightly brighter
            src_id, src_seed = self.copies[variant_id]
            return ImageEnhance.Brightness(self.image_for(src_id, src_seed, size)).enhance(1.05)
        return good_image(int(variant_id[:8], 16) + seed, size)

    def generate(self, requests, pass_size=None):
        return [Result(r.variant_id, self.image_for(r.variant_id, r.seed, (r.width, r.height)), 0.01)
                for r in requests]



def _spec(tmp_path: Path, **qa_section) -> Path:
    data = yaml.safe_load((CAMPAIGNS / "spring_tiles.yaml").read_text())
    data["brand"]["restricted_terms_file"] = str(ROOT / "include" / "brand" / "restricted_terms.txt")
    data["products"]["expectations"] = str(ROOT / "include" / "expectations" / "spring_tiles.json")
    shutil.copy(CAMPAIGNS / "spring_tiles.products.csv", tmp_path / "products.csv")
    data["products"]["source"] = str(tmp_path / "products.csv")
    data["generation"].update(seeds_per_variant=1, variants_per_task=8)
    data["qa"] = {**(data.get("qa") or {}), **qa_section}
    path = tmp_path / "spec.yaml"
    path.write_text(yaml.safe_dump(data))
    return path



@pytest.mark.usefixtures("use_tiny_model")  # generate resolves `tiny` to a version
def test_qa_stage_regenerates_failures_flags_duplicates_and_draws_the_sheet(tmp_path, catalog_url):
    settings = Settings.from_env(catalog_url=catalog_url)
    ctx = RunContext.open(_spec(tmp_path, max_regenerations=2, workers=1),
                          "campaign__spring_tiles", "manual__qa", {"limit": 4}, settings=settings)
    (batch,) = plan.run(ctx)
    with ctx.catalog.session() as s:
        planned = s.execute(select(Variant.id, Variant.seed).join(PlanItem, PlanItem.variant_id == Variant.id)
                            .order_by(PlanItem.position)).all()
    ids = [v for v, _ in planned]
    blank, original, copy = ids[0], ids[1], ids[2]
    backend = CraftedBackend(blank={blank}, copies={copy: (original, planned[1][1])})
    # The batch as the DAG runs it: generate, qa, then regenerate_N (the generate stage, on
    # the GPU queue) and qa_N for each of the spec's max_regenerations rounds.
    generate.run(ctx, batch, backend=backend)
    first = qa_stage.run(ctx, batch)
    assert first["to_regenerate"] == 2  # the blank one and the duplicate, once each
    with ctx.catalog.session() as s:  # QA planned them; it drew nothing itself
        assert s.scalar(select(func.count()).select_from(Asset)) == 4
    assert generate.run(ctx, batch, backend=backend)["generated"] == 2  # regenerate_1
    second = qa_stage.run(ctx, batch, regeneration=1)
    assert second["qa_passed"] == 2 and second.get("to_regenerate", 0) == 0
    assert generate.run(ctx, batch, backend=backend) == {"batch": 0, "skipped": 6}  # regenerate_2
    assert qa_stage.run(ctx, batch, regeneration=2).get("qa_passed", 0) == 0  # qa_2: nothing new

    with ctx.catalog.session() as s:
        by_variant = {a.variant_id: a for a in s.scalars(select(Asset))}
        failed = by_variant[blank]
        assert failed.status == AssetStatus.qa_failed and "not_blank: luminance std" in failed.failure_reason
        dup = by_variant[copy]
        assert dup.status == AssetStatus.qa_failed and f"from asset {by_variant[original].id}" in dup.failure_reason
        assert by_variant[original].status == AssetStatus.qa_passed
        children = {v.regenerated_from: v for v in s.scalars(select(Variant).where(Variant.attempt > 0))}
        assert set(children) == {blank, copy}
        for parent_id, child in children.items():
            parent = s.get(Variant, parent_id)
            assert (child.seed, child.attempt, child.prompt) == (parent.seed + 1, 1, parent.prompt)
            assert by_variant[child.id].status == AssetStatus.qa_passed
        stored = {(q.check, q.status) for q in s.scalars(select(QAResult).where(QAResult.asset_id == failed.id))}
        assert ("not_blank", "fail") in stored and ("provenance", "pass") in stored
        assert ("duplicate", "pass") in stored
        assert all(by_variant[v].phash for v in ids)

    # Checking again gives the same answers (the batch is compared in plan order).
    again = qa_stage.run(ctx, batch)
    assert again.get("to_regenerate", 0) == 0 and again["qa_failed"] == 2 and again["qa_passed"] == 4

    pp = postprocess_stage.run(ctx, batch)
    assert pp["assets"] == 4 and pp["derivatives"] == 8 and pp["failed"] == 0
    # Every asset's review thumbnail, the failed ones' too; the gallery shows each
    # regenerated asset beside the one it replaced.
    with ctx.catalog.session() as s:
        assert all(a.thumbnail_uri and a.thumbnail_sha256 for a in s.scalars(select(Asset)))
    page = reviews.run_page(ctx.catalog, runs.find_run(ctx.catalog, ctx.dag_id, ctx.run_id))
    beside = {r["variant_id"]: r["previous"] for r in page.assets if r["previous"]}
    assert {v: p["asset_id"] for v, p in beside.items()} == {
        child.id: by_variant[parent_id].id for parent_id, child in children.items()}
    assert all(p["status"] == "qa_failed" and p["failed_checks"] for p in beside.values())

    uri = track.contact_sheet(ctx)
    sheet = imaging.decode(Path(uri.removeprefix("file://")).read_bytes())
    with ctx.catalog.session() as s:
        order = [a.variant_id for a in s.scalars(select(Asset).order_by(Asset.created_at, Asset.id))]
    assert len(order) == 6 and sheet.width == 8 + 6 * 168
    i = order.index(blank)
    x, y = 8 + i * 168, 28 + 8
    assert sheet.getpixel((x - 1, y + 80)) == (229, 72, 77)  # failed: red frame
    j = order.index(original)
    assert sheet.getpixel((8 + j * 168 - 1, y + 80)) == (62, 99, 221)  # qa_passed: blue frame



def test_qa_stage_against_approved_assets_of_earlier_runs(tmp_path, use_tiny_model):
    settings = Settings.from_env(catalog_url=f"sqlite:///{tmp_path / 'c.db'}")
    spec = _spec(tmp_path, workers=1)
    first = RunContext.open(spec, "campaign__spring_tiles", "run1", {"limit": 2}, settings=settings)
    (batch,) = plan.run(first)
    backend = CraftedBackend()
    generate.run(first, batch, backend=backend)
    qa_stage.run(first, batch)
    approve.settle_undecided(first, "approve", "tester", "")
    with first.catalog.session() as s:
        approved = {a.variant_id: (a.id, a.seed) for a in s.scalars(select(Asset))}
    # A later run with a new seed whose pictures come out the same as the approved ones.
    second = RunContext.open(spec, "campaign__spring_tiles", "run2", {"limit": 2, "seed_offset": 5},
                                    settings=settings)
    (batch,) = plan.run(second)
    with second.catalog.session() as s:
        new = [pi.variant_id for pi in s.scalars(select(PlanItem).where(PlanItem.run_pk == second.run_pk))]
    copies = {n: (v, approved[v][1]) for n, v in zip(sorted(new), sorted(approved), strict=True)}
    generate.run(second, batch, backend=CraftedBackend(copies=copies))
    out = qa_stage.run(second, batch)
    assert out["qa_failed"] == 2
    with second.catalog.session() as s:
        reasons = [a.failure_reason for a in s.scalars(select(Asset).where(Asset.run_pk == second.run_pk))]
    assert all("near-duplicate" in r for r in reasons)
    assert sorted(r.split("from asset ")[1].split(" ")[0] for r in reasons) == sorted(
        a for a, _ in approved.values())
