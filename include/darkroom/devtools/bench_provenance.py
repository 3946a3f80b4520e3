"""``darkroom bench provenance``: what provenance costs per derivative, and how often
``darkroom verify`` still traces a published file after it was stripped, re-saved or cropped.

One run of the spring_tiles campaign (tiny model, one seed per product) goes through publish
in a throwaway $DARKROOM_HOME; every published file is then attacked and verified. Also
measured: each watermark on three kinds of picture (the tiny model's noise, a flat studio
backdrop, a product on white), the numbers the method was picked by.
"""

from __future__ import annotations

import io
import shutil
import statistics
import subprocess
import tempfile
import time
from datetime import UTC, datetime
from pathlib import Path

import numpy as np
import yaml
from PIL import Image, ImageDraw, ImageFilter
from sqlalchemy import select

from darkroom import imaging
from darkroom.catalog import Catalog
from darkroom.catalog.tables import Asset, Derivative
from darkroom.config import PROJECT_ROOT, Settings
from darkroom.provenance import credentials, watermark, xmp
from darkroom.stages import approve, plan, publish, sequence, validate
from darkroom.stages.context import RunContext
from darkroom.stages.verify import verify
from darkroom.storage import read_uri, sha256_bytes
from darkroom.tracking import git_commit

ATTACKS = ("none", "exiftool -all=", "jpeg q75", "crop 10%")


def _cpu_ms(fn, repeat: int = 3):
    times, out = [], None
    for _ in range(repeat):
        t = time.process_time()
        out = fn()
        times.append((time.process_time() - t) * 1000)
    return round(statistics.median(times), 1), out


def _jpeg(img: Image.Image, quality: int) -> bytes:
    buf = io.BytesIO()
    img.convert("RGB").save(buf, format="JPEG", quality=quality)  # no metadata: a plain re-save
    return buf.getvalue()


def attack(name: str, path: Path, scratch: Path) -> bytes:
    data = path.read_bytes()
    if name == "none":
        return data
    if name == "exiftool -all=":
        out = scratch / f"stripped{path.suffix}"
        shutil.copy(path, out)
        subprocess.run(["exiftool", "-q", "-q", "-all=", "-overwrite_original", str(out)], check=True)
        return out.read_bytes()
    img = imaging.decode(data)
    if name == "jpeg q75":
        return _jpeg(img, 75)
    if name == "crop 10%":  # 5% off each side, saved as a JPEG q90 as an editor would
        w, h = img.size
        return _jpeg(img.crop((w // 20, h // 20, w - w // 20, h - h // 20)), 90)
    raise ValueError(name)


def _campaign(folder: Path) -> Path:
    campaigns = PROJECT_ROOT / "include" / "campaigns"
    data = yaml.safe_load((campaigns / "spring_tiles.yaml").read_text())
    shutil.copy(campaigns / "spring_tiles.products.csv", folder / "products.csv")
    data["products"].update(source=str(folder / "products.csv"),
                            expectations=str(PROJECT_ROOT / "include" / "expectations" / "spring_tiles.json"))
    data["brand"]["restricted_terms_file"] = str(PROJECT_ROOT / "include" / "brand" / "restricted_terms.txt")
    data["generation"].update(seeds_per_variant=1)
    data["qa"] = {"checks": {"dimensions": {}, "duplicate": {"enabled": False}}}  # keep every image
    path = folder / "spec.yaml"
    path.write_text(yaml.safe_dump(data))
    return path


def _pictures(tiny_original: Image.Image) -> dict[str, Image.Image]:
    rng = np.random.default_rng(0)
    y, x = np.mgrid[0:1000, 0:1000] / 1000.0
    studio = Image.fromarray(np.stack([200 + 30 * y, 190 + 25 * y, 175 + 20 * x], -1).astype(np.uint8))
    ImageDraw.Draw(studio).ellipse([300, 250, 700, 800], fill=(150, 80, 60))
    noisy = (np.asarray(studio.filter(ImageFilter.GaussianBlur(3)), np.float32)
             + rng.normal(0, 2, (1000, 1000, 3)))
    white = Image.new("RGB", (1000, 1000), "white")
    white.paste(Image.fromarray(noisy.clip(0, 255).astype(np.uint8)).resize((600, 600)), (200, 200))
    return {"tiny model noise": tiny_original.resize((1000, 1000), Image.Resampling.LANCZOS),
            "studio backdrop": Image.fromarray(noisy.clip(0, 255).astype(np.uint8)),
            "product on white": white}


def watermark_methods(pictures: dict[str, Image.Image], keys: int = 3) -> dict:
    """Bits wrong (of 32) per mark, picture and attack; the better of the two is what verify uses."""
    wm = watermark

    def crop(img):
        return img.crop((50, 50, 950, 950))

    attacks = {"none": lambda im: im, "jpeg q75": lambda im: Image.open(io.BytesIO(_jpeg(im, 75))),
               "webp q85": lambda im: _webp(im), "resize 50%": lambda im: im.resize((500, 500)),
               "crop 10%": crop}
    out: dict = {}
    for name, img in pictures.items():
        rows = {a: {"rivagan": [], "dwtdctsvd": []} for a in attacks}
        for k in range(keys):
            key = wm.key_for(f"bench-{k}")
            marked = wm.embed(img, key)
            for a, f in attacks.items():
                riva, svd = wm.decode(f(marked))
                rows[a]["rivagan"].append(wm.distance(riva, key))
                rows[a]["dwtdctsvd"].append(wm.distance(svd, key))
        diff = np.asarray(marked, np.float64) - np.asarray(img, np.float64)
        psnr = float(10 * np.log10(255 ** 2 / np.mean(diff ** 2)))
        out[name] = {"bits_wrong": rows, "psnr_db": round(psnr, 1)}
    return out


def _webp(img: Image.Image) -> Image.Image:
    buf = io.BytesIO()
    img.save(buf, format="WEBP", quality=85)
    return Image.open(io.BytesIO(buf.getvalue()))


def bench_provenance(settings: Settings) -> dict:
    if shutil.which("exiftool") is None:
        raise RuntimeError("darkroom bench provenance needs exiftool (Debian: libimage-exiftool-perl)")
    with tempfile.TemporaryDirectory(prefix="darkroom-bench-provenance-") as tmp:
        root = Path(tmp)
        home = root / "home"
        tiny = settings.tiny_model_dir
        if not (tiny / "model_index.json").is_file():
            from darkroom.devtools.tiny_model import build_tiny_pipeline  # torch: only without one built

            tiny = build_tiny_pipeline(root / "tiny-sd")
        run_settings = Settings(home=home, catalog_url=f"sqlite:///{home / 'catalog.db'}",
                                storage_url=(home / "assets").as_uri(), campaigns_dir=root,
                                mlflow_tracking_uri=f"sqlite:///{home / 'mlflow.db'}", tiny_model_dir=tiny,
                                c2pa_cert=settings.c2pa_cert, c2pa_key=settings.c2pa_key,
                                c2pa_trust_anchors=settings.c2pa_trust_anchors)
        # 1. A campaign through publish.
        t0 = time.perf_counter()
        ctx = RunContext.open(_campaign(root), "campaign__spring_tiles", "bench__1", settings=run_settings)
        validate.run(ctx)
        for batch in plan.run(ctx):
            sequence.run_batch(ctx, batch)
        approve.settle_undecided(ctx, "approve", "bench", "")
        publish.run(ctx)
        pipeline_s = round(time.perf_counter() - t0, 1)
        catalog = Catalog(run_settings.catalog_url)
        with catalog.session() as s:
            derivs = list(s.scalars(select(Derivative).where(Derivative.signed_uri.is_not(None))))
            assets = {a.id: a for a in s.scalars(select(Asset))}
        truth = {d.signed_sha256: d.asset_id for d in derivs}
        files = sorted(p for p in (home / "published").rglob("*") if p.suffix in (".jpg", ".webp"))
        # 2. CPU per 1000x1000 derivative (the marketplace channel): XMP, watermark, signing.
        key = credentials.signing_key(run_settings)
        costs: dict[str, list[float]] = {k: [] for k in ("xmp_ms", "watermark_embed_ms", "watermark_read_ms",
                                                         "sign_ms", "read_back_ms", "verify_ms")}
        for d in [d for d in derivs if d.channel == "marketplace"][:4]:
            data = read_uri(d.uri)
            img = imaging.decode(data)
            prov = imaging.read_provenance(data)
            ms, packet = _cpu_ms(lambda prov=prov, data=data: xmp.replace(data, prov.xmp()))
            costs["xmp_ms"].append(ms)
            costs["watermark_embed_ms"].append(_cpu_ms(lambda img=img, d=d: watermark.embed(
                img, watermark.key_for(d.asset_id)), repeat=1)[0])
            costs["watermark_read_ms"].append(_cpu_ms(lambda img=img: watermark.decode(img), repeat=1)[0])
            original = read_uri(assets[d.asset_id].uri)

            def seal(original=original, packet=packet, prov=prov, d=d):
                parent = credentials.sign(original, "png", credentials.original_manifest(
                    prov.parameters, prov.darkroom, "original"), key)
                manifest = credentials.derivative_manifest(prov.darkroom, ctx.spec.channels["marketplace"],
                                                           {"asset_id": d.asset_id}, "bench", "jpeg")
                return credentials.sign(packet, "jpeg", manifest, key, ingredient=(parent, "png", "original"))

            ms, signed = _cpu_ms(seal)
            costs["sign_ms"].append(ms)
            costs["read_back_ms"].append(
                _cpu_ms(lambda signed=signed: credentials.read(signed, key.anchors))[0])
            published = next(p for p in files if p.read_bytes() and truth.get(_sha(p)) == d.asset_id
                             and p.suffix == ".jpg")
            costs["verify_ms"].append(_cpu_ms(lambda p=published: verify(
                p.read_bytes(), catalog, run_settings), repeat=1)[0])
        # 3. The share verify traces after each attack.
        traced: dict = {}
        scratch = root / "scratch"
        scratch.mkdir()
        for name in ATTACKS:
            rows = []
            for path in files:
                expected = truth[_sha(path)]
                v = verify(attack(name, path, scratch), catalog, run_settings)
                rows.append({"file": path.name, "traced": bool(v.match and v.match.asset_id == expected),
                             "wrong_asset": bool(v.match and v.match.asset_id != expected),
                             "how": v.match.how if v.match else None,
                             "watermark_bits_wrong": watermark.closest(v.evidence.watermark_keys,
                                                                       watermark.key_for(expected))})
            hows: dict[str, int] = {}
            for r in rows:
                hows[r["how"] or "not traced"] = hows.get(r["how"] or "not traced", 0) + 1
            traced[name] = {"files": len(rows), "traced": sum(r["traced"] for r in rows),
                            "share": round(sum(r["traced"] for r in rows) / len(rows), 3),
                            "wrong_asset": sum(r["wrong_asset"] for r in rows), "by": hows,
                            "watermark_bits_wrong": sorted(r["watermark_bits_wrong"] for r in rows)}
        # 4. The watermark methods on three kinds of picture.
        tiny_original = imaging.decode(read_uri(next(iter(assets.values())).uri))
        methods = watermark_methods(_pictures(tiny_original))
    return {
        "date": datetime.now(UTC).strftime("%Y-%m-%d"),
        "commit": git_commit()[:7],
        "machine": "2 shared CPU cores (the reference machine); CPU ms are process time, medians",
        "watermark": watermark.METHOD,
        "published_files": len(files),
        "pipeline_seconds": pipeline_s,
        "cpu_ms_per_1000px_derivative": {k: statistics.median(v) for k, v in costs.items() if v},
        "traced": traced,
        "watermark_methods": methods,
    }


def _sha(path: Path) -> str:
    return sha256_bytes(path.read_bytes())


def summary_lines(result: dict) -> list[str]:
    c = result["cpu_ms_per_1000px_derivative"]
    lines = [f"CPU ms per 1000x1000 derivative: XMP {c['xmp_ms']}, watermark {c['watermark_embed_ms']} "
             f"(read {c['watermark_read_ms']}), signing {c['sign_ms']} (read back {c['read_back_ms']}), "
             f"verify {c['verify_ms']}"]
    for name, t in result["traced"].items():
        lines.append(f"after {name:<15} traced {t['traced']}/{t['files']} ({t['share']:.0%}), "
                     f"wrong asset {t['wrong_asset']}, by {t['by']}")
    return lines
