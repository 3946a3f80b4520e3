"""Hostile names and paths (issue #13, items 1-2): nothing a spec, product data or a run id
says may make Darkroom write outside its storage and destination roots, or read a file
outside the allowed folders. Each case counts the files under the test's folder before and
after, so "nothing written" is checked, not assumed.
"""

from __future__ import annotations

import http.server
import os
import shutil
import threading
from pathlib import Path

import pytest
import yaml
from darkroom.catalog.tables import Asset, PlanItem, Publication, Variant
from darkroom.config import Settings
from darkroom.errors import SpecError, StorageError, ValidationFailed
from darkroom.ids import check_key, key_part
from darkroom.spec import load_spec
from darkroom.stages import approve, publish, validate
from darkroom.stages.brand import brand_channels
from darkroom.stages.context import RunContext
from darkroom.stages.sequence import run_to_review
from darkroom.storage import FileStorage, S3Storage
from sqlalchemy import func, select

ROOT = Path(__file__).resolve().parents[2]
CAMPAIGNS = ROOT / "include" / "campaigns"
CSV_HEADER = "sku,name,category,colour,material,price_eur\n"


def _files(folder: Path) -> set[Path]:
    return {p for p in folder.rglob("*") if p.is_file() or p.is_symlink()}


def _spec(folder: Path, mutate=None, rows: str | None = None) -> Path:
    """spring_tiles in ``folder``: small, fast, its product data and terms next to it."""
    data = yaml.safe_load((CAMPAIGNS / "spring_tiles.yaml").read_text())
    shutil.copy(ROOT / "include" / "brand" / "restricted_terms.txt", folder / "terms.txt")
    data["brand"]["restricted_terms_file"] = "terms.txt"
    data["products"]["expectations"] = None  # the example suite wants TER-NNN ids: test the paths, not it
    data["generation"].update(seeds_per_variant=1, variants_per_task=4)
    data["qa"] = {"checks": {"dimensions": {}, "duplicate": {"enabled": False}}}
    (folder / "products.csv").write_text(rows or (CAMPAIGNS / "spring_tiles.products.csv").read_text())
    data["products"]["source"] = "products.csv"
    if mutate:
        mutate(data)
    path = folder / "spec.yaml"
    path.write_text(yaml.safe_dump(data, sort_keys=False))
    return path


def _ctx(spec: Path, run_id: str = "manual__1", conf=None) -> RunContext:
    return RunContext.open(spec, "campaign__spring_tiles", run_id, conf or {},
                                  settings=Settings.from_env())


# -- one safe-key rule ------------------------------------------------------------------

@pytest.mark.parametrize("name", [
    "../../../../tmp/x", "..", ".", ".hidden", "a/b", "a\\b", "/etc/passwd", "x\x00y", "",
    "ü-umlaut", "ok" * 200, "C:\\Windows", "con:stream",
])
def test_key_part_is_one_safe_unique_segment(name):
    part = key_part(name)
    check_key(part)  # a single segment that check_key accepts
    assert "/" not in part and "\\" not in part and not part.startswith(".") and len(part) <= 100
    assert part != key_part(name + "x")  # unique: the hash of the original is kept


def test_key_part_keeps_safe_names_unchanged():
    for name in ("TER-001", "web_tile", "spring_tiles", "manual__1", "a1b2c3.png", "v1.2"):
        assert key_part(name) == name


@pytest.mark.parametrize("key", ["../x", "a/../b", "a/./b", "/abs", "a//b", "a\\..\\b", "a\x00", ""])
def test_storage_refuses_keys_that_leave_the_root(tmp_path, key, s3_client, bucket):
    """The second line of defence, on file and S3 storage alike."""
    root = tmp_path / "root"
    before = _files(tmp_path)
    with pytest.raises(StorageError, match="refused to write key"):
        FileStorage(root).put(key, b"x")
    with pytest.raises(StorageError, match="refused to write key"):
        S3Storage(bucket, "prefix", client=s3_client).put(key, b"x")
    assert _files(tmp_path) == before
    assert s3_client.list_objects_v2(Bucket=bucket).get("KeyCount", 0) == 0


def test_file_storage_refuses_a_symlinked_folder_that_leads_out(tmp_path):
    root, outside = tmp_path / "root", tmp_path / "outside"
    root.mkdir()
    outside.mkdir()
    os.symlink(outside, root / "campaign")
    with pytest.raises(StorageError, match="outside the storage root"):
        FileStorage(root).put("campaign/run/x.png", b"x")
    assert not any(outside.rglob("*"))


# -- names from product data and run ids -------------------------------------------------

@pytest.mark.usefixtures("use_tiny_model")
@pytest.mark.parametrize("product_id", ["../../../../escaped/x", "/tmp/darkroom-escaped-x", "..", "a\\..\\..\\b"])
def test_a_hostile_product_id_publishes_inside_the_destination(tmp_path, darkroom_home, product_id):
    rows = CSV_HEADER + f'"{product_id}",coffee mug,drinkware,terracotta,stoneware,18.00\n'
    spec = _spec(tmp_path, rows=rows)
    ctx = _ctx(spec, run_id="..")  # Airflow's run id pattern allows "..": it must stay one segment
    run_to_review(ctx)
    approve.settle_undecided(ctx, "approve", "tester", "")
    summary = publish.run(ctx)
    assert summary["published_assets"] == 1 and summary["files"] == 2

    dest = darkroom_home / "published" / "dam"
    assets_root = darkroom_home / "assets"
    for path in _files(tmp_path):  # a traversal would have made an "escaped" folder somewhere
        assert path.resolve().is_relative_to(tmp_path) and "escaped" not in path.parent.parts, path
    assert not Path("/tmp/darkroom-escaped-x").exists()
    with ctx.catalog.session() as s:
        pubs = list(s.scalars(select(Publication)))
        assets = list(s.scalars(select(Asset)))
        variant = s.scalars(select(Variant)).one()
        assert variant.product_id == product_id  # the catalog keeps the real name
    assert len(pubs) == 2
    for pub in pubs:
        assert Path(pub.uri.removeprefix("file://")).resolve().is_relative_to(dest)
    for a in assets:
        assert Path(a.uri.removeprefix("file://")).resolve().is_relative_to(assets_root)
    manifest = next(dest.rglob("manifests/*.json")).read_text()
    assert product_id.replace("\\", "\\\\") in manifest


# -- names from the spec ------------------------------------------------------------------

@pytest.mark.parametrize("mutate, field, words", [
    pytest.param(lambda d: d["channels"].update({"../x": {"width": 64, "height": 64}}),
                 "channels", "channel name '../x' is not allowed", id="channel-dotdot"),
    pytest.param(lambda d: d["channels"].update({"a/b": {"width": 64, "height": 64}}),
                 "channels", "channel name 'a/b' is not allowed", id="channel-slash"),
    pytest.param(lambda d: d.update(publish=[{"kind": "folder", "path": "../../etc"}]),
                 "publish.0.path", "must not contain '..' segments", id="publish-relative-dotdot"),
    pytest.param(lambda d: d.update(publish=[{"kind": "folder", "path": "/srv/dam/../../etc"}]),
                 "publish.0.path", "must not contain '..' segments", id="publish-absolute-dotdot"),
    pytest.param(lambda d: d.update(publish=[{"kind": "s3", "bucket": "dam-bucket", "prefix": "a/../../b"}]),
                 "publish.0.prefix", "must not contain '..' segments", id="s3-prefix-dotdot"),
    pytest.param(lambda d: d["products"].update(source="/etc/passwd.csv"),
                 "products.source", "outside the allowed folders", id="product-source-outside"),
    pytest.param(lambda d: d["brand"].update(restricted_terms_file="/etc/passwd"),
                 "brand.restricted_terms_file", "outside the allowed folders", id="terms-outside"),
])
def test_spec_check_refuses_names_and_paths_that_leave_their_folder(tmp_path, mutate, field, words):
    spec = _spec(tmp_path, mutate)
    with pytest.raises(SpecError) as err:
        load_spec(spec)
    message = str(err.value)
    assert str(spec) in message and f"`{field}" in message and words in message
    assert "fix" in message


def _refused_before_any_work(spec: Path, match: str) -> None:
    """validate_inputs refuses the run; no variant, plan item or asset exists afterwards."""
    ctx = _ctx(spec)
    with pytest.raises(ValidationFailed, match=match):
        validate.run(ctx)
    with ctx.catalog.session() as s:
        for table in (Variant, PlanItem, Asset):
            assert s.scalar(select(func.count()).select_from(table)) == 0


@pytest.mark.parametrize("mutate, match", [
    pytest.param(lambda d: d.update(publish=[{"kind": "folder", "path": "/tmp"}]),
                 r"publish.* '/tmp'.*outside the allowed folders.*DARKROOM_PUBLISH_ROOTS", id="publish-absolute"),
    pytest.param(lambda d: d["channels"]["marketplace"]["logo"].update(path="/etc/hostname"),
                 r"channels.marketplace.logo.path.*outside the allowed folders", id="logo-outside"),
    pytest.param(lambda d: d["channels"]["web_tile"].update(
        text={"text": {"en": "Hi"}, "font": "../../../../../etc/hostname"}),
                 r"channels.web_tile.text.font.*outside the allowed folders", id="font-dotdot"),
    pytest.param(lambda d: d.update(qa={"checks": {"brand_palette": {"params": {"references": "/etc"}}}}),
                 r"qa.checks.brand_palette.params.references.*outside the allowed folders", id="brand-refs-outside"),
])
def test_brand_files_and_publish_folders_are_confined_before_any_work(tmp_path, darkroom_home, mutate, match):
    spec = _spec(tmp_path, mutate)
    load_spec(spec)  # a valid spec: the check needs the machine's roots, so it runs at validation
    before = _files(tmp_path)
    _refused_before_any_work(spec, match)
    # Only the catalog itself may have appeared (the run row that records the failure).
    assert {p for p in _files(tmp_path) - before if not p.name.startswith("catalog.db")} == set()


def test_a_publish_root_allows_an_absolute_dam_folder(tmp_path, darkroom_home, monkeypatch):
    dam = tmp_path / "dam"
    monkeypatch.setenv("DARKROOM_PUBLISH_ROOTS", str(dam))
    spec = _spec(tmp_path, lambda d: d.update(publish=[{"kind": "folder", "path": str(dam / "drop")}]))
    ctx = _ctx(spec)

    assert publish.destination_root(ctx, ctx.spec.publish[0]) == (dam / "drop").resolve()


def test_a_brand_file_next_to_the_spec_is_allowed(tmp_path, darkroom_home):
    shutil.copy(ROOT / "include" / "brand" / "logo.png", tmp_path / "our-logo.png")
    spec = _spec(tmp_path, lambda d: d["channels"]["marketplace"]["logo"].update(path="our-logo.png"))
    channels = brand_channels(_ctx(spec))
    assert channels["marketplace"].logo.path == str((tmp_path / "our-logo.png").resolve())


# -- reference images named by product data ----------------------------------------------

class _Counter(http.server.BaseHTTPRequestHandler):
    hits: list[str] = []

    def do_HEAD(self):  # noqa: N802 (http.server's names)
        _Counter.hits.append(self.path)
        self.send_response(200)
        self.end_headers()

    do_GET = do_HEAD

    def log_message(self, *args):
        pass


@pytest.fixture
def listener():
    """An HTTP server on loopback that counts every request it gets."""
    _Counter.hits = []
    server = http.server.ThreadingHTTPServer(("127.0.0.1", 0), _Counter)
    threading.Thread(target=server.serve_forever, daemon=True).start()
    yield f"http://127.0.0.1:{server.server_address[1]}"
    server.shutdown()


def _image2image(d):
    d["products"]["reference_image_column"] = "reference"
    d["generation"]["mode"] = "image2image"


@pytest.mark.parametrize("reference, problem", [
    pytest.param("/etc/hostname", "outside the allowed folders", id="absolute-outside"),
    pytest.param("../../../../../../etc/hostname", "outside the allowed folders", id="dotdot"),
    pytest.param("file:///etc/hostname", "outside the allowed folders", id="file-uri"),
    pytest.param("s3://someone-elses-bucket/x.png", "not under an s3:// prefix", id="unlisted-bucket"),
    pytest.param("HTTP", "http(s) URLs are not fetched", id="http"),
    pytest.param("gopher://127.0.0.1/x", "unsupported scheme", id="other-scheme"),
])
def test_reference_images_outside_the_roots_are_refused_unread(tmp_path, darkroom_home, listener,
                                                               reference, problem):
    reference = f"{listener}/ref.png" if reference == "HTTP" else reference
    rows = (CSV_HEADER.replace("\n", ",reference\n")
            + f"TER-001,coffee mug,drinkware,terracotta,stoneware,18.00,{reference}\n")
    spec = _spec(tmp_path, _image2image, rows=rows)
    _refused_before_any_work(spec, "product data failed validation")
    ctx = _ctx(spec)
    with ctx.catalog.session() as s:
        from darkroom.catalog.tables import ValidationResult

        [result] = s.scalars(select(ValidationResult))
        [failure] = [f for f in result.summary["failures"] if f["expectation"] == "expect_reference_images_to_exist"]
        assert problem in failure["sample"][0]["problem"]
    assert _Counter.hits == []  # never probed


def test_a_reference_next_to_the_product_data_is_allowed(tmp_path, darkroom_home):
    (tmp_path / "refs").mkdir()
    shutil.copy(ROOT / "include" / "brand" / "references" / "studio_1.png", tmp_path / "refs" / "mug.png")
    ctx = _ctx(_spec(tmp_path, _image2image))
    assert ctx.loaded.image_uri("refs/mug.png", ctx.settings) == (tmp_path / "refs" / "mug.png").resolve().as_uri()
