"""The side-effecting steps of a voice's life, shared by the dispatcher, maintenance and
admin calls: allocate a claimed request (adopt or clone), and reclaim a slot.

Each step is: provider call(s) between transactions, then one fenced transaction. The
remote label (voice id + generation) makes allocation idempotent: before cloning, and
after any failure, we look for a remote voice with the label and adopt it, so a clone
whose answer was lost is never cloned twice.
"""

from __future__ import annotations

import asyncio
import os
import random
import signal
from collections.abc import Callable
from dataclasses import dataclass
from datetime import datetime, timedelta

from tenacity import (
    AsyncRetrying,
    retry_if_exception_type,
    stop_after_attempt,
    wait_random_exponential,
)

from allocator_svc.coalesce import NextRun
from allocator_svc.domain.breaker import Breaker, BreakerPolicy, BreakerState, ProviderOutcome
from allocator_svc.domain.retry import RetryPolicy
from allocator_svc.domain.states import LateCopy, VoiceState
from allocator_svc.records import Claim, Deletion, ReclaimTarget
from allocator_svc.repository import AllocatorRepository
from voiceslot import telemetry
from voiceslot.clock import Clock
from voiceslot.errors import PayloadTooLarge, bounded
from voiceslot.logs import get_logger
from voiceslot.providers.base import CloneRequest, Provider, RemoteVoice, remote_label
from voiceslot.providers.errors import (
    AddEditBudgetSpent,
    AuthError,
    Fatal,
    ProviderError,
    RateLimited,
    Transient,
    VoiceNotFound,
)
from voiceslot.storage.base import Storage
from voiceslot.token_bucket import TokenBucket

log = get_logger(__name__)

DELETE_ATTEMPTS = 3
"""Tries of one remote delete before it is left to a later sweep."""

TEST_KILL_AFTER_CLONE_ENV = "VOICESLOT_TESTONLY_SIGKILL_AFTER_CLONE"
"""TEST ONLY. Set to "1" and the process SIGKILLs itself right after a provider's clone
returns, before the database commit: the crash window the stuck sweeper exists for.
tests/integration/allocator/test_crash.py uses it; nothing else may."""


def _test_only_kill_after_clone() -> None:
    if os.environ.get(TEST_KILL_AFTER_CLONE_ENV) == "1":
        os.kill(os.getpid(), signal.SIGKILL)


def provider_outcome(exc: ProviderError | None) -> ProviderOutcome:
    """How a provider error bears on the provider's health (breaker and bucket).

    A refusal of this one request (bad sample, account full, unknown voice) shows a
    healthy provider; outages, bad credentials, a spent monthly budget and answers we
    cannot use are what the breaker is for; a 429 pauses the bucket instead.
    """
    if exc is None:
        return ProviderOutcome.OK
    if isinstance(exc, RateLimited):
        return ProviderOutcome.THROTTLED
    if isinstance(exc, Transient | AuthError | AddEditBudgetSpent | Fatal):
        return ProviderOutcome.UNHEALTHY
    return ProviderOutcome.OK


@dataclass(frozen=True)
class AllocationOutcome:
    voice_id: str
    state: VoiceState | None
    """READY, QUEUED (retry), FAILED (dead-lettered), or None when fenced off."""
    error: str = ""


class Lifecycle:
    def __init__(
        self,
        *,
        repo: AllocatorRepository,
        providers: dict[str, Provider],
        storage: Storage,
        clock: Clock,
        retry: RetryPolicy,
        label_prefix: str,
        rng: random.Random | None = None,
        breaker: BreakerPolicy | None = None,
        bucket: TokenBucket | None = None,
        on_change: Callable[[], None] | None = None,
        sample_max_bytes: int | None = None,
        clone_settle_s: float = 0.0,
        allocation_timeout: timedelta = timedelta(seconds=300),
    ) -> None:
        """``sample_max_bytes``: a stored sample larger than this is not downloaded (the
        upload cap). ``clone_settle_s``: see ``AllocatorConfig.clone_settle_s``.
        ``allocation_timeout``: the dispatch lease renewed while waiting that long."""
        self.repo = repo
        self.sample_max_bytes = sample_max_bytes
        self.clone_settle_s = clone_settle_s
        self.allocation_timeout = allocation_timeout
        self.providers = providers
        self.storage = storage
        self.clock = clock
        self.retry = retry
        self.label_prefix = label_prefix
        self.rng = rng or random.Random()
        self.breaker = breaker or BreakerPolicy()
        # Neither ElevenLabs nor Cartesia publish a rate for voice creation: the default
        # bucket (20/s, bursts of 40) guards against runaway loops; 429s pause it further.
        self.bucket = bucket or TokenBucket()
        self.on_change = on_change or (lambda: None)
        """Called after every committed change of a voice's state, so that watchers in
        this process hear of it at once (other replicas' watchers poll)."""
        # A success recorded is the same however many clones answered: the clones of a
        # dispatch round answering together share one look at the breaker (each still
        # one taken after its own answer), instead of a database call each.
        self._record_ok: NextRun[str, Breaker | None] = NextRun(self._record_ok_now)

    def label(self, claim: Claim) -> str:
        return remote_label(self.label_prefix, claim.voice_id, claim.generation)

    async def allocate(self, claim: Claim) -> AllocationOutcome:
        provider = self.providers[claim.provider]
        label = self.label(claim)
        started = self.clock.now()
        adopted = False
        clone_sent_at = None
        try:
            with telemetry.span("provider.find_by_label", provider=claim.provider, label=label):
                remote = await provider.find_by_label(label)
            adopted = remote is not None
            if remote is None:
                with telemetry.span("storage.get_sample", key=claim.sample_key):
                    sample = await self.storage.get(
                        claim.sample_key, max_bytes=self.sample_max_bytes
                    )
                clone_sent_at = self.clock.now()
                with telemetry.span("provider.clone", provider=claim.provider, label=label):
                    remote = await provider.clone(
                        CloneRequest(label=label, sample=sample, language=claim.language)
                    )
                _test_only_kill_after_clone()
        except PayloadTooLarge as exc:
            # Uploads are capped, so only a sample stored some other way can get here;
            # retrying cannot shrink it.
            return await self._fail(claim, Fatal(f"sample {exc}"))
        except ProviderError as exc:
            remote = await self._adopt_after_failure(claim, label, exc, clone_sent_at=clone_sent_at)
            adopted = remote is not None
            if remote is None:
                await self.record(claim.provider, exc)
                return await self._fail(claim, exc)
        await self.record(claim.provider, None)
        return await self._complete(claim, remote, adopted=adopted, started_s=started.timestamp())

    async def record(self, provider: str, exc: ProviderError | None) -> None:
        """Feed a provider call's outcome to the shared breaker and bucket."""
        outcome = provider_outcome(exc)
        try:
            if exc is None:
                after = await self._record_ok(provider)
            else:
                after = await self.repo.record_provider_outcome(
                    provider,
                    outcome,
                    self.clock.now(),
                    retry_after=exc.retry_after,
                    breaker=self.breaker,
                    bucket=self.bucket,
                )
        except Exception as err:  # bookkeeping must not lose the allocation's own outcome
            log.error("recording provider outcome failed", provider=provider, error=repr(err))
            return
        if after is not None:
            telemetry.BREAKER_OPEN.labels(provider).set(after.state == BreakerState.OPEN)
            if outcome != ProviderOutcome.OK:
                log.warning(
                    "provider call failed",
                    provider=provider,
                    outcome=outcome.value,
                    breaker=after.state.value,
                    failures=after.failures,
                )

    async def _record_ok_now(self, provider: str) -> Breaker | None:
        return await self.repo.record_provider_outcome(
            provider, ProviderOutcome.OK, self.clock.now(), breaker=self.breaker, bucket=self.bucket
        )

    async def _adopt_after_failure(
        self, claim: Claim, label: str, exc: ProviderError, *, clone_sent_at: datetime | None
    ) -> RemoteVoice | None:
        """After a failure whose outcome is unknown, the clone may have happened anyway:
        look for it by its label.

        A clone that failed transiently (no answer at all, or a 5xx, which a gateway can
        send after the backend created the voice) may still land, or be listed late. Until
        ``clone_settle_s`` after it was sent, cloning the label again could make a second
        copy — so the claim is held that long (its slot kept, its dispatch lease renewed),
        whether or not the look-ups answer, and the label looked up once more. A retry
        therefore never clones while an earlier clone of the label may still land: the
        fault schedules found a look-up that failed right after a clone's timeout, a quick
        retry that cloned again, and both copies live.
        """
        if not isinstance(exc, Transient):
            return None
        remote = await self._find(claim.provider, label)
        if remote is not None or clone_sent_at is None or self.clone_settle_s <= 0:
            return remote
        landed_by = clone_sent_at + timedelta(seconds=self.clone_settle_s)
        now = self.clock.now()
        if not await self.repo.extend_claim(claim, landed_by + self.allocation_timeout, now):
            return None  # fenced off meanwhile: whoever took over looks it up
        log.info("clone answer lost; waiting for it to land", voice=claim.voice_id)
        await asyncio.sleep(max(0.0, (landed_by - now).total_seconds()))
        return await self._find(claim.provider, label)

    async def _find(self, provider: str, label: str) -> RemoteVoice | None:
        """The remote voice with ``label``, or None: absent, or the look-up failed."""
        try:
            return await self.providers[provider].find_by_label(label)
        except ProviderError as exc:
            log.warning("look-up by label failed", provider=provider, error=str(exc))
            return None

    async def _complete(
        self, claim: Claim, remote: RemoteVoice, *, adopted: bool, started_s: float
    ) -> AllocationOutcome:
        now = self.clock.now()
        if await self.repo.complete_allocation(
            claim,
            remote.provider_voice_id,
            now,
            adopted=adopted,
            clone_seconds=now.timestamp() - started_s,
        ):
            self.on_change()
            telemetry.ALLOCATIONS.labels(claim.provider, "adopted" if adopted else "cloned").inc()
            telemetry.ALLOCATION_SECONDS.labels(claim.provider).observe(now.timestamp() - started_s)
            log.info(
                "voice ready",
                voice=claim.voice_id,
                provider=claim.provider,
                remote=remote.provider_voice_id,
                adopted=adopted,
            )
            return AllocationOutcome(claim.voice_id, VoiceState.READY)
        # Fenced off: the voice was deleted or its allocation reset while we cloned. The
        # copy is deleted only if nobody can own it: a reset may have adopted this very
        # copy, or the voice's next allocation will find it by its label.
        fate = await self.repo.late_copy_fate(claim, remote.provider_voice_id)
        log.warning(
            "allocation fenced off",
            voice=claim.voice_id,
            remote=remote.provider_voice_id,
            fate=fate.value,
        )
        if fate == LateCopy.KEEP:
            return AllocationOutcome(claim.voice_id, None)
        try:
            await self.delete_remote(claim.provider, remote.provider_voice_id)
        except ProviderError as exc:
            log.warning("orphan delete failed; reconciliation will retry", error=str(exc))
        return AllocationOutcome(claim.voice_id, None)

    async def _fail(self, claim: Claim, exc: ProviderError) -> AllocationOutcome:
        now = self.clock.now()
        error = bounded(f"{type(exc).__name__}: {exc.message}")  # stored and logged alike
        retry_at = None
        if not self.retry.should_dead_letter(claim.attempts, retryable=exc.retryable):
            delay = self.retry.delay(claim.attempts, rng=self.rng, retry_after=exc.retry_after)
            retry_at = now + timedelta(seconds=delay)
        state = await self.repo.fail_allocation(claim, error, now, retry_at=retry_at)
        if state is not None:
            self.on_change()
        outcome = "retry" if state == VoiceState.QUEUED else "dead_lettered"
        telemetry.ALLOCATIONS.labels(claim.provider, outcome).inc()
        log.warning(
            "allocation failed",
            voice=claim.voice_id,
            provider=claim.provider,
            error=error,
            outcome=outcome,
            attempts=claim.attempts,
        )
        return AllocationOutcome(claim.voice_id, state, error)

    async def reclaim(self, target: ReclaimTarget) -> bool:
        """Delete the remote copy; the voice becomes IDLE once the copy is confirmed gone.

        A delete that failed transiently (no answer, a 5xx) may have happened anyway, or
        may still land late: the voice must not go back to READY on a copy that may be
        gone. Deleting is idempotent (a copy already gone answers VoiceNotFound), so it is
        retried a few times; if it still has no answer, the voice stays RECLAIMING,
        holding its slot, and the stuck-reclaim sweep deletes again later. Only a
        provider's definite refusal puts the voice back to READY.
        """
        failure: ProviderError | None = None
        try:
            await self.delete_remote(target.provider, target.provider_voice_id)
            deleted, error = True, ""
        except Transient as exc:
            await self.record(target.provider, exc)
            log.warning(
                "reclaim: remote delete unconfirmed; the voice stays RECLAIMING",
                voice=target.voice_id,
                error=str(exc),
            )
            return False
        except ProviderError as exc:
            deleted, error = False, f"{type(exc).__name__}: {exc.message}"
            failure = exc
        await self.record(target.provider, failure)
        await self.repo.finish_reclaim(target, self.clock.now(), deleted=deleted, error=error)
        self.on_change()
        if deleted:
            telemetry.RECLAIMS.labels(target.provider, target.reason.value).inc()
        return deleted

    async def delete_remote(self, provider_name: str, provider_voice_id: str) -> None:
        """Delete one remote copy; a copy already gone counts as deleted. Transient
        failures are retried (a delete is idempotent) with a short backoff, the answer
        of the last attempt raised."""
        provider = self.providers[provider_name]
        retrying = AsyncRetrying(
            retry=retry_if_exception_type(Transient),
            stop=stop_after_attempt(DELETE_ATTEMPTS),
            wait=wait_random_exponential(multiplier=0.2, max=2.0),
            reraise=True,
        )
        try:
            async for attempt in retrying:
                with attempt, telemetry.span("provider.delete", provider=provider_name):
                    await provider.delete(provider_voice_id)
        except VoiceNotFound:
            pass

    async def finish_delete(self, deletion: Deletion) -> bool:
        """Delete a DELETING voice's remote copy, then its row. False: not now (the
        provider failed, or an allocation of it may still be cloning); the tombstone
        stays, holding the slot, and maintenance tries again."""
        if deletion.dispatch_lease_live:
            return False
        provider = self.providers[deletion.provider]
        remote_id = deletion.provider_voice_id
        try:
            if remote_id is None:  # deleted mid-clone: the copy, if any, has our label
                label = remote_label(self.label_prefix, deletion.voice_id, deletion.generation)
                found = await provider.find_by_label(label)
                remote_id = found.provider_voice_id if found else None
            if remote_id is not None:
                await self.delete_remote(deletion.provider, remote_id)
        except ProviderError as exc:
            await self.record(deletion.provider, exc)
            log.warning(
                "remote delete failed; the voice stays DELETING until it succeeds",
                voice=deletion.voice_id,
                error=str(exc),
            )
            return False
        await self.repo.finish_delete(deletion.voice_id, self.clock.now())
        self.on_change()
        return True
