"""The ``stability`` backend: Stability AI's REST v2beta image endpoints.

``POST {base_url}/v2beta/stable-image/generate/{core|sd3}`` as multipart/form-data (prompt,
negative_prompt, seed, aspect_ratio, output_format; ``model`` for sd3), header
``Authorization: Bearer KEY``. With ``Accept: image/*`` the answer is the image bytes and
headers ``finish-reason`` (SUCCESS | CONTENT_FILTERED) and ``seed``; with
``Accept: application/json`` it is ``{image: base64, finish_reason, seed}``. Errors are JSON
``{name, errors: [...]}`` with a 4xx/5xx status.

The hosted endpoints choose the size from the aspect ratio and take no steps, guidance or
scheduler: the request's width/height map to the nearest supported aspect ratio, and the
image is recorded at the size the service returned.
"""

from __future__ import annotations

import base64
import io
import math
import time
from collections.abc import Callable

import httpx
from PIL import Image

from darkroom.generation.types import InvalidRequest, Request, Result

ASPECT_RATIOS = ("21:9", "16:9", "3:2", "5:4", "1:1", "4:5", "2:3", "9:16", "9:21")
ENDPOINTS = ("core", "sd3")
MAX_SEED = 4294967294  # the API's documented range is 0..4294967294


def aspect_ratio(width: int, height: int) -> str:
    """The supported aspect ratio nearest to width:height (compared on a log scale)."""
    target = math.log(width / height)

    def distance(ratio: str) -> float:
        w, h = (int(x) for x in ratio.split(":"))
        return abs(math.log(w / h) - target)

    return min(ASPECT_RATIOS, key=distance)


class StabilityBackend:
    """One HTTP call per image (the endpoints return one image each).

    429 and 5xx answers, timeouts and connection errors are retried up to ``max_attempts``
    times, waiting ``backoff_s * 2**n`` (or the server's ``Retry-After``, if shorter than
    ``max_backoff_s``); then that variant fails with ``backend_unavailable`` or ``timeout``.
    A filtered image fails that variant with ``content_filtered``; a refused request (400,
    413, 422) with ``invalid_request``. A refused key (401, 403) stops the batch.
    """

    name = "stability"

    def __init__(self, *, api_key: str, base_url: str = "https://api.stability.ai", endpoint: str = "core",
                 model: str | None = None, output_format: str = "png", accept: str = "image/*",
                 max_attempts: int = 4, backoff_s: float = 1.0, max_backoff_s: float = 30.0,
                 timeout_s: float = 120.0, sleep: Callable[[float], None] = time.sleep):
        if endpoint not in ENDPOINTS:
            raise InvalidRequest(f"generation.stability.endpoint = {endpoint!r}; fix: use one of {ENDPOINTS}")
        if model and endpoint != "sd3":
            raise InvalidRequest(f"generation.stability.model = {model!r} applies to the sd3 endpoint "
                                 "only; fix: set endpoint: sd3, or drop model")
        self.api_key, self.base_url = api_key, base_url.rstrip("/")
        self.endpoint, self.model, self.output_format, self.accept = endpoint, model, output_format, accept
        self.max_attempts, self.backoff_s, self.max_backoff_s = max_attempts, backoff_s, max_backoff_s
        self.timeout_s, self._sleep = timeout_s, sleep

    @property
    def url(self) -> str:
        return f"{self.base_url}/v2beta/stable-image/generate/{self.endpoint}"

    def sampler_name(self, scheduler: str) -> str:
        # The service picks its own sampler; record what ran instead of a scheduler it ignored.
        return f"Stability {self.endpoint}" + (f" {self.model}" if self.model else "")

    def fields(self, r: Request) -> dict[str, str]:
        if not 0 <= r.seed <= MAX_SEED:
            raise InvalidRequest(f"variant {r.variant_id}: seed {r.seed} is outside Stability's "
                                 f"0..{MAX_SEED}; fix: lower generation.base_seed")
        out = {"prompt": r.prompt, "seed": str(r.seed), "aspect_ratio": aspect_ratio(r.width, r.height),
               "output_format": self.output_format}
        if r.negative_prompt:
            out["negative_prompt"] = r.negative_prompt
        if self.model:
            out["model"] = self.model
        return out

    def generate(self, requests: list[Request], pass_size: int | None = None) -> list[Result]:
        if any(r.mode != "text2image" or r.reference is not None for r in requests):
            raise InvalidRequest("the Stability backend is wired for text-to-image only; fix: use "
                                 "backend local for generation.mode image2image/inpaint and ip_adapter")
        with httpx.Client(timeout=self.timeout_s) as client:
            return [self._one(client, r) for r in requests]

    def _one(self, client, r: Request) -> Result:
        # files=(name, (None, value)): plain form fields, sent as multipart/form-data as the API requires.
        files = [(k, (None, v)) for k, v in self.fields(r).items()]
        headers = {"Authorization": f"Bearer {self.api_key}", "Accept": self.accept}
        started = time.perf_counter()
        problem = ""
        for attempt in range(self.max_attempts):
            try:
                resp = client.post(self.url, files=files, headers=headers)
            except httpx.TimeoutException as exc:
                problem = f"timeout: {self.url} did not answer within {self.timeout_s:.0f} s ({exc})"
            except httpx.TransportError as exc:
                problem = f"backend_unavailable: cannot reach {self.url}: {exc}"
            else:
                if resp.status_code == 200:
                    return self._decode(r, resp, time.perf_counter() - started)
                detail = _error_text(resp)
                if resp.status_code in (401, 403):
                    raise InvalidRequest(f"{self.url} refused the API key ({resp.status_code}: {detail}); "
                                         "fix: check DARKROOM_STABILITY_API_KEY or the 'darkroom_stability' "
                                         "connection")
                if resp.status_code != 429 and resp.status_code < 500:
                    return Result(r.variant_id, None, 0.0,
                                  f"invalid_request: {resp.status_code} {detail}"[:500])
                problem = f"backend_unavailable: {self.url} answered {resp.status_code} {detail}"
                if attempt + 1 < self.max_attempts:
                    self._sleep(self._delay(attempt, resp.headers.get("retry-after")))
                continue
            if attempt + 1 < self.max_attempts:
                self._sleep(self._delay(attempt, None))
        return Result(r.variant_id, None, 0.0, f"{problem} (after {self.max_attempts} attempts)"[:500])

    def _delay(self, attempt: int, retry_after: str | None) -> float:
        delay = self.backoff_s * 2**attempt
        if retry_after:
            try:
                delay = max(delay, float(retry_after))
            except ValueError:  # an HTTP date: keep our own backoff
                pass
        return min(delay, self.max_backoff_s)

    def _decode(self, r: Request, resp, seconds: float) -> Result:
        if resp.headers.get("content-type", "").startswith("application/json"):
            body = resp.json()
            finish, data = body.get("finish_reason", "SUCCESS"), base64.b64decode(body.get("image") or "")
        else:
            finish, data = resp.headers.get("finish-reason", "SUCCESS"), resp.content
        if finish == "CONTENT_FILTERED":
            return Result(r.variant_id, None, seconds, "content_filtered: Stability AI's moderation "
                          f"filtered the image (seed {r.seed}); fix: reword the prompt, or route it locally")
        if finish != "SUCCESS":
            return Result(r.variant_id, None, seconds, f"error: finish reason {finish!r}")
        try:
            img = Image.open(io.BytesIO(data))
            img.load()
        except Exception as exc:  # PIL raises several types for a truncated or foreign body
            return Result(r.variant_id, None, seconds, f"error: unreadable image from {self.url}: {exc}")
        return Result(r.variant_id, img.convert("RGB"), seconds)


def _error_text(resp) -> str:
    try:
        body = resp.json()
    except ValueError:
        return resp.text[:300]
    if isinstance(body, dict) and ("name" in body or "errors" in body):
        return f"{body.get('name', '')}: {'; '.join(map(str, body.get('errors') or []))}".strip(": ")
    return str(body)[:300]
