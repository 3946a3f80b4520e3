"""Variant expansion: templates, brand text, restricted terms, seeds, stable ids, batching."""

from __future__ import annotations

from pathlib import Path

import pytest
from darkroom.errors import PolicyError
from darkroom.prompts import RestrictedTerms, chunk, render_variants, template_version
from darkroom.spec import load_spec

CAMPAIGNS = Path(__file__).resolve().parents[2] / "include" / "campaigns"
ROWS = [
    {"sku": "A-1", "name": "mug", "category": "drinkware", "colour": "red", "material": "clay"},
    {"sku": "A-2", "name": "plate", "category": "tableware", "colour": "blue", "material": "clay"},
]


@pytest.fixture
def tiles():
    return load_spec(CAMPAIGNS / "spring_tiles.yaml")


def test_products_x_asset_types_x_seeds(tiles):
    variants = render_variants(tiles, ROWS)
    assert len(variants) == 2 * 1 * 2
    assert [v.seed for v in variants] == [1000, 1001, 1000, 1001]
    v = variants[0]
    assert v.prompt.startswith("studio product photograph of a red clay mug")
    assert v.prompt.endswith(tiles.spec.brand.style)
    assert "blurry" in v.negative_prompt and "watermark" in v.negative_prompt
    assert v.template_version == template_version(tiles)


def test_ids_are_stable_and_identity_sensitive(tiles):
    a = [v.id for v in render_variants(tiles, ROWS)]
    assert a == [v.id for v in render_variants(tiles, ROWS)]
    assert len(set(a)) == len(a)
    changed = [dict(ROWS[0], colour="green"), ROWS[1]]
    b = [v.id for v in render_variants(tiles, changed)]
    assert b[2:] == a[2:] and b[:2] != a[:2]  # only the changed product's variants are new
    shifted = [v.id for v in render_variants(tiles, ROWS, seed_offset=10)]
    assert not set(shifted) & set(a)


def test_unknown_template_variable_is_an_error(tiles):
    bad = tiles.model_copy(update={"spec": tiles.spec.model_copy(update={
        "prompts": tiles.spec.prompts.model_copy(update={"positive": "a {{ product.flavor }}"})})})
    with pytest.raises(PolicyError, match=r"flavor.*fix: use one of product\."):
        render_variants(bad, ROWS)


@pytest.mark.parametrize("text,found", [
    ("Dishwasher SAFE mug", ["dishwasher safe"]),
    ("a guaranteed fit", ["guaranteed"]),
    ("guaranteedly fine", []),  # word boundaries
    ("GUARANTÉED", ["guaranteed"]),  # accents and case
    ("plain mug", []),
], ids=["case", "plain", "boundary", "accent", "clean"])
def test_restricted_terms_matching(text, found):
    terms = RestrictedTerms(("dishwasher safe", "guaranteed"))
    assert terms.find(text) == found


def test_restricted_term_marks_variant(tiles):
    rows = [dict(ROWS[0], name="guaranteed mug")]
    variants = render_variants(tiles, rows)
    assert all([str(x) for x in v.violations] == ["restricted term 'guaranteed' from product column `name`"]
               for v in variants)


@pytest.mark.parametrize("n,per_task,max_tasks,sizes", [
    (0, 8, 200, []),
    (10, 8, 200, [8, 2]),
    (10_000, 8, 200, [50] * 200),
    (24, 64, 200, [24]),
], ids=["empty", "two-batches", "ceiling-grows-batches", "one-batch"])
def test_chunk_respects_task_ceiling(n, per_task, max_tasks, sizes):
    assert [len(b) for b in chunk(list(range(n)), per_task, max_tasks)] == sizes


@pytest.mark.parametrize("n,per_task,max_tasks,sizes", [
    (10, 4, 200, [4, 1, 4, 1]),  # odd and even items never share a batch
    (1000, 8, 10, ([112] * 4 + [52]) * 2),  # 9 full batches' worth, room for two short ones
    (1001, 8, 10, [112] * 4 + [53] + [112] * 4 + [52]),
], ids=["groups-apart", "ceiling-with-groups", "ceiling-with-uneven-groups"])
def test_chunk_with_a_key_keeps_groups_apart_under_the_ceiling(n, per_task, max_tasks, sizes):
    batches = chunk(list(range(n)), per_task, max_tasks, key=lambda i: i % 2)
    assert [len(b) for b in batches] == sizes
    assert len(batches) <= max_tasks
    assert all(len({i % 2 for i in b}) == 1 for b in batches)
