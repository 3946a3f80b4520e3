"""``darkroom verify`` (#14 item 5) on published files as found, stripped, tampered, and on
an image Darkroom never made: the six answers, and plainly what could not be verified."""

from __future__ import annotations

import json
import shutil
import subprocess

import numpy as np
from darkroom.provenance import watermark
from darkroom.stages.verify import verify
from darkroom_cli.app import app
from PIL import Image
from typer.testing import CliRunner

from tests.conftest import unavailable
from tests.provenance.conftest import APPROVER, NOTE


def test_verify_answers_the_six_questions_and_says_what_is_unproven(published, tmp_path):
    [jpeg, *_] = published.files("marketplace")
    runner = CliRunner()
    result = runner.invoke(app, ["verify", str(jpeg), "--json"])
    assert result.exit_code == 0, result.output
    v = json.loads(result.stdout)
    asset = next(a for a in published.assets() if a.id == v["match"]["asset_id"])
    assert v["match"]["how"] == "sha256" and v["match"]["exact"] and v["match"]["channel"] == "marketplace"
    assert v["evidence"]["credentials"]["state"] == "trusted"
    a = v["answers"]
    # 1. origin: campaign, product row (as it was used), the request (the DAG run)
    assert a["origin"]["campaign"] == "spring_tiles" and a["origin"]["product_id"] == asset.variant.product_id
    assert a["origin"]["product"]["matches_recorded"] is True and a["origin"]["product"]["row"]["sku"]
    assert a["origin"]["request"]["run_id"] == "manual__1" and a["origin"]["request"]["asset_type"] == "hero_tile"
    # 2. prompt, model, version, LoRAs, seed, parameters
    g = a["generation"]
    assert (g["prompt"], g["model"], g["model_version"], g["seed"], g["loras"]) == (
        asset.variant.prompt, asset.model_name, asset.model_version, asset.seed, [])
    assert g["parameters"]["steps"] == asset.steps and g["parameters"]["scheduler"] == asset.scheduler
    # 3. checks passed
    assert a["checks"]["product_data"]["passed"] and a["checks"]["qa_passed"]
    assert {q["check"] for q in a["checks"]["qa"]} >= {"dimensions", "provenance"}
    # 4. approver and note
    assert (a["approval"]["reviewer"], a["approval"]["note"]) == (APPROVER, NOTE)
    # 5. publications, this file among them
    assert len(a["publications"]) == 3 and [p["this_file"] for p in a["publications"]].count(True) == 1
    # 6. the exact regenerate command
    assert a["regenerate"]["exact"] == f"darkroom assets regenerate {asset.id}"
    assert v["unverified"] == []  # everything checks out
    text = runner.invoke(app, ["verify", str(jpeg)]).stdout
    for heading in ("1 origin", "2 generation", "3 checks", "4 approval", "5 publications", "6 regenerate"):
        assert heading in text
    assert "everything above is verified" in text and NOTE in text

    # Stripped with exiftool: no credentials, no XMP, no EXIF; found by watermark + phash.
    if shutil.which("exiftool") is None:
        unavailable("exiftool is not installed (Debian: libimage-exiftool-perl)")
    stripped = tmp_path / "stripped.jpg"
    shutil.copy(jpeg, stripped)
    subprocess.run(["exiftool", "-q", "-q", "-all=", "-overwrite_original", str(stripped)], check=True)
    s = verify(stripped.read_bytes(), published.ctx.catalog, published.settings, file=str(stripped))
    assert s.match is not None and s.match.asset_id == asset.id and s.match.how == "watermark + phash"
    assert s.evidence.credentials["state"] == "unsigned" and s.evidence.xmp is None
    said = " | ".join(s.unverified)
    assert "unsigned" in said and "stripped: no XMP" in said and "not byte-identical" in said
    assert s.answers["approval"]["reviewer"] == APPROVER  # the catalog still answers

    # Tampered: one byte of the picture flipped after signing.
    data = bytearray(jpeg.read_bytes())
    data[len(data) * 2 // 3] ^= 0x01
    t = verify(bytes(data), published.ctx.catalog, published.settings)
    assert t.evidence.credentials["state"] == "invalid"
    assert any(u.startswith("tampered") for u in t.unverified)
    assert t.match is not None and t.match.asset_id == asset.id and not t.match.exact


def test_an_image_darkroom_never_made_is_unknown(published, tmp_path):
    rng = np.random.default_rng(7)
    path = tmp_path / "elsewhere.png"
    Image.fromarray(rng.integers(0, 255, (400, 400, 3), dtype=np.uint8)).save(path)
    result = CliRunner().invoke(app, ["verify", str(path)])
    assert result.exit_code == 1
    assert "unknown" in result.stdout and "unsigned" in result.stdout and "not found in the catalog" in result.stdout
    v = verify(path.read_bytes(), published.ctx.catalog, published.settings)
    assert v.match is None and v.answers is None
    # Nor does its noise read as the key of any catalogued asset.
    keys = watermark.decode(Image.open(path))
    assert all(watermark.closest(keys, watermark.key_for(a.id)) > 6 for a in published.assets())
