"""The emulated ElevenLabs multi-context WebSocket:
``/v1/text-to-speech/{voice_id}/multi-stream-input``.

The handshake is ``stream-input``'s (``elevenlabs_ws.ElevenLabsLive.handshake``); this
emulator takes the key in the ``xi-api-key`` header only. Every client message names its
``context_id`` (a message without one goes to the context ``"default"``); the first
message of an id opens that context (``text`` is then usually ``" "``, with
``voice_settings`` and ``generation_config``), at most ``MAX_CONTEXTS`` at once. Then:

- ``{"text", "context_id", "flush"?}``: text buffered per context exactly as on
  ``stream-input`` (chunk schedule, flush); an empty ``text`` only keeps the context alive;
- ``{"context_id", "close_context": true}``: the context ends at once, whatever it was
  still generating (barge-in), answered by ``{"isFinal": true, "contextId"}``;
- ``{"close_socket": true}``: every context ends and the socket closes (1000).

Server frames are ``stream-input``'s with ``contextId`` added. A sixth context is refused
with ``{"message", "error": "max_active_conversations", "code": 1008}`` and a 1008 close;
no message for ``inactivity_timeout`` seconds closes the socket (1008). Every context is a
``LiveRecord`` in ``EmulatorState.live``: "finished" when it was closed with nothing left
to say, "cancelled" when closing it cut generation short.
"""

from __future__ import annotations

import asyncio
import contextlib
import json
from dataclasses import dataclass
from typing import Any

from starlette.routing import WebSocketRoute
from starlette.websockets import WebSocket, WebSocketDisconnect

from voiceslot.testing.emulator.elevenlabs_api import error_response
from voiceslot.testing.emulator.elevenlabs_ws import (
    ElevenLabsLive,
    Opened,
    Speaker,
    TextBuffer,
    final_frame,
    parse_schedule,
)
from voiceslot.testing.emulator.live_log import Outcome
from voiceslot.testing.emulator.state import ELEVENLABS, EmulatorError, EmulatorState, VoiceRecord
from voiceslot.testing.emulator.ws_common import LiveFaults, SocketDropped, deny
from voiceslot.waiting import cancel_and_wait, within

MAX_CONTEXTS = 5
DEFAULT_CONTEXT = "default"
MAX_MESSAGE_CHARS = 40_000


def error_frame(message: str, error: str, code: int = 1008) -> str:
    return json.dumps({"message": message, "error": error, "code": code})


@dataclass
class _Context:
    speaker: Speaker
    buffer: TextBuffer
    task: asyncio.Task[None]


class ElevenLabsMultiLive:
    """The ``multi-stream-input`` route bound to one ``EmulatorState``."""

    def __init__(self, state: EmulatorState) -> None:
        self.state = state
        self._single = ElevenLabsLive(state)

    def routes(self) -> list[WebSocketRoute]:
        return [WebSocketRoute("/v1/text-to-speech/{voice_id}/multi-stream-input", self.multi)]

    async def multi(self, websocket: WebSocket) -> None:
        opened = await self._single.handshake(websocket)
        if opened is None:
            return
        if opened.account is None or opened.voice is None:
            missing = EmulatorError(401, "needs_authorization", "Missing xi-api-key header.")
            await deny(websocket, error_response(missing))
            return
        await websocket.accept()
        try:
            await _MultiSocket(self.state, websocket, opened, opened.voice).serve()
        finally:
            self.state.end_tts(opened.account)


class _MultiSocket:
    def __init__(
        self, state: EmulatorState, ws: WebSocket, opened: Opened, voice: VoiceRecord
    ) -> None:
        self.state, self.ws, self.opened, self.voice = state, ws, opened, voice
        self.faults = LiveFaults(state, opened.decision)
        self.contexts: dict[str, _Context] = {}
        self.dropped = asyncio.Event()

    async def serve(self) -> None:
        try:
            while True:
                message = await self._next()
                if message is None:
                    return
                if not await self.handle(message):
                    return
        finally:
            for context_id in list(self.contexts):
                await self._end(context_id, outcome="client_closed", final=False)

    async def _next(self) -> dict[str, Any] | None:
        """The next JSON object; None when the client left, fell silent, sent garbage, or
        a context's generation dropped the connection."""
        receive = asyncio.ensure_future(within(self.opened.inactivity, self.ws.receive_text()))
        dropped = asyncio.ensure_future(self.dropped.wait())
        done, _ = await asyncio.wait({receive, dropped}, return_when=asyncio.FIRST_COMPLETED)
        dropped.cancel()
        if receive not in done:
            receive.cancel()
            return None  # no close handshake: the connection just drops
        try:
            raw = receive.result()
        except TimeoutError:
            await self.ws.close(1008, "Input timeout exceeded.")
            return None
        except (WebSocketDisconnect, RuntimeError):
            return None
        try:
            message = json.loads(raw) if len(raw) <= MAX_MESSAGE_CHARS * 4 else None
        except ValueError:
            message = None
        if not isinstance(message, dict):
            await self.ws.close(1008, "Messages must be JSON objects.")
            return None
        return message

    async def handle(self, message: dict[str, Any]) -> bool:
        """Act on one message; False when the socket is done."""
        if message.get("close_socket"):
            for context_id in list(self.contexts):
                await self._end(context_id, outcome=None, final=True)
            await self.ws.close(1000)
            return False
        context_id = str(message.get("context_id") or DEFAULT_CONTEXT)
        if message.get("close_context"):
            if context_id in self.contexts:
                await self._end(context_id, outcome=None, final=True)
            return True
        context = self.contexts.get(context_id)
        if context is None:
            context = await self._open(context_id, message)
            if context is None:
                return False
        text = message.get("text")
        flush = bool(message.get("flush"))
        if not isinstance(text, str) and not flush:
            await self.ws.send_text(error_frame("Every message needs text.", "invalid_request"))
            return True
        text = text if isinstance(text, str) else ""
        record = context.speaker.record
        self.state.live.update(record, text_add=text, inputs_add=1, flushes_add=1 if flush else 0)
        if (piece := context.buffer.add(text, flush=flush)) is not None:
            context.speaker.pieces.put_nowait(piece)
        return True

    async def _open(self, context_id: str, message: dict[str, Any]) -> _Context | None:
        if len(self.contexts) >= MAX_CONTEXTS:
            await self.ws.send_text(
                error_frame(
                    f"Maximum simultaneous contexts per WebSocket connection exceeded "
                    f"({MAX_CONTEXTS}). Please close an existing context before opening a "
                    "new one.",
                    "max_active_conversations",
                )
            )
            await self.ws.close(1008, "max_active_conversations")
            return None
        try:
            schedule = parse_schedule(message.get("generation_config"))
        except ValueError as exc:
            await self.ws.send_text(error_frame(str(exc), "invalid_request"))
            await self.ws.close(1008, str(exc)[:120])
            return None
        record = self.state.live.open(ELEVENLABS, self.voice.voice_id, context_id=context_id)
        speaker = Speaker(
            self.ws, self.state, record, self.faults, self.voice, self.opened.fmt, context_id
        )
        task = asyncio.create_task(self._generate(speaker))
        context = _Context(speaker, TextBuffer(schedule), task)
        self.contexts[context_id] = context
        return context

    async def _generate(self, speaker: Speaker) -> None:
        try:
            await speaker.generate()
        except SocketDropped as exc:
            self.state.live.close(speaker.record, "dropped", str(exc))
            self.dropped.set()
        except (WebSocketDisconnect, RuntimeError, OSError) as exc:
            self.state.live.close(speaker.record, "client_closed", str(exc))

    async def _end(self, context_id: str, *, outcome: Outcome | None, final: bool) -> None:
        """Stop a context now; its record says whether that cut anything short."""
        context = self.contexts.pop(context_id)
        speaker = context.speaker
        idle = speaker.idle and not context.buffer.text.strip()
        await cancel_and_wait(context.task)
        chosen: Outcome = outcome or ("finished" if idle else "cancelled")
        self.state.live.close(speaker.record, chosen)
        if final:
            with contextlib.suppress(WebSocketDisconnect, RuntimeError, OSError):
                await self.ws.send_text(final_frame(context_id))
