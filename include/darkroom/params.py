"""The Params a person sets when starting a campaign run: Airflow's trigger form, the REST
API's ``conf``, a backfill's ``--dag-run-conf`` and ``darkroom run --conf`` all pass them.

One definition for both sides: the DAG file builds Airflow's ``Param`` objects from
:data:`PARAMS` (Airflow then checks the trigger form and REST requests with its JSON Schema),
and :meth:`RunConf.from_dict` checks the same values again where Airflow does not (the CLI
before anything starts, a stage given a dict), with a message that names the Param, the
value and what it takes. Cheap to import: the DAG file reads it at parse time.
"""

from __future__ import annotations

import json
import re
from dataclasses import asdict, dataclass

from darkroom.errors import ParamsError

#: A variant id as expand_prompts makes them (darkroom.ids.short_hash).
VARIANT_ID = re.compile(r"[0-9a-f]{16,32}")
MAX_VARIANTS = 100_000
MAX_VERSION = 128  # asset.model_version's column width

#: Param -> its JSON Schema for Airflow (``default`` and ``description`` included), in the
#: order the trigger form shows them.
PARAMS: dict[str, dict] = {
    "model_version": {
        "default": None, "type": ["null", "string"], "maxLength": MAX_VERSION,
        "title": "Model version",
        "description": "Leave empty for the campaign's own model. To regenerate with another: a "
                       "profile version number or alias (models:/ campaigns), a revision (hub "
                       "models), or a checksum prefix (a local folder). New asset versions supersede "
                       "the old ones, which stay; reviewers see only the new ones. It "
                       "applies to the campaign's generation.model: an asset type with a model of "
                       "its own keeps that one.",
    },
    "limit": {
        "default": None, "type": ["null", "integer"], "minimum": 1,
        "title": "Limit",
        "description": "Generate at most this many variants (the first ones of the plan). Empty: "
                       "every variant.",
    },
    "seed_offset": {
        "default": 0, "type": "integer", "minimum": 0,
        "title": "Seed offset",
        "description": "Added to every seed: new pictures of the same prompts. 0 keeps the "
                       "campaign's seeds (and reuses what they already made).",
    },
    "dry_run": {
        "default": False, "type": "boolean",
        "title": "Dry run",
        "description": "Plan only: count the variants, what is new and what it would cost, and "
                       "stop before any GPU work.",
    },
    "variants": {
        "default": None, "type": ["null", "array"], "items": {"type": "string"},
        "title": "Only these variants",
        "description": "Variant ids to limit the run to (`darkroom regenerate --where ...` fills "
                       "this). Empty: every variant.",
    },
}


@dataclass
class RunConf:
    """The Params of one run, checked."""

    model_version: str | None = None
    limit: int | None = None
    seed_offset: int = 0
    dry_run: bool = False
    # Only these variant ids (darkroom regenerate --where ...); None: every variant.
    variants: list[str] | None = None

    @classmethod
    def from_dict(cls, conf: dict | None, *, source: str = "the run's Params") -> RunConf:
        """The Params in ``conf``, each checked against :data:`PARAMS`.

        :raises ParamsError: naming every Param that is unknown or has a value it does not
            take, with the value and the fix; ``source`` says where they came from.
        """
        conf = dict(conf or {})
        problems = [f"`{k}` = {_show(v)} is not a Param of campaign runs; they are "
                    f"{', '.join(PARAMS)}" for k, v in conf.items() if k not in PARAMS]
        values = {}
        for name, check in _CHECKS.items():
            value = conf.get(name, PARAMS[name]["default"])
            try:
                values[name] = check(value)
            except ValueError as exc:
                problems.append(f"`{name}` = {_show(value)}: {exc}")
        if problems:
            raise ParamsError(f"{source} cannot start a run:\n"
                              + "\n".join(f"  - {p}" for p in problems))
        return cls(**values)

    def as_conf(self) -> dict:
        """The Params as a run's ``conf`` (JSON types, every Param present)."""
        return asdict(self)


def _show(value) -> str:
    text = json.dumps(value, default=str)
    return text if len(text) <= 80 else text[:77] + "..."


def _model_version(v):
    if v is None or (isinstance(v, str) and not v.strip()):
        return None
    if isinstance(v, bool) or not isinstance(v, str | int):
        raise ValueError("give a version number, alias, revision or checksum as text, e.g. \"2\" "
                         "or \"champion\", or leave it empty for the campaign's own model")
    v = str(v).strip()
    if len(v) > MAX_VERSION or any(c.isspace() or ord(c) < 32 for c in v):
        raise ValueError(f"a model version is one word of at most {MAX_VERSION} characters, e.g. "
                         "\"2\", \"champion\" or a revision")
    return v


def _whole(minimum: int, empty: str | None):
    def check(v):
        if v is None and empty is not None:
            return None
        if isinstance(v, bool) or not isinstance(v, int):
            kind = "text" if isinstance(v, str) else type(v).__name__
            raise ValueError(f"is {kind}, not a whole number; give a number of at least {minimum} "
                             "(JSON, without quotes)" + (f", or null for {empty}" if empty else ""))
        if v < minimum:
            raise ValueError(f"must be at least {minimum}" + (f" (null: {empty})" if empty else ""))
        return v
    return check


def _boolean(v):
    if not isinstance(v, bool):
        raise ValueError("give true or false (JSON booleans, without quotes)")
    return v


def _variants(v):
    if v is None or v == []:
        return None
    if not isinstance(v, list) or not all(isinstance(x, str) for x in v):
        raise ValueError("give a list of variant ids, e.g. [\"3f2a9c0d1b4e5f60\"], or null for "
                         "every variant")
    if len(v) > MAX_VARIANTS:
        raise ValueError(f"{len(v)} ids; at most {MAX_VARIANTS} per run")
    bad = [x for x in v if not VARIANT_ID.fullmatch(x)]
    if bad:
        raise ValueError(f"{_show(bad[0])} is not a variant id (16 to 32 hex digits: "
                         "`darkroom assets search --json` lists them)")
    return list(dict.fromkeys(v))


_CHECKS = {
    "model_version": _model_version,
    "limit": _whole(1, "every variant"),
    "seed_offset": _whole(0, None),
    "dry_run": _boolean,
    "variants": _variants,
}
