"""Stable ids and storage keys: the same inputs always give the same names.

A variant's id is a hash of what decides its pixels except the model; an asset's id adds the
model's identity; storage keys are built from path-safe forms of run ids.
"""

from __future__ import annotations

import hashlib
import json


def short_hash(*parts: object, length: int = 16) -> str:
    """Hex sha256 of the parts' canonical JSON, cut to ``length`` characters."""
    blob = json.dumps(parts, sort_keys=True, separators=(",", ":"), default=str)
    return hashlib.sha256(blob.encode()).hexdigest()[:length]


def safe_key(text: str) -> str:
    """A path-safe name: letters, digits, ``-``, ``_`` and ``.``; anything else becomes ``_``."""
    return "".join(c if c.isalnum() or c in "-_." else "_" for c in text)


def asset_id(variant_id: str, model_identity: str) -> str:
    """One asset per variant and model identity (``ModelRef.identity``)."""
    return short_hash(variant_id, model_identity, length=24)


def regenerated_variant_id(parent_id: str, attempt: int) -> str:
    """The variant QA plans when ``parent_id`` failed: attempt ``attempt`` of it."""
    return short_hash(parent_id, "regenerate", attempt, length=len(parent_id))
