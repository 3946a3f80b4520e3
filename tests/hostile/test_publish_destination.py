"""A publish destination that cannot be written (issue #13, items 6 and 7).

It used to end in a PermissionError traceback with the assets marked published and their
files missing. Now the publish task fails naming the destination and the fix, every asset
it could not write stays approved (its claim released), and the retry, once the destination
is fixed, publishes every file exactly once: what reached the good destination is checked,
not copied again.

The destination is made unwritable the way a deployment meets it (:func:`unwritable`). Tests
may run as root, which writes into a folder whatever its mode, so as root the folder is made
immutable (``chattr +i`` binds root too), and where the file system has no such attribute a
file takes the folder's place.
"""

from __future__ import annotations

import contextlib
import json
import os
import shutil
import subprocess
import sys
from collections.abc import Iterator
from pathlib import Path

import pytest
from darkroom.catalog import Catalog
from darkroom.catalog.tables import Asset, AssetStatus, Derivative, Publication, Run
from darkroom.config import Settings
from darkroom.errors import StorageError
from darkroom.stages import publish
from darkroom.stages.context import RunContext
from sqlalchemy import func, select

from tests.hostile.helpers import ROOT, approved_asset, files, run_context, write_spec

DARKROOM = str(Path(sys.executable).with_name("darkroom"))
IMAGES = (".webp", ".jpeg", ".jpg", ".png")


@contextlib.contextmanager
def unwritable(folder: Path) -> Iterator[str]:
    """``folder``, made a folder this process cannot write into until the block ends (the
    fix); yield how it was made so."""
    folder.mkdir(parents=True, exist_ok=True)
    if os.geteuid() != 0:
        folder.chmod(0o555)
        try:
            yield "read-only folder (mode 555)"
        finally:
            folder.chmod(0o755)
        return
    if shutil.which("chattr") and subprocess.run(["chattr", "+i", str(folder)],
                                                 capture_output=True).returncode == 0:
        try:
            yield "immutable folder (chattr +i)"
        finally:
            subprocess.run(["chattr", "-i", str(folder)], check=True)
        return
    folder.rmdir()
    folder.write_text("a file where the folder should be")
    try:
        yield "a file in the folder's place"
    finally:
        folder.unlink()
        folder.mkdir()


def _images(folder: Path) -> list[Path]:
    return sorted(p for p in files(folder) if p.suffix in IMAGES)


@pytest.mark.e2e
def test_an_unwritable_destination_fails_the_run_and_the_retry_publishes_each_file_once(
        tmp_path, tiny_model, monkeypatch):
    home = tmp_path / "home"
    dam, shop = home / "published" / "dam", home / "published" / "shop"

    def two_destinations(data):
        data["channels"]["marketplace"].pop("logo", None)  # the example's logo is not in tmp
        data["publish"] = [{"kind": "folder", "path": "published/dam"},
                           {"kind": "folder", "path": "published/shop"}]

    spec = write_spec(tmp_path, two_destinations)
    env = {k: v for k, v in os.environ.items() if not k.startswith(("AIRFLOW", "DARKROOM_", "MLFLOW_"))}
    env.update(DARKROOM_HOME=str(home), DARKROOM_TINY_MODEL=str(tiny_model), PYTHONUNBUFFERED="1")
    with unwritable(shop) as how:
        proc = subprocess.run([DARKROOM, "run", str(spec), "--approve-all", "--conf", '{"limit": 3}'],
                              env=env, capture_output=True, text=True, timeout=900, cwd=ROOT)
        out = proc.stdout + proc.stderr
        assert proc.returncode == 1, f"{how}:\n{out[-4000:]}"
        assert "publish could not write 3 asset(s), which stay approved, not published" in proc.stderr, out
        assert f"first: {shop.as_uri()}/spring_tiles/" in proc.stderr and "fix the destination" in proc.stderr
        assert "Failed: publish" in proc.stderr and "Traceback" not in out

    # The claims are released: approved, not published; only the good destination has files.
    catalog = Catalog(f"sqlite:///{home / 'catalog.db'}")
    with catalog.session() as s:
        run = s.scalars(select(Run)).one()
        assert run.state != "published" and run.manifest_uri is None
        assert list(s.scalars(select(Asset.status))) == [AssetStatus.approved] * 3
        assert {p.destination for p in s.scalars(select(Publication))} == {dam.as_uri()}
        derivatives = s.scalar(select(func.count()).select_from(Derivative))
    assert derivatives == 6  # 3 assets, 2 channels
    assert len(_images(dam)) == 6 and files(shop) == set()
    copied_once = {p: p.stat().st_mtime_ns for p in _images(dam)}

    # Fixed, the publish task runs again, as Airflow retries it: in the same run.
    monkeypatch.setenv("DARKROOM_HOME", str(home))
    ctx = RunContext.open(spec, "campaign__spring_tiles", run.run_id, {}, settings=Settings.from_env())
    summary = publish.run(ctx)
    assert (summary["published_assets"], summary["files"]) == (3, 12)
    assert (summary["copied"], summary["verified"]) == (6, 6)  # the 6 in dam are checked, not copied
    with catalog.session() as s:
        assert s.scalars(select(Run)).one().state == "published"
        assert list(s.scalars(select(Asset.status))) == [AssetStatus.published] * 3
        pairs = s.execute(select(Publication.derivative_id, Publication.destination)).all()
        assert len(pairs) == len(set(pairs)) == 12
    assert {p: p.stat().st_mtime_ns for p in _images(dam)} == copied_once
    assert len(_images(shop)) == 6
    for folder in (dam, shop):
        assert not any(p.name.startswith(".tmp-") for p in files(folder))
        (manifest,) = (folder / "spring_tiles" / "manifests").glob("*.json")
        rows = json.loads(manifest.read_text())["files"]
        assert len(rows) == len({r["destination_uri"] for r in rows}) == 12


def test_a_manifest_that_cannot_be_written_is_a_message_and_the_retry_writes_it(tmp_path, darkroom_home):
    """Every file written, the manifest's folder unwritable: a StorageError naming the manifest
    and the fix (it was an OSError traceback); the retry checks the file and writes the manifest."""
    ctx = run_context(write_spec(tmp_path))
    asset_id = approved_asset(ctx)
    dest = darkroom_home / "published" / "dam"
    with unwritable(dest / ctx.spec.id / "manifests") as how:
        with pytest.raises(StorageError) as err:
            publish.run(ctx)
        message = str(err.value)
        assert "publish wrote every file but could not write the manifest" in message, how
        assert f"{dest.as_uri()}/spring_tiles/manifests/" in message and "run the publish task again" in message
    summary = publish.run(ctx)
    assert (summary["files"], summary["copied"], summary["verified"]) == (1, 0, 1)
    with ctx.catalog.session() as s:
        assert s.get(Asset, asset_id).status == AssetStatus.published
        assert s.scalar(select(func.count()).select_from(Publication)) == 1
    assert len(list((dest / ctx.spec.id / "manifests").glob("*.csv"))) == 1
