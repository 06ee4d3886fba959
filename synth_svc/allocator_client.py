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

from synth_svc.domain.timing import renew_every_s
from voiceslot import errors, telemetry
from voiceslot.logs import get_logger
from voiceslot.v1 import allocator_pb2 as pb
from voiceslot.v1 import allocator_pb2_grpc as pb_grpc
from voiceslot.v1 import common_pb2
from voiceslot.waiting import cancel_and_wait, finish_or_cancel

log = get_logger(__name__)

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
        return errors.NotFound("voice", "", message=message)
    if code == grpc.StatusCode.INVALID_ARGUMENT:
        status = rpc_status.from_call(exc)
        field, description = "voice_id", message
        if status is not None:
            from google.rpc import error_details_pb2

            for detail in status.details:
                br = error_details_pb2.BadRequest()
                if detail.Unpack(br) and br.field_violations:
                    # The violation's own words: the message already starts "field: ".
                    field = br.field_violations[0].field
                    description = br.field_violations[0].description
        return errors.InvalidArgument(field, description)
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
        self._shared: dict[tuple[str, str], _SharedLease] = {}
        self._pending: dict[tuple[str, str], asyncio.Future[None]] = {}
        self._unheard: set[asyncio.Task[None]] = set()
        """Answers still awaited for callers that stopped waiting (``_ensure``)."""

    def _metadata(self) -> tuple[tuple[str, str], ...]:
        # The trace context too (W3C traceparent; nothing while tracing is off), so the
        # allocator's spans join the synthesis call's trace.
        return (("authorization", f"Bearer {self._credential()}"), *telemetry.trace_metadata())

    async def close(self, *, grace_s: float = 5.0) -> None:
        """Close the channel once the answers nobody waits for are read and their leases
        released (``grace_s`` at most; what is left then lapses at its TTL)."""
        await finish_or_cancel(set(self._unheard), grace_s)
        await self._channel.close()

    async def _ensure(self, voice_id: str, timeout: float) -> pb.EnsureActiveVoiceResponse:
        # The call goes on when its caller is cancelled (a barge-in, a turn that failed
        # while the voice was being leased): the allocator may grant the lease after we
        # stopped listening, and a lease nobody heard of would hold the voice until its
        # TTL. So the answer is still read, and a lease in it released at once.
        asking = asyncio.ensure_future(
            self._stub.EnsureActiveVoice(
                pb.EnsureActiveVoiceRequest(voice_id=voice_id, lease_holder=self._holder),
                metadata=self._metadata(),
                timeout=max(0.1, timeout),
            )
        )
        try:
            return await asyncio.shield(asking)
        except asyncio.CancelledError:
            settling = asyncio.create_task(self._release_if_granted(asking))
            self._unheard.add(settling)
            settling.add_done_callback(self._unheard.discard)
            raise
        except grpc.aio.AioRpcError as exc:
            raise _as_domain_error(exc) from None

    async def _release_if_granted(
        self, asking: asyncio.Future[pb.EnsureActiveVoiceResponse]
    ) -> None:
        """Release the lease in an answer its caller stopped waiting for."""
        try:
            response = await asking
        except grpc.aio.AioRpcError:
            return  # no lease was granted
        if response.HasField("ready"):
            await self.release(response.ready.lease.lease_id)

    async def acquire(self, voice_id: str, *, deadline: float) -> ActiveVoice:
        """A ready voice with a lease, or an error by ``deadline`` (monotonic).

        The deadline is the time by which the caller must have its answer, so once waiting
        for the voice has used it up we answer at once with what we know (the allocator's
        last estimate as RetryInfo) instead of asking the allocator again past it."""
        while True:
            response = await self._ensure(voice_id, deadline - time.monotonic())
            voice = response.voice
            if response.HasField("ready"):
                lease = response.ready.lease
                # Epoch seconds straight from the Timestamp: no naive datetime read as local time.
                ttl = max(1.0, lease.expires_at.ToNanoseconds() / 1e9 - time.time())
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
            settled = (
                await self._wait_until_settled(voice_id, timeout=remaining)
                if remaining > 0
                else None
            )
            if settled is None:  # the caller's time is up and the voice is still waiting
                raise errors.QuotaExceeded(
                    f"voice {voice_id} is waiting for a slot; retry later",
                    violations=(
                        errors.QuotaViolation(f"voice:{voice_id}", "no provider slot free yet"),
                    ),
                    retry_after=max(1.0, wait),
                )
            # Asking again would re-queue a dead-lettered voice: report it instead.
            if settled.state == _FAILED:
                raise errors.Unavailable(
                    f"voice {voice_id} could not be allocated: {settled.last_error}",
                    retry_after=5.0,
                )

    async def _wait_until_settled(self, voice_id: str, *, timeout: float) -> pb.Voice | None:
        """Follow WatchVoice until READY or FAILED and return that voice; None only when
        ``timeout`` passes first. A watch that ends early (the allocator restarting, say)
        returns the last voice seen, so the caller asks again while it has time."""
        call = self._stub.WatchVoice(
            pb.WatchVoiceRequest(voice_id=voice_id),
            metadata=self._metadata(),
            timeout=max(0.05, timeout),
        )
        last = pb.Voice(voice_id=voice_id)
        try:
            async for update in call:
                last = update.voice
                if update.voice.state in (_READY, _FAILED):
                    return update.voice
        except grpc.aio.AioRpcError as exc:
            if exc.code() == grpc.StatusCode.DEADLINE_EXCEEDED:
                return None
            raise _as_domain_error(exc) from None
        finally:
            call.cancel()
        return last

    async def get_voice(self, voice_id: str) -> pb.Voice:
        try:
            response = await self._stub.GetVoice(
                pb.GetVoiceRequest(voice_id=voice_id), metadata=self._metadata(), timeout=10
            )
        except grpc.aio.AioRpcError as exc:
            raise _as_domain_error(exc) from None
        return response.voice

    async def list_voices(self, *, page_size: int, page_token: str) -> tuple[list[pb.Voice], str]:
        """One page of the caller's voices (an admin's: every voice) and the next page's
        token ("" on the last)."""
        try:
            response = await self._stub.ListVoices(
                pb.ListVoicesRequest(page_size=page_size, page_token=page_token),
                metadata=self._metadata(),
                timeout=10,
            )
        except grpc.aio.AioRpcError as exc:
            raise _as_domain_error(exc) from None
        return list(response.voices), response.next_page_token

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
        """Hold a lease on the voice for the block: renewed in the background at a third
        of its TTL, released on every exit path (success, error, cancellation).

        Blocks that overlap in time on the same voice *with the same credential* share
        one lease: the first one takes it, the last one out releases it. A lease protects
        the voice, not the call, so one is enough, and a busy voice (a batch job's items,
        a user's concurrent streams) costs no allocator round trips per call. Different
        credentials never share: each caller's right to the voice is checked by the
        allocator when it takes its own lease."""
        key = (self._credential(), voice_id)
        shared = await self._join_or_acquire(key, voice_id, deadline=deadline)
        try:
            yield shared.active
        finally:
            shared.users -= 1
            if shared.users == 0:
                if self._shared.get(key) is shared:
                    del self._shared[key]
                if shared.renewer is not None:
                    await cancel_and_wait(shared.renewer)
                await asyncio.shield(self.release(shared.active.lease_id))

    async def _join_or_acquire(
        self, key: tuple[str, str], voice_id: str, *, deadline: float
    ) -> _SharedLease:
        """Join the lease in use for ``key``; else wait (within ``deadline``) for one being
        taken right now; else take one. Only one block per key asks the allocator at a
        time, so calls arriving together still end up on one lease."""
        while True:
            shared = self._shared.get(key)
            if shared is not None:
                shared.users += 1
                return shared
            pending = self._pending.get(key)
            if pending is None:
                break
            try:
                async with asyncio.timeout(max(0.0, deadline - time.monotonic())):
                    await asyncio.shield(pending)
            except Exception:  # its taker failed or our time is up: ask for ourselves
                break
        taking: asyncio.Future[None] = asyncio.get_running_loop().create_future()
        taking.add_done_callback(lambda f: f.cancelled() or f.exception())  # never unread
        mine = self._pending.setdefault(key, taking) is taking
        try:
            active = await self.acquire(voice_id, deadline=deadline)
        except BaseException:
            if mine:
                del self._pending[key]
                taking.set_exception(errors.Unavailable("taking the lease failed"))
            raise
        shared = _SharedLease(active)
        shared.renewer = asyncio.create_task(self._keep_renewed(key, shared))
        self._shared.setdefault(key, shared)  # another block's may stand: ours stays private
        if mine:
            del self._pending[key]
            taking.set_result(None)
        return shared

    async def _keep_renewed(self, key: tuple[str, str], shared: _SharedLease) -> None:
        active = shared.active
        while True:
            await asyncio.sleep(renew_every_s(active.lease_ttl_s))
            try:
                await self.renew(active.lease_id)
            except grpc.aio.AioRpcError as exc:
                if exc.code() == grpc.StatusCode.NOT_FOUND:
                    # It lapsed (renewals late by a whole TTL): nothing left to renew, and
                    # blocks starting from now take a fresh lease instead of joining it.
                    log.warning(
                        "lease lapsed while in use", voice=active.voice_id, lease=active.lease_id
                    )
                    if self._shared.get(key) is shared:
                        del self._shared[key]
                    return
                # Anything else may pass: the next round tries again.


@dataclass(eq=False)
class _SharedLease:
    """One lease and the blocks using it."""

    active: ActiveVoice
    users: int = 1
    renewer: asyncio.Task[None] | None = None
