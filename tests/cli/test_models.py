"""`darkroom models register|promote|rollback|list` against a real MLflow server."""

from __future__ import annotations

import json

from darkroom.devtools.tiny_model import build_tiny_pipeline
from darkroom_cli.app import app
from typer.testing import CliRunner


def test_register_promote_rollback_from_the_cli(mlflow_uri, tmp_path):
    model = build_tiny_pipeline(tmp_path / "tiny")
    runner = CliRunner()

    def ok(*args):
        result = runner.invoke(app, list(args))
        assert result.exit_code == 0, result.output + repr(result.exception)
        return result.output

    ok("models", "register", "cli_profile", str(model), "--scheduler", "ddim", "--steps", "3",
       "--lora", "style_v2@3:0.8=/models/loras/style_v2", "--alias", "champion")
    ok("models", "register", "cli_profile", str(model), "--alias", "challenger")
    assert "was 1" in ok("models", "promote", "cli_profile", "2")
    info = json.loads(ok("models", "list", "cli_profile"))
    assert info["aliases"] == {"champion": "2", "challenger": "2"}
    first = info["versions"][0]["profile"]
    assert first["loras"] == [{"name": "style_v2", "version": "3", "weight": 0.8, "path": "/models/loras/style_v2"}]
    assert first["defaults"] == {"steps": 3} and first["scheduler"] == "ddim"
    assert "-> version 1 (rolled back)" in ok("models", "rollback", "cli_profile")
    assert json.loads(ok("models", "list", "cli_profile"))["aliases"]["champion"] == "1"

    bad = runner.invoke(app, ["models", "register", "cli_profile", str(model), "--lora", "style_v2"])
    assert bad.exit_code != 0 and "NAME@VERSION" in str(bad.exception)
