"""LoRAs and IP-Adapter from the spec, through the generate stage on the tiny pipeline:
loaded once, switched without reloading, recorded on every asset, reproducible."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pytest
import yaml
from darkroom import imaging
from darkroom.catalog.tables import AssetLora
from darkroom.config import Settings
from darkroom.devtools.tiny_adapters import build_tiny_ip_adapter, build_tiny_lora
from darkroom.errors import ModelError
from darkroom.generation.local import LocalDiffusersBackend
from darkroom.generation.models import PipelineOptions
from darkroom.generation.resolve import resolve_model
from darkroom.generation.types import Request
from darkroom.spec import Generation
from darkroom.stages.context import RunContext
from darkroom.stages.reproduce import regenerate_asset
from darkroom.storage import read_uri
from PIL import Image
from sqlalchemy import select

from tests.support.generation import generate_once

ROOT = Path(__file__).resolve().parents[2]


@pytest.fixture(scope="module")
def adapters(tiny_model, tmp_path_factory) -> dict[str, Path]:
    root = tmp_path_factory.mktemp("adapters")
    return {"a": build_tiny_lora(root / "lora-a", tiny_model, seed=1),
            "b": build_tiny_lora(root / "lora-b", tiny_model, seed=2),
            "ip": build_tiny_ip_adapter(root / "ip", tiny_model, seed=3)}


def _campaign(tmp_path: Path, **generation) -> Path:
    rows = ["sku,name,category,colour,material,price_eur,reference"]
    for sku, colour in (("TER-001", "red"), ("TER-002", "blue")):
        Image.new("RGB", (48, 48), colour).save(tmp_path / f"{sku}.png")
        rows.append(f"{sku},mug,drinkware,{colour},stoneware,10.00,{sku}.png")
    (tmp_path / "products.csv").write_text("\n".join(rows) + "\n")
    data = yaml.safe_load((ROOT / "include/campaigns/spring_tiles.yaml").read_text())
    data["brand"]["restricted_terms_file"] = str(ROOT / "include/brand/restricted_terms.txt")
    data["products"] = {"source": "products.csv", "id_column": "sku", "reference_image_column": "reference"}
    data["generation"].update(steps=2, seeds_per_variant=1, batch_size=2, **generation)
    spec = tmp_path / "campaign.yaml"
    spec.write_text(yaml.safe_dump(data))
    return spec


def _generate(spec: Path, run_id: str) -> tuple[dict, dict]:
    _, counts, assets = generate_once(spec, run_id)
    return counts, assets


def test_spec_loras_change_the_picture_and_are_recorded(tmp_path, use_tiny_model, adapters):
    spec = _campaign(tmp_path)
    _, plain = _generate(spec, "manual__plain")
    data = yaml.safe_load(spec.read_text())
    data["generation"]["loras"] = [{"path": str(adapters["a"]), "name": "style", "weight": 0.8},
                                   {"path": str(adapters["b"] / "pytorch_lora_weights.safetensors"),
                                    "name": "texture", "weight": 0.5}]
    spec.write_text(yaml.safe_dump(data))
    counts, styled = _generate(spec, "manual__styled")
    assert counts["generated"] == 2  # a LoRA is part of the identity: new asset versions
    for pid in plain:
        a, b = plain[pid], styled[pid]
        assert a.variant_id == b.variant_id and a.id != b.id and b.version == 2
        assert a.sha256 != b.sha256
        assert [(x["name"], x["weight"]) for x in b.loras] == [("style", 0.8), ("texture", 0.5)]
        prov = imaging.read_provenance(read_uri(b.uri))
        assert 'Lora hashes: "style: ' in prov.parameters and "texture: 0.5" in prov.parameters
        assert [x["name"] for x in prov.darkroom["loras"]] == ["style", "texture"]
    catalog = RunContext.open(spec, "campaign__spring_tiles", "manual__styled", {}).catalog
    with catalog.session() as s:
        assert {r.name for r in s.scalars(select(AssetLora))} == {"style", "texture"}
    # The recorded LoRAs (by content version) regenerate the same bytes.
    assert regenerate_asset(styled["TER-001"].id, Settings.from_env(), device="cpu").identical


def test_switching_loras_never_reloads_the_pipeline(tiny_model, adapters):
    settings = Settings.from_env()
    base = resolve_model(str(tiny_model), None, settings)
    with_a = base.with_spec_loras(Generation(loras=[{"path": str(adapters["a"])}]).loras)
    with_b = base.with_spec_loras(Generation(loras=[{"path": str(adapters["b"]), "weight": 0.7}]).loras)
    req = [Request("v", "a mug", "", 5, 64, 64, 2, 7.5, "ddim")]
    pixels = {}
    pipe = None
    for name, ref in (("base", base), ("a", with_a), ("b", with_b), ("a2", with_a), ("base2", base)):
        backend = LocalDiffusersBackend(ref, "cpu")
        pixels[name] = np.asarray(backend.generate(req)[0].image)
        pipe = pipe or backend.pipeline
        assert backend.pipeline is pipe  # one pipeline; adapters switched in place
    # Each LoRA loaded once (the pipeline is per process: earlier tests' adapters stay too).
    assert {f"{r.loras[0].name}_{r.loras[0].version}".replace("-", "_") for r in (with_a, with_b)} \
        <= set(pipe._darkroom_loras)
    assert not np.array_equal(pixels["base"], pixels["a"]) and not np.array_equal(pixels["a"], pixels["b"])
    assert np.array_equal(pixels["a"], pixels["a2"]) and np.array_equal(pixels["base"], pixels["base2"])
    assert with_a.identity != with_b.identity != base.identity
    assert base.identity == base.version  # no LoRA: the ids assets already have


def test_a_missing_lora_is_named(tiny_model, tmp_path):
    base = resolve_model(str(tiny_model), None, Settings.from_env())
    loras = Generation(loras=[{"path": "loras/missing.safetensors"}]).loras
    with pytest.raises(ModelError, match=r"generation.loras\[0\].path = 'loras/missing.safetensors': no such"):
        base.with_spec_loras(loras, lambda p: tmp_path / p)


def test_ip_adapter_steers_by_the_reference_image(tmp_path, use_tiny_model, adapters):
    spec = _campaign(tmp_path, ip_adapter={"path": str(adapters["ip"]), "scale": 0.8})
    counts, assets = _generate(spec, "manual__ip")
    assert counts["generated"] == 2
    prov = imaging.read_provenance(read_uri(assets["TER-001"].uri))
    assert 'IP-Adapter: "ip-adapter_sd15.safetensors: 0.8"' in prov.parameters
    assert prov.darkroom["ip_adapter"]["scale"] == 0.8
    # Same prompt template and seed for both products; only the reference differs by colour.
    # (The prompt names the colour too, so compare against the same product without adapter.)
    data = yaml.safe_load(spec.read_text())
    data["generation"]["ip_adapter"]["scale"] = 0.0
    spec.write_text(yaml.safe_dump(data))
    _, unsteered = _generate(spec, "manual__scale0")
    assert unsteered["TER-001"].sha256 != assets["TER-001"].sha256
    assert regenerate_asset(assets["TER-002"].id, Settings.from_env(), device="cpu").identical
    assert PipelineOptions.from_spec(
        Generation(ip_adapter={"path": "h94/IP-Adapter"})).ip_adapter[0] == "h94/IP-Adapter"


def test_each_variant_is_steered_by_its_own_reference_whatever_its_batch(tiny_model, adapters):
    """diffusers repeats one reference for a whole batch; the backend gives every variant its
    own, so a variant's pixels do not depend on its batch-mates' references."""
    from darkroom.generation.models import PipelineOptions

    ref = resolve_model(str(tiny_model), None, Settings.from_env())
    backend = LocalDiffusersBackend(ref, "cpu", options=PipelineOptions(
        ip_adapter=(str(adapters["ip"]), "models", "ip-adapter_sd15.safetensors", None)))
    red = Request("r", "a mug", "", 3, 64, 64, 2, 7.5, "ddim", reference=Image.new("RGB", (64, 64), "red"),
                  ip_adapter_scale=0.8)
    blue = Request("b", "a mug", "", 4, 64, 64, 2, 7.5, "ddim", reference=Image.new("RGB", (64, 64), "blue"),
                   ip_adapter_scale=0.8)
    px = lambda batch, i: np.asarray(backend.generate(batch, pass_size=2)[i].image)  # noqa: E731
    assert np.array_equal(px([blue], 0), px([red, blue], 1))
    assert np.array_equal(px([red], 0), px([red, blue], 0))
    recoloured = Request(**{**vars(blue), "reference": Image.new("RGB", (64, 64), "red")})
    assert not np.array_equal(px([blue], 0), px([recoloured], 0))
