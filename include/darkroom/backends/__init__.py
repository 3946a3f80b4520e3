"""Inference backends behind one interface, chosen by name (and routed by the spec's rules).

- ``local``: diffusers in this process (:class:`darkroom.inference.LocalDiffusersBackend`).
- ``http``: Darkroom's own model server (``darkroom serve-model``) on a GPU host, which keeps
  models warm across Airflow tasks and batches concurrent requests.
- ``stability``: Stability AI's hosted REST v2beta image endpoints.

Every backend takes a list of :class:`~darkroom.inference.Request` and returns one
:class:`~darkroom.inference.Result` per request, in order. A failure that concerns one
variant (a filtered image, a refused request) is a ``Result`` with ``error`` set to
``"<reason>: <detail>"``; a failure of the backend as a whole raises :class:`BackendError`,
whose ``reason`` the generate stage records on every variant of the batch.

Nothing heavy is imported here: the DAG factory imports :mod:`darkroom.backends.routing`
at parse time.
"""

from __future__ import annotations

import os
from typing import TYPE_CHECKING, Protocol, runtime_checkable

from darkroom.errors import DarkroomError

if TYPE_CHECKING:
    from darkroom.config import Settings
    from darkroom.inference import ModelRef, Request, Result

BACKENDS = ("local", "http", "stability")
#: Backends whose prompts and pixels never leave machines we run: the only ones allowed for
#: confidential products.
PRIVATE_BACKENDS = frozenset({"local", "http"})

MODEL_SERVER_URL_ENV = "DARKROOM_MODEL_SERVER_URL"
STABILITY_KEY_ENV = "DARKROOM_STABILITY_API_KEY"
STABILITY_URL_ENV = "DARKROOM_STABILITY_BASE_URL"


@runtime_checkable
class Backend(Protocol):
    """What the generate stage needs from a backend."""

    name: str

    def sampler_name(self, scheduler: str) -> str:
        """The sampler as recorded in the AUTOMATIC1111 infotext of each image."""
        ...

    def generate(self, requests: list[Request], pass_size: int | None = None) -> list[Result]:
        """One result per request, in order; per-variant failures as ``Result.error``.
        ``pass_size``: images per forward pass, for backends that batch (padding to it keeps
        pixels independent of batch composition); others ignore it."""
        ...


class BackendError(DarkroomError):
    """A backend failed as a whole; ``reason`` is the failure reason recorded per variant."""

    reason = "backend_unavailable"


class BackendUnavailable(BackendError):
    reason = "backend_unavailable"


class BackendTimeout(BackendError):
    reason = "timeout"


class InvalidRequest(BackendError):
    reason = "invalid_request"


def model_server_url(settings: Settings) -> str:
    """Base URL of the model server: the Airflow connection (put in ``settings.extra`` by
    ``DarkroomHook``) or ``$DARKROOM_MODEL_SERVER_URL``."""
    url = settings.extra.get("model_server_url") or os.environ.get(MODEL_SERVER_URL_ENV)
    if not url:
        raise BackendError(
            "generation.backend is 'http' but no model server is configured; fix: set "
            f"{MODEL_SERVER_URL_ENV}=http://HOST:PORT (a host running `darkroom serve-model`) "
            "or define the Airflow HTTP connection 'darkroom_model_server'")
    return url.rstrip("/")


def make_backend(name: str, ref: ModelRef, settings: Settings, *, device: str = "auto",
                 stability: dict | None = None, dtype: str = "auto", options=None) -> Backend:
    """The backend called ``name`` for the model ``ref``.

    :param stability: the spec's ``generation.stability`` options (endpoint, model, format).
    :param dtype, options: the local backend's dtype and ``inference.PipelineOptions``.
    """
    if name == "local":
        from darkroom.inference import LocalDiffusersBackend, PipelineOptions

        return LocalDiffusersBackend(ref, device, dtype=dtype, options=options or PipelineOptions())
    if name == "http":
        from darkroom.backends.http import HttpBackend

        return HttpBackend(model_server_url(settings), ref)
    if name == "stability":
        from darkroom.backends.stability import StabilityBackend

        key = settings.extra.get("stability_api_key") or os.environ.get(STABILITY_KEY_ENV)
        if not key:
            raise BackendError(
                "generation.backend (or a routing rule) chose 'stability' but no API key is "
                f"configured; fix: set {STABILITY_KEY_ENV} or define the Airflow connection "
                "'darkroom_stability' with the key as its password")
        base_url = (settings.extra.get("stability_base_url") or os.environ.get(STABILITY_URL_ENV)
                    or "https://api.stability.ai")
        return StabilityBackend(api_key=key, base_url=base_url, **(stability or {}))
    raise BackendError(f"unknown backend {name!r}; fix: use one of {', '.join(BACKENDS)}")
