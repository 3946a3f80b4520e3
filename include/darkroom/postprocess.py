"""Channel recipes: one original in, one channel-ready derivative out.

:func:`render` applies a channel's recipe (``darkroom.spec.Channel``) in a fixed order:

1. sRGB: an embedded ICC profile is converted to sRGB (output is tagged sRGB);
2. upscale (optional): to the channel's ``upscale_to`` long side. With ``generation.upscaler``
   set, a model (darkroom.upscaler: Real-ESRGAN or a diffusers x4 upscaler) has already
   upscaled the original on the GPU queue (the upscale stage, :func:`upscale_original`) and
   the render receives its output;
   otherwise through an upscaler registered in :data:`UPSCALERS` (Lanczos by default). A
   recipe asking for one that is not registered fails with a clear error. Either way the
   derivative's provenance records ``upscaled: {by, to}``;
3. background removal (``background: {remove: true, fill, shadow}``): U²-Net's product mask
   (darkroom.cutout, computed once per original), the product on the fill colour or
   transparent, a soft shadow when asked; the mask itself is kept (:attr:`Rendered.mask`);
4. crop (centre, the most detailed window: ``crop: entropy``, or the product's mask box:
   ``crop: product``) or pad to the channel's aspect ratio, then a Lanczos resize;
5. logo / watermark overlay (position, scale, opacity);
6. localized text overlay in the brand font;
7. the invisible watermark (``watermark: true``, the default): a key derived from the asset
   id, hidden in the pixels (darkroom.provenance.watermark), recorded in the provenance;
8. encode (JPEG / WebP / PNG at the channel's quality) with the provenance carried over
   (PNG chunks or EXIF, and XMP).

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

import imagehash
import numpy as np
from PIL import Image, ImageCms, ImageDraw, ImageFont, ImageOps

from darkroom import cutout, imaging
from darkroom.config import BRAND_DIR
from darkroom.errors import ModelError
from darkroom.provenance import watermark
from darkroom.upscaler import resolve_upscaler

# The inference layer registers its upscaler here: name -> callable(image, long_side) -> image.
# postprocess uses the entry named "default" when a channel sets `upscale_to`.
UPSCALERS: dict[str, Callable[[Image.Image, int], Image.Image]] = {}


def long_side_size(size: tuple[int, int], long_side: int) -> tuple[int, int]:
    """``size`` scaled so its long side is ``long_side``: the size every upscaler gives."""
    scale = long_side / max(size)
    return round(size[0] * scale), round(size[1] * scale)


def lanczos_upscale(img: Image.Image, long_side: int) -> Image.Image:
    """The upscaler when no model upscaler is configured: Lanczos to ``long_side``."""
    return img.resize(long_side_size(img.size, long_side), Image.Resampling.LANCZOS)


lanczos_upscale.upscaler_name = "lanczos"  # what provenance records as the upscaler
UPSCALERS["lanczos"] = lanczos_upscale
UPSCALERS["default"] = lanczos_upscale  # a model upscaler, when configured, replaces this


class RecipeError(ValueError):
    """A recipe that cannot be applied (missing logo file, no upscaler, ...)."""


@dataclass(frozen=True)
class Upscaled:
    """An original upscaled by the model upscaler on the GPU queue (the upscale stage stores
    it and records it on the asset; postprocess hands it to the render worker with the
    original, :func:`render_all`'s ``upscaled``). Its provenance is the original's, which
    travels alongside, so the PNG here carries none."""

    by: str  # the upscaler's provenance name: "realesrgan:<model>@<digest>", "diffusers:<model>@<version>"
    to: int  # its long side: the largest upscale_to of the asset's channels
    data: bytes | None = None  # PNG, sRGB
    error: str | None = None  # the model failed on this image: the asset fails with this


@dataclass(frozen=True)
class Rendered:
    """One channel's derivative as :func:`render` made it: the encoded file and its shape."""

    channel: str
    data: bytes
    width: int
    height: int
    format: str
    extension: str
    phash: str | None = None  # of the pixels as encoded (darkroom verify matches on it)
    watermark: str | None = None  # the method, when the channel carries the mark
    watermark_key: str | None = None
    mask: bytes | None = None  # the original's product mask (PNG, "L"), when the recipe used one


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
    if mode == "pad" and background == "transparent":  # a cutout stays a cutout
        return ImageOps.pad(img.convert("RGBA"), (width, height), method=Image.Resampling.LANCZOS,
                            color=(0, 0, 0, 0))
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
    # Decoded like every other input image (imaging.decode: file size, pixel and bomb limits):
    # a 49-megapixel "logo" is refused as a reference image of that size would be.
    try:
        return imaging.decode(Path(path).read_bytes()).convert("RGBA")
    except (OSError, imaging.BadImage) as exc:
        why = exc.strerror if isinstance(exc, OSError) and exc.strerror else str(exc)
        raise RecipeError(f"logo {path}: cannot use it ({why}); fix `channels.<name>.logo.path`: "
                          "a PNG with transparency (relative paths are under include/brand/)") from None


@functools.lru_cache(maxsize=64)
def _font(path: str, size: int):
    try:
        return ImageFont.truetype(path, size)
    except (OSError, ValueError) as exc:
        raise RecipeError(f"font {path}: not a font Pillow can read ({exc}); fix "
                          "`channels.<name>.text.font`: a .ttf or .otf file (relative paths are "
                          "under include/brand/)") from None


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
    fnt = _font(str(path), max(6, round(img.height * text_cfg.size)))
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
           locale: str | None = None, upscaler: str = "default",
           upscaled: Image.Image | None = None, model_upscaler: str | None = None,
           mask: Image.Image | None = None) -> Rendered:
    """Apply one channel's recipe to a decoded original; return the encoded derivative.

    ``upscaled`` (made by the model upscaler named ``model_upscaler``) is the original already
    upscaled by a model to the largest ``upscale_to`` of this asset's channels; a channel
    asking for less gets a Lanczos downscale of it: one model run per asset, not per channel.
    ``mask``: the original's product mask (:func:`darkroom.cutout.mask`), for channels that
    remove the background or crop to the product."""
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
            if upscaled is not None and model_upscaler and max(upscaled.size) >= channel.upscale_to:
                # The model's output is sRGB already (step 1 would leave it as is).
                size = long_side_size(out.size, channel.upscale_to)  # the original's aspect
                big = upscaled if upscaled.mode == out.mode else upscaled.convert(out.mode)
                out = big if big.size == size else big.resize(size, Image.Resampling.LANCZOS)
                upscaled_by = model_upscaler
            else:
                out = fn(out, channel.upscale_to)
                upscaled_by = getattr(fn, "upscaler_name", upscaler)
    # 3. The backdrop.
    cut = None
    if channel.needs_mask:
        if mask is None:
            raise RecipeError(f"channel {channel_name!r} needs the product mask (background.remove "
                              "or crop: product) and none was made")
        mask = mask if mask.size == out.size else mask.resize(out.size, Image.Resampling.BILINEAR)
        cut = cutout.measure(mask)
        if channel.removal is not None:
            out = cutout.composite(out, mask, channel.removal.fill, channel.removal.shadow)
    # 4. Geometry.
    window = None
    if channel.crop == "product" and channel.fit == "crop" and cut.bbox is not None:
        window = cutout.product_window(out.size, cut.bbox, channel.width, channel.height)
    if window is not None:
        out = out.crop(window).resize((channel.width, channel.height), Image.Resampling.LANCZOS)
    else:  # crop: product that cannot hold the whole product pads instead
        pads = channel.crop == "product" and channel.fit == "crop"
        out = fit(out, channel.width, channel.height, mode="pad" if pads else channel.fit,
                  crop=channel.crop, background=channel.pad_colour)
    # 5-6. Overlays.
    if channel.logo is not None:
        out = overlay_logo(out, channel.logo)
    if channel.text is not None:
        out = overlay_text(out, channel.text, locale)
    # 7. The invisible mark, last, so nothing drawn afterwards covers it.
    mark = _watermark(out, channel, provenance.darkroom.get("asset_id"))
    if mark is not None:
        out, mark = mark
    # 8. Encode with provenance, tagged sRGB.
    if channel.format == "jpeg" and out.mode != "RGB":
        out = out.convert("RGB")
    prov = imaging.Provenance(provenance.parameters, {
        **provenance.darkroom, "channel": channel_name, "recipe": recipe_hash(channel),
        **({"locale": locale} if locale else {}),
        **({"upscaled": {"by": upscaled_by, "to": channel.upscale_to}} if upscaled_by else {}),
        **({"cutout": {"by": cutout.model_file()[1], "foreground": round(cut.foreground, 4),
                       **(channel.removal.model_dump() if channel.removal else {"crop": "product"})}}
           if cut is not None else {}),
        **({"watermark": mark} if mark else {})})
    data = imaging.encode(out, channel.format, prov, channel.quality,
                          icc_profile=SRGB_ICC if channel.srgb else None)
    return Rendered(channel_name, data, out.width, out.height, channel.format, channel.extension,
                    phash=str(imagehash.phash(out)), watermark=mark and mark["method"],
                    watermark_key=mark and mark["key"], mask=_png(mask) if cut is not None else None)


def _png(img: Image.Image) -> bytes:
    buf = io.BytesIO()
    img.save(buf, format="PNG")
    return buf.getvalue()


def _watermark(img: Image.Image, channel, asset_id: str | None):
    """(marked image, {method, key}) when the channel carries the mark and the image can."""
    if not channel.watermark or not asset_id or not watermark.can_carry(img.size):
        return None
    key = watermark.key_for(asset_id)
    return watermark.embed(img, key), {"method": watermark.METHOD, "key": key}


def render_all(original: bytes, channels: dict, *, locale: str | None = None,
               upscaled: Upscaled | None = None) -> list[Rendered]:
    """Decode an original once and render each channel ({name: Channel}). Picklable in and out,
    so a process pool can run it; the provenance comes from the original's own chunks.
    ``upscaled``: the model upscaler's output for this original (:func:`model_upscaled`)."""
    img = imaging.decode(original)  # BadImage first: a broken file says so, not "no provenance"
    prov = imaging.read_provenance(original)
    if prov is None:
        raise RecipeError("the original carries no provenance; refusing to make derivatives "
                          "that could not be traced")
    big = None
    if upscaled is not None:
        if upscaled.error is not None:
            raise RecipeError(f"the model upscaler {upscaled.by} failed on this original "
                              f"(to {upscaled.to} px): {upscaled.error}")
        big = imaging.decode(upscaled.data)
    by = upscaled.by if upscaled is not None else None
    mask = None
    if any(ch.needs_mask for ch in channels.values()):  # once per original, for every channel
        mask = cutout.mask(to_srgb(img))
        share = cutout.measure(mask).foreground
        if not MIN_FOREGROUND <= share <= MAX_FOREGROUND:
            raise RecipeError(f"the product mask covers {share:.1%} of the picture (sane: "
                              f"{MIN_FOREGROUND:.0%}-{MAX_FOREGROUND:.0%}): no product to cut out; "
                              "regenerate it, or drop background.remove / crop: product")
    return [render(img, name, ch, prov, locale=locale, upscaled=big, model_upscaler=by, mask=mask)
            for name, ch in channels.items()]


#: The review gallery's thumbnail: its long side, in pixels (WebP; not published anywhere).
THUMBNAIL_PX = 256


def thumbnail(original: bytes, size: int = THUMBNAIL_PX) -> bytes:
    """The review gallery's thumbnail of an original: at most ``size`` px on the long side,
    sRGB WebP. Same original, same bytes. It carries no provenance: it never leaves the
    gallery, and the gallery names the asset it shows."""
    img = to_srgb(imaging.decode(original))
    img.thumbnail((size, size), Image.Resampling.LANCZOS)
    buf = io.BytesIO()
    img.save(buf, format="WEBP", quality=80, method=4)
    return buf.getvalue()


def render_for_review(original: bytes, channels: dict, **kwargs) -> tuple[list[Rendered], bytes]:
    """:func:`render_all` and the gallery's :func:`thumbnail`, in one job of a process pool."""
    return render_all(original, channels, **kwargs), thumbnail(original)


# A mask that keeps (almost) nothing or (almost) everything is no cutout: the QA check
# `cutout` holds the same line earlier, with the rubric's bounds.
MIN_FOREGROUND, MAX_FOREGROUND = 0.01, 0.97


def prompts_from_infotext(parameters: str) -> tuple[str, str]:
    """``(prompt, negative prompt)`` from the AUTOMATIC1111 ``parameters`` text
    (darkroom.imaging.infotext): the prompt lines, an optional ``Negative prompt:`` line,
    then one line of settings."""
    lines = parameters.split("\n")[:-1]
    for i, line in enumerate(lines):
        if line.startswith("Negative prompt: "):
            return "\n".join(lines[:i]), "\n".join([line[len("Negative prompt: "):], *lines[i + 1:]])
    return "\n".join(lines), ""


def upscale_original(original: bytes, long_side: int, model) -> Upscaled:
    """Upscale an original with a loaded model upscaler (darkroom.upscaler.load) to
    ``long_side``, prompted with the asset's own prompt. A failure on this one image (out of
    memory, say) comes back as ``Upscaled.error``: that asset fails, the batch goes on."""
    prov = imaging.read_provenance(original)
    prompt, negative = prompts_from_infotext(prov.parameters) if prov else ("", "")
    try:
        # The model sees sRGB, the space it was trained in; the workers' own sRGB step then
        # leaves these pixels as they are.
        big = model.upscale(to_srgb(imaging.decode(original)), long_side, prompt=prompt,
                            negative_prompt=negative)
    except Exception as exc:  # reported as this asset's failure; the batch goes on
        model.free_memory()
        return Upscaled(model.name, long_side, error=f"{type(exc).__name__}: {exc}")
    buf = io.BytesIO()
    big.save(buf, format="PNG", compress_level=1)  # a hand-over, not an archive: fast beats small
    return Upscaled(model.name, long_side, data=buf.getvalue())


def upscale_target(original: bytes, channels: dict) -> int:
    """The long side the model upscaler must make for this original: the largest
    ``upscale_to`` of its channels that is above its own size; 0 when none is."""
    target = max((ch.upscale_to for ch in channels.values() if ch.upscale_to), default=0)
    if not target:
        return 0
    try:  # the header is enough to know the size
        with Image.open(io.BytesIO(original)) as head:
            size = head.size
    except Exception:  # a broken file: render_all reports it as this asset's failure
        return 0
    return target if max(size) < target else 0


def check_recipes(channels: dict, upscaler: str = "default", *,
                  model_upscaler: str | None = None) -> None:
    """Raise :class:`RecipeError` naming the field when a recipe cannot run here.
    ``model_upscaler`` is ``generation.upscaler``: checked (without loading weights) when a
    channel sets ``upscale_to``."""
    problems = []
    masked = [name for name, ch in channels.items() if ch.needs_mask]
    if masked:
        try:
            cutout.model_file()
        except cutout.CutoutError as exc:
            problems.append(f"channels.{masked[0]}.background: {exc}")
    if model_upscaler is not None and any(ch.upscale_to for ch in channels.values()):
        try:
            resolve_upscaler(model_upscaler)
        except ModelError as exc:
            problems.append(str(exc))
    for name, ch in channels.items():
        # Read now, with the limits used later, so a bad logo or font fails before any
        # derivative (and, called from validation, before any GPU work).
        if ch.logo is not None:
            p = _brand_path(ch.logo.path)
            if not p.is_file():
                problems.append(f"channels.{name}.logo.path = {ch.logo.path!r}: {p} does not exist")
            else:
                try:
                    _logo(str(p))
                except RecipeError as exc:
                    problems.append(f"channels.{name}.logo.path = {ch.logo.path!r}: "
                                    f"{str(exc).split(': ', 1)[1]}")
        if ch.text is not None:
            p = _brand_path(ch.text.font)
            if not p.is_file():
                problems.append(f"channels.{name}.text.font = {ch.text.font!r}: {p} does not exist")
            else:
                try:
                    _font(str(p), 12)
                except RecipeError as exc:
                    problems.append(f"channels.{name}.text.font = {ch.text.font!r}: "
                                    f"{str(exc).split(': ', 1)[1]}")
        if ch.upscale_to and upscaler not in UPSCALERS:
            problems.append(f"channels.{name}.upscale_to = {ch.upscale_to}: no upscaler {upscaler!r} "
                            "registered in darkroom.postprocess.UPSCALERS; remove upscale_to or "
                            "register the inference layer's upscaler")
    if problems:
        raise RecipeError("post-processing recipes cannot run:\n  - " + "\n  - ".join(problems)
                          + "\n(relative logo and font paths are under include/brand/)")
