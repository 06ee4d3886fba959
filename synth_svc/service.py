"""The synthesizer's use cases: text in, audio out, in a registered voice.

Text is validated (never truncated), split into sentences, and synthesized sentence by
sentence with the engine of the voice's provider while a lease keeps the voice from
being reclaimed. Knows nothing of gRPC.
"""

from __future__ import annotations

import time
from collections.abc import AsyncIterator, Callable
from dataclasses import dataclass

from synth_svc.allocator_client import ActiveVoice, AllocatorClient
from synth_svc.domain.formats import OutputFormat
from voiceslot import errors, telemetry
from voiceslot.audio import StreamEncoder, encode
from voiceslot.config import SynthConfig
from voiceslot.logs import get_logger
from voiceslot.providers.base import PcmAudio, Provider, SynthesisRequest
from voiceslot.text import split_sentences, validate_text

log = get_logger(__name__)

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


@dataclass(frozen=True)
class AudioChunk:
    data: bytes
    sequence: int
    sentence_index: int
    format: OutputFormat


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
        text = validate_text(request.text, max_chars=self.config.max_text_chars)
        return split_sentences(text, max_chars=SENTENCE_MAX_CHARS)

    def _engine(self, active: ActiveVoice) -> Provider:
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
        engine = self._engine(active)
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
                )
            ):
                if pcm.pcm16:
                    produced = True
                    yield index, pcm
            if not produced:
                raise errors.Unavailable(f"the engine returned no audio for sentence {index}")

    async def stream(self, request: SpeechRequest, *, deadline: float) -> AsyncIterator[AudioChunk]:
        """Encoded audio, in order, sentence by sentence. The first chunk carries the
        container header (for WAV a streaming header)."""
        sentences = self.prepare(request)
        started = time.perf_counter()
        async with self.allocator.leased(request.voice_id, deadline=deadline) as active:
            encoder: StreamEncoder | None = None
            fmt = request.format
            sequence = samples = rate = 0
            async for index, pcm in self._pcm(active, sentences, request):
                if encoder is None:
                    rate = pcm.sample_rate
                    fmt = fmt.resolved(rate)
                    encoder = StreamEncoder(
                        fmt.encoding, input_rate=rate, output_rate=fmt.sample_rate
                    )
                    data = encoder.start() + encoder.feed(pcm)
                    telemetry.SYNTH_FIRST_CHUNK_SECONDS.labels(active.provider).observe(
                        time.perf_counter() - started
                    )
                else:
                    if pcm.sample_rate != rate:
                        raise errors.Unavailable("the engine changed sample rate mid-utterance")
                    data = encoder.feed(pcm)
                samples += len(pcm.pcm16) // 2
                if data:
                    yield AudioChunk(data, sequence, index, fmt)
                    sequence += 1
            assert encoder is not None  # _pcm raised if there was no audio at all
            if tail := encoder.finish():
                yield AudioChunk(tail, sequence, len(sentences) - 1, fmt)
            self._observe(active.provider, "stream", started, samples / rate)

    async def synthesize(
        self, request: SpeechRequest, *, deadline: float
    ) -> tuple[bytes, OutputFormat, float]:
        """The whole utterance: (encoded bytes, format, audio seconds)."""
        sentences = self.prepare(request)
        started = time.perf_counter()
        async with self.allocator.leased(request.voice_id, deadline=deadline) as active:
            pieces = [pcm async for _, pcm in self._pcm(active, sentences, request)]
        rate = pieces[0].sample_rate
        if any(p.sample_rate != rate for p in pieces):
            raise errors.Unavailable("the engine changed sample rate mid-utterance")
        fmt = request.format.resolved(rate)
        whole = PcmAudio(b"".join(p.pcm16 for p in pieces), rate)
        data = encode(whole, fmt.encoding, sample_rate=fmt.sample_rate)
        self._observe(active.provider, "unary", started, whole.duration_s)
        return data, fmt, whole.duration_s

    @staticmethod
    def _observe(provider: str, mode: str, started: float, audio_s: float) -> None:
        elapsed = time.perf_counter() - started
        telemetry.SYNTH_SECONDS.labels(provider, mode).observe(elapsed)
        if audio_s > 0:
            telemetry.SYNTH_RTF.labels(provider).observe(elapsed / audio_s)
