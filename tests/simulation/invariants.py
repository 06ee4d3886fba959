"""The promise, as pure checks over what a schedule's run observed.

The runner gathers ``Observations``: the emulator's ground truth (high-water marks, every
remote create and delete with its time), the leases the clients held (on the same
monotonic clock as the in-process emulator), how each user request ended, and, after the
system quiesced, every voice row (through the API) and every live remote voice (at the
emulator). ``check`` turns them into ``Violation``s, one per broken instance, named by
invariant:

- ``duplicates``: a voice of ours ever had two live remote copies (across generations);
- ``over_capacity``: an instant when an account held more voices than its capacity;
- ``ready_remote_missing``: after reconciliation, a READY voice whose remote copy is gone;
- ``remote_without_row``: after reconciliation, a live remote voice of ours that no voice
  row holds (deleted voice, or a row pointing at another remote id);
- ``reclaim_under_lease``: the provider deleted a voice while a client held a live lease
  on it (the user's own DeleteVoice excepted);
- ``lost_requests``: a request that ended FAILED without a reason, or vanished (its voice
  neither READY, QUEUED, FAILED nor deleted when the run gave up on it);
- ``stuck_requests``: a request, or voice, still ALLOCATING or RECLAIMING after quiescence.
"""

from __future__ import annotations

from collections.abc import Iterable, Mapping
from dataclasses import dataclass, field

INVARIANTS = (
    "duplicates",
    "over_capacity",
    "ready_remote_missing",
    "remote_without_row",
    "reclaim_under_lease",
    "lost_requests",
    "stuck_requests",
)

LEASE_MARGIN_S = 0.05
"""Slack at the edges of a lease window, for the two processes' clocks and rounding."""


@dataclass(frozen=True)
class Violation:
    invariant: str
    subject: str
    detail: str

    def __str__(self) -> str:
        return f"{self.invariant}: {self.subject}: {self.detail}"


@dataclass(frozen=True)
class LeaseWindow:
    """When a client surely held a lease: from the answer that granted it to the earlier
    of its release being sent and (request sent + TTL, moved on by renewals)."""

    voice_id: str
    lease_id: str
    remote_id: str
    """The remote copy the lease was granted on (``provider_voice_id``)."""
    start: float
    end: float


@dataclass(frozen=True)
class RemoteDelete:
    """A delete the provider carried out (from the emulator's history)."""

    voice_id: str
    remote_id: str
    at: float


@dataclass(frozen=True)
class RequestOutcome:
    """How one user request (EnsureActiveVoice until settled) ended.

    ``outcome``: ``ready`` (got a lease), ``failed`` (dead-lettered; ``reason`` from the
    voice's ``last_error``), ``queued`` (still waiting for a slot at the end),
    ``deleted`` (the voice was deleted meanwhile), ``stuck`` (ALLOCATING/RECLAIMING when
    the run gave up) or ``lost`` (anything else: no answer, an unexpected state).
    """

    request: str
    voice_id: str
    outcome: str
    reason: str = ""


@dataclass(frozen=True)
class VoiceRow:
    """A voice as the API reports it after quiescence (state is the enum's short name)."""

    voice_id: str
    state: str
    provider: str
    provider_voice_id: str
    last_error: str = ""


@dataclass(frozen=True)
class RemoteVoice:
    """A live remote voice of ours at the emulator after quiescence."""

    provider: str
    remote_id: str
    voice_id: str


@dataclass
class Observations:
    voice_peaks: Mapping[str, int] = field(default_factory=dict)
    over_capacity: Mapping[str, int] = field(default_factory=dict)
    """Account (provider name) → instants over capacity, from the emulator."""
    leases: list[LeaseWindow] = field(default_factory=list)
    remote_deletes: list[RemoteDelete] = field(default_factory=list)
    user_deletes: Mapping[str, float] = field(default_factory=dict)
    """Voice id → when the client first asked to delete it (later deletes are expected)."""
    requests: list[RequestOutcome] = field(default_factory=list)
    rows: list[VoiceRow] = field(default_factory=list)
    remote_live: list[RemoteVoice] = field(default_factory=list)


def check_duplicates(voice_peaks: Mapping[str, int]) -> list[Violation]:
    return [
        Violation("duplicates", voice, f"{peak} live remote copies at one instant")
        for voice, peak in sorted(voice_peaks.items())
        if peak > 1
    ]


def check_capacity(over_capacity: Mapping[str, int]) -> list[Violation]:
    return [
        Violation("over_capacity", account, f"{n} create(s) left it above capacity")
        for account, n in sorted(over_capacity.items())
        if n > 0
    ]


def check_agreement(rows: Iterable[VoiceRow], remote: Iterable[RemoteVoice]) -> list[Violation]:
    """Database and provider agree: every READY row's remote copy exists, and every live
    remote voice of ours is the one a row holds."""
    live = {(r.provider, r.remote_id) for r in remote}
    live_ids = {r.remote_id for r in remote}
    by_voice = {row.voice_id: row for row in rows}
    violations = [
        Violation("ready_remote_missing", row.voice_id, f"READY on {row.provider_voice_id!r}")
        for row in rows
        if row.state == "READY"
        and (row.provider, row.provider_voice_id) not in live
        and row.provider_voice_id not in live_ids
    ]
    for r in remote:
        row = by_voice.get(r.voice_id)
        if row is None:
            violations.append(
                Violation("remote_without_row", r.voice_id, f"{r.remote_id} has no row")
            )
        elif row.provider_voice_id != r.remote_id:
            violations.append(
                Violation(
                    "remote_without_row",
                    r.voice_id,
                    f"{r.remote_id} live, row {row.state} holds {row.provider_voice_id!r}",
                )
            )
    return violations


def check_leases(
    leases: Iterable[LeaseWindow],
    deletes: Iterable[RemoteDelete],
    user_deletes: Mapping[str, float],
    *,
    margin_s: float = LEASE_MARGIN_S,
) -> list[Violation]:
    """No delete of a leased remote copy inside its lease window (unless the voice's owner
    had already asked to delete the voice). Deleting some other copy of the voice (a
    duplicate being cleaned up) is not a reclaim under the lease: ``duplicates`` counts
    those."""
    by_voice: dict[str, list[LeaseWindow]] = {}
    for lease in leases:
        by_voice.setdefault(lease.voice_id, []).append(lease)
    violations = []
    for d in deletes:
        asked = user_deletes.get(d.voice_id)
        if asked is not None and asked <= d.at:
            continue
        for lease in by_voice.get(d.voice_id, ()):
            if (
                lease.remote_id == d.remote_id
                and lease.start + margin_s <= d.at < lease.end - margin_s
            ):
                violations.append(
                    Violation(
                        "reclaim_under_lease",
                        d.voice_id,
                        f"remote {d.remote_id} deleted {d.at - lease.start:.2f}s into lease "
                        f"{lease.lease_id} (held {lease.end - lease.start:.2f}s)",
                    )
                )
                break
    return violations


IN_FLIGHT_STATES = ("ALLOCATING", "RECLAIMING", "DELETING")
"""States that end by themselves: after quiescence, none is left in them."""


def check_requests(requests: Iterable[RequestOutcome], rows: Iterable[VoiceRow]) -> list[Violation]:
    """Every request ended READY, QUEUED, FAILED with a reason (or with its voice
    deleted); nothing is left in an in-flight state after quiescence."""
    violations = []
    for r in requests:
        if r.outcome == "failed" and not r.reason:
            violations.append(Violation("lost_requests", r.request, "FAILED without a reason"))
        elif r.outcome == "lost":
            violations.append(Violation("lost_requests", r.request, r.reason or "lost"))
        elif r.outcome == "stuck":
            violations.append(Violation("stuck_requests", r.request, r.reason or "stuck"))
    for row in rows:
        if row.state in IN_FLIGHT_STATES:
            violations.append(
                Violation("stuck_requests", row.voice_id, f"{row.state} after quiescence")
            )
    return violations


def check(obs: Observations) -> list[Violation]:
    """Every invariant over one run's observations."""
    return [
        *check_duplicates(obs.voice_peaks),
        *check_capacity(obs.over_capacity),
        *check_agreement(obs.rows, obs.remote_live),
        *check_leases(obs.leases, obs.remote_deletes, obs.user_deletes),
        *check_requests(obs.requests, obs.rows),
    ]
