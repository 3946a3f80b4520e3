"""QA checks: each catches a crafted bad image and passes a good one; outcomes; the hash index;
and the qa stage (regeneration, near-duplicates, contact sheet) on a real catalog."""

from __future__ import annotations

import io
import random
import shutil
from pathlib import Path

import numpy as np
import pytest
import yaml
from darkroom import imaging, qa, stages
from darkroom.config import Settings
from darkroom.inference import Result
from darkroom.models import Asset, AssetStatus, PlanItem, QAResult, Variant
from darkroom.spec import QACheck, QARubric, SpecError, parse_spec
from PIL import Image, ImageDraw, ImageEnhance, ImageFilter
from sqlalchemy import select

ROOT = Path(__file__).resolve().parents[1]
CAMPAIGNS = ROOT / "include" / "campaigns"
W = H = 64


# -------------------------------------------------------------------------- crafted images

def good_image(seed: int = 0, size: tuple[int, int] = (W, H)) -> Image.Image:
    """A textured gradient with a few shapes: sharp, exposed, contrasty, unique per seed."""
    rng = np.random.default_rng(seed)
    w, h = size
    x, y = np.meshgrid(np.linspace(0, 1, w), np.linspace(0, 1, h))
    base = np.stack([170 + 60 * x, 110 + 70 * y, 80 + 60 * x * y], axis=-1)
    base += rng.normal(0, 6, base.shape)
    img = Image.fromarray(np.clip(base, 0, 255).astype("uint8"))
    d = ImageDraw.Draw(img)
    for _ in range(4):
        x0, y0 = rng.integers(0, w * 3 // 4), rng.integers(0, h * 3 // 4)
        x1, y1 = x0 + rng.integers(w // 8, w // 3), y0 + rng.integers(h // 8, h // 3)
        fill = tuple(int(c) for c in rng.integers(20, 235, 3))
        (d.ellipse if rng.random() < 0.5 else d.rectangle)([x0, y0, x1, y1], fill=fill)
    return img


def on_brand_image(size: tuple[int, int] = (W, H)) -> Image.Image:
    """Warm neutral backdrop and a terracotta product: the look of include/brand/references."""
    w, h = size
    img = Image.new("RGB", size, (222, 210, 194))
    d = ImageDraw.Draw(img)
    d.rounded_rectangle([w * 0.35, h * 0.27, w * 0.65, h * 0.78], radius=4, fill=(184, 92, 56))
    d.ellipse([w * 0.27, h * 0.74, w * 0.74, h * 0.84], fill=(155, 147, 136))
    return img


PROV_SEED = 1234


def provenance(asset_id: str = "asset-1", seed: int = PROV_SEED, size=(W, H)) -> imaging.Provenance:
    return imaging.Provenance(
        imaging.infotext(prompt="a mug", negative_prompt="blurry", steps=4, sampler="DDIM",
                         guidance=7.5, seed=seed, width=size[0], height=size[1], model_hash="abc",
                         model="tiny-sd"),
        {"asset_id": asset_id, "variant_id": "v1"})


def png(img: Image.Image, asset_id: str = "asset-1") -> bytes:
    return imaging.encode(img, "png", provenance(asset_id, size=img.size))


DEFAULTS = QARubric().for_asset_type("any")


def analyse(data: bytes, rubric: dict | None = None, **kw) -> tuple[qa.Analysis, dict[str, qa.CheckResult]]:
    rubric = DEFAULTS if rubric is None else rubric
    kw = {"width": W, "height": H, "asset_id": "asset-1", "seed": PROV_SEED, **kw}
    res = qa.analyse(data, {k: v for k, v in rubric.items() if k in qa.CHECKS}, **kw)
    return res, {r.check: r for r in res.results}


# -------------------------------------------------------------------------- single checks

def test_good_image_passes_every_default_check():
    res, by = analyse(png(good_image()))
    assert set(by) == set(DEFAULTS) - {"duplicate"}
    assert all(r.passed and r.status == qa.PASS for r in res.results), res.results
    assert qa.outcome(res.results, DEFAULTS) == ("qa_passed", [])
    assert res.phash and len(res.phash) == 16


@pytest.mark.parametrize(("name", "make", "check"), [
    ("blurred", lambda: good_image().filter(ImageFilter.GaussianBlur(4)), "sharpness"),
    ("blank", lambda: Image.new("RGB", (W, H), (120, 120, 120)), "not_blank"),
    ("single_colour_noise_free", lambda: Image.new("RGB", (W, H), (250, 20, 20)), "not_blank"),
    ("overexposed", lambda: ImageEnhance.Brightness(good_image()).enhance(4.0), "exposure"),
    ("washed_out", lambda: ImageEnhance.Contrast(good_image()).enhance(0.08), "contrast"),
    ("wrong_size", lambda: good_image(size=(W, H // 2)), "dimensions"),
    ("grey_mode", lambda: good_image().convert("L"), "colour_mode"),
], ids=lambda v: v if isinstance(v, str) else "")
def test_each_check_catches_its_bad_image(name, make, check):
    res, by = analyse(png(make()))
    assert by[check].passed is False and by[check].status == qa.FAIL, by[check]
    assert by[check].threshold is not None or check in ("colour_mode",)
    status, reasons = qa.outcome(res.results, DEFAULTS)
    assert status == "qa_failed" and any(r.startswith(f"{check}: ") for r in reasons)


def test_every_failing_check_is_a_reason():
    res, _ = analyse(png(Image.new("RGB", (W, H // 2), (128, 128, 128))))
    status, reasons = qa.outcome(res.results, DEFAULTS)
    failed = {r.split(":")[0] for r in reasons}
    assert status == "qa_failed" and {"dimensions", "not_blank", "sharpness", "contrast"} <= failed


def test_dimension_detail_names_both_sizes():
    _, by = analyse(png(good_image(size=(48, 64))))
    assert by["dimensions"].detail == "48x64, expected 64x64"


def test_format_and_file_size_bounds():
    jpeg = imaging.encode(good_image(), "jpeg", provenance())
    _, by = analyse(jpeg)
    assert by["format"].passed is False and "jpeg" in by["format"].detail
    rubric = {**DEFAULTS, "file_size": QACheck(threshold=512, max=2000)}
    _, by = analyse(png(good_image()), rubric)
    assert by["file_size"].passed is False and by["file_size"].value > 2000
    rubric = {**DEFAULTS, "file_size": QACheck(threshold=100_000)}
    _, by = analyse(png(good_image()), rubric)
    assert by["file_size"].passed is False


def test_provenance_missing_foreign_or_inconsistent():
    plain = qa.image_bytes(good_image())
    _, by = analyse(plain)
    assert by["provenance"].detail == "provenance chunks missing" and not by["provenance"].passed
    _, by = analyse(png(good_image(), asset_id="someone-else"))
    assert "darkroom.asset_id is 'someone-else'" in by["provenance"].detail
    _, by = analyse(png(good_image()), seed=99)
    assert "parameters Seed is 1234, expected 99" in by["provenance"].detail
    # Size in the parameters must match the pixels (a resized file without new provenance).
    data = imaging.encode(good_image(size=(32, 32)), "png", provenance())
    _, by = analyse(data, width=32, height=32)
    assert "parameters Size is Size: 64x64, image is 32x32" in by["provenance"].detail


# -------------------------------------------------------------------------- safety

def _bomb(size: tuple[int, int]) -> bytes:
    buf = io.BytesIO()
    Image.new("1", size).save(buf, format="PNG")  # compresses to a few KB
    return buf.getvalue()


@pytest.mark.parametrize(("data", "reason"), [
    (b"", "empty file"),
    (b"GIF8" + bytes(range(256)) * 4, "not a readable image"),
    (png(good_image())[:-400], "truncated"),
    (_bomb((10_000, 10_000)), "decompression bomb"),  # over 2x the limit: Pillow's error
    (_bomb((6_000, 6_000)), "decompression bomb"),  # between 1x and 2x: Pillow warns, we refuse
], ids=["empty", "corrupt", "truncated", "bomb", "bomb_warning_range"])
def test_broken_files_are_rejected_with_a_reason(data, reason):
    with pytest.raises(imaging.BadImage, match=reason):
        imaging.decode(data)
    res, by = analyse(data)
    assert list(by) == ["readable"] and reason in by["readable"].detail and res.phash is None
    assert qa.outcome(res.results, DEFAULTS)[0] == "qa_failed"


def test_pillow_limits_are_explicit():
    from PIL import ImageFile

    assert Image.MAX_IMAGE_PIXELS == 4096 * 4096 * 2 and ImageFile.LOAD_TRUNCATED_IMAGES is False


def test_a_crashing_check_is_a_failed_result_not_an_exception():
    rubric = {"brand_palette": QACheck(params={"references": 42})}  # not a path: raises inside
    res, by = analyse(png(good_image()), rubric)
    assert by["brand_palette"].status == qa.FAIL and "check crashed" in by["brand_palette"].detail


# -------------------------------------------------------------------------- outcomes

def test_review_band_sends_a_borderline_value_to_review():
    _, by = analyse(png(good_image()))
    sharp = by["sharpness"].value
    band = {**DEFAULTS, "sharpness": QACheck(threshold=sharp * 1.05, review_band=sharp * 0.1)}
    res, by = analyse(png(good_image()), band)
    assert by["sharpness"].status == qa.BORDERLINE and by["sharpness"].passed is False
    status, reasons = qa.outcome(res.results, band)
    assert status == "needs_review" and reasons[0].startswith("sharpness borderline")
    # Outside the band the same threshold is a plain failure.
    narrow = {**DEFAULTS, "sharpness": QACheck(threshold=sharp * 1.05, review_band=sharp * 0.01)}
    res, _ = analyse(png(good_image()), narrow)
    assert qa.outcome(res.results, narrow)[0] == "qa_failed"
    # A borderline value never hides an outright failure elsewhere.
    res, _ = analyse(png(good_image(size=(W, 32))), band)
    assert qa.outcome(res.results, band)[0] == "qa_failed"


@pytest.mark.parametrize("check", ["clip_score", "nsfw"])
def test_learned_checks_without_local_weights_are_not_run_and_never_pass(check, tmp_path):
    rubric = {check: QACheck(params={"model_path": str(tmp_path / "absent")})}
    res, by = analyse(png(good_image()), rubric)
    r = by[check]
    assert (r.status, r.passed, r.value) == (qa.NOT_RUN, False, None)
    assert "does not exist" in r.detail
    assert qa.outcome(res.results, rubric) == ("needs_review", [f"{check} not_run: {r.detail}"])
    strict = {check: QACheck(if_not_run="fail")}
    res, by = analyse(png(good_image()), strict)
    assert "no local weights configured" in by[check].detail
    assert qa.outcome(res.results, strict)[0] == "qa_failed"


# -------------------------------------------------------------------------- brand

BRAND = {"brand_hash": QACheck(threshold=30), "brand_palette": QACheck(threshold=60)}


def test_brand_consistency_passes_on_brand_and_fails_off_brand():
    res, by = analyse(png(on_brand_image()), BRAND)
    assert by["brand_palette"].passed, by["brand_palette"]
    assert by["brand_hash"].passed, by["brand_hash"]
    neon = Image.new("RGB", (W, H), (10, 255, 40))
    ImageDraw.Draw(neon).rectangle([0, 0, W, H // 2], fill=(255, 0, 230))
    res, by = analyse(png(neon), BRAND)
    assert by["brand_palette"].passed is False and by["brand_palette"].value > 150
    assert "palette distance to studio_" in by["brand_palette"].detail


def test_brand_hash_catches_a_different_composition():
    flipped = on_brand_image().transpose(Image.Transpose.ROTATE_90)
    stripes = Image.fromarray((np.indices((W, H)).sum(0) % 16 < 8).astype("uint8") * 200 + 30).convert("RGB")
    _, by_ok = analyse(png(on_brand_image()), BRAND)
    _, by_bad = analyse(png(stripes), BRAND)
    assert by_bad["brand_hash"].value > by_ok["brand_hash"].value
    assert by_bad["brand_hash"].passed is False
    assert flipped.size == (W, H)


def test_brand_checks_without_references_are_not_run(tmp_path):
    rubric = {"brand_palette": QACheck(params={"references": str(tmp_path)})}
    _, by = analyse(png(on_brand_image()), rubric)
    assert by["brand_palette"].status == qa.NOT_RUN and "no reference PNGs" in by["brand_palette"].detail


# -------------------------------------------------------------------------- near-duplicates

def test_hash_index_matches_brute_force():
    rnd = random.Random(5)
    idx = qa.HashIndex(radius=6)
    stored = [rnd.getrandbits(64) for _ in range(3000)]
    for i, h in enumerate(stored):
        idx.add(f"a{i}", h)
    for _ in range(300):
        base = rnd.choice(stored)
        q = base
        for bit in rnd.sample(range(64), rnd.randint(0, 9)):
            q ^= 1 << bit
        brute = min((q ^ h).bit_count() for h in stored)
        hit = idx.nearest(q)
        assert (hit[1] if hit else None) == (brute if brute <= 6 else None)


def test_duplicate_check_flags_near_copies_only():
    cfg = QACheck(threshold=6)
    idx = qa.HashIndex(6)
    first = good_image(1)
    idx.add("first", qa.perceptual_hash(first))
    near = ImageEnhance.Brightness(first).enhance(1.1).filter(ImageFilter.GaussianBlur(0.6))
    r = qa.check_duplicate(qa.perceptual_hash(near), idx, cfg)
    assert r.passed is False and "asset first" in r.detail and r.value <= 6
    other = qa.check_duplicate(qa.perceptual_hash(good_image(2)), idx, cfg)
    assert other.passed is True
    assert qa.check_duplicate(qa.perceptual_hash(first), idx, cfg, exclude={"first"}).passed


def test_different_seeds_of_the_good_image_are_not_duplicates():
    hashes = [int(qa.perceptual_hash(good_image(s)), 16) for s in range(12)]
    assert min((a ^ b).bit_count() for i, a in enumerate(hashes) for b in hashes[i + 1:]) > 6


# -------------------------------------------------------------------------- spec

def test_rubric_merges_defaults_and_asset_type_overrides():
    rubric = QARubric(checks={"sharpness": QACheck(threshold=50)},
                      asset_types={"hero": {"sharpness": QACheck(threshold=80),
                                            "contrast": QACheck(enabled=False)}})
    assert rubric.for_asset_type("other")["sharpness"].threshold == 50
    hero = rubric.for_asset_type("hero")
    assert hero["sharpness"].threshold == 80 and "contrast" not in hero and "provenance" in hero


def test_unknown_check_names_the_known_ones():
    data = yaml.safe_load((CAMPAIGNS / "spring_tiles.yaml").read_text())
    data["qa"] = {"asset_types": {"hero_tile": {"sharpnes": {}}}}
    with pytest.raises(SpecError, match=r"unknown check\(s\) \['sharpnes'\]; known checks are .*'sharpness'"):
        parse_spec(data, "x.yaml")


# -------------------------------------------------------------------------- the qa stage

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
    ctx = stages.RunContext.open(_spec(tmp_path, max_regenerations=2, workers=1),
                                 "campaign__spring_tiles", "manual__qa", {"limit": 4}, settings=settings)
    stages.register_run(ctx)
    (batch,) = stages.expand_prompts(ctx)
    with ctx.catalog.session() as s:
        planned = s.execute(select(Variant.id, Variant.seed).join(PlanItem, PlanItem.variant_id == Variant.id)
                            .order_by(PlanItem.position)).all()
    ids = [v for v, _ in planned]
    blank, original, copy = ids[0], ids[1], ids[2]
    backend = CraftedBackend(blank={blank}, copies={copy: (original, planned[1][1])})
    stages.generate(ctx, batch, backend=backend)
    summary = stages.run_qa(ctx, batch, backend=backend)

    assert summary["regenerated"] == 2  # the blank one and the duplicate, once each
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
    again = stages.run_qa(ctx, batch, backend=backend)
    assert again.get("regenerated", 0) == 0 and again["qa_failed"] == 2 and again["qa_passed"] == 4

    pp = stages.postprocess(ctx, batch)
    assert pp["assets"] == 4 and pp["derivatives"] == 8 and pp["failed"] == 0

    uri = stages.contact_sheet(ctx)
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
    first = stages.RunContext.open(spec, "campaign__spring_tiles", "run1", {"limit": 2}, settings=settings)
    stages.register_run(first)
    (batch,) = stages.expand_prompts(first)
    backend = CraftedBackend()
    stages.generate(first, batch, backend=backend)
    stages.run_qa(first, batch)
    stages.settle_undecided(first, "approve", "tester", "")
    with first.catalog.session() as s:
        approved = {a.variant_id: (a.id, a.seed) for a in s.scalars(select(Asset))}
    # A later run with a new seed whose pictures come out the same as the approved ones.
    second = stages.RunContext.open(spec, "campaign__spring_tiles", "run2", {"limit": 2, "seed_offset": 5},
                                    settings=settings)
    stages.register_run(second)
    (batch,) = stages.expand_prompts(second)
    with second.catalog.session() as s:
        new = [pi.variant_id for pi in s.scalars(select(PlanItem).where(PlanItem.run_pk == second.run_pk))]
    copies = {n: (v, approved[v][1]) for n, v in zip(sorted(new), sorted(approved), strict=True)}
    stages.generate(second, batch, backend=CraftedBackend(copies=copies))
    out = stages.run_qa(second, batch)
    assert out["qa_failed"] == 2
    with second.catalog.session() as s:
        reasons = [a.failure_reason for a in s.scalars(select(Asset).where(Asset.run_pk == second.run_pk))]
    assert all("near-duplicate" in r for r in reasons)
    assert sorted(r.split("from asset ")[1].split(" ")[0] for r in reasons) == sorted(
        a for a, _ in approved.values())


@pytest.mark.parametrize("campaign", ["spring_tiles", "summer_social"])
def test_example_rubrics_pass_the_tiny_models_noise(campaign, use_tiny_model):
    """The demo and e2e runs depend on it: noise from the tiny model is sharp, exposed and
    contrasty enough, and its different seeds are far from near-duplicates (20+ bits)."""
    from darkroom.inference import LocalDiffusersBackend, Request, resolve_model
    from darkroom.spec import load_spec

    spec = load_spec(CAMPAIGNS / f"{campaign}.yaml").spec
    g = spec.generation
    ref = resolve_model("tiny", None, Settings.from_env())
    reqs = [Request(f"v{i}", f"studio photo {i % 3}", "", g.base_seed + i, g.width, g.height, g.steps,
                    g.guidance, g.scheduler) for i in range(8)]
    images = [r.image for r in LocalDiffusersBackend(ref, "cpu").generate(reqs)]
    index = qa.HashIndex(radius=16)
    for at in spec.asset_types:
        rubric = spec.qa.for_asset_type(at.name)
        for i, img in enumerate(images):
            res, _ = analyse(png(img), rubric, width=g.width, height=g.height)
            dup = qa.check_duplicate(res.phash, index, rubric["duplicate"], exclude={f"v{i}"})
            results = [*res.results, dup]
            assert qa.outcome(results, rubric) == ("qa_passed", []), results
            if at is spec.asset_types[0]:
                index.add(f"v{i}", res.phash)
