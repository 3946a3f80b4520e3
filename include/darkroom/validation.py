"""Product data checked with Great Expectations 1.x before anything is generated.

GX is imported inside :func:`validate_products` (it takes seconds to import), so DAG parsing
never pays for it. The suite is the campaign's defaults (required columns exist, id not null
and unique, required columns not null) plus the spec's suite file or inline expectations.
Reference images are checked by our own code (GX has no "file exists" expectation) and
reported in the same report, the same way.
"""

from __future__ import annotations

import html
import json
import logging
import math
from dataclasses import dataclass, field
from pathlib import Path
from urllib.parse import unquote, urlparse

import pandas as pd

from darkroom import confine, imaging
from darkroom.config import PROJECT_ROOT, Settings
from darkroom.errors import ValidationFailed
from darkroom.spec import LoadedSpec
from darkroom.storage import S3Storage

log = logging.getLogger("darkroom")
SAMPLE_ROWS = 5
#: Characters of a value shown in reports (the value itself may be megabytes).
SHOWN_CHARS = 120
#: Bytes of an expectation suite file.
MAX_SUITE_BYTES = 1024 * 1024
REFERENCE_CHECK = "expect_reference_images_to_exist"


@dataclass
class ValidationReport:
    suite: str
    success: bool
    rows: int
    failures: list[dict] = field(default_factory=list)
    evaluated: int = 0
    results: list[dict] = field(default_factory=list)  # every expectation, passed or not
    report_uri: str | None = None
    gx_result: object = field(default=None, repr=False)  # GX's ExpectationSuiteValidationResult

    def summary(self) -> dict:
        return {"suite": self.suite, "success": self.success, "rows": self.rows,
                "evaluated": self.evaluated, "failures": self.failures,
                "report_uri": self.report_uri}

    def describe(self) -> str:
        lines = [f"{len(self.failures)} of {self.evaluated} expectations failed on {self.rows} rows "
                 f"(suite {self.suite}):"]
        for f in self.failures:
            args = ", ".join(f"{k}={v!r}" for k, v in f.get("kwargs", {}).items() if k != "column")
            col = f" on column {f['column']!r}" if f.get("column") else ""
            lines.append(f"  - {f['expectation']}{col}{f' ({args})' if args else ''}: "
                         f"{f['unexpected_count']} failing row(s)"
                         + (f"; {f['detail']}" if f.get("detail") else ""))
            for row in f.get("sample", []):
                lines.append("      " + ", ".join(f"{k}={v!r}" for k, v in row.items()))
        if self.report_uri:
            lines.append(f"Report: {self.report_uri}")
        return "\n".join(lines)

    def to_html(self, title: str) -> str:
        """Great Expectations' own rendering of the validation result (the validation page
        its Data Docs show, rendered from the ephemeral context's result), with the checks GX
        does not run (reference images, missing columns) added after it as a table."""
        own = [r for r in self.results if r.get("by") == "darkroom"]
        if self.gx_result is None:
            return self._page(title, self._table(self.results))
        from great_expectations.render.renderer import ValidationResultsPageRenderer
        from great_expectations.render.view import DefaultJinjaPageView

        # Product data is untrusted and GX's renderer writes unexpected values into the page
        # unescaped: every value (and column name) is escaped and cut before GX sees it.
        for r in self.gx_result.results:
            r.result = _cut_values(r.result or {})
            cfg = r.expectation_config
            if cfg is not None and isinstance(cfg.kwargs.get("column"), str):
                cfg.kwargs["column"] = html.escape(cfg.kwargs["column"])
        page = DefaultJinjaPageView().render(ValidationResultsPageRenderer().render(self.gx_result))
        if own:
            section = (f'<div class="container"><h3>Checks outside Great Expectations</h3>'
                       f"{self._table(own)}</div>")
            page = page.replace("</body>", section + "</body>", 1)
        return page

    @staticmethod
    def _table(results: list[dict]) -> str:
        e = html.escape
        rows = []
        for r in sorted(results, key=lambda r: r["success"]):
            sample = "".join(
                "<li><code>" + e(", ".join(f"{k}={v!r}" for k, v in s.items())) + "</code></li>"
                for s in r.get("sample", []))
            kwargs = e(json.dumps(r.get("kwargs", {}), default=str))
            status = "passed" if r["success"] else "FAILED"
            rows.append(
                f'<tr class="{status.lower()}"><td>{status}</td><td>{e(r["expectation"])}</td>'
                f'<td>{e(str(r.get("column") or ""))}</td><td><code>{kwargs}</code></td>'
                f'<td>{e(str(r.get("unexpected_count") if r.get("unexpected_count") is not None else ""))}'
                f'</td><td>{e(r.get("detail") or "")}<ul>{sample}</ul></td></tr>')
        return ('<table class="table"><tr><th>status</th><th>expectation</th><th>column</th>'
                "<th>arguments</th><th>failing rows</th><th>detail / sample rows</th></tr>\n"
                + "\n".join(rows) + "\n</table>")

    def _page(self, title: str, table: str) -> str:
        e = html.escape
        verdict = "passed" if self.success else "failed"
        return f"""<!doctype html>
<html><head><meta charset="utf-8"><title>{e(title)}</title>
<style>body{{font-family:sans-serif;margin:2em}}table{{border-collapse:collapse}}
td,th{{border:1px solid #ccc;padding:4px 8px;vertical-align:top}}
tr.failed td:first-child{{color:#b00;font-weight:bold}}tr.passed td:first-child{{color:#070}}</style>
</head><body>
<h1>{e(title)}</h1>
<p>Suite <b>{e(self.suite)}</b>: <b>{verdict}</b> — {len(self.failures)} of {self.evaluated}
expectations failed on {self.rows} rows.</p>
{table}
</body></html>
"""


def _plain(v):
    """JSON- and repr-friendly values: numpy scalars to Python, NaN to None."""
    if hasattr(v, "item"):
        v = v.item()
    if isinstance(v, float) and math.isnan(v):
        return None
    return v if v is None or isinstance(v, str | int | float | bool) else str(v)


def suite_path(loaded: LoadedSpec, name: str) -> Path:
    path = loaded.resolve(name)
    if not path.is_file():
        path = PROJECT_ROOT / "include" / "expectations" / name
    if not path.is_file():
        raise ValidationFailed(
            f"{loaded.path}: field `products.expectations` = {name!r}: no such suite next to the "
            f"spec or in include/expectations/; fix: create it or correct the name")
    return path


def expectation_configs(loaded: LoadedSpec, text_columns: list[str] = ()) -> list[dict]:
    """The suite: the defaults (required columns exist, id not null and unique, required
    columns not null, every text column in ``text_columns`` at most
    ``products.max_value_length`` characters), then the spec's suite file or inline list."""
    spec = loaded.spec
    p = spec.products
    required = list(dict.fromkeys([p.id_column, *p.required_columns, *p.columns.values()]))
    configs = [{"type": "expect_column_to_exist", "kwargs": {"column": c}} for c in required]
    configs += [
        {"type": "expect_column_values_to_not_be_null", "kwargs": {"column": p.id_column}},
        {"type": "expect_column_values_to_be_unique", "kwargs": {"column": p.id_column}},
    ]
    for col in p.required_columns:
        if col != p.id_column:
            configs.append({"type": "expect_column_values_to_not_be_null", "kwargs": {"column": col}})
    # A 2 MB product name is an export gone wrong (or an attack), not a prompt: it would reach
    # every prompt, file and manifest. Fix: products.max_value_length, or clean the data.
    configs += [{"type": "expect_column_value_lengths_to_be_between",
                 "kwargs": {"column": c, "min_value": 0, "max_value": p.max_value_length}}
                for c in text_columns]
    if isinstance(p.expectations, str):
        path = suite_path(loaded, p.expectations)
        where = f"{loaded.path}: field `products.expectations` = {p.expectations!r}: {path}"
        try:
            if path.stat().st_size > MAX_SUITE_BYTES:
                raise ValidationFailed(f"{where} is over {MAX_SUITE_BYTES:,} bytes; fix: a suite "
                                       "holds expectations, not data")
            data = json.loads(path.read_bytes().decode("utf-8-sig"))
        except UnicodeDecodeError as exc:
            raise ValidationFailed(f"{where} is not UTF-8 text (byte 0x{exc.object[exc.start]:02x} "
                                   f"at offset {exc.start}); fix: save it as UTF-8") from None
        except json.JSONDecodeError as exc:
            raise ValidationFailed(f"{path}: not valid JSON at line {exc.lineno}: {exc.msg}") from None
        except RecursionError:
            raise ValidationFailed(f"{where} nests too deeply to read; fix the suite") from None
        if not isinstance(data, dict) or not isinstance(data.get("expectations", []), list):
            raise ValidationFailed(f"{where}: expected an object with a list `expectations`, as "
                                   "Great Expectations writes suites; fix the suite")
        configs += data.get("expectations", [])
    elif p.expectations:
        configs += [x.model_dump() for x in p.expectations]
    return configs


def _shown(v):
    """A value as reports show it: long text cut, with its length."""
    v = _plain(v)
    if isinstance(v, str) and len(v) > SHOWN_CHARS:
        return f"{v[:SHOWN_CHARS]}... ({len(v):,} characters)"
    return v


def _cut_values(value):
    """``value`` (a GX result's lists and dicts) with every text cut as :func:`_shown` does
    and HTML-escaped, keys included."""
    if isinstance(value, dict):
        return {html.escape(k) if isinstance(k, str) else k: _cut_values(v) for k, v in value.items()}
    if isinstance(value, list | tuple):
        return type(value)(_cut_values(v) for v in value)
    return html.escape(_shown(value)) if isinstance(value, str) else value


def text_columns(df) -> list[str]:
    """Columns holding text (pandas' string dtype, or objects that are all str)."""
    out = []
    for col in df.columns:
        s = df[col]
        if pd.api.types.is_string_dtype(s.dtype) and (
                s.dtype != object or s.dropna().map(type).eq(str).all()):
            out.append(str(col))
    return out


def _sample(res: dict, id_col: str, column: str | None) -> list[dict]:
    rows = res.get("unexpected_index_list") or []
    if rows and isinstance(rows[0], dict):
        out = []
        for r in rows[:SAMPLE_ROWS]:
            d = {id_col: _shown(r.get(id_col))}
            if column and column != id_col:
                d[column] = _shown(r.get(column))
            out.append(d)
        return out
    return [{column or "value": _shown(v)} for v in (res.get("partial_unexpected_list") or [])[:SAMPLE_ROWS]]


def _image_exists(value: str, loaded: LoadedSpec, settings: Settings, s3_client_factory) -> str | None:
    """None when the reference (or mask) image is allowed and exists, else why not. Never
    sends a request anywhere but the campaign's own S3 roots."""
    try:
        uri = loaded.image_uri(value, settings)
    except confine.OutsideRoots as exc:
        return str(exc)
    try:
        if uri.startswith("s3://"):
            client = s3_client_factory() if s3_client_factory else None
            found = S3Storage(S3Storage.split(uri)[0], client=client).stat(uri)
            return None if found else "no such object"
        path = Path(unquote(urlparse(uri).path))
        if not path.is_file():
            return "no such file"
        # The header, with the limits generation decodes it with: an unreadable or oversized
        # image fails here, by its row, not later inside a GPU batch.
        imaging.probe(path)
        return None
    except imaging.BadImage as exc:
        return f"{exc}; fix: point it at a PNG, JPEG or WebP file"
    except Exception as exc:  # an unreachable bucket is a failing row, not a crash
        return f"{type(exc).__name__}: {exc}"[:300]


def check_reference_images(loaded: LoadedSpec, df, s3_client_factory=None,
                           settings: Settings | None = None) -> list[dict]:
    """One report entry per image column (reference, mask) the spec names."""
    settings = settings or Settings.from_env()
    p = loaded.spec.products
    out = []
    for col in dict.fromkeys(c for c in (p.reference_image_column, p.mask_image_column) if c):
        result = {"expectation": REFERENCE_CHECK, "column": col, "kwargs": {"column": col},
                  "success": True, "unexpected_count": 0, "sample": [], "by": "darkroom"}
        out.append(result)
        if col not in df.columns:
            result.update(success=False, detail=f"column {col!r} is missing", unexpected_count=len(df))
            continue
        bad = []
        for pid, value in zip(df[p.id_column], df[col], strict=True):
            value = _plain(value)
            if value in (None, ""):
                continue  # optional: make the column required to demand an image for every row
            why = _image_exists(str(value), loaded, settings, s3_client_factory)
            if why:
                bad.append({p.id_column: _shown(pid), col: _shown(value), "problem": why})
        result.update(success=not bad, unexpected_count=len(bad), sample=bad[:SAMPLE_ROWS])
    return out


def _quiet_context():
    # Great Expectations takes seconds to import: only the validate_inputs task pays for it.
    import great_expectations as gx
    from great_expectations.data_context.types.base import ProgressBarsConfig

    context = gx.get_context(mode="ephemeral")
    # tqdm bars in task logs are noise, one line per metric.
    context.variables.progress_bars = ProgressBarsConfig(globally=False, metric_calculations=False)
    return context


def validate_products(loaded: LoadedSpec, df, *, s3_client_factory=None,
                      settings: Settings | None = None) -> ValidationReport:
    """Run the suite (plus the reference-image check) on the product frame."""
    # GX logs its own registration chatter at INFO on import: not what a task log is for.
    logging.getLogger("great_expectations").setLevel(logging.WARNING)
    import great_expectations as gx  # seconds to import, as in _quiet_context
    from great_expectations.expectations.registry import get_expectation_impl

    # GX, ephemeral: nothing is written to disk, nothing is read from a project folder.
    context = _quiet_context()
    spec = loaded.spec
    id_col = spec.products.id_column
    suite_name = f"{spec.id}.products"
    present = set(df.columns)
    results: list[dict] = []
    # 1. Expectations on a missing column would only raise; its expect_column_to_exist fails.
    suite = gx.ExpectationSuite(name=suite_name)
    for cfg in expectation_configs(loaded, text_columns(df)):
        col = cfg.get("kwargs", {}).get("column")
        if col is not None and col not in present and cfg["type"] != "expect_column_to_exist":
            results.append({"expectation": cfg["type"], "column": col, "kwargs": cfg.get("kwargs", {}),
                            "success": False, "unexpected_count": len(df), "sample": [],
                            "detail": f"column {col!r} is missing (has {sorted(present)})",
                            "by": "darkroom"})
            continue
        try:
            impl = get_expectation_impl(cfg["type"])
            suite.add_expectation(impl(**cfg.get("kwargs", {})))
        except Exception as exc:
            raise ValidationFailed(
                f"{loaded.path}: expectation {cfg['type']!r} in the product suite is invalid: "
                f"{str(exc).splitlines()[0]}; fix its type or kwargs") from None
    # 2. Validate the whole frame as one batch.
    batch = (
        context.data_sources.add_pandas("products")
        .add_dataframe_asset("products")
        .add_batch_definition_whole_dataframe("all")
        .get_batch(batch_parameters={"dataframe": df})
    )
    index_cols = [id_col] if id_col in present else []
    result = batch.validate(suite, result_format={
        "result_format": "COMPLETE", "unexpected_index_column_names": index_cols,
        "partial_unexpected_count": SAMPLE_ROWS, "return_unexpected_index_query": False})
    for r in result.results:
        cfg = r.expectation_config
        res = r.result or {}
        col = cfg.kwargs.get("column")
        entry = {"expectation": cfg.type, "column": col,
                 "kwargs": {k: _plain(v) if not isinstance(v, list | dict) else v
                            for k, v in cfg.kwargs.items() if k not in ("batch_id",)},
                 "success": bool(r.success), "unexpected_count": res.get("unexpected_count"),
                 "sample": [] if r.success else _sample(res, id_col, col)}
        if cfg.type == "expect_column_to_exist" and not r.success:
            entry["detail"] = f"column {col!r} is missing (has {sorted(present)})"
        exc_info = r.exception_info or {}
        if exc_info.get("raised_exception"):
            entry["detail"] = str(exc_info.get("exception_message"))[:300]
        results.append(entry)
    # 3. Our own check, reported like the others.
    results += check_reference_images(loaded, df, s3_client_factory, settings)
    failures = [{k: v for k, v in r.items() if k != "success"} for r in results if not r["success"]]
    return ValidationReport(suite_name, not failures, len(df), failures=failures,
                            evaluated=len(results), results=results, gx_result=result)
