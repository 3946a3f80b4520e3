"""The invisible mark: a 32-bit key derived from the asset id, hidden in a derivative's pixels,
so a file whose metadata was stripped still leads back to its asset.

Two marks carry the same key, both from invisible-watermark, because measurement showed
each failing where the other holds (docs/benchmarks.md, "Provenance"; 1000x1000 images):

- RivaGAN (a learned encoder/decoder, 32 bits), run on a 256x256 copy: its change there is
  upscaled and added to the full-size pixels; decoding reads a 256x256 copy again. On
  photographic and flat studio test images 0-9 of 32 bits came back wrong after nothing, JPEG
  q75 or WebP q85 (it depends on the key and the picture) and 3-17 after a 10% crop: it
  survives some crops, not reliably; it holds on white backgrounds. It fails on busy texture
  (the tiny demo model's noise: 11-17 bits wrong: the decoder reads the picture, not the
  mark). At half strength its faint halo on flat backdrops halves, but it read 5-12 bits
  wrong with no attack at all. ~0.4 s CPU each way.
- dwtDctSvd (DCT + SVD on the chroma's wavelet band), run on a 512x512 copy the same way:
  exact (0 bits wrong) after nothing, JPEG q75, WebP q85, a 50% downscale on textured and
  photographic images, the tiny model's noise included; lost after any crop (its blocks no
  longer line up) and on large white areas. ~0.07 s CPU.

Full-frame use was worse on every count: RivaGAN on the whole 1000x1000 frame took ~5 s and
got 2-12 bits wrong; dwtDctSvd on it lost JPEG q75 and every bit on white backgrounds.
Verification reads both and takes the closer key.

Limits, stated: a few bits may come back wrong, so matching is by Hamming distance and is
weighed with a perceptual hash (darkroom.provenance.evidence); crops beyond ~10%, rotation,
mirroring, heavy filters and images shrunk below 256 px lose both marks; derivatives whose
short side is under 256 px get none (the library refuses them). The marks change pixel values
slightly (PSNR ~37-40 dB; side by side with the unmarked file, a faint halo or tint can be
seen on flat backdrops, nothing on textured pictures), so a "pure white" background is no
longer exactly #ffffff: switch the mark off per channel with ``watermark: false`` where a
marketplace demands that. The key is not a secret:
it identifies, it does not authenticate (C2PA does that).
"""

from __future__ import annotations

import hashlib
import multiprocessing
import os
from functools import lru_cache

import numpy as np
from PIL import Image

METHOD = "rivagan@256+dwtdctsvd@512/32"  # recorded in the catalog and each derivative's provenance
BITS = 32
RIVA_SIDE = 256
SVD_SIDE = 512
MIN_SIDE = 256


def key_for(asset_id: str) -> str:
    """The asset's watermark key: 32 bits of a hash of its id, as 8 hex digits."""
    return hashlib.sha256(f"darkroom-watermark:{asset_id}".encode()).hexdigest()[: BITS // 4]


def can_carry(size: tuple[int, int]) -> bool:
    return min(size) >= MIN_SIDE


def distance(a: str, b: str) -> int:
    """Bits that differ between two keys."""
    return (int(a, 16) ^ int(b, 16)).bit_count()


def _bits(key: str) -> list[int]:
    return [int(b) for b in bin(int(key, 16))[2:].zfill(BITS)]


def _key(bits) -> str:
    return f"{int(''.join(str(int(b)) for b in bits), 2):0{BITS // 4}x}"


@lru_cache(maxsize=1)
def _riva():
    """invisible-watermark's RivaGAN with its ONNX sessions loaded once per process. A pool
    worker (postprocess runs one per core) runs ONNX on one thread: its siblings have the
    other cores."""
    import onnxruntime  # the model runtime, and imwatermark imports torch (~2 s): on first use
    from imwatermark import rivaGan

    opts = onnxruntime.SessionOptions()
    if multiprocessing.parent_process() is not None:
        opts.intra_op_num_threads = 1
        opts.inter_op_num_threads = 1
    here = os.path.dirname(rivaGan.__file__)
    cls = rivaGan.RivaWatermark
    if cls.encoder is None:
        cls.encoder = onnxruntime.InferenceSession(os.path.join(here, "rivagan_encoder.onnx"), opts)
        cls.decoder = onnxruntime.InferenceSession(os.path.join(here, "rivagan_decoder.onnx"), opts)
    return cls


def _bgr(img: Image.Image) -> np.ndarray:
    return np.ascontiguousarray(np.asarray(img.convert("RGB"))[:, :, ::-1])


def _at(img: Image.Image, side: int, mark, strength: float = 1.0) -> Image.Image:
    """``img`` with ``mark`` (BGR array -> marked BGR array) applied to a side x side copy,
    the change (times ``strength``) upscaled and added at full size."""
    import cv2  # OpenCV: loaded with imwatermark anyway, only by processes that mark

    small = img.resize((side, side), Image.Resampling.BICUBIC)
    marked = mark(_bgr(small))[:, :, ::-1]
    residual = (marked.astype(np.float32) - np.asarray(small, dtype=np.float32)) * strength
    full = cv2.resize(residual, img.size, interpolation=cv2.INTER_CUBIC)
    return Image.fromarray((np.asarray(img, dtype=np.float32) + full).round().clip(0, 255).astype(np.uint8))


RIVA_STRENGTH = 1.0  # see the module docstring: half strength was measured, and lost bits


def embed(img: Image.Image, key: str) -> Image.Image:
    """``img`` with ``key`` hidden in it twice (RivaGAN, then dwtDctSvd), alpha kept.
    Deterministic: same pixels, same key, same output."""
    from imwatermark.dwtDctSvd import EmbedDwtDctSvd  # torch comes with it (see _riva)

    if not can_carry(img.size):
        raise ValueError(f"a {img.width}x{img.height} image is too small for the watermark "
                         f"(short side under {MIN_SIDE} px)")
    bits = _bits(key)
    out = _at(img.convert("RGB"), RIVA_SIDE, _riva()(watermarks=bits, wmLen=BITS).encode, RIVA_STRENGTH)
    out = _at(out, SVD_SIDE, EmbedDwtDctSvd(bits, wmLen=BITS).encode)
    if img.mode == "RGBA":
        out.putalpha(img.getchannel("A"))
    return out


def decode(img: Image.Image) -> list[str]:
    """The keys the two marks read from ``img`` (RivaGAN's, dwtDctSvd's; some bits may be
    wrong, and an unmarked image reads as noise); none when it is too small to have kept one."""
    from imwatermark.dwtDctSvd import EmbedDwtDctSvd  # torch comes with it (see _riva)

    if min(img.size) < RIVA_SIDE // 2:  # shrunk far below the working sizes: nothing to read
        return []
    rgb = img.convert("RGB")

    def at(side: int) -> np.ndarray:
        return _bgr(rgb.resize((side, side), Image.Resampling.BICUBIC))

    riva = _riva()(watermarks=[], wmLen=BITS).decode(at(RIVA_SIDE))
    svd = EmbedDwtDctSvd([], wmLen=BITS).decode(at(SVD_SIDE))
    return [_key(riva), _key(svd)]


def closest(read: list[str], key: str) -> int:
    """Bits wrong in the better of the marks read, against ``key``."""
    return min((distance(k, key) for k in read), default=BITS)
