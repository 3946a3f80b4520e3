"""Channel recipes: one original in, one channel-ready derivative out.

:func:`render` applies a channel's recipe (``darkroom.spec.Channel``) in a fixed order:

1. sRGB: an embedded ICC profile is converted to sRGB (output is tagged sRGB);
2. upscale (optional): through an upscaler registered in :data:`UPSCALERS` by the inference
   layer; a recipe asking for one that is not registered fails with a clear error;
3. crop (centre, or the most detailed window: ``crop: entropy``) or pad to the channel's
   aspect ratio, then a Lanczos resize to the exact size;
4. logo / watermark overlay (position, scale, opacity);
5. localized text overlay in the brand font;
6. encode (JPEG / WebP / PNG at the channel's quality) with the provenance carried over.

Everything here is a pure function of its inputs, so a derivative's bytes are reproducible
and its name (:func:`derivative_key`) is deterministic.
"""

from __future__ import annotations

import functools
import hashlib
import io
import json
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path

import numpy as np
from PIL import Image, ImageCms, ImageDraw, ImageOps

from darkroom import imaging

BRAND_DIR = imaging.BRAND_DIR

# The inference layer registers its upscaler here: name -> callable(image, long_side) -> image.
# postprocess uses the entry named "default" when a channel sets `upscale_to`.
UPSCALERS: dict[str, Callable[[Image.Image, int], Image.Image]] = {}


def lanczos_upscale(img: Image.Image, long_side: int) -> Image.Image:
    """The upscaler when no model upscaler is configured: Lanczos to ``long_side``."""
    scale = long_side / max(img.size)
    return img.resize((round(img.width * scale), round(img.height * scale)), Image.Resampling.LANCZOS)


lanczos_upscale.upscaler_name = "lanczos"  # what provenance records as the upscaler
UPSCALERS["lanczos"] = lanczos_upscale
UPSCALERS["default"] = lanczos_upscale  # a model upscaler, when configured, replaces this


class RecipeError(ValueError):
    """A recipe that cannot be applied (missing logo file, no upscaler, ...)."""


@dataclass(frozen=True)
class Derivative:
    channel: str
    data: bytes
    width: int
    height: int
    format: str
    extension: str


def recipe_hash(channel) -> str:
    """Short hash of a channel's recipe: recorded in each derivative's provenance."""
    body = json.dumps(channel.model_dump(mode="json"), sort_keys=True, separators=(",", ":"))
    return hashlib.sha256(body.encode()).hexdigest()[:12]


def derivative_key(run_prefix: str, channel: str, variant_id: str, extension: str) -> str:
    """``{campaign}/{run}/derivatives/{channel}/{variant}.{ext}``: same inputs, same name."""
    return f"{run_prefix}/derivatives/{channel}/{variant_id}.{extension}"


# 1. sRGB ------------------------------------------------------------------------------

_SRGB = ImageCms.createProfile("sRGB")
SRGB_ICC = ImageCms.ImageCmsProfile(_SRGB).tobytes()


def to_srgb(img: Image.Image) -> Image.Image:
    """RGB(A) in sRGB: convert through the embedded ICC profile when there is one."""
    icc = img.info.get("icc_profile")
    mode = "RGBA" if img.mode in ("RGBA", "LA", "PA") or "transparency" in img.info else "RGB"
    if icc:
        try:
            src = ImageCms.ImageCmsProfile(io.BytesIO(icc))
            base = img.convert(mode)
            out = ImageCms.profileToProfile(base, src, _SRGB, outputMode=mode)
            if out is not None:
                return out
        except (ImageCms.PyCMSError, OSError):
            pass  # a broken profile: treat the pixels as sRGB, as browsers do
    return img.convert(mode)


# 3. crop / pad / resize ----------------------------------------------------------------

def _entropy_centre(img: Image.Image, width: int, height: int) -> tuple[float, float]:
    """Centring (0-1, 0-1) of the crop window with the most detail (gradient energy).

    Evaluated on a small grey copy; the product is usually where the edges are, while
    studio backdrops are flat.
    """
    small = img.convert("L")
    small.thumbnail((128, 128), Image.Resampling.BILINEAR)
    g = np.asarray(small, dtype=np.float32)
    energy = np.abs(np.diff(g, axis=0, append=g[-1:])) + np.abs(np.diff(g, axis=1, append=g[:, -1:]))
    h, w = g.shape
    target = width / height
    cw, ch = (min(w, round(h * target)), h) if w / h > target else (w, min(h, round(w / target)))
    col, row = energy.sum(axis=0), energy.sum(axis=1)
    # Best window along the one axis that has slack, by a sliding sum over column/row energy.
    if cw < w:
        sums = np.convolve(col, np.ones(cw), mode="valid")
        x = int(np.argmax(sums))
        return (x / (w - cw) if w > cw else 0.5), 0.5
    if ch < h:
        sums = np.convolve(row, np.ones(ch), mode="valid")
        y = int(np.argmax(sums))
        return 0.5, (y / (h - ch) if h > ch else 0.5)
    return 0.5, 0.5


def fit(img: Image.Image, width: int, height: int, *, mode: str = "crop", crop: str = "centre",
        background: str = "#ffffff") -> Image.Image:
    """Crop (centre or entropy) or pad to the aspect ratio, then a Lanczos resize."""
    if img.mode not in ("RGB", "RGBA"):
        img = img.convert("RGB")
    if mode == "pad":
        if img.mode == "RGBA":  # flatten onto the background so transparent areas match it
            base = Image.new("RGBA", img.size, background)
            img = Image.alpha_composite(base, img).convert("RGB")
        return ImageOps.pad(img, (width, height), method=Image.Resampling.LANCZOS,
                            color=background)
    centring = _entropy_centre(img, width, height) if crop == "entropy" else (0.5, 0.5)
    return ImageOps.fit(img, (width, height), method=Image.Resampling.LANCZOS, centering=centring)


# 4-5. overlays --------------------------------------------------------------------------

def _anchor(position: str, box: tuple[int, int], size: tuple[int, int], margin: int) -> tuple[int, int]:
    (bw, bh), (w, h) = box, size
    col = 0 if position.endswith("left") else 2 if position.endswith("right") else 1
    row = 0 if position.startswith("top") else 2 if position.startswith("bottom") else 1
    x = (margin, (w - bw) // 2, w - bw - margin)[col]
    y = (margin, (h - bh) // 2, h - bh - margin)[row]
    return x, y


def _brand_path(raw: str) -> Path:
    p = Path(raw)
    return p if p.is_absolute() else BRAND_DIR / p


@functools.lru_cache(maxsize=16)
def _logo(path: str) -> Image.Image:
    try:
        with Image.open(path) as img:
            img.load()
            return img.convert("RGBA")
    except (OSError, ValueError) as exc:
        raise RecipeError(f"logo {path}: cannot read it ({exc}); fix `channels.<name>.logo.path` "
                          "(relative paths are under include/brand/)") from None


def overlay_logo(img: Image.Image, logo_cfg) -> Image.Image:
    logo = _logo(str(_brand_path(logo_cfg.path)))
    w = max(1, round(img.width * logo_cfg.scale))
    h = max(1, round(logo.height * w / logo.width))
    mark = logo.resize((w, h), Image.Resampling.LANCZOS)
    if logo_cfg.opacity < 1:
        alpha = mark.getchannel("A").point(lambda a: round(a * logo_cfg.opacity))
        mark.putalpha(alpha)
    base = img.convert("RGBA")
    layer = Image.new("RGBA", base.size, (0, 0, 0, 0))
    layer.paste(mark, _anchor(logo_cfg.position, mark.size, base.size, round(img.width * logo_cfg.margin)))
    out = Image.alpha_composite(base, layer)
    return out if img.mode == "RGBA" else out.convert("RGB")


def pick_text(text_cfg, locale: str | None) -> str:
    """The overlay text for ``locale`` (``de-AT`` falls back to ``de``), else the default."""
    for key in (locale, (locale or "").split("-")[0].split("_")[0]):
        if key and key in text_cfg.text:
            return text_cfg.text[key]
    return text_cfg.text[text_cfg.default_locale]


def overlay_text(img: Image.Image, text_cfg, locale: str | None = None) -> Image.Image:
    text = pick_text(text_cfg, locale)
    path = _brand_path(text_cfg.font)
    if not path.is_file():
        raise RecipeError(f"font {path} does not exist; fix `channels.<name>.text.font` "
                          "(relative paths are under include/brand/)")
    from PIL import ImageFont

    fnt = ImageFont.truetype(str(path), max(6, round(img.height * text_cfg.size)))
    base = img.convert("RGBA")
    layer = Image.new("RGBA", base.size, (0, 0, 0, 0))
    draw = ImageDraw.Draw(layer)
    left, top, right, bottom = draw.textbbox((0, 0), text, font=fnt)
    pad = max(2, round(fnt.size * 0.3))
    box = (right - left + 2 * pad, bottom - top + 2 * pad)
    x, y = _anchor(text_cfg.position, box, base.size, round(img.height * text_cfg.margin))
    if text_cfg.box:
        draw.rectangle([x, y, x + box[0], y + box[1]], fill=text_cfg.box)
    draw.text((x + pad - left, y + pad - top), text, font=fnt, fill=text_cfg.colour)
    out = Image.alpha_composite(base, layer)
    return out if img.mode == "RGBA" else out.convert("RGB")


# the recipe --------------------------------------------------------------------------

def render(img: Image.Image, channel_name: str, channel, provenance: imaging.Provenance, *,
           locale: str | None = None, upscaler: str = "default") -> Derivative:
    """Apply one channel's recipe to a decoded original; return the encoded derivative."""
    # 1. Colour: everything downstream assumes sRGB.
    out = to_srgb(img) if channel.srgb else (img if img.mode in ("RGB", "RGBA") else img.convert("RGB"))
    upscaled_by = None
    # 2. Upscale through the inference layer, when asked.
    if channel.upscale_to:
        fn = UPSCALERS.get(upscaler)
        if fn is None:
            raise RecipeError(
                f"channel {channel_name!r} sets upscale_to: {channel.upscale_to} but no upscaler "
                f"{upscaler!r} is registered in darkroom.postprocess.UPSCALERS; register the "
                "inference layer's upscaler or remove upscale_to")
        if max(out.size) < channel.upscale_to:
            out = fn(out, channel.upscale_to)
            upscaled_by = getattr(fn, "upscaler_name", upscaler)
    # 3. Geometry.
    out = fit(out, channel.width, channel.height, mode=channel.fit, crop=channel.crop,
              background=channel.background)
    # 4-5. Overlays.
    if channel.logo is not None:
        out = overlay_logo(out, channel.logo)
    if channel.text is not None:
        out = overlay_text(out, channel.text, locale)
    # 6. Encode with provenance, tagged sRGB.
    if channel.format == "jpeg" and out.mode != "RGB":
        out = out.convert("RGB")
    prov = imaging.Provenance(provenance.parameters, {
        **provenance.darkroom, "channel": channel_name, "recipe": recipe_hash(channel),
        **({"locale": locale} if locale else {}),
        **({"upscaled": {"by": upscaled_by, "to": channel.upscale_to}} if upscaled_by else {})})
    data = imaging.encode(out, channel.format, prov, channel.quality,
                          icc_profile=SRGB_ICC if channel.srgb else None)
    return Derivative(channel_name, data, out.width, out.height, channel.format, channel.extension)


def render_all(original: bytes, channels: dict, *, locale: str | None = None) -> list[Derivative]:
    """Decode an original once and render each channel ({name: Channel}). Picklable in and out,
    so a process pool can run it; the provenance comes from the original's own chunks."""
    img = imaging.decode(original)  # BadImage first: a broken file says so, not "no provenance"
    prov = imaging.read_provenance(original)
    if prov is None:
        raise RecipeError("the original carries no provenance; refusing to make derivatives "
                          "that could not be traced")
    return [render(img, name, ch, prov, locale=locale) for name, ch in channels.items()]


def check_recipes(channels: dict, upscaler: str = "default") -> None:
    """Raise :class:`RecipeError` naming the field when a recipe cannot run here."""
    problems = []
    for name, ch in channels.items():
        if ch.logo is not None:
            p = _brand_path(ch.logo.path)
            if not p.is_file():
                problems.append(f"channels.{name}.logo.path = {ch.logo.path!r}: {p} does not exist")
        if ch.text is not None:
            p = _brand_path(ch.text.font)
            if not p.is_file():
                problems.append(f"channels.{name}.text.font = {ch.text.font!r}: {p} does not exist")
        if ch.upscale_to and upscaler not in UPSCALERS:
            problems.append(f"channels.{name}.upscale_to = {ch.upscale_to}: no upscaler {upscaler!r} "
                            "registered in darkroom.postprocess.UPSCALERS; remove upscale_to or "
                            "register the inference layer's upscaler")
    if problems:
        raise RecipeError("post-processing recipes cannot run:\n  - " + "\n  - ".join(problems)
                          + "\n(relative logo and font paths are under include/brand/)")
