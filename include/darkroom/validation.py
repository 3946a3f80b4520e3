"""Product data checked with Great Expectations 1.x before anything is generated.

GX is imported inside :func:`validate_products` (it takes seconds to import), so DAG parsing
never pays for it. The suite is the campaign's defaults (id not null and unique, required
columns not null) plus the expectations in the spec's suite file, if any.
"""

from __future__ import annotations

import json
from dataclasses import dataclass, field

from darkroom.errors import ValidationFailed
from darkroom.spec import LoadedSpec


@dataclass
class ValidationReport:
    suite: str
    success: bool
    rows: int
    failures: list[dict] = field(default_factory=list)
    evaluated: int = 0

    def summary(self) -> dict:
        return {"suite": self.suite, "success": self.success, "rows": self.rows,
                "evaluated": self.evaluated, "failures": self.failures}

    def describe(self) -> str:
        lines = [f"{len(self.failures)} of {self.evaluated} expectations failed on {self.rows} rows:"]
        for f in self.failures:
            lines.append(
                f"  - {f['expectation']} on column {f.get('column')!r}: {f['unexpected_count']} "
                f"failing rows, e.g. {f['sample']}"
            )
        return "\n".join(lines)


def expectation_configs(loaded: LoadedSpec, columns: list[str]) -> list[dict]:
    spec = loaded.spec
    id_col = spec.products.id_column
    configs = [
        {"type": "expect_column_values_to_not_be_null", "kwargs": {"column": id_col}},
        {"type": "expect_column_values_to_be_unique", "kwargs": {"column": id_col}},
    ]
    for col in spec.products.required_columns:
        if col != id_col:
            configs.append({"type": "expect_column_values_to_not_be_null", "kwargs": {"column": col}})
    if spec.products.expectations:
        from darkroom.config import PROJECT_ROOT

        suite_path = loaded.resolve(spec.products.expectations)
        if not suite_path.is_file():
            suite_path = PROJECT_ROOT / "include" / "expectations" / spec.products.expectations
        data = json.loads(suite_path.read_text("utf-8"))
        configs += data.get("expectations", [])
    return configs


def validate_products(loaded: LoadedSpec, df) -> ValidationReport:
    """Run the suite on the product frame. Raises ValidationFailed on missing columns."""
    import great_expectations as gx
    from great_expectations.expectations.registry import get_expectation_impl

    spec = loaded.spec
    id_col = spec.products.id_column
    needed = {id_col, *spec.products.required_columns, *spec.products.columns.values()}
    missing = sorted(needed - set(df.columns))
    if missing:
        raise ValidationFailed(
            f"{loaded.path}: product data {loaded.product_source} lacks column(s) {missing} "
            f"(has {sorted(df.columns)}); fix: add them, or map names with products.columns"
        )
    suite_name = f"{spec.id}.products"
    context = gx.get_context(mode="ephemeral")
    batch = (
        context.data_sources.add_pandas("products")
        .add_dataframe_asset("products")
        .add_batch_definition_whole_dataframe("all")
        .get_batch(batch_parameters={"dataframe": df})
    )
    suite = gx.ExpectationSuite(name=suite_name)
    for cfg in expectation_configs(loaded, list(df.columns)):
        try:
            impl = get_expectation_impl(cfg["type"])
        except Exception:
            raise ValidationFailed(
                f"{loaded.path}: unknown expectation type {cfg['type']!r} in the product suite"
            ) from None
        suite.add_expectation(impl(**cfg.get("kwargs", {})))
    result = batch.validate(suite, result_format="SUMMARY")
    report = ValidationReport(suite_name, bool(result.success), len(df), evaluated=len(result.results))
    for r in result.results:
        if r.success:
            continue
        cfg = r.expectation_config
        res = r.result or {}
        report.failures.append({
            "expectation": cfg.type,
            "column": cfg.kwargs.get("column"),
            "unexpected_count": res.get("unexpected_count"),
            "sample": res.get("partial_unexpected_list", [])[:5],
        })
    return report
