"""WebSocket plumbing shared by the emulated streaming-input APIs (``elevenlabs_ws``,
``cartesia_ws``): refusing a handshake with an HTTP answer, the faults a live socket can
suffer, and cutting generated audio into frames. The protocols themselves live in the two
provider modules."""

from __future__ import annotations

import asyncio
import logging
from collections.abc import Iterator
from dataclasses import dataclass

import numpy as np
from starlette.responses import Response
from starlette.websockets import WebSocket

from voiceslot.testing.emulator import audio
from voiceslot.testing.emulator._common import wait_closed_or
from voiceslot.testing.emulator.faults import Decision, FaultKind
from voiceslot.testing.emulator.state import EmulatorError, EmulatorState

FRAME_SECONDS = 0.2
"""Audio per frame sent: several frames per sentence, as the real services send."""
_GATE_POLL_S = 0.5


class SocketDropped(Exception):
    """The emulator drops the connection on purpose (no close handshake)."""


@dataclass(frozen=True)
class Frame:
    """One piece of a generation: its samples and where they sit in it, in seconds."""

    samples: np.ndarray
    start_s: float
    end_s: float


def frames(samples: np.ndarray, sample_rate: int) -> Iterator[Frame]:
    """``samples`` in ``FRAME_SECONDS`` pieces."""
    step = max(1, int(FRAME_SECONDS * sample_rate))
    for start in range(0, len(samples), step):
        piece = samples[start : start + step]
        yield Frame(piece, start / sample_rate, (start + len(piece)) / sample_rate)


def render(text: str, *, voice_key: str, sample_rate: int, seed: int = 0) -> np.ndarray:
    return audio.render_speech(text, voice_key=voice_key, sample_rate=sample_rate, seed=seed)


def handshake_refusal(decision: Decision) -> EmulatorError | None:
    """A scripted fault that refuses the socket before it opens, as an HTTP error."""
    fault = decision.fault
    if fault is None:
        return None
    if fault.kind == FaultKind.SERVER_ERROR:
        return EmulatorError(fault.status, "server_error", "Internal server error (scripted).")
    if fault.kind == FaultKind.RATE_LIMITED:
        return EmulatorError(
            429, "system_busy", "Too many requests (scripted).", retry_after=fault.retry_after
        )
    return None


class _DenialFilter(logging.Filter):
    """uvicorn logs every refused upgrade as an error; here refusing is the point."""

    def filter(self, record: logging.LogRecord) -> bool:
        return "without completing handshake" not in record.getMessage()


_DENIAL_FILTER = _DenialFilter()


async def deny(websocket: WebSocket, response: Response) -> None:
    """Answer the upgrade request with ``response`` instead of switching protocols."""
    logger = logging.getLogger("uvicorn.error")
    if _DENIAL_FILTER not in logger.filters:
        logger.addFilter(_DENIAL_FILTER)
    await websocket.send_denial_response(response)


class LiveFaults:
    """The faults of one live socket, applied around its audio frames."""

    def __init__(self, state: EmulatorState, decision: Decision) -> None:
        self._state = state
        self._decision = decision
        self._frames_sent = 0

    @property
    def latency_s(self) -> float:
        return self._decision.latency_s

    async def before_frame(self) -> None:
        """A ``HANG`` holds the socket's first frame back."""
        fault = self._decision.fault
        if self._frames_sent == 0 and fault is not None and fault.kind == FaultKind.HANG:
            await wait_closed_or(self._state, fault.hang_s)

    async def after_frame(self) -> None:
        """After the first frame: a ``STREAM_BREAK`` drops the socket; held streams
        (``EmulatorState.hold_streams``) wait here until released."""
        self._frames_sent += 1
        if self._frames_sent != 1:
            return
        fault = self._decision.fault
        if fault is not None and fault.kind == FaultKind.STREAM_BREAK:
            raise SocketDropped("scripted fault: connection dropped after the first frame")
        # Short waits in a worker thread, so a cancelled generation stops within one.
        while not await asyncio.to_thread(self._state.wait_stream_gate, _GATE_POLL_S):
            pass
