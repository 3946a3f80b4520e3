"""Routing by policy: which backend generates a variant, which Airflow pool runs the GPU
tasks, and the backends of one batch.

The spec's ``generation.routing`` is a list of rules, tried in order::

    routing:
      - when: {product.confidential: true}
        backend: private          # local or http only: never a hosted API
      - when: {priority: high}
        pool: gpu_high

For the backend the first matching rule that names one wins, else ``generation.backend``.
For the pool the first matching rule that names one wins, else ``generation.pool``. Pools are
chosen when the DAG is parsed, so pool rules may test only campaign-level facts (``priority``,
``campaign``); backend rules may also test ``asset_type`` and ``product.<column>``, and are
decided when the run is planned (the plan item records its backend): the GPU worker never
reads the product source. Which conditions a rule may test is the spec's business
(darkroom.spec.check_condition).

Imported by the DAG factory at parse time: nothing heavy at the top; the local (diffusers)
backend is imported only when one is made.
"""

from __future__ import annotations

from typing import Any

from darkroom.config import Settings
from darkroom.generation.models import ModelRef, PipelineOptions
from darkroom.generation.types import (
    BACKENDS,
    PRIVATE_BACKENDS,
    Backend,
    BackendError,
    DeviceUse,
    Request,
    Result,
)

_TRUE = {"true", "yes", "y", "1", "on"}
_FALSE = {"false", "no", "n", "0", "off", ""}


def _equal(expected: Any, actual: Any) -> bool:
    if isinstance(expected, list):
        return any(_equal(e, actual) for e in expected)
    if isinstance(expected, bool):
        # CSV columns arrive as text: 'yes', 'TRUE', '1' mean true, an empty cell false.
        if isinstance(actual, bool):
            return actual is expected
        text = "" if actual is None else str(actual).strip().lower()
        return text in (_TRUE if expected else _FALSE)
    if actual is None:
        return expected is None
    return str(expected) == str(actual)


def matches(when: dict[str, Any], facts: dict[str, Any]) -> bool:
    """Every condition holds; ``product.X`` reads ``facts['product'][X]`` (missing: None)."""
    for key, expected in when.items():
        if key.startswith("product."):
            actual = (facts.get("product") or {}).get(key.removeprefix("product."))
        else:
            actual = facts.get(key)
        if not _equal(expected, actual):
            return False
    return True


def campaign_facts(spec) -> dict[str, Any]:
    return {"priority": spec.generation.priority, "campaign": spec.id}


def needs_products(spec) -> bool:
    return any(k.startswith("product.") for rule in spec.generation.routing for k in rule.when)


def backend_for(spec, facts: dict[str, Any]) -> str:
    """The backend for one variant's ``facts`` (campaign facts, asset_type, product row)."""
    g = spec.generation
    for rule in g.routing:
        if rule.backend and matches(rule.when, facts):
            if rule.backend == "private":
                # Keep the campaign's own backend when it is private (e.g. the GPU host's
                # model server); otherwise fall back to this process.
                return g.backend if g.backend in PRIVATE_BACKENDS else "local"
            return rule.backend
    return g.backend


def pool_for(spec) -> str | None:
    """The Airflow pool of the campaign's generate tasks (None: the deployment default)."""
    g = spec.generation
    facts = campaign_facts(spec)
    for rule in g.routing:
        if rule.pool and matches(rule.when, facts):
            return rule.pool
    return g.pool


def routes_for(spec, variants, rows: dict[str, dict] | None) -> dict[str, str]:
    """variant id -> backend name, decided at planning time from each variant's facts.

    ``rows``: product id -> product row with the spec's column map applied (None when no rule
    tests a product column). A variant whose product row is missing cannot have its facts
    checked, so it fails closed onto a private backend."""
    facts = campaign_facts(spec)
    private = spec.generation.backend if spec.generation.backend in PRIVATE_BACKENDS else "local"
    routes = {}
    for v in variants:
        if rows is not None and v.product_id not in rows:
            routes[v.id] = private
            continue
        product = rows.get(v.product_id) if rows is not None else None
        routes[v.id] = backend_for(spec, {**facts, "asset_type": v.asset_type, "product": product})
    return routes


def make_backend(name: str, ref: ModelRef, settings: Settings, *, device: str = "auto",
                 stability: dict | None = None, dtype: str = "auto",
                 options: PipelineOptions | None = None) -> Backend:
    """The backend called ``name`` for the model ``ref``.

    :param stability: the spec's ``generation.stability`` options (endpoint, model, format).
    :param dtype, options: the local backend's dtype and pipeline options.
    """
    if name == "local":
        # torch and diffusers: only a process that generates locally imports them.
        from darkroom.generation.local import LocalDiffusersBackend

        return LocalDiffusersBackend(ref, device, dtype=dtype, options=options or PipelineOptions())
    if name == "http":
        from darkroom.generation.http import HttpBackend  # httpx: only for this backend

        if not settings.model_server_url:
            raise BackendError(
                "generation.backend is 'http' but no model server is configured; fix: set "
                "DARKROOM_MODEL_SERVER_URL=http://HOST:PORT (a host running `darkroom serve-model`) "
                f"or define the Airflow HTTP connection {settings.model_server_conn_id!r}")
        return HttpBackend(settings.model_server_url.rstrip("/"), ref)
    if name == "stability":
        from darkroom.generation.stability import StabilityBackend  # httpx: only for this backend

        if not settings.stability_api_key:
            raise BackendError(
                "generation.backend (or a routing rule) chose 'stability' but no API key is "
                "configured; fix: set DARKROOM_STABILITY_API_KEY or define the Airflow connection "
                f"{settings.stability_conn_id!r} with the key as its password")
        return StabilityBackend(api_key=settings.stability_api_key, base_url=settings.stability_base_url,
                                **(stability or {}))
    raise BackendError(f"unknown backend {name!r}; fix: use one of {', '.join(BACKENDS)}")


class RoutedBackend:
    """Sends each request to the backend its variant was routed to; results come back in the
    order asked, each naming the backend (and sampler) that made it."""

    def __init__(self, routes: dict[str, str], backends: dict[str, Backend]):
        self.routes, self.backends = routes, backends
        self.name = "+".join(sorted(backends))

    def sampler_name(self, scheduler: str) -> str:
        return ", ".join(sorted({b.sampler_name(scheduler) for b in self.backends.values()}))

    def device_use(self):
        """The local backend's device when one takes part (it is the one we run), else remote."""
        local = self.backends.get("local")
        report = getattr(local, "device_use", None)
        return report() if report else DeviceUse("remote")

    def generate(self, requests: list[Request], pass_size: int | None = None) -> list[Result]:
        by_variant: dict[str, Result] = {}
        for name, backend in self.backends.items():
            mine = [r for r in requests if self.routes[r.variant_id] == name]
            if not mine:
                continue
            try:
                results = backend.generate(mine, pass_size=pass_size)
            except BackendError as exc:  # one backend down must not fail the others' variants
                results = [Result(r.variant_id, None, 0.0, f"{exc.reason}: {exc}"[:500]) for r in mine]
            sampler = backend.sampler_name(mine[0].scheduler)
            for res in results:
                res.backend, res.sampler = name, sampler
                by_variant[res.variant_id] = res
        return [by_variant[r.variant_id] for r in requests]


def backend_for_batch(routes: dict[str, str], ref: ModelRef, settings: Settings, g,
                      resolve=lambda p: p) -> Backend:
    """The backend for a batch whose variants were routed as ``routes`` (variant id ->
    backend name): a plain one when they all route alike, else a :class:`RoutedBackend`."""
    options = PipelineOptions.from_spec(g, resolve=resolve, compile_backend=settings.compile_backend)
    stability = g.stability.model_dump(exclude_none=True)
    backends = {name: make_backend(name, ref, settings, device=g.device, stability=stability,
                                   dtype=g.dtype, options=options)
                for name in sorted(set(routes.values()))}
    if len(backends) == 1:
        return next(iter(backends.values()))
    return RoutedBackend(routes, backends)
