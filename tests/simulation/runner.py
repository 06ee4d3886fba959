"""Plays a ``Schedule`` on a running ``Cluster`` and gathers ``Observations``: the thin
adapter between the pure generator and checkers and the real processes.

One run of a schedule:

1. register the schedule's initial voices (through the real gRPC API, as admin on behalf
   of their owners);
2. fire every step at its offset, concurrently: user requests (EnsureActiveVoice until
   ready, hold the lease, maybe renew, release or let it expire), deletes, pins, admin
   calls, emulator faults, SIGKILLs and restarts, dropped PostgreSQL connections. Clients
   behave as real ones: a call that meets a dead replica (UNAVAILABLE) goes to another;
3. quiesce: clear the faults, wait out the hangs, restart dead replicas, let the requests
   finish, then run maintenance (expire leases, reset stuck, reconcile) until nothing is
   in flight;
4. observe: every voice row through the API, every live remote voice and the ground truth
   at the emulator (through its debug endpoint), and check the invariants;
5. clean up for the next schedule on the same cluster: force-delete the voices, reconcile,
   remove what is still left at the emulator, and start a new truth window.

Deadlines are generous for a loaded 2-core machine and every one names what it waited for.
"""

from __future__ import annotations

import asyncio
import contextlib
import json
import time
import urllib.request
from collections import Counter
from typing import Any, TypeVar

import grpc

from tests.simulation.clients import CALL_DEADLINE_S, CALL_TIMEOUT_S, Clients
from tests.simulation.cluster import Cluster
from tests.simulation.evidence import gather_evidence, state_name
from tests.simulation.invariants import (
    IN_FLIGHT_STATES,
    LeaseWindow,
    Observations,
    RemoteDelete,
    RemoteVoice,
    RequestOutcome,
    Violation,
    VoiceRow,
)
from tests.simulation.schedule import LIST_LAG_SPAN_S, Schedule, Step
from tests.support import register_requests
from voiceslot.testing.emulator import Fault, FaultKind, Op
from voiceslot.testing.samples import make_sample_wav
from voiceslot.v1 import allocator_pb2 as apb

REQUEST_GIVE_UP_S = 45.0
"""After the schedule ends, how long a user request may still take to settle."""
SETTLE_DEADLINE_S = 60.0
"""Quiescence: how long maintenance rounds may take to leave nothing in flight."""
POLL_S = 0.15
RESTART_ATTEMPTS = 3
OPERATOR_PERIOD_S = 1.0
MAINTENANCE_ROUND = ("expire_leases", "reset_stuck", "reconcile", "reclaim_idle")
BUSY = IN_FLIGHT_STATES
_TASKS = {
    "expire_leases": apb.MAINTENANCE_TASK_EXPIRE_LEASES,
    "reset_stuck": apb.MAINTENANCE_TASK_RESET_STUCK,
    "reconcile": apb.MAINTENANCE_TASK_RECONCILE,
    "reclaim_idle": apb.MAINTENANCE_TASK_RECLAIM_IDLE,
}
EMULATOR_FAULTS = {
    "hang_late_success": FaultKind.HANG,
    "lost_response": FaultKind.LOST_RESPONSE,
    "error_after_work": FaultKind.ERROR_AFTER_WORK,
    "server_error": FaultKind.SERVER_ERROR,
    "rate_limited": FaultKind.RATE_LIMITED,
    "delete_failed": FaultKind.SERVER_ERROR,
}
T = TypeVar("T")


def schedule_kind(fault: Fault) -> str:
    """The schedule's name for an emulator fault (the inverse of ``EMULATOR_FAULTS``)."""
    if fault.kind == FaultKind.SERVER_ERROR and fault.op == Op.DELETE:
        return "delete_failed"
    return next(k for k, v in EMULATOR_FAULTS.items() if v == fault.kind)


class ScheduleRun:
    """The state of one schedule being played (see the module docstring)."""

    def __init__(self, schedule: Schedule, cluster: Cluster, clients: Clients) -> None:
        self.schedule = schedule
        self.cluster = cluster
        self.clients = clients
        self.state = cluster.emulator.state
        self.sample = make_sample_wav(seconds=1.2, sample_rate=16000)
        self.voices: dict[int, asyncio.Future[str | None]] = {}
        self.leases: list[LeaseWindow] = []
        self.user_deletes: dict[str, float] = {}
        self.requests: list[RequestOutcome] = []
        self.leased_missing: list[Violation] = []
        self.injections: Counter[str] = Counter()
        self.hits: Counter[str] = Counter()
        self.shots: Counter[str] = Counter()
        """Requests the scripted emulator faults may strike (a fault's ``times``)."""
        self.outcomes: Counter[str] = Counter()
        self.give_up_at = float("inf")
        self.started_at = time.monotonic()
        self.restarts: list[asyncio.Task[None]] = []
        self.lag_resets: list[asyncio.Task[None]] = []

    # -- the voices -----------------------------------------------------------------------

    def _voice_future(self, index: int) -> asyncio.Future[str | None]:
        if index not in self.voices:
            self.voices[index] = asyncio.get_running_loop().create_future()
        return self.voices[index]

    async def voice_id(self, index: int) -> str | None:
        """The id of voice ``index`` once registered (None if registering it failed)."""
        return await asyncio.wait_for(self._voice_future(index), CALL_DEADLINE_S * 2)

    async def register(self, index: int, owner: str, provider: str, replica: int = 0) -> None:
        key = f"sim-{self.schedule.seed}-{index}-{id(self)}"
        future = self._voice_future(index)
        try:
            answer = await self.clients.call(
                "RegisterVoice",
                lambda: iter(
                    register_requests(
                        self.sample, owner=owner, provider=provider, idempotency_key=key
                    )
                ),
                replica=replica,
            )
            future.set_result(answer.voice.voice_id)
        except (grpc.aio.AioRpcError, TimeoutError) as exc:
            self.outcomes[f"register failed: {exc!s:.60}"] += 1
            future.set_result(None)

    # -- playing ----------------------------------------------------------------------------

    async def play(self) -> None:
        schedule = self.schedule
        await asyncio.gather(
            *(
                self.register(i, owner, provider, replica=i)
                for i, (owner, provider) in enumerate(schedule.initial_voices)
            )
        )
        next_voice = len(schedule.initial_voices)
        start = self.started_at = time.monotonic()
        tasks: list[asyncio.Task[None]] = []
        for step in schedule.steps:
            await asyncio.sleep(max(0.0, start + step.at - time.monotonic()))
            if step.action == "register":
                owner = schedule.users[step.voice % len(schedule.users)]
                provider = schedule.providers[step.voice % len(schedule.providers)].name
                tasks.append(asyncio.create_task(self.register(next_voice, owner, provider)))
                next_voice += 1
            else:
                tasks.append(asyncio.create_task(self.run_step(step)))
        await asyncio.sleep(max(0.0, start + schedule.duration_s - time.monotonic()))
        await self.quiesce(tasks)

    async def run_step(self, step: Step) -> None:
        try:
            await self._dispatch(step)
        except (grpc.aio.AioRpcError, TimeoutError) as exc:
            # Refusals are part of the game (FAILED_PRECONDITION on a busy voice, ...).
            name = exc.code().name if isinstance(exc, grpc.aio.AioRpcError) else "TIMEOUT"
            self.outcomes[f"{step.action} answered {name}"] += 1

    async def _dispatch(self, step: Step) -> None:
        match step.action:
            case "ensure":
                await self.request(step)
            case "delete":
                await self.delete(step)
            case "pin":
                voice = await self.voice_id(step.voice)
                if voice:
                    await self.clients.call(
                        "SetVoicePinned",
                        apb.SetVoicePinnedRequest(voice_id=voice, pinned=step.pinned),
                        replica=step.replica,
                    )
            case "reset_stuck":
                voice = await self.voice_id(step.voice)
                if voice:
                    await self.clients.call(
                        "ResetStuckAllocation",
                        apb.ResetStuckAllocationRequest(voice_id=voice),
                        replica=step.replica,
                    )
            case "reclaim":
                voice = await self.voice_id(step.voice)
                if voice:
                    await self.clients.call(
                        "ReclaimSlot", apb.ReclaimSlotRequest(voice_id=voice), replica=step.replica
                    )
            case "maintenance":
                await self.maintenance(step.tasks, replica=step.replica)
            case "kill":
                await self.kill(step)
            case "pg_drop":
                dropped = await asyncio.to_thread(self.cluster.drop_pg_connections)
                self.injections["pg_drop"] += 1
                self.outcomes[f"pg_drop terminated {min(dropped, 9)}+ connections"] += 1
            case "list_lag":
                self.state.faults.set_list_lag(step.lag_s)
                self.injections["list_lag"] += 1
                self.lag_resets.append(asyncio.create_task(self._end_lag()))
            case kind if kind in EMULATOR_FAULTS:
                self.state.faults.inject(
                    Fault(
                        EMULATOR_FAULTS[kind],
                        op=Op(step.op),
                        provider=step.provider,
                        times=step.times,
                        status=step.status,
                        retry_after=step.retry_after_s,
                        hang_s=step.hang_s,
                    )
                )
                self.injections[kind] += 1
                self.shots[kind] += step.times
            case other:
                raise ValueError(f"unknown step {other!r}")

    async def _end_lag(self) -> None:
        await asyncio.sleep(LIST_LAG_SPAN_S)
        self.state.faults.set_list_lag(0.0)

    async def kill(self, step: Step) -> None:
        replica = self.cluster.replicas[step.replica]
        if not replica.alive:
            self.outcomes["kill skipped: replica already down"] += 1
            return
        await asyncio.to_thread(replica.kill)
        self.injections["kill"] += 1

        async def restart() -> None:
            await asyncio.sleep(step.restart_after_s)
            # As a supervisor would: a start that dies (e.g. its migration connection was
            # terminated by a pg_drop step) is started again.
            for attempt in range(1, RESTART_ATTEMPTS + 1):
                replica.spawn()
                try:
                    await asyncio.to_thread(replica.wait_ready)
                    return
                except RuntimeError:
                    if attempt == RESTART_ATTEMPTS:
                        raise
                    self.outcomes["replica start died, started again"] += 1

        self.restarts.append(asyncio.create_task(restart()))

    async def maintenance(self, tasks: tuple[str, ...], *, replica: int = 0) -> Any:
        return await self.clients.call(
            "RunMaintenance",
            apb.RunMaintenanceRequest(tasks=[_TASKS[t] for t in tasks]),
            replica=replica,
        )

    async def delete(self, step: Step) -> None:
        voice = await self.voice_id(step.voice)
        if not voice:
            return
        asked = time.monotonic()
        self.user_deletes.setdefault(voice, asked)
        try:
            await self.clients.call(
                "DeleteVoice",
                apb.DeleteVoiceRequest(voice_id=voice, force=step.force),
                replica=step.replica,
            )
        except grpc.aio.AioRpcError as exc:
            # A refused delete deleted nothing: later deletes of it are not excused.
            if exc.code() == grpc.StatusCode.FAILED_PRECONDITION and (
                self.user_deletes.get(voice) == asked
            ):
                del self.user_deletes[voice]
            raise

    # -- user requests ------------------------------------------------------------------

    async def request(self, step: Step) -> None:
        voice = await self.voice_id(step.voice)
        name = f"ensure@{step.at:.2f}s:voice{step.voice}"
        if not voice:
            self.outcomes["ensure skipped: voice not registered"] += 1
            return
        try:
            outcome = await self._drive(name, voice, step)
        except (grpc.aio.AioRpcError, TimeoutError) as exc:
            # Every retry of a read failed until its deadline: the request is lost to
            # its user whatever the database says, so it is counted, not dropped.
            what = exc.code().name if isinstance(exc, grpc.aio.AioRpcError) else str(exc)
            outcome = RequestOutcome(name, voice, "lost", f"the API kept failing: {what}")
        self.requests.append(outcome)
        self.outcomes[f"request {outcome.outcome}"] += 1

    async def _drive(self, name: str, voice: str, step: Step) -> RequestOutcome:
        """EnsureActiveVoice until ready, failed, deleted or given up on."""
        ask = apb.EnsureActiveVoiceRequest(voice_id=voice, lease_holder="sim")
        ask.lease_ttl.FromMilliseconds(int(step.ttl_s * 1000))
        last = "no answer"
        while time.monotonic() < self.give_up_at:
            sent = time.monotonic()
            try:
                answer = await self.clients.call("EnsureActiveVoice", ask, replica=step.replica)
            except grpc.aio.AioRpcError as exc:
                if exc.code() == grpc.StatusCode.NOT_FOUND:
                    deleted = voice in self.user_deletes
                    return RequestOutcome(
                        name, voice, "deleted" if deleted else "lost", "NOT_FOUND, never deleted"
                    )
                if exc.code() == grpc.StatusCode.RESOURCE_EXHAUSTED:
                    last = "RESOURCE_EXHAUSTED"
                    await asyncio.sleep(0.5)
                    continue
                last = f"{exc.code().name}: {exc.details()}"
                await asyncio.sleep(POLL_S)
                continue
            except TimeoutError as exc:
                last = str(exc)
                continue
            if answer.HasField("ready"):
                await self._hold(voice, answer, sent, step)
                return RequestOutcome(name, voice, "ready")
            state = state_name(answer.voice.state)
            if state == "FAILED":
                return RequestOutcome(name, voice, "failed", answer.voice.last_error)
            last = await self._wait_while_busy(voice, step.replica)
            if last == "FAILED":
                row = await self._row(voice)
                return RequestOutcome(name, voice, "failed", row.last_error if row else "")
            if last == "DELETED":
                return RequestOutcome(name, voice, "deleted")
        if last in ("QUEUED",):
            return RequestOutcome(name, voice, "queued")
        outcome = "stuck" if last in BUSY else "lost"
        return RequestOutcome(name, voice, outcome, f"still {last} when the run gave up")

    async def _wait_while_busy(self, voice: str, replica: int) -> str:
        """Poll GetVoice while the voice is QUEUED or in flight; its state then (or when
        the request is given up on). DELETED when it no longer exists."""
        state = "QUEUED"
        while time.monotonic() < self.give_up_at:
            await asyncio.sleep(POLL_S)
            try:
                row = await self._row(voice, replica=replica)
            except grpc.aio.AioRpcError as exc:
                # A read is safe to repeat, and a client would: one INTERNAL (e.g. the
                # replica's database connection was just terminated) loses nothing yet.
                # Clients.errors counts it; only failing until give-up makes it lost.
                state = f"{exc.code().name} from GetVoice"
                continue
            if row is None:
                return "DELETED"
            state = row.state
            if state not in ("QUEUED", *BUSY):
                return state
        return state

    async def _hold(self, voice: str, answer: Any, sent: float, step: Step) -> None:
        """Hold the lease as a synthesis would, renew it once if asked, then release it
        (or let it expire); record the window during which it surely was live."""
        granted = time.monotonic()
        lease_id = answer.ready.lease.lease_id
        end = sent + step.ttl_s
        remote = answer.ready.provider_voice_id
        if not self._remote_live(remote):
            self.leased_missing.append(
                Violation(
                    "ready_remote_missing",
                    voice,
                    f"leased READY on {remote!r}, which the provider does not hold",
                )
            )
        if step.renew:
            await asyncio.sleep(step.hold_s / 2)
            renew_sent = time.monotonic()
            if renew_sent < end:  # renewing an expired lease proves nothing
                request = apb.RenewLeaseRequest(lease_id=lease_id)
                request.ttl.FromMilliseconds(int(step.ttl_s * 1000))
                try:
                    await self.clients.call("RenewLease", request, replica=step.replica)
                    end = max(end, renew_sent + step.ttl_s)
                except (grpc.aio.AioRpcError, TimeoutError):
                    self.outcomes["renew refused"] += 1
            await asyncio.sleep(step.hold_s / 2)
        else:
            await asyncio.sleep(step.hold_s)
        if step.release:
            release_sent = time.monotonic()
            end = min(end, release_sent)
            try:
                await self.clients.call(
                    "ReleaseLease", apb.ReleaseLeaseRequest(lease_id=lease_id), replica=step.replica
                )
            except (grpc.aio.AioRpcError, TimeoutError):
                self.outcomes["release refused"] += 1
        self.leases.append(LeaseWindow(voice, lease_id, remote, granted, end))

    def _remote_live(self, remote_id: str) -> bool:
        return any(v.voice_id == remote_id for v in self.state.live_voices())

    async def _row(self, voice: str, *, replica: int = 0) -> VoiceRow | None:
        try:
            answer = await self.clients.call(
                "GetVoice", apb.GetVoiceRequest(voice_id=voice), replica=replica
            )
        except grpc.aio.AioRpcError as exc:
            if exc.code() == grpc.StatusCode.NOT_FOUND:
                return None
            raise
        v = answer.voice
        return VoiceRow(
            v.voice_id, state_name(v.state), v.provider, v.provider_voice_id, v.last_error
        )

    # -- quiescence and observation -------------------------------------------------------

    async def quiesce(self, tasks: list[asyncio.Task[None]]) -> None:
        """Faults off, every replica back, requests settled, maintenance until nothing is
        in flight (see the module docstring)."""
        unhit = Counter(schedule_kind(f) for f in self.state.faults.pending for _ in range(f.times))
        self.hits = Counter({k: n - unhit[k] for k, n in self.shots.items()})
        self.state.faults.clear()
        for lag in self.lag_resets:
            lag.cancel()
        # Clones hanging at the provider finish (late) within their hang time.
        longest_hang = max((s.hang_s for s in self.schedule.steps), default=0.0)
        await asyncio.sleep(longest_hang)
        await wait_all(self.restarts, SETTLE_DEADLINE_S, "killed replicas to restart")
        self.give_up_at = time.monotonic() + REQUEST_GIVE_UP_S
        # The replicas run no maintenance loop of their own (maintenance_interval_s is
        # off), so while requests settle this plays the operator's timers: without a
        # stuck reset, a killed replica's clone would stay ALLOCATING forever.
        operator = asyncio.create_task(self.operator_timers())
        try:
            await wait_all(tasks, REQUEST_GIVE_UP_S + CALL_DEADLINE_S, "schedule steps to end")
        finally:
            operator.cancel()
            with contextlib.suppress(asyncio.CancelledError):
                await operator
        await self.settle()

    async def operator_timers(self) -> None:
        """Maintenance every ``OPERATOR_PERIOD_S``, as the operator drives it."""
        while True:
            with contextlib.suppress(grpc.aio.AioRpcError, TimeoutError):
                await self.maintenance(MAINTENANCE_ROUND)
            await asyncio.sleep(OPERATOR_PERIOD_S)

    async def settle(self) -> None:
        """Maintenance rounds until no voice is in flight (or the deadline says so)."""
        deadline = time.monotonic() + SETTLE_DEADLINE_S
        tasks = ("expire_leases", "reset_stuck", "reconcile")
        while True:
            await self.maintenance(tasks)
            rows = await self.rows()
            busy = [r for r in rows if r.state in BUSY]
            if not busy or time.monotonic() > deadline:
                break
            await asyncio.sleep(0.5)
        await self.maintenance(("reconcile",))

    async def rows(self) -> list[VoiceRow]:
        ids = [f.result() for f in self.voices.values() if f.done() and f.result()]
        found = await asyncio.gather(*(self._row(v) for v in ids if v))
        return [r for r in found if r is not None]

    def truth(self) -> dict[str, Any]:
        """The ground truth, read through the emulator's debug endpoint."""
        url = self.cluster.emulator.debug_url + "/truth"
        with urllib.request.urlopen(url, timeout=CALL_TIMEOUT_S) as response:
            return json.loads(response.read())

    async def observe(self) -> Observations:
        truth = await asyncio.to_thread(self.truth)
        ours = {f.result() for f in self.voices.values() if f.done() and f.result()}
        names = {(p.kind, p.api_key): p.name for p in self.schedule.providers}
        remote_live = [
            RemoteVoice(names.get((v.provider, v.owner or ""), v.provider), v.voice_id, voice)
            for v in self.state.live_voices()
            if (voice := parse_voice(v.name)) is not None
        ]
        return Observations(
            voice_peaks={v: d["peak"] for v, d in truth["voices"].items() if v in ours},
            over_capacity={
                names.get((a["provider"], a["account"]), a["provider"]): a["over_capacity_instants"]
                for a in truth["accounts"]
            },
            leases=self.leases,
            remote_deletes=[
                RemoteDelete(e["voice_id"], e["remote_id"], e["at"])
                for e in truth["events"]
                if e["kind"] == "delete" and e["voice_id"]
            ],
            user_deletes=self.user_deletes,
            requests=self.requests,
            rows=await self.rows(),
            remote_live=remote_live,
        )

    async def evidence(self, violations: list[Violation]) -> dict[str, list[str]]:
        return await gather_evidence(
            violations,
            schedule=self.schedule,
            clients=self.clients,
            truth=self.truth,
            started_at=self.started_at,
        )

    async def cleanup(self) -> int:
        """Leave nothing for the next schedule: delete every voice, reconcile, remove what
        the provider still holds, start a new truth window. Remote voices removed here."""
        ids = [f.result() for f in self.voices.values() if f.done() and f.result()]
        for voice in ids:
            # Already gone, or left for the reconciliation and the sweep below.
            with contextlib.suppress(grpc.aio.AioRpcError, TimeoutError):
                await self.clients.call(
                    "DeleteVoice", apb.DeleteVoiceRequest(voice_id=voice, force=True)
                )
        # A clone already sent when its voice was deleted still lands (faults are off, so
        # within the adapter's timeout); let it, so that the sweep below catches it rather
        # than the next schedule's ledger.
        await asyncio.sleep(self.schedule.adapter_timeout_s + 1.0)
        await self.maintenance(("reconcile",))
        leftover = 0
        for p in self.schedule.providers:
            for v in self.state.live_voices(p.kind, api_key=p.api_key):
                self.state.delete_as_owner(p.kind, p.api_key, v.voice_id)
                leftover += 1
        self.state.rebase_truth()
        return leftover


def parse_voice(name: str) -> str | None:
    from voiceslot.testing.emulator import parse_voiceslot_label

    parsed = parse_voiceslot_label("vs-", name)
    return parsed[0] if parsed else None


async def wait_all(tasks: list[asyncio.Task[Any]], timeout_s: float, what: str) -> None:
    """Wait for ``tasks`` up to ``timeout_s``; cancel and say what was waited for after."""
    if not tasks:
        return
    done, pending = await asyncio.wait(tasks, timeout=timeout_s)
    for task in pending:
        task.cancel()
    for task in done:
        if not task.cancelled() and (exc := task.exception()) is not None:
            raise RuntimeError(f"while waiting for {what}: {exc!r}") from exc
    if pending:
        raise TimeoutError(f"{len(pending)} of {len(tasks)} {what}: not done in {timeout_s:.0f}s")
