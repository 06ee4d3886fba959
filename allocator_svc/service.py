"""The allocator's use cases, as the gRPC servicer (and tests) call them.

Checks the caller's rights, validates input, then calls the repository (one transaction
each) and the providers/storage (between transactions). Knows nothing of gRPC.
"""

from __future__ import annotations

import asyncio
import hashlib
import random
from collections.abc import AsyncIterator, Mapping
from dataclasses import dataclass
from datetime import datetime, timedelta

from allocator_svc import gauges
from allocator_svc.dispatcher import Dispatcher
from allocator_svc.domain.breaker import BreakerPolicy
from allocator_svc.domain.policies import reclaim_policy
from allocator_svc.domain.reclaim import ReclaimPolicy
from allocator_svc.domain.retry import RetryPolicy
from allocator_svc.domain.states import EventReason, VoiceState
from allocator_svc.lifecycle import Lifecycle
from allocator_svc.maintenance import Maintenance, Task, TaskResult
from allocator_svc.records import EnsureOutcome, Event, Lease, ProviderStats, Queued, Slot, Voice
from allocator_svc.repository import AllocatorRepository, EnsureParams, NewVoice
from voiceslot import telemetry
from voiceslot import validation as validate
from voiceslot.audio import validate_sample
from voiceslot.auth import Principal
from voiceslot.clock import Clock, SystemClock
from voiceslot.config import AllocatorConfig
from voiceslot.errors import InvalidArgument, NotFound, PermissionDenied
from voiceslot.ids import new_id, require_id
from voiceslot.logs import get_logger
from voiceslot.pagination import decode_token, encode_token, page_size
from voiceslot.providers.base import Provider
from voiceslot.providers.errors import ProviderError
from voiceslot.storage.base import Storage
from voiceslot.token_bucket import TokenBucket
from voiceslot.waiting import cancel_and_wait, wait_at_most

log = get_logger(__name__)

# Rough mean of one clone, for queue wait estimates until measured values replace it.
MEAN_ALLOCATION_S = 5.0


@dataclass(frozen=True)
class RegisterParams:
    display_name: str
    provider: str
    language: str
    idempotency_key: str
    owner: str


def default_reclaim_policy(config: AllocatorConfig) -> ReclaimPolicy:
    """The policy ``config.reclaim_policy`` names (``domain.policies``)."""
    return reclaim_policy(
        config.reclaim_policy,
        idle_reclaim_after_s=config.idle_reclaim_after_s,
        add_edit_reserve=config.add_edit_reserve,
        max_wait_s=config.reclaim_max_wait_s,
    )


class ChangeFeed:
    """Wakes everyone waiting for "something changed" in this process.

    ``notify`` is synchronous, so the dispatcher's completions (plain callbacks) can call
    it. Waiters take ``waiter()`` *before* reading the state they compare, so a change
    that lands between the read and the wait is not missed.
    """

    def __init__(self) -> None:
        self._event = asyncio.Event()

    def notify(self) -> None:
        event, self._event = self._event, asyncio.Event()
        event.set()

    def waiter(self) -> asyncio.Event:
        return self._event


class Allocator:
    def __init__(
        self,
        *,
        repo: AllocatorRepository,
        providers: dict[str, Provider],
        storage: Storage,
        config: AllocatorConfig,
        default_provider: str,
        clock: Clock | None = None,
        reclaim_policy: ReclaimPolicy | None = None,
        rng: random.Random | None = None,
        breaker: BreakerPolicy | None = None,
        bucket: TokenBucket | None = None,
        capacities: Mapping[str, int | None] | None = None,
    ) -> None:
        self.repo = repo
        self._capacities = dict(capacities or {})
        self.providers = providers
        self.storage = storage
        self.config = config
        self.default_provider = default_provider
        self.clock = clock or SystemClock()
        self.changes = ChangeFeed()
        self.lifecycle = Lifecycle(
            repo=repo,
            providers=providers,
            storage=storage,
            clock=self.clock,
            retry=RetryPolicy(config.max_attempts, config.backoff_base_s, config.backoff_max_s),
            label_prefix=config.label_prefix,
            rng=rng,
            breaker=breaker,
            bucket=bucket,
            on_change=self.changes.notify,
            sample_max_bytes=config.sample_max_bytes,
            clone_settle_s=config.clone_settle_s,
            allocation_timeout=timedelta(seconds=config.allocation_timeout_s),
        )
        policy = reclaim_policy or default_reclaim_policy(config)
        self.dispatcher = Dispatcher(
            repo=repo,
            lifecycle=self.lifecycle,
            config=config,
            reclaim_policy=policy,
            providers=list(providers),
        )
        self.maintenance = Maintenance(
            repo=repo, lifecycle=self.lifecycle, config=config, reclaim_policy=policy
        )
        self._maintenance_task: asyncio.Task[None] | None = None
        self._gauge_task: asyncio.Task[None] | None = None

    # -- lifecycle of the service itself -----------------------------------------------------

    async def start(self, *, background: bool = True) -> None:
        """Record provider capacities, then start the dispatcher (and maintenance loop)."""
        rows = []
        for name, provider in self.providers.items():
            rows.append((name, provider.kind, await self._capacity_of(name, provider)))
        await self.repo.upsert_providers(rows, self.clock.now())
        if background:
            self.dispatcher.start()
            if self.config.maintenance_interval_s:
                self._maintenance_task = asyncio.create_task(self._maintenance_loop())
            if self.config.gauge_interval_s:
                self._gauge_task = asyncio.create_task(
                    gauges.run(self.repo, self.clock, self.config.gauge_interval_s), name="gauges"
                )

    async def _capacity_of(self, name: str, provider: Provider) -> int:
        """The configured capacity, else what the provider reports. A configured one
        needs no call: a replica must be able to start while its provider is down."""
        configured = self._capacities.get(name) or getattr(
            getattr(provider, "config", None), "capacity", None
        )
        if configured:
            return int(configured)
        try:
            reported = (await provider.capacity()).limit
        except ProviderError as exc:
            raise RuntimeError(
                f"provider {name}: capacity unknown and not configured: {exc}"
            ) from exc
        if not reported:
            raise RuntimeError(f"provider {name}: set 'capacity' in its configuration")
        return reported

    async def stop(self, *, grace_s: float = 10.0) -> None:
        await cancel_and_wait(*(t for t in (self._maintenance_task, self._gauge_task) if t))
        await self.dispatcher.stop(grace_s=grace_s)

    async def _maintenance_loop(self) -> None:
        assert self.config.maintenance_interval_s
        while True:
            await asyncio.sleep(self.config.maintenance_interval_s)
            try:
                await self.run_maintenance([], provider="")
            except Exception as exc:
                log.error("maintenance round failed", error=repr(exc))

    async def _notify(self) -> None:
        self.changes.notify()

    # -- voices ------------------------------------------------------------------------------

    async def register_voice(
        self, who: Principal, params: RegisterParams, sample: bytes
    ) -> tuple[Voice, bool]:
        owner = validate.user_name("metadata.owner", params.owner or who.user)
        if owner != who.user and not who.is_admin:
            raise PermissionDenied("only admins may register voices for another user")
        display_name = validate.display_name("metadata.display_name", params.display_name)
        language = validate.language_tag("metadata.language", params.language, default="en")
        provider = validate.provider_name(
            "metadata.provider", params.provider or self.default_provider, known=self.providers
        )
        key = validate.idempotency_key("metadata.idempotency_key", params.idempotency_key)
        if key is not None and (existing := await self.repo.find_by_idempotency_key(owner, key)):
            return existing, False
        info = validate_sample(sample, max_bytes=self.config.sample_max_bytes)
        voice_id = new_id("v")
        sample_key = f"samples/{voice_id}/sample.{info.format.lower()}"
        with telemetry.span("storage.put_sample", key=sample_key):
            await self.storage.put(sample_key, sample)
        new = NewVoice(
            id=voice_id,
            owner=owner,
            display_name=display_name,
            provider=provider,
            language=language,
            sample_key=sample_key,
            sample_sha256=hashlib.sha256(sample).hexdigest(),
            sample_bytes=len(sample),
            idempotency_key=key,
        )
        try:
            voice, created = await self.repo.create_voice(new, self.clock.now())
        except BaseException:
            await self.storage.delete(sample_key)
            raise
        if not created:  # lost an idempotency race: our copy of the sample is surplus
            await self.storage.delete(sample_key)
        log.info("voice registered", voice=voice.id, user=owner, provider=provider, created=created)
        return voice, created

    async def get_voice(self, who: Principal, voice_id: str) -> Voice:
        require_id("voice_id", voice_id, "v")
        return await self.repo.get_voice(voice_id, self.clock.now(), owner=who.owner_filter())

    async def list_voices(
        self,
        who: Principal,
        *,
        size: int,
        token: str,
        provider: str = "",
        state: VoiceState | None = None,
        holding_only: bool = False,
    ) -> tuple[list[Voice], str]:
        if provider:
            validate.provider_name("provider", provider)
        limit = page_size(size)
        key = decode_token(token, arity=2)
        after = (datetime.fromisoformat(str(key[0])), str(key[1])) if key else None
        voices = await self.repo.list_voices(
            self.clock.now(),
            owner=who.owner_filter(),
            provider=provider,
            state=state,
            after=after,
            limit=limit,
            holding_only=holding_only,
        )
        next_token = (
            encode_token(voices[-1].created_at.isoformat(), voices[-1].id)
            if len(voices) == limit
            else ""
        )
        return voices, next_token

    async def delete_voice(self, who: Principal, voice_id: str, *, force: bool) -> None:
        """Delete a voice. One whose remote copy may exist stays DELETING (holding its
        slot) until the copy is confirmed gone: now, or, if the provider fails, when
        maintenance tries again."""
        require_id("voice_id", voice_id, "v")
        voice, deletion = await self.repo.begin_delete(
            voice_id, self.clock.now(), owner=who.owner_filter(), force=force
        )
        if deletion is not None:
            await self.lifecycle.finish_delete(deletion)
        await self.storage.delete(voice.sample_key)
        self.dispatcher.wake(voice.provider)
        await self._notify()

    async def list_events(
        self, who: Principal, voice_id: str, *, size: int, token: str
    ) -> tuple[list[Event], str]:
        await self.get_voice(who, voice_id)  # ownership
        limit = page_size(size)
        key = decode_token(token, arity=1)
        events = await self.repo.list_events(
            voice_id, before_id=int(key[0]) if key else None, limit=limit
        )
        return events, (encode_token(events[-1].id) if len(events) == limit else "")

    # -- ensure active and leases ------------------------------------------------------------

    def _ttl(self, requested_s: float | None) -> timedelta:
        if requested_s is None or requested_s == 0:
            return timedelta(seconds=self.config.default_lease_ttl_s)
        if requested_s < 0:
            raise InvalidArgument("lease_ttl", "must be positive")
        return timedelta(seconds=min(requested_s, self.config.max_lease_ttl_s))

    async def ensure_active(
        self,
        who: Principal,
        voice_id: str,
        *,
        lease_ttl_s: float | None = None,
        priority: int = 0,
        holder: str = "",
    ) -> EnsureOutcome:
        require_id("voice_id", voice_id, "v")
        if not 0 <= priority <= 9:
            raise InvalidArgument("priority", "must be 0..9")
        validate.label("lease_holder", holder, max_chars=200)
        outcome = await self.repo.ensure_active(
            EnsureParams(
                voice_id=voice_id,
                owner=who.owner_filter(),
                lease_ttl=self._ttl(lease_ttl_s),
                holder=holder or who.user,
                priority=priority,
                per_user_max_queued=self.config.per_user_max_queued,
                mean_allocation_s=MEAN_ALLOCATION_S,
            ),
            self.clock.now(),
        )
        if isinstance(outcome, Queued):
            self.dispatcher.wake(outcome.voice.provider)
            self.changes.notify()
        return outcome

    async def renew_lease(self, who: Principal, lease_id: str, *, ttl_s: float | None) -> Lease:
        require_id("lease_id", lease_id, "ls")
        return await self.repo.renew_lease(
            lease_id, self._ttl(ttl_s), self.clock.now(), owner=who.owner_filter()
        )

    async def release_lease(self, who: Principal, lease_id: str) -> None:
        require_id("lease_id", lease_id, "ls")
        provider = await self.repo.release_lease(
            lease_id, self.clock.now(), owner=who.owner_filter()
        )
        if provider is not None:
            self.dispatcher.wake(provider)  # the voice may be what a waiting request needs

    async def watch_voice(
        self, who: Principal, voice_id: str, *, poll_s: float = 0.5
    ) -> AsyncIterator[Voice]:
        """The voice now, then on every change of state or update time; ends when deleted.

        Changes made by this replica wake watchers at once; changes by other replicas are
        seen within ``poll_s``.
        """
        voice = await self.get_voice(who, voice_id)
        yield voice
        seen = (voice.state.value, voice.updated_at)
        while True:
            changed = self.changes.waiter()
            key = await self.repo.watch_key(voice_id)
            if key is None:
                return
            if key != seen:
                try:
                    voice = await self.get_voice(who, voice_id)
                except NotFound:
                    return  # deleted since the look above
                seen = (voice.state.value, voice.updated_at)
                yield voice
                continue
            await wait_at_most(poll_s, changed.wait())

    # -- admin ------------------------------------------------------------------------------

    @staticmethod
    def _admin(who: Principal) -> None:
        if not who.is_admin:
            raise PermissionDenied("admin role required")

    async def list_slots(
        self, who: Principal, *, provider: str, size: int, token: str
    ) -> tuple[list[Slot], str]:
        self._admin(who)
        voices, next_token = await self.list_voices(
            who, size=size, token=token, provider=provider, holding_only=True
        )
        holders = await self.repo.lease_holders([v.id for v in voices], self.clock.now())
        return [Slot(v, holders.get(v.id, "")) for v in voices], next_token

    async def list_providers(self, who: Principal) -> list[ProviderStats]:
        self._admin(who)
        now = self.clock.now()
        stats = await self.repo.provider_stats(now)
        gauges.publish(stats, now)
        return stats

    async def reclaim_slot(self, who: Principal, voice_id: str, *, force: bool) -> Voice:
        self._admin(who)
        require_id("voice_id", voice_id, "v")
        target = await self.repo.begin_reclaim(
            voice_id, EventReason.RECLAIMED_BY_ADMIN, self.clock.now(), force=force
        )
        await self.lifecycle.reclaim(target)
        self.dispatcher.wake(target.provider)
        await self._notify()
        return await self.get_voice(who, voice_id)

    async def reset_stuck(self, who: Principal, voice_id: str) -> Voice:
        self._admin(who)
        require_id("voice_id", voice_id, "v")
        await self.maintenance.reset_voice(voice_id)
        voice = await self.get_voice(who, voice_id)
        self.dispatcher.wake(voice.provider)
        await self._notify()
        return voice

    async def set_pinned(self, who: Principal, voice_id: str, pinned: bool) -> Voice:
        self._admin(who)
        require_id("voice_id", voice_id, "v")
        voice = await self.repo.set_pinned(voice_id, pinned, self.clock.now())
        await self._notify()
        return voice

    async def run_maintenance(
        self, tasks: list[Task], *, provider: str, who: Principal | None = None
    ) -> list[TaskResult]:
        if who is not None:
            self._admin(who)
        if provider:
            validate.provider_name("provider", provider)
            if provider not in self.providers:
                raise NotFound("provider", provider)
        results = await self.maintenance.run(tasks, provider=provider)
        for name in [provider] if provider else list(self.providers):
            self.dispatcher.wake(name)
        await self._notify()
        return results
