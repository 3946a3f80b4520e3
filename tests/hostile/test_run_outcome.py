"""How a run ends, and what the CLI prints of user values (issue #13, items 6 and 7).

A run in which every asset failed used to exit 0 with "success" and nothing to review; it now
ends failed at ``track`` (after the contact sheet and the MLflow run are kept), the reasons
counted, and its catalog run says ``failed``. Square brackets in values (product ids, names in
prompts, the id pattern in an error) used to be read as Rich markup: ``[bold red]`` vanished,
``[/]`` could raise a MarkupError. The CLI's consoles print no markup at all, so every value
comes out as it was written.
"""

from __future__ import annotations

import os
import subprocess
import sys
from pathlib import Path

import pytest
import yaml
from darkroom.catalog import Catalog
from darkroom.catalog.tables import Asset, AssetStatus, Publication, Run, Variant
from darkroom.config import Settings
from darkroom.errors import RunFailed
from darkroom.stages import generate, plan, postprocess, qa, track, validate
from sqlalchemy import func, select

from tests.hostile.helpers import CSV_HEADER, ROOT, run_context, write_spec

DARKROOM = str(Path(sys.executable).with_name("darkroom"))
#: Markup in a product id and in a name that reaches the prompt; "[/]" alone closes nothing,
#: which Rich's markup parser refuses with a MarkupError.
SKU, NAME = "[red]TER-1[/]", "[bold red]mug[/] [/]"
ROWS = CSV_HEADER + f'"{SKU}","{NAME}",drinkware,sand,stoneware,12.00\nTER-002,cup,drinkware,sand,stoneware,9.00\n'


def _hopeless(data: dict) -> None:
    """QA no image passes: not_blank wants a pixel spread no 8-bit image has."""
    data["qa"]["checks"]["not_blank"] = {"threshold": 1000.0}
    data["channels"]["marketplace"].pop("logo", None)  # the example's logo is not in tmp


@pytest.mark.usefixtures("use_tiny_model")
def test_a_run_whose_every_asset_failed_ends_failed_with_the_reasons(tmp_path):
    spec = write_spec(tmp_path, _hopeless, ROWS)
    ctx = run_context(spec, conf={"limit": 2})
    validate.run(ctx)
    (batch,) = plan.run(ctx)
    generate.run(ctx, batch)
    qa.run(ctx, batch)
    postprocess.run(ctx, batch)
    with pytest.raises(RunFailed) as failed:
        track.run(ctx)
    message = str(failed.value)
    assert f"{spec}: all 2 assets of run manual__1 failed" in message
    assert "2 x failed QA: not_blank" in message and "QA threshold" in message
    with Catalog(Settings.from_env().catalog_url).session() as s:
        run = s.scalars(select(Run)).one()
        assert run.state == "failed" and run.summary["ended"] == message
        assert run.mlflow_run_id and run.contact_sheet_uri  # kept: they show every asset
        assert set(s.scalars(select(Asset.status))) == {AssetStatus.qa_failed}
        assert s.scalar(select(func.count()).select_from(Publication)) == 0


def _env(home: Path, **extra) -> dict:
    env = {k: v for k, v in os.environ.items() if not k.startswith(("AIRFLOW", "DARKROOM_", "MLFLOW_"))}
    env.update(DARKROOM_HOME=str(home), COLUMNS="300", PYTHONUNBUFFERED="1", **extra)
    return env


def _darkroom(home: Path, *args: str, **env) -> subprocess.CompletedProcess:
    return subprocess.run([DARKROOM, *args], env=_env(home, **env), capture_output=True, text=True,
                          timeout=900, cwd=ROOT)


@pytest.mark.e2e
def test_darkroom_run_whose_every_asset_failed_exits_1_and_prints_values_as_written(tmp_path, tiny_model):
    spec = write_spec(tmp_path, _hopeless, ROWS)
    home = tmp_path / "home"
    proc = _darkroom(home, "run", str(spec), "--approve-all", "--conf", '{"limit": 2}',
                     DARKROOM_TINY_MODEL=str(tiny_model))
    out = proc.stdout + proc.stderr
    assert proc.returncode == 1, out[-4000:]
    assert ": failed" in proc.stdout and "all 2 assets of run" in proc.stderr, out[-4000:]
    assert "2 x failed QA: not_blank" in proc.stderr and "Failed: track" in proc.stderr
    assert "Traceback" not in out
    with Catalog(f"sqlite:///{home / 'catalog.db'}").session() as s:
        run = s.scalars(select(Run)).one()
        assert run.state == "failed"
        asset_id = s.scalar(select(Asset.id).join(Variant, Asset.variant_id == Variant.id)
                            .where(Variant.product_id == SKU))
    # The values print as written: the id in the assets table, the name in the prompt.
    search = _darkroom(home, "assets", "search", "--campaign", "spring_tiles")
    assert search.returncode == 0 and SKU in search.stdout, search.stdout + search.stderr
    show = _darkroom(home, "review", "show", asset_id)
    assert show.returncode == 0, show.stderr
    assert f"product   {SKU} hero_tile" in show.stdout and NAME in show.stdout, show.stdout


def test_spec_errors_print_brackets_as_written(tmp_path, darkroom_home):
    spec = tmp_path / "spec.yaml"
    data = yaml.safe_load(write_spec(tmp_path).read_text())
    data["id"] = "[red]x[/]"
    spec.write_text(yaml.safe_dump(data))
    proc = _darkroom(darkroom_home, "spec", "check", str(spec))
    assert proc.returncode == 1, proc.stdout + proc.stderr
    assert "[red]x[/]" in proc.stderr and r"^[a-z][a-z0-9_]{1,62}$" in proc.stderr, proc.stderr
    assert "Traceback" not in proc.stderr
