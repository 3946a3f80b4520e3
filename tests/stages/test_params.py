"""The run's Params and model, checked before any GPU work (#15 item 3, #13 item 7):
RunConf.from_dict names every bad Param with its value and the fix, validate_inputs refuses a
model version the model folder does not have (in seconds, nothing generated), and such an
error fails its Airflow task at once instead of after every retry."""

from __future__ import annotations

import time

import pytest
from darkroom.catalog.tables import Asset, AssetClaim
from darkroom.config import Settings
from darkroom.errors import ModelError, ParamsError
from darkroom.params import RunConf
from darkroom.stages import validate
from sqlalchemy import func, select

from tests.support.campaigns import small_spec, stage_ctx


def test_every_bad_param_is_named_with_its_value_and_fix():
    with pytest.raises(ParamsError) as err:
        RunConf.from_dict({"limit": "abc", "dry_run": "false", "seed": 3, "variants": ["../x"]},
                          source="--conf")
    text = str(err.value)
    assert text.startswith("--conf cannot start a run:")
    assert '`limit` = "abc": is text, not a whole number' in text
    assert '`dry_run` = "false": give true or false' in text
    assert "`seed` = 3 is not a Param of campaign runs; they are model_version, limit" in text
    assert '"../x" is not a variant id' in text
    assert not err.value.retryable  # the same Params fail the same way on every retry
    ok = RunConf.from_dict({"limit": 2, "model_version": " 2 ", "variants": []})
    assert (ok.limit, ok.model_version, ok.variants, ok.dry_run) == (2, "2", None, False)


def test_a_model_version_the_folder_lacks_fails_validate_inputs_in_seconds(tmp_path, catalog_url,
                                                                           tiny_model):
    settings = Settings.from_env(catalog_url=catalog_url, tiny_model_dir=tiny_model)
    spec = small_spec(tmp_path)
    ctx = stage_ctx(spec, settings, conf={"model_version": "0badc0de"})
    started = time.monotonic()
    with pytest.raises(ModelError) as err:
        validate.run(ctx)
    assert time.monotonic() - started < 60  # no retries, no GPU work: the model is only looked up
    text = str(err.value)
    assert str(spec) in text and "Param `model_version` = '0badc0de'" in text, text
    assert "nothing was generated" in text and not err.value.retryable
    with ctx.catalog.session() as s:
        assert s.scalar(select(func.count()).select_from(Asset)) == 0
        assert s.scalar(select(func.count()).select_from(AssetClaim)) == 0


def test_user_errors_fail_the_task_at_once_server_errors_are_retried():
    from airflow.sdk.exceptions import AirflowFailException
    from darkroom_operators.failures import no_retry_for_user_errors

    @no_retry_for_user_errors
    def task(error):
        raise error

    with pytest.raises(AirflowFailException, match="ModelError: no version 9"):
        task(ModelError("no version 9"))
    busy = ModelError("the registry did not answer", retryable=True)
    with pytest.raises(ModelError) as err:
        task(busy)
    assert err.value is busy
