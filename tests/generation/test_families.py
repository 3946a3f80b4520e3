"""The model families: tiny offline pipelines of each (sd, sdxl, sd3, flux), the family
helpers that drive them (darkroom.generation.families)."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pytest
import torch
from darkroom.devtools.tiny_model import ARCHS, build_tiny_pipeline
from darkroom.errors import ModelError
from darkroom.generation import families
from darkroom.generation.families import default_dtype, family_of, pipeline_kwargs
from darkroom.generation.local import seeded_latents, torch_dtype

CLASSES = {"sd": "StableDiffusionPipeline", "sdxl": "StableDiffusionXLPipeline",
           "sd3": "StableDiffusion3Pipeline", "flux": "FluxPipeline"}
SIZE, STEPS = 64, 2
PROMPTS = ["studio photo of a terracotta tile", "a blue ceramic vase on an oak table"]


@pytest.fixture(scope="module")
def built(tmp_path_factory) -> dict[str, Path]:
    root = tmp_path_factory.mktemp("families")
    return {arch: build_tiny_pipeline(root / f"tiny-{arch}", arch=arch) for arch in ARCHS}


@pytest.fixture(scope="module")
def pipes(built) -> dict:
    from diffusers import AutoPipelineForText2Image

    loaded = {}
    for arch, path in built.items():
        pipe = AutoPipelineForText2Image.from_pretrained(str(path))
        pipe.set_progress_bar_config(disable=True)
        loaded[arch] = pipe
    return loaded


def _generate(pipe, prompts: list[str], seeds: list[int]) -> list[np.ndarray]:
    """Pixels as the local backend records them: seeded latents in, 8-bit RGB out."""
    family = family_of(pipe)
    guidance = 3.5 if family == "flux" else 7.5
    out = pipe(prompt=prompts, height=SIZE, width=SIZE, num_inference_steps=STEPS,
               latents=seeded_latents(pipe, seeds, SIZE, SIZE, "cpu", torch.float32),
               output_type="pil", **pipeline_kwargs(family, guidance=guidance,
                                                    negative_prompts=["blurry"] * len(prompts)))
    return [np.asarray(img, dtype=np.int16) for img in out.images]


# -- tiny pipelines ---------------------------------------------------------------------------

@pytest.mark.parametrize("arch", ARCHS)
def test_each_tiny_pipeline_loads_as_its_family(arch, pipes):
    assert type(pipes[arch]).__name__ == CLASSES[arch]
    assert family_of(pipes[arch]) == arch


@pytest.fixture(scope="module")
def batch_of_two(pipes):
    """Each family's batch of two variants (seeds 11, 12), generated once for the tests."""
    cache: dict[str, list[np.ndarray]] = {}

    def get(arch: str) -> list[np.ndarray]:
        if arch not in cache:
            cache[arch] = _generate(pipes[arch], PROMPTS, [11, 12])
        return cache[arch]

    return get


@pytest.mark.parametrize("arch", ARCHS)
def test_same_seed_gives_the_same_pixels(arch, pipes, batch_of_two):
    first = batch_of_two(arch)
    again = _generate(pipes[arch], PROMPTS, [11, 12])
    for a, b in zip(first, again, strict=True):
        assert np.array_equal(a, b)
    assert not np.array_equal(first[0], first[1])  # and the two seeds differ


@pytest.mark.parametrize("arch", ARCHS)
def test_a_variant_looks_the_same_alone_or_in_a_batch(arch, pipes, batch_of_two):
    alone = _generate(pipes[arch], PROMPTS[1:], [12])[0]
    batched = batch_of_two(arch)[1]
    diff = np.abs(alone - batched)
    # Batched CPU matrix products sum in a shape-dependent order: a level, rarely.
    assert diff.max() <= 1, f"{arch}: up to {diff.max()} grey levels apart"
    assert (diff > 0).mean() < 0.01, f"{arch}: {(diff > 0).mean():.2%} of values differ"


@pytest.mark.parametrize("arch", ARCHS)
def test_different_prompts_give_different_pictures(arch, pipes):
    a, b = _generate(pipes[arch], PROMPTS, [5, 5])
    # Far beyond batch noise: each tiny builder amplifies its text encoders' output.
    assert np.abs(a - b).mean() > 5, f"{arch}: prompts barely change the picture"


def test_unknown_arch_is_refused(tmp_path):
    with pytest.raises(ValueError, match=r"arch='sd4'.*sd, sdxl, sd3, flux"):
        build_tiny_pipeline(tmp_path / "x", arch="sd4")
    assert not (tmp_path / "x").exists()


def test_build_tiny_cli_writes_non_sd_families_beside_the_sd_one(darkroom_home):
    from darkroom_cli.app import app
    from typer.testing import CliRunner

    runner = CliRunner()
    res = runner.invoke(app, ["models", "build-tiny", "--arch", "sd3"])
    assert res.exit_code == 0, res.output
    index = (darkroom_home / "models" / "tiny-sd3" / "model_index.json").read_text()
    assert '"StableDiffusion3Pipeline"' in index
    res = runner.invoke(app, ["models", "build-tiny", "--arch", "sd4"])
    assert res.exit_code != 0 and "sd, sdxl, sd3, flux" in res.output


# -- seeded latents -----------------------------------------------------------------------------

def test_sd_latents_are_the_backends_original_draw(pipes):
    # The formula LocalDiffusersBackend.initial_latents used before the families existed;
    # asset reproducibility depends on never changing it.
    pipe = pipes["sd"]
    scale, channels = pipe.vae_scale_factor, pipe.unet.config.in_channels
    expected = torch.stack([
        torch.randn((channels, 48 // scale, SIZE // scale), generator=torch.Generator("cpu").manual_seed(s),
                    dtype=torch.float32)
        for s in (3, 4)
    ]).to("cpu", torch.float32)
    assert torch.equal(seeded_latents(pipe, [3, 4], 48, SIZE, "cpu", torch.float32), expected)


@pytest.mark.parametrize("arch", ARCHS)
def test_latents_have_the_pipelines_shape_and_one_generator_per_variant(arch, pipes):
    pipe = pipes[arch]
    batch = seeded_latents(pipe, [7, 8], SIZE, SIZE, "cpu", torch.float32)
    alone = seeded_latents(pipe, [8], SIZE, SIZE, "cpu", torch.float32)
    assert torch.equal(batch[1], alone[0])
    # What the pipeline itself would draw for this size (it returns given latents as they are).
    denoiser = pipe.transformer if arch in ("sd3", "flux") else pipe.unet
    channels = denoiser.config.in_channels // (4 if arch == "flux" else 1)
    drawn = pipe.prepare_latents(2, channels, SIZE, SIZE, torch.float32, "cpu", None)
    if arch == "flux":
        drawn, _image_ids = drawn
    assert batch.shape == drawn.shape


def test_flux_latents_are_each_variants_noise_packed(pipes):
    pipe = pipes["flux"]
    packed = seeded_latents(pipe, [1, 2], SIZE, SIZE, "cpu", torch.float32)
    unpacked = pipe._unpack_latents(packed, SIZE, SIZE, pipe.vae_scale_factor)
    channels, rows, cols = families.latent_shape(pipe, SIZE, SIZE)
    for i, seed in enumerate((1, 2)):
        noise = torch.randn((channels, rows, cols), generator=torch.Generator("cpu").manual_seed(seed))
        assert torch.equal(unpacked[i], noise)


def test_a_size_the_family_cannot_take_names_the_field_and_the_fix(pipes):
    # Flux needs multiples of 2 x vae_scale_factor (4 here): 2x2 latent patches.
    with pytest.raises(ModelError, match=r"generation\.width = 62 .* multiple of 4; fix: use 60"):
        seeded_latents(pipes["flux"], [1], SIZE, 62, "cpu", torch.float32)


# -- family helpers ------------------------------------------------------------------------------

def test_default_dtype_table():
    table = {("cuda", "sd"): torch.float16, ("cuda", "sdxl"): torch.float16,
             ("cuda", "sd3"): torch.bfloat16, ("cuda", "flux"): torch.bfloat16}
    for family in families.FAMILIES:
        table[("mps", family)] = torch.float16
        table[("cpu", family)] = torch.float32
    for (device, family), dtype in table.items():
        assert torch_dtype(default_dtype(family, device)) is dtype, (device, family)
    assert torch_dtype(default_dtype("flux", "cuda:1")) is torch.bfloat16
    assert torch_dtype(default_dtype("sdxl", torch.device("cpu"))) is torch.float32
    with pytest.raises(ValueError, match="device='xla'.*cuda, mps or cpu"):
        default_dtype("sd", "xla")
    with pytest.raises(ValueError, match="family='kandinsky'"):
        default_dtype("kandinsky", "cpu")


def test_parse_dtype():
    assert torch_dtype(families.parse_dtype("float16")) is torch.float16
    assert torch_dtype(families.parse_dtype("bfloat16")) is torch.bfloat16
    assert torch_dtype(families.parse_dtype("float32")) is torch.float32
    assert families.parse_dtype("fp16") == "float16"
    assert families.parse_dtype("auto") is None
    assert torch_dtype(families.resolve_dtype("auto", "flux", "cuda")) is torch.bfloat16
    assert torch_dtype(families.resolve_dtype("float32", "flux", "cuda")) is torch.float32
    with pytest.raises(ValueError, match="dtype 'float8'.*auto, float16, bfloat16 or float32"):
        families.parse_dtype("float8")


def test_family_differences_in_the_call():
    assert pipeline_kwargs("sdxl", guidance=7.5, negative_prompts=["x"]) == {
        "guidance_scale": 7.5, "negative_prompt": ["x"]}
    # Flux: guidance is the distilled embedding, and a negative prompt would need a second pass.
    assert pipeline_kwargs("flux", guidance=3.5, negative_prompts=["x"]) == {"guidance_scale": 3.5}
    assert not families.takes_negative_prompt("flux")
    families.check_scheduler("sd", "ddim")
    families.check_scheduler("flux", "euler")
    with pytest.raises(ModelError, match=r"generation\.scheduler = 'ddim' .* sd3 .* fix: use scheduler: euler"):
        families.check_scheduler("sd3", "ddim")


def test_family_of_refuses_other_pipelines():
    class KandinskyPipeline:
        pass

    with pytest.raises(ModelError, match="KandinskyPipeline is not a pipeline family"):
        family_of(KandinskyPipeline())


# -- full-size benchmark architectures ------------------------------------------------------------


@pytest.mark.parametrize("arch", ARCHS)
def test_the_local_backend_drives_each_family_batch_invariantly(arch, built):
    """Through Darkroom's own loading and call path (resolve_model -> LocalDiffusersBackend):
    the family is read from model_index.json, SD3/Flux keep their flow-matching scheduler,
    and at a fixed pass size a variant's pixels do not depend on its batch, bit for bit."""
    from darkroom.config import Settings
    from darkroom.generation.local import LocalDiffusersBackend
    from darkroom.generation.models import model_family
    from darkroom.generation.resolve import resolve_model
    from darkroom.generation.types import Request

    ref = resolve_model(str(built[arch]), None, Settings.from_env())
    assert model_family(ref) == arch
    backend = LocalDiffusersBackend(ref, "cpu")
    reqs = [Request(f"v{i}", f"a {c} mug on a table", "blurry", 11 + i, 64, 64, 2, 3.5, "euler")
            for i, c in enumerate(("red", "blue", "green"))]
    together = [np.asarray(r.image) for r in backend.generate(reqs[:2], pass_size=2)]
    for i, req in enumerate(reqs[:2]):
        alone = np.asarray(backend.generate([req], pass_size=2)[0].image)
        assert np.array_equal(alone, together[i])
    other = np.asarray(backend.generate([reqs[2], reqs[1]], pass_size=2)[1].image)
    assert np.array_equal(other, together[1])
    assert not np.array_equal(together[0], together[1])
    if arch in ("sd3", "flux"):
        assert backend.sampler_name("euler") == "Euler (flow matching)"
        with pytest.raises(ModelError, match="generation.scheduler = 'ddim' cannot step"):
            backend.generate([Request("x", "a mug", "", 1, 64, 64, 2, 3.5, "ddim")])
