"""Answering "where did this file come from?" from the catalog."""

from __future__ import annotations

from collections import Counter
from datetime import UTC, datetime, timedelta
from pathlib import Path

from PIL import Image, ImageDraw
from sqlalchemy import exists, select
from sqlalchemy.orm import selectinload

from darkroom import imaging
from darkroom.catalog.db import Catalog
from darkroom.catalog.tables import Asset, AssetLora, Derivative, QAResult, Review, Run, Variant
from darkroom.errors import DarkroomError
from darkroom.storage import read_uri


def asset_record(a: Asset, run: Run) -> dict:
    v = a.variant
    latest = a.reviews[-1] if a.reviews else None
    return {
        "asset_id": a.id, "version": a.version, "supersedes": a.supersedes_id,
        "campaign": run.campaign_id, "dag_id": run.dag_id, "run_id": run.run_id,
        "status": a.status, "failure_reason": a.failure_reason,
        "variant_id": v.id, "product_id": v.product_id, "asset_type": v.asset_type,
        "prompt": v.prompt, "negative_prompt": v.negative_prompt,
        "template_version": v.template_version, "seed": a.seed,
        "model": {"name": a.model_name, "version": a.model_version, "loras": a.loras},
        "params": {"scheduler": a.scheduler, "steps": a.steps, "guidance": a.guidance,
                   "width": a.width, "height": a.height, "backend": a.backend},
        "uri": a.uri, "sha256": a.sha256, "phash": a.phash, "timings": a.timings,
        "qa": [{"check": q.check, "value": q.value, "threshold": q.threshold,
                "passed": q.passed, "detail": q.detail} for q in a.qa_results],
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
