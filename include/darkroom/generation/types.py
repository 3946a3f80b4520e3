"""What every inference backend speaks: requests, results, the Backend protocol and its errors.

Light on purpose (no torch, no diffusers, no HTTP client): the stages, the CLI and the DAG
factory import these, and each backend module imports what it needs itself.

- ``local``: diffusers in this process (:mod:`darkroom.generation.local`);
- ``http``: Darkroom's own model server (``darkroom serve-model``) on a GPU host, which keeps
  models warm across Airflow tasks and batches concurrent requests;
- ``stability``: Stability AI's hosted REST v2beta image endpoints.

Every backend takes a list of :class:`Request` and returns one :class:`Result` per request,
in order. A failure that concerns one variant (a filtered image, a refused request) is a
``Result`` with ``error`` set to ``"<reason>: <detail>"``; a failure of the backend as a whole
raises :class:`BackendError`, whose ``reason`` the generate stage records on every variant of
the batch.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any, Protocol, runtime_checkable

from darkroom.errors import DarkroomError

BACKENDS = ("local", "http", "stability")
#: Backends whose prompts and pixels never leave machines we run: the only ones allowed for
#: confidential products.
PRIVATE_BACKENDS = frozenset({"local", "http"})

#: Spec scheduler name -> (diffusers scheduler class, its extra config, AUTOMATIC1111's name).
SCHEDULERS = {
    "ddim": ("DDIMScheduler", {}, "DDIM"),
    "pndm": ("PNDMScheduler", {}, "PLMS"),
    "euler": ("EulerDiscreteScheduler", {}, "Euler"),
    "euler_a": ("EulerAncestralDiscreteScheduler", {}, "Euler a"),
    "dpmpp_2m": ("DPMSolverMultistepScheduler", {}, "DPM++ 2M"),
    "lms": ("LMSDiscreteScheduler", {}, "LMS"),
}


@dataclass
class Request:
    variant_id: str
    prompt: str
    negative_prompt: str
    seed: int
    width: int
    height: int
    steps: int
    guidance: float
    scheduler: str
    # image2image / inpaint / IP-Adapter: the product's reference image and mask (PIL images).
    mode: str = "text2image"
    reference: Any = None
    mask: Any = None
    strength: float = 1.0
    ip_adapter_scale: float | None = None


@dataclass
class Result:
    variant_id: str
    image: Any | None  # PIL.Image
    seconds: float
    error: str | None = None  # "<reason>: <detail>": this variant failed, the others did not
    # Set when a routed batch mixes backends (darkroom.generation.routing): who made this image.
    backend: str | None = None
    sampler: str | None = None
    # Why that backend: primary (the one routing chose), fallback (the primary was down),
    # burst (the GPU pool was backed up when the run was planned).
    route: str | None = None
    # The forward pass that made this image, in order, padding included. Its length (the
    # pass size) decides the GEMM shapes, so replaying a pass of that size reproduces the image.
    forward_pass: list[str] | None = None


@dataclass(frozen=True)
class DeviceUse:
    """What a backend ran on, as the catalog records it for cost and capacity: the device
    (``cuda:0 NVIDIA H200``, ``cpu``, ``remote``), the dtype and the peak memory in bytes
    (the accelerator's, or the process's peak RSS on a CPU; None when unknown)."""

    device: str
    dtype: str | None = None
    peak_memory_bytes: int | None = None


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
    retryable = True  # a backend down or slow may answer the next attempt


class BackendUnavailable(BackendError):
    reason = "backend_unavailable"


class BackendTimeout(BackendError):
    reason = "timeout"


class InvalidRequest(BackendError):
    reason = "invalid_request"
    retryable = False


def device_use(backend) -> DeviceUse:
    """The backend's own account of its device, or ``remote`` for one that runs elsewhere."""
    report = getattr(backend, "device_use", None)
    return report() if report else DeviceUse("remote")
