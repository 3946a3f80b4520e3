"""Forward passes on any backend, with out-of-memory halving.

Backend-neutral (no torch): an out-of-memory error is recognised by its type's name and
message, and a backend that holds device memory frees it through its own ``free_memory``.
"""

from __future__ import annotations

from darkroom.generation.types import Request, Result


def is_out_of_memory(exc: BaseException) -> bool:
    """torch's ``OutOfMemoryError`` (CUDA, MPS) or any error that says it ran out of memory."""
    return type(exc).__name__ == "OutOfMemoryError" or "out of memory" in str(exc).lower()


def generate_halving(backend, requests: list[Request], on_halve=None,
                     pass_size: int | None = None) -> list[Result]:
    """Generate; on out-of-memory, halve the pass size and retry in passes of that size.

    Seeds live in each variant's own latents, so a smaller pass gives the same picture (up
    to a grey level: another pass size is another GEMM shape; each asset records its pass).
    A single image that does not fit raises.
    """
    size = pass_size or len(requests)
    try:
        return backend.generate(requests, pass_size=pass_size)
    except Exception as exc:
        if size == 1 or not is_out_of_memory(exc):
            raise
    free = getattr(backend, "free_memory", None)
    if free is not None:
        free()
    half = size // 2
    if on_halve:
        on_halve(size, half)
    results: list[Result] = []
    for start in range(0, len(requests), half):
        results += generate_halving(backend, requests[start : start + half], on_halve, half)
    return results
