"""The brand files a spec names (channel logos and fonts, QA reference folders), resolved
under the allowed roots (darkroom.confine) before a stage reads them: validate refuses a
path outside them before any GPU work; qa, upscale and postprocess read only the resolved
paths."""

from __future__ import annotations

from pathlib import Path

from darkroom import confine
from darkroom.config import BRAND_DIR, Settings
from darkroom.errors import ValidationFailed
from darkroom.spec import parse_spec
from darkroom.stages.context import RunContext


def confined(ctx: RunContext, field: str, raw: str) -> Path:
    """``raw`` (the spec's ``field``) resolved under the brand roots; ValidationFailed if not."""
    try:
        return confine.brand_file(raw, ctx.loaded.path.parent, ctx.settings, what=field)
    except confine.OutsideRoots as exc:
        raise ValidationFailed(f"{ctx.loaded.path}: field `{field}` = {raw!r}: {exc}; nothing was "
                               "generated") from None


def brand_channels(ctx: RunContext) -> dict:
    """The spec's channels with their logo and font paths resolved under the brand roots,
    so recipes read only allowed files; ValidationFailed if one is not."""
    out = {}
    for name, ch in ctx.spec.channels.items():
        update = {}
        if ch.logo is not None:
            path = confined(ctx, f"channels.{name}.logo.path", ch.logo.path)
            update["logo"] = ch.logo.model_copy(update={"path": str(path)})
        if ch.text is not None:
            path = confined(ctx, f"channels.{name}.text.font", ch.text.font)
            update["text"] = ch.text.model_copy(update={"font": str(path)})
        out[name] = ch.model_copy(update=update) if update else ch
    return out


def brand_rubric(ctx: RunContext, asset_type: str) -> dict:
    """An asset type's QA rubric, brand reference folders resolved under the brand roots; a
    ``prompt_match`` check without ``model_path`` reads with the demo model's classifier."""
    rubric = dict(ctx.spec.qa.for_asset_type(asset_type))
    pm = rubric.get("prompt_match")
    if pm is not None and not pm.params.get("model_path"):
        default = ctx.settings.demo_model_dir / "classifier"
        rubric["prompt_match"] = pm.model_copy(update={"params": {**pm.params, "model_path": str(default)}})
    for name, cfg in rubric.items():
        if cfg.params.get("references"):
            path = confined(ctx, f"qa.checks.{name}.params.references", str(cfg.params["references"]))
            rubric[name] = cfg.model_copy(update={"params": {**cfg.params, "references": str(path)}})
    return rubric


#: QA checks that compare an asset with the brand's reference images.
BRAND_CHECKS = ("brand_hash", "brand_palette")


def reference_images(spec_body: dict, spec_path: str, asset_type: str, check: str,
                     settings: Settings) -> list[Path]:
    """The brand reference PNGs a brand check compares an asset type's assets with (the
    gallery shows them beside a failure): the check's ``params.references`` under the brand
    roots, else the default folder, as qa reads them. [] for any other check, or a folder
    that is gone or outside the roots."""
    if check not in BRAND_CHECKS:
        return []
    cfg = parse_spec(spec_body, spec_path).qa.for_asset_type(asset_type).get(check)
    raw = cfg.params.get("references") if cfg is not None else None
    try:
        folder = (confine.brand_file(str(raw), Path(spec_path).parent, settings,
                                     what=f"qa.checks.{check}.params.references")
                  if raw else BRAND_DIR / "references")
    except confine.OutsideRoots:
        return []
    return sorted(folder.glob("*.png")) if folder.is_dir() else []
