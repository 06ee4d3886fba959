"""The synthesizer's use cases: text in, audio out, in a registered voice.

Text is validated (never truncated), split into sentences, and synthesized sentence by
sentence with the engine of the voice's provider while a lease keeps the voice from
being reclaimed. Knows nothing of gRPC.
"""

from __future__ import annotations

import asyncio
import time
from collections.abc import AsyncIterator, Callable
from dataclasses import dataclass
from typing import Any, TypeVar

from synth_svc.allocator_client import ActiveVoice, AllocatorClient
from synth_svc.domain.formats import (
    LOWEST_NATIVE_RATE,
    OutputFormat,
    least_audio_seconds,
    too_large_for_one_message,
)
from voiceslot import errors, telemetry
from voiceslot.audio import StreamEncoder, encode, min_bytes_per_second, supported_rate
from voiceslot.config import SynthConfig
from voiceslot.ids import require_id
from voiceslot.logs import get_logger
from voiceslot.providers.base import (
    PcmAudio,
    Provider,
    SpeechOptions,
    SynthesisRequest,
    WordTime,
)
from voiceslot.providers.live import shifted
from voiceslot.providers.options import check_finite
from voiceslot.text import pieces_to_speak, validate_text
from voiceslot.validation import language_tag

log = get_logger(__name__)

T = TypeVar("T")

# Sentences handed to an engine at once. XTTS asserts past ~400 tokens and truncates past
# 250 characters in English; splitting here keeps every engine inside its limits.
SENTENCE_MAX_CHARS = 240


@dataclass(frozen=True)
class SpeechRequest:
    voice_id: str
    text: str
    format: OutputFormat
    language: str = ""
    seed: int | None = None
    options: SpeechOptions = SpeechOptions()
    """Speed and provider voice settings; the voice's engine refuses what it lacks."""


@dataclass(frozen=True)
class AudioChunk:
    data: bytes
    sequence: int
    sentence_index: int
    format: OutputFormat
    words: tuple[WordTime, ...] = ()
    """Words whose timing came with this chunk, from the start of the call's audio."""


class Synthesizer:
    def __init__(
        self,
        *,
        providers: dict[str, Provider],
        config: SynthConfig,
        allocator: Callable[[], AllocatorClient],
    ) -> None:
        self.providers = providers
        self.config = config
        self._allocator = allocator

    @property
    def allocator(self) -> AllocatorClient:
        return self._allocator()

    def prepare(self, request: SpeechRequest) -> list[str]:
        # Empty means the voice's own language (``_pcm``); anything else is checked with
        # the rule RegisterVoice uses before it reaches an engine or a provider's API.
        require_id("voice_id", request.voice_id, "v")  # here, before a call to the allocator
        language_tag("language", request.language, default="")
        check_finite(request.options)  # the engine's own ranges: once its lease says which
        text = validate_text(request.text, max_chars=self.config.max_text_chars)
        return pieces_to_speak(text, max_chars=SENTENCE_MAX_CHARS)

    def engine(self, active: ActiveVoice) -> Provider:
        """The engine of the voice's provider (also a live turn's, ``synth_svc.live``)."""
        try:
            return self.providers[active.provider]
        except KeyError:
            raise errors.Unavailable(
                f"this synthesizer has no engine for provider {active.provider!r}"
            ) from None

    async def _pcm(
        self, active: ActiveVoice, sentences: list[str], request: SpeechRequest
    ) -> AsyncIterator[tuple[int, PcmAudio]]:
        """The engine's audio, sentence by sentence, in order. Both the streaming and the
        unary call consume this one generator, so they produce the same samples."""
        engine = self.engine(active)
        engine.check_options(request.options)  # before any engine work
        language = request.language or active.language
        for index, sentence in enumerate(sentences):
            produced = False
            async for pcm in engine.synthesize_stream(
                SynthesisRequest(
                    active.provider_voice_id,
                    sentence,
                    language=language,
                    sample_rate_hz=request.format.sample_rate,
                    seed=request.seed,
                    options=request.options,
                )
            ):
                if pcm.pcm16:
                    produced = True
                    yield index, pcm
            if not produced:
                raise errors.Unavailable(f"the engine returned no audio for sentence {index}")

    async def stream(self, request: SpeechRequest, *, deadline: float) -> AsyncIterator[AudioChunk]:
        """Encoded audio, in order, sentence by sentence. The first chunk carries the
        container header (for WAV a streaming header) and leaves as soon as the engine's
        first audio does, not once the whole text is spoken.

        The lease is released and the encoder (for MP3/Opus a codec with a pipe and a
        reader thread) closed on every way out: the end, an engine error, or the caller
        going away (cancellation)."""
        sentences = self.prepare(request)
        started = time.perf_counter()
        async with self.allocator.leased(request.voice_id, deadline=deadline) as active:
            encoder = ChunkEncoder(request.format)
            try:
                sequence = 0
                current, sentence_start_s = -1, 0.0
                async for index, pcm in self._pcm(active, sentences, request):
                    if index != current:  # engine word times run from the sentence's start
                        current, sentence_start_s = index, encoder.audio_s
                    first = not encoder.started
                    data = await encoder.feed(pcm)
                    if first:
                        telemetry.SYNTH_FIRST_CHUNK_SECONDS.labels(active.provider).observe(
                            time.perf_counter() - started
                        )
                    words = shifted(pcm.words, sentence_start_s)
                    if data or words:
                        yield AudioChunk(data, sequence, index, encoder.format, words)
                        sequence += 1
                assert encoder.started  # _pcm raised if there was no audio at all
                if tail := await encoder.finish():
                    yield AudioChunk(tail, sequence, len(sentences) - 1, encoder.format)
            finally:
                encoder.close()
            self._observe(active.provider, "stream", started, encoder.audio_s)

    async def synthesize(
        self, request: SpeechRequest, *, deadline: float, max_bytes: int | None = None
    ) -> tuple[bytes, OutputFormat, float]:
        """The whole utterance: (encoded bytes, format, audio seconds). The lease covers
        the engine only; encoding happens after it is released.

        With ``max_bytes`` (what one answer may carry), text whose audio cannot fit is
        refused before any work, from the least audio it can make; audio that still turns
        out larger is refused once encoded. Both name the streaming call instead."""
        sentences = self.prepare(request)
        if max_bytes is not None:
            _refuse_if_too_large(
                _least_bytes(sentences, request.format), max_bytes, request.format, estimated=True
            )
        started = time.perf_counter()
        async with self.allocator.leased(request.voice_id, deadline=deadline) as active:
            pieces = [pcm async for _, pcm in self._pcm(active, sentences, request)]
        rate = pieces[0].sample_rate
        if any(p.sample_rate != rate for p in pieces):
            raise errors.Unavailable("the engine changed sample rate mid-utterance")
        fmt = request.format.resolved(rate)
        fmt = OutputFormat(fmt.encoding, supported_rate(fmt.encoding, fmt.sample_rate))
        whole = PcmAudio(b"".join(p.pcm16 for p in pieces), rate)
        # One hop to a thread for the whole file: minutes of audio are worth moving off
        # the event loop whatever the encoding.
        data = await asyncio.to_thread(encode, whole, fmt.encoding, sample_rate=fmt.sample_rate)
        if max_bytes is not None:
            _refuse_if_too_large(len(data), max_bytes, fmt, estimated=False)
        self._observe(active.provider, "unary", started, whole.duration_s)
        return data, fmt, whole.duration_s

    @staticmethod
    def _observe(provider: str, mode: str, started: float, audio_s: float) -> None:
        elapsed = time.perf_counter() - started
        telemetry.SYNTH_SECONDS.labels(provider, mode).observe(elapsed)
        if audio_s > 0:
            telemetry.SYNTH_RTF.labels(provider).observe(elapsed / audio_s)


def _least_bytes(sentences: list[str], fmt: OutputFormat) -> int:
    """The fewest bytes the audio of ``sentences`` can take in ``fmt``."""
    seconds = least_audio_seconds(sum(len(s) for s in sentences))
    rate = fmt.sample_rate or LOWEST_NATIVE_RATE
    return int(seconds * min_bytes_per_second(fmt.encoding, rate))


def _refuse_if_too_large(size: int, max_bytes: int, fmt: OutputFormat, *, estimated: bool) -> None:
    if error := too_large_for_one_message(size, max_bytes, fmt, estimated=estimated):
        raise error


# Encodings whose work per chunk is a copy (and a resample at most): cheaper inline than a
# hop to a worker thread. MP3 and Opus run a codec and go to a thread, off the event loop.
_INLINE_ENCODINGS = frozenset({"wav", "pcm16"})


async def _run(fmt: OutputFormat, fn: Callable[..., T], *args: Any, **kwargs: Any) -> T:
    """Run encoder work for ``fmt``: inline when it is cheap, else in a worker thread so
    other calls' chunks keep flowing while a codec works.

    A cancelled caller still waits for the thread's work to end before going on: the
    encoder is closed on the way out, and closing a codec that a thread is still writing
    to would corrupt it (libsndfile is not thread-safe)."""
    if fmt.encoding in _INLINE_ENCODINGS:
        return fn(*args, **kwargs)
    work = asyncio.ensure_future(asyncio.to_thread(fn, *args, **kwargs))
    try:
        return await asyncio.shield(work)
    except asyncio.CancelledError:
        await asyncio.wait([work])
        raise


def _start_and_feed(encoder: StreamEncoder, pcm: PcmAudio) -> bytes:
    return encoder.start() + encoder.feed(pcm)


class ChunkEncoder:
    """The encoding of one streamed call (``SynthesizeStream``, a live turn): one
    container for all of its audio, opened at the first audio, whose rate resolves a
    requested rate of 0. ``close()`` on every way out (for MP3/Opus a codec with a pipe
    and a reader thread)."""

    def __init__(self, requested: OutputFormat) -> None:
        self.format = requested
        """As requested until the first audio; then the format actually written."""
        self._encoder: StreamEncoder | None = None
        self._rate = 0
        self._samples = 0

    @property
    def started(self) -> bool:
        return self._encoder is not None

    @property
    def audio_s(self) -> float:
        """Seconds of audio fed so far."""
        return self._samples / self._rate if self._rate else 0.0

    async def feed(self, pcm: PcmAudio) -> bytes:
        """The encoded bytes of ``pcm`` (the container's header first, on the first call)."""
        if self._encoder is None:
            self._rate = pcm.sample_rate
            fmt = self.format.resolved(self._rate)
            self._encoder = StreamEncoder(
                fmt.encoding, input_rate=self._rate, output_rate=fmt.sample_rate
            )
            self.format = OutputFormat(fmt.encoding, self._encoder.sample_rate)
            data = await _run(self.format, _start_and_feed, self._encoder, pcm)
        else:
            if pcm.sample_rate != self._rate:
                raise errors.Unavailable("the engine changed sample rate mid-utterance")
            data = await _run(self.format, self._encoder.feed, pcm)
        self._samples += len(pcm.pcm16) // 2
        return data

    async def finish(self) -> bytes:
        """The container's last bytes; only after audio was fed."""
        assert self._encoder is not None
        return await _run(self.format, self._encoder.finish)

    def close(self) -> None:
        if self._encoder is not None:
            self._encoder.close()
