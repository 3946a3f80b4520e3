"""Safe outputs and readable errors for hostile product data and brand files (issue #13,
items 4 and 7): CSV manifests neutralise formulas, provenance fields fit their formats, product
values have a length limit, oversized or unreadable logos, fonts and reference images are
refused with the field, the row and the fix.
"""

from __future__ import annotations

import csv
import io
import json
import shutil

import pytest
from darkroom import imaging, postprocess
from darkroom.catalog.tables import Asset, PlanItem, ValidationResult, Variant
from darkroom.errors import ValidationFailed
from darkroom.spec import Channel, load_spec
from darkroom.stages import approve, generate, plan, publish, validate
from darkroom.stages.publish import FORMULA_PREFIXES, csv_cell
from darkroom.stages.sequence import run_to_review
from PIL import Image
from sqlalchemy import func, select

from tests.hostile.helpers import CSV_HEADER, ROOT, approved_asset, files, run_context, write_spec

BRAND = ROOT / "include" / "brand"

# -- CSV manifests ---------------------------------------------------------------------------

@pytest.mark.parametrize("value, cell", [
    ("=HYPERLINK(\"http://evil.example\",\"x\")", "'=HYPERLINK(\"http://evil.example\",\"x\")"),
    ("+1+1", "'+1+1"), ("-2+3", "'-2+3"), ("@SUM(A1)", "'@SUM(A1)"),
    ("\t=1+1", "'\t=1+1"), ("\r=1+1", "'\r=1+1"),
    ("a mug", "a mug"), ("1+1", "1+1"), ("'quoted", "'quoted"), ("", ""), (None, ""), (42, "42"),
    ("TER-001", "TER-001"),
])
def test_csv_cells_follow_owasps_rule(value, cell):
    assert csv_cell(value) == cell


@pytest.mark.usefixtures("use_tiny_model")
def test_hostile_product_values_publish_a_safe_manifest_and_fitted_provenance(tmp_path, darkroom_home):
    """One product whose id and name are formulas and whose name is 9,000 characters long,
    through generate, QA, derivatives and publish: the CSV manifest shows every formula as
    text, the JPEG and WebP derivatives carry their provenance cut to fit (the cut recorded),
    QA's provenance check still passes, and the catalog keeps the whole prompt."""
    name = "=HYPERLINK(\"http://evil.example/\",\"click\") " + "terracotta " * 800
    buf = io.StringIO()
    csv.writer(buf).writerow(["-2+3", name, "drinkware", "@SUM(1)", "stoneware", "18.00"])
    rows = CSV_HEADER + buf.getvalue()

    def mutate(d):
        d["products"].update(required_columns=["sku", "name"], max_value_length=10_000)
        d["prompts"] = {p: "{{ product.name }}" for p in ("subject", "composition", "background",
                                                           "lighting", "style")}
        d["brand"].update(style="")

    ctx = run_context(write_spec(tmp_path, mutate, rows=rows))
    run_to_review(ctx)
    approve.settle_undecided(ctx, "approve", "tester", "")
    summary = publish.run(ctx)
    assert summary["published_assets"] == 1 and summary["files"] == 2

    dest = darkroom_home / "published" / "dam"
    [manifest_csv] = dest.rglob("manifests/*.csv")
    table = list(csv.DictReader(io.StringIO(manifest_csv.read_text())))
    assert len(table) == 2  # one row per published file
    for row in table:
        assert all(not cell.startswith(FORMULA_PREFIXES) for cell in row.values())
        assert row["product_id"] == "'-2+3" and row["prompt"].startswith("'=HYPERLINK(")
    assert manifest_csv.read_text().startswith('"asset_id","variant_id"')  # every cell quoted
    [manifest_json] = dest.rglob("manifests/*.json")
    assert json.loads(manifest_json.read_text())["files"][0]["product_id"] == "-2+3"  # exact there

    with ctx.catalog.session() as s:
        variant = s.scalars(select(Variant)).one()
        asset = s.scalars(select(Asset)).one()
        assert len(variant.prompt) > 40_000  # the catalog keeps it whole
        assert asset.status == "published"
    for path in dest.rglob("*.jpg"), dest.rglob("*.webp"):
        [derivative] = list(path)
        prov = imaging.read_provenance(derivative.read_bytes())
        assert prov.darkroom["truncated"]["parameters"] > 40_000
        assert len(prov.parameters.encode("utf-16-be")) <= imaging.EXIF_PARAMETERS_BYTES
        assert " [...]\nSteps: 4," in prov.parameters and "Seed: " in prov.parameters
        assert prov.darkroom["asset_id"] == asset.id


@pytest.mark.parametrize("fmt", ["jpeg", "webp", "png"])
def test_provenance_of_any_length_fits_its_format(fmt):
    """A 2 MB prompt gave "EXIF data is too long" (and 3.1 GB of memory): now it is cut to the
    format's limit, the settings line kept whole, the cut recorded."""
    settings = "Steps: 4, Sampler: DDIM, CFG scale: 7.5, Seed: 3, Size: 8x8, Model hash: x, Model: tiny"
    prov = imaging.Provenance("é" * 2_000_000 + "\nNegative prompt: blurry\n" + settings,
                              {"asset_id": "a1", "product_id": "p" * 50_000})
    data = imaging.encode(Image.new("RGB", (8, 8)), fmt, prov)
    back = imaging.read_provenance(data)
    assert back.parameters.endswith(" [...]\n" + settings)
    assert back.darkroom["truncated"]["parameters"] == len(prov.parameters)
    assert back.darkroom["asset_id"] == "a1"
    if fmt != "png":
        assert back.darkroom["truncated"]["product_id"] == 50_000
        assert len(back.parameters.encode("utf-16-be")) <= imaging.EXIF_PARAMETERS_BYTES


def test_short_provenance_is_written_whole():
    prov = imaging.Provenance("a mug\nSteps: 4, Seed: 1, Size: 8x8", {"asset_id": "a1"})
    back = imaging.read_provenance(imaging.encode(Image.new("RGB", (8, 8)), "jpeg", prov))
    assert back == prov


# -- product value lengths -------------------------------------------------------------------

def test_a_product_value_over_the_length_limit_fails_validation_by_column_and_row(tmp_path, darkroom_home):
    rows = (CSV_HEADER + "TER-001,coffee mug,drinkware,terracotta,stoneware,18.00\n"
            + f"TER-002,{'x' * 2_000_000},drinkware,terracotta,stoneware,18.00\n")
    spec = write_spec(tmp_path, rows=rows)
    ctx = run_context(spec)
    before = files(tmp_path)
    with pytest.raises(ValidationFailed) as err:
        validate.run(ctx)
    message = str(err.value)
    assert str(spec) in message and "nothing was generated" in message
    assert "expect_column_value_lengths_to_be_between on column 'name'" in message
    assert "max_value=5000" in message and "1 failing row(s)" in message
    assert "sku='TER-002'" in message and "(2,000,000 characters)" in message
    assert len(message) < 5_000  # the value is shown cut, not 2 MB of it
    with ctx.catalog.session() as s:
        for table in (Variant, PlanItem, Asset):
            assert s.scalar(select(func.count()).select_from(table)) == 0
    # Only the catalog and the validation report (which says why) appeared; the report shows
    # the value cut too.
    new = {p.name: p for p in files(tmp_path) - before}
    assert set(new) - {"catalog.db", "catalog.db-journal", "catalog.db-wal"} == {"validation.html"}
    assert new["validation.html"].stat().st_size < 50_000


def test_the_length_limit_is_a_spec_setting(tmp_path, darkroom_home):
    rows = CSV_HEADER + f"TER-001,{'long name ' * 700},drinkware,terracotta,stoneware,18.00\n"
    spec = write_spec(tmp_path, lambda d: d["products"].update(max_value_length=8000), rows=rows)
    assert validate.run(run_context(spec))["success"]


# -- logos, fonts, reference images ----------------------------------------------------------

def _channel(tmp_path, **overlay) -> dict:
    return {"web": Channel.model_validate({"width": 64, "height": 64, **overlay})}


def test_a_49_megapixel_logo_is_refused_at_recipe_check(tmp_path):
    """The same limit as reference images (Image.MAX_IMAGE_PIXELS, a bomb is refused)."""
    big = tmp_path / "logo.png"
    Image.new("1", (7000, 7000)).save(big)  # 49 MP, a few kilobytes on disk
    with pytest.raises(postprocess.RecipeError) as err:
        postprocess.check_recipes(_channel(tmp_path, logo={"path": str(big)}))
    message = str(err.value)
    assert f"channels.web.logo.path = {str(big)!r}" in message
    assert "decompression bomb" in message and "MAX_IMAGE_PIXELS" in message
    with pytest.raises(imaging.BadImage, match="decompression bomb"):
        imaging.probe(big)  # what validation applies to a reference image of that size


@pytest.mark.parametrize("overlay, field, words", [
    pytest.param("logo", "channels.web.logo.path", ["not a PNG, JPEG, WebP or other image", "fix"], id="logo-not-an-image"),
    pytest.param("font", "channels.web.text.font", ["not a font Pillow can read (unknown file format)",
                                                    "a .ttf or .otf file"], id="font-not-a-font"),
])
def test_unreadable_brand_files_name_the_field_and_the_fix(tmp_path, overlay, field, words):
    bad = tmp_path / ("logo.png" if overlay == "logo" else "brand.ttf")
    bad.write_text("this is not what the name says\n")
    cfg = {"logo": {"path": str(bad)}} if overlay == "logo" else {"text": {"text": {"en": "Hi"}, "font": str(bad)}}
    with pytest.raises(postprocess.RecipeError) as err:
        postprocess.check_recipes(_channel(tmp_path, **cfg))
    message = str(err.value)
    assert f"{field} = {str(bad)!r}" in message, message
    for w in words:
        assert w in message, message
    assert "<_io." not in message and "OSError" not in message


@pytest.mark.parametrize("make, field, words", [
    pytest.param(lambda p: p.write_text("not a picture"), "channels.marketplace.logo.path",
                 ["not a PNG, JPEG, WebP or other image"], id="logo-not-an-image"),
    pytest.param(lambda p: Image.new("1", (7000, 7000)).save(p, format="PNG"), "channels.marketplace.logo.path",
                 ["decompression bomb"], id="logo-49-megapixels"),
    pytest.param(lambda p: p.write_text("not a font"), "channels.web_tile.text.font",
                 ["not a font Pillow can read (unknown file format)"], id="font-not-a-font"),
])
def test_logo_and_font_problems_stop_the_run_before_any_gpu_work(tmp_path, darkroom_home, make, field, words):
    """They surfaced in postprocess, after every image had been generated: now validate_inputs
    refuses the run, naming the field, and nothing is planned, generated or written."""
    def mutate(d):
        d["channels"]["marketplace"]["logo"]["path"] = "our-logo.png"
        d["channels"]["web_tile"]["text"] = {"text": {"en": "Spring"}, "font": "our-font.ttf"}

    spec = write_spec(tmp_path, mutate)
    shutil.copy(BRAND / "logo.png", tmp_path / "our-logo.png")
    shutil.copy(BRAND / "fonts" / "DejaVuSans.ttf", tmp_path / "our-font.ttf")
    make(tmp_path / ("our-font.ttf" if "font" in field else "our-logo.png"))  # spoiled
    ctx = run_context(spec)
    before = files(tmp_path)
    with pytest.raises(ValidationFailed) as err:
        run_to_review(ctx)  # validate, plan, generate, QA, postprocess, track: stops at the first
    message = str(err.value)
    bad = tmp_path / ("our-font.ttf" if "font" in field else "our-logo.png")
    assert str(spec) in message and f"{field} = {str(bad.resolve())!r}" in message, message
    assert "nothing was generated" in message and "fix" in message
    for w in words:
        assert w in message, message
    with ctx.catalog.session() as s:
        for table in (Variant, PlanItem, Asset, ValidationResult):
            assert s.scalar(select(func.count()).select_from(table)) == 0
    assert {p for p in files(tmp_path) - before if not p.name.startswith("catalog.db")} == set()


def _reference_spec(tmp_path, reference: str):
    def mutate(d):
        d["products"]["reference_image_column"] = "reference"
        d["generation"]["mode"] = "image2image"

    rows = (CSV_HEADER.replace("\n", ",reference\n")
            + f"TER-001,coffee mug,drinkware,terracotta,stoneware,18.00,{reference}\n")
    return write_spec(tmp_path, mutate, rows=rows)


@pytest.mark.parametrize("make, problem", [
    pytest.param(lambda p: p.write_bytes(b"GIF8" + bytes(range(256))), "not a PNG, JPEG, WebP or other image",
                 id="not-an-image"),
    pytest.param(lambda p: p.write_bytes(b""), "empty file", id="empty"),
    pytest.param(lambda p: Image.new("1", (7000, 7000)).save(p, format="PNG"), "decompression bomb", id="49-megapixels"),
])
def test_an_unreadable_reference_image_fails_its_row_at_validation(tmp_path, darkroom_home, make, problem):
    (tmp_path / "refs").mkdir()
    make(tmp_path / "refs" / "mug.png")
    spec = _reference_spec(tmp_path, "refs/mug.png")
    load_spec(spec)
    ctx = run_context(spec)
    with pytest.raises(ValidationFailed) as err:
        validate.run(ctx)
    message = str(err.value)
    assert "expect_reference_images_to_exist on column 'reference'" in message
    assert "sku='TER-001'" in message and "reference='refs/mug.png'" in message
    assert problem in message and "fix: point it at a PNG, JPEG or WebP file" in message
    assert "<_io." not in message
    with ctx.catalog.session() as s:
        [result] = s.scalars(select(ValidationResult))
        assert result.summary["success"] is False
        assert s.scalar(select(func.count()).select_from(Variant)) == 0


def test_decode_errors_name_no_python_objects():
    with pytest.raises(imaging.BadImage) as err:
        imaging.decode(b"GIF8" + bytes(range(256)))
    assert str(err.value) == "not a readable image: not a PNG, JPEG, WebP or other image format Pillow reads"


# -- a destination that cannot be written -----------------------------------------------------

def test_a_destination_that_cannot_be_written_leaves_the_asset_approved(tmp_path, darkroom_home):
    """It used to mark the asset published with no file (and end in a PermissionError
    traceback). Tests run as root, which may write read-only folders: the destination's
    campaign folder is made a file instead, which no user can write into."""
    from darkroom.catalog.tables import AssetStatus, Publication
    from darkroom.errors import StorageError

    ctx = run_context(write_spec(tmp_path))
    asset_id = approved_asset(ctx)
    dest = darkroom_home / "published" / "dam"
    dest.mkdir(parents=True)
    (dest / ctx.spec.id).write_text("not a folder")
    with pytest.raises(StorageError) as err:
        publish.run(ctx)
    message = str(err.value)
    assert "publish could not write 1 asset(s), which stay approved, not published" in message
    assert str(dest) in message and "fix the destination" in message
    with ctx.catalog.session() as s:
        assert s.get(Asset, asset_id).status == AssetStatus.approved
        assert s.scalar(select(func.count()).select_from(Publication)) == 0
    # Fixed, the publish task runs again and publishes it.
    (dest / ctx.spec.id).unlink()
    assert publish.run(ctx)["published_assets"] == 1
    with ctx.catalog.session() as s:
        assert s.get(Asset, asset_id).status == AssetStatus.published
    assert len(list((dest / ctx.spec.id).rglob("*.png"))) == 1


# -- a reference image that cannot be read when its variant is generated ------------------------

@pytest.mark.usefixtures("use_tiny_model")
@pytest.mark.parametrize("spoil, words", [
    pytest.param(lambda p: p.unlink(), "does not exist", id="deleted"),
    pytest.param(lambda p: p.write_bytes(b"GIF8" + bytes(range(256))), "changed since the variant was planned",
                 id="overwritten"),
])
def test_one_unreadable_reference_fails_only_its_own_variant_with_its_own_reason(tmp_path, darkroom_home,
                                                                                 spoil, words):
    """It failed every variant of its forward pass, and recorded its reason for the good ones."""
    def mutate(d):
        d["products"].update(reference_image_column="reference", required_columns=["sku"])
        d["generation"].update(mode="image2image", strength=0.6, steps=2, batch_size=4)

    (tmp_path / "refs").mkdir()
    rows = CSV_HEADER.replace("\n", ",reference\n")
    for i, colour in enumerate(["red", "blue", "green"], start=1):
        Image.new("RGB", (64, 64), colour).save(tmp_path / "refs" / f"TER-00{i}.png")
        rows += f"TER-00{i},coffee mug,drinkware,{colour},stoneware,18.00,refs/TER-00{i}.png\n"
    ctx = run_context(write_spec(tmp_path, mutate, rows=rows))
    validate.run(ctx)
    [batch] = plan.run(ctx)
    bad = tmp_path / "refs" / "TER-002.png"
    spoil(bad)  # between planning and generation
    counts = generate.run(ctx, batch)
    assert (counts["generated"], counts["failed"]) == (2, 1)
    with ctx.catalog.session() as s:
        assets = {a.variant.product_id: a for a in s.scalars(select(Asset))}
        statuses = {pid: a.status for pid, a in assets.items()}
        reasons = {pid: a.failure_reason for pid, a in assets.items()}
    assert statuses == {"TER-001": "generated", "TER-002": "failed", "TER-003": "generated"}
    assert reasons["TER-001"] is None and reasons["TER-003"] is None
    assert reasons["TER-002"].startswith(f"input_image: product 'TER-002', column 'reference': the reference "
                                         f"image {bad.resolve().as_uri()} ")
    assert words in reasons["TER-002"] and "fix:" in reasons["TER-002"] and "<_io." not in reasons["TER-002"]
    originals = {p.stem for p in (darkroom_home / "assets").rglob("originals/*.png")}
    assert len(originals) == 2 and assets["TER-002"].variant_id not in originals
