"""Stable ids, and names that become storage keys, file names and folder names: one rule for
all of them.

Variant and asset ids are hashes of what decides their pixels (:func:`short_hash`), so the
same inputs always give the same names.

Product ids come from product data, run ids from whoever triggers a run, channel names from
the spec: any of them may hold ``/``, ``..``, a NUL or a 2 MB string. Every such name goes
through :func:`key_part` before it is joined into a key, and every key is checked again by
:func:`check_key` where storage and publishing write (a second line of defence).

The catalog is the source of truth and keeps every original name; keys only need to be
safe, readable and unique, so an unsafe name keeps its safe characters and gains a short
hash of the original (two names never share a key).
"""

from __future__ import annotations

import hashlib
import json
import re

from darkroom.errors import StorageError

#: A name used unchanged as one key segment: no separator, no leading dot, at most 100 characters.
SAFE_PART = re.compile(r"[A-Za-z0-9_][A-Za-z0-9._-]{0,99}")
_UNSAFE_CHAR = re.compile(r"[^A-Za-z0-9._-]")
_KEEP = 60  # characters of an unsafe name kept (readable), before its hash


def key_part(text: str) -> str:
    """One safe key segment for ``text``: ``text`` itself when it is already safe, else its
    safe characters (others become ``_``, leading dots too) and 12 hex digits of its sha256."""
    text = str(text)
    if SAFE_PART.fullmatch(text):
        return text
    readable = _UNSAFE_CHAR.sub("_", text[:_KEEP])
    readable = "_" + readable[1:] if readable.startswith(".") else readable
    digest = hashlib.sha256(text.encode("utf-8", "surrogatepass")).hexdigest()[:12]
    return f"{readable}-{digest}" if readable else digest


def check_key(key: str) -> str:
    """``key`` if it stays inside whatever root it is joined to, else :class:`StorageError`.

    Refused: absolute keys, empty, ``.`` and ``..`` segments, backslashes and control characters
    (Windows separators and NULs turn into paths elsewhere: a DAM sync, an S3 mount).
    """
    problem = None
    if not key or key.startswith("/"):
        problem = "is absolute or empty"
    elif "\\" in key or any(ord(c) < 32 or ord(c) == 127 for c in key):
        problem = "holds a backslash or a control character"
    elif any(part in ("", ".", "..") for part in key.split("/")):
        problem = "has an empty, '.' or '..' segment"
    if problem:
        raise StorageError(f"refused to write key {key[:200]!r}: it {problem}, so it could leave "
                           "the storage root; names are made safe with darkroom.ids.key_part")
    return key


def run_key(run_id: str, attempt: int = 0) -> str:
    """A run attempt's key segment: its run id made safe, and ``-attempt-N`` after the first
    (a re-processed DAG run keeps its run id; its files must not replace the first's)."""
    return key_part(run_id) + (f"-attempt-{attempt}" if attempt else "")


def short_hash(*parts: object, length: int = 16) -> str:
    """Hex sha256 of the parts' canonical JSON, cut to ``length`` characters: the stable ids
    of variants and assets."""
    blob = json.dumps(parts, sort_keys=True, separators=(",", ":"), default=str)
    return hashlib.sha256(blob.encode()).hexdigest()[:length]


def asset_id(variant_id: str, model_identity: str) -> str:
    """One asset per variant and model identity (``ModelRef.identity``)."""
    return short_hash(variant_id, model_identity, length=24)


def regenerated_variant_id(parent_id: str, attempt: int) -> str:
    """The variant QA plans when ``parent_id`` failed: attempt ``attempt`` of it."""
    return short_hash(parent_id, "regenerate", attempt, length=len(parent_id))
