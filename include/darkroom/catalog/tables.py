"""The catalog's tables: the source of truth for every variant, asset, check, decision and
publication. File names are for convenience; these rows are what lineage queries read.

Changing a table means a new Alembic revision in darkroom/catalog/migrations/versions.
"""

from __future__ import annotations

import enum
from datetime import UTC, datetime

from sqlalchemy import (
    JSON,
    BigInteger,
    Boolean,
    DateTime,
    Float,
    ForeignKey,
    Index,
    Integer,
    String,
    Text,
    TypeDecorator,
    UniqueConstraint,
    false,
)
from sqlalchemy.orm import DeclarativeBase, Mapped, mapped_column, relationship

from darkroom.ids import run_key


def utcnow() -> datetime:
    return datetime.now(UTC)


class UTCDateTime(TypeDecorator):
    """Timezone-aware on every backend: SQLite drops the zone, so values read back get UTC."""

    impl = DateTime(timezone=True)
    cache_ok = True

    def process_result_value(self, value, dialect):
        if value is not None and value.tzinfo is None:
            value = value.replace(tzinfo=UTC)
        return value


class Base(DeclarativeBase):
    type_annotation_map = {dict: JSON, list: JSON, datetime: UTCDateTime}


class AssetStatus(enum.StrEnum):
    pending = "pending"
    generated = "generated"
    qa_passed = "qa_passed"
    qa_failed = "qa_failed"
    needs_review = "needs_review"
    approved = "approved"
    rejected = "rejected"
    published = "published"
    failed = "failed"


# Statuses from which a human decision is expected.
REVIEWABLE = (AssetStatus.qa_passed, AssetStatus.needs_review)


class Campaign(Base):
    __tablename__ = "campaign"

    id: Mapped[str] = mapped_column(String(64), primary_key=True)
    spec_hash: Mapped[str] = mapped_column(String(64))
    spec_path: Mapped[str] = mapped_column(Text)
    spec_body: Mapped[dict] = mapped_column(JSON)
    updated_at: Mapped[datetime] = mapped_column(UTCDateTime, default=utcnow)


class Run(Base):
    """One attempt of an Airflow DAG run. A DAG run re-processed with other Params or another
    model (a backfill with ``--reprocess-behavior completed`` clears it and keeps its run id)
    is a new attempt: its own plan, assets, review, manifest and MLflow run (0008)."""

    __tablename__ = "run"
    __table_args__ = (UniqueConstraint("dag_id", "run_id", "attempt", name="uq_run_dag_run_attempt"),)

    id: Mapped[int] = mapped_column(Integer, primary_key=True, autoincrement=True)
    campaign_id: Mapped[str] = mapped_column(ForeignKey("campaign.id"), index=True)
    dag_id: Mapped[str] = mapped_column(String(250))
    run_id: Mapped[str] = mapped_column(String(250))
    spec_hash: Mapped[str] = mapped_column(String(64))
    conf: Mapped[dict] = mapped_column(JSON, default=dict)
    model_ref: Mapped[str | None] = mapped_column(Text)
    model_version: Mapped[str | None] = mapped_column(String(128))
    mlflow_run_id: Mapped[str | None] = mapped_column(String(64))
    state: Mapped[str] = mapped_column(String(32), default="running")
    summary: Mapped[dict] = mapped_column(JSON, default=dict)
    contact_sheet_uri: Mapped[str | None] = mapped_column(Text)
    manifest_uri: Mapped[str | None] = mapped_column(Text)
    started_at: Mapped[datetime] = mapped_column(UTCDateTime, default=utcnow)
    attempt: Mapped[int] = mapped_column(Integer, default=0, server_default="0")
    # The model the attempt draws with (generation.models.ModelRef.identity), resolved by
    # validate_inputs when its worker can: what asset ids hash (0008).
    model_identity: Mapped[str | None] = mapped_column(Text)

    @property
    def key(self) -> str:
        """A path-safe name for the run attempt, used in storage keys."""
        return run_key(self.run_id, self.attempt)


class ValidationResult(Base):
    __tablename__ = "validation_result"

    id: Mapped[int] = mapped_column(Integer, primary_key=True, autoincrement=True)
    run_pk: Mapped[int] = mapped_column(ForeignKey("run.id"), index=True)
    suite: Mapped[str] = mapped_column(String(250))
    success: Mapped[bool] = mapped_column(Boolean)
    rows: Mapped[int] = mapped_column(Integer)
    summary: Mapped[dict] = mapped_column(JSON)
    at: Mapped[datetime] = mapped_column(UTCDateTime, default=utcnow)


class Variant(Base):
    """One thing to generate: a product x asset type x seed, rendered from templates.

    The id is a hash of everything that decides the pixels except the model, so a
    re-run with the same inputs finds the same variant, and a new model version makes a
    new asset version of it.
    """

    __tablename__ = "variant"

    id: Mapped[str] = mapped_column(String(32), primary_key=True)
    campaign_id: Mapped[str] = mapped_column(ForeignKey("campaign.id"), index=True)
    product_id: Mapped[str] = mapped_column(String(250), index=True)
    asset_type: Mapped[str] = mapped_column(String(64))
    channels: Mapped[list] = mapped_column(JSON)
    template_version: Mapped[str] = mapped_column(String(16), index=True)
    prompt: Mapped[str] = mapped_column(Text)
    negative_prompt: Mapped[str] = mapped_column(Text, default="")
    seed: Mapped[int] = mapped_column(BigInteger)
    params: Mapped[dict] = mapped_column(JSON)
    created_at: Mapped[datetime] = mapped_column(UTCDateTime, default=utcnow)
    # QA regeneration: attempt n+1 of a failed variant is a new variant (next seed) that
    # points at the one it replaces. No FK constraint, so SQLite can add the column in place.
    regenerated_from: Mapped[str | None] = mapped_column(String(32), index=True)
    attempt: Mapped[int] = mapped_column(Integer, default=0, server_default="0")


class PlanItem(Base):
    """A variant planned for a run, and the mapped batch it belongs to."""

    __tablename__ = "plan_item"
    __table_args__ = (Index("ix_plan_run_batch", "run_pk", "batch"),)

    run_pk: Mapped[int] = mapped_column(ForeignKey("run.id"), primary_key=True)
    variant_id: Mapped[str] = mapped_column(ForeignKey("variant.id"), primary_key=True)
    batch: Mapped[int] = mapped_column(Integer)
    position: Mapped[int] = mapped_column(Integer)
    # planned | policy_rejected
    status: Mapped[str] = mapped_column(String(32), default="planned")
    reason: Mapped[str | None] = mapped_column(Text)
    # The backend the spec's routing rules chose when the run was planned (0006): the GPU
    # worker reads it instead of the product source.
    backend: Mapped[str | None] = mapped_column(String(32))


class Asset(Base):
    __tablename__ = "asset"
    __table_args__ = (
        UniqueConstraint("variant_id", "version", name="uq_asset_variant_version"),
        Index("ix_asset_model", "model_name", "model_version"),
        # Lineage queries filter by date range, usually with a status (0006_lineage).
        Index("ix_asset_created_at", "created_at"),
        Index("ix_asset_status_created_at", "status", "created_at"),
        # The gallery's pages (keyset on created_at, id) and per-status counts of a run (0010).
        Index("ix_asset_run_created_at", "run_pk", "created_at", "id"),
        Index("ix_asset_run_status_created_at", "run_pk", "status", "created_at", "id"),
    )

    id: Mapped[str] = mapped_column(String(32), primary_key=True)
    variant_id: Mapped[str] = mapped_column(ForeignKey("variant.id"), index=True)
    version: Mapped[int] = mapped_column(Integer, default=1)
    supersedes_id: Mapped[str | None] = mapped_column(ForeignKey("asset.id"))
    run_pk: Mapped[int] = mapped_column(ForeignKey("run.id"), index=True)
    status: Mapped[str] = mapped_column(String(32), default=AssetStatus.pending, index=True)
    failure_reason: Mapped[str | None] = mapped_column(Text)
    uri: Mapped[str | None] = mapped_column(Text)
    sha256: Mapped[str | None] = mapped_column(String(64))
    width: Mapped[int | None] = mapped_column(Integer)
    height: Mapped[int | None] = mapped_column(Integer)
    format: Mapped[str | None] = mapped_column(String(16))
    bytes: Mapped[int | None] = mapped_column(BigInteger)
    phash: Mapped[str | None] = mapped_column(String(32))
    model_name: Mapped[str] = mapped_column(Text)
    model_version: Mapped[str] = mapped_column(String(128))
    loras: Mapped[list] = mapped_column(JSON, default=list)
    scheduler: Mapped[str] = mapped_column(String(32))
    steps: Mapped[int] = mapped_column(Integer)
    guidance: Mapped[float] = mapped_column(Float)
    seed: Mapped[int] = mapped_column(BigInteger)
    backend: Mapped[str] = mapped_column(String(32))
    # Why that backend made it (0011): primary (routing chose it), fallback (the primary was
    # down during the task), burst (sent to a hosted API while the GPU pool was backed up).
    route: Mapped[str] = mapped_column(String(16), default="primary", server_default="primary")
    timings: Mapped[dict] = mapped_column(JSON, default=dict)
    # Variant ids of the forward pass that made it (see generation.types.Result.forward_pass).
    forward_pass: Mapped[list | None] = mapped_column(JSON)
    # The original upscaled by the model upscaler (0006), made on the GPU queue for the
    # derivatives: {uri, sha256, by, to}, or {by, to, error} when it failed for this asset.
    upscaled: Mapped[dict | None] = mapped_column(JSON)
    created_at: Mapped[datetime] = mapped_column(UTCDateTime, default=utcnow)
    # approval.review exception (0009): the asset passed QA cleanly but was drawn for the
    # audit sample, so people decide it; their rejections can withdraw the policy's approvals.
    audit_sample: Mapped[bool] = mapped_column(Boolean, default=False, server_default=false())
    # The gallery's thumbnail of the original (0010): made once (postprocess, else the first
    # request), never published, so not a channel's Derivative row; its bytes never change,
    # so the sha256 is the HTTP ETag.
    thumbnail_uri: Mapped[str | None] = mapped_column(Text)
    thumbnail_sha256: Mapped[str | None] = mapped_column(String(64))

    variant: Mapped[Variant] = relationship()
    qa_results: Mapped[list[QAResult]] = relationship(
        back_populates="asset", order_by="QAResult.check"
    )
    derivatives: Mapped[list[Derivative]] = relationship(
        back_populates="asset", order_by="Derivative.channel"
    )
    reviews: Mapped[list[Review]] = relationship(back_populates="asset", order_by="Review.id")
    # The LoRAs as rows (besides the ``loras`` JSON): "every image made with LoRA X" is an
    # indexed lookup instead of a JSON scan.
    lora_rows: Mapped[list[AssetLora]] = relationship(cascade="all, delete-orphan",
                                                      order_by="AssetLora.name")


class AssetClaim(Base):
    """Which run draws an asset: one row per asset id (a variant at one model identity), made
    before the image is (0008). Runs of one campaign at once (a backfill beside a scheduled
    refresh, a refresh beside a run waiting for reviewers) each draw only what they claimed:
    the primary key lets exactly one of them insert it. A run that finished (or died) leaves
    what it did not get to decide to whichever run plans that variant next, which adopts it."""

    __tablename__ = "asset_claim"

    asset_id: Mapped[str] = mapped_column(String(32), primary_key=True)
    variant_id: Mapped[str] = mapped_column(ForeignKey("variant.id"), index=True)
    run_pk: Mapped[int] = mapped_column(ForeignKey("run.id"), index=True)
    claimed_at: Mapped[datetime] = mapped_column(UTCDateTime, default=utcnow)


class AssetLora(Base):
    __tablename__ = "asset_lora"
    __table_args__ = (Index("ix_asset_lora_name_version", "name", "version"),)

    asset_id: Mapped[str] = mapped_column(ForeignKey("asset.id"), primary_key=True)
    name: Mapped[str] = mapped_column(String(128), primary_key=True)
    version: Mapped[str] = mapped_column(String(64))
    weight: Mapped[float] = mapped_column(Float)


class QAResult(Base):
    __tablename__ = "qa_result"
    __table_args__ = (
        UniqueConstraint("asset_id", "check", name="uq_qa_asset_check"),
        # "every asset that failed the sharpness check" (0006_lineage).
        Index("ix_qa_result_check_passed", "check", "passed"),
    )

    id: Mapped[int] = mapped_column(Integer, primary_key=True, autoincrement=True)
    asset_id: Mapped[str] = mapped_column(ForeignKey("asset.id"), index=True)
    check: Mapped[str] = mapped_column(String(64))
    value: Mapped[float | None] = mapped_column(Float)
    threshold: Mapped[float | None] = mapped_column(Float)
    passed: Mapped[bool] = mapped_column(Boolean)
    # pass | fail | borderline | not_run; a not_run check is stored with passed = False.
    status: Mapped[str] = mapped_column(String(16), default="pass", server_default="pass")
    detail: Mapped[str] = mapped_column(Text, default="")
    at: Mapped[datetime] = mapped_column(UTCDateTime, default=utcnow)

    asset: Mapped[Asset] = relationship(back_populates="qa_results")


class Derivative(Base):
    __tablename__ = "derivative"
    __table_args__ = (UniqueConstraint("asset_id", "channel", name="uq_derivative_asset_channel"),
                      # darkroom verify: a stripped file by its watermark, a file by its bytes
                      Index("ix_derivative_watermark_key", "watermark_key"),
                      Index("ix_derivative_signed_sha256", "signed_sha256"))

    id: Mapped[int] = mapped_column(Integer, primary_key=True, autoincrement=True)
    asset_id: Mapped[str] = mapped_column(ForeignKey("asset.id"), index=True)
    channel: Mapped[str] = mapped_column(String(64))
    uri: Mapped[str] = mapped_column(Text)
    sha256: Mapped[str] = mapped_column(String(64))
    width: Mapped[int] = mapped_column(Integer)
    height: Mapped[int] = mapped_column(Integer)
    format: Mapped[str] = mapped_column(String(16))
    bytes: Mapped[int] = mapped_column(BigInteger)
    # Provenance (0007): the derivative's perceptual hash; the invisible watermark's
    # method and key (darkroom.provenance.watermark), None when the channel has none; the
    # signed file publishing copied (Content Credentials with the approval, signed_review_id).
    phash: Mapped[str | None] = mapped_column(String(32))
    watermark: Mapped[str | None] = mapped_column(String(32))
    watermark_key: Mapped[str | None] = mapped_column(String(16))
    signed_uri: Mapped[str | None] = mapped_column(Text)
    signed_sha256: Mapped[str | None] = mapped_column(String(64))
    signed_bytes: Mapped[int | None] = mapped_column(BigInteger)
    signed_review_id: Mapped[int | None] = mapped_column(Integer)

    asset: Mapped[Asset] = relationship(back_populates="derivatives")
    publications: Mapped[list[Publication]] = relationship(back_populates="derivative")


class Review(Base):
    """An audit-logged decision. The asset's current decision is its latest review row."""

    __tablename__ = "review"

    id: Mapped[int] = mapped_column(Integer, primary_key=True, autoincrement=True)
    asset_id: Mapped[str] = mapped_column(ForeignKey("asset.id"), index=True)
    # approved | rejected | withdrawn (a policy's approval taken back: the decisions before
    # it no longer count, and people decide; darkroom.catalog.reviews)
    decision: Mapped[str] = mapped_column(String(16))
    reviewer: Mapped[str] = mapped_column(String(250), index=True)
    note: Mapped[str] = mapped_column(Text, default="")
    at: Mapped[datetime] = mapped_column(UTCDateTime, default=utcnow)

    asset: Mapped[Asset] = relationship(back_populates="reviews")


class DeviceUse(Base):
    """What one GPU-stage task (generate, a QA regeneration, upscale) ran on, and for how
    long (0006): the device, the dtype, the seconds in model passes and the peak memory, as
    that task measured them on its own worker. track reads these; it never probes its own."""

    __tablename__ = "device_use"

    id: Mapped[int] = mapped_column(Integer, primary_key=True, autoincrement=True)
    run_pk: Mapped[int] = mapped_column(ForeignKey("run.id"), index=True)
    batch: Mapped[int] = mapped_column(Integer)
    stage: Mapped[str] = mapped_column(String(32))  # generate | upscale
    worker: Mapped[str] = mapped_column(String(250))  # the host Airflow says ran the task
    device: Mapped[str] = mapped_column(String(128))  # cuda:0 NVIDIA H200 | cpu | remote
    dtype: Mapped[str | None] = mapped_column(String(16))
    images: Mapped[int] = mapped_column(Integer)
    seconds: Mapped[float] = mapped_column(Float)
    peak_memory_bytes: Mapped[int | None] = mapped_column(BigInteger)
    at: Mapped[datetime] = mapped_column(UTCDateTime, default=utcnow)


class Publication(Base):
    __tablename__ = "publication"
    __table_args__ = (
        UniqueConstraint("derivative_id", "destination", name="uq_publication_derivative_dest"),
    )

    id: Mapped[int] = mapped_column(Integer, primary_key=True, autoincrement=True)
    derivative_id: Mapped[int] = mapped_column(ForeignKey("derivative.id"), index=True)
    run_pk: Mapped[int] = mapped_column(ForeignKey("run.id"), index=True)
    destination: Mapped[str] = mapped_column(Text)
    uri: Mapped[str] = mapped_column(Text)
    sha256: Mapped[str] = mapped_column(String(64))
    at: Mapped[datetime] = mapped_column(UTCDateTime, default=utcnow)

    derivative: Mapped[Derivative] = relationship(back_populates="publications")
