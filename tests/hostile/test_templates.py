"""Hostile prompt templates (issue #13, item 3): the sandbox bounds the work of every field.

Each template below used to hang (nested loops ran for 12 minutes and ignored SIGTERM), fill
memory, or end in a traceback (``range(10**9)``: OverflowError). Each now ends at once with a
PolicyError naming the spec file, the template field, the product and the limit.
"""

from __future__ import annotations

import pytest
from darkroom import sandbox
from darkroom.catalog.tables import PlanItem, Variant
from darkroom.errors import PolicyError, SpecError, ValidationFailed
from darkroom.prompts import render_variants
from darkroom.spec import load_spec
from darkroom.stages import plan
from PIL import Image
from sqlalchemy import func, select

from tests.hostile.helpers import CSV_HEADER, files, run_context, write_spec

ROW = {"sku": "TER-001", "name": "coffee mug", "category": "drinkware", "colour": "terracotta",
       "material": "stoneware", "price_eur": 18.0}


def _loaded(tmp_path, subject: str):
    return load_spec(write_spec(tmp_path, lambda d: d["prompts"].update(subject=subject)))


@pytest.mark.parametrize("template, words", [
    pytest.param("{% for a in range(100000) %}{% for b in range(100000) %}x{% endfor %}{% endfor %}",
                 ["range(100000) gives 100,000 numbers", "MAX_RANGE"], id="nested-range-100000"),
    pytest.param("{% for a in range(10000) %}{% for b in range(10000) %}{% endfor %}{% endfor %}",
                 ["more than 10,000 loop iterations and calls", "MAX_STEPS"], id="nested-silent-loops"),
    pytest.param("{% set s = product.name * 3 %}{% for c in s %}{% for d in s %}{% for e in s %}"
                 "{% endfor %}{% endfor %}{% endfor %}", ["loop iterations"], id="loops-over-values"),
    pytest.param("{{ range(10**9)|list }}", ["range(1000000000) gives 1,000,000,000 numbers"],
                 id="range-1e9"),
    pytest.param("{{ 'x' * 10**9 }}", ["about 1,000,000,000 characters", "MAX_VALUE"], id="repeat"),
    pytest.param("{{ [1] * 10**9 }}", ["MAX_VALUE"], id="repeat-list"),
    pytest.param("{{ 10 ** 100000 }}", ["is over 1,000 bits"], id="power"),
    pytest.param("{% for i in range(9000) %}{{ product.name }}{% endfor %}",
                 ["rendered text is over 10,000 characters", "MAX_OUTPUT"], id="output"),
    pytest.param("{{ product.name|center(10**9) }}", ["filter `center`", "MAX_VALUE"], id="center"),
    pytest.param("{{ product.name.ljust(10**9) }}", ["ljust()", "MAX_VALUE"], id="ljust"),
    pytest.param("{{ '%0999999999d' % 1 }}", ["width or precision of 999999999"], id="printf-width"),
    pytest.param("{{ '{:>999999999}'.format(1) }}", ["width or precision of 999999999"], id="format-width"),
    pytest.param("{{ '%s'|format(1)|indent(10**9) }}", ["filter `indent`"], id="indent"),
    pytest.param("{{ ('a' * 1000)|replace('a', 'b' * 1000) }}", ["filter `replace`"], id="replace"),
    pytest.param("{{ ('ab' * 500)|list|join('x' * 1000) }}", ["filter `join`"], id="join"),
    pytest.param("{% macro f(s, n) %}{{ f(s ~ s, n - 1) if n else s|length }}{% endmacro %}{{ f('a', 60) }}",
                 ["MAX_VALUE"], id="macro-doubling"),
    pytest.param("{% set ns = namespace(s='a') %}{{ ns.s }}", ["'namespace' is undefined"], id="namespace"),
    pytest.param("{% set x = [] %}{{ x.append(1) }}", ["refused by the template sandbox"], id="mutation"),
    pytest.param("{{ product.name.translate({97: 'x' * 1000}) }}", ["refused by the template sandbox"],
                 id="translate"),
    pytest.param("{{ product.name.__class__.__mro__ }}", ["refused by the template sandbox"], id="dunder"),
    pytest.param("{{ 1 / 0 }}", ["ZeroDivisionError"], id="zero-division"),
    pytest.param("{% include 'other' %}", ["the template failed", "TypeError"], id="include"),
    pytest.param("{{ (2 ** 999)|string|int ** 2 }}", ["bits"], id="power-of-big"),
])
def test_a_runaway_template_ends_with_the_field_and_the_limit(tmp_path, template, words):
    loaded = _loaded(tmp_path, template)  # the syntax is fine: spec check passes
    with pytest.raises(PolicyError) as err:
        render_variants(loaded, [ROW])
    message = str(err.value)
    assert str(loaded.path) in message and "field `prompts.subject`" in message, message
    for w in words:
        assert w in message, message
    assert "Traceback" not in message


def test_prompt_sized_templates_keep_working(tmp_path):
    """The bounds sit far above what prompts use: loops, filters, joins and formats pass."""
    template = ("a {{ product.colour|title }} {{ product.name }}"
                "{% for w in product.material.split() %}, {{ w|upper }}{% endfor %}"
                ", {{ ['matte', 'glazed']|map('upper')|join(' and ') }}"
                ", {{ '%.2f'|format(product.price_eur) }} EUR, {{ '{:>6}'.format('x') }}"
                ", {{ range(3)|list|length }} views, {{ 'ab' * 3 }}, {{ 2 ** 10 }}")
    [v] = render_variants(_loaded(tmp_path, template), [ROW])
    assert ("a Terracotta coffee mug, STONEWARE, MATTE and GLAZED, 18.00 EUR, x, 3 views, ababab, "
            "1024") in v.prompt


def test_a_template_nested_too_deeply_fails_spec_check(tmp_path):
    path = write_spec(tmp_path, lambda d: d["prompts"].update(subject="{{ " + "(" * 3000 + "1" + ")" * 3000 + " }}"))
    with pytest.raises(SpecError, match=r"field `prompts.subject`: the template nests too deeply"):
        load_spec(path)


# -- limit is applied before rendering -------------------------------------------------------

def test_limit_renders_only_the_variants_it_keeps(tmp_path):
    """Rows past the limit are never rendered: here they would fail (no `colour`), so a
    render of every row (398 s for 10^6 rows before) would raise."""
    loaded = _loaded(tmp_path, "a {{ product.colour }} {{ product.name }}")
    rows = [dict(ROW, sku=f"TER-{i:03d}") for i in range(2)]
    rows += [{"sku": f"BAD-{i:05d}", "name": "mug"} for i in range(20_000)]
    variants = render_variants(loaded, rows, limit=2)
    assert [v.product_id for v in variants] == ["TER-000", "TER-001"]
    with pytest.raises(PolicyError, match="BAD-00000"):
        render_variants(loaded, rows)
    assert render_variants(loaded, rows, limit=0) == []


def test_wanted_ids_are_picked_before_rendering(tmp_path):
    loaded = _loaded(tmp_path, "a {{ product.colour }} {{ product.name }}")
    good = [dict(ROW, sku=f"TER-{i:03d}") for i in range(5)]
    every = render_variants(loaded, good)
    want = {every[3].id}
    rows = good + [{"sku": "BAD-1", "name": "mug"}]  # would fail if rendered
    [v] = render_variants(loaded, rows, wanted=want)
    assert v.id == every[3].id and v.prompt == every[3].prompt


def test_limit_keeps_the_order_and_ids_of_a_full_render(tmp_path):
    loaded = load_spec(write_spec(tmp_path, lambda d: d["generation"].update(seeds_per_variant=3)))
    rows = [dict(ROW, sku=f"TER-{i:03d}") for i in range(4)]
    full = render_variants(loaded, rows)
    assert [v.id for v in render_variants(loaded, rows, limit=7)] == [v.id for v in full[:7]]


# -- through the stage: nothing is planned -------------------------------------------------

@pytest.mark.parametrize("template", [
    "{% for a in range(100000) %}{% for b in range(100000) %}x{% endfor %}{% endfor %}",
    "{{ 'x' * 10**9 }}",
])
def test_expand_prompts_with_a_runaway_template_plans_nothing(tmp_path, darkroom_home, template):
    rows = CSV_HEADER + "TER-001,coffee mug,drinkware,terracotta,stoneware,18.00\n"
    spec = write_spec(tmp_path, lambda d: d["prompts"].update(subject=template), rows=rows)
    ctx = run_context(spec)
    before = files(tmp_path)
    with pytest.raises(PolicyError, match=r"field `prompts.subject`: stopped for product 'TER-001'"):
        plan.run(ctx)
    with ctx.catalog.session() as s:
        for table in (Variant, PlanItem):
            assert s.scalar(select(func.count()).select_from(table)) == 0
    assert {p for p in files(tmp_path) - before if not p.name.startswith("catalog.db")} == set()


def test_the_limits_are_the_documented_numbers():
    """docs/security.md quotes these; change both together."""
    assert (sandbox.MAX_STEPS, sandbox.MAX_RANGE, sandbox.MAX_VALUE, sandbox.MAX_OUTPUT,
            sandbox.MAX_POWER_BITS) == (10_000, 10_000, 100_000, 10_000, 1_000)


@pytest.mark.filterwarnings("ignore::pandas.errors.DtypeWarning")  # the colour column is mostly empty
def test_a_million_rows_with_limit_2_read_and_render_two(tmp_path, darkroom_home):
    """10^6 product rows with ``limit: 2`` took 398 s and 3.1 GB, every row rendered first.
    Now rows are reached one at a time and the plan stops at the limit: every row after the
    second would stop the plan if it were touched (its reference image does not exist, and
    its template fails on the empty colour), so planning proves they were not."""
    def mutate(d):
        d["prompts"] = {"subject": "a {{ product.colour.upper() }} {{ product.name }}"}
        d["products"].update(reference_image_column="reference", required_columns=["sku"])
        d["generation"]["mode"] = "image2image"

    spec = write_spec(tmp_path, mutate)
    (tmp_path / "refs").mkdir()
    for i in range(2):
        Image.new("RGB", (64, 64), (180, 90 + i * 40, 60)).save(tmp_path / "refs" / f"TER-{i}.png")
    with (tmp_path / "products.csv").open("w") as fh:
        fh.write("sku,name,colour,reference\n")
        fh.write("TER-0,coffee mug,terracotta,refs/TER-0.png\nTER-1,tea cup,sage,refs/TER-1.png\n")
        fh.writelines(f"BAD-{i},mug,,refs/missing-{i}.png\n" for i in range(2, 1_000_000))
    ctx = run_context(spec, conf={"limit": 2})
    [batch] = plan.run(ctx)
    assert batch == 0
    with ctx.catalog.session() as s:
        variants = list(s.scalars(select(Variant)))
        assert s.scalar(select(func.count()).select_from(PlanItem)) == 2
    assert sorted(v.product_id for v in variants) == ["TER-0", "TER-1"]
    assert {v.params["reference"]["uri"].rsplit("/", 1)[1] for v in variants} == {"TER-0.png", "TER-1.png"}
    assert "a TERRACOTTA coffee mug" in next(v.prompt for v in variants if v.product_id == "TER-0")
    # The same plan without the limit reaches row 3 and stops there, naming it.
    with pytest.raises(ValidationFailed, match=r"product BAD-2, column 'reference' = 'refs/missing-2.png'"):
        plan.run(run_context(spec, run_id="manual__2"))
