"""Variant planning: prompt pieces, locales, vary (zip and cross), policy with the field that
produced a term, free text only when allowed, dry-run plan, incremental refresh."""

from __future__ import annotations

import shutil
import subprocess
import sys
from pathlib import Path

import pandas as pd
import pytest
import yaml
from darkroom.catalog.tables import Asset, PlanItem, Run, Variant
from darkroom.errors import PolicyError, SpecError
from darkroom.prompts import render_variants, vary_combinations
from darkroom.spec import load_spec
from darkroom.stages import generate, plan, validate
from darkroom.stages.context import RunContext
from sqlalchemy import select

from tests.support.campaigns import CAMPAIGNS, CSV

ROWS = [
    {"sku": "A-1", "name": "mug", "name_de": "Becher", "colour": "red", "notes": "with a chip"},
    {"sku": "A-2", "name": "plate", "name_de": None, "colour": "blue", "notes": "guaranteed flat"},
]
PIECES = {
    "subject": "a {{ product.colour }} {{ product.name }}",
    "composition": "{{ asset_type.description }}",
    "background": "on warm linen",
    "lighting": "soft window light",
    "style": "studio product photograph",
    "negative": "text, watermark",
}


def write_spec(tmp_path: Path, *, prompts=None, brand=None, generation=None, products=None) -> Path:
    data = yaml.safe_load((CAMPAIGNS / "spring_tiles.yaml").read_text())
    data["prompts"] = prompts or PIECES
    data["brand"] = {"style": "brand look", "negative": ["blurry"], "restricted_terms": ["guaranteed"],
                     **(brand or {})}
    data["generation"].update(generation or {})
    data["products"] = {"source": "products.csv", "id_column": "sku", **(products or {})}
    if not (tmp_path / "products.csv").exists():
        shutil.copy(CSV, tmp_path / "products.csv")
    path = tmp_path / "campaign.yaml"
    path.write_text(yaml.safe_dump(data, sort_keys=False))
    return path


def test_pieces_compose_in_order_then_brand(tmp_path):
    loaded = load_spec(write_spec(tmp_path))
    v = render_variants(loaded, ROWS[:1])[0]
    assert v.prompt == ("a red mug, centred, three-quarter view, shallow depth of field, on warm linen, "
                        "soft window light, studio product photograph, brand look")
    assert v.negative_prompt == "text, watermark, blurry"


def test_positive_template_can_arrange_pieces(tmp_path):
    prompts = {**PIECES, "positive": "{{ pieces.style }} of {{ pieces.subject }}"}
    v = render_variants(load_spec(write_spec(tmp_path, prompts=prompts)), ROWS[:1])[0]
    assert v.prompt == "studio product photograph of a red mug, brand look"


def test_unknown_variable_names_the_piece(tmp_path):
    loaded = load_spec(write_spec(tmp_path, prompts={**PIECES, "lighting": "{{ product.lux }} lux"}))
    with pytest.raises(PolicyError, match=r"field `prompts.lighting`: .*lux.*product 'A-1'.*fix: use one of"):
        render_variants(loaded, ROWS)


def test_sandbox_refuses_unsafe_templates(tmp_path):
    bad = {**PIECES, "subject": "{{ product.name.__class__.__mro__[1].__subclasses__() }}"}
    with pytest.raises(PolicyError, match=r"field `prompts.subject`"):
        render_variants(load_spec(write_spec(tmp_path, prompts=bad)), ROWS)


def test_template_syntax_error_at_load(tmp_path):
    with pytest.raises(SpecError, match=r"field `prompts.background`: template syntax error"):
        load_spec(write_spec(tmp_path, prompts={**PIECES, "background": "{{ oops"}))


def test_locales_render_localized_columns(tmp_path):
    loaded = load_spec(write_spec(tmp_path, prompts={**PIECES, "locales": ["en", "de"]}))
    variants = render_variants(loaded, ROWS)
    assert len(variants) == 2 * 2 * 2  # products x locales x seeds
    by = {(v.product_id, v.params["locale"], v.seed): v for v in variants}
    assert by[("A-1", "de", 1000)].prompt.startswith("a red Becher,")
    assert by[("A-1", "en", 1000)].prompt.startswith("a red mug,")
    assert by[("A-2", "de", 1000)].prompt.startswith("a blue plate,")  # no German name: the base one
    assert len({v.id for v in variants}) == len(variants)


def test_vary_zips_within_a_group_and_crosses_groups(tmp_path):
    groups = [{"light": ["dawn", "noon"], "mood": ["calm", "bright"]}, {"angle": ["top", "side", "front"]}]
    assert len(vary_combinations(groups)) == 2 * 3
    assert vary_combinations(groups)[0] == {"light": "dawn", "mood": "calm", "angle": "top"}
    prompts = {**PIECES, "lighting": "{{ vary.light }} light, {{ vary.mood }}", "vary": groups}
    loaded = load_spec(write_spec(tmp_path, prompts=prompts, generation={"seeds_per_variant": 1}))
    variants = render_variants(loaded, ROWS)
    assert len(variants) == 2 * 6
    assert sum("noon light, bright" in v.prompt for v in variants) == 2 * 3
    assert not any("noon light, calm" in v.prompt for v in variants)  # zipped, not crossed
    assert len({v.id for v in variants}) == 12


def test_vary_lists_of_unequal_length_in_a_group(tmp_path):
    prompts = {**PIECES, "vary": [{"light": ["dawn", "noon"], "mood": ["calm"]}]}
    with pytest.raises(SpecError, match=r"vary.0: lists in one group are zipped"):
        load_spec(write_spec(tmp_path, prompts=prompts))


@pytest.mark.parametrize("prompts,brand,rows,field", [
    (PIECES, {}, [dict(ROWS[0], name="guaranteed mug")], "product column `name`"),
    ({**PIECES, "locales": ["de"]}, {}, [dict(ROWS[0], name_de="Guaranteed Becher")], "product column `name_de`"),
    ({**PIECES, "background": "on a GUARANTÉED linen"}, {}, ROWS[:1], "template `prompts.background`"),
    (PIECES, {"style": "guaranteed look"}, ROWS[:1], "`brand.style`"),
], ids=["column", "localized-column", "piece", "brand"])
def test_policy_names_term_and_field(tmp_path, prompts, brand, rows, field):
    loaded = load_spec(write_spec(tmp_path, prompts=prompts, brand=brand))
    variants = render_variants(loaded, rows)
    assert variants and all(len(v.violations) == 1 for v in variants)
    assert str(variants[0].violations[0]) == f"restricted term 'guaranteed' from {field}"


def test_free_text_only_when_the_spec_allows_it(tmp_path):
    plain = render_variants(load_spec(write_spec(tmp_path)), ROWS)
    assert not any("chip" in v.prompt or v.violations for v in plain)  # the notes column is ignored
    allowed = load_spec(write_spec(tmp_path, prompts={**PIECES, "free_text_column": "notes",
                                                      "free_text_max_chars": 11}))
    variants = render_variants(allowed, ROWS)
    assert variants[0].prompt.endswith("studio product photograph, with a chip, brand look")
    assert [str(x) for x in variants[-1].violations] == [
        "restricted term 'guaranteed' from product column `notes`"]


def test_policy_rejections_are_planned_and_summarized(tmp_path):
    spec = write_spec(tmp_path)
    df = pd.read_csv(tmp_path / "products.csv", dtype={"sku": str})
    df.loc[0, "name"] = "guaranteed coffee mug"
    df.to_csv(tmp_path / "products.csv", index=False)
    ctx = RunContext.open(spec, "campaign__spring_tiles", "manual__policy")
    batches = plan.run(ctx)
    with ctx.catalog.session() as s:
        rejected = list(s.scalars(select(PlanItem).where(PlanItem.status == "policy_rejected")))
        summary = s.get(Run, ctx.run_pk).summary
    assert len(rejected) == 2 and all(r.batch == -1 for r in rejected)
    assert rejected[0].reason == "restricted term 'guaranteed' from product column `name`"
    assert summary["planned"] == 22 and summary["policy_rejected"] == 2
    assert summary["policy_terms"] == {"restricted term 'guaranteed' from product column `name`": 2}
    assert batches == [0, 1, 2]


def test_dry_run_prints_plan_and_maps_nothing(tmp_path, caplog):
    spec = write_spec(tmp_path, generation={"variants_per_task": 5, "max_mapped_tasks": 3,
                                            "cost_per_gpu_hour": 2.5})
    ctx = RunContext.open(spec, "campaign__spring_tiles", "manual__dry", {"dry_run": True, "limit": 20})
    with caplog.at_level("INFO", logger="darkroom"):
        assert plan.run(ctx) == []
    with ctx.catalog.session() as s:
        text = s.get(Run, ctx.run_pk).summary["plan"]
    assert text in caplog.text
    # 20 variants, ceiling 3 tasks -> batches of 7 rather than 4 of 5. (No model is built
    # here: the GPU worker resolves it, and claims what it draws.)
    assert ("20 variants (up to 20 to generate (the GPU worker resolves the model); 0 rejected by "
            "policy), 3 mapped task(s)") in text
    assert "up to 7 variants (ceiling 3)" in text
    # A fresh catalog has no recorded generations: the estimate comes from the benchmark file.
    assert "Estimated GPU time for the 20 variants" in text and "from docs/bench/generate.json:" in text


# --------------------------------------------------------------------------- incremental refresh


@pytest.fixture(scope="session")
def tiny_model(tmp_path_factory) -> Path:
    path = tmp_path_factory.mktemp("tiny") / "tiny-sd"
    proc = subprocess.run([str(Path(sys.executable).parent / "darkroom"), "models", "build-tiny", str(path)],
                          capture_output=True, text=True, timeout=300)
    assert proc.returncode == 0, proc.stderr
    return path


def run_once(spec: Path, run_id: str, conf: dict | None = None) -> tuple[RunContext, set[str]]:
    """validate -> expand -> generate every batch; the variant ids this run generated."""
    ctx = RunContext.open(spec, "campaign__spring_tiles", run_id, conf)
    validate.run(ctx)
    for batch in plan.run(ctx):
        generate.run(ctx, batch)
    with ctx.catalog.session() as s:
        made = set(s.scalars(select(Asset.variant_id).where(Asset.run_pk == ctx.run_pk)))
    return ctx, made


def test_incremental_refresh_generates_only_new_identities(tmp_path, tiny_model, monkeypatch):
    monkeypatch.setenv("DARKROOM_TINY_MODEL", str(tiny_model))
    spec = write_spec(tmp_path, prompts={**PIECES, "subject": "a {{ product.colour }} {{ product.name }}"},
                      generation={"steps": 2, "width": 64, "height": 64, "cost_per_gpu_hour": 3.0})
    df = pd.read_csv(tmp_path / "products.csv", dtype={"sku": str}).head(4)
    df.to_csv(tmp_path / "products.csv", index=False)
    _, first = run_once(spec, "scheduled__1")
    assert len(first) == 4 * 2
    # Change two rows, add one, remove one: the removed product's assets must stay.
    df.loc[0, "colour"] = "cobalt"
    df.loc[2, "name"] = "large tea bowl"
    df = pd.concat([df, pd.DataFrame([{"sku": "TER-100", "name": "jug", "category": "serveware",
                                       "colour": "white", "material": "stoneware", "price_eur": 30}])])
    df = df[df["sku"] != "TER-004"]
    df.to_csv(tmp_path / "products.csv", index=False)
    ctx, second = run_once(spec, "scheduled__2")
    with ctx.catalog.session() as s:
        made = {(v.product_id, v.seed) for v in s.scalars(select(Variant).where(Variant.id.in_(second)))}
        assert s.scalar(select(Asset).where(Asset.variant_id.in_(first)).limit(1)) is not None
        kept = {v.product_id for v in s.scalars(select(Variant).join(Asset, Asset.variant_id == Variant.id))}
        summary = s.get(Run, ctx.run_pk).summary
    assert made == {(p, seed) for p in ("TER-001", "TER-003", "TER-100") for seed in (1000, 1001)}
    assert "TER-004" in kept  # removed products delete nothing
    assert summary["planned"] == 8 and summary["new_variants"] == 6 and summary["to_generate"] == 6
    # A third run finds nothing new, and its dry-run plan prices nothing from measured timings.
    ctx3 = RunContext.open(spec, "campaign__spring_tiles", "manual__3", {"dry_run": True})
    plan.run(ctx3)
    with ctx3.catalog.session() as s:
        text = s.get(Run, ctx3.run_pk).summary["plan"]
    # Both earlier runs are still running (as far as anyone told the catalog): they keep what
    # they claimed, and nothing is drawn twice.
    assert ("8 variants (0 to generate, 6 drawn by run scheduled__2, still running, 2 drawn by run "
            "scheduled__1, still running;") in text
    assert "median of the last 14 recorded generations at 64x64, 2 steps" in text
    assert "cost 0.00 at 3.0 per GPU-hour" in text


def test_planning_benchmark_small():
    from darkroom.devtools.bench_planning import bench_plan

    run = bench_plan(variants=300)
    assert run["variants"] == run["planned"] == 300
    assert run["mapped_tasks"] == 38 and run["batch_size"] == 8  # spring_tiles: 8 per task
    assert run["total_s"] > 0 and run["peak_rss_mb"] > 0
