"""A local stand-in for Stability AI's v2beta image endpoints, speaking their documented format.

POST /v2beta/stable-image/generate/{core,sd3}, multipart/form-data, ``Authorization: Bearer``;
image bytes with ``finish-reason``/``seed`` headers (Accept: image/*) or JSON {image,
finish_reason, seed} (Accept: application/json); errors as JSON {name, errors}.
Behaviour is chosen by words in the prompt: FILTERME (CONTENT_FILTERED), FLAKY (two 429s,
then success), DOWN (always 500). Bound to 127.0.0.1 on a free port; used by
test_stability.py and test_routing_backends.py. It holds no tests.
"""

from __future__ import annotations

import contextlib
import io
import threading
import time
from collections import Counter
from collections.abc import Iterator

from fastapi import FastAPI, Request
from fastapi.responses import JSONResponse, Response

API_KEY = "test-key"
RATIOS = {"21:9": (84, 36), "16:9": (64, 36), "3:2": (48, 32), "5:4": (40, 32), "1:1": (32, 32),
          "4:5": (32, 40), "2:3": (32, 48), "9:16": (36, 64), "9:21": (36, 84)}
FIELDS = {"prompt", "negative_prompt", "seed", "aspect_ratio", "output_format", "model", "mode",
          "style_preset", "cfg_scale"}


def _png(seed: int, size: tuple[int, int], fmt: str) -> bytes:
    from PIL import Image

    img = Image.new("RGB", size, (seed % 251, (seed * 7) % 253, (seed * 13) % 255))
    buf = io.BytesIO()
    img.save(buf, format={"png": "PNG", "jpeg": "JPEG", "webp": "WEBP"}[fmt])
    return buf.getvalue()


def make_app(calls: list[dict]):
    import base64

    app = FastAPI()
    tries: Counter = Counter()

    def error(status: int, name: str, *errors: str) -> JSONResponse:
        return JSONResponse({"id": "0" * 32, "name": name, "errors": list(errors)}, status_code=status)

    @app.post("/v2beta/stable-image/generate/{endpoint}")
    async def generate(endpoint: str, request: Request):
        if request.headers.get("authorization") != f"Bearer {API_KEY}":
            return error(401, "unauthorized", "authorization: missing or invalid API key")
        if endpoint not in ("core", "sd3"):
            return error(404, "not_found", f"unknown endpoint {endpoint}")
        if not request.headers.get("content-type", "").startswith("multipart/form-data"):
            return error(400, "bad_request", "content-type: must be multipart/form-data")
        form = await request.form()
        fields = {k: v for k, v in form.items()}
        calls.append({"endpoint": endpoint, "fields": fields, "accept": request.headers.get("accept")})
        problems = [f"{k}: unknown field" for k in fields if k not in FIELDS]
        if not fields.get("prompt"):
            problems.append("prompt: required")
        if fields.get("aspect_ratio", "1:1") not in RATIOS:
            problems.append(f"aspect_ratio: must be one of {list(RATIOS)}")
        fmt = fields.get("output_format", "png")
        if fmt not in ("png", "jpeg", "webp"):
            problems.append("output_format: must be png, jpeg or webp")
        if "model" in fields and endpoint != "sd3":
            problems.append("model: only the sd3 endpoint takes a model")
        try:
            seed = int(fields.get("seed", 0))
            if not 0 <= seed <= 4294967294:
                raise ValueError
        except ValueError:
            problems.append("seed: must be an integer in 0..4294967294")
            seed = 0
        if problems:
            return error(400, "bad_request", *problems)
        prompt = fields["prompt"]
        if "DOWN" in prompt:
            return error(500, "internal_error", "the service is having a bad day")
        if "FLAKY" in prompt:
            tries[prompt] += 1
            if tries[prompt] <= 2:
                return error(429, "rate_limit_exceeded", "You have exceeded the rate limit")
        finish = "CONTENT_FILTERED" if "FILTERME" in prompt else "SUCCESS"
        data = _png(seed, RATIOS[fields.get("aspect_ratio", "1:1")], fmt)
        if request.headers.get("accept") == "application/json":
            return JSONResponse({"image": base64.b64encode(data).decode(), "finish_reason": finish,
                                 "seed": seed})
        return Response(data, media_type=f"image/{fmt}", headers={"finish-reason": finish, "seed": str(seed)})

    return app


@contextlib.contextmanager
def fake_stability() -> Iterator[tuple[str, list[dict]]]:
    """(base URL, list of received calls) of a fake Stability API on 127.0.0.1."""
    import socket

    import uvicorn

    calls: list[dict] = []
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        port = s.getsockname()[1]
    server = uvicorn.Server(uvicorn.Config(make_app(calls), host="127.0.0.1", port=port, log_level="warning"))
    thread = threading.Thread(target=server.run, daemon=True)
    thread.start()
    deadline = time.monotonic() + 20
    while not server.started:
        if time.monotonic() > deadline or not thread.is_alive():
            raise RuntimeError("the fake Stability server did not start")
        time.sleep(0.02)
    try:
        yield f"http://127.0.0.1:{port}", calls
    finally:
        server.should_exit = True
        thread.join(timeout=10)
