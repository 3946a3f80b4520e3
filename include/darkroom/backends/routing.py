"""Routing by policy: which backend generates a variant, and which Airflow pool runs the task.

The spec's ``generation.routing`` is a list of rules, tried in order::

    routing:
      - when: {product.confidential: true}
        backend: private          # local or http only: never a hosted API
      - when: {priority: high}
        pool: gpu_high

For the backend the first matching rule that names one wins, else ``generation.backend``.
For the pool the first matching rule that names one wins, else ``generation.pool``. Pools are
chosen when the DAG is parsed, so pool rules may test only campaign-level facts (``priority``,
``campaign``); backend rules may also test ``asset_type`` and ``product.<column>``.

Imported by the DAG factory at parse time: stdlib only.
"""

from __future__ import annotations

from typing import Any

from darkroom.backends import PRIVATE_BACKENDS

CAMPAIGN_FACTS = ("priority", "campaign")
VARIANT_FACTS = (*CAMPAIGN_FACTS, "asset_type")
_TRUE = {"true", "yes", "y", "1", "on"}
_FALSE = {"false", "no", "n", "0", "off", ""}


def check_condition(key: str, *, for_pool: bool) -> str | None:
    """None if ``key`` may appear in a rule's ``when``; else the problem and its fix."""
    if key.startswith("product.") and len(key) > len("product."):
        if for_pool:
            return (f"{key!r} cannot choose a pool: pools are fixed when the DAG is parsed, before "
                    f"products are read; fix: test only {', '.join(CAMPAIGN_FACTS)} in pool rules")
        return None
    allowed = CAMPAIGN_FACTS if for_pool else VARIANT_FACTS
    if key not in allowed:
        return (f"unknown condition {key!r}; fix: use one of {', '.join(allowed)}"
                + ("" if for_pool else " or product.<column>"))
    return None


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
