"""The backend(s) of one generate batch, chosen per variant by the spec's routing rules."""

from __future__ import annotations

from typing import TYPE_CHECKING

from darkroom.backends import PRIVATE_BACKENDS, Backend, BackendError, make_backend
from darkroom.backends.routing import backend_for, campaign_facts, needs_products
from darkroom.inference import Request, Result

if TYPE_CHECKING:
    from darkroom.inference import ModelRef


class RoutedBackend:
    """Sends each request to the backend its variant was routed to; results come back in the
    order asked, each naming the backend (and sampler) that made it."""

    def __init__(self, routes: dict[str, str], backends: dict[str, Backend]):
        self.routes, self.backends = routes, backends
        self.name = "+".join(sorted(backends))

    def sampler_name(self, scheduler: str) -> str:
        return ", ".join(sorted({b.sampler_name(scheduler) for b in self.backends.values()}))

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


def _product_rows(ctx) -> dict[str, dict]:
    from darkroom.products import frame_to_rows
    from darkroom.stages import _products_frame

    spec = ctx.spec
    rows = {}
    for row in frame_to_rows(_products_frame(ctx)):
        product = dict(row)
        for name, column in spec.products.columns.items():  # rules may use the mapped names
            product[name] = row.get(column)
        rows[str(row[spec.products.id_column])] = product
    return rows


def routes_for(ctx, variants) -> dict[str, str]:
    """variant id -> backend name."""
    spec = ctx.spec
    facts = campaign_facts(spec)
    rows = _product_rows(ctx) if needs_products(spec) else None
    private = spec.generation.backend if spec.generation.backend in PRIVATE_BACKENDS else "local"
    routes = {}
    for v in variants:
        if rows is not None and v.product_id not in rows:
            # The product row is gone (source changed since planning): its facts cannot be
            # checked, so fail closed and keep it on a private backend.
            routes[v.id] = private
            continue
        product = rows.get(v.product_id) if rows is not None else None
        routes[v.id] = backend_for(spec, {**facts, "asset_type": v.asset_type, "product": product})
    return routes


def backend_for_batch(ctx, ref: ModelRef, g, variants) -> Backend:
    """The backend for ``variants``: a plain one when they all route alike, else a RoutedBackend."""
    routes = routes_for(ctx, variants)
    options = g.stability.model_dump(exclude_none=True)
    from darkroom.inference import PipelineOptions

    local = PipelineOptions.from_spec(g, resolve=ctx.loaded.resolve)
    backends = {name: make_backend(name, ref, ctx.settings, device=g.device, stability=options,
                                   dtype=g.dtype, options=local)
                for name in sorted(set(routes.values()))}
    if len(backends) == 1:
        return next(iter(backends.values()))
    return RoutedBackend(routes, backends)
