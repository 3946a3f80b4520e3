"""The ``http`` backend: a client of Darkroom's own model server (``darkroom serve-model``)."""

from __future__ import annotations

import base64
import io
import time

import httpx
from PIL import Image

from darkroom.generation.models import ModelRef
from darkroom.generation.types import (
    SCHEDULERS,
    BackendTimeout,
    BackendUnavailable,
    InvalidRequest,
    Request,
    Result,
)


class HttpBackend:
    """Posts each batch to ``{base_url}/v1/generate``; the server batches across clients.

    Connection failures and 5xx answers are retried ``attempts`` times with exponential
    backoff (a server restarting between tasks); 4xx answers are not.
    """

    name = "http"

    def __init__(self, base_url: str, ref: ModelRef, *, timeout_s: float = 600.0, attempts: int = 3,
                 backoff_s: float = 0.5):
        self.base_url = base_url.rstrip("/")
        self.ref = ref
        self.timeout_s, self.attempts, self.backoff_s = timeout_s, attempts, backoff_s

    def sampler_name(self, scheduler: str) -> str:
        return SCHEDULERS[scheduler][2]  # the server runs the same diffusers schedulers

    def _model_fields(self) -> dict:
        ref = self.ref
        if ref.profile:  # the server resolves the same registry version (and its LoRAs)
            return {"model": f"models:/{ref.profile}/{ref.version}", "revision": None, "version": None}
        return {"model": ref.location, "revision": ref.revision, "version": ref.version}

    def generate(self, requests: list[Request], pass_size: int | None = None) -> list[Result]:
        if any(r.mode != "text2image" or r.reference is not None for r in requests):
            raise InvalidRequest("the model server runs text-to-image only; fix: use backend "
                                 "local for generation.mode image2image/inpaint and ip_adapter")
        fields = ("variant_id", "prompt", "negative_prompt", "seed", "width", "height", "steps",
                  "guidance", "scheduler")
        body = {**self._model_fields(), "pass_size": pass_size,
                "requests": [{f: getattr(r, f) for f in fields} for r in requests]}
        url = f"{self.base_url}/v1/generate"
        problem = ""
        for attempt in range(self.attempts):
            if attempt:
                time.sleep(self.backoff_s * 2 ** (attempt - 1))
            try:
                resp = httpx.post(url, json=body, timeout=self.timeout_s)
            except httpx.TimeoutException as exc:
                raise BackendTimeout(f"model server {self.base_url} did not answer within "
                                     f"{self.timeout_s:.0f} s: {exc}") from exc
            except httpx.TransportError as exc:
                problem = f"cannot reach {self.base_url}: {exc}"
                continue
            if resp.status_code >= 500:
                problem = f"{url} answered {resp.status_code}: {resp.text[:300]}"
                continue
            if resp.status_code >= 400:
                raise InvalidRequest(f"{url} refused the request ({resp.status_code}): {resp.text[:500]}")
            break
        else:
            raise BackendUnavailable(f"{problem} (after {self.attempts} attempts); fix: start "
                                     "`darkroom serve-model` there, or check DARKROOM_MODEL_SERVER_URL")
        answers = {r["variant_id"]: r for r in resp.json()["results"]}
        results = []
        for req in requests:
            ans = answers.get(req.variant_id)
            if ans is None:
                results.append(Result(req.variant_id, None, 0.0, "error: no result from the model server"))
            elif ans.get("error"):
                results.append(Result(req.variant_id, None, ans.get("seconds") or 0.0, ans["error"]))
            else:
                img = Image.open(io.BytesIO(base64.b64decode(ans["png_base64"])))
                img.load()
                results.append(Result(req.variant_id, img, float(ans["seconds"]),
                                      forward_pass=ans.get("forward_pass")))
        return results
