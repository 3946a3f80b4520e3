"""The validate_inputs stage: the Great Expectations result in the catalog, the HTML report in
storage, and nothing planned when the data fails."""

from __future__ import annotations

import re

import pytest
from darkroom.catalog import Catalog
from darkroom.catalog.tables import PlanItem, ValidationResult, Variant
from darkroom.config import Settings
from darkroom.errors import ValidationFailed
from darkroom.stages import plan, validate
from darkroom.stages.context import RunContext
from darkroom.storage import read_uri
from sqlalchemy import func, select

from tests.support.campaigns import bad_rows, make_spec, write_products


def test_failing_suite_fails_with_summary_and_generates_nothing(tmp_path):
    spec = make_spec(tmp_path, source=write_products(tmp_path, bad_rows))
    ctx = RunContext.open(spec, "campaign__spring_tiles", "manual__1")
    with pytest.raises(ValidationFailed) as err:
        validate.run(ctx)
    text = str(err.value)
    assert "nothing was generated" in text
    assert "expect_column_values_to_be_unique on column 'sku': 2 failing row(s)" in text
    assert "expect_column_values_to_be_in_set on column 'category'" in text
    assert "sku='TER-003', category='<b>bathware</b>'" in text  # a sample row, with its id
    assert "expect_column_values_to_be_between on column 'price_eur' (min_value=1.0, max_value=500.0)" in text
    assert "sku='TER-004', price_eur=900.0" in text
    assert "expect_column_values_to_not_be_null on column 'name': 1 failing row(s)" in text
    # The catalog holds the result; storage holds the HTML report, values escaped.
    with ctx.catalog.session() as s:
        result = s.scalars(select(ValidationResult)).one()
        assert result.success is False and result.rows == 12
        assert {f["expectation"] for f in result.summary["failures"]} == {
            "expect_column_values_to_be_unique", "expect_column_values_to_be_in_set",
            "expect_column_values_to_be_between", "expect_column_values_to_not_be_null"}
        assert s.scalar(select(func.count()).select_from(Variant)) == 0
    page = read_uri(result.summary["report_uri"]).decode()
    assert result.summary["report_uri"].endswith("spring_tiles/manual__1/validation.html")
    assert "&lt;b&gt;bathware&lt;/b&gt;" in page and "<b>bathware" not in page
    # Great Expectations' own rendering of the result (darkroom.validation.ValidationReport.to_html).
    assert re.search(r"Unsuccessful Expectations</div></td><td[^>]*><div[^>]*>4<", page)



def test_passing_suite_stores_success_and_report(tmp_path):
    spec = make_spec(tmp_path, source=write_products(tmp_path))
    ctx = RunContext.open(spec, "campaign__spring_tiles", "manual__ok")
    summary = validate.run(ctx)
    assert summary["success"] and summary["failures"] == [] and summary["evaluated"] >= 10
    page = read_uri(summary["report_uri"]).decode()
    # Great Expectations' own page: its verdict, no failures, the regex expectation in its words.
    assert "Succeeded" in page and "regular expression" in page
    assert re.search(r"Unsuccessful Expectations</div></td><td[^>]*><div[^>]*>0<", page)



def test_validation_runs_before_expansion_in_order(tmp_path):
    """A run whose data fails validation has no plan: expand_prompts is never reached by
    Airflow, and the catalog holds no plan items for it."""
    spec = make_spec(tmp_path, source=write_products(tmp_path, bad_rows))
    ctx = RunContext.open(spec, "campaign__spring_tiles", "manual__2")
    with pytest.raises(ValidationFailed):
        validate.run(ctx)
    with Catalog(Settings.from_env().catalog_url).session() as s:
        assert s.scalar(select(func.count()).select_from(PlanItem)) == 0
    # Fixing the data lets the same run plan.
    write_products(tmp_path)
    validate.run(ctx)
    assert plan.run(ctx) == [0, 1, 2]
