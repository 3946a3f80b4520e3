"""`darkroom assets regenerate`: the recorded parameters give back the same bytes."""

from __future__ import annotations

import shutil
import subprocess
import sys
from pathlib import Path

import pytest
from darkroom.catalog.tables import Asset
from darkroom.config import Settings
from darkroom.errors import DarkroomError
from darkroom.stages import generate, plan
from darkroom.stages.context import RunContext
from darkroom.stages.reproduce import regenerate_asset
from sqlalchemy import select

CAMPAIGNS = Path(__file__).resolve().parents[2] / "include" / "campaigns"


@pytest.fixture
def generated(tmp_path, use_tiny_model):
    for f in ("summer_social.yaml", "summer_social.products.csv"):
        shutil.copy(CAMPAIGNS / f, tmp_path / f)
    ctx = RunContext.open(tmp_path / "summer_social.yaml", "campaign__summer_social",
                                 "manual__r1", {"limit": 2})
    for b in plan.run(ctx):
        generate.run(ctx, b)
    with ctx.catalog.session() as s:
        return [a.id for a in s.scalars(select(Asset).order_by(Asset.id))], ctx


def test_regenerate_gives_identical_bytes(generated):
    (asset_id, _), ctx = generated
    rep = regenerate_asset(asset_id, Settings.from_env())
    assert rep.identical and rep.new_uri != rep.original_uri
    assert Path(rep.new_uri.removeprefix("file://")).read_bytes() == Path(
        rep.original_uri.removeprefix("file://")).read_bytes()


def test_regenerate_cli_reports_identical(generated):
    (_, asset_id), _ = generated
    out = subprocess.run([str(Path(sys.executable).with_name("darkroom")), "assets", "regenerate", asset_id],
                         capture_output=True, text=True)
    assert out.returncode == 0, out.stderr
    assert "identical" in out.stdout


def test_regenerate_detects_a_changed_record(generated):
    (asset_id, _), ctx = generated
    with ctx.catalog.session() as s:
        s.get(Asset, asset_id).seed += 1  # the record no longer describes the file
    assert not regenerate_asset(asset_id, Settings.from_env()).identical


def test_unknown_asset():
    with pytest.raises(DarkroomError, match="no generated asset 'nope'"):
        regenerate_asset("nope", Settings.from_env())
