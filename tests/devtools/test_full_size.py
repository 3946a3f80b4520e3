"""Full-size SD 1.5 / SDXL with random weights: the published architectures, checked on the
meta device; the bench command refuses an unknown one."""

from __future__ import annotations

import torch


def test_full_size_configs_are_the_published_architectures():
    from darkroom.devtools import full_size

    counts = {}
    for arch in full_size.ARCHS:
        with torch.device("meta"):  # shapes only: no 14 GB of weights on a CI machine
            models = full_size.build_components(arch)
        counts[arch] = {name: sum(p.numel() for p in m.parameters()) for name, m in models.items()}
        assert all(p.is_meta for m in models.values() for p in m.parameters())
    assert counts == full_size.PUBLISHED_PARAMETERS
    assert counts["sd15"]["unet"] == 859_520_964
    assert counts["sdxl"]["unet"] == 2_567_463_684
    # SDXL's wiring: both encoders' hidden states are the cross-attention context, and the
    # six size/crop numbers (256 wide each) plus the pooled bigG projection the time input.
    unet, te1, te2 = (full_size.CONFIGS["sdxl"][k][1] for k in ("unet", "text_encoder", "text_encoder_2"))
    assert unet["cross_attention_dim"] == te1["hidden_size"] + te2["hidden_size"]
    assert unet["projection_class_embeddings_input_dim"] == 6 * unet["addition_time_embed_dim"] \
        + te2["projection_dim"]



def test_bench_refuses_an_unknown_arch():
    from darkroom_cli.app import app
    from typer.testing import CliRunner

    res = CliRunner().invoke(app, ["bench", "generate", "--arch", "sd2"])
    assert res.exit_code != 0 and "tiny, sd15, sdxl" in res.output
