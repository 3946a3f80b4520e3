"""Campaign specs: valid examples load; bad ones fail naming the file, field, value and fix."""

from __future__ import annotations

import json
from pathlib import Path

import pytest
import yaml
from darkroom.errors import SpecError
from darkroom.spec import find_spec, json_schema, load_spec, parse_spec

ROOT = Path(__file__).resolve().parents[2]
CAMPAIGNS = ROOT / "include" / "campaigns"


@pytest.mark.parametrize("name", ["spring_tiles", "summer_social"])
def test_examples_load(name):
    loaded = load_spec(CAMPAIGNS / f"{name}.yaml")
    assert loaded.spec.id == name
    assert loaded.spec.dag_id == f"campaign__{name}"
    assert Path(loaded.product_source).is_file()


def test_spec_hash_is_stable_and_content_sensitive(tmp_path):
    a = load_spec(CAMPAIGNS / "spring_tiles.yaml").spec
    b = load_spec(CAMPAIGNS / "spring_tiles.yaml").spec
    assert a.spec_hash == b.spec_hash
    assert a.model_copy(update={"brief": "changed"}).spec_hash != a.spec_hash


def _write_variant(tmp_path: Path, mutate) -> Path:
    data = yaml.safe_load((CAMPAIGNS / "spring_tiles.yaml").read_text())
    data["products"]["source"] = str(CAMPAIGNS / "spring_tiles.products.csv")
    data["brand"]["restricted_terms_file"] = str(ROOT / "include" / "brand" / "restricted_terms.txt")
    mutate(data)
    path = tmp_path / "campaign.yaml"
    path.write_text(yaml.safe_dump(data))
    return path


def _set(path: str, value):
    def mutate(data):
        *parents, last = path.split(".")
        node = data
        for p in parents:
            node = node[int(p)] if p.isdigit() else node[p]
        node[last] = value
    return mutate


BAD = [
    pytest.param(_set("generation.steps", 0), ["generation.steps", "= 0", "greater than or equal to 1"], id="steps-zero"),
    pytest.param(_set("generation.stepz", 5), ["generation.stepz", "remove it or fix its spelling", "steps"], id="unknown-field-lists-allowed"),
    pytest.param(_set("id", "Spring Tiles"), ["`id`", '"Spring Tiles"', "lower-case"], id="bad-id"),
    pytest.param(_set("asset_types.0.channels", ["web_tile", "billboard"]), ["billboard", "define it under `channels:`"], id="undefined-channel"),
    pytest.param(_set("generation.scheduler", "ddpm++"), ["generation.scheduler", '"ddpm++"', "'ddim'"], id="unknown-scheduler"),
    pytest.param(_set("qa.checks", {"sharpnes": {}}), ["qa.checks", "sharpnes", "known checks"], id="unknown-check"),
    pytest.param(_set("approval.timeout", "a week"), ["approval.timeout", '"a week"', "30s, 15m, 12h or 7d"], id="bad-duration"),
    pytest.param(_set("products.source", "missing.csv"), ["products.source", "missing.csv", "does not exist"], id="missing-product-file"),
    pytest.param(_set("products.source", "products.xlsx"), ["products.source", ".csv or .parquet"], id="unsupported-format"),
    pytest.param(_set("prompts.positive", "photo of {{ product.name "), ["prompts.positive", "syntax error"], id="template-syntax"),
    pytest.param(_set("publish", [{"kind": "ftp", "path": "x"}]), ["publish.0", "ftp", "'folder', 's3'"], id="unknown-destination"),
    pytest.param(lambda d: d.pop("brief"), ["`brief` is missing", "add this field"], id="missing-brief"),
    pytest.param(_set("approval.review", "peer"), ["approval.review", '"peer"', "'human', 'automated' or 'exception'"], id="unknown-review-mode"),
    pytest.param(_set("approval.audit_rate", 1.5), ["approval.audit_rate", "= 1.5", "a number from 0 to 1"], id="audit-rate-over-1"),
    pytest.param(_set("approval.asset_types", {"banner": {"review": "automated"}}), ["approval.asset_types", "'banner'", "['hero_tile']"], id="review-of-unknown-asset-type"),
    pytest.param(lambda d: d["approval"].update(required=False, asset_types={"hero_tile": {"review": "exception"}}),
                 ["required: false means no person decides", "asset_types.hero_tile.review is 'exception'", "fix: drop `required: false`"], id="required-false-with-people"),
    pytest.param(_set("asset_types.0.generation", {"variants_per_task": 2}),
                 ["asset_types.0", "asset type 'hero_tile'", "generation.variants_per_task holds for the "
                  "whole campaign", "fix: set it under the campaign's `generation:`", "model, revision"],
                 id="asset-type-campaign-wide-field"),
    pytest.param(_set("asset_types.0.generation", {"mode": "inpaint"}),
                 ["asset type 'hero_tile'", "generation.mode holds for the whole campaign"],
                 id="asset-type-mode"),
    pytest.param(_set("asset_types.0.generation", {"steps": 0}),
                 ["asset_types.0.generation.steps", "= 0", "a whole number from 1 to 200"],
                 id="asset-type-steps-bounds"),
    pytest.param(_set("asset_types.0.generation", {"modle": "demo"}),
                 ["asset_types.0.generation.modle", "remove it or fix its spelling", "model"],
                 id="asset-type-unknown-field"),
    pytest.param(_set("asset_types.0.generation", {"model": None}),
                 ["asset_types.0.generation.model", "valid string"], id="asset-type-model-null"),
    pytest.param(lambda d: (d["generation"].update(backend="http"),
                            d["asset_types"][0].update(generation={"loras": [{"path": "style.safetensors"}]})),
                 ["asset_types.0.generation (asset type 'hero_tile')", "loras run on the local diffusers "
                  "backend only", "backend 'http'"], id="asset-type-loras-on-http"),
]


@pytest.mark.parametrize("mutate,expected", BAD)
def test_bad_spec_names_file_field_value_and_fix(tmp_path, mutate, expected):
    path = _write_variant(tmp_path, mutate)
    with pytest.raises(SpecError) as info:
        load_spec(path)
    message = str(info.value)
    assert str(path) in message
    for fragment in expected:
        assert fragment in message, f"{fragment!r} not in:\n{message}"


def test_invalid_yaml_names_line(tmp_path):
    path = tmp_path / "bad.yaml"
    path.write_text("id: x\nbrief: [unclosed\n")
    with pytest.raises(SpecError, match=r"not valid YAML at line \d+"):
        load_spec(path)


def test_yaml_tags_are_not_executed(tmp_path):
    path = tmp_path / "evil.yaml"
    path.write_text("id: !!python/object/apply:os.system ['echo pwned']\n")
    with pytest.raises(SpecError, match="not valid YAML"):
        load_spec(path)


def test_find_spec_by_id_and_path():
    assert find_spec("summer_social", CAMPAIGNS).name == "summer_social.yaml"
    assert find_spec(str(CAMPAIGNS / "spring_tiles.yaml"), CAMPAIGNS).name == "spring_tiles.yaml"
    with pytest.raises(SpecError, match="known: .*spring_tiles"):
        find_spec("nope", CAMPAIGNS)


def test_exported_json_schema_is_current():
    committed = json.loads((ROOT / "schemas" / "campaign.schema.json").read_text())
    assert committed == json_schema(), "run `make schema` and commit schemas/campaign.schema.json"


def test_review_routing_per_asset_type_over_the_campaigns(tmp_path):
    def mutate(data):
        data["asset_types"].append({"name": "banner", "channels": ["web_tile"]})
        data["approval"] = {"review": "exception", "audit_rate": 0.1,
                            "asset_types": {"banner": {"review": "human", "audit_max_reject_rate": 0.5}}}
    approval = load_spec(_write_variant(tmp_path, mutate)).spec.approval
    assert approval.for_asset_type("hero_tile").model_dump() == {
        "review": "exception", "audit_rate": 0.1, "audit_max_reject_rate": 0.1}
    assert approval.for_asset_type("banner").model_dump() == {
        "review": "human", "audit_rate": 0.1, "audit_max_reject_rate": 0.5}
    # Old specs keep their meaning: nothing said is human, required: false is automated.
    old = load_spec(CAMPAIGNS / "spring_tiles.yaml").spec.approval
    assert old.for_asset_type("hero_tile").review == "human"
    assert old.model_copy(update={"required": False}).for_asset_type("hero_tile").review == "automated"


def test_asset_type_generation_overrides_only_what_it_sets(tmp_path):
    def two_asset_types(data):
        hero = data["asset_types"][0]
        hero["generation"] = {"model": "demo", "steps": 30, "width": 128, "height": 96,
                              "loras": [{"path": "hero_style.safetensors", "weight": 0.7}]}
        data["asset_types"].append({"name": "bulk_tile", "channels": ["web_tile"],
                                    "generation": {"steps": 2, "scheduler": "euler"}})
        data["asset_types"].append({"name": "plain_tile", "channels": ["web_tile"]})
    spec = load_spec(_write_variant(tmp_path, two_asset_types)).spec
    hero, bulk, plain = (spec.generation_for(n) for n in ("hero_tile", "bulk_tile", "plain_tile"))
    assert (hero.model, hero.steps, hero.width, hero.height, hero.scheduler) == ("demo", 30, 128, 96, "ddim")
    assert [(x.path, x.weight) for x in hero.loras] == [("hero_style.safetensors", 0.7)]
    assert (bulk.model, bulk.steps, bulk.scheduler, bulk.width) == ("tiny", 2, "euler", 64)
    assert plain == spec.generation  # no block: the campaign's, as before
    # Campaign-wide fields stay the campaign's for every asset type.
    assert {g.variants_per_task for g in (hero, bulk, plain)} == {spec.generation.variants_per_task}
    assert [at.own_model for at in spec.asset_types] == [True, False, False]
    # The body the catalog keeps says what the spec says (unset is not null) and loads again.
    body = spec.model_dump(mode="json")
    assert body["asset_types"][1]["generation"] == {"steps": 2, "scheduler": "euler"}
    assert parse_spec(body) == spec
