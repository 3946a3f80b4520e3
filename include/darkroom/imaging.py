"""Pixels in and out: provenance chunks, safe decoding, channel derivatives, contact sheets."""

from __future__ import annotations

import io
import json
from dataclasses import dataclass

from PIL import Image, ImageDraw, ImageFont, ImageOps, PngImagePlugin

# Explicit, so a decompression bomb is refused rather than decoded (Pillow warns at this
# size and raises at twice it; we make both an error).
Image.MAX_IMAGE_PIXELS = 4096 * 4096 * 2

EXIF_IFD = 0x8769
EXIF_USER_COMMENT = 0x9286
IMAGE_DESCRIPTION = 0x010E


def infotext(*, prompt: str, negative_prompt: str, steps: int, sampler: str, guidance: float,
             seed: int, width: int, height: int, model_hash: str, model: str,
             extra: dict | None = None) -> str:
    """The AUTOMATIC1111 ``parameters`` layout, so other tools read our files' settings."""
    fields = {
        "Steps": steps,
        "Sampler": sampler,
        "CFG scale": guidance,
        "Seed": seed,
        "Size": f"{width}x{height}",
        "Model hash": model_hash,
        "Model": model,
        **(extra or {}),
    }
    tail = ", ".join(f"{k}: {v}" for k, v in fields.items())
    lines = [prompt]
    if negative_prompt:
        lines.append(f"Negative prompt: {negative_prompt}")
    lines.append(tail)
    return "\n".join(lines)


@dataclass(frozen=True)
class Provenance:
    parameters: str
    darkroom: dict

    def png_info(self) -> PngImagePlugin.PngInfo:
        info = PngImagePlugin.PngInfo()
        info.add_itxt("parameters", self.parameters)
        info.add_itxt("darkroom", json.dumps(self.darkroom, sort_keys=True))
        return info

    def exif(self) -> Image.Exif:
        exif = Image.Exif()
        exif[IMAGE_DESCRIPTION] = json.dumps(self.darkroom, sort_keys=True)
        # UserComment with the UNICODE prefix, as AUTOMATIC1111 writes JPEG parameters.
        exif.get_ifd(EXIF_IFD)[EXIF_USER_COMMENT] = b"UNICODE\0" + self.parameters.encode("utf-16-be")
        return exif


def read_provenance(data: bytes) -> Provenance | None:
    """Read back what :func:`encode` wrote, from PNG text chunks or EXIF."""
    with Image.open(io.BytesIO(data)) as img:
        text = getattr(img, "text", None) or {}
        if "parameters" in text and "darkroom" in text:
            return Provenance(text["parameters"], json.loads(text["darkroom"]))
        exif = img.getexif()
        desc = exif.get(IMAGE_DESCRIPTION)
        comment = exif.get_ifd(EXIF_IFD).get(EXIF_USER_COMMENT)
        if desc and comment:
            if isinstance(comment, bytes) and comment.startswith(b"UNICODE\0"):
                comment = comment[8:].decode("utf-16-be")
            return Provenance(str(comment), json.loads(desc))
    return None


def encode(img: Image.Image, fmt: str, provenance: Provenance, quality: int = 90) -> bytes:
    """Encode with provenance inside the file; same input, same bytes."""
    buf = io.BytesIO()
    if fmt == "png":
        img.save(buf, format="PNG", pnginfo=provenance.png_info(), optimize=False)
    elif fmt == "jpeg":
        img.convert("RGB").save(buf, format="JPEG", quality=quality, exif=provenance.exif(),
                                optimize=True)
    elif fmt == "webp":
        img.save(buf, format="WEBP", quality=quality, exif=provenance.exif(), method=4)
    else:
        raise ValueError(f"unsupported format {fmt!r}; use png, jpeg or webp")
    return buf.getvalue()


class BadImage(ValueError):
    """A file that is not a usable image: corrupt, truncated or too large."""


def decode(data: bytes) -> Image.Image:
    """Fully decode, turning every way a file can be broken into :class:`BadImage`."""
    try:
        with Image.open(io.BytesIO(data)) as img:
            img.load()
            return img.copy()
    except Image.DecompressionBombError as exc:
        raise BadImage(f"refused: too many pixels ({exc})") from None
    except (OSError, SyntaxError, ValueError) as exc:
        raise BadImage(f"not a readable image: {exc}") from None


def fit(img: Image.Image, width: int, height: int, mode: str = "crop",
        background: str = "#ffffff") -> Image.Image:
    """Centre crop (or pad) to the channel's aspect ratio, then a Lanczos resize."""
    img = img.convert("RGB")
    if mode == "pad":
        return ImageOps.pad(img, (width, height), method=Image.Resampling.LANCZOS, color=background)
    return ImageOps.fit(img, (width, height), method=Image.Resampling.LANCZOS, centering=(0.5, 0.5))


def contact_sheet(tiles: list[tuple[Image.Image, str, str]], *, columns: int = 6,
                  thumb: int = 160, title: str = "") -> Image.Image:
    """A grid of thumbnails, each captioned; ``tiles`` holds (image, caption, status)."""
    font = ImageFont.load_default()
    caption_h, pad, header = 30, 8, 28 if title else 0
    columns = max(1, min(columns, len(tiles) or 1))
    rows = max(1, -(-len(tiles) // columns))
    sheet = Image.new("RGB", (pad + columns * (thumb + pad),
                              header + pad + rows * (thumb + caption_h + pad)), "#1e1e1e")
    draw = ImageDraw.Draw(sheet)
    if title:
        draw.text((pad, 8), title, fill="#ffffff", font=font)
    colours = {"qa_failed": "#e5484d", "failed": "#e5484d", "rejected": "#e5484d",
               "needs_review": "#f5a524", "approved": "#30a46c", "published": "#30a46c"}
    for i, (img, caption, status) in enumerate(tiles):
        x = pad + (i % columns) * (thumb + pad)
        y = header + pad + (i // columns) * (thumb + caption_h + pad)
        t = ImageOps.contain(img.convert("RGB"), (thumb, thumb), Image.Resampling.LANCZOS)
        sheet.paste(t, (x + (thumb - t.width) // 2, y + (thumb - t.height) // 2))
        colour = colours.get(status, "#8b8d98")
        draw.rectangle([x - 2, y - 2, x + thumb + 1, y + thumb + 1], outline=colour, width=2)
        if status in ("qa_failed", "failed", "rejected"):
            draw.line([x, y, x + thumb, y + thumb], fill=colour, width=3)
        draw.text((x, y + thumb + 3), caption[:26], fill="#ffffff", font=font)
        draw.text((x, y + thumb + 15), status, fill=colour, font=font)
    return sheet
