"""XMP: the metadata a DAM, a photo library or exiftool reads, in the namespaces they know.

One packet per file, built from the same provenance as the A1111 ``parameters`` text:

- ``dc:title`` (campaign, product, channel) and ``dc:description`` (the prompt), Dublin Core;
- ``Iptc4xmpExt:DigitalSourceType`` = IPTC's code for AI-generated images;
- ``xmp:CreatorTool`` = Darkroom and its version;
- ``darkroom:*``: asset, variant, campaign, run, product, model and version, seed, channel,
  watermark, and the approval (``pending`` until publish writes the decision in).

Where it lives: PNG iTXt ``XML:com.adobe.xmp``, JPEG APP1 ``http://ns.adobe.com/xap/1.0/``,
WebP ``XMP `` chunk. :func:`replace` swaps the packet of an encoded file without touching
its pixels (publishing adds the approval that way). Standard library only: the base modules
import this one.
"""

from __future__ import annotations

import re
import struct
import zlib
from xml.etree import ElementTree
from xml.sax.saxutils import escape, quoteattr

DIGITAL_SOURCE_TYPE = "http://cv.iptc.org/newscodes/digitalsourcetype/trainedAlgorithmicMedia"
# RFC 2606's reserved .invalid: a name that is ours without claiming anyone's domain.
DARKROOM_NS = "http://darkroom.invalid/ns/1.0/"
NS = {
    "x": "adobe:ns:meta/",
    "rdf": "http://www.w3.org/1999/02/22-rdf-syntax-ns#",
    "dc": "http://purl.org/dc/elements/1.1/",
    "xmp": "http://ns.adobe.com/xap/1.0/",
    "Iptc4xmpExt": "http://iptc.org/std/Iptc4xmpExt/2008-02-29/",
    "darkroom": DARKROOM_NS,
}
# A JPEG segment holds at most 65533 bytes; less the APP1 XMP header, this is the largest
# standard (non-extended) packet every reader accepts. Used for PNG and WebP too.
MAX_PACKET_BYTES = 65502
JPEG_XMP_HEADER = b"http://ns.adobe.com/xap/1.0/\x00"
PNG_XMP_KEYWORD = b"XML:com.adobe.xmp"

# darkroom JSON key -> darkroom: property, in the order they are written.
FIELDS = {
    "asset_id": "AssetId", "variant_id": "VariantId", "campaign": "Campaign", "run_id": "RunId",
    "product_id": "ProductId", "model": "Model", "model_version": "ModelVersion", "seed": "Seed",
    "channel": "Channel", "recipe": "Recipe",
}
APPROVAL_FIELDS = {"decision": "Approval", "reviewer": "ApprovedBy", "at": "ApprovedAt",
                   "note": "ApprovalNote"}

# Characters XML 1.0 cannot carry at all (a prompt could hold them).
_NOT_XML = re.compile("[\x00-\x08\x0b\x0c\x0e-\x1f\ufffe\uffff]")
_SEED = re.compile(r"(?:^|, )Seed: (-?\d+)(?:,|$)")


class XmpError(ValueError):
    """A packet that cannot be written into (or read from) this file."""


def _text(value) -> str:
    return _NOT_XML.sub("", str(value))


def seed_from_parameters(parameters: str) -> int | None:
    """The ``Seed:`` of an A1111 ``parameters`` text (its last line holds the settings)."""
    match = _SEED.search(parameters.rsplit("\n", 1)[-1])
    return int(match.group(1)) if match else None


def prompt_from_parameters(parameters: str) -> str:
    """The prompt of an A1111 ``parameters`` text: its lines before ``Negative prompt:`` and
    before the settings line."""
    lines = parameters.split("\n")[:-1] or [parameters]
    for i, line in enumerate(lines):
        if line.startswith("Negative prompt: "):
            return "\n".join(lines[:i])
    return "\n".join(lines)


def properties(darkroom: dict, parameters: str = "") -> dict[str, str]:
    """The ``darkroom:`` properties for a file's provenance, in writing order."""
    values = dict(darkroom)
    if "seed" not in values and (seed := seed_from_parameters(parameters)) is not None:
        values["seed"] = seed
    out = {name: _text(values[key]) for key, name in FIELDS.items() if values.get(key) not in (None, "")}
    mark = values.get("watermark") or {}
    if mark:
        out["Watermark"] = _text(mark.get("method", ""))
        out["WatermarkKey"] = _text(mark.get("key", ""))
    approval = values.get("approval") or {}
    out["Approval"] = "pending"  # until publish writes the decision in
    for key, name in APPROVAL_FIELDS.items():
        if approval.get(key) not in (None, ""):
            out[name] = _text(approval[key])
    return out


def title(darkroom: dict) -> str:
    parts = [darkroom.get("campaign"), darkroom.get("product_id"), darkroom.get("channel")]
    return " / ".join(str(p) for p in parts if p) or "Darkroom image"


def packet(darkroom: dict, *, description: str, parameters: str = "", creator_tool: str) -> bytes:
    """The XMP packet (UTF-8) for a file. ``description`` is the prompt, already cut to
    size by the caller (darkroom.imaging owns the length limits). Same input, same bytes."""
    attrs = [f'xmlns:{p}="{uri}"' for p, uri in NS.items() if p not in ("x", "rdf")]
    attrs.append(f"Iptc4xmpExt:DigitalSourceType={quoteattr(DIGITAL_SOURCE_TYPE)}")
    attrs.append(f"xmp:CreatorTool={quoteattr(_text(creator_tool))}")
    attrs += [f"darkroom:{k}={quoteattr(v)}" for k, v in properties(darkroom, parameters).items()]

    def alt(tag: str, value: str) -> str:
        return (f"   <dc:{tag}><rdf:Alt><rdf:li xml:lang=\"x-default\">{escape(_text(value))}"
                f"</rdf:li></rdf:Alt></dc:{tag}>\n")

    body = (
        '<?xpacket begin="\ufeff" id="W5M0MpCehiHzreSzNTczkc9d"?>\n'
        f'<x:xmpmeta xmlns:x="{NS["x"]}">\n'
        f' <rdf:RDF xmlns:rdf="{NS["rdf"]}">\n'
        '  <rdf:Description rdf:about=""\n    ' + "\n    ".join(attrs) + ">\n"
        + alt("title", title(darkroom)) + alt("description", description)
        + "  </rdf:Description>\n </rdf:RDF>\n</x:xmpmeta>\n"
        '<?xpacket end="r"?>'
    )
    data = body.encode("utf-8")
    if len(data) > MAX_PACKET_BYTES:
        raise XmpError(f"XMP packet is {len(data)} bytes, over the {MAX_PACKET_BYTES}-byte limit "
                       "of a JPEG segment; shorten the prompt or the ids")
    return data


def parse(data: bytes | str) -> dict:
    """What :func:`packet` wrote: ``{"title", "description", "digital_source_type",
    "creator_tool", "darkroom": {property: value}}``. Other writers' packets parse too (the
    keys they lack are absent). Raises :class:`XmpError` for a packet that is not XML."""
    text = data.decode("utf-8", "replace") if isinstance(data, bytes) else data
    if "<!DOCTYPE" in text or "<!ENTITY" in text:  # no entity tricks in a metadata packet
        raise XmpError("XMP packet declares a DOCTYPE or entities; refused")
    try:
        root = ElementTree.fromstring(text.strip().lstrip("\ufeff"))
    except ElementTree.ParseError as exc:
        raise XmpError(f"XMP packet is not well-formed XML: {exc}") from None
    out: dict = {"darkroom": {}}
    for desc in root.iter(f"{{{NS['rdf']}}}Description"):
        for name, value in desc.attrib.items():
            uri, _, local = name[1:].partition("}") if name.startswith("{") else ("", "", name)
            if uri == DARKROOM_NS:
                out["darkroom"][local] = value
            elif uri == NS["Iptc4xmpExt"] and local == "DigitalSourceType":
                out["digital_source_type"] = value
            elif uri == NS["xmp"] and local == "CreatorTool":
                out["creator_tool"] = value
        for tag in ("title", "description"):
            el = desc.find(f"dc:{tag}/rdf:Alt/rdf:li", NS)
            if el is not None:
                out[tag] = el.text or ""
        for child in desc:  # darkroom: properties written as elements by other tools
            if child.tag.startswith(f"{{{DARKROOM_NS}}}"):
                out["darkroom"][child.tag.split("}", 1)[1]] = child.text or ""
    return out


def extract(data: bytes) -> bytes | None:
    """The XMP packet of a PNG, JPEG or WebP file, or None. Reads the container only."""
    if data.startswith(b"\x89PNG\r\n\x1a\n"):
        for ctype, body, _start, _end in _png_chunks(data):
            if ctype == b"iTXt" and body.startswith(PNG_XMP_KEYWORD + b"\x00"):
                return _itxt_text(body)
            if ctype == b"IDAT":
                break
        return None
    if data.startswith(b"\xff\xd8"):
        for marker, body, _start, _end in _jpeg_segments(data):
            if marker == 0xE1 and body.startswith(JPEG_XMP_HEADER):
                return body[len(JPEG_XMP_HEADER):]
        return None
    if data[:4] == b"RIFF" and data[8:12] == b"WEBP":
        for fourcc, body, _start, _end in _webp_chunks(data):
            if fourcc == b"XMP ":
                return body
        return None
    return None


def replace(data: bytes, packet_bytes: bytes) -> bytes:
    """``data`` (PNG, JPEG or WebP) with its XMP packet replaced by ``packet_bytes`` (added
    when it has none). Pixels and every other chunk are kept byte for byte."""
    if data.startswith(b"\x89PNG\r\n\x1a\n"):
        return _png_replace(data, packet_bytes)
    if data.startswith(b"\xff\xd8"):
        return _jpeg_replace(data, packet_bytes)
    if data[:4] == b"RIFF" and data[8:12] == b"WEBP":
        return _webp_replace(data, packet_bytes)
    raise XmpError("not a PNG, JPEG or WebP file: cannot write XMP into it")


# -- PNG ---------------------------------------------------------------------------------

def _png_chunks(data: bytes):
    pos = 8
    while pos + 12 <= len(data):
        (length,) = struct.unpack(">I", data[pos:pos + 4])
        ctype = data[pos + 4:pos + 8]
        end = pos + 12 + length
        if end > len(data):
            raise XmpError("truncated PNG chunk")
        yield ctype, data[pos + 8:pos + 8 + length], pos, end
        if ctype == b"IEND":
            return
        pos = end


def _itxt_text(body: bytes) -> bytes:
    _keyword, rest = body.split(b"\x00", 1)
    compressed, _method, rest = rest[0], rest[1], rest[2:]
    _lang, _translated, text = rest.split(b"\x00", 2)
    return zlib.decompress(text) if compressed else text


def _png_chunk(ctype: bytes, body: bytes) -> bytes:
    return struct.pack(">I", len(body)) + ctype + body + struct.pack(">I", zlib.crc32(ctype + body))


def _png_replace(data: bytes, packet_bytes: bytes) -> bytes:
    new = _png_chunk(b"iTXt", PNG_XMP_KEYWORD + b"\x00\x00\x00\x00\x00" + packet_bytes)
    out, inserted = [data[:8]], False
    for ctype, body, start, end in _png_chunks(data):
        if ctype == b"iTXt" and body.startswith(PNG_XMP_KEYWORD + b"\x00"):
            continue
        if ctype == b"IDAT" and not inserted:  # readers stop looking at the pixel data
            out.append(new)
            inserted = True
        out.append(data[start:end])
    if not inserted:
        raise XmpError("PNG without image data")
    return b"".join(out)


# -- JPEG --------------------------------------------------------------------------------

def _jpeg_segments(data: bytes):
    """(marker, body, start, end) of each segment before the scan data."""
    pos = 2
    while pos + 4 <= len(data):
        if data[pos] != 0xFF:
            raise XmpError(f"JPEG marker expected at byte {pos}")
        marker = data[pos + 1]
        if marker == 0xFF:  # fill byte
            pos += 1
            continue
        if marker == 0xDA or marker == 0xD9:  # start of scan / end of image: headers are over
            return
        (length,) = struct.unpack(">H", data[pos + 2:pos + 4])
        end = pos + 2 + length
        if end > len(data):
            raise XmpError("truncated JPEG segment")
        yield marker, data[pos + 4:end], pos, end
        pos = end


def _jpeg_replace(data: bytes, packet_bytes: bytes) -> bytes:
    body = JPEG_XMP_HEADER + packet_bytes
    if len(body) + 2 > 0xFFFF:
        raise XmpError(f"XMP packet of {len(packet_bytes)} bytes does not fit a JPEG segment")
    new = b"\xff\xe1" + struct.pack(">H", len(body) + 2) + body
    head: list[bytes] = []
    insert_at, rest_at = 0, 2
    for marker, seg, start, end in _jpeg_segments(data):
        rest_at = end
        if marker == 0xE1 and seg.startswith(JPEG_XMP_HEADER):
            continue
        head.append(data[start:end])
        if marker in (0xE0, 0xE1):  # after JFIF and Exif, where readers look first
            insert_at = len(head)
    head.insert(insert_at, new)
    return data[:2] + b"".join(head) + data[rest_at:]


# -- WebP --------------------------------------------------------------------------------

def _webp_chunks(data: bytes):
    pos = 12
    while pos + 8 <= len(data):
        fourcc = data[pos:pos + 4]
        (size,) = struct.unpack("<I", data[pos + 4:pos + 8])
        end = pos + 8 + size + (size & 1)
        if pos + 8 + size > len(data):
            raise XmpError("truncated WebP chunk")
        yield fourcc, data[pos + 8:pos + 8 + size], pos, min(end, len(data))
        pos = end


def _webp_replace(data: bytes, packet_bytes: bytes) -> bytes:
    chunks = [(f, b) for f, b, _s, _e in _webp_chunks(data) if f != b"XMP "]
    if not chunks or chunks[0][0] != b"VP8X":
        raise XmpError("simple-format WebP (no VP8X header): Darkroom's encoder always writes "
                       "the extended format; re-encode the file with metadata")
    flags = chunks[0][1][0] | 0x04  # the XMP flag
    chunks[0] = (b"VP8X", bytes([flags]) + chunks[0][1][1:])
    chunks.append((b"XMP ", packet_bytes))  # after the image data and EXIF, as the spec orders
    body = b"".join(f + struct.pack("<I", len(b)) + b + (b"\x00" if len(b) & 1 else b"")
                    for f, b in chunks)
    return b"RIFF" + struct.pack("<I", 4 + len(body)) + b"WEBP" + body
