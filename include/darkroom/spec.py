"""The campaign spec: one YAML file, validated by a pydantic model, becomes one Airflow DAG.

Loading is cheap on purpose (YAML, pydantic, a Jinja syntax check, a stat of the product
file): the DAG factory calls :func:`load_spec` at parse time for every campaign.
"""

from __future__ import annotations

import hashlib
import json
import re
from pathlib import Path
from typing import Annotated, Any, Literal

import yaml
from jinja2 import TemplateSyntaxError
from pydantic import BaseModel, ConfigDict, Field, ValidationError, field_validator, model_validator

from darkroom.errors import SpecError

ID_PATTERN = r"^[a-z][a-z0-9_]{1,62}$"
DURATION = re.compile(r"^(\d+)\s*(s|m|h|d)$")


class _Model(BaseModel):
    # Unknown keys are spelling mistakes far more often than intent: refuse them.
    model_config = ConfigDict(extra="forbid", frozen=True)


class ProductSource(_Model):
    """Where the product rows come from."""

    source: str = Field(description="CSV or Parquet file, relative to the spec file, or s3://")
    id_column: str = Field("sku", description="Column holding the unique product id")
    columns: dict[str, str] = Field(
        default_factory=dict,
        description="Column map: name used in templates -> column in the source",
    )
    required_columns: list[str] = Field(default_factory=list)
    expectations: str | None = Field(
        None, description="Great Expectations suite (JSON) in include/expectations/"
    )

    @field_validator("source")
    @classmethod
    def _known_format(cls, v: str) -> str:
        if not v.lower().endswith((".csv", ".parquet")):
            raise ValueError("must be a .csv or .parquet file")
        return v


class Prompts(_Model):
    positive: str = Field(description="Jinja2 template for the prompt")
    negative: str = Field("", description="Jinja2 template for the negative prompt")


class BrandRules(_Model):
    style: str = Field("", description="Fixed style text appended to every prompt")
    negative: list[str] = Field(default_factory=list, description="Always in the negative prompt")
    restricted_terms: list[str] = Field(default_factory=list)
    restricted_terms_file: str | None = Field(
        None, description="One term per line, relative to the spec file"
    )


class Channel(_Model):
    width: int = Field(gt=0, le=8192)
    height: int = Field(gt=0, le=8192)
    format: Literal["jpeg", "webp", "png"] = "jpeg"
    quality: int = Field(90, ge=1, le=100)
    background: str = Field("#ffffff", description="Padding colour when the recipe pads")
    fit: Literal["crop", "pad"] = "crop"

    @property
    def extension(self) -> str:
        return {"jpeg": "jpg", "webp": "webp", "png": "png"}[self.format]


class AssetType(_Model):
    name: Annotated[str, Field(pattern=ID_PATTERN)]
    description: str = Field("", description="Available to templates as asset_type.description")
    channels: list[str] = Field(min_length=1)


class Generation(_Model):
    model: str = Field(
        "tiny",
        description="'tiny' (the offline model from `darkroom models build-tiny`), a local "
        "path, or a Hugging Face hub id",
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
    device: Literal["auto", "cpu", "cuda", "mps"] = "auto"


class QACheck(_Model):
    enabled: bool = True
    threshold: float | None = None


class QARubric(_Model):
    """Checks by name with their thresholds; see darkroom.qa.CHECKS for the names."""

    checks: dict[str, QACheck] = Field(
        default_factory=lambda: {
            "dimensions": QACheck(),
            "not_blank": QACheck(threshold=4.0),
            "sharpness": QACheck(threshold=20.0),
        }
    )

    @field_validator("checks")
    @classmethod
    def _known_checks(cls, v: dict[str, QACheck]) -> dict[str, QACheck]:
        from darkroom.qa import CHECKS

        unknown = sorted(set(v) - set(CHECKS))
        if unknown:
            raise ValueError(
                f"unknown check(s) {unknown}; known checks are {sorted(CHECKS)}"
            )
        return v


class Approval(_Model):
    required: bool = True
    timeout: str = Field("7d", description="How long to wait for decisions, e.g. 30m, 12h, 7d")
    on_timeout: Literal["fail", "reject_undecided"] = "fail"
    poke_interval: str = "30s"

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


class FolderDestination(_Model):
    kind: Literal["folder"]
    path: str = Field(description="DAM drop folder; relative paths are under $DARKROOM_HOME")


class S3Destination(_Model):
    kind: Literal["s3"]
    bucket: str = Field(min_length=3)
    prefix: str = ""
    aws_conn_id: str = "aws_default"
    endpoint_url: str | None = None


Destination = Annotated[FolderDestination | S3Destination, Field(discriminator="kind")]


class CampaignSpec(_Model):
    id: Annotated[str, Field(pattern=ID_PATTERN, description="Lower-case id; DAG is campaign__<id>")]
    brief: str = Field(min_length=1)
    owner: str = "darkroom"
    schedule: str | None = Field(None, description="Cron expression or preset; null = manual")
    tags: list[str] = Field(default_factory=list)
    products: ProductSource
    prompts: Prompts
    brand: BrandRules = BrandRules()
    asset_types: list[AssetType] = Field(min_length=1)
    channels: dict[str, Channel] = Field(min_length=1)
    generation: Generation = Generation()
    qa: QARubric = QARubric()
    approval: Approval = Approval()
    publish: list[Destination] = Field(default_factory=list)

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
        return self

    # -- derived values -------------------------------------------------------------
    @property
    def dag_id(self) -> str:
        return f"campaign__{self.id}"

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
        return src if src.startswith("s3://") else str(self.resolve(src))


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
    try:
        data = yaml.safe_load(path.read_text(encoding="utf-8"))
    except FileNotFoundError:
        raise SpecError(str(path), ["file not found"]) from None
    except yaml.YAMLError as exc:
        mark = getattr(exc, "problem_mark", None)
        where = f" at line {mark.line + 1}, column {mark.column + 1}" if mark else ""
        raise SpecError(str(path), [f"not valid YAML{where}: {getattr(exc, 'problem', exc)}"]) from None
    spec = parse_spec(data, path)
    loaded = LoadedSpec(spec=spec, path=path)
    problems = _check_files_and_templates(loaded)
    if problems:
        raise SpecError(str(path), problems)
    return loaded


def _check_files_and_templates(loaded: LoadedSpec) -> list[str]:
    from darkroom.prompts import template_environment

    spec, problems = loaded.spec, []
    if not spec.products.source.startswith("s3://"):
        src = loaded.resolve(spec.products.source)
        if not src.is_file():
            problems.append(
                f"field `products.source` = {spec.products.source!r}: file {src} does not exist; "
                "fix: give a path relative to the spec file"
            )
    if spec.brand.restricted_terms_file and not loaded.resolve(spec.brand.restricted_terms_file).is_file():
        problems.append(
            f"field `brand.restricted_terms_file` = {spec.brand.restricted_terms_file!r}: "
            "file does not exist; fix: give a path relative to the spec file"
        )
    env = template_environment()
    for name in ("positive", "negative"):
        try:
            env.from_string(getattr(spec.prompts, name))
        except TemplateSyntaxError as exc:
            problems.append(
                f"field `prompts.{name}`: template syntax error on line {exc.lineno}: {exc.message}"
            )
    return problems


def find_spec(name_or_path: str, campaigns_dir: Path) -> Path:
    """A spec file's path, or the id of a campaign in the campaigns folder."""
    p = Path(name_or_path)
    if p.suffix in (".yaml", ".yml") or p.exists():
        return p
    for candidate in sorted(campaigns_dir.glob("*.y*ml")):
        try:
            data = yaml.safe_load(candidate.read_text(encoding="utf-8"))
        except yaml.YAMLError:
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
