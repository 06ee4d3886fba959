"""The emulated ElevenLabs streaming-input WebSocket:
``/v1/text-to-speech/{voice_id}/stream-input`` (``providers/README.md``, "Text-in
streaming over WebSocket").

Handshake: query ``model_id``, ``output_format`` (``pcm_24000`` …), ``inactivity_timeout``
(seconds, default 20, at most 180); the key in the ``xi-api-key`` header, or as
``xi_api_key`` in the first message. A bad header key, an unknown voice, a bad output
format or a scripted fault refuse the upgrade with the REST API's HTTP error; a bad key in
the first message closes the socket with 1008.

Client → server (JSON text frames): first ``{"text": " ", "voice_settings",
"generation_config": {"chunk_length_schedule"}}``, then ``{"text": "Hello. ", "flush"?,
"try_trigger_generation"?}``, and ``{"text": ""}`` to end. Text is buffered until the
buffer reaches the schedule's next threshold (default 120, 160, 250, 290 characters), a
flush, or the end; each buffered run is one generation.

Server → client: ``{"audio": <base64>, "isFinal": null, "alignment",
"normalizedAlignment"}`` frames of ``ws_common.FRAME_SECONDS`` each, whose alignment
(``chars``, ``charStartTimesMs``, ``charsDurationsMs``) counts from the start of that frame's
audio, as the real service does; after the last audio ``{"isFinal": true}`` and a 1000
close. No text for ``inactivity_timeout`` seconds closes with 1008.

Every socket is a ``LiveRecord`` in ``EmulatorState.live``.
"""

from __future__ import annotations

import asyncio
import base64
import json
from dataclasses import dataclass
from typing import Any

from starlette.routing import WebSocketRoute
from starlette.websockets import WebSocket, WebSocketDisconnect

from voiceslot.testing.emulator import alignment, audio
from voiceslot.testing.emulator.elevenlabs_api import (
    OutputFormat,
    ValidationFailed,
    error_response,
    parse_output_format,
)
from voiceslot.testing.emulator.faults import Decision, Op
from voiceslot.testing.emulator.live_log import LiveRecord
from voiceslot.testing.emulator.state import (
    ELEVENLABS,
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
from voiceslot.waiting import cancel_and_wait

DEFAULT_SCHEDULE = (120, 160, 250, 290)
DEFAULT_INACTIVITY_S = 20.0
MAX_INACTIVITY_S = 180.0
MAX_MESSAGE_CHARS = 10_000
_END = object()


def next_threshold(schedule: tuple[int, ...], generations: int) -> int:
    """Characters to buffer before generation number ``generations`` (0-based) starts."""
    return schedule[min(generations, len(schedule) - 1)]


def parse_schedule(config: Any) -> tuple[int, ...]:
    """``generation_config.chunk_length_schedule``; ValueError outside the documented
    bounds (each 50..500)."""
    if not isinstance(config, dict) or config.get("chunk_length_schedule") is None:
        return DEFAULT_SCHEDULE
    schedule = config["chunk_length_schedule"]
    if (
        not isinstance(schedule, list)
        or not schedule
        or not all(isinstance(n, int) and 50 <= n <= 500 for n in schedule)
    ):
        raise ValueError("chunk_length_schedule must be a list of integers between 50 and 500")
    return tuple(schedule)


class TextBuffer:
    """Text received and not yet spoken; hands out a generation at a flush or when the
    chunk schedule's next threshold is reached."""

    def __init__(self, schedule: tuple[int, ...]) -> None:
        self.schedule = schedule
        self.text = ""
        self.generations = 0

    def add(self, text: str, *, flush: bool) -> str | None:
        """The run to speak now, if ``text`` (and ``flush``) completes one."""
        self.text += text
        if not self.text.strip():
            return None
        if flush or len(self.text) >= next_threshold(self.schedule, self.generations):
            self.generations += 1
            return self.rest()
        return None

    def rest(self) -> str | None:
        """Whatever is buffered (the end of the stream), or None if nothing to say."""
        piece, self.text = self.text, ""
        return piece if piece.strip() else None


def audio_frame(
    pcm: bytes, chars: list[alignment.CharTime], origin_s: float, context_id: str | None = None
) -> str:
    aligned = alignment.elevenlabs_alignment(chars, origin_s=origin_s) if chars else None
    body: dict[str, Any] = {
        "audio": base64.b64encode(pcm).decode(),
        "isFinal": None,
        "normalizedAlignment": aligned,
        "alignment": aligned,
    }
    if context_id is not None:  # multi-stream-input
        body["contextId"] = context_id
    return json.dumps(body)


def final_frame(context_id: str | None = None) -> str:
    body: dict[str, Any] = {"isFinal": True}
    if context_id is not None:
        body["contextId"] = context_id
    return json.dumps(body)


@dataclass(frozen=True)
class Opened:
    """What an accepted handshake settled."""

    decision: Decision
    fmt: OutputFormat
    inactivity: float
    account: Account | None
    """None when the key is to come in the first message."""
    voice: VoiceRecord | None
    epoch: int


class Speaker:
    """The generations of one ``stream-input`` socket (or one ``multi-stream-input``
    context, whose frames carry its ``contextId``)."""

    def __init__(
        self,
        websocket: WebSocket,
        state: EmulatorState,
        record: LiveRecord,
        faults: LiveFaults,
        voice: VoiceRecord,
        fmt: OutputFormat,
        context_id: str | None = None,
    ) -> None:
        self.ws = websocket
        self.state = state
        self.record = record
        self.faults = faults
        self.voice = voice
        self.fmt = fmt
        self.context_id = context_id
        self.pieces: asyncio.Queue[Any] = asyncio.Queue()
        self.generating = False

    @property
    def idle(self) -> bool:
        """Nothing queued and nothing being spoken."""
        return self.pieces.empty() and not self.generating

    async def generate(self) -> None:
        """Speak each buffered run as it is queued, then send ``isFinal``."""
        while (piece := await self.pieces.get()) is not _END:
            self.generating = True
            if self.faults.latency_s > 0:
                await asyncio.sleep(self.faults.latency_s)
            self.state.live.update(self.record, generated_chars_add=len(piece))
            samples = render(
                piece,
                voice_key=self.voice.sample_sha256 or self.voice.voice_id,
                sample_rate=self.fmt.sample_rate,
            )
            chars = alignment.char_times(piece)
            frame_list = list(frames(samples, self.fmt.sample_rate))
            for index, frame in enumerate(frame_list, start=1):
                await self.faults.before_frame()
                data = audio.encode(
                    frame.samples,
                    sample_rate=self.fmt.sample_rate,
                    container=self.fmt.container,
                    encoding=self.fmt.encoding,
                )
                window = alignment.in_window(chars, frame.start_s, frame.end_s)
                await self.ws.send_text(audio_frame(data, window, frame.start_s, self.context_id))
                self.state.live.update(
                    self.record,
                    audio_frames_add=1,
                    audio_seconds_add=frame.end_s - frame.start_s,
                )
                # Idle as soon as the last frame is out, not after the fault hooks.
                self.generating = index < len(frame_list)
                await self.faults.after_frame()
            self.generating = False
        await self.ws.send_text(final_frame(self.context_id))


class ElevenLabsLive:
    """The ``stream-input`` route bound to one ``EmulatorState``."""

    def __init__(self, state: EmulatorState) -> None:
        self.state = state

    def routes(self) -> list[WebSocketRoute]:
        return [WebSocketRoute("/v1/text-to-speech/{voice_id}/stream-input", self.stream_input)]

    async def stream_input(self, websocket: WebSocket) -> None:
        opened = await self.handshake(websocket)
        if opened is None:
            return
        await websocket.accept()
        try:
            await self._serve(
                websocket,
                opened.decision,
                opened.fmt,
                opened.inactivity,
                opened.account,
                opened.voice,
                opened.epoch,
            )
        finally:
            if opened.account is not None:
                self.state.end_tts(opened.account)

    async def handshake(self, websocket: WebSocket) -> Opened | None:
        """Check the upgrade request (faults, query, header key, voice, concurrency);
        None when it was refused with an HTTP answer."""
        state = self.state
        query = dict(websocket.query_params)
        record = RequestRecord(
            provider=ELEVENLABS,
            op=Op.TTS_LIVE,
            method="GET",
            path=websocket.url.path,
            query=query,
            headers={},
        )
        epoch = state.epoch
        decision = state.begin(ELEVENLABS, Op.TTS_LIVE, record)
        header_key = websocket.headers.get("xi-api-key")
        try:
            refusal = handshake_refusal(decision)
            if refusal is not None:
                raise refusal
            fmt = parse_output_format(query.get("output_format", "mp3_44100_128"))
            inactivity = float(query.get("inactivity_timeout", DEFAULT_INACTIVITY_S))
            if not 0 < inactivity <= MAX_INACTIVITY_S:
                raise ValidationFailed(
                    [
                        {
                            "loc": ["query", "inactivity_timeout"],
                            "msg": f"Input should be between 1 and {MAX_INACTIVITY_S:g}",
                            "type": "less_than_equal",
                        }
                    ]
                )
            account = voice = None
            if header_key is not None:
                account = state.authenticate(ELEVENLABS, header_key, epoch=epoch)
                voice = state.get_voice(account, websocket.path_params["voice_id"])
                state.begin_tts(account)
        except EmulatorError as exc:
            await deny(websocket, error_response(exc))
            return None
        return Opened(decision, fmt, inactivity, account, voice, epoch)

    async def _serve(
        self,
        websocket: WebSocket,
        decision: Decision,
        fmt: OutputFormat,
        inactivity: float,
        account: Account | None,
        voice: VoiceRecord | None,
        epoch: int,
    ) -> None:
        state = self.state
        voice_id = websocket.path_params["voice_id"]
        record = state.live.open(ELEVENLABS, voice_id)
        try:
            first = await self._receive(websocket, inactivity, record)
            if first is None:
                return
            try:
                schedule = parse_schedule(first.get("generation_config"))
            except ValueError as exc:
                state.live.close(record, "error", str(exc))
                await websocket.close(1008, str(exc))
                return
            if account is None:
                try:
                    account = state.authenticate(ELEVENLABS, first.get("xi_api_key"), epoch=epoch)
                    voice = state.get_voice(account, voice_id)
                    state.begin_tts(account)
                except EmulatorError as exc:
                    state.live.close(record, "error", exc.message)
                    await websocket.close(1008, exc.message[:120])
                    return
                try:
                    await self._speak(websocket, record, decision, fmt, voice, schedule, inactivity)
                finally:
                    state.end_tts(account)
            else:
                assert voice is not None
                await self._speak(websocket, record, decision, fmt, voice, schedule, inactivity)
        finally:
            state.live.close(record, "client_closed", "socket ended without isFinal")

    async def _speak(
        self,
        websocket: WebSocket,
        record: LiveRecord,
        decision: Decision,
        fmt: OutputFormat,
        voice: VoiceRecord,
        schedule: tuple[int, ...],
        inactivity: float,
    ) -> None:
        socket = Speaker(
            websocket, self.state, record, LiveFaults(self.state, decision), voice, fmt
        )
        generator = asyncio.create_task(socket.generate())
        receiver = asyncio.create_task(self._read_text(socket, schedule, inactivity))
        try:
            done, _ = await asyncio.wait({generator, receiver}, return_when=asyncio.FIRST_COMPLETED)
            if receiver in done and receiver.exception() is None and receiver.result():
                await generator  # the end was sent: finish speaking
            elif generator in done:
                generator.result()
                # A generator only ends by itself after the end message.
            else:
                return  # client gone or inactivity: stop generating now
            self.state.live.close(record, "finished")
            await websocket.close(1000)
        except SocketDropped as exc:
            self.state.live.close(record, "dropped", str(exc))
        except (WebSocketDisconnect, RuntimeError, OSError):
            pass
        finally:
            await cancel_and_wait(generator, receiver)

    async def _read_text(
        self, socket: Speaker, schedule: tuple[int, ...], inactivity: float
    ) -> bool:
        """Buffer text into generations; True once the end message arrived, False when
        the client went away or fell silent."""
        buffer = TextBuffer(schedule)
        while True:
            message = await self._receive(socket.ws, inactivity, socket.record)
            if message is None:
                return False
            text = message.get("text")
            if not isinstance(text, str):
                self.state.live.close(socket.record, "error", "text is required")
                await socket.ws.close(1008, "Every message needs a text field.")
                return False
            self.state.live.update(socket.record, text_add=text, inputs_add=1)
            if text == "":
                if (rest := buffer.rest()) is not None:
                    socket.pieces.put_nowait(rest)
                socket.pieces.put_nowait(_END)
                return True
            flush = bool(message.get("flush"))
            if flush:
                self.state.live.update(socket.record, flushes_add=1)
            if (piece := buffer.add(text, flush=flush)) is not None:
                socket.pieces.put_nowait(piece)

    async def _receive(
        self, websocket: WebSocket, inactivity: float, record: LiveRecord
    ) -> dict[str, Any] | None:
        """The next JSON message; None when the client left, fell silent (1008) or sent
        something that is not a JSON object (1008)."""
        try:
            async with asyncio.timeout(inactivity):
                raw = await websocket.receive_text()
        except TimeoutError:
            self.state.live.close(record, "expired", "inactivity timeout")
            await websocket.close(
                1008,
                f"Have not received a new text input within the timeout of {inactivity:g} "
                "seconds. Closing the WebSocket connection.",
            )
            return None
        except (WebSocketDisconnect, RuntimeError):
            self.state.live.close(record, "client_closed", "client closed the socket")
            return None
        if len(raw) > MAX_MESSAGE_CHARS * 4:
            self.state.live.close(record, "error", "message too large")
            await websocket.close(1009, "Message too large.")
            return None
        try:
            message = json.loads(raw)
        except ValueError:
            message = None
        if not isinstance(message, dict):
            self.state.live.close(record, "error", "not a JSON object")
            await websocket.close(1008, "Messages must be JSON objects.")
            return None
        return message
