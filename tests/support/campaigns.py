"""Campaign specs for tests: copies of the example campaigns, changed, in a tmp folder."""

from __future__ import annotations

import csv
import io
import shutil
from pathlib import Path

import pandas as pd
import yaml
from darkroom.config import Settings
from darkroom.stages.context import RunContext

ROOT = Path(__file__).resolve().parents[2]
CAMPAIGNS = ROOT / "include" / "campaigns"
CSV = CAMPAIGNS / "spring_tiles.products.csv"


def make_spec(tmp_path: Path, **products) -> Path:
    """spring_tiles with its products section changed; restricted terms copied alongside."""
    data = yaml.safe_load((CAMPAIGNS / "spring_tiles.yaml").read_text())
    data["products"] = {**data["products"], **products}
    data["brand"]["restricted_terms_file"] = str(CAMPAIGNS.parent / "brand" / "restricted_terms.txt")
    path = tmp_path / "campaign.yaml"
    path.write_text(yaml.safe_dump(data))
    return path



#: Lands in the prompt through the product's colour and name: must come out escaped.
XSS = '<img src=x onerror="window.__xss=1">'
XSS_NAME = "<script>window.__xss=2</script> mug"


def small_spec(tmp_path: Path, mutate=None, rows: str | None = None) -> Path:
    """A copy of spring_tiles in tmp_path, small and fast, optionally changed."""
    data = yaml.safe_load((CAMPAIGNS / "spring_tiles.yaml").read_text())
    data["brand"]["restricted_terms_file"] = str(ROOT / "include" / "brand" / "restricted_terms.txt")
    data["products"]["expectations"] = str(ROOT / "include" / "expectations" / "spring_tiles.json")
    data["generation"].update(seeds_per_variant=1, variants_per_task=2)
    if mutate:
        mutate(data)
    csv = tmp_path / "products.csv"
    if rows is None:
        shutil.copy(CAMPAIGNS / "spring_tiles.products.csv", csv)
    else:
        csv.write_text(rows)
    data["products"]["source"] = str(csv)
    path = tmp_path / "spec.yaml"
    path.write_text(yaml.safe_dump(data))
    return path


def stage_ctx(spec: Path, settings: Settings, conf=None, run_id="manual__1", s3=None) -> RunContext:
    factory = (lambda _conn, _endpoint: s3) if s3 is not None else None
    return RunContext.open(spec, "campaign__spring_tiles", run_id, conf or {}, settings=settings,
                                  s3_client=s3, s3_client_factory=factory)


def write_campaign(folder: Path, campaign_id: str = "gallery_test") -> Path:
    """spring_tiles, with a hostile product row and absolute paths to the shared files."""
    spec = yaml.safe_load((ROOT / "include/campaigns/spring_tiles.yaml").read_text())
    csv_lines = (ROOT / "include/campaigns/spring_tiles.products.csv").read_text().splitlines()
    header, first, *rest = csv_lines
    sku, _name, category, _colour, material, price = first.split(",")
    buf = io.StringIO()
    csv.writer(buf, lineterminator="\n").writerow([sku, XSS_NAME, category, XSS, material, price])
    (folder / "products.csv").write_text("\n".join([header, buf.getvalue().rstrip("\n"), *rest]) + "\n")
    spec.update(id=campaign_id)
    spec["products"]["source"] = str(folder / "products.csv")
    spec["products"]["expectations"] = str(ROOT / "include/expectations/spring_tiles.json")
    spec["brand"]["restricted_terms_file"] = str(ROOT / "include/brand/restricted_terms.txt")
    spec["publish"] = [{"kind": "folder", "path": str(folder / "dam")}]
    # Noise from the tiny model passes or fails blur checks by chance: keep QA deterministic.
    spec["qa"] = {"checks": {"dimensions": {}, "duplicate": {"enabled": False}}}
    path = folder / f"{campaign_id}.yaml"
    path.write_text(yaml.safe_dump(spec, sort_keys=False))
    return path


def write_products(tmp_path: Path, edit=None) -> str:
    df = pd.read_csv(CSV, dtype={"sku": str})
    if edit:
        edit(df)
    df.to_csv(tmp_path / "products.csv", index=False)
    return "products.csv"



def bad_rows(df):
    df.loc[1, "sku"] = "TER-001"                    # duplicate id
    df.loc[2, "category"] = "<b>bathware</b>"       # not an allowed category (and HTML)
    df.loc[3, "price_eur"] = 900                     # out of range
    df.loc[4, "name"] = None                         # required column empty
