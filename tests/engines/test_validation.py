"""Product data validation with Great Expectations: readable failures, nothing generated,
the result in the catalog and an HTML report in storage."""

from __future__ import annotations

import shutil
import subprocess
import sys
from pathlib import Path

import pandas as pd
import pytest
from darkroom.errors import ValidationFailed
from darkroom.spec import load_spec
from darkroom.validation import validate_products
from PIL import Image

from tests.support.campaigns import make_spec, write_products

ROOT = Path(__file__).resolve().parents[2]


def test_missing_required_column_is_reported(tmp_path):
    spec = make_spec(tmp_path, source=write_products(tmp_path, lambda df: df.drop(columns="colour",
                                                                                    inplace=True)))
    report = validate_products(load_spec(spec), pd.read_csv(tmp_path / "products.csv"))
    assert not report.success
    missing = [f for f in report.failures if f["column"] == "colour"]
    assert {f["expectation"] for f in missing} == {"expect_column_to_exist",
                                                   "expect_column_values_to_not_be_null"}
    assert "column 'colour' is missing" in report.describe()


def test_inline_expectations(tmp_path):
    inline = [{"type": "expect_column_values_to_be_between",
               "kwargs": {"column": "price_eur", "min_value": 0, "max_value": 15}}]
    spec = make_spec(tmp_path, source=write_products(tmp_path), expectations=inline)
    report = validate_products(load_spec(spec), pd.read_csv(tmp_path / "products.csv", dtype={"sku": str}))
    [fail] = report.failures
    assert fail["expectation"] == "expect_column_values_to_be_between"
    assert fail["unexpected_count"] == 11  # 12 products, 1 at or under 15 EUR
    assert len(fail["sample"]) == 5 and set(fail["sample"][0]) == {"sku", "price_eur"}


def test_unknown_expectation_names_it(tmp_path):
    spec = make_spec(tmp_path, source=write_products(tmp_path),
                     expectations=[{"type": "expect_column_values_to_be_shiny", "kwargs": {"column": "sku"}}])
    with pytest.raises(ValidationFailed, match=r"expectation 'expect_column_values_to_be_shiny'"):
        validate_products(load_spec(spec), pd.read_csv(tmp_path / "products.csv"))


def test_reference_images_local_and_s3(tmp_path, s3_client, bucket):
    (tmp_path / "refs").mkdir()
    Image.new("RGB", (8, 8)).save(tmp_path / "refs" / "mug.png")  # local files are read: a real PNG
    s3_client.put_object(Bucket=bucket, Key="refs/cup.png", Body=b"png")
    s3_client.put_object(Bucket=bucket, Key="elsewhere/cup.png", Body=b"png")
    refs = ["refs/mug.png", f"s3://{bucket}/refs/cup.png", "refs/gone.png",
            f"s3://{bucket}/refs/gone.png", f"s3://{bucket}/elsewhere/cup.png"] + [None] * 7

    def add_refs(df):
        df["reference"] = refs

    spec = make_spec(tmp_path, source=write_products(tmp_path, add_refs), reference_image_column="reference",
                     image_roots=[f"s3://{bucket}/refs/"])
    df = pd.read_csv(tmp_path / "products.csv", dtype={"sku": str})
    report = validate_products(load_spec(spec), df, s3_client_factory=lambda: s3_client)
    [fail] = report.failures
    assert fail["expectation"] == "expect_reference_images_to_exist"
    assert fail["unexpected_count"] == 3
    problems = [(r["sku"], r["problem"]) for r in fail["sample"]]
    assert problems[:2] == [("TER-003", "no such file"), ("TER-004", "no such object")]
    # An object that exists, but under a prefix the spec does not list, is refused unread.
    assert problems[2][0] == "TER-005" and "not under an s3:// prefix listed in products.image_roots" in problems[2][1]


def test_no_great_expectations_import_at_parse_time():
    code = ("import sys; from darkroom.spec import load_spec; import darkroom.stages.validate, "
            "darkroom.stages.plan, darkroom.stages.generate, darkroom.stages.qa, darkroom.prompts, "
            "darkroom.products, darkroom.validation; "
            f"load_spec({str(ROOT / 'include/campaigns/spring_tiles.yaml')!r}); "
            "assert 'great_expectations' not in sys.modules, 'GX imported at parse time'")
    proc = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, timeout=120)
    assert proc.returncode == 0, proc.stderr


def test_no_progress_bars(tmp_path, capfd):
    spec = make_spec(tmp_path, source=write_products(tmp_path))
    validate_products(load_spec(spec), pd.read_csv(tmp_path / "products.csv", dtype={"sku": str}))
    captured = capfd.readouterr()
    assert "Calculating Metrics" not in captured.err + captured.out


def test_suite_file_next_to_spec(tmp_path):
    shutil.copy(ROOT / "include/expectations/spring_tiles.json", tmp_path / "mine.json")
    text = (tmp_path / "mine.json").read_text().replace('"max_value": 500', '"max_value": 10')
    (tmp_path / "mine.json").write_text(text)
    spec = make_spec(tmp_path, source=write_products(tmp_path), expectations="mine.json")
    report = validate_products(load_spec(spec), pd.read_csv(tmp_path / "products.csv", dtype={"sku": str}))
    assert [f["column"] for f in report.failures] == ["price_eur"]
