"""Answering "where did this file come from?" from the catalog."""

from __future__ import annotations

from collections import Counter
from dataclasses import dataclass
from datetime import UTC, datetime, timedelta
from pathlib import Path

from PIL import Image, ImageDraw
from sqlalchemy import exists, select
from sqlalchemy.orm import selectinload

from darkroom import imaging
from darkroom.catalog.db import Catalog
from darkroom.catalog.tables import (
    Asset,
    AssetLora,
    Campaign,
    Derivative,
    Publication,
    QAResult,
    Review,
    Run,
    ValidationResult,
    Variant,
)
from darkroom.errors import DarkroomError
from darkroom.storage import read_uri


def asset_record(a: Asset, run: Run) -> dict:
    v = a.variant
    latest = a.reviews[-1] if a.reviews else None
    return {
        "asset_id": a.id, "version": a.version, "supersedes": a.supersedes_id,
        "campaign": run.campaign_id, "dag_id": run.dag_id, "run_id": run.run_id,
        "status": a.status, "failure_reason": a.failure_reason,
        "audit_sample": a.audit_sample,  # the exception policy's: people decide it
        "variant_id": v.id, "product_id": v.product_id, "asset_type": v.asset_type,
        "prompt": v.prompt, "negative_prompt": v.negative_prompt,
        "template_version": v.template_version, "seed": a.seed,
        "model": {"name": a.model_name, "version": a.model_version, "loras": a.loras},
        "params": {"scheduler": a.scheduler, "steps": a.steps, "guidance": a.guidance,
                   "width": a.width, "height": a.height, "backend": a.backend, "route": a.route},
        "uri": a.uri, "sha256": a.sha256, "phash": a.phash, "timings": a.timings,
        "qa": [{"check": q.check, "value": q.value, "threshold": q.threshold,
                "passed": q.passed, "status": q.status, "detail": q.detail} for q in a.qa_results],
        "review": {"decision": latest.decision, "reviewer": latest.reviewer,
                   "note": latest.note, "at": latest.at} if latest else None,
        "reviews": [{"decision": r.decision, "reviewer": r.reviewer, "at": r.at} for r in a.reviews],
        "derivatives": [{"channel": d.channel, "uri": d.uri, "sha256": d.sha256,
                         "width": d.width, "height": d.height, "format": d.format,
                         "published": [p.uri for p in d.publications]} for d in a.derivatives],
        "created_at": a.created_at,
    }


# Friendlier names for QA checks in `--qa-failed` ("all rejected for blur").
QA_ALIASES = {"blur": "sharpness", "blurry": "sharpness", "blank": "not_blank", "size": "dimensions"}


def _as_datetime(value, end: bool = False) -> datetime | None:
    """A date (``2026-01-01``: the whole day) or an ISO timestamp, in UTC."""
    if value is None or isinstance(value, datetime):
        return value
    text = str(value)
    try:
        parsed = datetime.fromisoformat(text)
    except ValueError:
        raise ValueError(f"date {text!r} is not ISO 8601 (e.g. 2026-01-31 or 2026-01-31T12:00)") from None
    if parsed.tzinfo is None:
        parsed = parsed.replace(tzinfo=UTC)
    if end and len(text) == 10:  # a bare date as the end of a range includes that day
        parsed += timedelta(days=1)
    return parsed


def search_query(*, campaign: str | None = None, product: str | None = None, status: str | None = None,
                 model_profile: str | None = None, model_version: str | None = None,
                 lora: str | None = None, template_version: str | None = None,
                 since=None, until=None, qa_failed: str | None = None, reviewer: str | None = None,
                 run_id: str | None = None, variant_ids: list[str] | None = None):
    """The SELECT of :func:`search`: every filter is an indexed column or an EXISTS on one."""
    q = select(Asset, Run).join(Run, Run.id == Asset.run_pk).join(Variant, Variant.id == Asset.variant_id)
    if campaign:
        q = q.where(Run.campaign_id == campaign)
    if product:
        q = q.where(Variant.product_id == product)
    if status:
        q = q.where(Asset.status == status)
    if model_profile:  # assets record the profile's name as their model name
        q = q.where(Asset.model_name == model_profile)
    if model_version:
        q = q.where(Asset.model_version == model_version)
    if lora:  # NAME or NAME@VERSION
        name, _, version = lora.partition("@")
        cond = (AssetLora.asset_id == Asset.id) & (AssetLora.name == name)
        if version:
            cond &= AssetLora.version == version
        q = q.where(exists().where(cond))
    if template_version:
        q = q.where(Variant.template_version == template_version)
    if since is not None:
        q = q.where(Asset.created_at >= _as_datetime(since))
    if until is not None:
        q = q.where(Asset.created_at < _as_datetime(until, end=True))
    if qa_failed:
        check = QA_ALIASES.get(qa_failed, qa_failed)
        q = q.where(exists().where((QAResult.asset_id == Asset.id) & (QAResult.check == check)
                                   & QAResult.passed.is_(False)))
    if reviewer:
        q = q.where(exists().where((Review.asset_id == Asset.id) & (Review.reviewer == reviewer)))
    if run_id:
        q = q.where(Run.run_id == run_id)
    if variant_ids is not None:
        q = q.where(Asset.variant_id.in_(variant_ids))
    return q


def search(catalog: Catalog, *, limit: int | None = None, **filters) -> list[dict]:
    """Assets matching every given filter (none: every asset), newest first.

    Filters: campaign, product, status, model_profile, model_version, lora (NAME or
    NAME@VERSION), template_version, since / until (dates or ISO timestamps, until inclusive
    of a bare date), qa_failed (a check name, or blur/blank), reviewer, run_id.
    """
    with catalog.session() as s:
        q = (search_query(**filters)
             .options(selectinload(Asset.qa_results), selectinload(Asset.reviews),
                      selectinload(Asset.derivatives).selectinload(Derivative.publications),
                      selectinload(Asset.variant))
             .order_by(Asset.created_at.desc(), Asset.id))
        if limit:
            q = q.limit(limit)
        return [asset_record(a, run) for a, run in s.execute(q).all()]


def variant_ids(catalog: Catalog, **filters) -> list[str]:
    """The variants whose assets match the filters (as :func:`search` takes them), sorted:
    what ``darkroom regenerate --where`` regenerates."""
    with catalog.session() as s:
        return sorted({a.variant_id for a, _run in s.execute(search_query(**filters)).all()})


def known_variants(catalog: Catalog, campaign_id: str, variant_ids: list[str]) -> set[str]:
    """Those of ``variant_ids`` that are variants of the campaign."""
    found: set[str] = set()
    with catalog.session() as s:
        for i in range(0, len(variant_ids), 5000):
            found |= set(s.scalars(select(Variant.id).where(
                Variant.campaign_id == campaign_id, Variant.id.in_(variant_ids[i : i + 5000]))))
    return found


def versions(catalog: Catalog, variant_id: str) -> list[dict]:
    """Every asset version of one variant, oldest first, with what each supersedes."""
    with catalog.session() as s:
        rows = s.execute(select(Asset, Run).join(Run, Run.id == Asset.run_pk)
                         .where(Asset.variant_id == variant_id).order_by(Asset.version)).all()
        return [{"asset_id": a.id, "version": a.version, "supersedes": a.supersedes_id,
                 "model": a.model_name, "model_version": a.model_version, "status": a.status,
                 "run_id": r.run_id} for a, r in rows]


# -- comparing two runs -------------------------------------------------------------------

def run_summary(catalog: Catalog, run_id: str) -> dict:
    """QA metrics of one run (an Airflow run id or an MLflow run id) from the catalog."""
    with catalog.session() as s:
        run = s.scalars(select(Run).where((Run.run_id == run_id) | (Run.mlflow_run_id == run_id))
                        .order_by(Run.id.desc())).first()
        if run is None:
            raise DarkroomError(f"no run {run_id!r} in the catalog at {catalog.url}; fix: give an "
                                "Airflow run id (`darkroom assets search --json` shows them) or an "
                                "MLflow run id")
        assets = list(s.scalars(select(Asset).where(Asset.run_pk == run.id)
                                .options(selectinload(Asset.qa_results), selectinload(Asset.reviews))))
        checked = [a for a in assets if a.qa_results]
        passed = sum(1 for a in checked if all(q.passed for q in a.qa_results))
        failures = Counter(q.check for a in assets for q in a.qa_results if not q.passed)
        decided = Counter(a.reviews[-1].decision for a in assets if a.reviews)
        gen = sum((a.timings or {}).get("generate_s", 0) for a in assets)
        return {"run_id": run.run_id, "dag_id": run.dag_id, "campaign": run.campaign_id,
                "model": run.model_ref, "model_version": run.model_version,
                "mlflow_run_id": run.mlflow_run_id, "contact_sheet": run.contact_sheet_uri,
                "assets": len(assets), "qa_checked": len(checked), "qa_passed": passed,
                "qa_pass_rate": round(passed / len(checked), 4) if checked else 0.0,
                "qa_failures": dict(sorted(failures.items())),
                "approved": decided["approved"], "rejected": decided["rejected"],
                "generate_seconds": round(gen, 3)}


def compare_runs(catalog: Catalog, run_a: str, run_b: str, out: Path, s3_client=None) -> dict:
    """Both runs' contact sheets side by side in one PNG at ``out``, and their QA metrics."""
    a, b = run_summary(catalog, run_a), run_summary(catalog, run_b)
    sheets = []
    for r in (a, b):
        if not r["contact_sheet"]:
            raise DarkroomError(f"run {r['run_id']} has no contact sheet yet (its track task has not run)")
        sheets.append(imaging.decode(read_uri(r["contact_sheet"], s3_client=s3_client)).convert("RGB"))
    header, gap = 28, 16
    width = sum(im.width for im in sheets) + gap
    canvas = Image.new("RGB", (width, header + max(im.height for im in sheets)), "white")
    draw = ImageDraw.Draw(canvas)
    x = 0
    for r, im in zip((a, b), sheets, strict=True):
        draw.text((x + 4, 8), f"{r['run_id']}  model {r['model_version']}  QA pass "
                              f"{r['qa_pass_rate']:.0%}", fill="black")
        canvas.paste(im, (x, header))
        x += im.width + gap
    out.parent.mkdir(parents=True, exist_ok=True)
    canvas.save(out, format="PNG")
    keys = ["model", "model_version", "assets", "qa_checked", "qa_passed", "qa_pass_rate", "approved",
            "rejected", "generate_seconds"]
    checks = sorted(set(a["qa_failures"]) | set(b["qa_failures"]))
    rows = [(k, a[k], b[k]) for k in keys] + [(f"qa_fail_{c}", a["qa_failures"].get(c, 0),
                                               b["qa_failures"].get(c, 0)) for c in checks]
    return {"a": a, "b": b, "image": str(out), "rows": rows}


# -- tracing a file back (darkroom verify) --------------------------------------------------

@dataclass(frozen=True)
class Found:
    """The catalogued file a file's bytes are identical to."""

    asset_id: str
    channel: str  # a derivative's channel, or "original"
    exact: bool  # the published (signed) file or the original; not the derivative before signing
    what: str


def by_sha256(catalog: Catalog, sha256: str) -> Found | None:
    """The published file, derivative or original whose bytes have this SHA-256."""
    with catalog.session() as s:
        d = s.scalars(select(Derivative).where((Derivative.signed_sha256 == sha256)
                                               | (Derivative.sha256 == sha256))
                      .order_by(Derivative.id)).first()
        if d is not None:
            signed = d.signed_sha256 == sha256
            what = "the published file" if signed else "the derivative before signing"
            return Found(d.asset_id, d.channel, signed, f"byte-identical to {what}")
        a = s.scalars(select(Asset).where(Asset.sha256 == sha256)).first()
        return Found(a.id, "original", True, "byte-identical to the original") if a else None


def has_asset(catalog: Catalog, asset_id: str) -> bool:
    with catalog.session() as s:
        return s.get(Asset, asset_id) is not None


def fingerprints(catalog: Catalog) -> list[tuple[str, str, str | None, str]]:
    """(asset id, channel or "original", watermark key, perceptual hash) of every hashed
    derivative and original: what a file whose metadata is gone is compared with."""
    with catalog.session() as s:
        rows = s.execute(select(Derivative.asset_id, Derivative.channel, Derivative.watermark_key,
                                Derivative.phash).where(Derivative.phash.is_not(None))).all()
        rows += [(a, "original", None, p) for a, p in
                 s.execute(select(Asset.id, Asset.phash).where(Asset.phash.is_not(None))).all()]
    return [tuple(r) for r in rows]


@dataclass(frozen=True)
class Traced:
    """An asset's whole record, as ``darkroom verify`` answers from it."""

    answers: dict  # origin, generation, checks, approval, publications, regenerate
    spec_path: str | None  # the campaign's spec file, for its product row now
    watermark_keys: frozenset[str]  # the keys its derivatives carry


def trace(catalog: Catalog, asset_id: str, this_sha256: str) -> Traced:
    """The six answers about an asset from the catalog: origin (the product row as recorded;
    the caller reads it as the source holds it now), generation, checks, approval,
    publications (marking those with ``this_sha256``) and how to regenerate it."""
    with catalog.session() as s:
        asset = s.scalar(select(Asset).where(Asset.id == asset_id).options(
            selectinload(Asset.variant), selectinload(Asset.qa_results), selectinload(Asset.reviews),
            selectinload(Asset.derivatives)))
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
                             "sha256": p.sha256, "at": p.at.isoformat(),
                             "this_file": p.sha256 == this_sha256})
        spec_ref = campaign.spec_path if campaign and campaign.spec_path else run.campaign_id
        answers = {
            "origin": {
                "campaign": run.campaign_id,
                "brief": ((campaign.spec_body or {}).get("brief") or "").strip() if campaign else "",
                "spec": spec_ref, "spec_hash": run.spec_hash,
                "product_id": v.product_id,
                "product": {"recorded_row_hash": (v.params or {}).get("row_hash")},
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
        return Traced(answers, campaign.spec_path if campaign else None,
                      frozenset(d.watermark_key for d in asset.derivatives if d.watermark_key))
