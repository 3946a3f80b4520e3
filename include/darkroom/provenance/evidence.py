"""What a file carries about its origin, and how close it comes to a catalogued one: the pure
half of ``darkroom verify`` (darkroom.stages.verify reads the catalog and answers).

Evidence, strongest first:

1. the bytes: identical to a file Darkroom published (or made), by SHA-256;
2. Content Credentials (C2PA): signed; ``trusted`` when they chain to our trust anchors,
   ``invalid`` when the file changed after signing;
3. metadata anyone can write or strip: XMP ``darkroom:AssetId``, the EXIF / PNG chunks;
4. the invisible watermark's key and the perceptual hash, for a file whose metadata is gone:
   matched when the chance that an unrelated image comes this close to some catalogued file
   is under :data:`MAX_FALSE_MATCH` (the catalog's size counted; bits treated as
   independent, an estimate), and only when the next best asset is at least
   :data:`MIN_MARGIN` times less likely. :func:`closest_asset` compares the file with every
   catalogued derivative and original: linear in the catalog's size (not an index lookup).
"""

from __future__ import annotations

import math
from dataclasses import dataclass, field

import imagehash

from darkroom import imaging
from darkroom.provenance import credentials, watermark, xmp
from darkroom.storage import sha256_bytes

MAX_FALSE_MATCH = 1e-3  # accepted chance that the best match is a coincidence
MIN_MARGIN = 1e3  # how much likelier the best asset must be than the runner-up
WATERMARK_FOUND = 6  # bits wrong, at most, to call the asset's mark present (random: ~16)


@dataclass
class Evidence:
    """What the file itself carries."""

    sha256: str
    bytes: int
    format: str | None = None
    width: int | None = None
    height: int | None = None
    credentials: dict | None = None  # credentials.Credentials.to_dict()
    xmp: dict | None = None  # xmp.parse()
    embedded: dict | None = None  # {"parameters", "darkroom"} from PNG chunks or EXIF
    watermark_keys: list[str] = field(default_factory=list)  # one per mark (watermark.decode)
    phash: str | None = None
    problems: list[str] = field(default_factory=list)


@dataclass
class Match:
    how: str  # sha256 | content credentials | xmp | embedded metadata | watermark + phash | phash
    asset_id: str
    channel: str  # a derivative's channel, or "original"
    exact: bool  # byte-identical to the file Darkroom published (or made)
    detail: str = ""


def read(data: bytes, anchors: bytes | None) -> Evidence:
    """Every piece of evidence in ``data``; what cannot be read is listed in ``problems``."""
    ev = Evidence(sha256=sha256_bytes(data), bytes=len(data))
    try:
        img, ev.format = imaging.decode_with_format(data)
    except imaging.BadImage as exc:
        ev.problems.append(f"not a readable image: {exc}")
        return ev
    ev.width, ev.height = img.size
    ev.credentials = credentials.read(data, anchors).to_dict()
    try:
        packet = xmp.extract(data)
        ev.xmp = xmp.parse(packet) if packet else None
    except xmp.XmpError as exc:
        ev.problems.append(f"XMP unreadable: {exc}")
    try:
        prov = imaging.read_provenance(data)
        ev.embedded = {"parameters": prov.parameters, "darkroom": prov.darkroom} if prov else None
    except Exception as exc:  # other writers' EXIF can be anything
        ev.problems.append(f"embedded metadata unreadable: {type(exc).__name__}: {exc}")
    ev.phash = str(imagehash.phash(img))
    ev.watermark_keys = watermark.decode(img)
    return ev


def claimed_ids(ev: Evidence) -> dict[str, str]:
    """Asset ids the file's metadata names, by where they were found (signed first)."""
    out = {}
    approval = (ev.credentials or {}).get("approval") or {}
    if (ev.credentials or {}).get("state") in ("trusted", "valid") and approval.get("asset_id"):
        out["content credentials"] = approval["asset_id"]
    if ev.xmp and ev.xmp["darkroom"].get("AssetId"):
        out["xmp"] = ev.xmp["darkroom"]["AssetId"]
    if ev.embedded and ev.embedded["darkroom"].get("asset_id"):
        out["embedded metadata"] = ev.embedded["darkroom"]["asset_id"]
    return out


def claimed_channel(ev: Evidence) -> str | None:
    approval = (ev.credentials or {}).get("approval") or {}
    return (approval.get("channel") or (ev.xmp or {}).get("darkroom", {}).get("Channel")
            or ((ev.embedded or {}).get("darkroom") or {}).get("channel"))


def chance(distance: int, bits: int) -> float:
    """P(two random ``bits``-bit strings differ in at most ``distance`` bits)."""
    return sum(math.comb(bits, i) for i in range(distance + 1)) / 2 ** bits


def phash_distance(a: str, b: str) -> int:
    return (int(a, 16) ^ int(b, 16)).bit_count()


def closest_asset(ev: Evidence, catalogued: list[tuple[str, str, str | None, str]]) -> Match | None:
    """The asset whose derivative (or original) the watermark key and perceptual hash point
    at, among ``catalogued`` (asset id, channel, watermark key, phash), when the chance of a
    coincidence is small enough for their number."""
    if ev.phash is None or not catalogued:
        return None
    best: dict[str, tuple] = {}  # asset id -> its closest file (chance, channel, d_k, d_p)
    for asset_id, channel, key, phash in catalogued:
        d_p = phash_distance(ev.phash, phash)
        d_k = watermark.closest(ev.watermark_keys, key) if ev.watermark_keys and key else None
        # The better of the marks read: as if a random image had as many tries.
        p_k = min(1.0, len(ev.watermark_keys) * chance(d_k, watermark.BITS)) if d_k is not None else 1.0
        p = chance(d_p, 64) * p_k
        if asset_id not in best or p < best[asset_id][0]:
            best[asset_id] = (p, channel, d_k, d_p)
    ranked = sorted(best.items(), key=lambda item: item[1][0])
    asset_id, (p, channel, d_k, d_p) = ranked[0]
    runner_up = ranked[1][1][0] if len(ranked) > 1 else 1.0
    expected = p * len(catalogued)
    # Pictures from one campaign look alike, so their hash bits are not independent: besides
    # the estimate, the best asset must stand far apart from the next one, or no claim is made.
    if expected >= MAX_FALSE_MATCH or runner_up < p * MIN_MARGIN:
        return None
    how = "watermark + phash" if d_k is not None else "phash"
    key = f"watermark key {d_k} of {watermark.BITS} bits off, " if d_k is not None else ""
    return Match(how, asset_id, channel, False,
                 f"{key}perceptual hash {d_p} of 64 bits off; chance of a coincidence among "
                 f"{len(catalogued)} catalogued files: 1 in {1 / max(expected, 1e-300):.3g}")
