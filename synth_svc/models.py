"""The synthesizer's own tables: batch jobs ("briefs") and their items."""

from __future__ import annotations

from datetime import datetime

from sqlalchemy import Float, ForeignKey, Index, Integer, MetaData, String, Text
from sqlalchemy.orm import DeclarativeBase, Mapped, mapped_column

from voiceslot.db import NAMING_CONVENTION, UtcDateTime


class Base(DeclarativeBase):
    metadata = MetaData(naming_convention=NAMING_CONVENTION)


class BatchJobRow(Base):
    __tablename__ = "batch_jobs"

    id: Mapped[str] = mapped_column(String(40), primary_key=True)
    owner: Mapped[str] = mapped_column(String(128), index=True)
    voice_id: Mapped[str] = mapped_column(String(40))
    # pending | running | completed | cancelled
    state: Mapped[str] = mapped_column(String(12))
    encoding: Mapped[str] = mapped_column(String(8))
    sample_rate: Mapped[int] = mapped_column(Integer)
    total_items: Mapped[int] = mapped_column(Integer)
    succeeded_items: Mapped[int] = mapped_column(Integer, default=0)
    failed_items: Mapped[int] = mapped_column(Integer, default=0)
    idempotency_key: Mapped[str | None] = mapped_column(String(200))
    created_at: Mapped[datetime] = mapped_column(UtcDateTime)
    updated_at: Mapped[datetime] = mapped_column(UtcDateTime)
    finished_at: Mapped[datetime | None] = mapped_column(UtcDateTime)

    __table_args__ = (
        Index("uq_batch_jobs_owner_idempotency", "owner", "idempotency_key", unique=True),
    )


class BatchItemRow(Base):
    __tablename__ = "batch_items"

    id: Mapped[str] = mapped_column(String(40), primary_key=True)
    job_id: Mapped[str] = mapped_column(ForeignKey("batch_jobs.id", ondelete="CASCADE"))
    position: Mapped[int] = mapped_column(Integer)
    name: Mapped[str] = mapped_column(String(128))
    text: Mapped[str] = mapped_column(Text)
    # pending | running | succeeded | failed | cancelled
    state: Mapped[str] = mapped_column(String(12))
    attempts: Mapped[int] = mapped_column(Integer, default=0)
    run_at: Mapped[datetime] = mapped_column(UtcDateTime)
    lease_token: Mapped[str | None] = mapped_column(String(40))
    lease_expires_at: Mapped[datetime | None] = mapped_column(UtcDateTime)
    claimed_by: Mapped[str | None] = mapped_column(String(200))
    """The worker that claimed the item last (kept after it finishes): who rendered it, or
    who held it when it was taken over."""
    error: Mapped[str] = mapped_column(String(500), default="")
    audio_key: Mapped[str | None] = mapped_column(String(300))
    audio_seconds: Mapped[float] = mapped_column(Float, default=0.0)
    updated_at: Mapped[datetime] = mapped_column(UtcDateTime)

    __table_args__ = (
        Index("uq_batch_items_job_name", "job_id", "name", unique=True),
        Index("ix_batch_items_claim", "state", "run_at"),
        Index("ix_batch_items_job_position", "job_id", "position"),
    )
