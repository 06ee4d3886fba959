"""The allocator's tables. The allocator is their only writer."""

from __future__ import annotations

from datetime import datetime

from sqlalchemy import BigInteger, Boolean, Float, ForeignKey, Index, Integer, MetaData, String
from sqlalchemy.orm import DeclarativeBase, Mapped, mapped_column

from voiceslot.db import NAMING_CONVENTION, UtcDateTime


class Base(DeclarativeBase):
    metadata = MetaData(naming_convention=NAMING_CONVENTION)


class VoiceRow(Base):
    __tablename__ = "voices"

    id: Mapped[str] = mapped_column(String(40), primary_key=True)
    owner: Mapped[str] = mapped_column(String(128), index=True)
    display_name: Mapped[str] = mapped_column(String(100))
    provider: Mapped[str] = mapped_column(String(40))
    language: Mapped[str] = mapped_column(String(16))
    state: Mapped[str] = mapped_column(String(16))
    generation: Mapped[int] = mapped_column(Integer, default=0)
    provider_voice_id: Mapped[str | None] = mapped_column(String(200))
    # Fencing token of the allocation in flight: a late answer from an allocation that
    # was reset meanwhile carries a stale token and changes nothing.
    allocation_token: Mapped[str | None] = mapped_column(String(40))
    pinned: Mapped[bool] = mapped_column(Boolean, default=False)
    sample_key: Mapped[str] = mapped_column(String(300))
    sample_sha256: Mapped[str] = mapped_column(String(64))
    sample_bytes: Mapped[int] = mapped_column(Integer)
    idempotency_key: Mapped[str | None] = mapped_column(String(200))
    last_error: Mapped[str] = mapped_column(String(500), default="")
    created_at: Mapped[datetime] = mapped_column(UtcDateTime)
    updated_at: Mapped[datetime] = mapped_column(UtcDateTime)
    state_changed_at: Mapped[datetime] = mapped_column(UtcDateTime)
    last_used_at: Mapped[datetime | None] = mapped_column(UtcDateTime)
    # Use statistics for the adaptive reclaim policy (domain.usage), moved by the lease
    # grant's own UPDATE (repository.slots.usage_touch).
    use_freq: Mapped[float] = mapped_column(Float, default=0.0, server_default="0")
    use_requests: Mapped[int] = mapped_column(Integer, default=0, server_default="0")
    use_continued: Mapped[int] = mapped_column(Integer, default=0, server_default="0")
    use_burst: Mapped[int] = mapped_column(Integer, default=0, server_default="0")
    use_sessions: Mapped[int] = mapped_column(Integer, default=0, server_default="0")
    use_expected: Mapped[float] = mapped_column(Float, default=0.0, server_default="0")
    use_gap_sum: Mapped[float] = mapped_column(Float, default=0.0, server_default="0")
    # The latest request (lease granted): session gaps count from here, across a clone
    # (completing one moves last_used_at, which is no request).
    use_at: Mapped[datetime | None] = mapped_column(UtcDateTime)
    # The voice's lease rows, expired ones not yet deleted included (migration a0006).
    # Every writer of leases (the grant, release, the expiry sweep) changes it under the
    # voice's row lock, taken before any lease row's. The grant deletes the voice's
    # expired leases first, so its count is the active leases without reading them.
    leases_held: Mapped[int] = mapped_column(Integer, default=0, server_default="0")
    # Every lease of the voice that expired by this moment is deleted: PostgreSQL's grant
    # looks for expired leases only after it. Deleted rows stay in the index until
    # VACUUM, and a search from the start of the voice's range stepped over all of them.
    leases_purged_to: Mapped[datetime | None] = mapped_column(UtcDateTime)

    __table_args__ = (
        Index("ix_voices_provider_state", "provider", "state"),
        Index("uq_voices_owner_idempotency", "owner", "idempotency_key", unique=True),
    )


class ProviderRow(Base):
    """One provider account. Dispatchers lock this row to decide on its capacity, so
    replicas can never overshoot it; breaker and token-bucket state live here too so that
    every replica sees the same."""

    __tablename__ = "providers"

    name: Mapped[str] = mapped_column(String(40), primary_key=True)
    kind: Mapped[str] = mapped_column(String(20))
    capacity: Mapped[int] = mapped_column(Integer)
    add_edit_remaining: Mapped[int | None] = mapped_column(Integer)
    breaker_state: Mapped[str] = mapped_column(String(12), default="closed")
    breaker_failures: Mapped[int] = mapped_column(Integer, default=0)
    breaker_open_until: Mapped[datetime | None] = mapped_column(UtcDateTime)
    tokens: Mapped[float] = mapped_column(Float, default=0.0)
    tokens_at: Mapped[datetime | None] = mapped_column(UtcDateTime)
    # Exponentially weighted mean of measured clone durations (domain.estimates); None
    # until the first clone completes. Queue wait estimates are made from it.
    clone_seconds: Mapped[float | None] = mapped_column(Float)
    updated_at: Mapped[datetime] = mapped_column(UtcDateTime)


class AllocationRequestRow(Base):
    """A durable queue entry: "give voice V a slot at provider P"."""

    __tablename__ = "allocation_requests"

    id: Mapped[int] = mapped_column(
        BigInteger().with_variant(Integer, "sqlite"), primary_key=True, autoincrement=True
    )
    voice_id: Mapped[str] = mapped_column(ForeignKey("voices.id", ondelete="CASCADE"), index=True)
    owner: Mapped[str] = mapped_column(String(128))
    provider: Mapped[str] = mapped_column(String(40))
    priority: Mapped[int] = mapped_column(Integer, default=0)
    # queued | leased | done | dead
    state: Mapped[str] = mapped_column(String(10))
    attempts: Mapped[int] = mapped_column(Integer, default=0)
    run_at: Mapped[datetime] = mapped_column(UtcDateTime)
    lease_token: Mapped[str | None] = mapped_column(String(40))
    lease_expires_at: Mapped[datetime | None] = mapped_column(UtcDateTime)
    # voice id + generation: re-asking for the same allocation never enqueues twice.
    idempotency_key: Mapped[str] = mapped_column(String(120), unique=True)
    last_error: Mapped[str] = mapped_column(String(500), default="")
    created_at: Mapped[datetime] = mapped_column(UtcDateTime)
    updated_at: Mapped[datetime] = mapped_column(UtcDateTime)

    __table_args__ = (
        Index("ix_allocation_requests_dispatch", "provider", "state", "run_at"),
        # Per-user caps count a user's queued and in-flight requests on every enqueue.
        Index("ix_allocation_requests_owner_state", "owner", "state"),
    )


class AllocationTurnRow(Base):
    """When each user's request was last taken at each provider: the round-robin turn.

    Fair dispatch serves users holding fewer slots first and, among equals, the user
    served least recently. Without this a user whose slots were all just reclaimed
    would tie with users never served, and its older request ids would win every tie:
    the big user's 500 voices would starve everyone else one freed slot at a time.
    """

    __tablename__ = "allocation_turns"

    provider: Mapped[str] = mapped_column(String(40), primary_key=True)
    owner: Mapped[str] = mapped_column(String(128), primary_key=True)
    last_claimed_at: Mapped[datetime] = mapped_column(UtcDateTime)


class QueueStandingRow(Base):
    """Each user's standing in the fair order at each provider: slots held (voices in
    ``SLOT_HOLDING``) and allocation requests queued.

    A cached aggregate of ``voices`` and ``allocation_requests``, kept exact by triggers
    in the database (migration a0005), never written by the allocator itself: the fair
    order reads it instead of counting both tables on every dispatch round.
    """

    __tablename__ = "queue_standing"

    provider: Mapped[str] = mapped_column(String(40), primary_key=True)
    owner: Mapped[str] = mapped_column(String(128), primary_key=True)
    held: Mapped[int] = mapped_column(Integer)
    queued: Mapped[int] = mapped_column(Integer)

    # The fair order reads the users waiting at a provider in order of slots held.
    __table_args__ = (Index("ix_queue_standing_provider_held", "provider", "held", "owner"),)


class LeaseRow(Base):
    __tablename__ = "leases"

    id: Mapped[str] = mapped_column(String(40), primary_key=True)
    voice_id: Mapped[str] = mapped_column(ForeignKey("voices.id", ondelete="CASCADE"))
    owner: Mapped[str] = mapped_column(String(128))
    holder: Mapped[str] = mapped_column(String(200), default="")
    expires_at: Mapped[datetime] = mapped_column(UtcDateTime, index=True)
    created_at: Mapped[datetime] = mapped_column(UtcDateTime)

    # Every EnsureActiveVoice and reclaim counts a voice's *active* leases: (voice, expiry)
    # answers that from the index alone, however many expired leases await the sweeper.
    __table_args__ = (Index("ix_leases_voice_id_expires_at", "voice_id", "expires_at"),)


class VoiceEventRow(Base):
    """History of a voice. No foreign key: events outlive a deleted voice."""

    __tablename__ = "voice_events"

    id: Mapped[int] = mapped_column(
        BigInteger().with_variant(Integer, "sqlite"), primary_key=True, autoincrement=True
    )
    voice_id: Mapped[str] = mapped_column(String(40), index=True)
    reason: Mapped[str] = mapped_column(String(40))
    from_state: Mapped[str] = mapped_column(String(16), default="")
    to_state: Mapped[str] = mapped_column(String(16), default="")
    message: Mapped[str] = mapped_column(String(500), default="")
    occurred_at: Mapped[datetime] = mapped_column(UtcDateTime)
