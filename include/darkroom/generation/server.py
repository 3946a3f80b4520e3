"""Darkroom's model server (``darkroom serve-model``): warm pipelines on a GPU host.

Airflow tasks come and go; loading a pipeline costs seconds to minutes. The server loads each
model once with the same :func:`darkroom.generation.local.load_pipeline` the local backend uses and
keeps it for its lifetime. Requests that arrive within a short window (``window_s``) and
share model, size, steps, guidance and scheduler run as one forward pass of up to
``max_batch`` images. Each variant's latents come from its own seed, so batching changes no
pixel: results equal the local backend's, bit for bit on CPU.

API (JSON):
    POST /v1/generate  {model, revision?, version?, requests: [{variant_id, prompt,
                       negative_prompt, seed, width, height, steps, guidance, scheduler}]}
                       -> {model, version, results: [{variant_id, png_base64, seconds, error}]}
    GET  /healthz      -> {status: "ok"}
    GET  /v1/models    -> {models: [{model, name, version, location}]}
    GET  /v1/stats     -> {batch_sizes, requests, images, pipeline_loads}
"""

from __future__ import annotations

import asyncio
import base64
import concurrent.futures
import io
import logging
import queue
import threading
import time
from contextlib import asynccontextmanager
from dataclasses import dataclass, field
from typing import Literal

import uvicorn
from fastapi import FastAPI, HTTPException
from pydantic import BaseModel, Field

from darkroom.config import Settings
from darkroom.errors import ModelError
from darkroom.generation.local import LocalDiffusersBackend
from darkroom.generation.passes import generate_halving, is_out_of_memory
from darkroom.generation.resolve import resolve_model
from darkroom.generation.types import SCHEDULERS, Request

log = logging.getLogger("darkroom.serve")

SchedulerName = Literal[tuple(SCHEDULERS)]  # type: ignore[valid-type]


class GenerateItem(BaseModel):
    variant_id: str
    prompt: str
    negative_prompt: str = ""
    seed: int = Field(ge=0, lt=2**63)
    width: int = Field(ge=16, le=4096, multiple_of=8)
    height: int = Field(ge=16, le=4096, multiple_of=8)
    steps: int = Field(ge=1, le=200)
    guidance: float = Field(ge=0, le=30)
    scheduler: SchedulerName


class GenerateBody(BaseModel):
    model: str = Field(description="What generation.model names: a folder, hub id, 'tiny' or models:/...")
    revision: str | None = None
    version: str | None = Field(None, description="Required model version (refused if it differs)")
    requests: list[GenerateItem] = Field(min_length=1, max_length=256)
    pass_size: int | None = Field(
        None, ge=1, le=64, description="Images per forward pass (the spec's batch_size); passes "
        "are padded to it so a variant's pixels do not depend on what it is batched with")


@dataclass
class _Item:
    model_key: tuple
    request: Request
    pass_size: int | None = None
    future: concurrent.futures.Future = field(default_factory=concurrent.futures.Future)

    @property
    def batch_key(self) -> tuple:
        r = self.request
        return (self.model_key, r.width, r.height, r.steps, r.guidance, r.scheduler, self.pass_size)


class Batcher:
    """One worker thread owns the pipelines (one forward pass at a time per device); HTTP
    handlers queue items and await their futures."""

    def __init__(self, settings: Settings, device: str = "auto", window_s: float = 0.02,
                 max_batch: int = 8):
        self.settings, self.device = settings, device
        self.window_s, self.max_batch = window_s, max_batch
        self._queue: queue.Queue[_Item | None] = queue.Queue()
        self._backends: dict[tuple, LocalDiffusersBackend] = {}
        self._refs: dict[tuple, tuple] = {}
        self._lock = threading.Lock()  # stats and the model tables
        self._load_lock = threading.Lock()  # one load at a time; stats stay readable meanwhile
        self.stats = {"batch_sizes": [], "requests": 0, "images": 0, "pipeline_loads": 0}
        self._thread = threading.Thread(target=self._loop, name="darkroom-batcher", daemon=True)
        self._thread.start()

    # -- models -------------------------------------------------------------------------
    def backend_for(self, model: str, revision: str | None = None, version: str | None = None):
        """Resolve (cached) and load (once) the model; returns (model_key, backend)."""
        with self._load_lock:
            spelled = (model, revision, version)
            model_key = self._refs.get(spelled)
            if model_key is None:
                ref = resolve_model(model, revision, self.settings, version)
                # Different spellings of one model ('tiny', its folder) share a pipeline.
                model_key = (ref.location, ref.revision, ref.version, ref.loras)
                if model_key not in self._backends:
                    backend = LocalDiffusersBackend(ref, self.device)
                    started = time.perf_counter()
                    backend.pipeline  # noqa: B018 - load now, not inside the first batch
                    log.info("Loaded %s (%s) in %.1f s", ref.name, ref.version, time.perf_counter() - started)
                    with self._lock:
                        self.stats["pipeline_loads"] += 1
                        self._backends[model_key] = backend
                with self._lock:
                    self._refs[spelled] = model_key
            return model_key, self._backends[model_key]

    def snapshot(self) -> dict:
        with self._lock:
            return {k: list(v) if isinstance(v, list) else v for k, v in self.stats.items()}

    def models(self) -> list[dict]:
        with self._lock:
            return [{"model": spelled[0], "name": self._backends[key].ref.name,
                     "version": self._backends[key].ref.version,
                     "location": self._backends[key].ref.location}
                    for spelled, key in self._refs.items()]

    # -- batching -----------------------------------------------------------------------
    def submit(self, model_key: tuple, requests: list[Request],
               pass_size: int | None = None) -> list[concurrent.futures.Future]:
        items = [_Item(model_key, r, pass_size) for r in requests]
        with self._lock:
            self.stats["requests"] += 1
        for item in items:
            self._queue.put(item)
        return [item.future for item in items]

    def close(self) -> None:
        self._queue.put(None)
        self._thread.join(timeout=10)

    def _loop(self) -> None:
        while True:
            first = self._queue.get()
            if first is None:
                return
            pending, stop = [first], False
            deadline = time.monotonic() + self.window_s
            # Collect what arrives within the window, so concurrent tasks share forward passes.
            while len(pending) < self.max_batch:
                wait = deadline - time.monotonic()
                if wait <= 0:
                    break
                try:
                    item = self._queue.get(timeout=wait)
                except queue.Empty:
                    break
                if item is None:
                    stop = True
                    break
                pending.append(item)
            groups: dict[tuple, list[_Item]] = {}
            for item in pending:
                groups.setdefault(item.batch_key, []).append(item)
            for items in groups.values():
                size = items[0].pass_size or self.max_batch
                for start in range(0, len(items), size):  # requests of several tasks share passes
                    self._run(items[start : start + size])
            if stop:
                return

    def _run(self, items: list[_Item]) -> None:
        backend = self._backends[items[0].model_key]
        try:
            results = generate_halving(backend, [i.request for i in items], pass_size=items[0].pass_size)
        except Exception as exc:  # every waiting request hears about it
            log.exception("Batch of %d failed", len(items))
            for item in items:
                item.future.set_exception(exc)
            return
        with self._lock:
            self.stats["batch_sizes"].append(len(items))
            self.stats["images"] += len(items)
        for item, result in zip(items, results, strict=True):
            item.future.set_result(result)


def _png_base64(image) -> str:
    buf = io.BytesIO()
    image.save(buf, format="PNG")  # lossless: the client decodes the very same pixels
    return base64.b64encode(buf.getvalue()).decode("ascii")


def _failure(exc: BaseException) -> str:
    kind = "oom" if is_out_of_memory(exc) else "error"
    return f"{kind}: {type(exc).__name__}: {exc}"[:500]


def create_app(settings: Settings | None = None, *, device: str = "auto", window_s: float = 0.02,
               max_batch: int = 8, preload: list[str] | None = None):
    """The FastAPI app. ``preload``: models (as ``generation.model`` names them) to load at start."""
    settings = settings or Settings.from_env()
    batcher = Batcher(settings, device, window_s, max_batch)

    @asynccontextmanager
    async def lifespan(_app):
        for model in preload or []:
            await asyncio.to_thread(batcher.backend_for, model)
        yield
        batcher.close()

    app = FastAPI(title="Darkroom model server", lifespan=lifespan)
    app.state.batcher = batcher

    @app.get("/healthz")
    def healthz() -> dict:
        return {"status": "ok"}

    @app.get("/v1/models")
    def models() -> dict:
        return {"models": batcher.models()}

    @app.get("/v1/stats")
    def stats() -> dict:
        return batcher.snapshot()

    @app.post("/v1/generate")
    async def generate(body: GenerateBody) -> dict:
        try:
            model_key, backend = await asyncio.to_thread(batcher.backend_for, body.model, body.revision,
                                                         body.version)
        except ModelError as exc:
            raise HTTPException(status_code=400, detail=f"model {body.model!r}: {exc}") from exc
        requests = [Request(**item.model_dump()) for item in body.requests]
        futures = batcher.submit(model_key, requests, body.pass_size)
        outcomes = await asyncio.gather(*(asyncio.wrap_future(f) for f in futures), return_exceptions=True)
        results = []
        for req, outcome in zip(requests, outcomes, strict=True):
            if isinstance(outcome, BaseException):
                results.append({"variant_id": req.variant_id, "png_base64": None, "seconds": 0.0,
                                "error": _failure(outcome)})
            else:
                png = await asyncio.to_thread(_png_base64, outcome.image)
                results.append({"variant_id": req.variant_id, "png_base64": png,
                                "seconds": outcome.seconds, "error": outcome.error,
                                "forward_pass": outcome.forward_pass})
        return {"model": backend.ref.name, "version": backend.ref.version, "results": results}

    return app


def serve(host: str, port: int, *, models: list[str], device: str, window_s: float, max_batch: int) -> None:
    app = create_app(device=device, window_s=window_s, max_batch=max_batch, preload=models)
    uvicorn.run(app, host=host, port=port, log_level="info")
