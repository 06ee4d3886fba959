"""The gRPC adapter of the allocator: protobuf in, use case call, protobuf out.

No decisions here. Authentication, error mapping and logging happen in the interceptor
(``voiceslot.rpc.interceptors``); the caller arrives as ``current_principal()``.
"""

from __future__ import annotations

from collections.abc import AsyncIterator

import grpc

from allocator_svc.domain.states import EventReason, VoiceState
from allocator_svc.maintenance import Task, TaskResult
from allocator_svc.records import (
    Allocating,
    Event,
    Lease,
    ProviderStats,
    Queued,
    ReadyOutcome,
    Slot,
    Voice,
)
from allocator_svc.service import Allocator, RegisterParams
from voiceslot.errors import InvalidArgument, PayloadTooLarge
from voiceslot.rpc.convert import duration, seconds, timestamp
from voiceslot.rpc.interceptors import current_principal
from voiceslot.v1 import allocator_pb2 as pb
from voiceslot.v1 import allocator_pb2_grpc as pb_grpc
from voiceslot.v1 import common_pb2
from voiceslot.validation import unique_list

MAX_CHUNK_BYTES = 1024 * 1024
# Room for every task kind, each named a few times over; more is not a real request.
MAX_MAINTENANCE_TASKS = 16

_STATE_FROM_PB = {getattr(common_pb2, f"VOICE_STATE_{s.name}"): s for s in VoiceState}
_STATE_TO_PB = {s: v for v, s in _STATE_FROM_PB.items()}
_REASON_TO_PB = {r: getattr(common_pb2, f"EVENT_REASON_{r.name}") for r in EventReason}
_TASK_FROM_PB = {getattr(pb, f"MAINTENANCE_TASK_{t.name}"): t for t in Task}
_TASK_TO_PB = {t: v for v, t in _TASK_FROM_PB.items()}
_BREAKER_TO_PB = {
    "closed": pb.BREAKER_STATE_CLOSED,
    "open": pb.BREAKER_STATE_OPEN,
    "half_open": pb.BREAKER_STATE_HALF_OPEN,
}


def voice_pb(v: Voice) -> pb.Voice:
    return pb.Voice(
        voice_id=v.id,
        owner=v.owner,
        display_name=v.display_name,
        provider=v.provider,
        language=v.language,
        state=_STATE_TO_PB[v.state],
        provider_voice_id=v.provider_voice_id or "",
        generation=v.generation,
        pinned=v.pinned,
        created_at=timestamp(v.created_at),
        updated_at=timestamp(v.updated_at),
        last_used_at=timestamp(v.last_used_at),
        sample_bytes=v.sample_bytes,
        sample_sha256=v.sample_sha256,
        last_error=v.last_error,
        active_leases=v.active_leases,
    )


def lease_pb(lease: Lease) -> pb.Lease:
    return pb.Lease(
        lease_id=lease.id, voice_id=lease.voice_id, expires_at=timestamp(lease.expires_at)
    )


def event_pb(e: Event) -> pb.VoiceEvent:
    return pb.VoiceEvent(
        event_id=e.id,
        voice_id=e.voice_id,
        reason=_REASON_TO_PB[e.reason],
        from_state=_STATE_TO_PB[e.from_state] if e.from_state else 0,
        to_state=_STATE_TO_PB[e.to_state] if e.to_state else 0,
        message=e.message,
        occurred_at=timestamp(e.occurred_at),
    )


def slot_pb(s: Slot) -> pb.Slot:
    v = s.voice
    return pb.Slot(
        provider=v.provider,
        voice_id=v.id,
        owner=v.owner,
        provider_voice_id=v.provider_voice_id or "",
        state=_STATE_TO_PB[v.state],
        pinned=v.pinned,
        active_leases=v.active_leases,
        lease_holder=s.lease_holder,
        last_used_at=timestamp(v.last_used_at),
        state_since=timestamp(v.state_changed_at),
    )


def provider_pb(p: ProviderStats, now_s: float) -> pb.Provider:
    age = max(0.0, now_s - p.oldest_queued_at.timestamp()) if p.oldest_queued_at else 0.0
    return pb.Provider(
        name=p.name,
        kind=p.kind,
        capacity=p.capacity,
        used=p.used,
        queued=p.queued,
        oldest_queued_age=duration(age),
        breaker_state=_BREAKER_TO_PB.get(p.breaker_state, 0),
        add_edit_remaining=-1 if p.add_edit_remaining is None else p.add_edit_remaining,
    )


def task_result_pb(r: TaskResult) -> pb.MaintenanceResult:
    return pb.MaintenanceResult(
        task=_TASK_TO_PB[r.task], examined=r.examined, changed_voice_ids=r.changed, errors=r.errors
    )


class AllocatorServicer(pb_grpc.AllocatorServiceServicer):
    def __init__(self, allocator: Allocator) -> None:
        self.allocator = allocator

    async def RegisterVoice(
        self,
        request_iterator: AsyncIterator[pb.RegisterVoiceRequest],
        context: grpc.aio.ServicerContext,
    ) -> pb.RegisterVoiceResponse:
        cap = self.allocator.config.sample_max_bytes
        metadata: pb.RegisterVoiceMetadata | None = None
        chunks: list[bytes] = []
        size = 0
        async for message in request_iterator:
            kind = message.WhichOneof("payload")
            if kind == "metadata":
                if metadata is not None or chunks:
                    raise InvalidArgument("metadata", "must be sent once, in the first message")
                metadata = message.metadata
            elif kind == "sample_chunk":
                if metadata is None:
                    raise InvalidArgument("metadata", "the first message must carry metadata")
                if len(message.sample_chunk) > MAX_CHUNK_BYTES:
                    raise InvalidArgument(
                        "sample_chunk", f"at most {MAX_CHUNK_BYTES} bytes per message"
                    )
                size += len(message.sample_chunk)
                if size > cap:
                    # Stop reading at once: the rest of an oversize upload is never buffered.
                    raise PayloadTooLarge("sample", cap)
                chunks.append(message.sample_chunk)
            else:
                raise InvalidArgument("payload", "each message must carry metadata or sample_chunk")
        if metadata is None:
            raise InvalidArgument("metadata", "missing")
        if not chunks:
            raise InvalidArgument("sample_chunk", "no sample was sent")
        voice, _ = await self.allocator.register_voice(
            current_principal(),
            RegisterParams(
                display_name=metadata.display_name,
                provider=metadata.provider,
                language=metadata.language,
                idempotency_key=metadata.idempotency_key,
                owner=metadata.owner,
            ),
            b"".join(chunks),
        )
        return pb.RegisterVoiceResponse(voice=voice_pb(voice))

    async def GetVoice(
        self, request: pb.GetVoiceRequest, context: grpc.aio.ServicerContext
    ) -> pb.GetVoiceResponse:
        return pb.GetVoiceResponse(
            voice=voice_pb(await self.allocator.get_voice(current_principal(), request.voice_id))
        )

    async def ListVoices(
        self, request: pb.ListVoicesRequest, context: grpc.aio.ServicerContext
    ) -> pb.ListVoicesResponse:
        state = None
        if request.state:
            if request.state not in _STATE_FROM_PB:
                raise InvalidArgument("state", "unknown voice state")
            state = _STATE_FROM_PB[request.state]
        voices, token = await self.allocator.list_voices(
            current_principal(),
            size=request.page_size,
            token=request.page_token,
            provider=request.provider,
            state=state,
        )
        return pb.ListVoicesResponse(voices=[voice_pb(v) for v in voices], next_page_token=token)

    async def DeleteVoice(
        self, request: pb.DeleteVoiceRequest, context: grpc.aio.ServicerContext
    ) -> pb.DeleteVoiceResponse:
        await self.allocator.delete_voice(
            current_principal(), request.voice_id, force=request.force
        )
        return pb.DeleteVoiceResponse()

    async def EnsureActiveVoice(
        self, request: pb.EnsureActiveVoiceRequest, context: grpc.aio.ServicerContext
    ) -> pb.EnsureActiveVoiceResponse:
        outcome = await self.allocator.ensure_active(
            current_principal(),
            request.voice_id,
            lease_ttl_s=seconds(request.lease_ttl, present=request.HasField("lease_ttl")),
            priority=request.priority,
            holder=request.lease_holder,
        )
        if isinstance(outcome, ReadyOutcome):  # the hot path: built in one go
            return pb.EnsureActiveVoiceResponse(
                voice=voice_pb(outcome.voice),
                ready=pb.EnsureActiveVoiceReady(
                    provider_voice_id=outcome.voice.provider_voice_id or "",
                    lease=lease_pb(outcome.lease),
                ),
            )
        response = pb.EnsureActiveVoiceResponse(voice=voice_pb(outcome.voice))
        if isinstance(outcome, Queued):
            response.queued.CopyFrom(
                pb.EnsureActiveVoiceQueued(
                    position=outcome.position, estimated_wait=duration(outcome.estimated_wait_s)
                )
            )
        elif isinstance(outcome, Allocating):
            response.allocating.CopyFrom(
                pb.EnsureActiveVoiceAllocating(estimated_wait=duration(outcome.estimated_wait_s))
            )
        return response

    async def WatchVoice(
        self, request: pb.WatchVoiceRequest, context: grpc.aio.ServicerContext
    ) -> AsyncIterator[pb.WatchVoiceResponse]:
        async for voice in self.allocator.watch_voice(current_principal(), request.voice_id):
            yield pb.WatchVoiceResponse(voice=voice_pb(voice))

    async def RenewLease(
        self, request: pb.RenewLeaseRequest, context: grpc.aio.ServicerContext
    ) -> pb.RenewLeaseResponse:
        lease = await self.allocator.renew_lease(
            current_principal(),
            request.lease_id,
            ttl_s=seconds(request.ttl, present=request.HasField("ttl")),
        )
        return pb.RenewLeaseResponse(lease=lease_pb(lease))

    async def ReleaseLease(
        self, request: pb.ReleaseLeaseRequest, context: grpc.aio.ServicerContext
    ) -> pb.ReleaseLeaseResponse:
        await self.allocator.release_lease(current_principal(), request.lease_id)
        return pb.ReleaseLeaseResponse()

    async def ListVoiceEvents(
        self, request: pb.ListVoiceEventsRequest, context: grpc.aio.ServicerContext
    ) -> pb.ListVoiceEventsResponse:
        events, token = await self.allocator.list_events(
            current_principal(), request.voice_id, size=request.page_size, token=request.page_token
        )
        return pb.ListVoiceEventsResponse(
            events=[event_pb(e) for e in events], next_page_token=token
        )

    async def ListSlots(
        self, request: pb.ListSlotsRequest, context: grpc.aio.ServicerContext
    ) -> pb.ListSlotsResponse:
        slots, token = await self.allocator.list_slots(
            current_principal(),
            provider=request.provider,
            size=request.page_size,
            token=request.page_token,
        )
        return pb.ListSlotsResponse(slots=[slot_pb(s) for s in slots], next_page_token=token)

    async def ListProviders(
        self, request: pb.ListProvidersRequest, context: grpc.aio.ServicerContext
    ) -> pb.ListProvidersResponse:
        stats = await self.allocator.list_providers(current_principal())
        now_s = self.allocator.clock.now().timestamp()
        return pb.ListProvidersResponse(providers=[provider_pb(p, now_s) for p in stats])

    async def ReclaimSlot(
        self, request: pb.ReclaimSlotRequest, context: grpc.aio.ServicerContext
    ) -> pb.ReclaimSlotResponse:
        voice = await self.allocator.reclaim_slot(
            current_principal(), request.voice_id, force=request.force
        )
        return pb.ReclaimSlotResponse(voice=voice_pb(voice))

    async def ResetStuckAllocation(
        self, request: pb.ResetStuckAllocationRequest, context: grpc.aio.ServicerContext
    ) -> pb.ResetStuckAllocationResponse:
        voice = await self.allocator.reset_stuck(current_principal(), request.voice_id)
        return pb.ResetStuckAllocationResponse(voice=voice_pb(voice))

    async def SetVoicePinned(
        self, request: pb.SetVoicePinnedRequest, context: grpc.aio.ServicerContext
    ) -> pb.SetVoicePinnedResponse:
        voice = await self.allocator.set_pinned(
            current_principal(), request.voice_id, request.pinned
        )
        return pb.SetVoicePinnedResponse(voice=voice_pb(voice))

    async def RunMaintenance(
        self, request: pb.RunMaintenanceRequest, context: grpc.aio.ServicerContext
    ) -> pb.RunMaintenanceResponse:
        # Bounded before the loop: a request may repeat one enum value millions of times.
        wanted = unique_list("tasks", request.tasks, max_items=MAX_MAINTENANCE_TASKS)
        tasks = []
        for i, t in enumerate(wanted):
            if t not in _TASK_FROM_PB:
                raise InvalidArgument(f"tasks[{i}]", "unknown maintenance task")
            tasks.append(_TASK_FROM_PB[t])
        results = await self.allocator.run_maintenance(
            tasks, provider=request.provider, who=current_principal()
        )
        return pb.RunMaintenanceResponse(results=[task_result_pb(r) for r in results])
