"""Scripted faults: what the emulator does wrong, and when.

Tests script faults at run time; the HTTP layer asks ``FaultScript.decide`` once per
request and acts on the answer. Deciding is pure (a seeded ``random.Random`` makes the
random error rate reproducible); acting on it (sleeping, answering 5xx, dropping the
connection) is the routes' business.

Kinds:

- ``SERVER_ERROR``: answer ``status`` (5xx) in the provider's error shape; nothing happens.
- ``RATE_LIMITED``: answer 429 with ``Retry-After: retry_after``; nothing happens.
- ``HANG``: wait ``hang_s`` (longer than the client's timeout), then do the work and answer
  to nobody: a client that timed out may still have been charged.
- ``LOST_RESPONSE``: do the work (e.g. create the voice), then drop the connection in the
  middle of the response: the "voice created but the answer lost" case. On a stream: after
  the first chunk, ElevenLabs drops the connection; Cartesia's stream ends cleanly but
  without its ``done`` event.
- ``ERROR_AFTER_WORK``: do the work, then answer ``status`` (5xx) as if it failed: the
  other face of a lost response (a gateway error after the backend acted).
- ``STREAM_BREAK``: streaming only: send the first audio chunk, then fail (ElevenLabs: the
  connection drops; Cartesia: an SSE ``error`` event with ``status``). On a live WebSocket
  (``Op.TTS_LIVE``) of either provider the connection drops without a close handshake.

On a live WebSocket (``Op.TTS_LIVE``, decided once per socket) ``SERVER_ERROR`` and
``RATE_LIMITED`` refuse the handshake with that HTTP status, ``HANG`` holds the socket's
first audio frame back ``hang_s`` seconds (a stalled provider), and the standing
``latency_s`` delays every generation.

Besides one-shot faults there are standing settings: ``latency_s`` added to every request,
``error_rate``, the share of requests answered 5xx at random, and ``list_lag_s``: a voice
created shows in list (and search) results only that long after its creation, as in an
eventually consistent index (a GET by id sees it at once).

A "delete that fails" is ``SERVER_ERROR`` (or ``HANG``) with ``op=Op.DELETE``.
"""

from __future__ import annotations

import random
import threading
from dataclasses import dataclass, replace
from enum import StrEnum


class Op(StrEnum):
    """Operations the emulator serves, for matching faults and counting requests."""

    CLONE = "clone"
    LIST = "list"
    GET = "get"
    DELETE = "delete"
    SUBSCRIPTION = "subscription"
    TTS = "tts"
    TTS_STREAM = "tts_stream"
    TTS_LIVE = "tts_live"
    """A streaming-input WebSocket (ElevenLabs stream-input, Cartesia tts/websocket)."""


_STREAMING_OPS = frozenset({Op.TTS_STREAM, Op.TTS_LIVE})


class FaultKind(StrEnum):
    SERVER_ERROR = "server_error"
    RATE_LIMITED = "rate_limited"
    HANG = "hang"
    LOST_RESPONSE = "lost_response"
    STREAM_BREAK = "stream_break"
    ERROR_AFTER_WORK = "error_after_work"


@dataclass(frozen=True)
class Fault:
    """One scripted fault, hitting the next ``times`` requests that match."""

    kind: FaultKind
    op: Op | None = None
    """Only this operation; None: any."""
    provider: str | None = None
    """Only this provider ("elevenlabs", "cartesia"); None: either."""
    times: int = 1
    status: int = 500
    """HTTP status for SERVER_ERROR and ERROR_AFTER_WORK (and the ``status_code`` of a Cartesia stream break)."""
    retry_after: float = 1.0
    """Seconds in ``Retry-After`` for RATE_LIMITED."""
    hang_s: float = 30.0
    """How long HANG waits before doing the work."""

    def matches(self, provider: str, op: Op) -> bool:
        return (self.op is None or self.op == op) and (
            self.provider is None or self.provider == provider
        )


@dataclass(frozen=True)
class Decision:
    """What to do with one request."""

    latency_s: float = 0.0
    fault: Fault | None = None


class FaultScript:
    """Pending one-shot faults plus standing latency and random error rate.

    Tests script it from their thread while the server decides from its own, so every
    method holds a small lock; the decisions themselves are plain functions of the script.
    """

    def __init__(self, *, seed: int = 0) -> None:
        self._lock = threading.Lock()
        self.seed = seed
        self.latency_s = 0.0
        self.error_rate = 0.0
        self.error_status = 503
        self.list_lag_s = 0.0
        self._pending: list[Fault] = []
        self._rng = random.Random(seed)

    @property
    def pending(self) -> list[Fault]:
        """A copy of the faults still to hit."""
        with self._lock:
            return list(self._pending)

    def inject(self, fault: Fault) -> None:
        if fault.times < 1:
            raise ValueError("a fault must hit at least one request")
        with self._lock:
            self._pending.append(fault)

    def set_error_rate(self, rate: float, *, seed: int | None = None, status: int = 503) -> None:
        """Answer ``rate`` of the requests no scripted fault claims with ``status``; the
        draws come from ``random.Random(seed)``, so a run is reproducible."""
        if not 0.0 <= rate <= 1.0:
            raise ValueError("error rate must be in [0, 1]")
        with self._lock:
            self.error_rate = rate
            self.error_status = status
            if seed is not None:
                self.seed = seed
                self._rng = random.Random(seed)

    def set_latency(self, seconds: float) -> None:
        """Add ``seconds`` to every request (speech requests hold their slot meanwhile)."""
        if seconds < 0:
            raise ValueError("latency must be >= 0")
        with self._lock:
            self.latency_s = seconds

    def set_list_lag(self, seconds: float) -> None:
        """Voices created from now on appear in list results ``seconds`` late."""
        if seconds < 0:
            raise ValueError("list lag must be >= 0")
        with self._lock:
            self.list_lag_s = seconds

    def clear(self, *, seed: int | None = None) -> None:
        """No faults, no latency, no error rate, no list lag; the random draws start over."""
        with self._lock:
            self._pending.clear()
            self.latency_s = 0.0
            self.list_lag_s = 0.0
            self.error_rate = 0.0
            self.error_status = 503
            if seed is not None:
                self.seed = seed
            self._rng = random.Random(self.seed)

    def decide(self, provider: str, op: Op) -> Decision:
        """The fault (if any) for one request; consumes one hit of a scripted fault.

        Scripted faults come first, in the order injected, so a test gets exactly what it
        scripted; the random error rate applies only to requests no script claimed.
        """
        with self._lock:
            for index, fault in enumerate(self._pending):
                if not fault.matches(provider, op):
                    continue
                if fault.kind == FaultKind.STREAM_BREAK and op not in _STREAMING_OPS:
                    continue
                if fault.times == 1:
                    del self._pending[index]
                else:
                    self._pending[index] = replace(fault, times=fault.times - 1)
                return Decision(latency_s=self.latency_s, fault=fault)
            if self.error_rate > 0 and self._rng.random() < self.error_rate:
                fault = Fault(FaultKind.SERVER_ERROR, status=self.error_status)
                return Decision(latency_s=self.latency_s, fault=fault)
            return Decision(latency_s=self.latency_s)
