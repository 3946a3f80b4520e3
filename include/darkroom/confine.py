"""Where a campaign may read files from and where it may publish them.

A spec names files (product data, restricted terms, logo, font, brand reference images,
publish folders) and product data names reference and mask images. Each of them is
resolved (symlinks followed) and must land under an allowed root, or it is refused before
any GPU work with the field, the value, the roots and the fix:

* brand files: ``include/brand/`` (where relative paths point first), the spec's folder,
  and ``$DARKROOM_INPUT_ROOTS``;
* product data, restricted terms, expectation suites: the spec's folder, ``include/`` and
  ``$DARKROOM_INPUT_ROOTS``;
* reference and mask images: the spec's folder, the product data's folder,
  ``$DARKROOM_INPUT_ROOTS``, and the ``s3://bucket/prefix/`` roots the spec lists in
  ``products.image_roots``; http(s) URLs are refused (product data never makes Darkroom
  send a request);
* publish folders: ``$DARKROOM_HOME`` (where relative paths point) and ``$DARKROOM_PUBLISH_ROOTS``.
"""

from __future__ import annotations

from collections.abc import Sequence
from pathlib import Path

from darkroom.config import BRAND_DIR, PROJECT_ROOT, Settings

INCLUDE_DIR = PROJECT_ROOT / "include"


class OutsideRoots(ValueError):
    """A path or URI that is not under any allowed root; the message says which roots."""


def is_inside(path: Path, root: Path) -> bool:
    real, base = path.resolve(), root.resolve()
    return real == base or base in real.parents


def _shown(roots: Sequence[Path | str]) -> str:
    return ", ".join(str(r) for r in roots) or "(none)"


def within(path: Path, roots: Sequence[Path], *, what: str, env: str = "DARKROOM_INPUT_ROOTS") -> Path:
    """``path`` resolved, if it lies under one of ``roots``; else :class:`OutsideRoots`."""
    real = path.resolve()
    if not any(is_inside(real, r) for r in roots):
        raise OutsideRoots(f"{what} {real} is outside the allowed folders ({_shown(roots)}); fix: "
                           f"move it under one of them, or add its folder to ${env}")
    return real


def spec_roots(spec_dir: Path, settings: Settings) -> list[Path]:
    """Roots for the files a spec names itself (product data, terms, suites)."""
    return [spec_dir, INCLUDE_DIR, *settings.input_roots]


def brand_roots(spec_dir: Path, settings: Settings) -> list[Path]:
    return [BRAND_DIR, spec_dir, *settings.input_roots]


def brand_file(raw: str, spec_dir: Path, settings: Settings, *, what: str) -> Path:
    """A logo, font or reference folder: relative paths under include/brand/, else the spec's folder."""
    p = Path(raw)
    if not p.is_absolute():
        p = BRAND_DIR / p if (BRAND_DIR / p).exists() or not (spec_dir / p).exists() else spec_dir / p
    return within(p, brand_roots(spec_dir, settings), what=what)


def image_roots(spec_dir: Path, product_source: str, extra: Sequence[str], settings: Settings) -> list:
    """Local folders (Path) and s3:// prefixes (str) reference images may come from."""
    roots: list = [spec_dir, *settings.input_roots]
    if not product_source.startswith(("s3://", "postgres://")):
        roots.append(Path(product_source).parent)
    for r in extra:
        roots.append(r if r.startswith("s3://") else Path(r) if Path(r).is_absolute() else spec_dir / r)
    return roots


def image_uri(value: str, spec_dir: Path, roots: Sequence) -> str:
    """The URI of a product's reference or mask image, if it is allowed; else :class:`OutsideRoots`."""
    if value.startswith(("http://", "https://")):
        raise OutsideRoots(
            "http(s) URLs are not fetched (product data never makes Darkroom send a request); fix: "
            "copy the image next to the product data, or into an S3 bucket listed in "
            "products.image_roots")
    if value.startswith("s3://"):
        prefixes = [r if r.endswith("/") else r + "/" for r in roots if isinstance(r, str)]
        if ".." in value.split("/") or not any(value.startswith(p) for p in prefixes):
            raise OutsideRoots(f"{value} is not under an s3:// prefix listed in products.image_roots "
                               f"({_shown(prefixes)}); fix: list its bucket/prefix there")
        return value
    if "://" in value and not value.startswith("file://"):
        raise OutsideRoots(f"unsupported scheme in {value!r}; use a path, file:// or s3://")
    p = Path(value.removeprefix("file://"))
    p = p if p.is_absolute() else spec_dir / p
    return within(p, [r for r in roots if isinstance(r, Path)], what="image").as_uri()


def publish_folder(raw: str, settings: Settings) -> Path:
    """A folder destination: relative paths under $DARKROOM_HOME; absolute ones under a publish root."""
    p = Path(raw)
    p = p if p.is_absolute() else settings.home / p
    return within(p, [settings.home, *settings.publish_roots], what="publish folder",
                  env="DARKROOM_PUBLISH_ROOTS")
