"""What ``voiceslot providers`` and ``voiceslot slots`` show: the admin RPCs'
answers (ListProviders, ListSlots) made into rows for people and records for scripts.

Both views come from one function each, so the table and ``--json`` never disagree. Times
travel as durations in seconds in JSON (``oldest_wait_s``, ``idle_s``) and as "1m05s" in
tables; an unknown add/edit budget (the proto's -1) is ``null``, never a zero that an
alert or a script would read as "none left".
"""

from __future__ import annotations

from collections.abc import Iterable
from datetime import UTC, datetime
from typing import Any

from rich.console import Console
from rich.measure import Measurement
from rich.table import Column, Table

from voiceslot.v1 import allocator_pb2 as apb
from voiceslot.v1 import common_pb2

PAGE_SIZE = 200


def _name(enum: Any, value: int, prefix: str) -> str:
    return enum.Name(value).removeprefix(prefix).lower()


def provider_view(p: apb.Provider) -> dict[str, Any]:
    return {
        "name": p.name,
        "kind": p.kind,
        "capacity": p.capacity,
        "used": p.used,
        "queued": p.queued,
        "oldest_wait_s": round(p.oldest_queued_age.ToNanoseconds() / 1e9, 3),
        "breaker": _name(apb.BreakerState, p.breaker_state, "BREAKER_STATE_"),
        "add_edit_remaining": p.add_edit_remaining if p.add_edit_remaining >= 0 else None,
    }


def _time(value: Any, present: bool) -> datetime | None:
    return value.ToDatetime(tzinfo=UTC) if present else None


def slot_view(s: apb.Slot, now: datetime) -> dict[str, Any]:
    """``idle_s``: seconds since the voice was last used, while no lease holds it (None
    while one does, or when it was never used)."""
    last_used = _time(s.last_used_at, s.HasField("last_used_at"))
    since = _time(s.state_since, s.HasField("state_since"))
    idle = (now - last_used).total_seconds() if last_used and not s.active_leases else None
    return {
        "provider": s.provider,
        "voice_id": s.voice_id,
        "owner": s.owner,
        "provider_voice_id": s.provider_voice_id,
        "state": _name(common_pb2.VoiceState, s.state, "VOICE_STATE_"),
        "pinned": s.pinned,
        "active_leases": s.active_leases,
        "lease_holder": s.lease_holder or None,
        "last_used_at": last_used.isoformat() if last_used else None,
        "idle_s": round(max(0.0, idle), 3) if idle is not None else None,
        "state_since": since.isoformat() if since else None,
    }


def list_slots(alloc: Any, md: Any, *, provider: str = "") -> list[apb.Slot]:
    """Every slot, all pages."""
    slots: list[apb.Slot] = []
    token = ""
    while True:
        resp = alloc.ListSlots(
            apb.ListSlotsRequest(provider=provider, page_size=PAGE_SIZE, page_token=token),
            metadata=md,
        )
        slots.extend(resp.slots)
        token = resp.next_page_token
        if not token:
            return slots


def ago(seconds: float | None) -> str:
    """A duration for people: "-", "42s", "3m05s", "2h07m", "3d04h"."""
    if seconds is None:
        return "-"
    s = int(seconds)
    if s < 60:
        return f"{s}s"
    if s < 3600:
        return f"{s // 60}m{s % 60:02d}s"
    if s < 86400:
        return f"{s // 3600}h{s % 3600 // 60:02d}m"
    return f"{s // 86400}d{s % 86400 // 3600:02d}h"


def providers_table(views: Iterable[dict[str, Any]]) -> Table:
    table = Table(
        Column("provider", no_wrap=True),
        "kind",
        Column("used/capacity", justify="right"),
        Column("queued", justify="right"),
        Column("oldest wait", justify="right"),
        "breaker",
        Column("add/edit left", justify="right"),
    )
    for v in views:
        breaker = v["breaker"] if v["breaker"] == "closed" else f"[bold red]{v['breaker']}[/]"
        budget = v["add_edit_remaining"]
        table.add_row(
            v["name"],
            v["kind"],
            f"{v['used']}/{v['capacity']}",
            str(v["queued"]),
            ago(v["oldest_wait_s"]) if v["queued"] else "-",
            breaker,
            "unknown" if budget is None else str(budget),
        )
    return table


def slots_table(views: Iterable[dict[str, Any]]) -> Table:
    # Ids are copied by people: they never wrap; the holder column gives way instead.
    table = Table(
        "provider",
        Column("voice id", no_wrap=True),
        "owner",
        "state",
        Column("leases", justify="right"),
        Column("holder", overflow="ellipsis", max_width=24),
        Column("idle", justify="right"),
        Column("in state", justify="right"),
    )
    now = datetime.now(UTC)
    for v in views:
        since = v["state_since"]
        in_state = (now - datetime.fromisoformat(since)).total_seconds() if since else None
        table.add_row(
            v["provider"],
            v["voice_id"] + (" (pinned)" if v["pinned"] else ""),
            v["owner"],
            v["state"],
            str(v["active_leases"]),
            v["lease_holder"] or "-",
            ago(v["idle_s"]),
            ago(in_state),
        )
    return table


def print_table(console: Console, table: Table) -> None:
    """On a terminal, fit its width (free-text columns give way); piped or redirected,
    print every column whole, so that no id is cut at rich's default of 80 columns."""
    if console.is_terminal:
        console.print(table)
        return
    unbounded = console.options.update_width(10_000)
    width = max(console.width, Measurement.get(console, unbounded, table).maximum)
    Console(file=console.file, width=width, no_color=console.no_color).print(table)
