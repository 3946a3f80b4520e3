"""QA checks: each catches a crafted bad image and passes a good one; outcomes; the hash index;
and the qa stage (regeneration, near-duplicates, contact sheet) on a real catalog."""

from __future__ import annotations

import io
import random
from pathlib import Path

import numpy as np
import pytest
import yaml
from darkroom import imaging, qa
from darkroom.config import Settings
from darkroom.spec import QACheck, QARubric, SpecError, parse_spec
from PIL import Image, ImageDraw, ImageEnhance, ImageFilter

from tests.support.images import PROV_SEED, H, W, good_image, on_brand_image, png, provenance

ROOT = Path(__file__).resolve().parents[2]
CAMPAIGNS = ROOT / "include" / "campaigns"


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

# Thresholds for the synthetic pictures here; measured against the rendered references.
BRAND = {"brand_hash": QACheck(threshold=24), "brand_palette": QACheck()}


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


@pytest.mark.parametrize("campaign", ["spring_tiles", "summer_social"])
def test_example_rubrics_pass_the_tiny_models_noise(campaign, use_tiny_model):
    """The demo and e2e runs depend on it: noise from the tiny model is sharp, exposed and
    contrasty enough, and its different seeds are far from near-duplicates (20+ bits)."""
    from darkroom.generation.local import LocalDiffusersBackend
    from darkroom.generation.resolve import resolve_model
    from darkroom.generation.types import Request
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
