"""The side-effecting steps of a voice's life, shared by the dispatcher, maintenance and
admin calls: allocate a claimed request (adopt or clone), and reclaim a slot.

Each step is: provider call(s) between transactions, then one fenced transaction. The
remote label (voice id + generation) makes allocation idempotent: before cloning, and
after any failure, we look for a remote voice with the label and adopt it, so a clone
whose answer was lost is never cloned twice.
"""

from __future__ import annotations

import random
from dataclasses import dataclass
from datetime import timedelta

from allocator_svc.domain.retry import RetryPolicy
from allocator_svc.domain.states import VoiceState
from allocator_svc.records import Claim, ReclaimTarget
from allocator_svc.repository import AllocatorRepository
from voiceslot import telemetry
from voiceslot.clock import Clock
from voiceslot.logs import get_logger
from voiceslot.providers.base import CloneRequest, Provider, RemoteVoice, remote_label
from voiceslot.providers.errors import ProviderError, Transient, VoiceNotFound
from voiceslot.storage.base import Storage

log = get_logger(__name__)


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
    ) -> None:
        self.repo = repo
        self.providers = providers
        self.storage = storage
        self.clock = clock
        self.retry = retry
        self.label_prefix = label_prefix
        self.rng = rng or random.Random()

    def label(self, claim: Claim) -> str:
        return remote_label(self.label_prefix, claim.voice_id, claim.generation)

    async def allocate(self, claim: Claim) -> AllocationOutcome:
        provider = self.providers[claim.provider]
        label = self.label(claim)
        started = self.clock.now()
        adopted = False
        try:
            with telemetry.span("provider.find_by_label", provider=claim.provider, label=label):
                remote = await provider.find_by_label(label)
            adopted = remote is not None
            if remote is None:
                with telemetry.span("storage.get_sample", key=claim.sample_key):
                    sample = await self.storage.get(claim.sample_key)
                with telemetry.span("provider.clone", provider=claim.provider, label=label):
                    remote = await provider.clone(
                        CloneRequest(label=label, sample=sample, language=claim.language)
                    )
        except ProviderError as exc:
            remote = await self._adopt_after_failure(provider, label, exc)
            adopted = remote is not None
            if remote is None:
                return await self._fail(claim, exc)
        return await self._complete(claim, remote, adopted=adopted, started_s=started.timestamp())

    async def _adopt_after_failure(
        self, provider: Provider, label: str, exc: ProviderError
    ) -> RemoteVoice | None:
        """After a failure whose outcome is unknown, the clone may have happened anyway."""
        if not isinstance(exc, Transient):
            return None
        try:
            return await provider.find_by_label(label)
        except ProviderError:
            return None

    async def _complete(
        self, claim: Claim, remote: RemoteVoice, *, adopted: bool, started_s: float
    ) -> AllocationOutcome:
        now = self.clock.now()
        if await self.repo.complete_allocation(
            claim, remote.provider_voice_id, now, adopted=adopted
        ):
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
        # remote copy belongs to nobody; remove it now rather than wait for reconciliation.
        log.warning(
            "allocation fenced off; deleting the orphan",
            voice=claim.voice_id,
            remote=remote.provider_voice_id,
        )
        try:
            await self.providers[claim.provider].delete(remote.provider_voice_id)
        except ProviderError as exc:
            log.warning("orphan delete failed; reconciliation will retry", error=str(exc))
        return AllocationOutcome(claim.voice_id, None)

    async def _fail(self, claim: Claim, exc: ProviderError) -> AllocationOutcome:
        now = self.clock.now()
        error = f"{type(exc).__name__}: {exc.message}"
        retry_at = None
        if not self.retry.should_dead_letter(claim.attempts, retryable=exc.retryable):
            delay = self.retry.delay(claim.attempts, rng=self.rng, retry_after=exc.retry_after)
            retry_at = now + timedelta(seconds=delay)
        state = await self.repo.fail_allocation(claim, error, now, retry_at=retry_at)
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
        """Delete the remote copy; the voice becomes IDLE (or READY again if that failed)."""
        provider = self.providers[target.provider]
        try:
            with telemetry.span("provider.delete", provider=target.provider):
                await provider.delete(target.provider_voice_id)
            deleted, error = True, ""
        except VoiceNotFound:
            deleted, error = True, ""
        except ProviderError as exc:
            deleted, error = False, f"{type(exc).__name__}: {exc.message}"
        await self.repo.finish_reclaim(target, self.clock.now(), deleted=deleted, error=error)
        if deleted:
            telemetry.RECLAIMS.labels(target.provider, target.reason.value).inc()
        return deleted
