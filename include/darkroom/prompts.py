"""From spec and product rows to variants: templates, brand text, restricted terms, seeds.

Templates run in Jinja2's sandbox with StrictUndefined, so a typo in a variable name is an
error naming the variable, never an empty string in a prompt that costs GPU time.

A variant is one product x asset type x locale x `vary` combination x seed. Channels are
not a dimension: every channel is a derivative cut from the same generated image.
"""

from __future__ import annotations

import itertools
from collections.abc import Callable, Iterable, Mapping
from dataclasses import dataclass, field

from jinja2 import TemplateError, UndefinedError
from jinja2.sandbox import SecurityError

from darkroom import sandbox
from darkroom.errors import PolicyError
from darkroom.ids import short_hash
from darkroom.policy import RestrictedTerms
from darkroom.policy import fold as _fold
from darkroom.spec import PROMPT_PIECES, LoadedSpec, template_environment


def template_version(loaded: LoadedSpec) -> str:
    """The content hash of everything that shapes prompt text: its version on every variant."""
    s = loaded.spec
    return short_hash(s.prompts.model_dump(), s.brand.style, s.brand.negative, length=12)


@dataclass(frozen=True)
class Violation:
    """A restricted term in a rendered prompt and the spec field or product column it came from."""

    term: str
    field: str

    def __str__(self) -> str:
        return f"restricted term {self.term!r} from {self.field}"


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
    violations: list[Violation] = field(default_factory=list)


def pixel_params(loaded: LoadedSpec, asset_type: str) -> dict:
    """The generation parameters that decide the pixels of one asset type's variants (besides
    model, prompt and seed): the campaign's, with what the asset type sets itself."""
    g = loaded.spec.generation_for(asset_type)
    params = {
        "width": g.width,
        "height": g.height,
        "steps": g.steps,
        "guidance": g.guidance,
        "scheduler": g.scheduler,
    }
    # Only when used, so text-to-image specs keep the variant ids they already have.
    if g.mode != "text2image":
        params.update(mode=g.mode, strength=g.strength)
    if g.ip_adapter:
        params["ip_adapter"] = g.ip_adapter.model_dump()  # as the spec spells it
    return params


def vary_combinations(groups: list[dict[str, list]]) -> list[dict]:
    """InvokeAI batch semantics: lists within a group are zipped, groups are crossed."""
    zipped = [[dict(zip(g, values, strict=True)) for values in zip(*g.values(), strict=True)]
              for g in groups]
    return [dict(itertools.chain.from_iterable(d.items() for d in combo))
            for combo in itertools.product(*zipped)] or [{}]


def localize(row: dict, locale: str | None) -> tuple[dict, dict[str, str]]:
    """The row as seen in ``locale``: column ``X_<locale>`` (when present and not empty)
    replaces ``X``. Returns the row and which source column now feeds each column."""
    origin = {c: c for c in row}
    if not locale:
        return dict(row), origin
    out, suffix = dict(row), f"_{locale}"
    for col, value in row.items():
        if col.endswith(suffix) and value not in (None, ""):
            base = col.removesuffix(suffix)
            out[base], origin[base] = value, col
    return out, origin


class _Renderer:
    """The spec's templates compiled once; renders one product in one context."""

    def __init__(self, loaded: LoadedSpec):
        self.loaded = loaded
        env = template_environment()
        p = loaded.spec.prompts
        self.templates = {name: env.from_string(text) for name, text in p.templates.items()}

    def render(self, name: str, context: dict, product_id: str, asset_type: str) -> str:
        tmpl = self.templates.get(name)
        if tmpl is None:
            return ""
        try:
            return " ".join(sandbox.render(tmpl, context).split())
        except UndefinedError as exc:
            names = ", ".join(f"product.{k}" for k in sorted(context["product"]))
            raise PolicyError(
                f"{self.loaded.path}: field `prompts.{name}`: {exc.message} (product "
                f"{product_id!r}, asset type {asset_type!r}); fix: use one of {names}, "
                "asset_type.name, asset_type.description, campaign, locale"
                + (f", vary.{{{', '.join(sorted(context['vary']))}}}" if context["vary"] else "")
            ) from None
        except sandbox.TemplateLimit as exc:
            raise PolicyError(f"{self.loaded.path}: field `prompts.{name}`: stopped for product "
                              f"{product_id!r}: {exc}") from None
        except SecurityError as exc:
            raise PolicyError(f"{self.loaded.path}: field `prompts.{name}`: refused by the "
                              f"template sandbox: {exc}; fix: use plain variables and filters") from None
        except TemplateError as exc:
            raise PolicyError(f"{self.loaded.path}: field `prompts.{name}`: {exc} (product "
                              f"{product_id!r}); fix the template") from None
        except Exception as exc:  # noqa: BLE001 - a template's failure is a message, never a traceback
            # Python's own errors inside the template (1/0, a filter given a number, ...)
            raise PolicyError(f"{self.loaded.path}: field `prompts.{name}`: the template failed "
                              f"for product {product_id!r}: {type(exc).__name__}: "
                              f"{str(exc)[:200]}; fix the template") from None


def _attribute(terms: RestrictedTerms, term: str, prompt: str, row: dict, origin: dict[str, str],
               used_columns: list[str], pieces: dict[str, str], brand_style: str) -> str:
    """Name the field a restricted term came from: a product column whose value is in the
    prompt and holds the term, else the template piece that rendered it, else the brand."""
    folded_prompt = _fold(prompt)
    for col in used_columns:
        value = row.get(col)
        if isinstance(value, str) and terms.matches(term, value) and _fold(value) in folded_prompt:
            return f"product column `{origin.get(col, col)}`"
    for name, text in pieces.items():
        if terms.matches(term, text):
            return f"template `prompts.{name}`"
    if terms.matches(term, brand_style):
        return "`brand.style`"
    return "the rendered prompt"


def render_variants(
    loaded: LoadedSpec, products: Iterable[dict], *, seed_offset: int = 0,
    inputs: Mapping[str, dict] | Callable[[dict], dict] | None = None, limit: int | None = None,
    wanted: set[str] | None = None,
) -> list[PlannedVariant]:
    """Products x asset types x locales x vary combinations x seeds, rendered, stable order.

    ``inputs``: product id -> its input images ({"reference": {"uri", "sha256"}, "mask": ...})
    for image2image, inpainting and IP-Adapter; their checksums join the variant's identity,
    so a changed reference image makes a new variant. A callable is given each product row
    when that row is reached, so rows past ``limit`` are never read (nor their images).

    ``wanted`` (variant ids) and ``limit`` (the first N, after ``wanted``) are applied before
    rendering: a variant's id does not depend on its prompt, so a run limited to 2 variants of
    a million products renders 2 prompts, not a million.

    Raises PolicyError when a template names a variable that does not exist or goes past a
    limit of the sandbox (darkroom.sandbox).
    """
    if limit is not None and limit <= 0:
        return []
    return list(itertools.islice(_iter_variants(loaded, products, seed_offset, inputs, wanted), limit))


def _iter_variants(loaded: LoadedSpec, products: Iterable[dict], seed_offset: int,
                   inputs: Mapping[str, dict] | Callable[[dict], dict] | None,
                   wanted: set[str] | None):
    spec = loaded.spec
    p = spec.prompts
    renderer = _Renderer(loaded)
    version = template_version(loaded)
    terms = RestrictedTerms.for_spec(loaded)
    id_col = spec.products.id_column
    combos = vary_combinations(p.vary)
    locales: list[str | None] = list(p.locales) or [None]
    seeds = [spec.generation.base_seed + seed_offset + i for i in range(spec.generation.seeds_per_variant)]
    # Dumped once, not per product; each asset type's own size, steps and scheduler.
    asset_types = [(at, at.model_dump(exclude={"generation"}), pixel_params(loaded, at.name))
                   for at in spec.asset_types]
    for row in products:
        product_id = str(row[id_col])
        row_hash = short_hash(row)
        row_inputs = inputs(row) if callable(inputs) else (inputs or {}).get(product_id, {})
        for locale in locales:
            local_row, origin = localize(row, locale)
            product = dict(local_row)
            # The column map lets templates use stable names whatever the source calls them.
            for name, column in spec.products.columns.items():
                product[name] = local_row.get(column)
                origin[name] = origin.get(column, column)
            free_text = ""
            if p.free_text_column:
                free_text = " ".join(str(product.get(p.free_text_column) or "").split())
                free_text = free_text[: p.free_text_max_chars]
            for at, at_fields, params in asset_types:
                for combo in combos:
                    extra: dict = dict(row_inputs)
                    if locale:
                        extra["locale"] = locale
                    if combo:
                        extra["vary"] = combo
                    # Locale and vary join the identity only when used, so specs without
                    # them keep the ids their variants already have.
                    ids = {seed: short_hash(spec.id, product_id, row_hash, version, at.name, params,
                                            seed, *([extra] if extra else []), length=24)
                           for seed in seeds}
                    if wanted is not None:
                        ids = {seed: vid for seed, vid in ids.items() if vid in wanted}
                        if not ids:
                            continue  # nothing of this combination is asked for: not rendered
                    ctx = {"product": product, "asset_type": at_fields, "campaign": spec.id,
                           "locale": locale or "", "vary": combo}
                    pieces = {n: renderer.render(n, ctx, product_id, at.name) for n in PROMPT_PIECES}
                    pieces = {n: t for n, t in pieces.items() if t}
                    if p.positive is not None:
                        prompt = renderer.render("positive", {**ctx, "pieces": pieces}, product_id, at.name)
                    else:
                        prompt = ", ".join(pieces.values())
                    body = prompt
                    if free_text:
                        prompt = f"{prompt}, {free_text}"
                    if spec.brand.style:
                        prompt = f"{prompt}, {spec.brand.style}"
                    neg = renderer.render("negative", ctx, product_id, at.name)
                    neg = ", ".join(x for x in [neg, *spec.brand.negative] if x)
                    found = terms.find(prompt)
                    violations = []
                    if found:
                        sources = {**pieces, "positive": body} if p.positive is not None else pieces
                        # The free text as used (trimmed), so its terms are found in the prompt.
                        seen = {**product, p.free_text_column: free_text} if free_text else product
                        cols = [c for c in seen if isinstance(seen[c], str)]
                        violations = [Violation(t, _attribute(terms, t, prompt, seen, origin, cols,
                                                              sources, spec.brand.style))
                                      for t in found]
                    for seed, vid in ids.items():
                        yield PlannedVariant(
                            id=vid,
                            product_id=product_id,
                            asset_type=at.name,
                            channels=list(at.channels),
                            template_version=version,
                            prompt=prompt,
                            negative_prompt=neg,
                            seed=seed,
                            params={**params, "row_hash": row_hash, **extra},
                            violations=violations,
                        )


def chunk(items: list, variants_per_task: int, max_tasks: int, key: Callable | None = None) -> list[list]:
    """Split into batches of at least ``variants_per_task``, at most ``max_tasks`` batches.

    With ``key``, a batch holds items of one key only (variants drawn with one model at one
    size: one pipeline per generate task); the size grows so the groups' short last batches
    still fit under ``max_tasks`` (while there are fewer groups than tasks)."""
    if not items:
        return []
    groups: dict = {}
    for item in items:
        groups.setdefault(key(item) if key else None, []).append(item)
    size = max(variants_per_task, -(-len(items) // max(1, max_tasks - len(groups) + 1)))
    return [group[i : i + size] for group in groups.values() for i in range(0, len(group), size)]
