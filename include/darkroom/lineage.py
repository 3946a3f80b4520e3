"""Answering "where did this file come from?" from the catalog."""

from __future__ import annotations

from sqlalchemy import select
from sqlalchemy.orm import selectinload

from darkroom.catalog import Catalog
from darkroom.models import Asset, Derivative, Run, Variant


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


def search(catalog: Catalog, *, campaign: str | None = None, product: str | None = None,
           status: str | None = None, model_version: str | None = None,
           run_id: str | None = None, limit: int | None = None) -> list[dict]:
    """Assets matching every given filter (none: every asset), newest first."""
    with catalog.session() as s:
        q = (select(Asset, Run).join(Run, Run.id == Asset.run_pk).join(Variant)
             .options(selectinload(Asset.qa_results), selectinload(Asset.reviews),
                      selectinload(Asset.derivatives).selectinload(Derivative.publications),
                      selectinload(Asset.variant))
             .order_by(Asset.created_at.desc(), Asset.id))
        if campaign:
            q = q.where(Run.campaign_id == campaign)
        if product:
            q = q.where(Variant.product_id == product)
        if status:
            q = q.where(Asset.status == status)
        if model_version:
            q = q.where(Asset.model_version == model_version)
        if run_id:
            q = q.where(Run.run_id == run_id)
        if limit:
            q = q.limit(limit)
        return [asset_record(a, run) for a, run in s.execute(q).all()]
