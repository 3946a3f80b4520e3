"""Image-to-image and inpainting from each product's reference image and mask, through the
generate stage on the tiny pipeline: planning, identity, provenance, regeneration, errors."""

from __future__ import annotations

import shutil
from pathlib import Path

import pytest
import yaml
from darkroom import imaging
from darkroom.catalog.tables import Asset, AssetStatus
from darkroom.config import Settings
from darkroom.errors import SpecError, ValidationFailed
from darkroom.spec import load_spec
from darkroom.stages import generate, plan, validate
from darkroom.stages.context import RunContext
from darkroom.stages.reproduce import regenerate_asset
from darkroom.storage import read_uri
from PIL import Image, ImageDraw
from sqlalchemy import select

from tests.support.generation import generate_once

ROOT = Path(__file__).resolve().parents[2]
CAMPAIGNS = ROOT / "include" / "campaigns"


def _picture(path: Path, colour: str, shape: str = "ellipse") -> str:
    img = Image.new("RGB", (96, 96), "white")
    draw = ImageDraw.Draw(img)
    getattr(draw, shape)((16, 16, 80, 80), fill=colour)
    img.save(path)
    return path.name


def _mask(path: Path, box) -> str:
    img = Image.new("L", (96, 96), 0)
    ImageDraw.Draw(img).rectangle(box, fill=255)  # white = repaint
    img.save(path)
    return path.name


def _campaign(tmp_path: Path, mode: str, **generation) -> Path:
    """Two products with a reference image (and a mask), one seed each, 2 steps at 64 px."""
    rows = ["sku,name,category,colour,material,price_eur,reference,mask"]
    for sku, colour, box in (("TER-001", "red", (0, 0, 48, 96)), ("TER-002", "blue", (48, 0, 96, 96))):
        ref = _picture(tmp_path / f"{sku}.png", colour)
        mask = _mask(tmp_path / f"{sku}.mask.png", box)
        rows.append(f"{sku},mug,drinkware,{colour},stoneware,10.00,{ref},{mask}")
    (tmp_path / "products.csv").write_text("\n".join(rows) + "\n")
    data = yaml.safe_load((CAMPAIGNS / "spring_tiles.yaml").read_text())
    data["brand"]["restricted_terms_file"] = str(ROOT / "include/brand/restricted_terms.txt")
    data["products"] = {"source": "products.csv", "id_column": "sku", "reference_image_column": "reference",
                        "mask_image_column": "mask"}
    data["generation"].update(mode=mode, strength=0.6, steps=2, seeds_per_variant=1, batch_size=2,
                              **generation)
    spec = tmp_path / "campaign.yaml"
    spec.write_text(yaml.safe_dump(data))
    return spec


def _generate(spec: Path, run_id: str = "manual__1"):
    return generate_once(spec, run_id)


@pytest.mark.parametrize("mode", ["image2image", "inpaint"])
def test_modes_generate_from_the_reference_and_record_it(mode, tmp_path, use_tiny_model):
    spec = _campaign(tmp_path, mode)
    ctx, counts, assets = _generate(spec)
    assert counts["generated"] == 2 and not counts.get("failed")
    for pid, asset in assets.items():
        assert asset.status == AssetStatus.generated
        params = asset.variant.params
        assert params["mode"] == mode and params["strength"] == 0.6
        assert params["reference"]["uri"].endswith(f"{pid}.png")
        assert ("mask" in params) == (mode == "inpaint")
        data = read_uri(asset.uri)
        prov = imaging.read_provenance(data)
        assert "Denoising strength: 0.6" in prov.parameters and f"Mode: {mode}" in prov.parameters
        assert prov.darkroom["reference"]["sha256"] == params["reference"]["sha256"]
        assert imaging.decode(data).size == (64, 64)


def test_the_reference_image_decides_the_picture(tmp_path, use_tiny_model):
    """Same prompt, seed and model; only the reference differs (then only the mask)."""
    spec = _campaign(tmp_path, "image2image")
    _, _, first = _generate(spec, "manual__a")
    # Swap product 1's picture for a different one: a new variant (its checksum is identity).
    _picture(tmp_path / "TER-001.png", "green", "rectangle")
    _, counts, second = _generate(spec, "manual__b")
    assert counts["generated"] == 1 and counts["skipped"] == 1
    assert second["TER-001"].variant_id != first["TER-001"].variant_id
    assert second["TER-001"].sha256 != first["TER-001"].sha256
    assert second["TER-002"].id == first["TER-002"].id


def test_inpaint_mask_decides_the_picture(tmp_path, use_tiny_model):
    spec = _campaign(tmp_path, "inpaint")
    _, _, first = _generate(spec, "manual__a")
    _mask(tmp_path / "TER-001.mask.png", (0, 0, 96, 20))
    _, _, second = _generate(spec, "manual__b")
    assert second["TER-001"].sha256 != first["TER-001"].sha256


def test_a_reference_changed_after_planning_fails_that_variant_only(tmp_path, use_tiny_model):
    spec = _campaign(tmp_path, "image2image")
    ctx = RunContext.open(spec, "campaign__spring_tiles", "manual__1", {})
    validate.run(ctx)
    (batch,) = plan.run(ctx)
    _picture(tmp_path / "TER-002.png", "black")  # edited between planning and generation
    counts = generate.run(ctx, batch)
    assert counts["failed"] == 1 and counts["generated"] == 1  # one pass, with its other variant
    with ctx.catalog.session() as s:
        assets = {a.variant.product_id: a for a in s.scalars(select(Asset))}
        assert assets["TER-001"].status == AssetStatus.generated
        assert assets["TER-002"].failure_reason.startswith(
            "input_image: product 'TER-002', column 'reference': the reference image ")
        assert "changed since the variant was planned" in assets["TER-002"].failure_reason


@pytest.mark.parametrize("mode", ["image2image", "inpaint"])
def test_regenerate_reproduces_an_image2image_asset_bit_for_bit(mode, tmp_path, use_tiny_model):
    spec = _campaign(tmp_path, mode)
    _, _, assets = _generate(spec)
    repro = regenerate_asset(assets["TER-002"].id, Settings.from_env(), device="cpu")
    assert repro.identical, (repro.original_sha256, repro.new_sha256)


def test_a_product_without_a_reference_is_named(tmp_path, use_tiny_model):
    spec = _campaign(tmp_path, "image2image")
    csv = tmp_path / "products.csv"
    csv.write_text(csv.read_text().replace("TER-002.png", ""))
    ctx = RunContext.open(spec, "campaign__spring_tiles", "manual__1", {})
    with pytest.raises(ValidationFailed, match=r"product TER-002 has no reference image \(column 'reference'"):
        plan.run(ctx)


@pytest.mark.parametrize("change,match", [
    (lambda d: d["products"].pop("reference_image_column"),
     r"generation.mode: image2image starts from each product's reference image.*fix: name"),
    (lambda d: (d["generation"].update(mode="inpaint"), d["products"].pop("mask_image_column")),
     r"inpaint needs a mask per product; fix: set products.mask_image_column"),
    (lambda d: d["generation"].update(backend="http"),
     r"mode: image2image run on the local diffusers backend only, but backend 'http'"),
    (lambda d: d["generation"].update(strength=0),
     r"generation.strength"),
], ids=["no-reference-column", "no-mask-column", "remote-backend", "zero-strength"])
def test_spec_errors_name_the_field_and_fix(change, match, tmp_path):
    spec = _campaign(tmp_path, "image2image")
    data = yaml.safe_load(spec.read_text())
    change(data)
    spec.write_text(yaml.safe_dump(data))
    with pytest.raises(SpecError, match=match):
        load_spec(spec)


def test_text_to_image_variant_ids_do_not_change(tmp_path, use_tiny_model):
    """The new fields join a variant's identity only when used: existing catalogs keep
    their variants (and skip them on the next run)."""
    from darkroom import prompts

    shutil.copy(CAMPAIGNS / "spring_tiles.products.csv", tmp_path / "p.csv")
    data = yaml.safe_load((CAMPAIGNS / "spring_tiles.yaml").read_text())
    data["brand"]["restricted_terms_file"] = str(ROOT / "include/brand/restricted_terms.txt")
    data["products"] = {"source": "p.csv", "id_column": "sku"}
    (tmp_path / "s.yaml").write_text(yaml.safe_dump(data))
    params = prompts.pixel_params(load_spec(tmp_path / "s.yaml"), "hero_tile")
    assert params == {"width": 64, "height": 64, "steps": 4, "guidance": 7.5, "scheduler": "ddim"}
