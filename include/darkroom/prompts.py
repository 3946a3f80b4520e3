"""From spec and product rows to variants: templates, brand text, restricted terms, seeds.

Templates run in Jinja2's sandbox with StrictUndefined, so a typo in a variable name is an
error naming the variable, never an empty string in a prompt that costs GPU time.
"""

from __future__ import annotations

import hashlib
import json
import re
import unicodedata
from dataclasses import dataclass, field
from functools import cache

from jinja2 import StrictUndefined, UndefinedError
from jinja2.sandbox import SandboxedEnvironment

from darkroom.errors import PolicyError
from darkroom.spec import LoadedSpec


@cache
def template_environment() -> SandboxedEnvironment:
    return SandboxedEnvironment(undefined=StrictUndefined, autoescape=False, trim_blocks=True)


def short_hash(*parts: object, length: int = 16) -> str:
    blob = json.dumps(parts, sort_keys=True, separators=(",", ":"), default=str)
    return hashlib.sha256(blob.encode()).hexdigest()[:length]


def template_version(loaded: LoadedSpec) -> str:
    """The content hash of everything that shapes prompt text: its version on every variant."""
    s = loaded.spec
    return short_hash(s.prompts.model_dump(), s.brand.style, s.brand.negative, length=12)


def _fold(text: str) -> str:
    # Case- and accent-insensitive matching: "Crème" and "creme" are the same term.
    decomposed = unicodedata.normalize("NFKD", text)
    return "".join(c for c in decomposed if not unicodedata.combining(c)).casefold()


@dataclass(frozen=True)
class RestrictedTerms:
    terms: tuple[str, ...]

    @classmethod
    def for_spec(cls, loaded: LoadedSpec) -> RestrictedTerms:
        terms = list(loaded.spec.brand.restricted_terms)
        if loaded.spec.brand.restricted_terms_file:
            text = loaded.resolve(loaded.spec.brand.restricted_terms_file).read_text("utf-8")
            terms += [t.strip() for t in text.splitlines() if t.strip() and not t.startswith("#")]
        return cls(tuple(dict.fromkeys(terms)))

    @property
    def _patterns(self) -> list[tuple[str, re.Pattern]]:
        return [(t, re.compile(rf"(?<!\w){re.escape(_fold(t))}(?!\w)")) for t in self.terms]

    def find(self, text: str) -> list[str]:
        folded = _fold(text)
        return [term for term, pat in self._patterns if pat.search(folded)]


@dataclass
class PlannedVariant:
    id: str
    product_id: str
    asset_type: str
    channels: list[str]
    template_version: str
    prompt: str
    negative_prompt: str
    seed: int
    params: dict
    violations: list[str] = field(default_factory=list)


def pixel_params(loaded: LoadedSpec) -> dict:
    """The generation parameters that decide the pixels (besides model, prompt and seed)."""
    g = loaded.spec.generation
    return {
        "width": g.width,
        "height": g.height,
        "steps": g.steps,
        "guidance": g.guidance,
        "scheduler": g.scheduler,
    }


def render_variants(
    loaded: LoadedSpec, products: list[dict], *, seed_offset: int = 0
) -> list[PlannedVariant]:
    """Products x asset types x seeds, rendered, in a stable order.

    Raises PolicyError when a template names a variable that does not exist.
    """
    spec = loaded.spec
    env = template_environment()
    positive = env.from_string(spec.prompts.positive)
    negative = env.from_string(spec.prompts.negative)
    version = template_version(loaded)
    terms = RestrictedTerms.for_spec(loaded)
    params = pixel_params(loaded)
    id_col = spec.products.id_column
    out: list[PlannedVariant] = []
    for row in products:
        product = dict(row)
        # The column map lets templates use stable names whatever the source calls them.
        for name, column in spec.products.columns.items():
            product[name] = row.get(column)
        product_id = str(row[id_col])
        row_hash = short_hash(row)
        for at in spec.asset_types:
            context = {"product": product, "asset_type": at.model_dump(), "campaign": spec.id}
            try:
                prompt = positive.render(context).strip()
                neg = negative.render(context).strip()
            except UndefinedError as exc:
                raise PolicyError(
                    f"{loaded.path}: field `prompts`: {exc.message} (product {product_id!r}, "
                    f"asset type {at.name!r}); fix: use one of product.{{{', '.join(sorted(product))}}}, "
                    "asset_type.name, asset_type.description, campaign"
                ) from None
            if spec.brand.style:
                prompt = f"{prompt}, {spec.brand.style}"
            neg = ", ".join(p for p in [neg, *spec.brand.negative] if p)
            violations = [f"{t!r} in prompt" for t in terms.find(prompt)]
            for i in range(spec.generation.seeds_per_variant):
                seed = spec.generation.base_seed + seed_offset + i
                vid = short_hash(
                    spec.id, product_id, row_hash, version, at.name, params, seed, length=24
                )
                out.append(
                    PlannedVariant(
                        id=vid,
                        product_id=product_id,
                        asset_type=at.name,
                        channels=list(at.channels),
                        template_version=version,
                        prompt=prompt,
                        negative_prompt=neg,
                        seed=seed,
                        params={**params, "row_hash": row_hash},
                        violations=violations,
                    )
                )
    return out


def chunk(items: list, variants_per_task: int, max_tasks: int) -> list[list]:
    """Split into batches of at least ``variants_per_task``, at most ``max_tasks`` batches."""
    if not items:
        return []
    size = max(variants_per_task, -(-len(items) // max_tasks))
    return [items[i : i + size] for i in range(0, len(items), size)]
