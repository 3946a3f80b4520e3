"""Pixels in and out: provenance chunks, safe decoding and encoding, the brand font, contact sheets."""

from __future__ import annotations

import io
import json
import re
import struct
import warnings
from dataclasses import dataclass
from pathlib import Path

import piexif.helper
from PIL import Image, ImageDraw, ImageFile, ImageFont, ImageOps, PngImagePlugin

from darkroom import __version__
from darkroom.config import BRAND_DIR
from darkroom.provenance.xmp import packet as xmp_packet
from darkroom.provenance.xmp import prompt_from_parameters

# Pillow's limits, set explicitly rather than inherited. A decompression bomb is refused
# rather than decoded: Pillow warns above MAX_IMAGE_PIXELS and raises above twice it; decode()
# turns the warning into an error too. 4096x4096x2 leaves room for 4096px upscales.
Image.MAX_IMAGE_PIXELS = 4096 * 4096 * 2
# A truncated file is an error, never silently padded with grey.
ImageFile.LOAD_TRUNCATED_IMAGES = False
# Text chunks (our provenance) are small; a huge one is an attack or a corrupt file.
PngImagePlugin.MAX_TEXT_CHUNK = 1024 * 1024
PngImagePlugin.MAX_TEXT_MEMORY = 8 * 1024 * 1024
# Bigger encoded inputs than this are refused before Pillow sees them.
MAX_FILE_BYTES = 200 * 1024 * 1024

FONT = BRAND_DIR / "fonts" / "DejaVuSans.ttf"

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
    # AUTOMATIC1111 quotes a value holding its separators (e.g. "Lora hashes").
    tail = ", ".join(f"{k}: {json.dumps(str(v)) if any(c in str(v) for c in ',:') else v}"
                     for k, v in fields.items())
    lines = [prompt]
    if negative_prompt:
        lines.append(f"Negative prompt: {negative_prompt}")
    lines.append(tail)
    return "\n".join(lines)


# Provenance inside files has hard limits: a JPEG's EXIF segment holds at most 65,533 bytes
# (Pillow: "EXIF data is too long"), and our own reader refuses PNG text chunks over
# MAX_TEXT_CHUNK. Longer fields are cut to these sizes, never dropped, and the cut is recorded
# in the darkroom record (`truncated`); the catalog keeps every field whole.
#: Bytes of the EXIF UserComment (the parameters text, UTF-16) in JPEG and WebP.
EXIF_PARAMETERS_BYTES = 48_000
#: Bytes (UTF-8) of the XMP packet's dc:description (the prompt): the packet, like EXIF,
#: lives in one JPEG segment (darkroom.provenance.xmp.MAX_PACKET_BYTES).
XMP_DESCRIPTION_BYTES = 40_000
#: Bytes of the EXIF ImageDescription (the darkroom JSON) in JPEG and WebP.
EXIF_DARKROOM_BYTES = 16_000
#: Bytes (UTF-8) of each PNG text chunk: under MAX_TEXT_CHUNK, so it reads back.
PNG_TEXT_BYTES = PngImagePlugin.MAX_TEXT_CHUNK - 1024
#: Characters of one string value in the darkroom record when it must be cut to fit.
DARKROOM_VALUE_CHARS = 1_000
CUT = " [...]"


def _fit_parameters(text: str, max_bytes: int, encoding: str) -> str:
    """``text`` within ``max_bytes``: the prompt lines are cut, the settings line (the last,
    which QA and AUTOMATIC1111's readers parse) is kept whole."""
    if len(text.encode(encoding)) <= max_bytes:
        return text
    head, sep, settings = text.rpartition("\n")
    budget = max_bytes - len((CUT + sep + settings).encode(encoding))
    # Cut at the byte budget; a character split by the cut is dropped, not mangled.
    kept = head.encode(encoding)[: max(budget, 0)].decode(encoding, errors="ignore")
    return kept + CUT + sep + settings


def _fit_darkroom(record: dict, max_bytes: int) -> dict:
    """``record`` as JSON within ``max_bytes``: long string values are cut (and named)."""
    if len(json.dumps(record, sort_keys=True)) <= max_bytes:
        return record
    long = sorted(k for k, v in record.items() if isinstance(v, str) and len(v) > DARKROOM_VALUE_CHARS)
    out = {k: (v[:DARKROOM_VALUE_CHARS] + CUT if k in long else v) for k, v in record.items()}
    out["truncated"] = {**record.get("truncated", {}), **{k: len(record[k]) for k in long}}
    if len(json.dumps(out, sort_keys=True)) > max_bytes:  # not strings: keep only the ids
        keep = ("asset_id", "variant_id", "campaign", "run_id", "channel", "recipe")
        out = {k: out[k] for k in keep if k in out} | {"truncated": {"darkroom": "record too long"}}
    return out


def _tiff_ifd(entries: list[tuple[int, int, int, bytes]], at: int) -> bytes:
    """One big-endian TIFF IFD at offset ``at``, its values after it: (tag, type, count, data)."""
    values_at = at + 2 + 12 * len(entries) + 4
    head, values = struct.pack(">H", len(entries)), b""
    for tag, typ, count, data in sorted(entries):
        if len(data) <= 4:  # fits in the entry itself
            head += struct.pack(">HHI", tag, typ, count) + data.ljust(4, b"\0")
        else:
            head += struct.pack(">HHII", tag, typ, count, values_at + len(values))
            values += data + b"\0" * (len(data) & 1)  # values start on word boundaries
    return head + b"\0\0\0\0" + values  # no next IFD


def exif_block(description: str, software: str, user_comment: bytes) -> bytes:
    """An ``Exif\\0\\0`` block: IFD0 (ImageDescription, Software, the Exif IFD pointer) and
    the Exif IFD (UserComment, type UNDEFINED). Written here because Pillow types UserComment
    as BYTE and piexif.dump leaves out the Exif IFD's next-IFD field (exiftool flags both)."""
    desc = description.encode("ascii", "replace") + b"\0"
    soft = software.encode("ascii", "replace") + b"\0"

    def ifd0(exif_at: int) -> bytes:
        return _tiff_ifd([(IMAGE_DESCRIPTION, 2, len(desc), desc), (0x0131, 2, len(soft), soft),
                          (EXIF_IFD, 4, 1, struct.pack(">I", exif_at))], 8)

    exif_at = 8 + len(ifd0(0))
    exif = _tiff_ifd([(EXIF_USER_COMMENT, 7, len(user_comment), user_comment)], exif_at)
    return b"Exif\0\0MM\0\x2a" + struct.pack(">I", 8) + ifd0(exif_at) + exif


@dataclass(frozen=True)
class Provenance:
    parameters: str
    darkroom: dict

    def _fitted(self, max_parameters: int, encoding: str, max_darkroom: int) -> tuple[str, dict]:
        params = _fit_parameters(self.parameters, max_parameters, encoding)
        record = self.darkroom
        if params != self.parameters:
            record = {**record, "truncated": {**record.get("truncated", {}),
                                              "parameters": len(self.parameters)}}
        return params, _fit_darkroom(record, max_darkroom)

    def png_info(self) -> PngImagePlugin.PngInfo:
        params, record = self._fitted(PNG_TEXT_BYTES, "utf-8", PNG_TEXT_BYTES)
        info = PngImagePlugin.PngInfo()
        info.add_itxt("parameters", params)
        info.add_itxt("darkroom", json.dumps(record, sort_keys=True))
        info.add_itxt("XML:com.adobe.xmp", self.xmp().decode("utf-8"))
        return info

    def exif(self) -> bytes:
        """EXIF as AUTOMATIC1111's readers and sd-prompt-reader need it: the parameters in
        UserComment, type UNDEFINED, ``UNICODE\\0`` then UTF-16BE (piexif's UserComment.dump);
        the darkroom JSON in ImageDescription."""
        # UserComment: 8 bytes of charset prefix, then UTF-16.
        params, record = self._fitted(EXIF_PARAMETERS_BYTES - 8, "utf-16-be", EXIF_DARKROOM_BYTES)
        return exif_block(json.dumps(record, sort_keys=True), f"Darkroom {__version__}",
                          piexif.helper.UserComment.dump(params, "unicode"))

    def xmp(self) -> bytes:
        """The XMP packet (darkroom.provenance.xmp): Dublin Core, IPTC DigitalSourceType, darkroom:."""
        params, record = self._fitted(XMP_DESCRIPTION_BYTES, "utf-8", EXIF_DARKROOM_BYTES)
        return xmp_packet(record, description=prompt_from_parameters(params), parameters=params,
                          creator_tool=f"Darkroom {__version__}")


def read_provenance(data: bytes) -> Provenance | None:
    """Read back what :func:`encode` wrote, from PNG text chunks or EXIF."""
    with Image.open(io.BytesIO(data)) as img:
        # Our chunks come before the pixel data, so `info` has them without decoding; `text`
        # (which decodes the whole image to find chunks after it) only for other writers' files.
        text = img.info if "darkroom" in img.info else (getattr(img, "text", None) or {})
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


def encode(img: Image.Image, fmt: str, provenance: Provenance, quality: int = 90,
           icc_profile: bytes | None = None) -> bytes:
    """Encode with provenance (and an ICC profile when given) inside the file; same input,
    same bytes."""
    buf = io.BytesIO()
    icc = {"icc_profile": icc_profile} if icc_profile else {}
    if fmt == "png":
        img.save(buf, format="PNG", pnginfo=provenance.png_info(), optimize=False, **icc)
    elif fmt == "jpeg":
        # optimize=False: an extra Huffman pass costs ~15% of a derivative's CPU for ~3% bytes.
        img.convert("RGB").save(buf, format="JPEG", quality=quality, exif=provenance.exif(),
                                xmp=provenance.xmp(), optimize=False, **icc)
    elif fmt == "webp":
        img.save(buf, format="WEBP", quality=quality, exif=provenance.exif(), xmp=provenance.xmp(),
                 method=4, **icc)
    else:
        raise ValueError(f"unsupported format {fmt!r}; use png, jpeg or webp")
    return buf.getvalue()


class BadImage(ValueError):
    """A file that is not a usable image: corrupt, truncated or too large."""


def decode(data: bytes) -> Image.Image:
    """Fully decode, turning every way a file can be broken into :class:`BadImage`."""
    return decode_with_format(data)[0]


def decode_with_format(data: bytes) -> tuple[Image.Image, str]:
    """Decode (see :func:`decode`) and return the file's format in lower case (png, jpeg, webp)."""
    if not data:
        raise BadImage("empty file (0 bytes)")
    if len(data) > MAX_FILE_BYTES:
        raise BadImage(f"refused: file is {len(data)} bytes, limit {MAX_FILE_BYTES} "
                       "(darkroom.imaging.MAX_FILE_BYTES)")
    try:
        with warnings.catch_warnings():
            warnings.simplefilter("error", Image.DecompressionBombWarning)
            with Image.open(io.BytesIO(data)) as img:
                fmt = (img.format or "").lower()
                img.load()
                return img.copy(), fmt
    except (Image.DecompressionBombError, Image.DecompressionBombWarning) as exc:
        raise BadImage(f"refused as a decompression bomb: {exc} (limit Image.MAX_IMAGE_PIXELS="
                       f"{Image.MAX_IMAGE_PIXELS})") from None
    except (OSError, SyntaxError, ValueError, EOFError) as exc:
        text = _pillow_reason(exc)
        why = "truncated file" if "truncated" in text.lower() else "not a readable image"
        raise BadImage(f"{why}: {text}") from None


_STREAM = re.compile(r"\s*<_io\.\w+ object at 0x[0-9a-fA-F]+>|\s*'[^']*'$")


def _pillow_reason(exc: BaseException) -> str:
    """Pillow's reason without the stream or path it names ("cannot identify image file
    <_io.BytesIO object at 0x7f...>" says nothing to a reader: the caller names the file)."""
    text = _STREAM.sub("", str(exc)).strip()
    if text.startswith("cannot identify image file"):
        return "not a PNG, JPEG, WebP or other image format Pillow reads"
    return text or type(exc).__name__


def probe(path: Path) -> tuple[str, tuple[int, int]]:
    """Format and size from a file's header, with :func:`decode`'s limits (file bytes, pixels),
    without decoding the pixels: cheap enough to check every reference image at validation."""
    size = path.stat().st_size
    if size == 0:
        raise BadImage("empty file (0 bytes)")
    if size > MAX_FILE_BYTES:
        raise BadImage(f"refused: file is {size} bytes, limit {MAX_FILE_BYTES} "
                       "(darkroom.imaging.MAX_FILE_BYTES)")
    try:
        with warnings.catch_warnings():
            warnings.simplefilter("error", Image.DecompressionBombWarning)
            with Image.open(path) as img:
                return (img.format or "").lower(), img.size
    except (Image.DecompressionBombError, Image.DecompressionBombWarning) as exc:
        raise BadImage(f"refused as a decompression bomb: {_pillow_reason(exc)} (limit "
                       f"Image.MAX_IMAGE_PIXELS={Image.MAX_IMAGE_PIXELS})") from None
    except (OSError, SyntaxError, ValueError, EOFError) as exc:
        raise BadImage(f"not a readable image: {_pillow_reason(exc)}") from None


def font(size: int) -> ImageFont.FreeTypeFont | ImageFont.ImageFont:
    """The brand font (DejaVu Sans, shipped in include/brand/fonts) at ``size`` px."""
    try:
        return ImageFont.truetype(str(FONT), size)
    except OSError:  # a checkout without the font still draws, in Pillow's bitmap font
        return ImageFont.load_default(size)


STATUS_COLOURS = {"qa_failed": "#e5484d", "failed": "#e5484d", "rejected": "#e5484d",
                  "needs_review": "#f5a524", "qa_passed": "#3e63dd", "approved": "#30a46c",
                  "published": "#30a46c"}
FAILED = ("qa_failed", "failed", "rejected")


def contact_sheet(tiles: list[tuple[Image.Image | None, str, str]], *, columns: int = 6,
                  thumb: int = 160, title: str = "") -> Image.Image:
    """A grid of thumbnails; ``tiles`` holds (image, caption, status).

    The caption may hold several lines (variant, channels, ...); the status line is drawn in
    its colour, and failed tiles get a red frame and a cross so they stand out at a glance.
    ``image`` None (an unreadable file) draws an empty tile.
    """
    small, bold = font(11), font(12)
    lines = max([len(c.splitlines()) for _, c, _ in tiles] or [1])
    caption_h, pad, header = 15 * (lines + 1) + 4, 8, 28 if title else 0
    columns = max(1, min(columns, len(tiles) or 1))
    rows = max(1, -(-len(tiles) // columns))
    sheet = Image.new("RGB", (pad + columns * (thumb + pad),
                              header + pad + rows * (thumb + caption_h + pad)), "#1e1e1e")
    draw = ImageDraw.Draw(sheet)
    if title:
        draw.text((pad, 7), title, fill="#ffffff", font=bold)
    for i, (img, caption, status) in enumerate(tiles):
        x = pad + (i % columns) * (thumb + pad)
        y = header + pad + (i // columns) * (thumb + caption_h + pad)
        if img is not None:
            t = ImageOps.contain(img.convert("RGB"), (thumb, thumb), Image.Resampling.LANCZOS)
            sheet.paste(t, (x + (thumb - t.width) // 2, y + (thumb - t.height) // 2))
        colour = STATUS_COLOURS.get(status, "#8b8d98")
        draw.rectangle([x - 2, y - 2, x + thumb + 1, y + thumb + 1], outline=colour, width=3)
        if status in FAILED or img is None:
            draw.line([x, y, x + thumb, y + thumb], fill=colour, width=3)
            draw.line([x, y + thumb, x + thumb, y], fill=colour, width=3)
        ty = y + thumb + 3
        for line in caption.splitlines():
            draw.text((x, ty), _clip_text(draw, line, small, thumb), fill="#ffffff", font=small)
            ty += 15
        label = ("FAILED " if status in FAILED else "") + status
        draw.text((x, ty), _clip_text(draw, label, bold, thumb), fill=colour, font=bold)
    return sheet


def _clip_text(draw: ImageDraw.ImageDraw, text: str, fnt, width: int) -> str:
    while text and draw.textlength(text, font=fnt) > width:
        text = text[:-1]
    return text
