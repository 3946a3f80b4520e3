"""``darkroom verify FILE``: where did this file come from, and what of that can be proven?

:func:`verify` is pure apart from reading the catalog (and, for the product row, the
campaign's product data): it reads every piece of evidence the file carries, matches the
file to an asset, answers the six questions from the catalog, and lists plainly what could
not be verified. The CLI command and the gallery's REST endpoint only format its result.

Evidence, strongest first:

1. the bytes: identical to a file Darkroom published (or made), by SHA-256;
2. Content Credentials (C2PA): signed; ``trusted`` when they chain to our trust anchors,
   ``invalid`` when the file changed after signing;
3. metadata anyone can write or strip: XMP ``darkroom:AssetId``, the EXIF / PNG chunks;
4. the invisible watermark's key and the perceptual hash, for a file whose metadata is gone:
   matched to the catalog when the chance that an unrelated image comes this close to some
   derivative is under :data:`MAX_FALSE_MATCH` (the catalog's size counted; bits treated
   as independent, an estimate), and only when the next best asset is at least
   :data:`MIN_MARGIN` times less likely. This compares the file with every catalogued
   derivative and original: linear in the catalog's size (one query; not an index lookup).
"""

from __future__ import annotations

import math
from dataclasses import asdict, dataclass, field

from sqlalchemy import select
from sqlalchemy.orm import selectinload

from darkroom import imaging
from darkroom.catalog import Catalog
from darkroom.config import Settings
from darkroom.models import Asset, Campaign, Derivative, Publication, Run, ValidationResult
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


@dataclass
class Verification:
    file: str | None
    verdict: str
    evidence: Evidence
    match: Match | None = None
    answers: dict | None = None  # origin, generation, checks, approval, publications, regenerate
    unverified: list[str] = field(default_factory=list)

    def to_dict(self) -> dict:
        return asdict(self)


# -- evidence --------------------------------------------------------------------------

def read_evidence(data: bytes, anchors: bytes | None) -> Evidence:
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
    import imagehash

    ev.phash = str(imagehash.phash(img))
    ev.watermark_keys = watermark.decode(img)
    return ev


def _claimed_ids(ev: Evidence) -> dict[str, str]:
    """Asset ids the file's metadata names, by where they were found."""
    out = {}
    approval = (ev.credentials or {}).get("approval") or {}
    if (ev.credentials or {}).get("state") in ("trusted", "valid") and approval.get("asset_id"):
        out["content credentials"] = approval["asset_id"]
    if ev.xmp and ev.xmp["darkroom"].get("AssetId"):
        out["xmp"] = ev.xmp["darkroom"]["AssetId"]
    if ev.embedded and ev.embedded["darkroom"].get("asset_id"):
        out["embedded metadata"] = ev.embedded["darkroom"]["asset_id"]
    return out


def _claimed_channel(ev: Evidence) -> str | None:
    approval = (ev.credentials or {}).get("approval") or {}
    return (approval.get("channel") or (ev.xmp or {}).get("darkroom", {}).get("Channel")
            or ((ev.embedded or {}).get("darkroom") or {}).get("channel"))


# -- matching --------------------------------------------------------------------------

def _chance(distance: int, bits: int) -> float:
    """P(two random ``bits``-bit strings differ in at most ``distance`` bits)."""
    return sum(math.comb(bits, i) for i in range(distance + 1)) / 2 ** bits


def _phash_distance(a: str, b: str) -> int:
    return (int(a, 16) ^ int(b, 16)).bit_count()


def _by_bytes(s, sha: str) -> Match | None:
    d = s.scalars(select(Derivative).where((Derivative.signed_sha256 == sha) | (Derivative.sha256 == sha))
                  .order_by(Derivative.id)).first()
    if d is not None:
        what = "the published file" if d.signed_sha256 == sha else "the derivative before signing"
        return Match("sha256", d.asset_id, d.channel, d.signed_sha256 == sha, f"byte-identical to {what}")
    a = s.scalars(select(Asset).where(Asset.sha256 == sha)).first()
    if a is not None:
        return Match("sha256", a.id, "original", True, "byte-identical to the original")
    return None


def _by_similarity(s, ev: Evidence) -> Match | None:
    """The derivative (or original) the watermark key and perceptual hash point at, when
    the chance of a coincidence is small enough for the catalog's size."""
    if ev.phash is None:
        return None
    rows = s.execute(select(Derivative.asset_id, Derivative.channel, Derivative.watermark_key,
                            Derivative.phash).where(Derivative.phash.is_not(None))).all()
    rows += [(a, "original", None, p) for a, p in
             s.execute(select(Asset.id, Asset.phash).where(Asset.phash.is_not(None))).all()]
    if not rows:
        return None
    best: dict[str, tuple] = {}  # asset id -> its closest file (chance, channel, d_k, d_p)
    for asset_id, channel, key, phash in rows:
        d_p = _phash_distance(ev.phash, phash)
        d_k = watermark.closest(ev.watermark_keys, key) if ev.watermark_keys and key else None
        # The better of the marks read: as if a random image had as many tries.
        p_k = min(1.0, len(ev.watermark_keys) * _chance(d_k, watermark.BITS)) if d_k is not None else 1.0
        p = _chance(d_p, 64) * p_k
        if asset_id not in best or p < best[asset_id][0]:
            best[asset_id] = (p, channel, d_k, d_p)
    ranked = sorted(best.items(), key=lambda item: item[1][0])
    asset_id, (p, channel, d_k, d_p) = ranked[0]
    runner_up = ranked[1][1][0] if len(ranked) > 1 else 1.0
    expected = p * len(rows)
    # Pictures from one campaign look alike, so their hash bits are not independent: besides
    # the estimate, the best asset must stand far apart from the next one, or no claim is made.
    if expected >= MAX_FALSE_MATCH or runner_up < p * MIN_MARGIN:
        return None
    how = "watermark + phash" if d_k is not None else "phash"
    key = f"watermark key {d_k} of {watermark.BITS} bits off, " if d_k is not None else ""
    return Match(how, asset_id, channel, False,
                 f"{key}perceptual hash {d_p} of 64 bits off; chance of a coincidence among "
                 f"{len(rows)} catalogued files: 1 in {1 / max(expected, 1e-300):.3g}")


# -- the answers -----------------------------------------------------------------------

def _product_row(campaign: Campaign | None, product_id: str, row_hash: str | None) -> dict:
    """The product's row as the source holds it now, and whether it is the row that was used."""
    from darkroom.products import frame_to_rows, load_products_frame
    from darkroom.prompts import short_hash
    from darkroom.spec import load_spec

    out: dict = {"recorded_row_hash": row_hash, "row": None, "matches_recorded": None}
    if campaign is None or not campaign.spec_path:
        out["problem"] = "the campaign's spec file is not recorded"
        return out
    try:
        loaded = load_spec(campaign.spec_path)
        out["source"] = loaded.product_source
        id_col = loaded.spec.products.id_column
        for row in frame_to_rows(load_products_frame(loaded)):
            if str(row.get(id_col)) == product_id:
                out["row"] = row
                out["matches_recorded"] = short_hash(row) == row_hash if row_hash else None
                break
        else:
            out["problem"] = f"product {product_id!r} is no longer in {loaded.product_source}"
    except Exception as exc:  # a moved spec, an unreachable bucket: said, not fatal
        out["problem"] = f"cannot read the product data now: {type(exc).__name__}: {exc}"[:300]
    return out


def answers(s, asset: Asset, this_sha: str) -> dict:
    run = s.get(Run, asset.run_pk)
    v = asset.variant
    campaign = s.get(Campaign, run.campaign_id)
    validation = s.scalars(select(ValidationResult).where(ValidationResult.run_pk == run.id)
                           .order_by(ValidationResult.id.desc())).first()
    latest = asset.reviews[-1] if asset.reviews else None
    pubs = []
    for d in asset.derivatives:
        for p in s.scalars(select(Publication).where(Publication.derivative_id == d.id)
                           .order_by(Publication.id)):
            pubs.append({"channel": d.channel, "destination": p.destination, "uri": p.uri,
                         "sha256": p.sha256, "at": p.at.isoformat(), "this_file": p.sha256 == this_sha})
    spec_ref = campaign.spec_path if campaign and campaign.spec_path else run.campaign_id
    return {
        "origin": {
            "campaign": run.campaign_id,
            "brief": ((campaign.spec_body or {}).get("brief") or "").strip() if campaign else "",
            "spec": spec_ref, "spec_hash": run.spec_hash,
            "product_id": v.product_id,
            "product": _product_row(campaign, v.product_id, (v.params or {}).get("row_hash")),
            "request": {"dag_id": run.dag_id, "run_id": run.run_id, "conf": run.conf,
                        "started_at": run.started_at.isoformat() if run.started_at else None,
                        "asset_type": v.asset_type, "channels": list(v.channels),
                        "template_version": v.template_version, "variant_id": v.id},
            "mlflow_run_id": run.mlflow_run_id,
        },
        "generation": {
            "prompt": v.prompt, "negative_prompt": v.negative_prompt,
            "model": asset.model_name, "model_version": asset.model_version,
            "model_ref": run.model_ref, "loras": asset.loras or [], "seed": asset.seed,
            "parameters": {"scheduler": asset.scheduler, "steps": asset.steps,
                           "guidance": asset.guidance, "width": asset.width, "height": asset.height,
                           "backend": asset.backend, "forward_pass": len(asset.forward_pass or [v.id]),
                           **{k: x for k, x in (v.params or {}).items() if k != "row_hash"}},
            "asset_version": asset.version, "supersedes": asset.supersedes_id,
        },
        "checks": {
            "product_data": ({"suite": validation.suite, "passed": validation.success,
                              "rows": validation.rows} if validation else None),
            "policy": "passed (restricted terms: none found in the prompt)",
            "qa": [{"check": q.check, "passed": q.passed, "status": q.status, "value": q.value,
                    "threshold": q.threshold} for q in asset.qa_results],
            "qa_passed": bool(asset.qa_results) and all(q.passed for q in asset.qa_results),
        },
        "approval": ({"decision": latest.decision, "reviewer": latest.reviewer, "note": latest.note,
                      "at": latest.at.isoformat()} if latest else None),
        "publications": pubs,
        "regenerate": {
            "exact": f"darkroom assets regenerate {asset.id}",
            "with_a_new_model_version": (f"darkroom regenerate {spec_ref} --model-version VERSION "
                                         f"--where product={v.product_id}"),
        },
    }


# -- the whole check -------------------------------------------------------------------

def verify(data: bytes, catalog: Catalog, settings: Settings, *, file: str | None = None) -> Verification:
    """Everything that can be said about ``data``'s origin, and what of it is proven."""
    ev = read_evidence(data, credentials.trust_anchors(settings))
    unverified = list(ev.problems)
    cred = ev.credentials or {}
    state = cred.get("state", "unsigned")
    if state == "unsigned":
        unverified.append("unsigned: the file carries no Content Credentials (stripped, or never "
                          "published by Darkroom)")
    elif state == "invalid":
        unverified.append("tampered: the Content Credentials do not match the file (changed after "
                          "signing): " + "; ".join(cred.get("errors") or []))
    elif state == "valid":
        unverified.append(f"the signature holds but its signer ({cred.get('signer')}, issued by "
                          f"{cred.get('issuer')}) is not one this installation trusts")
    elif state == "unreadable":
        unverified.append("the Content Credentials cannot be read: " + "; ".join(cred.get("errors") or []))
    if ev.format and not ev.xmp:
        unverified.append("stripped: no XMP")
    if ev.format and not ev.embedded:
        unverified.append("stripped: no generation parameters (PNG chunks / EXIF)")
    claimed = _claimed_ids(ev)
    if len(set(claimed.values())) > 1:
        unverified.append("the file's metadata disagrees about the asset: "
                          + ", ".join(f"{k} says {v}" for k, v in claimed.items()))
    with catalog.session() as s:
        match = _by_bytes(s, ev.sha256)
        if match is None and claimed:
            # Signed credentials first; then what anyone could have written.
            how, asset_id = next(iter(claimed.items()))
            if s.get(Asset, asset_id) is not None:
                match = Match(how, asset_id, _claimed_channel(ev) or "?", False,
                              f"asset id from the {how}")
        if match is None:
            match = _by_similarity(s, ev)
        if match is None:
            verdict = ("unknown: no asset in the catalog matches this file"
                       + (f" (its metadata names asset {next(iter(claimed.values()))}, which the "
                          "catalog does not have)" if claimed else ""))
            unverified.append(f"unknown: not found in the catalog at {_safe_url(catalog.url)}")
            return Verification(file, verdict, ev, None, None, unverified)
        asset = s.scalar(select(Asset).where(Asset.id == match.asset_id).options(
            selectinload(Asset.variant), selectinload(Asset.qa_results), selectinload(Asset.reviews),
            selectinload(Asset.derivatives)))
        result = answers(s, asset, ev.sha256)
    if not match.exact:
        unverified.append("not byte-identical to any file Darkroom published: re-encoded, cropped, "
                          "or its metadata changed since")
    if match.how in ("xmp", "embedded metadata"):
        unverified.append(f"the asset id comes from unsigned {match.how}, which anyone can write; "
                          "the pixels were not matched")
    marks = {d.watermark_key for d in asset.derivatives if d.watermark_key}
    if ev.format and not ev.watermark_keys:
        unverified.append("watermark: the image is too small to carry one")
    elif marks and not any(watermark.closest(ev.watermark_keys, k) <= WATERMARK_FOUND for k in marks):
        unverified.append("watermark: not found (or too damaged to read)")
    product = result["origin"]["product"]
    if product.get("matches_recorded") is False:
        unverified.append(f"product row: product {result['origin']['product_id']} differs now from "
                          "the row the image was made from")
    elif product.get("problem"):
        unverified.append(f"product row: {product['problem']}")
    proof = {"sha256": "byte-identical to what Darkroom made",
             "content credentials": f"Content Credentials {state}",
             "xmp": "XMP metadata (unsigned)", "embedded metadata": "embedded metadata (unsigned)",
             "watermark + phash": "invisible watermark and perceptual hash",
             "phash": "perceptual hash only"}[match.how]
    if match.how == "sha256" and state in ("trusted", "valid"):
        proof += f", Content Credentials {state}"
    verdict = f"traced to asset {match.asset_id} ({match.channel}) by {proof}"
    return Verification(file, verdict, ev, match, result, unverified)


def _safe_url(url: str) -> str:
    from sqlalchemy.engine import make_url

    try:
        return make_url(url).render_as_string(hide_password=True)
    except Exception:
        return "the configured catalog"


# -- text for people -------------------------------------------------------------------

def render_text(v: Verification) -> str:
    """The report ``darkroom verify`` prints: the verdict, the six answers, what is unproven."""
    lines = [f"{v.file or 'file'}: {v.verdict}"]
    ev = v.evidence
    cred = ev.credentials or {}
    lines.append(f"  evidence      sha256 {ev.sha256[:16]}..., {ev.format or '?'} {ev.width}x{ev.height}; "
                 f"Content Credentials: {cred.get('state', '-')}"
                 + (f" (signer {cred.get('signer')})" if cred.get("signer") else "")
                 + f"; XMP: {'yes' if ev.xmp else 'no'}; parameters: {'yes' if ev.embedded else 'no'}; "
                 f"watermark read: {', '.join(ev.watermark_keys) or '-'}")
    if v.match:
        lines.append(f"  matched by    {v.match.how}: {v.match.detail}")
    a = v.answers
    if a:
        o, g, c = a["origin"], a["generation"], a["checks"]
        prod = o["product"]
        row = ("row as used" if prod.get("matches_recorded") else
               "row CHANGED since" if prod.get("matches_recorded") is False else "row not checked")
        req = o["request"]
        lines += [
            "1 origin        " f"campaign {o['campaign']} ({o['spec']}), product {o['product_id']} ({row}), "
            f"{req['asset_type']} for {', '.join(req['channels'])}; run {req['dag_id']} / {req['run_id']}"
            + (f", MLflow run {o['mlflow_run_id']}" if o["mlflow_run_id"] else ""),
            f"2 generation    prompt: {g['prompt']}",
            f"                negative: {g['negative_prompt'] or '-'}",
            f"                model {g['model']}@{g['model_version']}"
            + (", LoRAs " + ", ".join(f"{x['name']}@{x['version']}:{x['weight']}" for x in g["loras"])
               if g["loras"] else ", no LoRAs")
            + f", seed {g['seed']}, " + ", ".join(f"{k}={x}" for k, x in g["parameters"].items()),
            "3 checks        "
            + (f"product data {'passed' if c['product_data']['passed'] else 'FAILED'} "
               f"({c['product_data']['suite']}, {c['product_data']['rows']} rows); "
               if c["product_data"] else "product data: no record; ")
            + f"policy {c['policy'].split(' ')[0]}; QA "
            + ", ".join(f"{q['check']} {'ok' if q['passed'] else q['status'].upper()}" for q in c["qa"]),
            "4 approval      " + (f"{a['approval']['decision']} by {a['approval']['reviewer']} at "
                                  f"{a['approval']['at']}" + (f": {a['approval']['note']}"
                                                             if a['approval']['note'] else "")
                                  if a["approval"] else "no decision recorded"),
            "5 publications  " + ("; ".join(f"{p['channel']} -> {p['uri']}"
                                            + (" (this file)" if p["this_file"] else "")
                                            for p in a["publications"]) or "none"),
            f"6 regenerate    {a['regenerate']['exact']}",
            f"                (new model version: {a['regenerate']['with_a_new_model_version']})",
        ]
    if v.unverified:
        lines.append("  NOT VERIFIED")
        lines += [f"    - {u}" for u in v.unverified]
    else:
        lines.append("  everything above is verified")
    return "\n".join(lines)

