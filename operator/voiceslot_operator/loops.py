"""Operator-wide background loops (started on startup, stopped on cleanup).

They drive the lifecycle the allocator's own loop would otherwise run, and refresh the
listings every VoiceSlot's refresh reads:

- idle reclaim (with lease expiry), stuck reset, drift reconciliation (re-queueing
  voices that lost their remote copy): RunMaintenance;
- ``voices``: ListVoices, so a refresh knows without a call whether its voice changed;
- ``slots``: ListSlots, for lease holders and mirroring (a VoiceSlot for every slot).

Outcomes reach each VoiceSlot through the voice's allocator events (STUCK_RESET,
DRIFT_REMOTE_MISSING, RECLAIMED_*) on its next refresh: nothing is remembered here.
A loop whose round fails waits longer each time (exponential, with jitter).
"""

from __future__ import annotations

import asyncio
from collections.abc import Awaitable, Callable, Mapping
from typing import Any

from voiceslot.logs import get_logger
from voiceslot_operator.backoff import backoff_delay
from voiceslot_operator.client import AllocatorError, MaintenanceTask, SlotView, VoiceGone
from voiceslot_operator.mirror import mirrored_voiceslot
from voiceslot_operator.runtime import OperatorRuntime

log = get_logger("voiceslot.operator")


class RoundFailed(Exception):
    """A loop's round could not be done; the loop backs off."""


class Loops:
    def __init__(self, rt: OperatorRuntime) -> None:
        self.rt = rt
        self._tasks: list[asyncio.Task[None]] = []

    def start(self) -> None:
        c = self.rt.config
        loops: list[tuple[str, float, Callable[[], Awaitable[None]]]] = [
            (
                "idle-reclaim",
                c.idle_reclaim_interval_s,
                lambda: self.maintain(
                    [MaintenanceTask.EXPIRE_LEASES, MaintenanceTask.RECLAIM_IDLE]
                ),
            ),
            (
                "stuck-reset",
                c.stuck_reset_interval_s,
                lambda: self.maintain([MaintenanceTask.RESET_STUCK]),
            ),
            ("drift", c.drift_interval_s, lambda: self.maintain([MaintenanceTask.RECONCILE])),
            ("voices", c.reconcile_interval_s, self.sweep),
            ("slots", c.mirror_interval_s, self.mirror),
        ]
        self._tasks = [
            asyncio.create_task(self._every(name, interval, work), name=f"voiceslot-{name}")
            for name, interval, work in loops
        ]

    async def stop(self) -> None:
        for task in self._tasks:
            task.cancel()
        await asyncio.gather(*self._tasks, return_exceptions=True)
        self._tasks = []

    async def _every(
        self, name: str, interval_s: float, work: Callable[[], Awaitable[None]]
    ) -> None:
        c = self.rt.config
        failures = 0
        while True:
            try:
                await work()
                failures = 0
            except asyncio.CancelledError:
                raise
            except Exception as exc:  # a loop must outlive any one failure
                self.rt.metrics.errors.labels(name).inc()
                log.warning("operator loop failed", loop=name, error=str(exc))
                failures += 1
            delay = interval_s
            if failures:
                delay = max(
                    interval_s,
                    backoff_delay(failures - 1, base_s=c.retry_delay_s, cap_s=c.retry_max_delay_s),
                )
            await asyncio.sleep(delay)

    async def _ask(self, what: str, call: Awaitable[Any]) -> Any:
        try:
            answer = await call
        except AllocatorError as exc:
            self.rt.allocator_reachable(False)
            raise RoundFailed(f"{what}: {exc}") from exc
        self.rt.allocator_reachable(True)
        return answer

    async def maintain(self, tasks: list[MaintenanceTask]) -> None:
        """One RunMaintenance call."""
        rt = self.rt
        outcomes = await self._ask("maintenance", rt.admin.run_maintenance(tasks))
        for outcome in outcomes:
            task = outcome.task.value
            rt.metrics.maintenance_changes.labels(task).inc(len(outcome.changed_voice_ids))
            if outcome.changed_voice_ids or outcome.errors:
                log.info(
                    "maintenance changed voices",
                    task=task,
                    examined=outcome.examined,
                    changed=list(outcome.changed_voice_ids),
                    errors=list(outcome.errors),
                )
            if outcome.task == MaintenanceTask.RECONCILE and rt.config.repair_drift:
                await self.repair_drift(outcome.changed_voice_ids)
            # Counted last: a test (or a dashboard) that sees the count move knows the
            # whole round, repairs included, is done.
            rt.metrics.maintenance_runs.labels(task).inc()
            rt.metrics.maintenance_last_success.labels(task).set_to_current_time()

    async def repair_drift(self, voice_ids: tuple[str, ...]) -> None:
        """Re-queue voices whose remote copy vanished while ready (reconcile made them
        Idle), so they get their slot back. Orphan deletions change no voice's state and
        are left alone."""
        admin = self.rt.admin
        for voice_id in dict.fromkeys(voice_ids):
            try:
                voice = await admin.get_voice(voice_id)
                if voice.phase != "Idle":
                    continue
                history = await admin.voice_events(voice_id, after_id=None)
                transitions = [e for e in history if e.to_phase is not None]
                if not transitions or transitions[-1].reason != "DriftRemoteMissing":
                    continue
                outcome = await admin.ensure_active(voice_id)
                if outcome.lease_id:  # it was ready already: we want no lease
                    await admin.release_lease(outcome.lease_id)
                self.rt.metrics.drift_repairs.inc()
                log.info("drifted voice re-queued", voice=voice_id, phase=outcome.phase)
            except VoiceGone:
                continue
            except AllocatorError as exc:
                self.rt.metrics.errors.labels("drift_repair").inc()
                log.warning("drift repair failed", voice=voice_id, error=str(exc))

    async def sweep(self) -> None:
        """List every voice once: each VoiceSlot's refresh then knows, without a call of
        its own, whether its voice changed."""
        rt = self.rt
        try:
            voices = await self._ask("list voices", rt.admin.list_voices())
        except RoundFailed:
            rt.voices = None  # refreshes fall back to asking one by one
            raise
        rt.voices = {v.voice_id: v for v in voices}
        rt.metrics.voice_sweeps.inc()

    async def mirror(self) -> None:
        """Refresh the slot list (lease holders for status) and, when mirroring, create a
        VoiceSlot for every slot no VoiceSlot stands for yet."""
        rt = self.rt
        slots: list[SlotView] = await self._ask("list slots", rt.admin.list_slots())
        rt.slots = {s.voice_id: s for s in slots}
        rt.metrics.slots.clear()
        for provider in {s.provider for s in slots}:
            rt.metrics.slots.labels(provider).set(sum(s.provider == provider for s in slots))
        if rt.config.mirror_voice_slots and slots:
            await self._mirror(slots)
        rt.metrics.slot_listings.inc()

    async def _mirror(self, slots: list[SlotView]) -> None:
        rt = self.rt
        await rt.logged_in.wait()
        known = {
            (item.get("spec") or {}).get("voiceId")
            for namespace in rt.config.watch_scope(environ=rt.environ) or (None,)
            for item in await rt.kube.list(namespace)
        }
        namespace = rt.policy.home_namespace or "default"
        for slot in slots:
            if slot.voice_id in known:
                continue
            if await rt.kube.create(namespace, mirrored_voiceslot(slot, namespace=namespace)):
                rt.metrics.mirrored.labels("created").inc()
                log.info("mirrored slot as a VoiceSlot", voice=slot.voice_id, namespace=namespace)

    async def forget_mirrored(self, meta: Mapping[str, Any]) -> None:
        """Delete a mirrored VoiceSlot whose voice is gone, or that a declared VoiceSlot
        replaced (its finalizer still runs, and leaves the voice to the owner)."""
        if await self.rt.kube.delete(str(meta.get("namespace")), str(meta.get("name"))):
            self.rt.metrics.mirrored.labels("deleted").inc()
            log.info("deleted a redundant mirrored VoiceSlot", name=meta.get("name"))
