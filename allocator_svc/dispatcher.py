"""The dispatcher: turns queued allocation requests into ready voices.

One loop per provider on every replica. Each round claims what fits (the repository
decides capacity under the provider row's lock), starts reclaims chosen by the policy,
and runs the clones concurrently, outside any transaction. Loops sleep until woken by a
new request or a freed slot, or until the poll interval passes (requests from other
replicas, retries coming due).
"""

from __future__ import annotations

import asyncio
from datetime import timedelta

from allocator_svc.domain.reclaim import ReclaimPolicy
from allocator_svc.lifecycle import Lifecycle
from allocator_svc.repository import AllocatorRepository
from voiceslot.config import AllocatorConfig
from voiceslot.logs import get_logger
from voiceslot.waiting import cancel_and_wait, finish_or_cancel, wait_at_most

log = get_logger(__name__)


class Dispatcher:
    def __init__(
        self,
        *,
        repo: AllocatorRepository,
        lifecycle: Lifecycle,
        config: AllocatorConfig,
        reclaim_policy: ReclaimPolicy,
        providers: list[str],
        max_inflight: int | None = None,
    ) -> None:
        """``max_inflight``: allocations one provider's loop runs at once on this replica
        (default twice ``dispatch_batch``). Without a bound, a provider with hundreds of
        free slots would start hundreds of allocations in one burst; their database
        work would outrun the connection pool, time out, and leave the voices
        ALLOCATING until the stuck sweeper. Beyond the bound, requests simply wait
        queued (other replicas may take them)."""
        self.repo = repo
        self.lifecycle = lifecycle
        self.config = config
        self.reclaim_policy = reclaim_policy
        self.max_inflight = max_inflight or 2 * config.dispatch_batch
        self._wake = {name: asyncio.Event() for name in providers}
        self._tasks: list[asyncio.Task[None]] = []
        self._inflight: set[asyncio.Task[object]] = set()
        self._busy = dict.fromkeys(providers, 0)

    def wake(self, provider: str) -> None:
        if event := self._wake.get(provider):
            event.set()

    async def run_once(self, provider: str) -> int:
        """One round for ``provider``; returns how many allocations and reclaims started.
        The work itself runs in background tasks that wake the loop when they finish."""
        room = self.max_inflight - self._busy.get(provider, 0)
        if room <= 0:
            return 0  # a finishing task wakes the loop
        result = await self.repo.claim(
            provider,
            self.lifecycle.clock.now(),
            limit=min(self.config.dispatch_batch, room),
            allocation_timeout=timedelta(seconds=self.config.allocation_timeout_s),
            reclaim_policy=self.reclaim_policy,
            breaker=self.lifecycle.breaker,
            bucket=self.lifecycle.bucket,
        )
        if result.claims or result.reclaims:
            self.lifecycle.on_change()  # voices went ALLOCATING / RECLAIMING
        for claim in result.claims:
            self._spawn(provider, self.lifecycle.allocate(claim))
        for target in result.reclaims:
            self._spawn(provider, self.lifecycle.reclaim(target))
        return len(result.claims) + len(result.reclaims)

    def _spawn(self, provider: str, work: object) -> None:
        task = asyncio.create_task(work)  # type: ignore[arg-type]
        self._inflight.add(task)
        self._busy[provider] = self._busy.get(provider, 0) + 1

        def done(t: asyncio.Task[object]) -> None:
            self._inflight.discard(t)
            self._busy[provider] -= 1
            if not t.cancelled() and (exc := t.exception()) is not None:
                log.error("dispatch task failed", provider=provider, error=repr(exc))
            self.wake(provider)  # a slot may be free, or a retry due

        task.add_done_callback(done)

    async def _loop(self, provider: str) -> None:
        event = self._wake[provider]
        while True:
            event.clear()
            try:
                started = await self.run_once(provider)
            except Exception as exc:  # the database may be briefly unreachable: keep going
                log.error("dispatch round failed", provider=provider, error=repr(exc))
                started = 0
            if started:
                continue
            await wait_at_most(self.config.dispatch_interval_s, event.wait())

    def start(self) -> None:
        self._tasks = [asyncio.create_task(self._loop(p), name=f"dispatch-{p}") for p in self._wake]

    async def stop(self, *, grace_s: float = 10.0) -> None:
        """Stop claiming, let clones in flight finish for up to ``grace_s``, then cancel.
        A cancelled clone is not lost: its request stays leased and the stuck sweeper
        adopts or re-queues it once its dispatch lease expires."""
        await cancel_and_wait(*self._tasks)
        self._tasks = []
        await finish_or_cancel(list(self._inflight), grace_s)
