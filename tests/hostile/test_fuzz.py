"""Fuzz targets (issue #13, item 8): whatever the input, the spec loader ends in a spec or a
SpecError and a template ends in a prompt or a PolicyError (SpecError at spec check), never
another exception and never a hang.

Bounded for `make test`: a fixed number of examples each, derandomized (CI sees the same cases
every run), no example database written into the checkout. Run more locally with
``DARKROOM_FUZZ_EXAMPLES=5000 DARKROOM_FUZZ_RANDOM=1 .venv/bin/pytest tests/hostile/test_fuzz.py``.
"""

from __future__ import annotations

import os
import tempfile
from datetime import timedelta
from pathlib import Path

import yaml
from darkroom import spec as spec_module
from darkroom.errors import PolicyError, SpecError
from darkroom.prompts import render_variants
from darkroom.spec import LoadedSpec, load_spec, parse_spec
from darkroom.yaml_safe import load_yaml, parse_yaml
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from tests.hostile.helpers import CAMPAIGNS, spec_data, write_spec

EXAMPLES = int(os.environ.get("DARKROOM_FUZZ_EXAMPLES", "60"))
RANDOM = bool(os.environ.get("DARKROOM_FUZZ_RANDOM"))  # explore new cases instead of CI's fixed ones
FUZZ = settings(max_examples=EXAMPLES, deadline=timedelta(seconds=10), derandomize=not RANDOM,
                database=None, suppress_health_check=[HealthCheck.too_slow])
ROW = {"sku": "TER-001", "name": "coffee mug", "category": "drinkware", "colour": "terracotta",
       "material": "stoneware", "price_eur": 18.0}

# -- the spec loader ---------------------------------------------------------------------------

_SPEC_TEXT = (CAMPAIGNS / "spring_tiles.yaml").read_text()
_YAML_BITS = ["&a ", "*a", "<<: *a\n", "[", "]", "{", "}", ": ", "- ", "\n", "  ", "!!python/name:os.system",
              "!!binary ", "? ", "|\n  ", "---\n", "\"", "'", "#", "1e999", ".nan", "2024-13-45",
              "9" * 40, "\x00", "\ufeff", "\u200b", "\t", "%YAML 1.1\n", "!custom "]

yaml_texts = st.one_of(
    st.text(max_size=400),
    st.lists(st.sampled_from(_YAML_BITS) | st.text(max_size=8), max_size=60).map("".join),
    # The real spec with a piece cut out and hostile bits spliced in.
    st.tuples(st.integers(0, len(_SPEC_TEXT)), st.integers(0, 200),
              st.lists(st.sampled_from(_YAML_BITS), max_size=6)).map(
        lambda t: _SPEC_TEXT[: t[0]] + "".join(t[2]) + _SPEC_TEXT[t[0] + t[1]:]),
)

scalars = st.one_of(st.none(), st.booleans(), st.integers(), st.floats(), st.text(max_size=30))
values = st.recursive(scalars, lambda inner: st.lists(inner, max_size=4) | st.dictionaries(
    st.text(max_size=10), inner, max_size=4), max_leaves=20)
_DATA = spec_data(Path(tempfile.mkdtemp(prefix="darkroom-fuzz-")))
_PATHS = [("generation", k) for k in _DATA["generation"]] + [("prompts", k) for k in _DATA["prompts"]] + [
    ("products", k) for k in _DATA["products"]] + [(k,) for k in _DATA] + [("qa", "checks"), ("channels", "web_tile")]


@FUZZ
@given(yaml_texts)
def test_any_text_is_a_spec_or_a_spec_error(text):
    try:
        parse_spec(parse_yaml(text, "fuzz.yaml"), "fuzz.yaml")
    except SpecError as exc:
        assert exc.problems and all(isinstance(p, str) and p for p in exc.problems)


@FUZZ
@given(st.binary(max_size=300))
def test_any_bytes_in_a_file_are_read_or_refused(data):
    with tempfile.TemporaryDirectory() as folder:
        path = Path(folder) / "spec.yaml"
        path.write_bytes(data)
        try:
            load_yaml(path)
        except SpecError as exc:
            assert str(path) in str(exc)


@FUZZ
@given(st.sampled_from(_PATHS), values)
def test_any_value_in_any_field_is_a_spec_or_a_spec_error(where, value):
    data = yaml.safe_load(yaml.safe_dump(_DATA))
    target = data
    for key in where[:-1]:
        target = target[key]
    target[where[-1]] = value
    try:
        parse_spec(data, "fuzz.yaml")
    except SpecError:
        pass


# -- the template renderer ---------------------------------------------------------------------

_EXPR = ["product.name", "product.colour", "product.price_eur", "range(3)", "range(10**6)", "10**9",
         "'x' * 50", "'x' * 10**8", "[1, 2] * 3", "product", "asset_type.name", "vary", "locale",
         "2 ** 64", "9 ** 999", "1 / 0", "'%5d' % 3", "'%099999999d' % 3", "'{:>9}'.format(1)",
         "product.name.split()", "product.__class__", "lipsum()", "namespace()", "undefined_name",
         "(product.name * 100)|replace('a', product.name * 100)", "'é' * 3", "none", "true"]
_FILTERS = ["upper", "title", "length", "list", "join(', ')", "center(99)", "center(10**8)", "indent(3)",
            "wordwrap(2)", "batch(2)|list", "int", "float", "string", "reverse|list", "sort", "unique|list",
            "first", "last", "default('d')", "truncate(5)", "format(1)", "replace('o', 'oo')", "tojson",
            "map('upper')|join"]
_BLOCKS = ["{{ %s }}", "{{ %s|%s }}", "{%% for i in %s %%}{{ i }}{%% endfor %%}",
           "{%% for i in %s %%}{%% for j in %s %%}.{%% endfor %%}{%% endfor %%}",
           "{%% if %s %%}yes{%% else %%}no{%% endif %%}", "{%% set v = %s %%}{{ v }}",
           "{%% macro m(x) %%}{{ x }}{{ m(x ~ x) }}{%% endmacro %%}{{ m(%s) }}", "%s"]


@st.composite
def templates(draw):
    parts = []
    for _ in range(draw(st.integers(1, 4))):
        block = draw(st.sampled_from(_BLOCKS))
        holes = block.count("%s")
        fill = [draw(st.sampled_from(_FILTERS)) if i == 1 and "|" in block else draw(st.sampled_from(_EXPR))
                for i in range(holes)]
        parts.append(block % tuple(fill) if holes else block.replace("%%", "%"))
    if draw(st.booleans()):
        parts.insert(draw(st.integers(0, len(parts))), draw(st.text(max_size=20)))
    return "".join(parts)


_LOADED: list[LoadedSpec] = []


def _loaded() -> LoadedSpec:
    if not _LOADED:
        _LOADED.append(load_spec(write_spec(Path(tempfile.mkdtemp(prefix="darkroom-fuzz-")))))
    return _LOADED[0]


@FUZZ
@given(templates())
def test_any_template_renders_or_ends_in_a_policy_error(template):
    base = _loaded()
    prompts = base.spec.prompts.model_copy(update={"subject": template})
    loaded = LoadedSpec(spec=base.spec.model_copy(update={"prompts": prompts}), path=base.path)
    if spec_module._check_files_and_templates(loaded):
        return  # spec check refuses it, with a message: it never reaches a render
    try:
        variants = render_variants(loaded, [ROW])
    except PolicyError as exc:
        assert "field `prompts." in str(exc)
    else:
        assert all(isinstance(v.prompt, str) and len(v.prompt) < 50_000 for v in variants)
