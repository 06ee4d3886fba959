"""The batch worker: renders claimed items to stored audio files.

Every replica runs one, processing up to ``batch_workers`` items at once. An item's claim
is a lease kept alive while it renders; if the worker dies, the lease expires and another
replica takes the item over. Transient failures (no slot yet, provider 5xx or 429) are
retried with backoff up to ``item_max_attempts``; permanent ones fail the item with its
reason. Audio is written before the outcome is recorded, and removed again if the claim
turned out to be lost, so no stored file is ever orphaned or counted twice.
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

log = get_logger(__name__)

ITEM_LEASE = timedelta(seconds=60)
# How long an item may wait for its voice to get a slot before the attempt counts as failed.
SLOT_WAIT_S = 300.0
RETENTION_EVERY_S = 3600.0


def is_transient(exc: Exception) -> bool:
    if isinstance(exc, ProviderError):
        return exc.retryable
    return isinstance(
        exc, errors.Unavailable | errors.QuotaExceeded | errors.DeadlineExceeded | errors.Aborted
    )


def audio_key(claim: ClaimedItem) -> str:
    # Generated from our own ids only: user-chosen item names never reach storage paths.
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
    ) -> None:
        self.jobs = jobs
        self.batch = batch
        self.synthesizer = synthesizer
        self.storage = storage
        self.config = config
        self.storage_config = storage_config
        self.clock = clock
        self.poll_s = poll_s
        self.rng = rng or random.Random()
        self._running: set[asyncio.Task[None]] = set()
        self._wake = asyncio.Event()
        self._task: asyncio.Task[None] | None = None

    def start(self) -> None:
        if self.config.batch_workers > 0:
            self._task = asyncio.create_task(self._loop(), name="batch-worker")

    def wake(self) -> None:
        self._wake.set()

    async def stop(self, *, grace_s: float = 10.0) -> None:
        """Stop claiming; let items in flight finish within ``grace_s``. Items still running
        after that are abandoned and taken over by another worker when their lease ends."""
        if self._task:
            self._task.cancel()
            with contextlib.suppress(asyncio.CancelledError):
                await self._task
        if self._running:
            await asyncio.wait(list(self._running), timeout=grace_s)
        for task in list(self._running):
            task.cancel()
        await asyncio.gather(*self._running, return_exceptions=True)

    async def run_once(self) -> int:
        free = self.config.batch_workers - len(self._running)
        if free <= 0:
            return 0
        claims = await self.jobs.claim(now=self.clock.now(), limit=free, lease=ITEM_LEASE)
        for claim in claims:
            task = asyncio.create_task(self.process(claim))
            self._running.add(task)
            task.add_done_callback(lambda t: (self._running.discard(t), self._wake.set()))
        return len(claims)

    async def _loop(self) -> None:
        last_retention = 0.0
        while True:
            self._wake.clear()
            try:
                await self.run_once()
                if (
                    self.storage_config.retention_days
                    and time.monotonic() - last_retention > RETENTION_EVERY_S
                ):
                    last_retention = time.monotonic()
                    await apply_retention(
                        self.storage,
                        prefix="audio/",
                        now=self.clock.now(),
                        max_age=timedelta(days=self.storage_config.retention_days),
                    )
            except Exception as exc:  # a database hiccup must not end the worker
                log.error("batch worker round failed", error=repr(exc))
            with contextlib.suppress(TimeoutError):
                await asyncio.wait_for(self._wake.wait(), self.poll_s)

    async def _keep_claim(self, claim: ClaimedItem) -> None:
        while True:
            await asyncio.sleep(ITEM_LEASE.total_seconds() / 3)
            await self.jobs.extend(claim.id, claim.token, until=self.clock.now() + ITEM_LEASE)

    async def process(self, claim: ClaimedItem) -> None:
        with bound_context(job=claim.job_id, item=claim.id, voice=claim.voice_id):
            keeper = asyncio.create_task(self._keep_claim(claim))
            try:
                await self._render(claim)
            except Exception as exc:
                await self._failed(claim, exc)
            finally:
                keeper.cancel()
                with contextlib.suppress(asyncio.CancelledError):
                    await keeper
                await self.batch.notify()

    async def _render(self, claim: ClaimedItem) -> None:
        request = SpeechRequest(
            claim.voice_id, claim.text, OutputFormat(claim.encoding, claim.sample_rate)
        )
        data, _, seconds = await self.synthesizer.synthesize(
            request, deadline=time.monotonic() + SLOT_WAIT_S
        )
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
            await self.storage.delete(key)
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
            await self.jobs.finish(claim, now=now, outcome=ItemState.FAILED, error=error)
            telemetry.BATCH_ITEMS.labels("failed").inc()
            log.warning("batch item failed", error=error, attempts=claim.attempts)
