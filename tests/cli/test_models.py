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
    # Each version lists its own aliases (MLflow's version search leaves them empty).
    assert {v["version"]: v["aliases"] for v in info["versions"]} == {"1": [], "2": ["challenger", "champion"]}
    first = info["versions"][0]["profile"]
    assert first["loras"] == [{"name": "style_v2", "version": "3", "weight": 0.8, "path": "/models/loras/style_v2"}]
    assert first["defaults"] == {"steps": 3} and first["scheduler"] == "ddim"
    assert "-> version 1 (rolled back)" in ok("models", "rollback", "cli_profile")
    assert json.loads(ok("models", "list", "cli_profile"))["aliases"]["champion"] == "1"

    bad = runner.invoke(app, ["models", "register", "cli_profile", str(model), "--lora", "style_v2"])
    assert bad.exit_code != 0 and "NAME@VERSION" in str(bad.exception)


def test_build_tiny_seed_makes_another_model(tmp_path):
    """A second tiny model to register as a new version: another seed, other weights."""
    from darkroom.generation.models import local_model_digest

    runner = CliRunner()
    for name, seed in (("a", "0"), ("b", "1"), ("c", "1")):
        result = runner.invoke(app, ["models", "build-tiny", str(tmp_path / name), "--seed", seed])
        assert result.exit_code == 0, result.output + repr(result.exception)
        assert f"seed {seed}" in result.output
    digests = {n: local_model_digest(tmp_path / n) for n in "abc"}
    assert digests["a"] != digests["b"] and digests["b"] == digests["c"], digests
