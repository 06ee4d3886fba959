"""What really happened at the provider: the emulator's ground truth for invariant checks.

voiceslot's promise ("never two remote copies of one voice, never above an account's slot
count") is about the provider's side, and only the provider sees every instant of it. The
``TruthLedger`` is fed by ``EmulatorState`` under the state's own lock on every create and
delete of a remote voice, so the numbers it keeps are exact, not sampled:

- live copies per voiceslot voice id, counted across generations (the label the adapters
  put in the voice's name is ``<label_prefix><voice id>-g<generation>``), and the most that
  were ever live at once (high-water mark);
- live voices per account and their high-water mark, and how many creates left an account
  above the capacity voiceslot was configured with (an "instant over capacity");
- every create and delete as a ``RemoteEvent`` with a monotonic timestamp, so a test in
  the same process can line deletes up against the leases it held.

Everything here is plain Python (no HTTP, no locks): ``EmulatorState`` serialises access.
"""

from __future__ import annotations

import re
import time
from collections import Counter
from dataclasses import asdict, dataclass, field
from typing import Any, Literal

DEFAULT_LABEL_PREFIX = "vs-"
_LABEL_TAIL = re.compile(r"(.+)-g(\d+)")

AccountKey = tuple[str, str]
"""(provider, api key)."""


def parse_voiceslot_label(prefix: str, name: str | None) -> tuple[str, int] | None:
    """(voice id, generation) from a remote voice's name, or None for voices not ours.

    Kept here rather than imported from the allocator: the emulator is the independent
    witness and must not share the code it checks.
    """
    if not name or not name.startswith(prefix):
        return None
    match = _LABEL_TAIL.fullmatch(name[len(prefix) :])
    return (match.group(1), int(match.group(2))) if match else None


@dataclass(frozen=True)
class RemoteEvent:
    """One remote voice created or deleted, as the provider saw it."""

    seq: int
    kind: Literal["create", "delete"]
    at: float
    """``time.monotonic()`` when the provider acted (comparable with a test's own clock)."""
    wall: float
    provider: str
    account: str
    remote_id: str
    name: str
    voice_id: str | None
    """Our voice id parsed from the label; None for voices not ours."""
    generation: int | None
    voice_live_after: int
    """Live copies of ``voice_id`` (all generations) right after this event."""
    account_live_after: int


@dataclass
class TruthLedger:
    """Exact high-water marks and the create/delete history (see the module docstring)."""

    label_prefix: str = DEFAULT_LABEL_PREFIX
    capacity: dict[AccountKey, int | None] = field(default_factory=dict)
    """Capacity voiceslot is configured with, per account; absent or None: not checked."""
    voice_live: Counter[str] = field(default_factory=Counter)
    voice_peak: Counter[str] = field(default_factory=Counter)
    account_live: Counter[AccountKey] = field(default_factory=Counter)
    account_peak: Counter[AccountKey] = field(default_factory=Counter)
    duplicate_instants: int = 0
    """Creates that left some voice of ours with more than one live copy."""
    over_capacity_instants: Counter[AccountKey] = field(default_factory=Counter)
    """Creates that left an account above its capacity."""
    events: list[RemoteEvent] = field(default_factory=list)

    def clear(self) -> None:
        """Forget the history and counters; keep the settings (prefix, capacities)."""
        self.voice_live.clear()
        self.voice_peak.clear()
        self.account_live.clear()
        self.account_peak.clear()
        self.duplicate_instants = 0
        self.over_capacity_instants.clear()
        self.events.clear()

    def rebase(self) -> None:
        """Start a new observation window over the voices live now: peaks become the
        current counts, instants over capacity and the history start from zero (a test
        reusing one emulator for several scenarios checks each on its own)."""
        self.voice_peak = Counter({v: n for v, n in self.voice_live.items() if n > 0})
        self.voice_live = +self.voice_live
        self.account_peak = Counter(self.account_live)
        self.duplicate_instants = 0
        self.over_capacity_instants.clear()
        self.events.clear()

    def set_capacity(self, provider: str, api_key: str, capacity: int | None) -> None:
        self.capacity[(provider, api_key)] = capacity

    def record(
        self,
        kind: Literal["create", "delete"],
        *,
        provider: str,
        account: str,
        remote_id: str,
        name: str,
        now: float | None = None,
    ) -> RemoteEvent:
        """Count one create or delete of an owned remote voice; returns the event."""
        key = (provider, account)
        ours = parse_voiceslot_label(self.label_prefix, name)
        step = 1 if kind == "create" else -1
        self.account_live[key] += step
        self.account_peak[key] = max(self.account_peak[key], self.account_live[key])
        if kind == "create":
            cap = self.capacity.get(key)
            if cap is not None and self.account_live[key] > cap:
                self.over_capacity_instants[key] += 1
        voice_id, generation = ours if ours else (None, None)
        if voice_id is not None:
            self.voice_live[voice_id] += step
            self.voice_peak[voice_id] = max(self.voice_peak[voice_id], self.voice_live[voice_id])
            if kind == "create" and self.voice_live[voice_id] > 1:
                self.duplicate_instants += 1
        event = RemoteEvent(
            seq=len(self.events) + 1,
            kind=kind,
            at=time.monotonic() if now is None else now,
            wall=time.time(),
            provider=provider,
            account=account,
            remote_id=remote_id,
            name=name,
            voice_id=voice_id,
            generation=generation,
            voice_live_after=self.voice_live[voice_id] if voice_id else 0,
            account_live_after=self.account_live[key],
        )
        self.events.append(event)
        return event

    # -- reading ------------------------------------------------------------------------

    def duplicated_voices(self) -> dict[str, int]:
        """Voices of ours that ever had more than one live remote copy: id → peak."""
        return {v: n for v, n in self.voice_peak.items() if n > 1}

    def capacity_ever_exceeded(self) -> bool:
        return any(self.over_capacity_instants.values())

    def snapshot(self, *, with_events: bool = True) -> dict[str, Any]:
        """JSON-ready view (the debug endpoint serves this)."""
        accounts = [
            {
                "provider": provider,
                "account": key,
                "capacity": self.capacity.get((provider, key)),
                "live": self.account_live[(provider, key)],
                "peak": self.account_peak[(provider, key)],
                "over_capacity_instants": self.over_capacity_instants[(provider, key)],
            }
            for provider, key in sorted(set(self.account_peak) | set(self.capacity))
        ]
        body: dict[str, Any] = {
            "label_prefix": self.label_prefix,
            "accounts": accounts,
            "voices": {
                v: {"live": self.voice_live[v], "peak": self.voice_peak[v]}
                for v in sorted(self.voice_peak)
            },
            "duplicate_instants": self.duplicate_instants,
            "duplicated_voices": self.duplicated_voices(),
            "capacity_ever_exceeded": self.capacity_ever_exceeded(),
            "clock": {"monotonic": time.monotonic(), "wall": time.time()},
        }
        if with_events:
            body["events"] = [asdict(e) for e in self.events]
        return body
