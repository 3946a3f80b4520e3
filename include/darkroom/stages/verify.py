"""``darkroom verify FILE``: where did this file come from, and what of that can be proven?

:func:`verify` reads every piece of evidence the file carries (darkroom.provenance.evidence),
finds its asset in the catalog (by its bytes, by the ids its metadata names, else by the
watermark key and perceptual hash: catalog.lineage), answers the six questions from the
catalog and the campaign's product data, and lists plainly what could not be verified. It
writes nothing. The CLI command and the gallery's REST endpoint only format its result.

A stage-level module, though no DAG task runs it: it reads the catalog and calls engines
(evidence, the spec, the product source), which the catalog may not.
"""

from __future__ import annotations

from dataclasses import asdict, dataclass, field

from darkroom.catalog import lineage
from darkroom.catalog.db import Catalog
from darkroom.config import Settings
from darkroom.ids import short_hash
from darkroom.provenance import credentials, watermark
from darkroom.provenance.evidence import (
    WATERMARK_FOUND,
    Evidence,
    Match,
    claimed_channel,
    claimed_ids,
    closest_asset,
)
from darkroom.provenance.evidence import read as read_evidence
from darkroom.spec import load_spec


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


def verify(data: bytes, catalog: Catalog, settings: Settings, *, file: str | None = None) -> Verification:
    """Everything that can be said about ``data``'s origin, and what of it is proven."""
    # 1. What the file carries, and what of it does not hold up on its own.
    ev = read_evidence(data, credentials.trust_anchors(settings))
    state = (ev.credentials or {}).get("state", "unsigned")
    unverified = list(ev.problems) + file_problems(ev, state)
    claimed = claimed_ids(ev)
    # 2. Its asset: the bytes; else the ids it names (signed credentials first); else the pixels.
    match = find(catalog, ev, claimed)
    if match is None:
        verdict = ("unknown: no asset in the catalog matches this file"
                   + (f" (its metadata names asset {next(iter(claimed.values()))}, which the "
                      "catalog does not have)" if claimed else ""))
        unverified.append(f"unknown: not found in the catalog at {catalog.safe_url}")
        return Verification(file, verdict, ev, None, None, unverified)
    # 3. The six answers, and what the match itself leaves unproven.
    traced = lineage.trace(catalog, match.asset_id, ev.sha256)
    answers = traced.answers
    origin = answers["origin"]
    origin["product"] = product_row(traced.spec_path, origin["product_id"],
                                    origin["product"]["recorded_row_hash"], settings)
    unverified += match_problems(ev, match, traced.watermark_keys, origin)
    verdict = f"traced to asset {match.asset_id} ({match.channel}) by {proof(match, state)}"
    return Verification(file, verdict, ev, match, answers, unverified)


def file_problems(ev: Evidence, state: str) -> list[str]:
    """What the file's own evidence cannot vouch for: missing, tampered or untrusted
    credentials, stripped metadata, metadata that disagrees with itself."""
    cred = ev.credentials or {}
    out = []
    if state == "unsigned":
        out.append("unsigned: the file carries no Content Credentials (stripped, or never "
                   "published by Darkroom)")
    elif state == "invalid":
        out.append("tampered: the Content Credentials do not match the file (changed after "
                   "signing): " + "; ".join(cred.get("errors") or []))
    elif state == "valid":
        out.append(f"the signature holds but its signer ({cred.get('signer')}, issued by "
                   f"{cred.get('issuer')}) is not one this installation trusts")
    elif state == "unreadable":
        out.append("the Content Credentials cannot be read: " + "; ".join(cred.get("errors") or []))
    if ev.format and not ev.xmp:
        out.append("stripped: no XMP")
    if ev.format and not ev.embedded:
        out.append("stripped: no generation parameters (PNG chunks / EXIF)")
    claimed = claimed_ids(ev)
    if len(set(claimed.values())) > 1:
        out.append("the file's metadata disagrees about the asset: "
                   + ", ".join(f"{k} says {v}" for k, v in claimed.items()))
    return out


def find(catalog: Catalog, ev: Evidence, claimed: dict[str, str]) -> Match | None:
    """The asset the file is: by its bytes; else by the first asset id its metadata names
    that the catalog has; else by watermark key and perceptual hash."""
    found = lineage.by_sha256(catalog, ev.sha256)
    if found is not None:
        return Match("sha256", found.asset_id, found.channel, found.exact, found.what)
    if claimed:
        how, asset_id = next(iter(claimed.items()))
        if lineage.has_asset(catalog, asset_id):
            return Match(how, asset_id, claimed_channel(ev) or "?", False, f"asset id from the {how}")
    return closest_asset(ev, lineage.fingerprints(catalog))


def match_problems(ev: Evidence, match: Match, marks: frozenset[str], origin: dict) -> list[str]:
    """What a match leaves unproven: a file that is not the one published, ids only unsigned
    metadata gave, a missing watermark, a product row that changed since."""
    out = []
    if not match.exact:
        out.append("not byte-identical to any file Darkroom published: re-encoded, cropped, "
                   "or its metadata changed since")
    if match.how in ("xmp", "embedded metadata"):
        out.append(f"the asset id comes from unsigned {match.how}, which anyone can write; "
                   "the pixels were not matched")
    if ev.format and not ev.watermark_keys:
        out.append("watermark: the image is too small to carry one")
    elif marks and not any(watermark.closest(ev.watermark_keys, k) <= WATERMARK_FOUND for k in marks):
        out.append("watermark: not found (or too damaged to read)")
    product = origin["product"]
    if product.get("matches_recorded") is False:
        out.append(f"product row: product {origin['product_id']} differs now from the row the "
                   "image was made from")
    elif product.get("problem"):
        out.append(f"product row: {product['problem']}")
    return out


def proof(match: Match, state: str) -> str:
    text = {"sha256": "byte-identical to what Darkroom made",
            "content credentials": f"Content Credentials {state}",
            "xmp": "XMP metadata (unsigned)", "embedded metadata": "embedded metadata (unsigned)",
            "watermark + phash": "invisible watermark and perceptual hash",
            "phash": "perceptual hash only"}[match.how]
    if match.how == "sha256" and state in ("trusted", "valid"):
        text += f", Content Credentials {state}"
    return text


def product_row(spec_path: str | None, product_id: str, row_hash: str | None,
                settings: Settings) -> dict:
    """The product's row as the source holds it now, and whether it is the row that was used."""
    from darkroom import products  # pandas: ~1.5 s to import, paid once the file is traced

    out: dict = {"recorded_row_hash": row_hash, "row": None, "matches_recorded": None}
    if not spec_path:
        out["problem"] = "the campaign's spec file is not recorded"
        return out
    try:
        loaded = load_spec(spec_path)
        out["source"] = loaded.product_source
        id_col = loaded.spec.products.id_column
        frame = products.load_products_frame(
            loaded, sql_url_factory=lambda conn_id: products.sql_url(conn_id, settings))
        for row in products.frame_to_rows(frame):
            if str(row.get(id_col)) == product_id:
                out["row"] = row
                out["matches_recorded"] = short_hash(row) == row_hash if row_hash else None
                break
        else:
            out["problem"] = f"product {product_id!r} is no longer in {loaded.product_source}"
    except Exception as exc:  # a moved spec, an unreachable bucket: said, not fatal
        out["problem"] = f"cannot read the product data now: {type(exc).__name__}: {exc}"[:300]
    return out


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
