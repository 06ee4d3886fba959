"""A thin async client for the allocator's admin RPCs, speaking plain Python values.

Protobuf stops here: the handlers get :class:`~voiceslot_operator.conditions.VoiceSnapshot`,
:class:`~voiceslot_operator.conditions.AllocatorEvent`, :class:`SlotView` and
:class:`MaintenanceOutcome`, and gRPC failures become three exceptions with one question
each answered: is the voice gone (:class:`VoiceGone`; :class:`BadVoiceId` for an id that
cannot exist), is the call wrong for the voice's state (:class:`NotNow`), or is the
allocator unreachable or failing (:class:`AllocatorUnavailable`, worth retrying)?

Every call carries ``authorization: Bearer <key>`` and a deadline.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass, field
from datetime import UTC, datetime
from enum import StrEnum
from typing import Any

import grpc

from voiceslot.v1 import allocator_pb2 as pb
from voiceslot.v1 import allocator_pb2_grpc as pb_grpc
from voiceslot.v1 import common_pb2
from voiceslot_operator.conditions import (
    AllocatorEvent,
    VoiceSnapshot,
    camel_case,
    phase_from_state,
)

# gRPC's reconnect backoff grows to two minutes by default: after an allocator outage the
# operator would keep answering "unreachable" long after it is back. Ten seconds at most.
CHANNEL_OPTIONS: tuple[tuple[str, int], ...] = (
    ("grpc.initial_reconnect_backoff_ms", 500),
    ("grpc.min_reconnect_backoff_ms", 500),
    ("grpc.max_reconnect_backoff_ms", 10_000),
)


class AllocatorError(Exception):
    """A failed admin call."""


class VoiceGone(AllocatorError):
    """NOT_FOUND: the allocator has no such voice (deleted, or never existed)."""


class NotNow(AllocatorError):
    """FAILED_PRECONDITION: the voice's state does not allow this call now."""


class BadVoiceId(AllocatorError):
    """INVALID_ARGUMENT: the request (for a voice: its id) can never succeed as sent."""


class AllocatorUnavailable(AllocatorError):
    """Anything else (unreachable, deadline, auth, internal): retry later."""

    def __init__(self, message: str, *, code: grpc.StatusCode | None = None) -> None:
        super().__init__(message)
        self.code = code


class MaintenanceTask(StrEnum):
    EXPIRE_LEASES = "expire_leases"
    RESET_STUCK = "reset_stuck"
    RECONCILE = "reconcile"
    RECLAIM_IDLE = "reclaim_idle"

    @property
    def wire(self) -> int:
        return int(getattr(pb, f"MAINTENANCE_TASK_{self.name}"))


_TASK_FROM_WIRE = {task.wire: task for task in MaintenanceTask}


@dataclass(frozen=True)
class SlotView:
    """A voice holding (or acquiring) a provider slot, as ListSlots reports it."""

    voice_id: str
    provider: str
    owner: str
    remote_id: str
    phase: str | None
    pinned: bool
    active_leases: int
    lease_holder: str
    last_used_at: datetime | None
    state_since: datetime | None = None
    """When the voice entered its current state, by the allocator's clock."""


@dataclass(frozen=True)
class MaintenanceOutcome:
    task: MaintenanceTask
    examined: int
    changed_voice_ids: tuple[str, ...]
    errors: tuple[str, ...] = field(default=())


@dataclass(frozen=True)
class EnsureOutcome:
    """What EnsureActiveVoice answered: the voice's phase and, when ready, a lease."""

    phase: str | None
    lease_id: str = ""


def _time(message: Any, name: str) -> datetime | None:
    if not message.HasField(name):
        return None
    return getattr(message, name).ToDatetime(tzinfo=UTC)


def _phase(state: int) -> str | None:
    return phase_from_state(common_pb2.VoiceState.Name(state))


def voice_snapshot(v: pb.Voice) -> VoiceSnapshot:
    return VoiceSnapshot(
        voice_id=v.voice_id,
        owner=v.owner,
        provider=v.provider,
        phase=_phase(v.state),
        remote_id=v.provider_voice_id,
        pinned=v.pinned,
        active_leases=v.active_leases,
        generation=v.generation,
        last_used_at=_time(v, "last_used_at"),
        last_error=v.last_error,
        updated_at=_time(v, "updated_at"),
    )


def allocator_event(e: pb.VoiceEvent) -> AllocatorEvent:
    return AllocatorEvent(
        event_id=e.event_id,
        reason=camel_case(common_pb2.EventReason.Name(e.reason), prefix="EVENT_REASON_"),
        from_phase=_phase(e.from_state) if e.from_state else None,
        to_phase=_phase(e.to_state) if e.to_state else None,
        message=e.message,
        occurred_at=_time(e, "occurred_at") or datetime.now(UTC),
    )


def slot_view(s: pb.Slot) -> SlotView:
    return SlotView(
        voice_id=s.voice_id,
        provider=s.provider,
        owner=s.owner,
        remote_id=s.provider_voice_id,
        phase=_phase(s.state),
        pinned=s.pinned,
        active_leases=s.active_leases,
        lease_holder=s.lease_holder,
        last_used_at=_time(s, "last_used_at"),
        state_since=_time(s, "state_since"),
    )


def _translate(exc: grpc.aio.AioRpcError, what: str) -> AllocatorError:
    code, details = exc.code(), exc.details() or ""
    message = f"{what}: {code.name}: {details}"
    if code == grpc.StatusCode.NOT_FOUND:
        return VoiceGone(message)
    if code == grpc.StatusCode.FAILED_PRECONDITION:
        return NotNow(message)
    if code == grpc.StatusCode.INVALID_ARGUMENT:
        return BadVoiceId(message)
    return AllocatorUnavailable(message, code=code)


class AllocatorAdmin:
    """Admin calls to one allocator. Create it inside the event loop that uses it."""

    def __init__(
        self,
        target: str,
        *,
        api_key: str | None,
        timeout_s: float = 15.0,
        holder: str = "voiceslot-operator",
        channel: grpc.aio.Channel | None = None,
    ) -> None:
        self._channel = channel or grpc.aio.insecure_channel(target, options=CHANNEL_OPTIONS)
        self._stub = pb_grpc.AllocatorServiceStub(self._channel)
        self._metadata = (("authorization", f"Bearer {api_key}"),) if api_key else ()
        self._timeout_s = timeout_s
        self.holder = holder

    async def close(self) -> None:
        await self._channel.close()

    async def _call(self, what: str, method: Any, request: Any) -> Any:
        try:
            return await method(request, metadata=self._metadata, timeout=self._timeout_s)
        except grpc.aio.AioRpcError as exc:
            raise _translate(exc, what) from exc

    # -- reads -------------------------------------------------------------------------------

    async def get_voice(self, voice_id: str) -> VoiceSnapshot:
        response = await self._call(
            "GetVoice", self._stub.GetVoice, pb.GetVoiceRequest(voice_id=voice_id)
        )
        return voice_snapshot(response.voice)

    async def voice_events(
        self, voice_id: str, *, after_id: int | None, max_events: int = 500, recent: int = 50
    ) -> list[AllocatorEvent]:
        """The voice's events newer than ``after_id``, oldest first. ``after_id`` None
        means "never looked": the ``recent`` newest only."""
        page_size = 100 if after_id is not None else recent
        found: list[AllocatorEvent] = []
        token = ""
        while True:
            response = await self._call(
                "ListVoiceEvents",
                self._stub.ListVoiceEvents,
                pb.ListVoiceEventsRequest(voice_id=voice_id, page_size=page_size, page_token=token),
            )
            for e in response.events:  # newest first
                if after_id is not None and e.event_id <= after_id:
                    return found[::-1]
                found.append(allocator_event(e))
            token = response.next_page_token
            if after_id is None or not token or len(found) >= max_events:
                return found[::-1]

    async def list_voices(self) -> list[VoiceSnapshot]:
        """Every voice (all pages): one sweep answers for every VoiceSlot at once."""
        voices: list[VoiceSnapshot] = []
        token = ""
        while True:
            response = await self._call(
                "ListVoices",
                self._stub.ListVoices,
                pb.ListVoicesRequest(page_size=500, page_token=token),
            )
            voices.extend(voice_snapshot(v) for v in response.voices)
            token = response.next_page_token
            if not token:
                return voices

    async def list_slots(self, *, provider: str = "") -> list[SlotView]:
        slots: list[SlotView] = []
        token = ""
        while True:
            response = await self._call(
                "ListSlots",
                self._stub.ListSlots,
                pb.ListSlotsRequest(provider=provider, page_size=500, page_token=token),
            )
            slots.extend(slot_view(s) for s in response.slots)
            token = response.next_page_token
            if not token:
                return slots

    async def list_providers(self) -> list[pb.Provider]:
        response = await self._call(
            "ListProviders", self._stub.ListProviders, pb.ListProvidersRequest()
        )
        return list(response.providers)

    # -- writes ------------------------------------------------------------------------------

    async def reclaim_slot(self, voice_id: str, *, force: bool) -> VoiceSnapshot:
        response = await self._call(
            "ReclaimSlot",
            self._stub.ReclaimSlot,
            pb.ReclaimSlotRequest(voice_id=voice_id, force=force),
        )
        return voice_snapshot(response.voice)

    async def reset_stuck(self, voice_id: str) -> VoiceSnapshot:
        response = await self._call(
            "ResetStuckAllocation",
            self._stub.ResetStuckAllocation,
            pb.ResetStuckAllocationRequest(voice_id=voice_id),
        )
        return voice_snapshot(response.voice)

    async def set_pinned(self, voice_id: str, pinned: bool) -> VoiceSnapshot:
        response = await self._call(
            "SetVoicePinned",
            self._stub.SetVoicePinned,
            pb.SetVoicePinnedRequest(voice_id=voice_id, pinned=pinned),
        )
        return voice_snapshot(response.voice)

    async def run_maintenance(
        self, tasks: Sequence[MaintenanceTask], *, provider: str = ""
    ) -> list[MaintenanceOutcome]:
        response = await self._call(
            "RunMaintenance",
            self._stub.RunMaintenance,
            pb.RunMaintenanceRequest(tasks=[t.wire for t in tasks], provider=provider),
        )
        return [
            MaintenanceOutcome(
                task=_TASK_FROM_WIRE[r.task],
                examined=r.examined,
                changed_voice_ids=tuple(r.changed_voice_ids),
                errors=tuple(r.errors),
            )
            for r in response.results
            if r.task in _TASK_FROM_WIRE
        ]

    async def ensure_active(self, voice_id: str) -> EnsureOutcome:
        """Ask for the voice to hold a slot (queues it when it has none)."""
        response = await self._call(
            "EnsureActiveVoice",
            self._stub.EnsureActiveVoice,
            pb.EnsureActiveVoiceRequest(voice_id=voice_id, lease_holder=self.holder),
        )
        lease_id = response.ready.lease.lease_id if response.HasField("ready") else ""
        return EnsureOutcome(phase=_phase(response.voice.state), lease_id=lease_id)

    async def release_lease(self, lease_id: str) -> None:
        await self._call(
            "ReleaseLease", self._stub.ReleaseLease, pb.ReleaseLeaseRequest(lease_id=lease_id)
        )
