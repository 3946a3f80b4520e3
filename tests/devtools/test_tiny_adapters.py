"""The offline LoRA / IP-Adapter artifacts (darkroom.tiny_adapters) load and act through diffusers.

Real diffusers + peft on the tiny random pipeline, no mocks. Pictures are compared pixel for
pixel: with fixed latents and a fixed generator, CPU inference is deterministic, so "the same"
means bit-identical and "different" means a mean difference well above rounding.
"""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pytest
import torch

# peft is a pinned dependency (diffusers' LoRA loading needs it), so no importorskip: a
# missing peft must fail here, as it would fail production LoRA loading.
from darkroom.devtools.tiny_adapters import (
    IMAGE_ENCODER_FOLDER,
    IP_ADAPTER_SUBFOLDER,
    IP_ADAPTER_WEIGHT_NAME,
    LORA_WEIGHT_NAME,
    build_tiny_ip_adapter,
    build_tiny_lora,
)

PROMPT = "a red bottle on a table"
SIZE = 32  # pixels; the tiny VAE halves it, so latents are 16x16
# Mean absolute pixel difference (images in [0, 1]) that counts as "visibly different": about
# 5/255. The adapters built here move the picture by 0.09-0.19.
VISIBLE = 0.02


@pytest.fixture(scope="module", autouse=True)
def one_torch_thread():
    """Run this module's tiny models on one intra-op thread, then restore the setting.

    The models are a few thousand parameters wide: threads buy nothing, and on a shared
    2-core machine torch's spinning worker threads made each 2-step generation ~25x slower
    (2.6 s instead of 0.1 s) whenever other processes were busy.
    """
    before = torch.get_num_threads()
    torch.set_num_threads(1)
    yield
    torch.set_num_threads(before)


@pytest.fixture(scope="module")
def artifacts(tiny_model: Path, tmp_path_factory: pytest.TempPathFactory) -> dict[str, Path]:
    root = tmp_path_factory.mktemp("adapters")
    return {
        "lora_a": build_tiny_lora(root / "lora-a", tiny_model, seed=1),
        # "b" also carries a text-encoder part, so both halves of load_lora_weights are exercised.
        "lora_b": build_tiny_lora(root / "lora-b", tiny_model, seed=2, text_encoder=True),
        "ip": build_tiny_ip_adapter(root / "ip-adapter", tiny_model, seed=3),
    }


def _text2image(tiny_model: Path):
    from diffusers import AutoPipelineForText2Image

    pipe = AutoPipelineForText2Image.from_pretrained(str(tiny_model))
    pipe.set_progress_bar_config(disable=True)
    return pipe


def _generate(pipe, **kwargs) -> np.ndarray:
    # Fixed initial latents: every call starts from the same noise, so any difference between
    # two pictures comes from the adapters alone.
    latents = torch.randn((1, 4, SIZE // 2, SIZE // 2), generator=torch.Generator().manual_seed(1))
    out = pipe(PROMPT, latents=latents, num_inference_steps=2, height=SIZE, width=SIZE, output_type="np", **kwargs)
    return out.images[0]


def _diff(x: np.ndarray, y: np.ndarray) -> float:
    return float(np.abs(x - y).mean())


@pytest.fixture
def load_spy(monkeypatch: pytest.MonkeyPatch) -> list[str]:
    """Records every from_pretrained of a pipeline or model (diffusers or transformers).

    The real method still runs; the spy only proves that switching adapters loads nothing.
    """
    import diffusers
    import transformers

    calls: list[str] = []
    for cls in (diffusers.DiffusionPipeline, diffusers.ModelMixin, transformers.PreTrainedModel):
        func = cls.__dict__["from_pretrained"].__func__

        def counting(klass, *args, _func=func, **kwargs):
            calls.append(klass.__name__)
            return _func(klass, *args, **kwargs)

        monkeypatch.setattr(cls, "from_pretrained", classmethod(counting))
    return calls


# --------------------------------------------------------------------------- LoRA


def test_lora_files_are_seeded_and_in_diffusers_format(artifacts, tiny_model: Path, tmp_path: Path):
    from safetensors.torch import load_file

    a = load_file(artifacts["lora_a"] / LORA_WEIGHT_NAME)
    b = load_file(artifacts["lora_b"] / LORA_WEIGHT_NAME)
    again = load_file(build_tiny_lora(tmp_path / "again", tiny_model, seed=1) / LORA_WEIGHT_NAME)

    # diffusers' own save format: peft keys under the component prefix.
    assert a and all(k.startswith("unet.") and (".lora_A." in k or ".lora_B." in k) for k in a)
    assert {k.split(".")[0] for k in b} == {"unet", "text_encoder"}
    assert any(".attn2.to_k.lora_A." in k for k in a)  # cross-attention is adapted too
    # Deterministic for a seed; another seed, another LoRA.
    assert a.keys() == again.keys() and all(torch.equal(a[k], again[k]) for k in a)
    assert not any(torch.equal(a[k], b[k]) for k in a)
    # Non-trivial: peft's default init leaves lora_B at zero, which would change nothing.
    assert all(t.abs().mean() > 0.1 for k, t in a.items() if ".lora_B." in k)


def test_named_loras_switch_without_reloading(artifacts, tiny_model: Path, load_spy: list[str]):
    pipe = _text2image(tiny_model)
    base = _generate(pipe)
    # The text encoder's own weights, to check the LoRA leaves them alone. (transformers 5 logs a
    # "LOAD REPORT ... MISSING ... newly initialized" table while peft injects the text-encoder
    # LoRA; it lists the wrapped base layers and is harmless -- this proves it.)
    te_before = {k: v.clone() for k, v in pipe.text_encoder.state_dict().items()}

    pipe.load_lora_weights(str(artifacts["lora_a"]), adapter_name="a")
    pipe.load_lora_weights(str(artifacts["lora_b"]), adapter_name="b")
    assert pipe.get_list_adapters() == {"unet": ["a", "b"], "text_encoder": ["b"]}

    # From here on: only switching. Nothing may be loaded or rebuilt.
    load_spy.clear()
    ids = (id(pipe), id(pipe.unet), id(pipe.text_encoder), id(pipe.vae))

    pipe.set_adapters(["a"])
    img_a = _generate(pipe)
    pipe.set_adapters(["b"])
    img_b = _generate(pipe)
    pipe.set_adapters(["a"], adapter_weights=[0.0])
    img_a0 = _generate(pipe)
    pipe.disable_lora()
    img_off = _generate(pipe)
    pipe.enable_lora()
    pipe.set_adapters(["a"])
    img_a_again = _generate(pipe)
    pipe.set_adapters(["a", "b"], adapter_weights=[0.5, 0.5])
    img_mix = _generate(pipe)

    assert _diff(img_a, base) > VISIBLE
    assert _diff(img_b, base) > VISIBLE
    assert _diff(img_a, img_b) > VISIBLE
    assert _diff(img_mix, img_a) > VISIBLE and _diff(img_mix, img_b) > VISIBLE
    # Weight 0 and disable_lora add exactly nothing; switching back is exact.
    assert np.array_equal(img_a0, base)
    assert np.array_equal(img_off, base)
    assert np.array_equal(img_a_again, img_a)

    assert load_spy == []
    assert (id(pipe), id(pipe.unet), id(pipe.text_encoder), id(pipe.vae)) == ids
    # peft wraps q/k/v/out in place (``base_layer``); the base weights themselves are untouched.
    te_after = pipe.text_encoder.state_dict()
    for key, value in te_before.items():
        wrapped = key.replace(".weight", ".base_layer.weight").replace(".bias", ".base_layer.bias")
        assert torch.equal(value, te_after[key] if key in te_after else te_after[wrapped]), key

    # Loading "b" next to "a" did not disturb "a": same picture as "a" loaded alone.
    alone = _text2image(tiny_model)
    alone.load_lora_weights(str(artifacts["lora_a"]), adapter_name="a")
    assert np.array_equal(_generate(alone), img_a)


# --------------------------------------------------------------------------- IP-Adapter


def test_ip_adapter_layout_matches_its_image_encoder(artifacts, tiny_model: Path, tmp_path: Path):
    from safetensors.torch import load_file
    from transformers import CLIPImageProcessor, CLIPVisionConfig

    models = artifacts["ip"] / IP_ADAPTER_SUBFOLDER
    sd = load_file(models / IP_ADAPTER_WEIGHT_NAME)
    encoder = CLIPVisionConfig.from_pretrained(models / IMAGE_ENCODER_FOLDER)
    processor = CLIPImageProcessor.from_pretrained(models / IMAGE_ENCODER_FOLDER)

    assert {"image_proj.proj.weight", "image_proj.proj.bias", "image_proj.norm.weight", "image_proj.norm.bias"} <= sd.keys()
    # The adapter's image projection reads exactly what the encoder's projection writes.
    assert sd["image_proj.proj.weight"].shape[1] == encoder.projection_dim
    # The tiny UNet has 4 cross-attention layers (down_blocks.1: 1, mid: 1, up_blocks.0: 2),
    # numbered 1, 3, 5, 7 as diffusers' loader counts them.
    assert sorted(k for k in sd if k.startswith("ip_adapter.")) == sorted(
        f"ip_adapter.{n}.to_{kv}_ip.weight" for n in (1, 3, 5, 7) for kv in "kv"
    )
    assert processor.crop_size == {"height": encoder.image_size, "width": encoder.image_size}

    # Deterministic for a seed (adapter and encoder); another seed, another adapter.
    def weights(seed: int) -> dict:
        out = build_tiny_ip_adapter(tmp_path / str(seed), tiny_model, seed=seed) / IP_ADAPTER_SUBFOLDER
        return load_file(out / IP_ADAPTER_WEIGHT_NAME) | {
            f"encoder.{k}": v for k, v in load_file(out / IMAGE_ENCODER_FOLDER / "model.safetensors").items()
        }

    same, other = weights(3), weights(4)
    encoder_weights = load_file(models / IMAGE_ENCODER_FOLDER / "model.safetensors")
    assert all(torch.equal(same[k], v) for k, v in sd.items())
    assert all(torch.equal(same[f"encoder.{k}"], v) for k, v in encoder_weights.items())
    assert not torch.equal(other["ip_adapter.1.to_k_ip.weight"], sd["ip_adapter.1.to_k_ip.weight"])
    assert not torch.equal(other["encoder.visual_projection.weight"], encoder_weights["visual_projection.weight"])


def test_ip_adapter_reference_image_steers_text2image_and_image2image(artifacts, tiny_model: Path):
    from diffusers import AutoPipelineForImage2Image
    from PIL import Image

    red = Image.new("RGB", (SIZE, SIZE), (220, 30, 30))
    blue = Image.new("RGB", (SIZE, SIZE), (30, 30, 220))
    pipe = _text2image(tiny_model)
    base = _generate(pipe)

    pipe.load_ip_adapter(str(artifacts["ip"]), subfolder=IP_ADAPTER_SUBFOLDER, weight_name=IP_ADAPTER_WEIGHT_NAME)
    # The tiny pipeline ships no feature extractor: diffusers built one at the encoder's size.
    assert pipe.image_encoder is not None and pipe.feature_extractor is not None
    pipe.set_ip_adapter_scale(1.0)
    img_red = _generate(pipe, ip_adapter_image=red)
    img_blue = _generate(pipe, ip_adapter_image=blue)
    assert _diff(img_red, img_blue) > VISIBLE
    assert _diff(img_red, base) > VISIBLE
    # Scale 0: IPAdapterAttnProcessor2_0 skips the image branch entirely, and its text branch is
    # the same computation as the stock AttnProcessor2_0 -- bit-identical to no adapter at all.
    pipe.set_ip_adapter_scale(0.0)
    assert np.array_equal(_generate(pipe, ip_adapter_image=red), base)

    # A LoRA on top of the IP-Adapter: peft wraps the Linear layers, the IP-Adapter replaced the
    # attention processors; they compose, and disabling the LoRA restores the IP-only picture.
    pipe.set_ip_adapter_scale(1.0)
    pipe.load_lora_weights(str(artifacts["lora_a"]), adapter_name="a")
    assert _diff(_generate(pipe, ip_adapter_image=red), img_red) > VISIBLE
    pipe.disable_lora()
    assert np.array_equal(_generate(pipe, ip_adapter_image=red), img_red)

    # image2image shares the components (same UNet with its IP processors, same image encoder)
    # and StableDiffusionImg2ImgPipeline takes ip_adapter_image too.
    i2i = AutoPipelineForImage2Image.from_pipe(pipe)
    assert i2i.unet is pipe.unet and i2i.image_encoder is pipe.image_encoder
    init = Image.new("RGB", (SIZE, SIZE), (128, 128, 128))

    def image2image(**kwargs) -> np.ndarray:
        out = i2i(PROMPT, image=init, strength=0.9, num_inference_steps=2, output_type="np",
                  generator=torch.Generator().manual_seed(1), **kwargs)
        return out.images[0]

    i2i_red, i2i_blue = image2image(ip_adapter_image=red), image2image(ip_adapter_image=blue)
    assert _diff(i2i_red, i2i_blue) > VISIBLE
    i2i.set_ip_adapter_scale(0.0)  # the scale lives on the shared UNet's processors
    i2i_zero = image2image(ip_adapter_image=red)

    # Unloading restores the stock attention processors: the plain pipeline's picture again,
    # and image2image at IP scale 0 equalled image2image without any adapter.
    pipe.unload_ip_adapter()
    assert pipe.image_encoder is None
    assert np.array_equal(_generate(pipe), base)
    i2i = AutoPipelineForImage2Image.from_pipe(pipe)
    assert np.array_equal(image2image(), i2i_zero)
