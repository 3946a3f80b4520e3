"""The campaign spec: one YAML file, validated by a pydantic model, becomes one Airflow DAG.

Loading is cheap on purpose (YAML, pydantic, a Jinja syntax check, a stat of the product
file): the DAG factory calls :func:`load_spec` at parse time for every campaign. So the spec
imports no engine: it owns the names it validates against (the QA check names, the routing
conditions, the template environment) and the engines import them from here.
"""

from __future__ import annotations

import copy
import hashlib
import json
import re
from functools import cache, cached_property
from pathlib import Path
from typing import Annotated, Any, Literal, get_args, get_origin

from jinja2 import StrictUndefined, TemplateSyntaxError
from pydantic import (
    BaseModel,
    ConfigDict,
    Field,
    ValidationError,
    create_model,
    field_validator,
    model_serializer,
    model_validator,
)

from darkroom import confine
from darkroom.config import Settings
from darkroom.errors import SpecError
from darkroom.sandbox import PromptSandbox
from darkroom.yaml_safe import load_yaml

#: Every campaign's DAG id is this prefix and the campaign id.
DAG_PREFIX = "campaign__"
ID_PATTERN = r"^[a-z][a-z0-9_]{1,62}$"
CHANNEL_PATTERN = r"^[a-z0-9][a-z0-9_-]{0,62}$"
DURATION = re.compile(r"^(\d+)\s*(s|m|h|d)$")

#: The QA checks a rubric may name (darkroom.qa implements each; a test holds the two equal).
CHECK_NAMES = ("brand_hash", "brand_palette", "clip_score", "colour_mode", "contrast", "cutout", "dimensions",
               "duplicate", "exposure", "file_size", "format", "no_text", "not_blank", "nsfw", "prompt_match",
               "provenance", "sharpness")

#: Facts a routing rule's ``when`` may test. Pools are chosen when the DAG is parsed, so pool
#: rules see campaign facts only; backend rules also see the asset type and product columns.
CAMPAIGN_FACTS = ("priority", "campaign")
VARIANT_FACTS = (*CAMPAIGN_FACTS, "asset_type")


@cache
def template_environment() -> PromptSandbox:
    """The bounded, immutable sandbox every prompt template renders in (darkroom.sandbox);
    undefined names are errors. The spec checks templates with it, prompts renders with it."""
    return PromptSandbox(undefined=StrictUndefined, autoescape=False, trim_blocks=True)


def check_condition(key: str, *, for_pool: bool) -> str | None:
    """None if ``key`` may appear in a routing rule's ``when``; else the problem and its fix."""
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


class _Model(BaseModel):
    # Unknown keys are spelling mistakes far more often than intent: refuse them. Strict: a
    # YAML `true` or `1e21` is not a step count, and a number is not a text; inf/nan are no limits.
    model_config = ConfigDict(extra="forbid", frozen=True, strict=True, allow_inf_nan=False)


class Expectation(_Model):
    """One Great Expectations expectation, as in a suite file: its type and kwargs."""

    type: Annotated[str, Field(pattern=r"^expect_[a-z0-9_]+$",
                               description="e.g. expect_column_values_to_be_in_set")]
    kwargs: dict[str, Any] = Field(default_factory=dict)


SQL_SCHEME = "postgres://"


class ProductSource(_Model):
    """Where the product rows come from: a file, an object, or a PostgreSQL table or query."""

    source: str = Field(
        description="CSV or Parquet file (relative to the spec file, or s3://bucket/key), or "
        "postgres://CONN_ID: an Airflow Postgres connection (outside Airflow: the "
        "AIRFLOW_CONN_<CONN_ID> environment variable), read with `table` or `query`"
    )
    table: str | None = Field(None, description="postgres:// sources: table (or schema.table) to read")
    query: str | None = Field(None, description="postgres:// sources: SELECT returning the product rows")
    id_column: str = Field("sku", description="Column holding the unique product id")
    columns: dict[str, str] = Field(
        default_factory=dict,
        description="Column map: name used in templates -> column in the source",
    )
    required_columns: list[str] = Field(default_factory=list)
    expectations: str | list[Expectation] | None = Field(
        None, description="Great Expectations suite: a JSON file (next to the spec or in "
        "include/expectations/), or the expectations inline"
    )
    mask_image_column: str | None = Field(
        None, description="generation.mode inpaint: column of mask image paths (white = repaint)"
    )
    reference_image_column: str | None = Field(
        None, description="Column of reference image paths (relative to the spec) or s3:// URIs; "
        "validation checks each one exists and lies under an allowed root (darkroom.confine)"
    )
    max_value_length: int = Field(
        5000, ge=1, le=1_000_000,
        description="Longest text a product value may have (characters); longer values fail "
        "validation (expect_column_value_lengths_to_be_between on every text column)")
    image_roots: list[str] = Field(
        default_factory=list,
        description="Where reference and mask images may come from besides the spec's and the "
        "product data's folders: s3://bucket/prefix/ or local folders",
    )

    @field_validator("source")
    @classmethod
    def _known_format(cls, v: str) -> str:
        if v.startswith(SQL_SCHEME):
            if not re.fullmatch(r"[A-Za-z0-9_.-]+", v.removeprefix(SQL_SCHEME)):
                raise ValueError("give an Airflow connection id, e.g. postgres://products_db")
        elif not v.lower().endswith((".csv", ".parquet")):
            raise ValueError("must be a .csv or .parquet file (a path or s3://bucket/key), "
                             "or postgres://CONN_ID")
        return v

    @model_validator(mode="after")
    def _known_source(self) -> ProductSource:
        if self.source.startswith(SQL_SCHEME):
            if (self.table is None) == (self.query is None):
                raise ValueError("a postgres:// source needs exactly one of `table` (e.g. "
                                 "table: public.products) or `query` (a SELECT)")
            if self.query is not None and not re.match(r"^\s*(select|with)\b", self.query, re.I):
                raise ValueError("`query` must be a SELECT (or WITH ... SELECT) statement")
        else:
            if self.table is not None or self.query is not None:
                raise ValueError("`table` and `query` apply only to postgres:// sources; "
                                 "remove them for file sources")
        return self


#: Prompt pieces in the order they are joined when no `positive` template is given.
PROMPT_PIECES = ("subject", "composition", "background", "lighting", "style")
LOCALE_PATTERN = r"^[a-z]{2,3}(_[A-Z]{2})?$"


class Prompts(_Model):
    """Jinja2 templates (sandboxed, StrictUndefined). Structured prompts are built from
    pieces joined in PROMPT_PIECES order, then the brand style; `positive` is the
    alternative whole-prompt template (the pieces are available to it as `pieces.<name>`)."""

    positive: str | None = Field(None, description="Jinja2 template for the whole prompt")
    subject: str = Field("", description="Piece: what is shown, e.g. 'a {{ product.colour }} mug'")
    composition: str = Field("", description="Piece: framing, angle, placement")
    background: str = Field("", description="Piece: backdrop or setting")
    lighting: str = Field("", description="Piece: light")
    style: str = Field("", description="Piece: photographic or artistic style")
    negative: str = Field("", description="Jinja2 template for the negative prompt")
    locales: list[Annotated[str, Field(pattern=LOCALE_PATTERN)]] = Field(
        default_factory=list,
        description="One variant per locale; column `X_<locale>` replaces `X` for that locale",
    )
    free_text_column: str | None = Field(
        None, description="Product column whose free text is appended to the prompt; free "
        "text is refused unless named here"
    )
    free_text_max_chars: int = Field(300, ge=1, le=2000)
    vary: list[dict[str, list[str | int | float]]] = Field(
        default_factory=list,
        description="Variable values for templates (`vary.<name>`): lists in one group are "
        "zipped, groups are crossed (InvokeAI batch semantics)",
    )

    @model_validator(mode="after")
    def _consistent(self) -> Prompts:
        if self.positive is None and not self.subject:
            raise ValueError("give the `subject` piece (and optionally composition, background, "
                             "lighting, style) or a `positive` template")
        if len(set(self.locales)) != len(self.locales):
            raise ValueError(f"locales must be unique, got {self.locales}")
        seen: set[str] = set()
        for i, group in enumerate(self.vary):
            lengths = {name: len(values) for name, values in group.items()}
            if not group or len(set(lengths.values())) != 1 or 0 in lengths.values():
                raise ValueError(f"vary.{i}: lists in one group are zipped, so they must be "
                                 f"non-empty and of equal length (got {lengths}); put lists "
                                 "of other lengths in their own group to cross them")
            if seen & set(group):
                raise ValueError(f"vary.{i}: {sorted(seen & set(group))} already used in "
                                 "another group; each name once")
            seen |= set(group)
        return self

    @property
    def templates(self) -> dict[str, str]:
        """Every template field by its spec field name (`prompts.X`), non-empty ones only."""
        fields = {"positive": self.positive or "", "negative": self.negative,
                  **{p: getattr(self, p) for p in PROMPT_PIECES}}
        return {k: v for k, v in fields.items() if v}


class BrandRules(_Model):
    style: str = Field("", description="Fixed style text appended to every prompt")
    negative: list[str] = Field(default_factory=list, description="Always in the negative prompt")
    restricted_terms: list[str] = Field(default_factory=list)
    restricted_terms_file: str | None = Field(
        None, description="One term per line, relative to the spec file"
    )


COLOUR_PATTERN = r"^#([0-9a-fA-F]{6}|[0-9a-fA-F]{8})$"
Position = Literal["top_left", "top", "top_right", "left", "centre", "right", "bottom_left",
                   "bottom", "bottom_right"]


class LogoOverlay(_Model):
    """A logo or watermark pasted onto the derivative."""

    path: str = Field("logo.png", description="PNG with alpha; relative paths are under include/brand/")
    position: Position = "bottom_right"
    scale: float = Field(0.18, gt=0, le=1, description="Logo width as a share of the image width")
    opacity: float = Field(0.85, ge=0, le=1)
    margin: float = Field(0.03, ge=0, le=0.5, description="Distance from the edge, share of width")


class TextOverlay(_Model):
    """Localized text drawn onto the derivative with the brand font."""

    text: dict[str, str] = Field(
        min_length=1, description="Text by locale, e.g. {en: New season, de: Neue Saison}; the "
        "variant's locale picks one, else `default_locale`")
    default_locale: str = "en"
    font: str = Field("fonts/DejaVuSans.ttf", description="TTF/OTF; relative paths are under include/brand/")
    size: float = Field(0.06, gt=0, le=0.5, description="Font size as a share of the image height")
    position: Position = "bottom"
    colour: Annotated[str, Field(pattern=COLOUR_PATTERN)] = "#ffffff"
    box: Annotated[str | None, Field(pattern=COLOUR_PATTERN)] = Field(
        "#00000099", description="Colour (with alpha) of a box behind the text; null for none")
    margin: float = Field(0.04, ge=0, le=0.5)

    @model_validator(mode="after")
    def _default_present(self) -> TextOverlay:
        if self.default_locale not in self.text:
            raise ValueError(f"default_locale {self.default_locale!r} has no text; give "
                             f"text.{self.default_locale} (have {sorted(self.text)})")
        return self


class Background(_Model):
    """Background removal for a channel (darkroom.cutout: U²-Net's product mask)."""

    remove: bool = Field(False, description="Cut the product out of its backdrop")
    fill: Annotated[str, Field(pattern=r"^(#([0-9a-fA-F]{6}|[0-9a-fA-F]{8})|transparent)$")] = Field(
        "#ffffff", description="What replaces the backdrop (and pads): a colour, or transparent "
        "(png or webp only)")
    shadow: Literal["soft", "none"] = Field("none", description="A soft contact shadow under the product")


class Channel(_Model):
    """A channel's post-processing recipe (darkroom.postprocess.render, in this order):
    sRGB conversion, upscale (hook), crop or pad to the aspect ratio, Lanczos resize, logo,
    text, encode with provenance."""

    width: int = Field(gt=0, le=8192)
    height: int = Field(gt=0, le=8192)
    format: Literal["jpeg", "webp", "png"] = "jpeg"
    quality: int = Field(90, ge=1, le=100)
    background: Annotated[str, Field(pattern=COLOUR_PATTERN)] | Background = Field(
        "#ffffff", description="Padding colour when the recipe pads, or background removal: "
        "{remove: true, fill: '#ffffff' | transparent, shadow: soft | none}")
    fit: Literal["crop", "pad"] = "crop"
    crop: Literal["centre", "entropy", "product"] = Field(
        "centre", description="Where a crop keeps the picture: the centre, the window with "
        "the most detail, or the product's mask (U²-Net): the whole product in frame, padded "
        "when no crop of the aspect ratio can hold it")
    srgb: bool = Field(True, description="Convert embedded colour profiles to sRGB and tag the output")
    upscale_to: Literal[2048, 4096] | None = Field(
        None, description="Upscale the original's long side first: with generation.upscaler "
        "(Real-ESRGAN or a diffusers x4 upscaler, once per original) when set, else Lanczos; "
        "provenance records which")
    logo: LogoOverlay | None = None
    text: TextOverlay | None = None
    watermark: bool = Field(True, description="Embed the invisible mark (a key derived from the "
                            "asset id, darkroom.provenance.watermark) that traces a file whose "
                            "metadata was stripped; derivatives under 256x256 cannot carry it")

    @property
    def extension(self) -> str:
        return {"jpeg": "jpg", "webp": "webp", "png": "png"}[self.format]

    @property
    def removal(self) -> Background | None:
        """The background removal this channel asks for, if any."""
        bg = self.background
        return bg if isinstance(bg, Background) and bg.remove else None

    @property
    def pad_colour(self) -> str:
        bg = self.background
        return bg if isinstance(bg, str) else bg.fill

    @property
    def needs_mask(self) -> bool:
        return self.removal is not None or self.crop == "product"

    @model_validator(mode="after")
    def _alpha_needs_a_format_with_alpha(self) -> Channel:
        if self.pad_colour == "transparent" and self.format == "jpeg":
            raise ValueError("background.fill: transparent needs an alpha channel, which JPEG has "
                             "not; fix: format: png or webp, or a fill colour such as '#ffffff'")
        return self


class StabilityOptions(_Model):
    """Stability AI's hosted v2beta endpoints (generation.backend or a rule says 'stability')."""

    endpoint: Literal["core", "sd3"] = Field("core", description="/v2beta/stable-image/generate/<endpoint>")
    model: str | None = Field(None, description="sd3 endpoint only, e.g. sd3.5-large")
    output_format: Literal["png", "jpeg", "webp"] = "png"


class RoutingRule(_Model):
    """``when`` every condition holds, use ``backend`` and/or ``pool``. Conditions: priority,
    campaign, asset_type, product.<column> (a list value means any of them)."""

    when: dict[str, Any] = Field(min_length=1, description="e.g. {product.confidential: true}")
    backend: Literal["local", "http", "stability", "private"] | None = Field(
        None, description="'private': generation.backend if it is local/http, else local")
    pool: str | None = Field(None, description="Airflow pool of the generate tasks")

    @model_validator(mode="after")
    def _checked(self) -> RoutingRule:
        if self.backend is None and self.pool is None:
            raise ValueError("a routing rule needs `backend` and/or `pool`; e.g. "
                             "{when: {product.confidential: true}, backend: private}")
        for key in self.when:
            for for_pool, used in ((False, self.backend), (True, self.pool)):
                problem = used is not None and check_condition(key, for_pool=for_pool)
                if problem:
                    raise ValueError(f"when: {problem}")
        return self


class LoraAdapter(_Model):
    """A LoRA applied on top of the model: loaded once per pipeline, switched with set_adapters."""

    path: str = Field(description="LoRA weights: a .safetensors file, a folder, or a hub id; "
                      "relative paths are under the spec's folder")
    weight: float = Field(1.0, ge=-4, le=4, description="Adapter scale")
    name: Annotated[str | None, Field(pattern=ID_PATTERN)] = Field(
        None, description="Adapter name (default: the file or folder name)")
    weight_name: str | None = Field(None, description="File inside a folder or hub repo")


class IPAdapter(_Model):
    """IP-Adapter: the product's reference image steers subject and character consistency."""

    path: str = Field(description="Folder or hub id holding the IP-Adapter weights "
                      "(e.g. h94/IP-Adapter); relative paths are under the spec's folder")
    subfolder: str = "models"
    weight_name: str = "ip-adapter_sd15.safetensors"
    image_encoder: str | None = Field(
        None, description="CLIP vision encoder folder; default: <path>/<subfolder>/image_encoder")
    scale: float = Field(0.6, ge=0, le=2, description="How strongly the reference image steers")


class Optimizations(_Model):
    """Speed and memory switches of the local diffusers backend."""

    compile: bool = Field(False, description="torch.compile the denoiser (slow first batch, "
                          "faster after; worth it for long runs on one GPU)")
    channels_last: bool = Field(False, description="channels_last memory format for UNet and VAE")
    vae_tiling: Literal["auto", "on", "off"] = Field(
        "auto", description="Decode in tiles; auto = on above 1024x1024 (large images fit in memory)")
    vae_slicing: bool = Field(False, description="Decode a batch one image at a time (less memory)")


class Generation(_Model):
    mode: Literal["text2image", "image2image", "inpaint"] = Field(
        "text2image", description="image2image and inpaint start from the product's reference "
        "image (products.reference_image_column); inpaint repaints where the mask "
        "(products.mask_image_column) is white")
    strength: float = Field(0.75, gt=0, le=1, description="image2image/inpaint: how far from the "
                            "reference image the result may go (1 = ignore it)")
    model: str = Field(
        "tiny",
        description="'tiny' (the offline random model from `darkroom models build-tiny`), "
        "'demo' (the committed demo model, include/models/darkroom-demo), a local "
        "path, a Hugging Face hub id, or a model profile in the MLflow Model Registry: "
        "models:/<profile>@champion (or models:/<profile>/<version>)",
    )
    revision: str | None = None
    scheduler: Literal["ddim", "pndm", "euler", "euler_a", "dpmpp_2m", "lms"] = "ddim"
    steps: int = Field(20, ge=1, le=200)
    guidance: float = Field(7.5, ge=0, le=30)
    width: int = Field(512, ge=16, le=4096, multiple_of=8)
    height: int = Field(512, ge=16, le=4096, multiple_of=8)
    seeds_per_variant: int = Field(1, ge=1, le=64)
    base_seed: int = Field(0, ge=0, lt=2**31)
    batch_size: int = Field(4, ge=1, le=64, description="Images per forward pass")
    variants_per_task: int = Field(
        64, ge=1, description="Variants per mapped generate/qa/postprocess task"
    )
    max_mapped_tasks: int = Field(
        200, ge=1, le=1024, description="Ceiling on mapped task instances per stage"
    )
    cost_per_gpu_hour: float | None = Field(
        None, ge=0, description="Price of one GPU-hour, for the dry-run plan's cost estimate"
    )
    device: Literal["auto", "cpu", "cuda", "mps"] = "auto"
    # Routing: None defers to the deployment (DARKROOM_GPU_QUEUE / DARKROOM_GPU_POOL), so one
    # spec runs unchanged on the embedded default (no such pool) and on the Celery stack.
    queue: str | None = Field(
        None, description="Executor queue of the generate tasks (e.g. 'gpu'); default: "
        "$DARKROOM_GPU_QUEUE, else Airflow's default queue"
    )
    pool: str | None = Field(
        None, description="Airflow pool of the generate tasks (slots = GPUs, e.g. 'gpu'); "
        "default: $DARKROOM_GPU_POOL, else default_pool. The pool must exist"
    )
    backend: Literal["local", "http", "stability"] = Field(
        "local", description="local (diffusers in the task), http (a `darkroom serve-model` host: "
        "$DARKROOM_MODEL_SERVER_URL), stability (Stability AI's API: $DARKROOM_STABILITY_API_KEY)"
    )
    priority: Literal["low", "normal", "high"] = Field(
        "normal", description="Tested by routing rules, e.g. {when: {priority: high}, pool: gpu_high}"
    )
    routing: list[RoutingRule] = Field(
        default_factory=list, description="Rules tried in order; the first that matches and "
        "names a backend (or pool) decides it. See darkroom.generation.routing"
    )
    stability: StabilityOptions = StabilityOptions()
    loras: list[LoraAdapter] = Field(default_factory=list, description="LoRA adapters with weights")
    ip_adapter: IPAdapter | None = None
    dtype: Literal["auto", "float16", "bfloat16", "float32"] = Field(
        "auto", description="auto: bfloat16 for SD3/Flux and float16 for SD/SDXL on cuda, "
        "float16 on mps, float32 on cpu")
    optimizations: Optimizations = Optimizations()
    upscaler: str | None = Field(
        None, description="The model for channels' upscale_to, once per original on the GPU "
        "queue: realesrgan-x4plus or realesrgan-x4plus-anime (Real-ESRGAN, offline), or a "
        "diffusers upscaler pipeline (folder or hub id, e.g. "
        "stabilityai/stable-diffusion-x4-upscaler); null = Lanczos")

    @model_validator(mode="after")
    def _local_only_features(self) -> Generation:
        used = ([f"mode: {self.mode}"] if self.mode != "text2image" else []) + \
            (["loras"] if self.loras else []) + (["ip_adapter"] if self.ip_adapter else [])
        remote = {self.backend} | {r.backend for r in self.routing if r.backend}
        remote &= {"http", "stability"}
        if used and remote:
            raise ValueError(f"{', '.join(used)} run on the local diffusers backend only, but "
                             f"backend {sorted(remote)[0]!r} may be used; fix: set backend: local "
                             "(and no routing rule to http/stability) or drop " + used[0])
        return self


#: The generation fields an asset type may set for itself (``asset_types[].generation``), so hero
#: shots get the strongest model and bulk variations a faster one. The rest (mode, seeds, how
#: variants are cut into tasks, backend, routing, device, dtype, upscaler...) holds for the
#: whole run: one DAG, one set of mapped tasks, one routing table.
ASSET_TYPE_GENERATION = ("model", "revision", "scheduler", "steps", "guidance", "width", "height",
                         "loras", "batch_size")


class _Override(_Model):
    @model_serializer(mode="wrap")
    def _only_what_is_set(self, handler):
        # Dumped as written (the spec body the catalog keeps loads again): unset is not null.
        return {k: v for k, v in handler(self).items() if k in self.model_fields_set}


def _generation_override() -> type[_Model]:
    """``Generation``'s overridable fields with their own bounds and descriptions, none set by
    default: built from ``Generation`` so the limits cannot drift apart."""
    fields = {}
    for name in ASSET_TYPE_GENERATION:
        info = copy.copy(Generation.model_fields[name])
        info.default, info.default_factory = None, None
        fields[name] = (info.annotation, info)
    return create_model("AssetTypeGeneration", __base__=_Override, __doc__=(
        "What one asset type draws with instead of the campaign's `generation`: only the fields "
        "given here differ, the rest come from the campaign"), **fields)


AssetTypeGeneration = _generation_override()


class AssetType(_Model):
    name: Annotated[str, Field(pattern=ID_PATTERN)]
    description: str = Field("", description="Available to templates as asset_type.description")
    channels: list[str] = Field(min_length=1)
    generation: AssetTypeGeneration | None = Field(  # type: ignore[valid-type]
        None, description="Override some of the campaign's `generation` for this asset type "
        f"({', '.join(ASSET_TYPE_GENERATION)}): e.g. the strongest model for hero shots, a faster "
        "one with fewer steps for bulk variations")

    @property
    def own_model(self) -> bool:
        """The asset type names a model of its own (not the campaign's ``generation.model``)."""
        return self.generation is not None and bool(self.generation.model_fields_set & {"model", "revision"})

    @model_validator(mode="before")
    @classmethod
    def _campaign_wide_fields(cls, data: Any) -> Any:
        g = data.get("generation") if isinstance(data, dict) else None
        if isinstance(g, dict):
            wide = [k for k in g if k in Generation.model_fields and k not in ASSET_TYPE_GENERATION]
            if wide:
                raise ValueError(
                    f"asset type {data.get('name')!r}: generation.{wide[0]} holds for the whole "
                    "campaign (one run, one set of tasks), it cannot differ per asset type; fix: "
                    f"set it under the campaign's `generation:` instead (an asset type may set "
                    f"{', '.join(ASSET_TYPE_GENERATION)})")
        return data


class QACheck(_Model):
    enabled: bool = True
    threshold: float | None = Field(None, description="The check's limit; null = its default")
    max: float | None = Field(None, description="Upper bound, for range checks (file_size)")
    review_band: float = Field(
        0.0, ge=0, description="A value this close to the threshold (either side) sends the "
        "asset to needs_review instead of passing or failing it")
    params: dict[str, Any] = Field(
        default_factory=dict, description="Check-specific settings, e.g. formats, modes, "
        "references, model_path")
    if_not_run: Literal["needs_review", "fail"] = Field(
        "needs_review", description="Outcome when the check cannot run here (no local weights)")


def default_checks() -> dict[str, QACheck]:
    """What every asset gets unless the spec says otherwise (cheap, model-free checks)."""
    return {
        "dimensions": QACheck(),
        "format": QACheck(params={"formats": ["png"]}),
        "file_size": QACheck(threshold=512, max=50_000_000),
        "colour_mode": QACheck(params={"modes": ["RGB"]}),
        "provenance": QACheck(),
        "not_blank": QACheck(threshold=4.0),
        "sharpness": QACheck(threshold=20.0),
        "exposure": QACheck(threshold=0.25),
        "contrast": QACheck(threshold=24.0),
        "duplicate": QACheck(threshold=6),
    }


class QARubric(_Model):
    """Checks by name with their thresholds; the names are darkroom.spec.CHECK_NAMES.

    ``checks`` is merged over :func:`default_checks` (switch one off with ``enabled: false``);
    ``asset_types.<name>`` is merged over that for one asset type.
    """

    checks: dict[str, QACheck] = Field(default_factory=dict)
    asset_types: dict[str, dict[str, QACheck]] = Field(
        default_factory=dict, description="Per asset type: checks overriding `checks`")
    max_regenerations: int = Field(
        0, ge=0, le=10, description="Regenerate a failed variant with the next seed up to this "
        "many times; every attempt is kept and linked")
    workers: int | None = Field(
        None, ge=1, le=256, description="Processes for QA and post-processing; null = CPU count")

    @field_validator("checks", "asset_types")
    @classmethod
    def _known_checks(cls, v: dict) -> dict:
        groups = v.values() if v and isinstance(next(iter(v.values())), dict) else [v]
        unknown = sorted({name for g in groups for name in g} - set(CHECK_NAMES))
        if unknown:
            raise ValueError(f"unknown check(s) {unknown}; known checks are {list(CHECK_NAMES)}")
        return v

    def for_asset_type(self, asset_type: str) -> dict[str, QACheck]:
        """The enabled checks for one asset type, defaults merged with the spec's settings."""
        merged = {**default_checks(), **self.checks, **self.asset_types.get(asset_type, {})}
        return {name: cfg for name, cfg in merged.items() if cfg.enabled}


#: How the QA-passed assets of an asset type reach a decision (approval.review):
#: human: people decide every one; automated: QA decides, nothing waits; exception: the
#: clean passes are approved by the policy, people decide the rest and an audit sample.
REVIEW_MODES = ("human", "automated", "exception")
ReviewMode = Literal["human", "automated", "exception"]


class ReviewRouting(_Model):
    """One asset type's review routing, as the approval stage applies it."""

    review: ReviewMode
    audit_rate: float
    audit_max_reject_rate: float


class AssetTypeReview(_Model):
    """approval.asset_types.<name>: what differs from the campaign's approval for one
    asset type; a field left out is the campaign's."""

    review: ReviewMode | None = None
    audit_rate: float | None = Field(None, ge=0, le=1)
    audit_max_reject_rate: float | None = Field(None, ge=0, le=1)


class Approval(_Model):
    required: bool = Field(
        True, description="false: no person decides (the same as review: automated)")
    review: ReviewMode | None = Field(
        None, description="human (people decide every QA-passed asset), automated (QA decides, "
        "nothing waits: passes are approved, needs_review assets rejected) or exception (assets "
        "that passed every check outside its review band are approved by the policy; "
        "needs_review assets and an audit sample wait for people). Default: human, or "
        "automated when required is false")
    audit_rate: float = Field(
        0.05, ge=0, le=1, description="exception: the share of the policy's approvals that "
        "people check instead (an audit sample, the same on every retry of the run)")
    audit_max_reject_rate: float = Field(
        0.1, ge=0, le=1, description="exception: when reviewers reject more than this share "
        "of the audit sample, the run's other approvals by the policy are withdrawn and "
        "people decide those assets too")
    asset_types: dict[str, AssetTypeReview] = Field(
        default_factory=dict, description="Per asset type: review, audit_rate and "
        "audit_max_reject_rate overriding the ones above")
    timeout: str = Field("7d", description="How long to wait for decisions, e.g. 30m, 12h, 7d")
    on_timeout: Literal["fail", "reject_undecided"] = "fail"
    poke_interval: str = "30s"
    quorum: int = Field(
        1, ge=1, le=10,
        description="Distinct reviewers whose approval an asset needs. With 1 the newest decision "
        "wins; above 1 each reviewer's latest decision counts and any rejection rejects")

    @field_validator("timeout", "poke_interval")
    @classmethod
    def _duration(cls, v: str) -> str:
        if not DURATION.match(v):
            raise ValueError("must be a number and a unit, e.g. 30s, 15m, 12h or 7d")
        return v

    @staticmethod
    def seconds(value: str) -> int:
        n, unit = DURATION.match(value).groups()  # type: ignore[union-attr]
        return int(n) * {"s": 1, "m": 60, "h": 3600, "d": 86400}[unit]

    @model_validator(mode="after")
    def _required_agrees(self) -> Approval:
        if self.required:
            return self
        asked = [("review", self.review)] + [(f"asset_types.{name}.review", t.review)
                                             for name, t in self.asset_types.items()]
        people = [(where, mode) for where, mode in asked if mode not in (None, "automated")]
        if people:
            where, mode = people[0]
            raise ValueError(f"required: false means no person decides, but {where} is {mode!r}; "
                             "fix: drop `required: false` (review: automated says the same) and "
                             "keep the review modes")
        return self

    def for_asset_type(self, asset_type: str) -> ReviewRouting:
        """The review routing of one asset type: its own settings over the campaign's."""
        own = self.asset_types.get(asset_type, AssetTypeReview())
        default = self.review or ("human" if self.required else "automated")
        return ReviewRouting(
            review=own.review or default,
            audit_rate=self.audit_rate if own.audit_rate is None else own.audit_rate,
            audit_max_reject_rate=(self.audit_max_reject_rate if own.audit_max_reject_rate is None
                                   else own.audit_max_reject_rate))


def _no_parent_segments(v: str) -> str:
    if ".." in v.replace("\\", "/").split("/") or "\x00" in v:
        raise ValueError("must not contain '..' segments (it would leave the folder it names); "
                         "fix: give the folder itself")
    return v


class FolderDestination(_Model):
    kind: Literal["folder"]
    path: str = Field(description="DAM drop folder; relative paths are under $DARKROOM_HOME, "
                      "absolute ones must be under $DARKROOM_PUBLISH_ROOTS")

    _path_stays = field_validator("path")(_no_parent_segments)


class S3Destination(_Model):
    kind: Literal["s3"]
    bucket: str = Field(min_length=3)
    prefix: str = ""
    aws_conn_id: str = "aws_default"
    endpoint_url: str | None = None

    _prefix_stays = field_validator("prefix")(_no_parent_segments)


Destination = Annotated[FolderDestination | S3Destination, Field(discriminator="kind")]


#: Airflow 3.3's schedule presets (airflow.sdk.definitions.timetables._cron.CRON_PRESETS, kept
#: in sync by hand there too): copied, because importing Airflow here would slow every parse.
CRON_PRESETS = {"@hourly": "0 * * * *", "@daily": "0 0 * * *", "@weekly": "0 0 * * 0",
                "@monthly": "0 0 1 * *", "@quarterly": "0 0 1 */3 *", "@yearly": "0 0 1 1 *"}
#: Schedules Airflow turns into timetables of their own, not cron.
SPECIAL_SCHEDULES = ("@once", "@continuous")


def schedule_problem(value: str) -> str | None:
    """Why Airflow would refuse ``value`` as a DAG's schedule, or None. Airflow's rule
    (``CronMixin.validate``): a preset, @once/@continuous, or what croniter parses."""
    if value in SPECIAL_SCHEDULES or value in CRON_PRESETS:
        return None
    try:
        from croniter import croniter  # optional: it comes with Airflow (see below)
    except ImportError:  # the Airflow-free core: Airflow (which brings croniter) checks it
        return None
    try:
        croniter(value)
    except Exception as exc:  # croniter's own errors, and anything odd input makes it raise
        return (f"not a schedule Airflow accepts ({exc}); fix: a cron expression with five "
                "fields, minute hour day-of-month month day-of-week (e.g. '0 6 * * 1' for "
                f"Mondays at 06:00), or one of {', '.join([*CRON_PRESETS, *SPECIAL_SCHEDULES])}")
    return None


class CampaignSpec(_Model):
    id: Annotated[str, Field(pattern=ID_PATTERN, description="Lower-case id; DAG is campaign__<id>")]
    brief: str = Field(min_length=1)
    owner: str = "darkroom"
    schedule: str | None = Field(None, description="Cron expression or preset (@hourly, @daily, "
                                 "@weekly, @monthly, @quarterly, @yearly, @once, @continuous); "
                                 "null = manual")
    tags: list[str] = Field(default_factory=list)
    max_active_runs: int = Field(
        4, ge=1, le=64,
        description="Runs of this campaign at once, runs waiting for reviewers included, so a "
        "scheduled refresh starts while an earlier run waits for review. Concurrent runs never "
        "draw the same variant twice (each claims what it draws in the catalog). A backfill "
        "sets its own limit: `airflow backfill create --max-active-runs`")
    products: ProductSource
    prompts: Prompts
    brand: BrandRules = BrandRules()
    asset_types: list[AssetType] = Field(min_length=1)
    channels: dict[str, Channel] = Field(min_length=1)
    generation: Generation = Generation()
    qa: QARubric = QARubric()
    approval: Approval = Approval()
    publish: list[Destination] = Field(default_factory=list)

    @field_validator("schedule")
    @classmethod
    def _cron(cls, v: str | None) -> str | None:
        problem = v is not None and schedule_problem(v)
        if problem:
            raise ValueError(problem)
        return v

    @field_validator("channels")
    @classmethod
    def _channel_names(cls, v: dict) -> dict:
        bad = [name for name in v if not re.fullmatch(CHANNEL_PATTERN, name)]
        if bad:
            raise ValueError(f"channel name {bad[0]!r} is not allowed: channel names become folder "
                             "and file names; fix: use lower-case letters, digits, '_' and '-' "
                             "(start with a letter or digit, at most 63 characters)")
        return v

    @model_validator(mode="after")
    def _channels_exist(self) -> CampaignSpec:
        for i, at in enumerate(self.asset_types):
            for ch in at.channels:
                if ch not in self.channels:
                    raise ValueError(
                        f"asset_types.{i}.channels: channel {ch!r} is not defined; "
                        f"define it under `channels:` (defined: {sorted(self.channels)})"
                    )
        names = [at.name for at in self.asset_types]
        if len(names) != len(set(names)):
            raise ValueError(f"asset_types: names must be unique, got {names}")
        unknown = sorted(set(self.approval.asset_types) - set(names))
        if unknown:
            raise ValueError(f"approval.asset_types: {unknown[0]!r} is not an asset type of this "
                             f"campaign; fix: use one of {names}")
        for i, at in enumerate(self.asset_types):
            try:  # the campaign's rules hold for what each asset type draws with (LoRAs: local only)
                self.generation_for(at.name)._local_only_features()
            except ValueError as exc:
                raise ValueError(f"asset_types.{i}.generation (asset type {at.name!r}): {exc}") from None
        g, p = self.generation, self.products
        needs_reference = [f"generation.mode: {g.mode}"] if g.mode != "text2image" else []
        needs_reference += ["generation.ip_adapter"] if g.ip_adapter else []
        if needs_reference and not p.reference_image_column:
            raise ValueError(f"{needs_reference[0]} starts from each product's reference image, "
                             "but products.reference_image_column is not set; fix: name the "
                             "product column that holds the reference image paths")
        if g.mode == "inpaint" and not p.mask_image_column:
            raise ValueError("generation.mode: inpaint needs a mask per product; fix: set "
                             "products.mask_image_column to the column of mask image paths")
        return self

    # -- derived values -------------------------------------------------------------
    @property
    def dag_id(self) -> str:
        return f"{DAG_PREFIX}{self.id}"

    def asset_type(self, name: str) -> AssetType:
        return next(at for at in self.asset_types if at.name == name)

    def generation_for(self, asset_type: str) -> Generation:
        """The generation an asset type draws with: the campaign's ``generation`` with the
        fields the asset type sets itself (``asset_types[].generation``) on top."""
        return self._generations[asset_type]

    @cached_property
    def _generations(self) -> dict[str, Generation]:
        out = {}
        for at in self.asset_types:
            o = at.generation
            update = {k: getattr(o, k) for k in o.model_fields_set} if o is not None else {}
            # model_copy keeps the campaign's explicit fields and adds these: a profile's
            # defaults (resolve.effective_generation) fill only what neither sets.
            out[at.name] = self.generation.model_copy(update=update) if update else self.generation
        return out

    @property
    def uses_model_upscaler(self) -> bool:
        """A model upscaler is set and some channel upscales: the run has an upscale task."""
        return bool(self.generation.upscaler) and any(ch.upscale_to for ch in self.channels.values())

    def canonical_json(self) -> str:
        return json.dumps(self.model_dump(mode="json"), sort_keys=True, separators=(",", ":"))

    @property
    def spec_hash(self) -> str:
        return hashlib.sha256(self.canonical_json().encode()).hexdigest()


class LoadedSpec(BaseModel):
    """A validated spec and the file it came from (relative paths resolve against it)."""

    model_config = ConfigDict(frozen=True, arbitrary_types_allowed=True)

    spec: CampaignSpec
    path: Path

    def resolve(self, relative: str) -> Path:
        p = Path(relative)
        return p if p.is_absolute() else (self.path.parent / p).resolve()

    @property
    def product_source(self) -> str:
        src = self.spec.products.source
        return src if src.startswith(("s3://", SQL_SCHEME)) else str(self.resolve(src))

    def image_roots(self, settings: Settings) -> list:
        """Where this campaign's reference and mask images may come from (darkroom.confine)."""
        return confine.image_roots(self.path.parent, self.product_source,
                                   self.spec.products.image_roots, settings)

    def image_uri(self, value: str, settings: Settings) -> str:
        """A reference or mask image's URI, or :class:`confine.OutsideRoots` saying why not."""
        return confine.image_uri(value, self.path.parent, self.image_roots(settings))


# -- loading ------------------------------------------------------------------------

_FIXES = {
    "extra_forbidden": "remove it or fix its spelling; allowed here: {allowed}",
    "missing": "add this field",
    "string_pattern_mismatch": "use lower-case letters, digits and '_' (start with a letter)",
}


def _allowed_keys(loc: tuple) -> list[str]:
    model: Any = CampaignSpec
    for part in loc[:-1]:
        if isinstance(part, int) or model is None:
            continue
        field = getattr(model, "model_fields", {}).get(part)
        if field is None:
            return []
        ann = field.annotation
        args = getattr(ann, "__args__", ())
        model = next((a for a in (ann, *args) if isinstance(a, type) and issubclass(a, BaseModel)), None)
    return sorted(getattr(model, "model_fields", {}) or [])


def _field_info(loc: tuple) -> Any:
    """The pydantic FieldInfo an error location points at (through lists and dicts), or None."""
    ann: Any = CampaignSpec
    info = None
    for part in loc:
        ann = next((a for a in (ann, *get_args(ann)) if a is not type(None) and (
            isinstance(a, type) and issubclass(a, BaseModel) or get_origin(a) in (list, dict))), ann)
        if isinstance(ann, type) and issubclass(ann, BaseModel):
            info = ann.model_fields.get(part) if isinstance(part, str) else None
            if info is None:
                return None
            ann = info.annotation
        elif get_origin(ann) in (list, dict):
            ann = get_args(ann)[-1] if get_args(ann) else Any  # an item, or a key's value
            info = None
        else:
            return None
    return info


_NUMBER_ERRORS = ("greater_than", "greater_than_equal", "less_than", "less_than_equal",
                  "multiple_of", "int_type", "int_from_float", "int_parsing", "float_type",
                  "float_parsing", "finite_number")


def _bounds(info: Any) -> str:
    """What a number field allows, from its constraints: 'a whole number from 16 to 4096, a
    multiple of 8'."""
    c = {k: getattr(m, k) for m in info.metadata for k in ("ge", "gt", "le", "lt", "multiple_of")
         if getattr(m, k, None) is not None}
    whole = info.annotation is int or int in get_args(info.annotation)
    text = "a whole number" if whole else "a number"
    if "ge" in c and "le" in c:
        text += f" from {c['ge']} to {c['le']}"
    else:
        words = {"ge": "at least", "gt": "above", "le": "at most", "lt": "below"}
        text += " " + " and ".join(f"{words[k]} {c[k]}" for k in words if k in c) if c.keys() - {
            "multiple_of"} else ""
    if "multiple_of" in c:
        text += f", a multiple of {c['multiple_of']}"
    return text + (" (not true/false, not a decimal)" if whole else " (not true/false)")


def _describe(err: dict) -> str:
    loc = tuple(p for p in err["loc"] if not (isinstance(p, str) and p in ("folder", "s3")))
    where = ".".join(str(p) for p in loc) or "(top level)"
    value = err.get("input")
    shown = json.dumps(value, default=str) if not isinstance(value, dict) else "{...}"
    if len(shown) > 80:
        shown = shown[:77] + "..."
    msg = err["msg"].removeprefix("Value error, ")
    fix = _FIXES.get(err["type"], "")
    if "{allowed}" in fix:
        fix = fix.format(allowed=", ".join(_allowed_keys(err["loc"])) or "see spec.schema.json")
    if err["type"] == "missing":
        return f"field `{where}` is missing: {fix}"
    if err["type"] in _NUMBER_ERRORS and (info := _field_info(tuple(err["loc"]))) is not None:
        fix = f"give {_bounds(info)}"
    out = f"field `{where}` = {shown}: {msg}"
    return f"{out}; fix: {fix}" if fix else out


def parse_spec(data: Any, path: str | Path = "<memory>") -> CampaignSpec:
    """Validate already-loaded YAML data; raise :class:`SpecError` with every problem."""
    if not isinstance(data, dict):
        raise SpecError(str(path), [f"expected a mapping at the top level, got {type(data).__name__}"])
    try:
        return CampaignSpec.model_validate(data)
    except ValidationError as exc:
        raise SpecError(str(path), [_describe(e) for e in exc.errors()]) from None


def load_spec(path: str | Path) -> LoadedSpec:
    """Read, parse and check one spec file. Cheap enough for DAG parse time."""
    path = Path(path).resolve()
    # Bounded YAML: size, UTF-8, alias expansion, depth, duplicate keys (darkroom.yaml_safe).
    spec = parse_spec(load_yaml(path), path)
    loaded = LoadedSpec(spec=spec, path=path)
    problems = _check_files_and_templates(loaded)
    if problems:
        raise SpecError(str(path), problems)
    return loaded


def _check_files_and_templates(loaded: LoadedSpec) -> list[str]:
    spec, problems = loaded.spec, []
    roots = confine.spec_roots(loaded.path.parent, Settings.from_env())
    files = [("products.source", spec.products.source)] if not spec.products.source.startswith(
        ("s3://", SQL_SCHEME)) else []
    files += [("brand.restricted_terms_file", spec.brand.restricted_terms_file)]
    for name, value in files:
        if not value:
            continue
        path = loaded.resolve(value)
        try:
            confine.within(path, roots, what="file")
        except confine.OutsideRoots as exc:
            problems.append(f"field `{name}` = {value!r}: {exc}")
            continue
        if not path.is_file():
            problems.append(f"field `{name}` = {value!r}: file {path} does not exist; "
                            "fix: give a path relative to the spec file")
    env = template_environment()
    for name, text in spec.prompts.templates.items():
        try:
            env.from_string(text)
        except TemplateSyntaxError as exc:
            problems.append(
                f"field `prompts.{name}`: template syntax error on line {exc.lineno}: {exc.message}"
            )
        except RecursionError:
            problems.append(f"field `prompts.{name}`: the template nests too deeply to compile; "
                            "fix: fewer nested brackets, filters or blocks")
        except Exception as exc:  # Jinja's compiler on odd input: a message, never a traceback
            problems.append(f"field `prompts.{name}`: the template cannot be compiled "
                            f"({type(exc).__name__}: {str(exc)[:200]}); fix the template")
    return problems


def find_spec(name_or_path: str, campaigns_dir: Path) -> Path:
    """A spec file's path, or the id of a campaign in the campaigns folder."""
    p = Path(name_or_path)
    if p.suffix in (".yaml", ".yml") or p.exists():
        return p
    for candidate in sorted(campaigns_dir.glob("*.y*ml")):
        try:
            data = load_yaml(candidate)  # the same bounded loader: any campaign file may be hostile
        except SpecError:
            continue
        if isinstance(data, dict) and data.get("id") == name_or_path:
            return candidate
    known = sorted(c.stem for c in campaigns_dir.glob("*.y*ml"))
    raise SpecError(
        name_or_path,
        [f"no spec file and no campaign with that id in {campaigns_dir}; known: {known}"],
    )


def spec_files(campaigns_dir: Path) -> list[Path]:
    return sorted(p for p in campaigns_dir.glob("*.y*ml") if p.is_file())


def json_schema() -> dict:
    return CampaignSpec.model_json_schema()
