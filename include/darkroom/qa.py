"""Automated QA checks. A failed check is data (a qa_result row), never a task failure.

A check takes a :class:`Subject` (the file's bytes, the decoded image and what the asset
should be) and its configuration from the spec's QA rubric (a ``QACheck``: threshold, max,
review band, params), and returns a :class:`CheckResult`: the measured value, the threshold
it was held to, whether it passed, and a status:

``pass`` / ``fail``
    the value is on that side of the threshold;
``borderline``
    the value lies within ``review_band`` of the threshold (either side): a person decides
    (the asset becomes ``needs_review`` unless another check failed outright);
``not_run``
    the check could not run here (e.g. CLIP or NSFW weights not available locally). It is
    stored with ``passed = False`` and never counts as a pass: the asset becomes
    ``needs_review`` (or ``qa_failed`` when the check says ``if_not_run: fail``).

Image-local checks run in worker processes (:func:`analyse`); the near-duplicate check needs
the run's other hashes and runs in the parent against a :class:`HashIndex`.
"""

from __future__ import annotations

import functools
import io
import logging
import re
import time
from collections.abc import Callable, Iterable
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import imagehash
import numpy as np
from PIL import Image

from darkroom import cutout, imaging
from darkroom.config import BRAND_DIR

log = logging.getLogger("darkroom.qa")

PASS, FAIL, BORDERLINE, NOT_RUN = "pass", "fail", "borderline", "not_run"


@dataclass(frozen=True)
class CheckResult:
    check: str
    value: float | None
    threshold: float | None
    passed: bool
    detail: str = ""
    status: str = ""  # pass | fail | borderline | not_run; derived from ``passed`` when empty

    def __post_init__(self) -> None:
        if not self.status:
            object.__setattr__(self, "status", PASS if self.passed else FAIL)


@dataclass
class Subject:
    """One image under test and what it is supposed to be."""

    data: bytes
    img: Image.Image
    format: str  # as the file says: png, jpeg, webp, ...
    width: int = 0  # expected
    height: int = 0
    asset_id: str | None = None
    seed: int | None = None
    prompt: str = ""

    @functools.cached_property
    def small(self) -> Image.Image:
        # Luminance at most ~512px (box-reduced by an integer factor): global statistics and
        # the perceptual hash do not need more, and a 1024px image's checks stay cheap.
        # Thresholds (sharpness above all) are therefore on this scale.
        img = self.img.convert("L")
        factor = -(-max(img.size) // 512)
        return img.reduce(factor) if factor > 1 else img

    @functools.cached_property
    def gray(self) -> np.ndarray:
        return np.asarray(self.small, dtype=np.float32)

    @functools.cached_property
    def hist(self) -> np.ndarray:
        """Share of pixels at each luminance level 0-255."""
        counts = np.bincount(np.asarray(self.small).ravel(), minlength=256).astype(np.float64)
        return counts / max(1.0, counts.sum())

    @functools.cached_property
    def provenance(self) -> imaging.Provenance | None:
        try:
            return imaging.read_provenance(self.data)
        except Exception:  # a damaged chunk reads as "no provenance", which the check reports
            return None

    @functools.cached_property
    def phash(self) -> str:
        return perceptual_hash(self.small)


def _measured(name: str, value: float, threshold: float, cfg, *, higher_is_better: bool,
              what: str) -> CheckResult:
    """Compare ``value`` with ``threshold``; inside ``cfg.review_band`` it is borderline."""
    passed = value >= threshold if higher_is_better else value <= threshold
    band = float(getattr(cfg, "review_band", 0.0) or 0.0)
    op = (">=" if passed else "<") if higher_is_better else ("<=" if passed else ">")
    detail = f"{what} {value:.4g} {op} {threshold:g}"
    status = PASS if passed else FAIL
    if band and abs(value - threshold) <= band:
        status = BORDERLINE
        detail += f" (within review band {band:g})"
    return CheckResult(name, round(float(value), 4), float(threshold), passed, detail, status)


def _t(cfg, default: float) -> float:
    return default if cfg.threshold is None else float(cfg.threshold)


# -- technical --------------------------------------------------------------------------

def check_dimensions(s: Subject, cfg) -> CheckResult:
    ok = s.img.size == (s.width, s.height)
    return CheckResult("dimensions", float(s.img.width * s.img.height), float(s.width * s.height), ok,
                       f"{s.img.width}x{s.img.height}" + ("" if ok else f", expected {s.width}x{s.height}"))


def check_format(s: Subject, cfg) -> CheckResult:
    allowed = [f.lower() for f in cfg.params.get("formats", ["png"])]
    ok = s.format in allowed
    return CheckResult("format", None, None, ok,
                       f"format {s.format}" + ("" if ok else f" not in {allowed}"))


def check_file_size(s: Subject, cfg) -> CheckResult:
    """Bytes on disk within [threshold, max]: tiny files are empty renders, huge ones bombs."""
    low = _t(cfg, 512)
    high = float(cfg.max) if cfg.max is not None else 50e6
    n = float(len(s.data))
    ok = low <= n <= high
    return CheckResult("file_size", n, low, ok,
                       f"{int(n)} bytes" + ("" if ok else f" outside [{int(low)}, {int(high)}]"))


def check_colour_mode(s: Subject, cfg) -> CheckResult:
    allowed = cfg.params.get("modes", ["RGB"])
    ok = s.img.mode in allowed
    return CheckResult("colour_mode", None, None, ok,
                       f"mode {s.img.mode}" + ("" if ok else f" not in {allowed}"))


_SEED = re.compile(r"(?:^|, )Seed: (\d+)")
_SIZE = re.compile(r"(?:^|, )Size: (\d+)x(\d+)")


def check_provenance(s: Subject, cfg) -> CheckResult:
    """The ``parameters`` and ``darkroom`` records exist and agree with the catalog row."""
    prov = s.provenance
    if prov is None:
        return CheckResult("provenance", None, None, False, "provenance chunks missing")
    problems = []
    if s.asset_id and prov.darkroom.get("asset_id") != s.asset_id:
        problems.append(f"darkroom.asset_id is {prov.darkroom.get('asset_id')!r}, expected {s.asset_id!r}")
    seed = _SEED.search(prov.parameters)
    if s.seed is not None and (seed is None or int(seed.group(1)) != s.seed):
        problems.append(f"parameters Seed is {seed.group(1) if seed else 'missing'}, expected {s.seed}")
    size = _SIZE.search(prov.parameters)
    if size is None or (int(size.group(1)), int(size.group(2))) != s.img.size:
        problems.append(f"parameters Size is {size.group(0).strip(', ') if size else 'missing'}, "
                        f"image is {s.img.width}x{s.img.height}")
    return CheckResult("provenance", None, None, not problems, "; ".join(problems))


# -- pixels -----------------------------------------------------------------------------

def check_not_blank(s: Subject, cfg) -> CheckResult:
    """Standard deviation of luminance: near zero means a blank or single-colour image."""
    levels = np.arange(256)
    mean = float((s.hist * levels).sum())
    std = float(np.sqrt((s.hist * (levels - mean) ** 2).sum()))
    return _measured("not_blank", std, _t(cfg, 4.0), cfg, higher_is_better=True,
                     what="luminance std")


def check_sharpness(s: Subject, cfg) -> CheckResult:
    """Variance of the Laplacian: low means blurry."""
    g = s.gray
    lap = -4 * g[1:-1, 1:-1] + g[:-2, 1:-1] + g[2:, 1:-1] + g[1:-1, :-2] + g[1:-1, 2:]
    var = float(lap.var()) if lap.size else 0.0
    return _measured("sharpness", var, _t(cfg, 20.0), cfg, higher_is_better=True,
                     what="Laplacian variance")


def check_exposure(s: Subject, cfg) -> CheckResult:
    """Share of pixels clipped to black or white (the larger of the two): blown out or crushed."""
    clipped = max(float(s.hist[:3].sum()), float(s.hist[253:].sum()))
    return _measured("exposure", clipped, _t(cfg, 0.25), cfg, higher_is_better=False,
                     what="clipped pixel share")


def check_contrast(s: Subject, cfg) -> CheckResult:
    """Spread between the 1st and 99th luminance percentiles: low means washed out."""
    cdf = np.cumsum(s.hist)
    lo, hi = int(np.searchsorted(cdf, 0.01)), int(np.searchsorted(cdf, 0.99))
    return _measured("contrast", float(hi - lo), _t(cfg, 24.0), cfg, higher_is_better=True,
                     what="p1-p99 luminance spread")


# -- brand consistency ------------------------------------------------------------------

@dataclass(frozen=True)
class BrandReference:
    name: str
    phash: int
    palette: np.ndarray  # (k, 3) RGB
    weights: np.ndarray  # (k,)


def palette(img: Image.Image, colours: int = 6) -> tuple[np.ndarray, np.ndarray]:
    """Dominant colours (median cut on a thumbnail) and their shares."""
    small = img.convert("RGB")
    small.thumbnail((64, 64), Image.Resampling.BILINEAR)
    q = small.quantize(colors=colours, method=Image.Quantize.MEDIANCUT)
    pal = np.asarray(q.getpalette()[: 3 * colours], dtype=np.float32).reshape(-1, 3)
    counts = np.bincount(np.asarray(q).ravel(), minlength=len(pal))[: len(pal)].astype(np.float32)
    keep = counts > 0
    return pal[keep], counts[keep] / counts[keep].sum()


def palette_distance(a: tuple[np.ndarray, np.ndarray], b: tuple[np.ndarray, np.ndarray]) -> float:
    """Symmetric, share-weighted mean RGB distance to the nearest colour of the other palette."""
    (pa, wa), (pb, wb) = a, b
    d = np.linalg.norm(pa[:, None, :] - pb[None, :, :], axis=2)
    return float(((d.min(axis=1) * wa).sum() + (d.min(axis=0) * wb).sum()) / 2)


@functools.lru_cache(maxsize=8)
def brand_references(folder: str) -> tuple[BrandReference, ...]:
    refs = []
    for p in sorted(Path(folder).glob("*.png")):
        with Image.open(p) as img:
            img.load()
            pal, w = palette(img)
            refs.append(BrandReference(p.name, int(perceptual_hash(img), 16), pal, w))
    return tuple(refs)


def _references(cfg) -> tuple[BrandReference, ...] | str:
    folder = Path(cfg.params.get("references") or BRAND_DIR / "references")
    refs = brand_references(str(folder))
    return refs or f"no reference PNGs in {folder}; add some or set params.references"


def check_brand_hash(s: Subject, cfg) -> CheckResult:
    """Hamming distance of the perceptual hash to the nearest brand reference image."""
    refs = _references(cfg)
    if isinstance(refs, str):
        return CheckResult("brand_hash", None, cfg.threshold, False, refs, NOT_RUN)
    h = int(s.phash, 16)
    best = min(refs, key=lambda r: (h ^ r.phash).bit_count())
    return _measured("brand_hash", float((h ^ best.phash).bit_count()), _t(cfg, 28), cfg,
                     higher_is_better=False, what=f"phash distance to {best.name}")


#: Measured on the demo model's pictures against the rendered references of include/brand
#: (docs/benchmarks.md, "Brand references"): on-brand studio pictures 10-32, beach picnics
#: (another campaign's look) 47-57. The earlier 60 passed both.
BRAND_PALETTE_THRESHOLD = 40.0


def check_brand_palette(s: Subject, cfg) -> CheckResult:
    """Colour-palette distance (RGB units, 0-441) to the nearest brand reference image."""
    refs = _references(cfg)
    if isinstance(refs, str):
        return CheckResult("brand_palette", None, cfg.threshold, False, refs, NOT_RUN)
    mine = palette(s.img)
    dists = {r.name: palette_distance(mine, (r.palette, r.weights)) for r in refs}
    name = min(dists, key=dists.get)
    return _measured("brand_palette", dists[name], _t(cfg, BRAND_PALETTE_THRESHOLD), cfg,
                     higher_is_better=False, what=f"palette distance to {name}")


# -- learned checks (torch; run only with local weights) --------------------------------

def _model_path(cfg, name: str) -> Path | str:
    raw = cfg.params.get("model_path")
    if not raw:
        return (f"no local weights configured; set qa.checks.{name}.params.model_path to a folder "
                "saved with save_pretrained")
    p = Path(raw).expanduser()
    if not p.is_dir():
        return f"weights folder {p} does not exist (qa.checks.{name}.params.model_path)"
    return p


@functools.lru_cache(maxsize=2)
def _clip(path: str):
    # transformers (and torch) take seconds to import: only a spec with local CLIP weights pays.
    from transformers import CLIPModel, CLIPProcessor

    return CLIPModel.from_pretrained(path, local_files_only=True).eval(), \
        CLIPProcessor.from_pretrained(path, local_files_only=True)


@functools.lru_cache(maxsize=2)
def _classifier(path: str):
    # transformers: only a spec with local NSFW-classifier weights imports it.
    from transformers import pipeline

    return pipeline("image-classification", model=path, device="cpu")


def check_clip_score(s: Subject, cfg) -> CheckResult:
    """Text-image agreement: 100 x cosine similarity of CLIP embeddings of image and prompt."""
    path = _model_path(cfg, "clip_score")
    if isinstance(path, str):
        return CheckResult("clip_score", None, cfg.threshold, False, path, NOT_RUN)
    import torch  # loaded with the weights just above: no cost of its own here

    model, proc = _clip(str(path))
    inputs = proc(text=[s.prompt], images=s.img.convert("RGB"), return_tensors="pt", padding=True,
                  truncation=True)
    with torch.no_grad():
        out = model(**inputs)
    img_e = out.image_embeds / out.image_embeds.norm(dim=-1, keepdim=True)
    txt_e = out.text_embeds / out.text_embeds.norm(dim=-1, keepdim=True)
    score = float((img_e * txt_e).sum()) * 100
    return _measured("clip_score", score, _t(cfg, 22.0), cfg, higher_is_better=True, what="CLIP score")


def check_prompt_match(s: Subject, cfg) -> CheckResult:
    """Does the picture show the product type and colour its prompt names? The probability the
    offline classifier (darkroom.prompt_match) gives the asked labels together; a prompt that
    names no type or colour it knows passes with nothing measured."""
    path = _model_path(cfg, "prompt_match")
    if isinstance(path, str):
        return CheckResult("prompt_match", None, cfg.threshold, False, path, NOT_RUN)
    from darkroom.prompt_match import prompt_match

    m = prompt_match(s.prompt, s.img, path)
    if not m.applicable:
        return CheckResult("prompt_match", None, cfg.threshold, True,
                           "the prompt names no product type or colour the classifier knows")
    result = _measured("prompt_match", m.probability, _t(cfg, 0.2), cfg, higher_is_better=True,
                       what="P(asked " + " + ".join(f"{h} {m.asked[h]}" for h in m.probabilities) + ")")
    if result.status == PASS:
        return result
    read = ", ".join(f"{h} {label} ({p:.0%})" for h, (label, p) in m.read.items())
    return CheckResult(result.check, result.value, result.threshold, result.passed,
                       f"{result.detail}; reads as {read}", result.status)


def check_nsfw(s: Subject, cfg) -> CheckResult:
    """Probability of the classifier's unsafe label (``params.label``, default ``nsfw``)."""
    path = _model_path(cfg, "nsfw")
    if isinstance(path, str):
        return CheckResult("nsfw", None, cfg.threshold, False, path, NOT_RUN)
    label = cfg.params.get("label", "nsfw").lower()
    ranked = _classifier(str(path))(s.img.convert("RGB"), top_k=None)
    scores = {r["label"].lower(): r["score"] for r in ranked}
    return _measured("nsfw", float(scores.get(label, 0.0)), _t(cfg, 0.5), cfg, higher_is_better=False,
                     what=f"P({label})")


# -- text in the picture ------------------------------------------------------------------

#: Text the prompt asks for is written in double quotes (``a poster reading "SUMMER SALE"``).
_ASKED = re.compile(r'"([^"]+)"|\u201c([^\u201d]+)\u201d')


def _letters(text: str) -> str:
    # The OCR model drops spaces between words (trained on Chinese): compare letters only.
    return "".join(ch for ch in text.casefold() if ch.isalnum())


@functools.cache
def _ocr():
    """PP-OCRv4 detection and recognition (rapidocr-onnxruntime, Apache-2.0), weights in the
    wheel, loaded once per worker process; None when the package is missing."""
    try:
        from rapidocr_onnxruntime import RapidOCR
    except ImportError:
        return None
    return RapidOCR(use_cls=False)  # upright text is what a generator draws


def read_text(img: Image.Image) -> list[tuple[str, float, float]]:
    """``(text, confidence, share of the image's area)`` for each line of text OCR finds."""
    engine = _ocr()
    found, _ = engine(np.asarray(img.convert("RGB")), use_cls=False)
    area = float(img.width * img.height)
    out = []
    for box, text, score in found or ():
        pts = np.asarray(box, dtype=np.float64)  # a quadrilateral: its area by the shoelace formula
        quad = 0.5 * abs(np.dot(pts[:, 0], np.roll(pts[:, 1], 1)) - np.dot(pts[:, 1], np.roll(pts[:, 0], 1)))
        out.append((text, float(score), quad / area))
    return out


def check_no_text(s: Subject, cfg) -> CheckResult:
    """Share of the picture covered by text the prompt did not ask for: diffusion models draw
    gibberish lettering and fake logos. Runs on the original, so the overlays postprocess adds
    are never seen. Lines read with less than ``params.min_confidence`` (default 0.6), or with
    fewer than ``params.min_chars`` letters and digits (default 2: a ring or a handle reads as
    "O"), are shapes, not text; lines whose letters the prompt quotes (``"SUMMER SALE"``) were
    asked for. Threshold: the largest text share that passes (default 0.002, 0.2% of the area)."""
    if _ocr() is None:
        return CheckResult("no_text", None, cfg.threshold, False,
                           "rapidocr-onnxruntime is not installed (`make .venv/.installed`)", NOT_RUN)
    min_conf = float(cfg.params.get("min_confidence", 0.6))
    min_chars = int(cfg.params.get("min_chars", 2))
    asked = [_letters(a or b) for a, b in _ASKED.findall(s.prompt)]
    lines = [(text, conf, share) for text, conf, share in read_text(s.img)
             if conf >= min_conf and len(_letters(text)) >= min_chars
             and not any(_letters(text) in q for q in asked)]
    result = _measured("no_text", sum(share for *_, share in lines), _t(cfg, 0.002), cfg,
                       higher_is_better=False, what="text area share")
    if not lines:
        return result
    said = ", ".join(f"{text!r} ({conf:.2f})" for text, conf, _ in lines[:5])
    return CheckResult(result.check, result.value, result.threshold, result.passed,
                       f"{result.detail}: {said}"[:300], result.status)


def check_cutout(s: Subject, cfg) -> CheckResult:
    """Share of the frame U²-Net's product mask keeps (darkroom.cutout), for channels that
    remove the background: within [threshold, max] (default 0.03-0.9); near 0 the mask found no
    product, near 1 it kept the backdrop too."""
    try:
        share = cutout.measure(cutout.mask(s.img)).foreground
    except cutout.CutoutError as exc:
        return CheckResult("cutout", None, cfg.threshold, False, str(exc), NOT_RUN)
    low, high = _t(cfg, 0.03), float(cfg.max) if cfg.max is not None else 0.9
    if share > high:
        return _measured("cutout", share, high, cfg, higher_is_better=False, what="foreground share")
    return _measured("cutout", share, low, cfg, higher_is_better=True, what="foreground share")


# -- near-duplicates --------------------------------------------------------------------

class HashIndex:
    """64-bit perceptual hashes, searchable by Hamming distance without a full scan.

    Multi-index hashing: the hash is cut into ``radius + 1`` bands; two hashes within
    ``radius`` bits of each other agree exactly on at least one band (pigeonhole), so a query
    only counts bits on the hashes sharing a band value with it. Each band is a sorted numpy
    array (a binary search finds the matching run); hashes added since the last build sit in a
    short list that is scanned directly and folded in once it grows.
    """

    REBUILD_AT = 2048

    def __init__(self, radius: int = 6):
        if not 0 <= radius < 32:
            raise ValueError(f"radius {radius} must be in [0, 31]")
        self.radius = radius
        bands = radius + 1
        edges = [round(i * 64 / bands) for i in range(bands + 1)]
        self._bands = [(lo, (1 << (hi - lo)) - 1) for lo, hi in zip(edges, edges[1:], strict=False)]
        self._hashes = np.zeros(0, dtype=np.uint64)  # built part
        self._sorted: list[tuple[np.ndarray, np.ndarray]] = []  # per band: (band values, order)
        self._keys: list[str] = []  # keys of built part, then of recent ones
        self._recent: list[int] = []

    def __len__(self) -> int:
        return len(self._keys)

    def add(self, key: str, phash: str | int) -> None:
        self._recent.append(int(phash, 16) if isinstance(phash, str) else int(phash))
        self._keys.append(key)
        # Rebuild when the list is long relative to the built part: amortized O(log n) per add.
        if len(self._recent) >= max(self.REBUILD_AT, len(self._hashes) // 4):
            self._build()

    def add_many(self, items: Iterable[tuple[str, str | int]]) -> None:
        """Bulk load (e.g. from the catalog), built once at the end."""
        for key, phash in items:
            self._recent.append(int(phash, 16) if isinstance(phash, str) else int(phash))
            self._keys.append(key)
        if self._recent:
            self._build()

    def _build(self) -> None:
        self._hashes = np.concatenate([self._hashes, np.array(self._recent, dtype=np.uint64)])
        self._recent = []
        self._sorted = []
        for shift, mask in self._bands:
            values = (self._hashes >> np.uint64(shift)) & np.uint64(mask)
            order = np.argsort(values, kind="stable")
            self._sorted.append((values[order], order))

    def nearest(self, phash: str | int, exclude: Iterable[str] = ()) -> tuple[str, int] | None:
        """The closest stored hash within ``radius`` bits, as (key, distance), or None."""
        h = int(phash, 16) if isinstance(phash, str) else int(phash)
        skip = set(exclude)
        best: tuple[str, int] | None = None
        if len(self._hashes):
            runs = []
            for (shift, mask), (values, order) in zip(self._bands, self._sorted, strict=True):
                v = (h >> shift) & mask
                # uint64 on both sides: a Python int list would promote the array to float64.
                lo, hi = np.searchsorted(values, np.array([v, v + 1], dtype=np.uint64))
                if hi > lo:
                    runs.append(order[lo:hi])
            if runs:
                cand = np.concatenate(runs)  # a hash may appear twice: harmless, cheaper than unique
                dist = np.bitwise_count(self._hashes[cand] ^ np.uint64(h))
                close = np.nonzero(dist <= self.radius)[0]
                for i in close[np.argsort(dist[close], kind="stable")]:
                    key = self._keys[int(cand[i])]
                    if key not in skip:
                        best = (key, int(dist[i]))
                        break
        base = len(self._hashes)
        for j, other in enumerate(self._recent):
            d = (h ^ other).bit_count()
            if d <= self.radius and (best is None or d < best[1]) and self._keys[base + j] not in skip:
                best = (self._keys[base + j], d)
        return best


def check_duplicate(phash: str | None, index: HashIndex, cfg, *, exclude: Iterable[str] = ()) -> CheckResult:
    """No earlier image of the run or approved image of the campaign within ``threshold`` bits."""
    t = int(_t(cfg, 6))
    if phash is None:
        return CheckResult("duplicate", None, float(t), False, "no perceptual hash (image unreadable)")
    hit = index.nearest(phash, exclude)
    if hit is None or hit[1] > t:
        return CheckResult("duplicate", None if hit is None else float(hit[1]), float(t), True,
                           f"no stored hash within {t} bits")
    key, d = hit
    return CheckResult("duplicate", float(d), float(t), False,
                       f"phash {d} bits from asset {key} (threshold {t}): near-duplicate")


# -- registry and running ----------------------------------------------------------------

CHECKS: dict[str, Callable[[Subject, Any], CheckResult]] = {
    "dimensions": check_dimensions,
    "format": check_format,
    "file_size": check_file_size,
    "colour_mode": check_colour_mode,
    "provenance": check_provenance,
    "not_blank": check_not_blank,
    "sharpness": check_sharpness,
    "exposure": check_exposure,
    "contrast": check_contrast,
    "brand_hash": check_brand_hash,
    "brand_palette": check_brand_palette,
    "clip_score": check_clip_score,
    "prompt_match": check_prompt_match,
    "nsfw": check_nsfw,
    "no_text": check_no_text,
    "cutout": check_cutout,
}
# Checks that need state beyond one image; the caller runs them (see darkroom.stages.qa).
CONTEXT_CHECKS = {"duplicate": check_duplicate}
# The spec checks rubrics against darkroom.spec.CHECK_NAMES (it imports no engine); a test
# holds the two lists equal.
ALL_CHECKS = sorted({*CHECKS, *CONTEXT_CHECKS})


def run_checks(subject: Subject, rubric: dict) -> list[CheckResult]:
    """Run the enabled image-local checks of a rubric ({name: QACheck}).

    A check that raises becomes a failed result naming the error: one odd image never stops
    the batch.
    """
    out = []
    for name, cfg in rubric.items():
        if not cfg.enabled or name not in CHECKS:
            continue
        try:
            out.append(CHECKS[name](subject, cfg))
        except Exception as exc:
            log.exception("QA check %s crashed", name)
            out.append(CheckResult(name, None, cfg.threshold, False,
                                   f"check crashed: {type(exc).__name__}: {exc}"[:300]))
    return out


@dataclass
class Analysis:
    """What a worker returns for one image: results of the local checks and its hash."""

    results: list[CheckResult]
    phash: str | None
    seconds: float = 0.0


def analyse(data: bytes, rubric: dict, *, width: int, height: int, asset_id: str | None = None,
            seed: int | None = None, prompt: str = "") -> Analysis:
    """Decode safely and run the image-local checks. Picklable in and out (process pools)."""
    started = time.process_time()
    try:
        img, fmt = imaging.decode_with_format(data)
    except imaging.BadImage as exc:
        return Analysis([CheckResult("readable", None, None, False, str(exc)[:300])], None,
                        time.process_time() - started)
    subject = Subject(data, img, fmt, width, height, asset_id, seed, prompt)
    results = run_checks(subject, rubric)
    try:
        phash = subject.phash
    except Exception as exc:  # pragma: no cover - decoded images always hash
        results.append(CheckResult("readable", None, None, False, f"cannot hash: {exc}"))
        phash = None
    return Analysis(results, phash, time.process_time() - started)


def outcome(results: list[CheckResult], rubric: dict) -> tuple[str, list[str]]:
    """The asset's status from its results: ``qa_passed``, ``qa_failed`` or ``needs_review``,
    and the reasons (every failing check; then borderline / not-run ones)."""
    failed = [r for r in results if r.status == FAIL]
    not_run = [r for r in results if r.status == NOT_RUN]
    hard_not_run = [r for r in not_run
                    if getattr(rubric.get(r.check), "if_not_run", "needs_review") == "fail"]
    review = [r for r in results if r.status == BORDERLINE] + [r for r in not_run if r not in hard_not_run]
    reasons = [f"{r.check}: {r.detail}" for r in failed + hard_not_run]
    if reasons:
        return "qa_failed", reasons
    if review:
        return "needs_review", [f"{r.check} {r.status}: {r.detail}" for r in review]
    return "qa_passed", []


def perceptual_hash(img: Image.Image) -> str:
    return str(imagehash.phash(img))


def image_bytes(img: Image.Image, fmt: str = "PNG", **kw) -> bytes:
    """Encode without provenance (tests and benchmarks craft inputs with this)."""
    buf = io.BytesIO()
    img.save(buf, format=fmt, **kw)
    return buf.getvalue()
