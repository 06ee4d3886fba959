"""Evidence for a failing schedule: for each voice named in a violation, what the
provider did to it and what the allocator recorded, on one timeline from the schedule's
start; for an account over capacity, its creates and deletes beside the schedule's
faults. Printed with each failing seed and kept in the long mode's JSON."""

from __future__ import annotations

import asyncio
import contextlib
import time
from collections.abc import Callable
from typing import Any

import grpc

from tests.simulation.clients import Clients
from tests.simulation.invariants import Violation
from tests.simulation.schedule import Schedule
from voiceslot.v1 import allocator_pb2 as apb
from voiceslot.v1 import common_pb2

_STATE_NAMES = {v: k.removeprefix("VOICE_STATE_") for k, v in common_pb2.VoiceState.items()}


def state_name(value: int) -> str:
    return _STATE_NAMES.get(value, str(value))


async def gather_evidence(
    violations: list[Violation],
    *,
    schedule: Schedule,
    clients: Clients,
    truth: Callable[[], dict[str, Any]],
    started_at: float,
) -> dict[str, list[str]]:
    """For each voice named in a violation, the provider's creates/deletes and the
    allocator's events of it; for an account over capacity, its create/delete timeline
    beside the schedule's faults, and the histories of the voices it held at the first
    instant over. One timeline: seconds from the schedule's start."""
    voices = {v.subject for v in violations if v.subject.startswith("v_")}
    accounts = {v.subject for v in violations if v.invariant == "over_capacity"}
    if not voices and not accounts:
        return {}
    truth_now = await asyncio.to_thread(truth)
    # The allocator's timestamps are wall-clock; the emulator's events carry both.
    wall_start = time.time() - (time.monotonic() - started_at)
    found: dict[str, list[tuple[float, str]]] = {}
    for spec in schedule.providers:
        if spec.name in accounts:
            found[spec.name] = account_timeline(
                schedule, spec, truth_now["events"], wall_start, voices
            )
    for voice in voices:
        found[voice] = [
            (
                e["wall"] - wall_start,
                f"provider {e['kind']} {e['name']} ({e['remote_id']}), "
                f"{e['voice_live_after']} live after",
            )
            for e in truth_now["events"]
            if e["voice_id"] == voice
        ]
        with contextlib.suppress(grpc.aio.AioRpcError, TimeoutError):
            answer = await clients.call(
                "ListVoiceEvents", apb.ListVoiceEventsRequest(voice_id=voice, page_size=200)
            )
            for ev in answer.events:
                reason = common_pb2.EventReason.Name(ev.reason).removeprefix("EVENT_REASON_")
                found[voice].append(
                    (
                        ev.occurred_at.seconds + ev.occurred_at.nanos / 1e9 - wall_start,
                        f"allocator {reason} {state_name(ev.from_state)}->"
                        f"{state_name(ev.to_state)} {ev.message}".rstrip(),
                    )
                )
    return {v: [f"t{t:+7.2f}s {line}" for t, line in sorted(lines)] for v, lines in found.items()}


def account_timeline(
    schedule: Schedule,
    spec: Any,
    events: list[dict[str, Any]],
    wall_start: float,
    voices: set[str],
) -> list[tuple[float, str]]:
    """An account's creates/deletes with its live count, the schedule's faults beside
    them; adds to ``voices`` the voices it held at its first instant over capacity."""
    lines: list[tuple[float, str]] = [
        (s.at, f"step {s.describe().split(' ', 1)[1]}")
        for s in schedule.steps
        if s.action not in ("ensure", "register", "pin")
    ]
    live: dict[str, str] = {}
    over_seen = False
    for e in events:
        if (e["provider"], e["account"]) != (spec.kind, spec.api_key):
            continue
        if e["kind"] == "create":
            live[e["remote_id"]] = e["voice_id"] or e["name"]
        else:
            live.pop(e["remote_id"], None)
        over = e["account_live_after"] > spec.capacity
        if over and not over_seen:
            over_seen = True
            voices.update(v for v in live.values() if v.startswith("v_"))
        lines.append(
            (
                e["wall"] - wall_start,
                f"provider {e['kind']} {e['name']}: {e['account_live_after']}/"
                f"{spec.capacity} live{'  <-- OVER' if over else ''}",
            )
        )
    return lines
