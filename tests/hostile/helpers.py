"""What the hostile-input tests share: a small valid spec to spoil, and file counting."""

from __future__ import annotations

import io
import shutil
from pathlib import Path

import yaml
from darkroom.catalog import reviews as review
from darkroom.catalog.tables import Asset, AssetStatus, Derivative, Variant
from darkroom.config import Settings
from darkroom.stages.context import RunContext
from PIL import Image

ROOT = Path(__file__).resolve().parents[2]
CAMPAIGNS = ROOT / "include" / "campaigns"
CSV_HEADER = "sku,name,category,colour,material,price_eur\n"


def files(folder: Path) -> set[Path]:
    return {p for p in folder.rglob("*") if p.is_file() or p.is_symlink()}


def spec_data(folder: Path, rows: str | None = None) -> dict:
    """spring_tiles as a dict, its product data and terms copied into ``folder``."""
    data = yaml.safe_load((CAMPAIGNS / "spring_tiles.yaml").read_text())
    shutil.copy(ROOT / "include" / "brand" / "restricted_terms.txt", folder / "terms.txt")
    data["brand"]["restricted_terms_file"] = "terms.txt"
    data["products"]["expectations"] = None  # the example suite wants TER-NNN ids
    data["generation"].update(seeds_per_variant=1, variants_per_task=4)
    data["qa"] = {"checks": {"dimensions": {}, "duplicate": {"enabled": False}}}
    (folder / "products.csv").write_text(rows or (CAMPAIGNS / "spring_tiles.products.csv").read_text())
    data["products"]["source"] = "products.csv"
    return data


def write_spec(folder: Path, mutate=None, rows: str | None = None) -> Path:
    data = spec_data(folder, rows)
    if mutate:
        mutate(data)
    path = folder / "spec.yaml"
    path.write_text(yaml.safe_dump(data, sort_keys=False, allow_unicode=True))
    return path


def run_context(spec: Path, run_id: str = "manual__1", conf=None) -> RunContext:
    return RunContext.open(spec, "campaign__spring_tiles", run_id, conf or {},
                                  settings=Settings.from_env())


def approved_asset(ctx) -> str:
    """One approved asset with one derivative (web_tile), made in the catalog (no model)."""
    buf = io.BytesIO()
    Image.new("RGB", (8, 8), (200, 90, 60)).save(buf, format="PNG")
    run_pk = ctx.run_pk
    with ctx.catalog.session() as s:
        s.add(Variant(id="v0", campaign_id=ctx.spec.id, product_id="TER-001", asset_type="hero_tile",
                      channels=["web_tile"], template_version="t", prompt="a mug", seed=1, params={}))
        s.flush()
        s.add(Asset(id="asset0", variant_id="v0", run_pk=run_pk, status=AssetStatus.qa_passed,
                    uri="file:///unused.png", model_name="tiny-sd", model_version="abc",
                    scheduler="ddim", steps=2, guidance=7.5, seed=1, backend="test"))
        stored = ctx.storage.put(ctx.key("derivatives", "web_tile", "v0.png"), buf.getvalue(), "image/png")
        s.add(Derivative(asset_id="asset0", channel="web_tile", uri=stored.uri, sha256=stored.sha256,
                         width=8, height=8, format="png", bytes=stored.bytes))
    review.decide(ctx.catalog, "asset0", "approve", "ann", "ok")
    return "asset0"
