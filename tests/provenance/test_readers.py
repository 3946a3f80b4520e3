"""What readers nobody here wrote need from our files (#14 items 1-2), on files the stages
really made: AUTOMATIC1111's and sd-prompt-reader's reading rules (reimplemented from their
source, not imported), exiftool for EXIF and XMP, MLflow for the samples and the product
dataset, Great Expectations' own report, and model digests under a ``.cache`` folder."""

from __future__ import annotations

import io
import json
import re
import shutil
import subprocess
from pathlib import Path

import piexif
import piexif.helper
import pytest
from darkroom import imaging
from darkroom.generation.models import local_model_digest
from darkroom.provenance import xmp
from darkroom.stages import track, validate
from darkroom.stages.context import RunContext
from darkroom.storage import read_uri, sha256_bytes
from PIL import Image

from tests.conftest import unavailable
from tests.provenance.conftest import APPROVER, run_and_publish, write_spec
from tests.support.campaigns import ROOT

IPTC_AI = "http://cv.iptc.org/newscodes/digitalsourcetype/trainedAlgorithmicMedia"
# A1111's infotext settings: `key: value` pairs, a value quoted when it holds separators.
A1111_PARAM = re.compile(r'\s*(\w[\w \-/]+):\s*("(?:\\.|[^\\"])+"|[^,]*)(?:,|$)')


def exiftool(*args: str) -> list[dict]:
    if shutil.which("exiftool") is None:
        unavailable("exiftool is not installed (Debian: libimage-exiftool-perl; .ci/run installs it)")
    out = subprocess.run(["exiftool", "-j", "-G1", "-a", *args], capture_output=True, text=True, check=True)
    return json.loads(out.stdout)


def a1111_geninfo(data: bytes) -> str | None:
    """AUTOMATIC1111's read_info_from_image rules: the PNG ``parameters`` text, or the EXIF
    UserComment through piexif (which must yield bytes: a BYTE-typed tag comes back as a
    tuple and A1111 fails on it), decoded by piexif's UserComment.load."""
    image = Image.open(io.BytesIO(data))
    items = dict(image.info)
    geninfo = items.pop("parameters", None)
    if "exif" in items:
        comment = piexif.load(items["exif"]).get("Exif", {}).get(piexif.ExifIFD.UserComment, b"")
        assert isinstance(comment, bytes), f"UserComment read as {type(comment).__name__}, not bytes"
        geninfo = piexif.helper.UserComment.load(comment) or geninfo
    return geninfo


def a1111_parameters(text: str) -> dict:
    """The settings A1111's parse_generation_parameters takes from the last line, and the prompt."""
    *lines, last = text.strip().split("\n")
    assert len(A1111_PARAM.findall(last)) >= 3, f"no settings line: {last!r}"
    out = {k: v.strip('"') for k, v in A1111_PARAM.findall(last)}
    negative = [i for i, line in enumerate(lines) if line.startswith("Negative prompt:")]
    out["Prompt"] = "\n".join(lines[: negative[0]] if negative else lines)
    return out


def sd_prompt_reader(data: bytes) -> dict:
    """sd-prompt-reader's rules for JPEG and WebP (image_data_reader.py, format/a1111.py)."""
    with Image.open(io.BytesIO(data)) as f:
        # Its SwarmUI probe: json.loads of EXIF 0x0110 must fail with TypeError (tag absent);
        # any other value that is not SwarmUI JSON makes it give up or crash.
        assert f.getexif().get(0x0110) is None
        assert "comment" not in f.info  # else it reads the file as Fooocus
        user_comment = piexif.load(f.info.get("exif")).get("Exif").get(piexif.ExifIFD.UserComment)
        assert "sui_image_params" not in user_comment[8:].decode("utf-16")  # must not raise either
        raw = piexif.helper.UserComment.load(user_comment)
        assert raw[0] != "{"  # else: Easy Diffusion
    steps = raw.find("\nSteps:")
    assert steps != -1
    settings = dict(re.findall(r"\s*([^:,]+):\s*([^,]+)", raw[steps:].strip()))
    return {k: settings.get(k) for k in ("Model", "Sampler", "Seed", "CFG scale", "Steps", "Size")}


def test_every_file_reads_in_a1111_sd_prompt_reader_and_exiftool(tmp_path, use_tiny_model):
    pub = run_and_publish(tmp_path, limit=1)
    [asset] = pub.assets()
    original = read_uri(asset.uri)
    derivatives = {d.channel: (d, read_uri(d.uri)) for d in pub.derivatives()}
    published = {ch: pub.files(ch)[0].read_bytes() for ch in derivatives}
    assert set(derivatives) == {"web_tile", "marketplace", "plain"}

    # AUTOMATIC1111: the original PNG, every derivative and every published (signed) file.
    for name, data in [("original", original), *[(f"{c} derivative", b) for c, (_d, b) in derivatives.items()],
                       *[(f"{c} published", b) for c, b in published.items()]]:
        params = a1111_parameters(a1111_geninfo(data))
        assert params["Seed"] == str(asset.seed) and params["Steps"] == str(asset.steps), name
        assert params["Model"] == asset.model_name and params["Size"] == f"{asset.width}x{asset.height}", name
        assert params["Prompt"] == asset.variant.prompt, name
    # sd-prompt-reader on the JPEG and WebP ones.
    for name, data in [("marketplace", published["marketplace"]), ("web_tile", published["web_tile"]),
                       ("marketplace derivative", derivatives["marketplace"][1])]:
        got = sd_prompt_reader(data)
        assert got == {"Model": asset.model_name, "Sampler": got["Sampler"], "Seed": str(asset.seed),
                       "CFG scale": str(asset.guidance), "Steps": str(asset.steps),
                       "Size": f"{asset.width}x{asset.height}"}, name
        assert got["Sampler"]

    # exiftool: UserComment in standard form (no "Non-standard format" warning), XMP everywhere.
    paths = {"original": tmp_path / "original.png"}
    paths["original"].write_bytes(original)
    for ch, (_d, data) in derivatives.items():
        paths[f"{ch} derivative"] = tmp_path / f"derivative-{ch}.{_d.uri.rsplit('.', 1)[-1]}"
        paths[f"{ch} derivative"].write_bytes(data)
    for ch in published:
        paths[f"{ch} published"] = pub.files(ch)[0]
    found = {t["SourceFile"]: t for t in exiftool(*map(str, paths.values()))}
    tags = {name: found[str(path)] for name, path in paths.items()}
    for name, t in tags.items():
        assert "Non-standard format" not in str(t.get("ExifTool:Warning", "")), name
        assert t.get("XMP-iptcExt:DigitalSourceType") == IPTC_AI, (name, sorted(t))
        assert t["XMP-dc:Description"] == asset.variant.prompt, name
        assert t["XMP-dc:Title"].startswith("spring_tiles / " + asset.variant.product_id), name
        assert t["XMP-xmp:CreatorTool"].startswith("Darkroom "), name
        assert (t["XMP-darkroom:AssetId"], t["XMP-darkroom:VariantId"]) == (asset.id, asset.variant_id), name
        assert (t["XMP-darkroom:Campaign"], t["XMP-darkroom:RunId"]) == ("spring_tiles", "manual__1"), name
        assert (t["XMP-darkroom:Model"], str(t["XMP-darkroom:ModelVersion"])) == (asset.model_name,
                                                                               asset.model_version), name
        assert int(t["XMP-darkroom:Seed"]) == asset.seed, name
        if name.endswith("published"):
            assert t["XMP-darkroom:Approval"] == "approved" and t["XMP-darkroom:ApprovedBy"] == APPROVER, name
        else:
            assert t["XMP-darkroom:Approval"] == "pending", name  # no decision when it was made
        if name != "original":
            assert "ExifIFD:UserComment" in t or name.startswith("plain"), name
    assert tags["marketplace derivative"]["XMP-darkroom:WatermarkKey"]
    assert "XMP-darkroom:Watermark" not in tags["plain derivative"]  # watermark: false


def test_xmp_swap_keeps_pixels_and_every_other_chunk():
    img = Image.effect_noise((300, 200), 40).convert("RGB")
    prov = imaging.Provenance(imaging.infotext(
        prompt="a mug", negative_prompt="", steps=4, sampler="DDIM", guidance=7.5, seed=3, width=300,
        height=200, model_hash="h", model="m"), {"asset_id": "a1", "campaign": "c"})
    approved = imaging.Provenance(prov.parameters, {**prov.darkroom, "approval": {"decision": "approved"}})
    for fmt in ("png", "jpeg", "webp"):
        data = imaging.encode(img, fmt, prov)
        swapped = xmp.replace(data, approved.xmp())
        assert xmp.parse(xmp.extract(swapped))["darkroom"]["Approval"] == "approved"
        assert xmp.parse(xmp.extract(data))["darkroom"]["Approval"] == "pending"
        assert imaging.decode(swapped).tobytes() == imaging.decode(data).tobytes(), fmt
        assert imaging.read_provenance(swapped) == imaging.read_provenance(data), fmt  # EXIF / chunks kept
        assert xmp.replace(swapped, approved.xmp()) == swapped  # replaces, never stacks


def test_a_huge_prompt_is_cut_in_exif_and_xmp_keeping_the_settings_line():
    prompt = "terracotta mug, " * 6000  # ~96 kB: over a JPEG segment
    prov = imaging.Provenance(imaging.infotext(
        prompt=prompt, negative_prompt="", steps=4, sampler="DDIM", guidance=7.5, seed=3, width=300,
        height=300, model_hash="h", model="m"), {"asset_id": "a1"})
    data = imaging.encode(Image.new("RGB", (300, 300), "white"), "jpeg", prov)
    params = a1111_parameters(a1111_geninfo(data))
    assert params["Seed"] == "3" and params["Prompt"].endswith(imaging.CUT)
    packet = xmp.parse(xmp.extract(data))
    assert packet["description"].endswith(imaging.CUT) and packet["darkroom"]["AssetId"] == "a1"


def test_xmp_refuses_entity_tricks():
    with pytest.raises(xmp.XmpError, match="DOCTYPE"):
        xmp.parse(b'<?xml version="1.0"?><!DOCTYPE x [<!ENTITY a "aaaa">]><x>&a;</x>')


def test_model_digests_count_files_under_a_cache_folder(tiny_model, tmp_path):
    """A model in the hub's cache (~/.cache/huggingface/...) hashes its files, not nothing;
    a download tool's .cache folder inside the model is still left out."""
    hub = tmp_path / ".cache" / "huggingface" / "hub"
    one = hub / "models--acme--one" / "snapshots" / "abc"
    two = hub / "models--acme--two" / "snapshots" / "def"
    shutil.copytree(tiny_model, one)
    shutil.copytree(tiny_model, two)
    config = two / "unet" / "config.json"
    config.write_text(config.read_text().replace("{", '{"_note": "another model",', 1))
    empty = sha256_bytes(b"")
    assert local_model_digest(one) not in (empty, local_model_digest(two))
    before = local_model_digest(one)
    (one / ".cache").mkdir()
    (one / ".cache" / "download.lock").write_text("tool state, not the model")
    assert local_model_digest(one) == before


def test_mlflow_samples_keep_their_chunks_and_products_are_a_dataset(tmp_path, use_tiny_model):
    import mlflow
    from darkroom.products import load_products_frame

    pub = run_and_publish(tmp_path, limit=2, publish=False)
    run_id = track.run(pub.ctx)["mlflow_run_id"]
    mlflow.set_tracking_uri(pub.settings.mlflow_tracking_uri)
    folder = Path(mlflow.artifacts.download_artifacts(run_id=run_id, artifact_path="samples",
                                                      dst_path=str(tmp_path / "dl")))
    samples = sorted(folder.glob("*.png"))
    assets = {a.id: a for a in pub.assets()}
    assert len(samples) == 2
    for path in samples:
        asset_id = path.stem.rsplit("-", 1)[-1]
        data = path.read_bytes()
        assert sha256_bytes(data) == assets[asset_id].sha256  # the original itself
        assert imaging.read_provenance(data).darkroom["asset_id"] == asset_id
    [entry] = mlflow.get_run(run_id).inputs.dataset_inputs
    assert entry.dataset.name == "spring_tiles.products"
    assert json.loads(entry.dataset.source)["uri"] == str(tmp_path / "products.csv")
    frame = load_products_frame(pub.ctx.loaded)
    assert entry.dataset.digest == mlflow.data.from_pandas(frame, source=str(tmp_path / "products.csv")).digest
    assert {t.key: t.value for t in entry.tags}.get("mlflow.data.context") == "products"


def test_the_stored_validation_report_is_great_expectations_own(tmp_path):
    from darkroom.config import Settings

    spec = write_spec(tmp_path, lambda d: d["products"].update(reference_image_column="photo"))
    csv = tmp_path / "products.csv"
    photo = shutil.copy(ROOT / "include" / "brand" / "references" / "studio_1.png", tmp_path)
    lines = csv.read_text().splitlines()
    csv.write_text("\n".join([lines[0] + ",photo", *[f"{x},{photo}" for x in lines[1:]]]) + "\n")
    ctx = RunContext.open(spec, "campaign__spring_tiles", "manual__1", settings=Settings.from_env())
    validate.run(ctx)
    page = read_uri(ctx.storage.uri_for(ctx.key("validation.html"))).decode()
    assert "Data documentation compiled by Great Expectations" in page  # GX's page template
    assert "must never be null" in page  # GX's renderer wording for expect_column_values_to_not_be_null
    # The check GX does not run, after GX's sections, in our table.
    assert page.index("Checks outside Great Expectations") > page.index("must never be null")
    assert "expect_reference_images_to_exist" in page
