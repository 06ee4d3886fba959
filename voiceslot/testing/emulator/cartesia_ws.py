"""The emulated Cartesia WebSocket: ``/tts/websocket`` with contexts
(``providers/README.md``, "Text-in streaming over WebSocket").

Handshake: query ``api_key`` (or ``access_token``) and ``cartesia_version`` (or the
``Cartesia-Version`` header). A bad key, a missing version or a scripted fault refuse the
upgrade with the REST API's HTTP error.

Client → server: generation requests ``{model_id, transcript, voice, language, context_id,
output_format (raw), add_timestamps, continue, flush, max_buffer_delay_ms}`` and
``{context_id, cancel: true}``. A context's first request fixes every field but
``transcript``, ``continue``, ``flush`` and ``max_buffer_delay_ms``; inputs are
concatenated verbatim. ``max_buffer_delay_ms`` 0 speaks each input at once; above 0, text
up to the last sentence end is spoken at once and the rest waits that long for more (or a
flush, or the end). ``flush`` speaks what is buffered, then sends ``flush_done`` (the
context's flush counter, from 1); ``continue: false`` speaks the rest, then sends ``done``.
A context with nothing left to say expires ``CONTEXT_EXPIRY_S`` after its last audio; later
input to it is an ``error`` (``context_closed``). ``cancel`` stops a context at once, with
no further message. The socket closes after ``IDLE_CLOSE_S`` without a message.

Server → client: ``chunk`` (base64 audio, ``ws_common.FRAME_SECONDS`` each, with
``flush_id``), ``timestamps`` (``word_timestamps`` of the words that start in the chunk
just sent, in seconds from the start of the context's audio), ``flush_done``, ``done`` and
``error`` (``{type, done, title, message, error_code, status_code, request_id,
context_id}``). Every context is a ``LiveRecord`` in ``EmulatorState.live``.
"""

from __future__ import annotations

import asyncio
import base64
import json
import re
from dataclasses import dataclass
from typing import Any

from starlette.responses import PlainTextResponse
from starlette.routing import WebSocketRoute
from starlette.websockets import WebSocket, WebSocketDisconnect

from voiceslot.testing.emulator import alignment, audio
from voiceslot.testing.emulator._common import extra_headers, new_request_id
from voiceslot.testing.emulator.cartesia_api import SAMPLE_RATES, SUPPORTED_LANGUAGES
from voiceslot.testing.emulator.faults import Decision, Op
from voiceslot.testing.emulator.state import (
    CARTESIA,
    Account,
    EmulatorError,
    EmulatorState,
    RequestRecord,
    VoiceRecord,
)
from voiceslot.testing.emulator.ws_common import (
    LiveFaults,
    SocketDropped,
    deny,
    frames,
    handshake_refusal,
    render,
)
from voiceslot.waiting import cancel_and_wait, within

CONTEXT_EXPIRY_S = 1.0
IDLE_CLOSE_S = 300.0
MAX_MESSAGE_CHARS = 40_000
_LOCKED_FIELDS = ("model_id", "voice", "language", "output_format", "add_timestamps")
_VERSION = re.compile(r"^\d{4}-\d{2}-\d{2}$")
_SENTENCE_END = re.compile(r"[.!?…。！？][\"')\]]*\s*")


class ContextError(Exception):
    """An ``error`` message for one context (the socket stays open)."""

    def __init__(self, status: int, code: str, message: str) -> None:
        super().__init__(message)
        self.status, self.code, self.message = status, code, message


def error_message(context_id: str | None, status: int, code: str, message: str) -> str:
    return json.dumps(
        {
            "type": "error",
            "done": True,
            "title": code.replace("_", " ").capitalize(),
            "message": message,
            "error_code": code,
            "status_code": status,
            "request_id": new_request_id(),
            "context_id": context_id,
        }
    )


def validate_first(request: dict[str, Any]) -> tuple[str, int]:
    """(voice id, sample rate) of a context's first request; ContextError when invalid."""
    for name in ("model_id", "voice", "output_format"):
        if name not in request:
            raise ContextError(400, "invalid_request", f"{name} is required")
    voice = request["voice"]
    if not isinstance(voice, dict) or voice.get("mode") != "id" or not voice.get("id"):
        raise ContextError(400, "invalid_request", 'voice must be {"mode": "id", "id": ...}')
    fmt = request["output_format"]
    if (
        not isinstance(fmt, dict)
        or fmt.get("container") != "raw"
        or fmt.get("encoding") != "pcm_s16le"
        or fmt.get("sample_rate") not in SAMPLE_RATES
    ):
        raise ContextError(
            400, "invalid_output_format", "output_format must be raw pcm_s16le at a supported rate"
        )
    language = request.get("language")
    if language is not None and language not in SUPPORTED_LANGUAGES:
        raise ContextError(400, "invalid_request", f"unsupported language {language!r}")
    return str(voice["id"]), int(fmt["sample_rate"])


def speakable_prefix(buffer: str) -> int:
    """Length of ``buffer`` up to and including its last sentence end (0: none yet)."""
    ends = [m.end() for m in _SENTENCE_END.finditer(buffer)]
    return ends[-1] if ends else 0


@dataclass
class _Input:
    transcript: str
    more: bool
    flush: bool
    delay_s: float


class _Context:
    """One context: a worker speaking its inputs in order."""

    def __init__(
        self,
        owner: _Socket,
        ws: WebSocket,
        context_id: str,
        first: dict[str, Any],
        voice: VoiceRecord,
        account: Account,
        rate: int,
        faults: LiveFaults,
    ) -> None:
        self.owner, self.ws, self.id, self.first = owner, ws, context_id, first
        self.voice, self.account, self.rate, self.faults = voice, account, rate, faults
        self.inputs: asyncio.Queue[_Input] = asyncio.Queue()
        self.record = owner.state.live.open(CARTESIA, voice.voice_id, context_id=context_id)
        self.offset_s = 0.0
        self.flush_id = 0
        self.timestamps = bool(first.get("add_timestamps"))
        self.cancel_requested = False
        self.task = asyncio.create_task(self.run())

    async def run(self) -> None:
        state = self.owner.state
        buffer, expires_in = "", CONTEXT_EXPIRY_S
        try:
            while True:
                try:
                    async with asyncio.timeout(expires_in):
                        item = await self.inputs.get()
                except TimeoutError:
                    if buffer:  # the buffer delay ran out: speak what is there
                        await self.speak(buffer)
                        buffer, expires_in = "", CONTEXT_EXPIRY_S
                        continue
                    state.live.close(self.record, "expired", "no input after the last audio")
                    return
                buffer += item.transcript
                if item.flush or not item.more or item.delay_s <= 0:
                    cut = len(buffer)
                else:
                    cut = speakable_prefix(buffer)
                if cut:
                    await self.speak(buffer[:cut])
                    buffer = buffer[cut:]
                if item.flush:
                    self.flush_id += 1
                    state.live.update(self.record, flushes_add=1)
                    await self.send(
                        {
                            "type": "flush_done",
                            "done": False,
                            "flush_done": True,
                            "flush_id": self.flush_id,
                            "status_code": 206,
                        }
                    )
                if not item.more:
                    await self.send({"type": "done", "done": True, "status_code": 206})
                    state.live.close(self.record, "finished")
                    return
                expires_in = item.delay_s if buffer else CONTEXT_EXPIRY_S
        except SocketDropped as exc:
            state.live.close(self.record, "dropped", str(exc))
            self.owner.drop.set()
        except asyncio.CancelledError:
            if self.cancel_requested:
                state.live.close(self.record, "cancelled", "cancel received")
            else:
                state.live.close(self.record, "client_closed", "socket closed")
            raise
        except (WebSocketDisconnect, RuntimeError, OSError) as exc:
            state.live.close(self.record, "client_closed", str(exc))
        finally:
            state.end_tts(self.account)
            self.owner.finished(self)

    async def speak(self, text: str) -> None:
        if not text.strip():
            return
        state = self.owner.state
        if self.faults.latency_s > 0:
            await asyncio.sleep(self.faults.latency_s)
        state.live.update(self.record, generated_chars_add=len(text))
        samples = render(
            text, voice_key=self.voice.sample_sha256 or self.voice.voice_id, sample_rate=self.rate
        )
        words = alignment.word_spans(alignment.char_times(text, offset_s=self.offset_s))
        for frame in frames(samples, self.rate):
            await self.faults.before_frame()
            data = audio.encode(
                frame.samples, sample_rate=self.rate, container="raw", encoding="pcm_s16le"
            )
            await self.send(
                {
                    "type": "chunk",
                    "data": base64.b64encode(data).decode(),
                    "done": False,
                    "status_code": 206,
                    "step_time": 1.0,
                    "flush_id": self.flush_id,
                }
            )
            state.live.update(
                self.record, audio_frames_add=1, audio_seconds_add=frame.end_s - frame.start_s
            )
            start, end = self.offset_s + frame.start_s, self.offset_s + frame.end_s
            spoken = [w for w in words if start <= w.start_s < end]
            if self.timestamps and spoken:
                await self.send(
                    {
                        "type": "timestamps",
                        "done": False,
                        "status_code": 206,
                        "flush_id": self.flush_id,
                        "word_timestamps": alignment.cartesia_word_timestamps(spoken),
                    }
                )
            await self.faults.after_frame()
        self.offset_s += len(samples) / self.rate

    async def send(self, payload: dict[str, Any]) -> None:
        await self.ws.send_text(json.dumps({**payload, "context_id": self.id}))


class CartesiaLive:
    """The ``/tts/websocket`` route bound to one ``EmulatorState``."""

    def __init__(self, state: EmulatorState) -> None:
        self.state = state

    def routes(self) -> list[WebSocketRoute]:
        return [WebSocketRoute("/tts/websocket", self.websocket)]

    async def websocket(self, ws: WebSocket) -> None:
        query = dict(ws.query_params)
        shown = {k: v for k, v in query.items() if k not in ("api_key", "access_token")}
        record = RequestRecord(
            provider=CARTESIA,
            op=Op.TTS_LIVE,
            method="GET",
            path=ws.url.path,
            query=shown,
            headers={},
        )
        epoch = self.state.epoch
        decision = self.state.begin(CARTESIA, Op.TTS_LIVE, record)
        try:
            refusal = handshake_refusal(decision)
            if refusal is not None:
                raise refusal
            version = query.get("cartesia_version") or ws.headers.get("cartesia-version")
            if not version or not _VERSION.match(version):
                raise EmulatorError(
                    400, "invalid_request", "A valid cartesia_version (YYYY-MM-DD) is required."
                )
            key = query.get("api_key") or query.get("access_token")
            account = self.state.authenticate(CARTESIA, key, epoch=epoch)
        except EmulatorError as exc:
            headers = extra_headers(exc, new_request_id())
            await deny(ws, PlainTextResponse(exc.message, status_code=exc.status, headers=headers))
            return
        await ws.accept()
        await _Socket(self, ws, account, decision).serve()


class _Socket:
    def __init__(self, api: CartesiaLive, ws: WebSocket, account: Account, decision: Decision):
        self.state = api.state
        self.ws, self.account = ws, account
        self.faults = LiveFaults(api.state, decision)
        self.contexts: dict[str, _Context] = {}
        self.closed_ids: set[str] = set()
        self.drop = asyncio.Event()

    def finished(self, context: _Context) -> None:
        if self.contexts.get(context.id) is context:
            del self.contexts[context.id]
        self.closed_ids.add(context.id)

    async def serve(self) -> None:
        dropper = asyncio.create_task(self.drop.wait())
        try:
            while True:
                receiver = asyncio.create_task(within(IDLE_CLOSE_S, self.ws.receive_text()))
                done, _ = await asyncio.wait(
                    {receiver, dropper}, return_when=asyncio.FIRST_COMPLETED
                )
                if dropper in done:
                    receiver.cancel()
                    return  # no close handshake: the connection just drops
                try:
                    raw = receiver.result()
                except TimeoutError:
                    await self.ws.close(1000, "idle timeout")
                    return
                except (WebSocketDisconnect, RuntimeError):
                    return
                await self.handle(raw)
        finally:
            dropper.cancel()
            await cancel_and_wait(*(context.task for context in self.contexts.values()))

    async def handle(self, raw: str) -> None:
        try:
            message = json.loads(raw) if len(raw) <= MAX_MESSAGE_CHARS * 4 else None
        except ValueError:
            message = None
        if not isinstance(message, dict):
            await self.ws.send_text(
                error_message(None, 400, "invalid_request", "messages must be JSON objects")
            )
            return
        context_id = message.get("context_id")
        if not isinstance(context_id, str) or not context_id:
            await self.ws.send_text(
                error_message(None, 400, "invalid_request", "context_id is required")
            )
            return
        try:
            if message.get("cancel"):
                context = self.contexts.get(context_id)
                if context is not None:
                    context.cancel_requested = True
                    context.task.cancel()
                return
            await self.feed(context_id, message)
        except ContextError as exc:
            await self.ws.send_text(error_message(context_id, exc.status, exc.code, exc.message))

    async def feed(self, context_id: str, message: dict[str, Any]) -> None:
        transcript = message.get("transcript", "")
        if not isinstance(transcript, str):
            raise ContextError(400, "invalid_request", "transcript must be a string")
        delay_ms = message.get("max_buffer_delay_ms")
        delay_s = 3.0 if delay_ms is None else float(delay_ms) / 1000
        item = _Input(
            transcript, bool(message.get("continue")), bool(message.get("flush")), delay_s
        )
        context = self.contexts.get(context_id)
        if context is None:
            if context_id in self.closed_ids:
                raise ContextError(400, "context_closed", f"Context {context_id} has closed.")
            voice_id, rate = validate_first(message)
            try:
                voice = self.state.get_voice(self.account, voice_id)
                self.state.begin_tts(self.account)
            except EmulatorError as exc:
                raise ContextError(exc.status, exc.code, exc.message) from exc
            context = _Context(
                self, self.ws, context_id, message, voice, self.account, rate, self.faults
            )
            self.contexts[context_id] = context
        else:
            changed = [f for f in _LOCKED_FIELDS if message.get(f) != context.first.get(f)]
            if changed:
                raise ContextError(
                    400, "invalid_request", f"{changed[0]} cannot change within a context"
                )
        self.state.live.update(context.record, text_add=transcript, inputs_add=1)
        context.inputs.put_nowait(item)
