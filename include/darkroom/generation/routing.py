"""Routing by policy: which backend generates a variant, which Airflow pool runs the GPU
tasks, and the backends of one batch.

The spec's ``generation.routing`` is a list of rules, tried in order::

    routing:
      - when: {product.confidential: true}
        backend: private          # local or http only: never a hosted API
      - when: {priority: high}
        pool: gpu_high

For the backend the first matching rule that names one wins, else ``generation.backend``.
A rule (or ``generation``) may name fallbacks, tried in order when its backend is found down
during a generate task (``backend: http, fallback: [local, stability]``); a private rule falls
back to private backends only, so a confidential variant waits rather than leave our machines.
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

import logging
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

log = logging.getLogger("darkroom")

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


def _private(g) -> str:
    """What 'private' means for this campaign: its own backend when that is private (e.g. the
    GPU host's model server), otherwise this process."""
    return g.backend if g.backend in PRIVATE_BACKENDS else "local"


def _rule_for(spec, facts: dict[str, Any]):
    """The first rule that matches ``facts`` and names a backend, or None."""
    return next((r for r in spec.generation.routing if r.backend and matches(r.when, facts)), None)


def chain_for(spec, facts: dict[str, Any]) -> list[str]:
    """The backends for one variant's ``facts``, in the order to try them: the first matching
    rule's backend and its fallbacks, else ``generation.backend`` and ``generation.fallback``
    (the spec refuses a hosted fallback on a private rule)."""
    return _chain(spec.generation, _rule_for(spec, facts))


def _chain(g, rule) -> list[str]:
    names = [g.backend, *g.fallback] if rule is None else [rule.backend, *rule.fallback]
    return list(dict.fromkeys(_private(g) if b == "private" else b for b in names))


def backend_for(spec, facts: dict[str, Any]) -> str:
    """The primary backend for one variant's ``facts`` (campaign facts, asset_type, product row)."""
    return chain_for(spec, facts)[0]


BURST = "burst:"


def route_text(chain: list[str], burst: bool = False) -> str:
    """How a plan item records its backends: the primary, then its fallbacks ('http,stability');
    ``burst:`` first when the primary is the burst backend ('burst:stability,http')."""
    return (BURST if burst else "") + ",".join(chain)


def route_chain(text: str) -> tuple[list[str], bool]:
    """(backends in order, whether the first is a burst) of a plan item's recorded route."""
    return text.removeprefix(BURST).split(","), text.startswith(BURST)


def pool_for(spec) -> str | None:
    """The Airflow pool of the campaign's generate tasks (None: the deployment default)."""
    g = spec.generation
    facts = campaign_facts(spec)
    for rule in g.routing:
        if rule.pool and matches(rule.when, facts):
            return rule.pool
    return g.pool


def routes_for(spec, variants, rows: dict[str, dict] | None, burst: bool = False) -> dict[str, str]:
    """variant id -> its backends as :func:`route_text` writes them, decided at planning time
    from each variant's facts.

    ``rows``: product id -> product row with the spec's column map applied (None when no rule
    tests a product column). A variant whose product row is missing cannot have its facts
    checked, so it fails closed onto a private backend. ``burst``: the GPU pool is backed up
    (see ``generation.burst``): public variants headed for our GPUs go to the burst backend
    first, their own backends after it."""
    facts = campaign_facts(spec)
    private = _private(spec.generation)
    routes = {}
    for v in variants:
        if rows is not None and v.product_id not in rows:
            routes[v.id] = private
            continue
        product = rows.get(v.product_id) if rows is not None else None
        rule = _rule_for(spec, {**facts, "asset_type": v.asset_type, "product": product})
        chain = _chain(spec.generation, rule)
        if burst and chain[0] in PRIVATE_BACKENDS and (rule is None or rule.backend != "private"):
            chain = list(dict.fromkeys([spec.generation.burst.backend, *chain]))
            routes[v.id] = route_text(chain, burst=True)
        else:
            routes[v.id] = route_text(chain)
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
    """Sends each request to the first backend of its variant's chain that is not down;
    results come back in the order asked, each naming the backend (and sampler) that made
    it and why that one (``primary`` or ``fallback``).

    The circuit breaker: a backend that fails as a whole (refused, 5xx, timeout: a retryable
    :class:`BackendError`) is marked down for the rest of the task, so each later pass goes
    straight to its fallback, or fails at once, instead of each waiting out the same outage.
    ``down`` (backend name -> why) may be shared by the routed backends of one task.
    Backends are made when first needed: a fallback nobody needs need not be configured.
    """

    def __init__(self, routes: dict[str, str], make, down: dict[str, str] | None = None):
        parsed = {v: route_chain(text) for v, text in routes.items()}
        self.routes = {v: chain for v, (chain, _) in parsed.items()}
        self.burst = {v for v, (_, burst) in parsed.items() if burst}
        self.make = make
        self.backends: dict[str, Backend] = {}
        self.down = {} if down is None else down
        primaries = sorted({chain[0] for chain in self.routes.values()})
        self.name = "+".join(primaries)
        for name in primaries:  # a primary that cannot be made is a setup error: say it now
            self.backends[name] = make(name)

    def _backend(self, name: str) -> Backend | None:
        if name not in self.backends and name not in self.down:
            try:
                self.backends[name] = self.make(name)
            except BackendError as exc:
                self._mark_down(name, exc)
        return None if name in self.down else self.backends[name]

    def _mark_down(self, name: str, exc: BackendError) -> None:
        self.down[name] = f"{exc.reason}: {exc}"[:300]
        log.warning("Backend %s is down for the rest of this task (%s); its variants go to the "
                    "fallbacks their routing allows, if any", name, self.down[name])

    def sampler_name(self, scheduler: str) -> str:
        return ", ".join(sorted({b.sampler_name(scheduler) for b in self.backends.values()}))

    def device_use(self):
        """The local backend's device when one takes part (it is the one we run), else remote."""
        local = self.backends.get("local")
        report = getattr(local, "device_use", None)
        return report() if report else DeviceUse("remote")

    def reset_peak_memory(self) -> None:
        for b in list(self.backends.values()):
            getattr(b, "reset_peak_memory", lambda: None)()

    def free_memory(self) -> None:
        for b in list(self.backends.values()):
            getattr(b, "free_memory", lambda: None)()

    def _why(self, variant_id: str, name: str) -> str:
        if name != self.routes[variant_id][0]:
            return "fallback"
        return "burst" if variant_id in self.burst else "primary"

    def _unavailable(self, request: Request) -> Result:
        chain = self.routes[request.variant_id]
        why = "; ".join(f"{name} is down ({self.down[name]})" for name in chain)
        allowed = (f"its fallbacks ({', '.join(chain[1:])}) are down too" if chain[1:] else
                   "its routing rule allows no fallback")
        res = Result(request.variant_id, None, 0.0,
                     f"backend_unavailable: {why}; {allowed}, so it waits for the next run "
                     "(fix: bring the backend back, or name a fallback the policy allows)"[:500])
        res.backend, res.route = chain[0], self._why(request.variant_id, chain[0])
        return res

    def generate(self, requests: list[Request], pass_size: int | None = None) -> list[Result]:
        by_variant: dict[str, Result] = {}
        pending = list(requests)
        while pending:  # each round a backend found down sends its requests on down their chains
            groups: dict[str, list[Request]] = {}
            for r in pending:
                name = next((n for n in self.routes[r.variant_id] if self._backend(n)), None)
                if name is None:
                    by_variant[r.variant_id] = self._unavailable(r)
                else:
                    groups.setdefault(name, []).append(r)
            pending = []
            for name, mine in groups.items():
                backend = self.backends[name]
                try:
                    results = backend.generate(mine, pass_size=pass_size)
                except BackendError as exc:
                    if exc.retryable:  # down: open the breaker for the rest of the task
                        self._mark_down(name, exc)
                        pending += mine
                        continue
                    # refused for these variants (e.g. a feature it lacks): another backend
                    # would not be what the policy chose, so they fail with the reason
                    results = [Result(r.variant_id, None, 0.0, f"{exc.reason}: {exc}"[:500]) for r in mine]
                sampler = backend.sampler_name(mine[0].scheduler)
                for res in results:
                    res.backend, res.sampler = name, sampler
                    res.route = self._why(res.variant_id, name)
                    by_variant[res.variant_id] = res
        return [by_variant[r.variant_id] for r in requests]


def backend_for_batch(routes: dict[str, str], ref: ModelRef, settings: Settings, g,
                      resolve=lambda p: p, down: dict[str, str] | None = None) -> RoutedBackend:
    """The backend for a batch whose variants were routed as ``routes`` (variant id -> their
    backends as :func:`route_text` writes them). ``down``: the task's circuit breaker (see
    :class:`RoutedBackend`), shared across its batches."""
    options = PipelineOptions.from_spec(g, resolve=resolve, compile_backend=settings.compile_backend)
    stability = g.stability.model_dump(exclude_none=True)

    def make(name: str) -> Backend:
        return make_backend(name, ref, settings, device=g.device, stability=stability,
                            dtype=g.dtype, options=options)

    return RoutedBackend(routes, make, down)
