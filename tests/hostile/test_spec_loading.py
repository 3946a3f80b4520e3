"""Hostile spec files (issue #13, items 3 and 7): bounded YAML, strict types, checked cron.

Every case asserts the message (the file, the field or line, the value, the fix) and that
loading wrote nothing: `darkroom spec check` and the DAG factory only read.
"""

from __future__ import annotations

import subprocess
import sys

import pytest
import yaml
from darkroom import yaml_safe
from darkroom.errors import SpecError
from darkroom.spec import find_spec, load_spec

from tests.hostile.helpers import files, spec_data, write_spec


def _bomb(levels: int = 9, width: int = 9) -> str:
    """The "billion laughs": each anchor is a list of `width` aliases of the one before."""
    lines = ['l0: &l0 ["lol", "lol", "lol", "lol", "lol", "lol", "lol", "lol", "lol"]']
    lines += [f"l{i}: &l{i} [{', '.join([f'*l{i - 1}'] * width)}]" for i in range(1, levels)]
    return "\n".join(lines)


def _spec_text(tmp_path, mutate=None) -> str:
    data = spec_data(tmp_path)
    if mutate:
        mutate(data)
    return yaml.safe_dump(data, sort_keys=False, allow_unicode=True)


def _refused(tmp_path, text: str | bytes, *words: str) -> str:
    path = tmp_path / "spec.yaml"
    path.write_bytes(text if isinstance(text, bytes) else text.encode())
    before = files(tmp_path)
    with pytest.raises(SpecError) as err:
        load_spec(path)
    message = str(err.value)
    assert str(path) in message, message
    for w in words:
        assert w in message, message
    assert "Traceback" not in message
    assert files(tmp_path) == before  # loading never writes
    return message


def test_an_alias_bomb_in_tags_is_refused_while_reading(tmp_path):
    # 3 KB of YAML that expands to 9**9 (387 million) strings: refused at the expansion limit,
    # not after walking it (which took 94 s and 674 MB before the limit).
    text = _spec_text(tmp_path).replace("tags:", _bomb() + "\ntags: *l8\nold_tags:", 1)
    assert len(text) < 6000
    _refused(tmp_path, text, "not valid YAML at line", "expands to more than 100,000 values",
             "fix: use fewer or smaller aliases")


def test_an_alias_bomb_in_qa_params_is_refused_at_spec_check(tmp_path):
    """It passed `spec check` and then hung `darkroom run`: now spec check refuses it."""
    text = _bomb() + "\n" + _spec_text(tmp_path, lambda d: d["qa"]["checks"].update(
        dimensions={"params": {"x": "BOMB"}})).replace("'BOMB'", "*l8").replace("BOMB", "*l8")
    _refused(tmp_path, text, "expands to more than 100,000 values")


def test_aliases_that_stay_small_are_allowed(tmp_path):
    """Anchors are a real way to share one channel recipe; only their expansion is bounded."""
    text = _spec_text(tmp_path)
    data = yaml.safe_load(text)
    web = data["channels"]["web_tile"]
    body = yaml.safe_dump({"shared": {k: v for k, v in web.items()}}, sort_keys=False)
    text = body.replace("shared:", "x-shared: &tile", 1) + text.replace(
        "  web_tile:\n", "  web_tile:\n    <<: *tile\n", 1)
    data = yaml.load(text, Loader=yaml_safe.SpecLoader)  # noqa: S506
    data.pop("x-shared")
    path = tmp_path / "spec.yaml"
    path.write_text(yaml.safe_dump(data))
    assert load_spec(path).spec.channels["web_tile"].width == web["width"]


@pytest.mark.parametrize("text, words", [
    pytest.param("a: &a [*a]\n", ["alias *a refers to the anchor it is inside"], id="recursive-alias"),
    pytest.param("[" * 500 + "]" * 500, ["nested more than 64 levels deep"], id="deep-nesting"),
    pytest.param("id: x\nbrief: b\nn: " + "9" * 5000 + "\n", ["line 3", "cannot read this value",
                                                               "Exceeds the limit (4300 digits)"], id="huge-int"),
    pytest.param("id: x\nwhen: 2024-13-45\n", ["line 2", "cannot read this value: month must be in 1..12"],
                 id="impossible-date"),
    pytest.param("id: !!python/object/apply:os.system [echo hi]\n", ["could not determine a constructor"],
                 id="python-tag"),
    pytest.param("- a\n- b\n", ["expected a mapping at the top level, got list"], id="not-a-mapping"),
    pytest.param("id: x\n---\nid: y\n", ["expected a single document"], id="two-documents"),
])
def test_yaml_that_cannot_be_a_spec_gets_its_line(tmp_path, text, words):
    _refused(tmp_path, text, *words)


def test_duplicate_keys_name_both_lines(tmp_path):
    text = _spec_text(tmp_path)
    lines = text.splitlines()
    at = next(i for i, line in enumerate(lines) if line.startswith("tags:"))
    lines.insert(at, "tags: [first]")  # the second `tags:` used to win silently
    message = _refused(tmp_path, "\n".join(lines) + "\n",
                       f"not valid YAML at line {at + 2}", "key 'tags' is given twice",
                       f"first at line {at + 1}", "fix: keep one of them")
    assert message.count("tags") >= 1


def test_duplicate_keys_deep_inside_are_refused(tmp_path):
    text = _spec_text(tmp_path).replace("  steps:", "  steps: 3\n  steps:", 1)
    _refused(tmp_path, text, "key 'steps' is given twice")


def test_a_spec_over_the_size_limit_is_refused_unparsed(tmp_path):
    text = _spec_text(tmp_path) + "# " + "x" * yaml_safe.MAX_SPEC_BYTES + "\n"
    _refused(tmp_path, text, "over the 1,048,576-byte limit", "fix: move product data")


@pytest.mark.parametrize("encoding", ["latin-1", "utf-16"])
def test_a_spec_that_is_not_utf8_says_so(tmp_path, encoding):
    text = _spec_text(tmp_path, lambda d: d.update(brief="Crème brûlée mugs for the café"))
    _refused(tmp_path, text.encode(encoding), "not UTF-8 text", "fix: save the file as UTF-8")


def test_find_spec_uses_the_bounded_loader(tmp_path):
    """`darkroom run ID` loads every campaign file to find the id: a bomb among them is
    skipped quickly, not expanded, and the real campaign is still found."""
    (tmp_path / "a_bomb.yaml").write_text(_bomb() + "\nid: *l8\n")
    (tmp_path / "b_dup.yaml").write_text("id: spring_tiles\nid: other\n")
    good = tmp_path / "c_good.yaml"
    good.write_text("id: spring_tiles\n")
    assert find_spec("spring_tiles", tmp_path) == good


# -- strict types and the limits they name ---------------------------------------------------

@pytest.mark.parametrize("mutate, field, words", [
    pytest.param(lambda d: d["generation"].update(steps=True), "generation.steps",
                 ["= true", "Input should be a valid integer", "fix: give a whole number from 1 to 200"],
                 id="steps-true"),
    pytest.param(lambda d: d["generation"].update(variants_per_task=1e21), "generation.variants_per_task",
                 ["= 1e+21", "fix: give a whole number at least 1"], id="variants-1e21"),
    pytest.param(lambda d: d["generation"].update(width=99999), "generation.width",
                 ["= 99999", "from 16 to 4096", "a multiple of 8"], id="width-99999"),
    pytest.param(lambda d: d["generation"].update(height=1004), "generation.height",
                 ["multiple of 8", "from 16 to 4096"], id="height-not-multiple"),
    pytest.param(lambda d: d["generation"].update(guidance=float("nan")), "generation.guidance",
                 ["finite number", "from 0 to 30"], id="guidance-nan"),
    pytest.param(lambda d: d["generation"].update(seeds_per_variant=2.0), "generation.seeds_per_variant",
                 ["not a decimal"], id="seeds-float"),
    pytest.param(lambda d: d["channels"]["web_tile"].update(width=0), "channels.web_tile.width",
                 ["a whole number above 0 and at most 8192"], id="channel-width-0"),
    pytest.param(lambda d: d.update(brief=12), "brief", ["Input should be a valid string"], id="brief-number"),
    pytest.param(lambda d: d["products"].update(max_value_length=0), "products.max_value_length",
                 ["from 1 to 1000000"], id="max-value-length-0"),
])
def test_values_of_the_wrong_type_or_size_are_refused_with_the_limits(tmp_path, mutate, field, words):
    path = write_spec(tmp_path, mutate)
    with pytest.raises(SpecError) as err:
        load_spec(path)
    message = str(err.value)
    assert str(path) in message and f"field `{field}`" in message, message
    for w in words:
        assert w in message, message


@pytest.mark.parametrize("schedule", ["0 6 * * 1", "@daily", "@once", "@continuous", "*/15 * * * *",
                                      "0 0 1 */3 *", "@quarterly"])
def test_schedules_airflow_accepts_load(tmp_path, schedule):
    assert load_spec(write_spec(tmp_path, lambda d: d.update(schedule=schedule))).spec.schedule == schedule


@pytest.mark.parametrize("schedule", ["every day", "61 * * * *", "* * *", "@fortnightly", "0 25 * * *", ""])
def test_schedules_airflow_refuses_fail_at_spec_check(tmp_path, schedule):
    """They used to pass spec check and fail the run with AirflowTimetableInvalid."""
    path = write_spec(tmp_path, lambda d: d.update(schedule=schedule))
    with pytest.raises(SpecError) as err:
        load_spec(path)
    message = str(err.value)
    assert "field `schedule`" in message and "not a schedule Airflow accepts" in message
    assert "fix: a cron expression with five fields" in message and "@daily" in message


def test_spec_check_cli_prints_the_message_not_a_traceback(tmp_path):
    path = tmp_path / "spec.yaml"
    path.write_bytes(_spec_text(tmp_path).encode("utf-8").replace(b"brief:", b"brief: caf\xe9", 1))
    before = files(tmp_path)
    out = subprocess.run([sys.executable, "-m", "darkroom_cli", "spec", "check", str(path)],
                         capture_output=True, text=True, timeout=120)
    assert out.returncode != 0
    assert "not UTF-8 text" in out.stderr + out.stdout and "Traceback" not in out.stderr
    assert files(tmp_path) == before
