"""What the emulator's streaming-input (WebSocket) sessions saw and did.

A test of barge-in must show that generation stopped *at the provider*, which only the
provider can see: every ElevenLabs ``stream-input`` socket and every Cartesia context is one
``LiveRecord`` here, updated as text arrives and audio leaves, and closed with how it ended
(finished normally, cancelled by the client, dropped, expired, failed). Thread-safe (the
server runs in its own thread); ``wait_for`` lets a test wait on a condition without
polling.
"""

from __future__ import annotations

import threading
import time
from collections.abc import Callable
from dataclasses import asdict, dataclass, field
from typing import Any, Literal

Outcome = Literal["open", "finished", "cancelled", "client_closed", "dropped", "expired", "error"]
_LOG_LIMIT = 1_000


@dataclass
class LiveRecord:
    """One ElevenLabs socket or one Cartesia context."""

    seq: int
    provider: str
    voice_id: str
    context_id: str = ""
    text: str = ""
    """Every transcript fragment received, concatenated as the provider concatenates them."""
    inputs: int = 0
    generated_chars: int = 0
    """Characters whose audio generation began."""
    audio_frames: int = 0
    audio_seconds: float = 0.0
    flushes: int = 0
    outcome: Outcome = "open"
    detail: str = ""
    started_at: float = field(default_factory=time.monotonic)
    ended_at: float | None = None

    @property
    def open(self) -> bool:
        return self.outcome == "open"


class LiveLog:
    """Every live session of the emulator, oldest first (bounded)."""

    def __init__(self) -> None:
        self._changed = threading.Condition(threading.Lock())
        self._records: list[LiveRecord] = []
        self._seq = 0

    def open(self, provider: str, voice_id: str, *, context_id: str = "") -> LiveRecord:
        with self._changed:
            self._seq += 1
            record = LiveRecord(self._seq, provider, voice_id, context_id)
            self._records.append(record)
            del self._records[:-_LOG_LIMIT]
            self._changed.notify_all()
            return record

    def update(self, record: LiveRecord, **changes: Any) -> None:
        """Apply ``changes``; a name ending in ``_add`` adds to that numeric field."""
        with self._changed:
            for name, value in changes.items():
                if name.endswith("_add"):
                    name = name.removesuffix("_add")
                    setattr(record, name, getattr(record, name) + value)
                else:
                    setattr(record, name, value)
            self._changed.notify_all()

    def close(self, record: LiveRecord, outcome: Outcome, detail: str = "") -> None:
        """End a session; the first outcome sticks (a cancel is not later a drop)."""
        with self._changed:
            if record.outcome == "open":
                record.outcome = outcome
                record.detail = detail
                record.ended_at = time.monotonic()
            self._changed.notify_all()

    def records(self, provider: str | None = None) -> list[LiveRecord]:
        """Copies, so a test reads a consistent view."""
        with self._changed:
            return [
                LiveRecord(**asdict(r)) for r in self._records if provider in (None, r.provider)
            ]

    def wait_for(self, predicate: Callable[[list[LiveRecord]], bool], timeout: float) -> bool:
        """Blocking: wait until ``predicate(records)`` holds; False on timeout."""
        with self._changed:
            return self._changed.wait_for(lambda: predicate(self._records), timeout)

    def clear(self) -> None:
        with self._changed:
            self._records.clear()
            self._changed.notify_all()

    def snapshot(self, provider: str | None = None) -> list[dict[str, Any]]:
        """JSON-ready records (what ``GET /_emulator/live`` serves)."""
        return [asdict(r) for r in self.records(provider)]
