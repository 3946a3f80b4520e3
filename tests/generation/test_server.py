"""`darkroom serve-model` for real on 127.0.0.1 (a subprocess), with the tiny model, and the
``http`` backend that talks to it."""

from __future__ import annotations

import hashlib
import socket
import threading

import httpx
import numpy as np
import pytest
from darkroom.config import Settings
from darkroom.generation.http import HttpBackend
from darkroom.generation.local import LocalDiffusersBackend
from darkroom.generation.resolve import resolve_model
from darkroom.generation.routing import make_backend
from darkroom.generation.types import BackendUnavailable, InvalidRequest, Request

from tests.support.servers import model_server


def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def _pixels(img) -> str:
    return hashlib.sha256(np.asarray(img).tobytes()).hexdigest()


@pytest.fixture(scope="module")
def server(tiny_model, tmp_path_factory):
    """Base URL of a model server with the tiny model preloaded; a wide batching window so
    that threads started together land in one batch even on a busy 2-core machine."""
    with model_server(tiny_model, tmp_path_factory.mktemp("serve-home"), "--batch-window-ms", "400",
                      "--max-batch", "8") as (url, _):
        yield url


@pytest.fixture(scope="module")
def ref(tiny_model):
    return resolve_model(str(tiny_model), None, Settings.from_env())


@pytest.fixture(scope="module")
def local(ref):
    return LocalDiffusersBackend(ref, "cpu")


def _requests(n: int, first_seed: int = 100) -> list[Request]:
    return [Request(f"v{i}", f"studio photo of item {i}", "blurry", first_seed + i, 64, 64, 3, 7.5, "ddim")
            for i in range(n)]


def _stats(url: str) -> dict:
    return httpx.get(f"{url}/v1/stats", timeout=10).json()


def test_results_equal_the_local_backend_bit_for_bit(server, ref, local):
    reqs = _requests(3)
    remote = HttpBackend(server, ref).generate(reqs)
    here = local.generate(reqs)
    assert [r.variant_id for r in remote] == ["v0", "v1", "v2"]
    assert [_pixels(r.image) for r in remote] == [_pixels(r.image) for r in here]
    assert len({_pixels(r.image) for r in remote}) == 3


def test_concurrent_requests_are_batched_and_still_identical(server, ref, local):
    reqs = _requests(4, first_seed=500)
    before = len(_stats(server)["batch_sizes"])
    barrier = threading.Barrier(len(reqs))
    out: dict[str, object] = {}

    def one(r: Request) -> None:
        backend = HttpBackend(server, ref)
        barrier.wait()
        out[r.variant_id] = backend.generate([r], pass_size=4)[0]

    threads = [threading.Thread(target=one, args=(r,)) for r in reqs]
    for t in threads:
        t.start()
    for t in threads:
        t.join(timeout=120)
    new_batches = _stats(server)["batch_sizes"][before:]
    assert sum(new_batches) == 4 and max(new_batches) > 1, new_batches
    # Each pass padded to the spec's batch size: the same pixels however the server grouped
    # the four tasks' requests, and the same as the local backend's.
    assert [_pixels(out[r.variant_id].image) for r in reqs] == [
        _pixels(x.image) for x in local.generate(reqs, pass_size=4)]
    assert all(len(out[r.variant_id].forward_pass) == 4 for r in reqs)
    assert [_pixels(local.generate([r], pass_size=4)[0].image) for r in reqs[:1]] == [
        _pixels(out[reqs[0].variant_id].image)]


def test_the_model_is_loaded_once(server, ref, tiny_model):
    # 'tiny' (preloaded), the folder, and the client's resolved location are one model.
    for model in ("tiny", str(tiny_model)):
        r = httpx.post(f"{server}/v1/generate", timeout=120, json={
            "model": model, "requests": [vars(_requests(1)[0])]})
        assert r.status_code == 200 and r.json()["version"] == ref.version
    HttpBackend(server, ref).generate(_requests(1))
    assert _stats(server)["pipeline_loads"] == 1
    models = httpx.get(f"{server}/v1/models", timeout=10).json()["models"]
    assert {m["version"] for m in models} == {ref.version}


def test_make_backend_reads_the_url_from_settings(server, ref, monkeypatch):
    monkeypatch.setenv("DARKROOM_MODEL_SERVER_URL", server)
    backend = make_backend("http", ref, Settings.from_env())
    assert isinstance(backend, HttpBackend) and backend.base_url == server
    monkeypatch.delenv("DARKROOM_MODEL_SERVER_URL")
    with pytest.raises(Exception, match="DARKROOM_MODEL_SERVER_URL"):
        make_backend("http", ref, Settings.from_env())


def test_unknown_model_and_bad_requests_are_refused(server, ref, tmp_path):
    bad = ref.__class__(**{**vars(ref), "location": str(tmp_path / "missing")})
    with pytest.raises(InvalidRequest, match="400"):
        HttpBackend(server, bad).generate(_requests(1))
    r = httpx.post(f"{server}/v1/generate", timeout=30, json={
        "model": "tiny", "requests": [{**vars(_requests(1)[0]), "scheduler": "nope"}]})
    assert r.status_code == 422


def test_a_server_that_is_down_is_backend_unavailable(ref):
    backend = HttpBackend(f"http://127.0.0.1:{_free_port()}", ref, attempts=2, backoff_s=0.01)
    with pytest.raises(BackendUnavailable, match="after 2 attempts"):
        backend.generate(_requests(1))
