"""The batch worker: renders claimed items to stored audio files.

Every replica runs one, processing up to ``batch_workers`` items at once. An item's claim
is a lease kept alive while it renders; if the worker dies, the lease expires and another
replica takes the item over. Transient failures (no slot yet, provider 5xx or 429) are
retried with backoff up to ``item_max_attempts``; permanent ones fail the item with its
reason. Audio is written before the outcome is recorded, under a key of the item's own
(the same for every attempt): an attempt that dies after writing, or finds its claim taken
over, leaves a file the next attempt overwrites (never deletes: it may be the one the
other worker recorded), and an item that fails for good has its file removed. So every
recorded success has its file, and no file outlives its item's failure.

A stopping worker hands the items it still holds back at once; a dead one's items are
taken over when their claim's lease (``item_lease``) runs out.
"""

from __future__ import annotations

import asyncio
import contextlib
import random
import time
from datetime import timedelta

from synth_svc.batch import BatchJobs
from synth_svc.domain.batch import ItemState, retry_delay_s, should_retry
from synth_svc.domain.formats import OutputFormat
from synth_svc.domain.timing import renew_every_s
from synth_svc.repository import ClaimedItem, JobRepository
from synth_svc.service import SpeechRequest, Synthesizer
from voiceslot import errors, telemetry
from voiceslot.audio import FILE_EXTENSIONS
from voiceslot.clock import Clock
from voiceslot.config import StorageConfig, SynthConfig
from voiceslot.logs import bound_context, get_logger
from voiceslot.providers.errors import ProviderError
from voiceslot.storage.base import Storage
from voiceslot.storage.retention import apply_retention
from voiceslot.waiting import cancel_and_wait, finish_or_cancel, wait_at_most

log = get_logger(__name__)

ITEM_LEASE = timedelta(seconds=60)
"""How long a claim on an item lasts without renewal: after a worker dies, its items wait
this long before another worker takes them over."""
# How long an item may wait for its voice to get a slot before the attempt counts as failed.
SLOT_WAIT_S = 300.0
RETENTION_EVERY_S = 3600.0
"""How often the worker sweeps rendered audio past ``storage.retention_days``."""


def is_transient(exc: Exception) -> bool:
    """Whether another attempt at the item may succeed. Besides the providers' retryable
    errors and our own "try later" ones, an ``OSError`` from local storage (a full disk,
    an I/O hiccup) is worth retrying: nothing about the item itself is wrong."""
    if isinstance(exc, ProviderError):
        return exc.retryable
    return isinstance(
        exc,
        errors.Unavailable
        | errors.QuotaExceeded
        | errors.DeadlineExceeded
        | errors.Aborted
        | OSError,
    )


def audio_key(claim: ClaimedItem) -> str:
    # Generated from our own ids only: user-chosen item names never reach storage paths.
    # The same for every attempt, so an attempt that dies after writing leaves nothing a
    # later attempt does not overwrite.
    return f"audio/{claim.job_id}/{claim.id}.{FILE_EXTENSIONS[claim.encoding]}"


class BatchWorker:
    def __init__(
        self,
        *,
        jobs: JobRepository,
        batch: BatchJobs,
        synthesizer: Synthesizer,
        storage: Storage,
        config: SynthConfig,
        storage_config: StorageConfig,
        clock: Clock,
        poll_s: float = 0.5,
        rng: random.Random | None = None,
        item_lease: timedelta = ITEM_LEASE,
        retention_every_s: float = RETENTION_EVERY_S,
        slot_wait_s: float = SLOT_WAIT_S,
        holder: str = "",
    ) -> None:
        """``item_lease``: claim lifetime (a dead worker's items are taken over after it);
        ``retention_every_s``: period of the audio retention sweep; ``slot_wait_s``: how
        long one attempt waits for its voice's slot; ``holder``: this worker's name,
        recorded on the items it claims."""
        if item_lease <= timedelta(0):
            raise ValueError(f"item_lease must be positive, not {item_lease}")
        self.jobs = jobs
        self.batch = batch
        self.synthesizer = synthesizer
        self.storage = storage
        self.config = config
        self.storage_config = storage_config
        self.clock = clock
        self.poll_s = poll_s
        self.rng = rng or random.Random()
        self.item_lease = item_lease
        self.retention_every_s = retention_every_s
        self.slot_wait_s = slot_wait_s
        self.holder = holder
        self._running: set[asyncio.Task[None]] = set()
        self._synthesizing: set[str] = set()
        """Ids of claimed items not past synthesis yet: what ``batch_workers`` bounds."""
        self._wake = asyncio.Event()
        self._task: asyncio.Task[None] | None = None
        self._last_retention: float | None = None

    def start(self) -> None:
        if self.config.batch_workers > 0 or self.storage_config.retention_days:
            self._task = asyncio.create_task(self._loop(), name="batch-worker")

    def wake(self) -> None:
        self._wake.set()

    async def stop(self, *, grace_s: float = 10.0) -> None:
        """Stop claiming; let items in flight finish within ``grace_s``. Items still running
        after that are handed back to the queue at once (not after their lease expires),
        without counting the attempt."""
        if self._task:
            await cancel_and_wait(self._task)
        await finish_or_cancel(list(self._running), grace_s)

    async def run_once(self) -> int:
        """Claim what fits and start it; how many were claimed.

        ``batch_workers`` bounds the items being *synthesized*: the provider's concurrency
        is what it sizes. An item that has its audio leaves that count at once, and the
        next one is claimed while it is stored and recorded, so a slot is not idle for
        those round trips. At most as many again may be storing at a time."""
        slots = self.config.batch_workers
        free = min(slots - len(self._synthesizing), 2 * slots - len(self._running))
        if free <= 0:
            return 0
        claims = await self.jobs.claim(
            now=self.clock.now(), limit=free, lease=self.item_lease, holder=self.holder
        )
        for claim in claims:
            self._synthesizing.add(claim.id)
            task = asyncio.create_task(self.process(claim))
            self._running.add(task)
            task.add_done_callback(
                lambda t, item=claim.id: (
                    self._running.discard(t),
                    self._synthesizing.discard(item),
                    self._wake.set(),
                )
            )
        return len(claims)

    def _synthesized(self, claim: ClaimedItem) -> None:
        """The item's engine work is over: its slot may take the next item."""
        self._synthesizing.discard(claim.id)
        self._wake.set()

    async def sweep(self) -> list[str]:
        """Delete rendered audio older than ``storage.retention_days``; the keys deleted."""
        days = self.storage_config.retention_days
        if not days:
            return []
        return await apply_retention(
            self.storage, prefix="audio/", now=self.clock.now(), max_age=timedelta(days=days)
        )

    def _retention_due(self) -> bool:
        return bool(self.storage_config.retention_days) and (
            self._last_retention is None
            or time.monotonic() - self._last_retention >= self.retention_every_s
        )

    async def _loop(self) -> None:
        while True:
            self._wake.clear()
            try:
                if self.config.batch_workers > 0:
                    await self.run_once()
                if self._retention_due():
                    self._last_retention = time.monotonic()
                    if removed := await self.sweep():
                        log.info("retention removed rendered audio", objects=len(removed))
            except Exception as exc:  # a database hiccup must not end the worker
                log.error("batch worker round failed", error=repr(exc))
            await wait_at_most(self.poll_s, self._wake.wait())

    async def _keep_claim(self, claim: ClaimedItem) -> None:
        while True:
            await asyncio.sleep(renew_every_s(self.item_lease.total_seconds()))
            with contextlib.suppress(Exception):  # the next round tries again
                await self.jobs.extend(
                    claim.id, claim.token, until=self.clock.now() + self.item_lease
                )

    async def process(self, claim: ClaimedItem) -> None:
        with bound_context(job=claim.job_id, item=claim.id, voice=claim.voice_id):
            keeper = asyncio.create_task(self._keep_claim(claim))
            try:
                await self._render(claim)
            except asyncio.CancelledError:
                # Stopping: give the item back now rather than when its lease runs out.
                await asyncio.shield(self._hand_back(claim))
                raise
            except Exception as exc:
                try:
                    await self._failed(claim, exc)
                except Exception as again:  # the lease expires and another worker retries
                    log.error("recording a batch item's failure failed", error=repr(again))
            finally:
                await cancel_and_wait(keeper)
                await self.batch.notify()

    async def _hand_back(self, claim: ClaimedItem) -> None:
        try:
            await self.jobs.hand_back(claim, now=self.clock.now())
        except Exception as exc:  # the lease expires and another worker takes it over
            log.warning("handing a batch item back failed", error=repr(exc))

    async def _render(self, claim: ClaimedItem) -> None:
        request = SpeechRequest(
            claim.voice_id, claim.text, OutputFormat(claim.encoding, claim.sample_rate)
        )
        try:
            data, _, seconds = await self.synthesizer.synthesize(
                request, deadline=time.monotonic() + self.slot_wait_s
            )
        finally:
            self._synthesized(claim)
        key = audio_key(claim)
        await self.storage.put(key, data)
        recorded = await self.jobs.finish(
            claim,
            now=self.clock.now(),
            outcome=ItemState.SUCCEEDED,
            audio_key=key,
            audio_seconds=seconds,
        )
        if not recorded:  # our claim was taken over; the other worker's file will stand
            return
        telemetry.BATCH_ITEMS.labels("succeeded").inc()

    async def _failed(self, claim: ClaimedItem, exc: Exception) -> None:
        reason = (
            exc.message if isinstance(exc, errors.VoiceslotError | ProviderError) else repr(exc)
        )
        error = f"{type(exc).__name__}: {reason}"
        now = self.clock.now()
        if should_retry(
            claim.attempts, max_attempts=self.config.item_max_attempts, transient=is_transient(exc)
        ):
            delay = retry_delay_s(
                claim.attempts, rng=self.rng, retry_after=getattr(exc, "retry_after", None)
            )
            await self.jobs.finish(
                claim,
                now=now,
                outcome=ItemState.PENDING,
                error=error,
                retry_at=now + timedelta(seconds=delay),
            )
            telemetry.BATCH_ITEMS.labels("retried").inc()
            log.info(
                "batch item will be retried",
                error=error,
                attempts=claim.attempts,
                delay_s=round(delay, 2),
            )
        else:
            recorded = await self.jobs.finish(claim, now=now, outcome=ItemState.FAILED, error=error)
            if recorded:
                # An earlier attempt may have stored audio and died before recording it:
                # a failed item keeps no file.
                await self.storage.delete(audio_key(claim))
            telemetry.BATCH_ITEMS.labels("failed").inc()
            log.warning("batch item failed", error=error, attempts=claim.attempts)
