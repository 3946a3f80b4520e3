"""The Stability AI backend against a local server that speaks the v2beta request/response format."""

from __future__ import annotations

import pytest
from darkroom.generation.stability import StabilityBackend, aspect_ratio
from darkroom.generation.types import InvalidRequest, Request

from tests.support.stability_fake import API_KEY, fake_stability


@pytest.fixture(scope="module")
def stability(request):
    with fake_stability() as (url, calls):
        yield url, calls


def _backend(url, sleeps=None, **kw) -> StabilityBackend:
    return StabilityBackend(api_key=kw.pop("api_key", API_KEY), base_url=url, backoff_s=0.01,
                            sleep=(sleeps.append if sleeps is not None else lambda s: None), **kw)


def _req(vid: str, prompt: str, seed: int = 7, w: int = 512, h: int = 512, neg: str = "blurry") -> Request:
    return Request(vid, prompt, neg, seed, w, h, 20, 7.5, "ddim")


@pytest.mark.parametrize(("w", "h", "ratio"), [(512, 512, "1:1"), (1024, 576, "16:9"), (768, 512, "3:2"),
                                               (512, 640, "4:5"), (400, 1000, "9:21")])
def test_sizes_map_to_the_nearest_aspect_ratio(w, h, ratio):
    assert aspect_ratio(w, h) == ratio


def test_fields_auth_and_image(stability):
    url, calls = stability
    calls.clear()
    (res,) = _backend(url).generate([_req("v1", "a mug on a table", seed=123, w=1024, h=576)])
    assert res.error is None and res.image.size == (64, 36)  # the fake's 16:9 size
    assert res.image.getpixel((0, 0)) == (123 % 251, (123 * 7) % 253, (123 * 13) % 255)  # seed honoured
    (call,) = calls
    assert call["endpoint"] == "core" and call["accept"] == "image/*"
    assert call["fields"] == {"prompt": "a mug on a table", "negative_prompt": "blurry", "seed": "123",
                              "aspect_ratio": "16:9", "output_format": "png"}


def test_sd3_with_model_and_json_answers(stability):
    url, calls = stability
    calls.clear()
    backend = _backend(url, endpoint="sd3", model="sd3.5-large", accept="application/json")
    res = backend.generate([_req("a", "plate", seed=5, neg=""), _req("b", "bowl", seed=6)])
    assert [r.error for r in res] == [None, None] and res[0].image.getpixel((0, 0))[0] == 5
    assert calls[0]["endpoint"] == "sd3" and calls[0]["fields"]["model"] == "sd3.5-large"
    assert "negative_prompt" not in calls[0]["fields"]  # empty: not sent
    assert backend.sampler_name("ddim") == "Stability sd3 sd3.5-large"


def test_content_filtered_fails_only_that_variant(stability):
    url, _ = stability
    res = _backend(url).generate([_req("ok", "a cup"), _req("bad", "FILTERME cup"), _req("ok2", "a jug")])
    assert [r.variant_id for r in res] == ["ok", "bad", "ok2"]
    assert res[0].image is not None and res[2].image is not None
    assert res[1].image is None and res[1].error.startswith("content_filtered:")


def test_429_is_retried_with_exponential_backoff(stability):
    url, calls = stability
    calls.clear()
    sleeps: list[float] = []
    (res,) = _backend(url, sleeps).generate([_req("v", "FLAKY teapot")])
    assert res.error is None and res.image is not None
    assert len(calls) == 3 and sleeps == [0.01, 0.02]


def test_5xx_gives_up_after_bounded_attempts(stability):
    url, calls = stability
    calls.clear()
    sleeps: list[float] = []
    (res,) = _backend(url, sleeps, max_attempts=3).generate([_req("v", "DOWN teapot")])
    assert res.image is None and res.error.startswith("backend_unavailable:")
    assert "500" in res.error and "internal_error" in res.error
    assert len(calls) == 3 and sleeps == [0.01, 0.02]


def test_unreachable_service_is_backend_unavailable():
    import socket

    with socket.socket() as s:  # a port nobody listens on
        s.bind(("127.0.0.1", 0))
        port = s.getsockname()[1]
    (res,) = _backend(f"http://127.0.0.1:{port}", max_attempts=2).generate([_req("v", "x")])
    assert res.error.startswith("backend_unavailable: cannot reach")


def test_a_refused_request_is_invalid_request(stability):
    url, _ = stability
    (res,) = _backend(url, output_format="webp").generate([_req("v", "")])  # empty prompt: 400
    assert res.error.startswith("invalid_request: 400") and "prompt: required" in res.error


def test_a_wrong_key_stops_the_batch(stability):
    url, _ = stability
    with pytest.raises(InvalidRequest, match="DARKROOM_STABILITY_API_KEY"):
        _backend(url, api_key="nope").generate([_req("v", "x")])


def test_bad_options_name_the_field():
    with pytest.raises(InvalidRequest, match="generation.stability.model"):
        StabilityBackend(api_key="k", model="sd3.5-large")  # core takes no model
    with pytest.raises(InvalidRequest, match="generation.base_seed"):
        StabilityBackend(api_key="k").fields(_req("v", "x", seed=2**33))
