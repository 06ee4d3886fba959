"""Maintenance tasks, each one function, run by the allocator's own loop or on demand
through the RunMaintenance admin RPC (which the operator drives).

- expire leases: leases past their expiry end.
- reset stuck: allocations whose dispatch lease expired (the dispatcher died or hung) are
  adopted if the provider has the labelled voice, else put back in the queue (never one
  whose lease is live: its dispatcher may still complete it); reclaims left half done
  (RECLAIMING for longer than an allocation may take) are finished; deletions left half
  done (DELETING: the remote delete failed or its replica went away) are finished.
- reconcile: remote voices carrying our label prefix that no voice can own are deleted
  (the same rule as for a fenced-off allocation's late copy); READY voices whose remote
  copy is neither listed nor found by its id become IDLE.
- reclaim idle: READY voices unused past the idle threshold are reclaimed, but only at
  providers with requests waiting, through the same reclaim decision the dispatcher uses
  (reclaims in flight count, the add/edit budget is respected). It first refreshes each
  provider's remaining add/edit budget when the last refresh is older than
  ``budget_refresh_s``, so the budget reserve is checked against the provider's figure
  on a schedule, not only when reconciliation runs.
"""

from __future__ import annotations

import re
from collections.abc import Awaitable, Callable
from dataclasses import dataclass, field
from datetime import datetime, timedelta
from enum import StrEnum

from allocator_svc.domain.reclaim import ReclaimPolicy
from allocator_svc.domain.states import EventReason, LateCopy, VoiceSeen, late_copy_fate
from allocator_svc.lifecycle import Lifecycle
from allocator_svc.records import Claim
from allocator_svc.repository import AllocatorRepository
from voiceslot import telemetry
from voiceslot.config import AllocatorConfig
from voiceslot.errors import FailedPrecondition
from voiceslot.logs import get_logger
from voiceslot.providers.base import RemoteVoice
from voiceslot.providers.errors import ProviderError

log = get_logger(__name__)


class Task(StrEnum):
    EXPIRE_LEASES = "expire_leases"
    RESET_STUCK = "reset_stuck"
    RECONCILE = "reconcile"
    RECLAIM_IDLE = "reclaim_idle"


@dataclass
class TaskResult:
    task: Task
    examined: int = 0
    changed: list[str] = field(default_factory=list)
    errors: list[str] = field(default_factory=list)


def parse_label(prefix: str, label: str | None) -> tuple[str, int] | None:
    """(voice id, generation) from one of our remote labels, or None for foreign voices."""
    if not label or not label.startswith(prefix):
        return None
    m = re.fullmatch(r"(.+)-g(\d+)", label[len(prefix) :])
    return (m.group(1), int(m.group(2))) if m else None


class Maintenance:
    def __init__(
        self,
        *,
        repo: AllocatorRepository,
        lifecycle: Lifecycle,
        config: AllocatorConfig,
        reclaim_policy: ReclaimPolicy,
    ) -> None:
        self.repo = repo
        self.lifecycle = lifecycle
        self.config = config
        self.reclaim_policy = reclaim_policy
        # When each provider's add/edit budget was last asked for (this replica's clock);
        # the first scheduled ask comes one period after start (reconciliation, which
        # also records it, usually comes first).
        self._started = lifecycle.clock.now()
        self._budget_at: dict[str, datetime] = {}

    @property
    def clock(self):  # noqa: ANN201 - the lifecycle's clock
        return self.lifecycle.clock

    def _providers(self, provider: str) -> list[str]:
        return [provider] if provider else list(self.lifecycle.providers)

    async def run(self, tasks: list[Task], *, provider: str = "") -> list[TaskResult]:
        runners: dict[Task, Callable[[str], Awaitable[TaskResult]]] = {
            Task.EXPIRE_LEASES: self.expire_leases,
            Task.RESET_STUCK: self.reset_stuck,
            Task.RECONCILE: self.reconcile,
            Task.RECLAIM_IDLE: self.reclaim_idle,
        }
        results = []
        for task in tasks or list(Task):
            result = await runners[task](provider)
            telemetry.MAINTENANCE.labels(task.value).inc(len(result.changed))
            results.append(result)
        return results

    async def expire_leases(self, provider: str = "") -> TaskResult:
        changed = await self.repo.expire_leases(self.clock.now())
        return TaskResult(Task.EXPIRE_LEASES, examined=len(changed), changed=changed)

    async def reset_stuck(self, provider: str = "") -> TaskResult:
        result = TaskResult(Task.RESET_STUCK)
        now = self.clock.now()
        stuck = await self.repo.stuck_allocations(now, provider=provider)
        reclaims = await self.repo.stuck_reclaims(
            now - timedelta(seconds=self.config.allocation_timeout_s), provider=provider
        )
        deletions = await self.repo.deletions(now, provider=provider)
        result.examined = len(stuck) + len(reclaims) + len(deletions)
        for claim in stuck:
            if await self.reset_one(claim):
                result.changed.append(claim.voice_id)
        for deletion in deletions:
            if await self.lifecycle.finish_delete(deletion):
                result.changed.append(deletion.voice_id)
        for target in reclaims:
            # Deleting again is safe: a copy already gone answers VoiceNotFound, which
            # counts as deleted; a failed delete leaves the voice READY with its slot.
            await self.lifecycle.reclaim(target)
            result.changed.append(target.voice_id)
        return result

    async def reset_one(self, claim: Claim) -> bool:
        """Adopt the remote voice if the provider has it, else re-queue (or dead-letter);
        both fenced by the claim's token and its dispatch lease having expired, so a
        dispatcher that renewed its lease meanwhile keeps its allocation."""
        provider = self.lifecycle.providers[claim.provider]
        label = self.lifecycle.label(claim)
        try:
            remote = await provider.find_by_label(label)
        except ProviderError as exc:
            log.warning("stuck reset: lookup failed", voice=claim.voice_id, error=str(exc))
            return False
        now = self.clock.now()
        if remote is not None:
            return await self.repo.complete_allocation(
                claim, remote.provider_voice_id, now, adopted=True, lease_expired_by=now
            )
        # Not there (yet): the stuck dispatcher may have sent a clone whose copy is still
        # to land, so the retry waits the settle time before it looks and clones again.
        retry_at = (
            None
            if claim.attempts >= self.config.max_attempts
            else now + timedelta(seconds=self.config.clone_settle_s)
        )
        state = await self.repo.fail_allocation(
            claim,
            "allocation stuck past its timeout; reset",
            now,
            retry_at=retry_at,
            reason=EventReason.STUCK_RESET,
            lease_expired_by=now,
        )
        return state is not None

    async def reset_voice(self, voice_id: str) -> None:
        claim = await self.repo.claim_for_voice(voice_id, self.clock.now())
        if not await self.reset_one(claim):
            raise FailedPrecondition(f"voice {voice_id} could not be reset now; try again")

    async def reconcile(self, provider: str = "") -> TaskResult:
        result = TaskResult(Task.RECONCILE)
        for name in self._providers(provider):
            adapter = self.lifecycle.providers[name]
            # Order matters against allocations running meanwhile. READY voices are read
            # before the listing: one that turns READY after it is listed would otherwise
            # look like its copy vanished. The owners are read after it: a clone claimed
            # (its generation recorded) and made after our read would look like an orphan.
            ready = await self.repo.ready_voices(name)
            try:
                remote = [
                    v async for v in adapter.list_voices(label_prefix=self.config.label_prefix)
                ]
            except ProviderError as exc:
                result.errors.append(f"{name}: {exc.message}")
                continue
            owners = await self.repo.voices_seen(name)
            await self._record_budget(name, result)
            result.examined += len(remote) + len(ready)
            for rv in remote:
                await self._delete_if_orphan(name, rv, owners, result)
            listed = {v.provider_voice_id for v in remote}
            for voice in ready:
                if voice.provider_voice_id and voice.provider_voice_id not in listed:
                    await self._check_vanished(name, voice.id, voice.provider_voice_id, result)
        return result

    async def _delete_if_orphan(
        self, name: str, rv: RemoteVoice, owners: dict[str, VoiceSeen], result: TaskResult
    ) -> None:
        """Delete a listed copy of ours that no voice can own: the rule a fenced-off
        allocation's late copy goes by (no voice, a label moved on, a voice being deleted,
        or a second copy beside the one a voice holds)."""
        parsed = parse_label(self.config.label_prefix, rv.label)
        if parsed is None:
            return
        voice_id, generation = parsed
        if late_copy_fate(owners.get(voice_id), generation, rv.provider_voice_id) == LateCopy.KEEP:
            return
        try:
            await self.lifecycle.delete_remote(name, rv.provider_voice_id)
        except ProviderError as exc:
            result.errors.append(f"{name}: delete {rv.provider_voice_id}: {exc.message}")
            return
        result.changed.append(voice_id)
        telemetry.RECONCILE_DRIFT.labels(name, "orphan_deleted").inc()
        log.info(
            "deleted orphan remote voice",
            provider=name,
            remote=rv.provider_voice_id,
            reason=EventReason.DRIFT_ORPHAN_DELETED.value,
        )

    async def _check_vanished(
        self, name: str, voice_id: str, provider_voice_id: str, result: TaskResult
    ) -> None:
        """A READY voice's copy missing from the listing is asked for by id before the
        voice is called IDLE: a listing may lag behind creates, and calling a copy gone
        that is not would clone a second one beside it."""
        try:
            if await self.lifecycle.providers[name].exists(provider_voice_id):
                return
        except ProviderError as exc:
            result.errors.append(f"{name}: get {provider_voice_id}: {exc.message}")
            return
        if await self.repo.mark_remote_missing(voice_id, provider_voice_id, self.clock.now()):
            result.changed.append(voice_id)
            telemetry.RECONCILE_DRIFT.labels(name, "remote_missing").inc()

    async def _record_budget(self, name: str, result: TaskResult) -> None:
        """Store the provider's remaining clone budget (ElevenLabs' monthly add/edit cap),
        which the reclaim policy weighs: evicting a voice that will be wanted again spends
        one of them on the re-clone."""
        try:
            capacity = await self.lifecycle.providers[name].capacity()
        except ProviderError as exc:
            result.errors.append(f"{name}: capacity: {exc.message}")
            return
        now = self.clock.now()
        await self.repo.set_add_edit_remaining(name, capacity.add_edit_remaining, now)
        self._budget_at[name] = now

    async def refresh_budgets(self, provider: str = "", *, result: TaskResult) -> None:
        """Ask each provider whose budget figure is older than ``budget_refresh_s``."""
        now = self.clock.now()
        every = timedelta(seconds=self.config.budget_refresh_s)
        for name in self._providers(provider):
            if now - self._budget_at.get(name, self._started) >= every:
                await self._record_budget(name, result)

    async def reclaim_idle(self, provider: str = "") -> TaskResult:
        result = TaskResult(Task.RECLAIM_IDLE)
        await self.refresh_budgets(provider, result=result)
        now = self.clock.now()
        idle_since = now - timedelta(seconds=self.config.idle_reclaim_after_s)
        for name in self._providers(provider):
            targets = await self.repo.reclaim_idle(
                name, now, idle_since=idle_since, policy=self.reclaim_policy
            )
            result.examined += len(targets)
            for target in targets:
                if await self.lifecycle.reclaim(target):
                    result.changed.append(target.voice_id)
        return result
