"""The synthesizer's view of the allocator: "give me voice V ready, with a lease, before
my deadline", then renew and release.

Waiting is event-driven: while the voice is queued or allocating we follow WatchVoice
until it turns READY (or FAILED), then ask again for the lease. If the deadline comes
first, the caller gets RESOURCE_EXHAUSTED with a RetryInfo built from the allocator's
own estimate.
"""

from __future__ import annotations

import asyncio
import contextlib
import time
from collections.abc import AsyncIterator, Callable
from contextlib import asynccontextmanager
from dataclasses import dataclass

import grpc
from grpc_status import rpc_status

from voiceslot import errors
from voiceslot.v1 import allocator_pb2 as pb
from voiceslot.v1 import allocator_pb2_grpc as pb_grpc
from voiceslot.v1 import common_pb2

_FAILED = common_pb2.VOICE_STATE_FAILED
_READY = common_pb2.VOICE_STATE_READY


@dataclass(frozen=True)
class ActiveVoice:
    voice_id: str
    provider: str
    provider_voice_id: str
    language: str
    lease_id: str
    lease_ttl_s: float


def _as_domain_error(exc: grpc.aio.AioRpcError) -> errors.VoiceslotError:
    """Carry the allocator's answer to our caller with the same meaning."""
    code, message = exc.code(), exc.details() or ""
    if code == grpc.StatusCode.NOT_FOUND:
        return errors.NotFound("voice", message)
    if code == grpc.StatusCode.INVALID_ARGUMENT:
        status = rpc_status.from_call(exc)
        field = "voice_id"
        if status is not None:
            from google.rpc import error_details_pb2

            for detail in status.details:
                br = error_details_pb2.BadRequest()
                if detail.Unpack(br) and br.field_violations:
                    field = br.field_violations[0].field
        return errors.InvalidArgument(field, message)
    if code == grpc.StatusCode.PERMISSION_DENIED:
        return errors.PermissionDenied(message)
    if code == grpc.StatusCode.UNAUTHENTICATED:
        return errors.Unauthenticated(message)
    if code == grpc.StatusCode.RESOURCE_EXHAUSTED:
        return errors.QuotaExceeded(message, retry_after=5.0)
    if code == grpc.StatusCode.FAILED_PRECONDITION:
        return errors.FailedPrecondition(message)
    return errors.Unavailable(f"allocator: {code.name}: {message}", retry_after=1.0)


class AllocatorClient:
    def __init__(self, target: str, *, credential: Callable[[], str], holder: str) -> None:
        self._channel = grpc.aio.insecure_channel(target)
        self._stub = pb_grpc.AllocatorServiceStub(self._channel)
        self._credential = credential
        self._holder = holder

    def _metadata(self) -> tuple[tuple[str, str], ...]:
        return (("authorization", f"Bearer {self._credential()}"),)

    async def close(self) -> None:
        await self._channel.close()

    async def _ensure(self, voice_id: str, timeout: float) -> pb.EnsureActiveVoiceResponse:
        try:
            return await self._stub.EnsureActiveVoice(
                pb.EnsureActiveVoiceRequest(voice_id=voice_id, lease_holder=self._holder),
                metadata=self._metadata(),
                timeout=max(0.1, timeout),
            )
        except grpc.aio.AioRpcError as exc:
            raise _as_domain_error(exc) from None

    async def acquire(self, voice_id: str, *, deadline: float) -> ActiveVoice:
        """A ready voice with a lease, or an error once ``deadline`` (monotonic) passes."""
        while True:
            response = await self._ensure(voice_id, deadline - time.monotonic())
            voice = response.voice
            if response.HasField("ready"):
                lease = response.ready.lease
                ttl = max(1.0, lease.expires_at.ToDatetime().timestamp() - time.time())
                return ActiveVoice(
                    voice.voice_id,
                    voice.provider,
                    response.ready.provider_voice_id,
                    voice.language,
                    lease.lease_id,
                    ttl,
                )
            if voice.state == _FAILED:
                raise errors.Unavailable(
                    f"voice {voice_id} could not be allocated: {voice.last_error}", retry_after=5.0
                )
            wait = (
                response.queued.estimated_wait
                if response.HasField("queued")
                else response.allocating.estimated_wait
            ).ToNanoseconds() / 1e9
            remaining = deadline - time.monotonic()
            if remaining <= 0:
                raise errors.QuotaExceeded(
                    f"voice {voice_id} is waiting for a slot; retry later",
                    violations=(
                        errors.QuotaViolation(f"voice:{voice_id}", "no provider slot free yet"),
                    ),
                    retry_after=max(1.0, wait),
                )
            settled = await self._wait_until_settled(voice_id, timeout=remaining)
            # Asking again would re-queue a dead-lettered voice: report it instead.
            if settled is not None and settled.state == _FAILED:
                raise errors.Unavailable(
                    f"voice {voice_id} could not be allocated: {settled.last_error}",
                    retry_after=5.0,
                )

    async def _wait_until_settled(self, voice_id: str, *, timeout: float) -> pb.Voice | None:
        """Follow WatchVoice until READY or FAILED (returned), or None after ``timeout``."""
        call = self._stub.WatchVoice(
            pb.WatchVoiceRequest(voice_id=voice_id),
            metadata=self._metadata(),
            timeout=max(0.1, timeout),
        )
        try:
            async for update in call:
                if update.voice.state in (_READY, _FAILED):
                    return update.voice
        except grpc.aio.AioRpcError as exc:
            if exc.code() != grpc.StatusCode.DEADLINE_EXCEEDED:
                raise _as_domain_error(exc) from None
        finally:
            call.cancel()
        return None

    async def get_voice(self, voice_id: str) -> pb.Voice:
        try:
            response = await self._stub.GetVoice(
                pb.GetVoiceRequest(voice_id=voice_id), metadata=self._metadata(), timeout=10
            )
        except grpc.aio.AioRpcError as exc:
            raise _as_domain_error(exc) from None
        return response.voice

    async def renew(self, lease_id: str) -> None:
        await self._stub.RenewLease(
            pb.RenewLeaseRequest(lease_id=lease_id), metadata=self._metadata(), timeout=10
        )

    async def release(self, lease_id: str) -> None:
        # On failure the lease expires on its own; nothing is lost.
        with contextlib.suppress(grpc.aio.AioRpcError):
            await self._stub.ReleaseLease(
                pb.ReleaseLeaseRequest(lease_id=lease_id), metadata=self._metadata(), timeout=10
            )

    @asynccontextmanager
    async def leased(self, voice_id: str, *, deadline: float) -> AsyncIterator[ActiveVoice]:
        """Hold a lease for the block: renewed in the background at a third of its TTL,
        released on every exit path (success, error, cancellation)."""
        active = await self.acquire(voice_id, deadline=deadline)

        async def keep_renewed() -> None:
            while True:
                await asyncio.sleep(active.lease_ttl_s / 3)
                with contextlib.suppress(grpc.aio.AioRpcError):
                    await self.renew(active.lease_id)

        renewer = asyncio.create_task(keep_renewed())
        try:
            yield active
        finally:
            renewer.cancel()
            with contextlib.suppress(asyncio.CancelledError):
                await renewer
            await asyncio.shield(self.release(active.lease_id))
