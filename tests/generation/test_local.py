"""The local diffusers backend on the tiny pipeline: loading, reproducibility, OOM handling."""

from __future__ import annotations

import hashlib

import numpy as np
import pytest
from darkroom.config import Settings
from darkroom.errors import ModelError
from darkroom.generation.local import LocalDiffusersBackend, load_pipeline
from darkroom.generation.passes import generate_halving
from darkroom.generation.resolve import resolve_model
from darkroom.generation.types import Request


def _pixels(img) -> str:
    return hashlib.sha256(np.asarray(img).tobytes()).hexdigest()


@pytest.fixture(scope="module")
def backend(tiny_model):
    ref = resolve_model(str(tiny_model), None, Settings.from_env())
    return LocalDiffusersBackend(ref, "cpu")


def _requests(n: int, **kw) -> list[Request]:
    base = dict(width=64, height=64, steps=3, guidance=7.5, scheduler="ddim")
    base.update(kw)
    return [Request(f"v{i}", f"studio photo of item {i}", "blurry", 40 + i, **base) for i in range(n)]


def test_pipeline_is_loaded_once_per_process(backend):
    assert load_pipeline(backend.ref, backend.device, backend.dtype) is backend.pipeline


def test_same_batch_same_pixels_bit_for_bit(backend):
    reqs = _requests(4)
    first = [_pixels(r.image) for r in backend.generate(reqs)]
    assert first == [_pixels(r.image) for r in backend.generate(reqs)]
    assert len(set(first)) == 4  # and the seeds do matter
    assert all(r.forward_pass == [q.variant_id for q in reqs] for r in backend.generate(reqs))


def test_a_variant_is_bit_identical_whatever_batch_and_position(backend):
    """The issue's batch-invariance: at a fixed pass size (the spec's batch_size; a short
    pass is padded), neither the other variants nor the position changes a single bit."""
    reqs = _requests(7)
    target = reqs[0]
    passes = [
        [target, reqs[1], reqs[2], reqs[3]],  # first position
        [reqs[4], reqs[5], reqs[6], target],  # last position, other company
        [reqs[2], target, reqs[6]],  # a short pass, padded to 4
        [target],  # alone, padded to 4 (what `assets regenerate` does)
    ]
    seen = set()
    for batch in passes:
        results = backend.generate(batch, pass_size=4)
        assert len(results) == len(batch) and len(results[0].forward_pass) == 4
        seen.add(_pixels(results[batch.index(target)].image))
    assert len(seen) == 1


def test_another_pass_size_moves_at_most_a_grey_level_in_a_few_pixels(backend):
    """What the fixed pass size buys: without it, float summation order in batched GEMMs
    depends on the batch shape: at most one level, in well under 1% of pixels."""
    reqs = _requests(4)
    alone = [np.asarray(backend.generate([r])[0].image, dtype=int) for r in reqs]
    together = [np.asarray(r.image, dtype=int) for r in backend.generate(reqs)]
    for a, t in zip(alone, together, strict=True):
        assert np.abs(a - t).max() <= 1
        assert (a != t).mean() < 0.01


@pytest.mark.parametrize("scheduler", ["euler", "dpmpp_2m"])
def test_schedulers_by_name_change_pixels(backend, scheduler):
    (ddim,) = backend.generate(_requests(1))
    (other,) = backend.generate(_requests(1, scheduler=scheduler))
    assert _pixels(ddim.image) != _pixels(other.image)
    assert backend.sampler_name(scheduler) in ("Euler", "DPM++ 2M")


def test_model_version_is_a_content_checksum(tiny_model, tmp_path):
    settings = Settings.from_env()
    ref = resolve_model(str(tiny_model), None, settings)
    assert len(ref.version) == 12 and ref.model_hash == ref.version[:10]
    assert resolve_model(str(tiny_model), None, settings, ref.version[:8]).version == ref.version
    with pytest.raises(ModelError, match=r"model_version 'abc' is not a version of tiny-sd .*a local "
                                         rf"folder has one version, its checksum \({ref.version}\); fix: "
                                         r".*register both folders as versions of a profile"):
        resolve_model(str(tiny_model), None, settings, "abc")


@pytest.mark.parametrize("model,match", [
    ("/nonexistent/model", "folder does not exist"),
    ("tiny", "not built at .*fix: run `darkroom models build-tiny"),
], ids=["missing-folder", "tiny-not-built"])
def test_unusable_model_references(model, match, tmp_path):
    settings = Settings.from_env(tiny_model_dir=tmp_path / "none")
    with pytest.raises(ModelError, match=match):
        resolve_model(model, None, settings)


def test_folder_without_model_index(tmp_path):
    (tmp_path / "empty").mkdir()
    with pytest.raises(ModelError, match="no model_index.json"):
        resolve_model(str(tmp_path / "empty"), None, Settings.from_env())


class _SmallGPU:
    """A stand-in device with room for two images at a time (a CPU has no OOM to provoke)."""

    name = "local"

    def __init__(self, backend):
        self.inner, self.calls = backend, []

    def generate(self, requests, pass_size=None):
        self.calls.append((len(requests), pass_size))
        if (pass_size or len(requests)) > 2:
            import torch

            raise torch.OutOfMemoryError("CUDA out of memory. Tried to allocate 2.00 GiB")
        return self.inner.generate(requests, pass_size=pass_size)


def test_out_of_memory_halves_the_pass_and_keeps_pixels(backend):
    reqs = _requests(3)
    expected = [_pixels(backend.generate([r], pass_size=2)[0].image) for r in reqs]
    small = _SmallGPU(backend)
    halvings = []
    results = generate_halving(small, reqs, on_halve=lambda n, h: halvings.append((n, h)), pass_size=4)
    # The halved pass size is a new shape: the same pixels as any other pass of that size.
    assert [_pixels(r.image) for r in results] == expected
    assert [r.variant_id for r in results] == [r.variant_id for r in reqs]
    assert halvings == [(4, 2)]
    assert small.calls == [(3, 4), (2, 2), (1, 2)]
    assert all(len(r.forward_pass) == 2 for r in results)


def test_other_errors_are_not_retried(backend):
    class Broken:
        def generate(self, requests, pass_size=None):
            raise RuntimeError("backend down")

    with pytest.raises(RuntimeError, match="backend down"):
        generate_halving(Broken(), _requests(4))


def test_model_digest_is_kept_on_disk_and_follows_changes(tiny_model, tmp_path):
    """A new process (every Airflow task) reads the digest instead of hashing the weights."""
    import json
    import shutil
    import subprocess
    import sys

    from darkroom.generation.models import local_model_digest

    model = tmp_path / "model"
    shutil.copytree(tiny_model, model)
    first = local_model_digest(model)
    cache = Settings.from_env().home / "cache" / "model-digests.json"
    assert json.loads(cache.read_text())[str(model.resolve())]["digest"] == first
    # Another process: served from the cache, same answer.
    out = subprocess.run([sys.executable, "-c", "import sys; from pathlib import Path; "
                          "from darkroom.generation.models import local_model_digest as d; "
                          f"print(d(Path({str(model)!r})))"], capture_output=True, text=True, check=True)
    assert out.stdout.strip() == first
    # Changed weights change the signature, so the digest is computed again.
    weights = next(model.glob("unet/*.safetensors"))
    weights.write_bytes(weights.read_bytes() + b"\0")
    assert local_model_digest(model) != first


def test_library_notices_go_through_logging_at_their_own_level(capfd, caplog):
    """diffusers' and transformers' notices went straight to stderr, which an Airflow task log
    files as errors: CLIP's 77-token truncation is a warning, and the torchvision fallback
    notice (we use the PIL processors on purpose) is not logged at all."""
    import logging

    import darkroom.generation.local  # noqa: F401  (importing it routes the notices)
    import diffusers
    import transformers

    capfd.readouterr()
    with caplog.at_level(logging.INFO):
        diffusers.utils.logging.get_logger("diffusers.pipelines.stable_diffusion").warning(
            "The following part of your input was truncated because CLIP can only handle "
            "sequences up to 77 tokens: ['on a table']")
        transformers.utils.logging.get_logger("transformers.utils.import_utils").warning(
            "CLIPImageProcessorFast requires torchvision; falling back to the PIL processor")
    assert capfd.readouterr().err == ""
    notes = [(r.name, r.levelname, r.getMessage()[:40]) for r in caplog.records
             if r.name.startswith(("diffusers", "transformers"))]
    assert notes == [("diffusers.pipelines.stable_diffusion", "WARNING",
                      "The following part of your input was tru")]


def test_a_fresh_worker_loading_a_pipeline_writes_nothing_to_stderr(tiny_model):
    """What a generate task's log showed as errors: the torchvision notices (emitted while
    diffusers itself is imported) and the loading progress bars. A fresh process, as a task."""
    import subprocess
    import sys

    code = ("import logging, sys; logging.basicConfig(stream=sys.stdout, level=logging.INFO)\n"
            "import darkroom.generation.local\n"
            "from diffusers import DiffusionPipeline\n"
            f"pipe = DiffusionPipeline.from_pretrained({str(tiny_model)!r})\n"
            "print('loaded', type(pipe).__name__)\n")
    done = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, timeout=300)
    assert done.returncode == 0, done.stderr[-3000:]
    assert "loaded" in done.stdout
    assert "requires torchvision" not in done.stderr + done.stdout
    assert "Loading pipeline components" not in done.stderr and "Loading weights" not in done.stderr
    assert done.stderr.strip() == "", done.stderr[-2000:]
