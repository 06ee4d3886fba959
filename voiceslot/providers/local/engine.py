"""The local engine as a provider: Coqui XTTS v2 on our own CPU/GPU.

What "cloning" and "slots" mean here:

- **clone** computes the voice's XTTS conditioning latents from the sample (on an engine
  worker), stores them through the storage port at ``local-voices/<label>.pth`` and
  returns the label as ``provider_voice_id``. Stored latents survive restarts and are
  shared by replicas over the same storage, so a voice is never cloned twice.
- **find_by_label / list_voices / delete / capacity** are storage operations on that
  prefix; ``capacity`` is ``config.capacity`` (or ``max_hot_voices``) against the count.
- **synthesize / synthesize_stream** run on the worker pool (``pool``): one model per
  worker, a bounded queue in front, results handed back to the event loop in order. The
  voice's latents come from an in-memory LRU (``max_hot_voices``), else from storage.
- The model (``model_cache``) loads lazily on first use, or at construction with
  ``preload``; a load that overruns ``load_timeout_s`` fails the waiting request with
  ``Transient`` instead of hanging it.

Only XTTS can clone. Any other Coqui model loads, but every voice operation fails with
``InvalidInput`` (see ``models.UncloneableModel``).

Sizing: each worker holds a full model copy (2-4 GB of GPU memory for XTTS v2), which
bounds ``workers`` on a GPU. On a CPU every generation already spreads over all cores
(torch's intra-op threads), so extra workers mostly contend; measure before raising it.

Audio comes back as 16-bit PCM at the model's own rate (24 kHz for XTTS);
``SynthesisRequest.sample_rate_hz`` is left to ``voiceslot.audio`` to honour. A seed makes
a generation repeatable (see ``models.seed_generation`` for the limit with several workers).
"""

from __future__ import annotations

import asyncio
import logging
import time
from collections.abc import AsyncIterator, Callable, Iterator
from typing import TypeVar

import torch

from voiceslot.config import ProviderConfig
from voiceslot.errors import NotFound
from voiceslot.providers.base import (
    Capacity,
    CloneRequest,
    PcmAudio,
    RemoteVoice,
    SpeechOptions,
    SynthesisRequest,
)
from voiceslot.providers.errors import (
    Fatal,
    InvalidInput,
    ProviderError,
    Transient,
    VoiceNotFound,
)
from voiceslot.providers.local.latents import (
    VOICE_PREFIX,
    LatentsCache,
    VoiceLatents,
    label_of_key,
    latents_from_bytes,
    latents_to_bytes,
    voice_key,
)
from voiceslot.providers.local.loading import ModelLoader, choose_device, coqui_loader
from voiceslot.providers.local.model_cache import ModelCache
from voiceslot.providers.local.models import EngineModel, seed_generation
from voiceslot.providers.local.pcm import decode_sample, float_to_pcm16
from voiceslot.providers.local.pool import EnginePool
from voiceslot.providers.options import OptionRules, check_against
from voiceslot.storage.base import Storage

logger = logging.getLogger(__name__)

T = TypeVar("T")

DEFAULT_STREAM_CHUNK_TOKENS = 20
"""GPT tokens per streamed chunk: one token is about 46 ms, so about 0.9 s of audio."""
DEFAULT_MAX_TEXT_CHARS = 1000
"""Text longer than this is refused before it takes a queue place; the exact limit (XTTS's
text-token assert) is checked on the worker with the model's own tokenizer."""


OPTION_RULES = OptionRules("local", ranges={"speed": (0.5, 2.0)})
"""XTTS takes a speaking rate (its ``speed``, a length scale on the generated latents);
the providers' voice settings have no counterpart here."""


def speed_arguments(options: SpeechOptions) -> dict[str, float]:
    """``speed=`` for the model when the caller set one; the model's default otherwise."""
    return {} if options.speed is None else {"speed": options.speed}


def classify_engine_error(error: BaseException, *, provider: str) -> BaseException:
    """Translate what a Coqui/torch call raised into the provider error taxonomy."""
    if isinstance(error, ProviderError):
        if not error.provider:
            error.provider = provider
        return error
    if isinstance(error, torch.OutOfMemoryError):
        return Transient(f"the local engine ran out of memory: {error}", provider=provider)
    if isinstance(error, AssertionError):
        # XTTS guards its inputs (text length, language) with asserts.
        return InvalidInput(f"the local engine rejected the request: {error}", provider=provider)
    if isinstance(error, Exception):
        return Fatal(f"the local engine failed: {type(error).__name__}: {error}", provider=provider)
    return error


def check_text(text: str, *, max_chars: int) -> None:
    if not text.strip():
        raise InvalidInput("text is empty")
    if len(text) > max_chars:
        raise InvalidInput(
            f"text is {len(text)} characters; the local engine takes at most {max_chars} per "
            "request: split it into sentences"
        )


class LocalProvider:
    """A ``base.Provider`` over a local Coqui engine (kind "local")."""

    kind = "local"

    def __init__(
        self,
        config: ProviderConfig,
        *,
        storage: Storage,
        loader: ModelLoader | None = None,
        stream_chunk_tokens: int = DEFAULT_STREAM_CHUNK_TOKENS,
        max_text_chars: int = DEFAULT_MAX_TEXT_CHARS,
    ) -> None:
        """``loader`` replaces the Coqui loader (tests inject slow or spying ones); it is
        called once per worker, on a loader thread, and must return a fresh model."""
        if config.kind != "local":
            raise ValueError(f"LocalProvider serves kind 'local', not {config.kind!r}")
        if stream_chunk_tokens < 1:
            raise ValueError("stream_chunk_tokens must be at least 1")
        self.name = config.name
        self.config = config
        self.device = choose_device(config.device)
        self.stream_chunk_tokens = stream_chunk_tokens
        self.max_text_chars = max_text_chars
        self._storage = storage
        self._models: ModelCache[EngineModel] = ModelCache(
            loader or coqui_loader(config, device=self.device),
            slots=config.workers,
            load_timeout_s=config.load_timeout_s,
            name=config.name,
        )
        self._pool: EnginePool[EngineModel] = EnginePool(
            self._models.get, workers=config.workers, queue_size=config.queue_size, name=config.name
        )
        self._voices = LatentsCache(config.max_hot_voices)
        if config.preload:
            self._models.preload()

    # --- voices -------------------------------------------------------------------

    async def clone(self, request: CloneRequest) -> RemoteVoice:
        key = voice_key(request.label)
        audio, rate = await asyncio.to_thread(decode_sample, request.sample)

        def job(model: EngineModel) -> tuple[VoiceLatents, bytes]:
            voice = model.clone(audio, rate)
            return voice, latents_to_bytes(voice, label=request.label, model=model.kind)

        voice, data = await self._pool.run(self._guarded(job))
        try:
            await self._storage.put(key, data)
        except OSError as exc:
            raise Transient(f"could not store the cloned voice: {exc}", provider=self.name) from exc
        self._voices.put(request.label, voice)
        return _remote(request.label)

    async def find_by_label(self, label: str) -> RemoteVoice | None:
        try:
            key = voice_key(label)
        except InvalidInput:
            return None  # a label that cannot be stored was never stored
        return _remote(label) if await self._storage.exists(key) else None

    async def exists(self, provider_voice_id: str) -> bool:
        return await self.find_by_label(provider_voice_id) is not None  # id and label are one

    async def delete(self, provider_voice_id: str) -> None:
        key = voice_key(provider_voice_id)
        self._voices.evict(provider_voice_id)
        if not await self._storage.exists(key):
            raise VoiceNotFound(f"no local voice {provider_voice_id!r}", provider=self.name)
        await self._storage.delete(key)
        self._voices.evict(provider_voice_id)  # a synthesis may have cached it meanwhile

    async def list_voices(self, *, label_prefix: str = "") -> AsyncIterator[RemoteVoice]:
        async for stored in self._storage.list(VOICE_PREFIX + label_prefix):
            label = label_of_key(stored.key)
            if label is not None:
                yield _remote(label)

    async def capacity(self) -> Capacity:
        used = 0
        async for _ in self.list_voices():
            used += 1
        return Capacity(limit=self.config.capacity or self.config.max_hot_voices, used=used)

    # --- speech -------------------------------------------------------------------

    async def synthesize(self, request: SynthesisRequest) -> PcmAudio:
        check_text(request.text, max_chars=self.max_text_chars)
        voice = await self._voice(request.provider_voice_id)

        def job(model: EngineModel) -> PcmAudio:
            seed_generation(request.seed)
            began = time.perf_counter()
            wav = model.synthesize(
                request.text,
                language=request.language,
                voice=voice,
                **speed_arguments(request.options),
            )
            audio = PcmAudio(float_to_pcm16(wav), model.sample_rate)
            _log_speed(audio, time.perf_counter() - began)
            return audio

        return await self._pool.run(self._guarded(job))

    async def synthesize_stream(self, request: SynthesisRequest) -> AsyncIterator[PcmAudio]:
        check_text(request.text, max_chars=self.max_text_chars)
        voice = await self._voice(request.provider_voice_id)
        chunk_tokens = self.stream_chunk_tokens
        provider = self.name

        def job(model: EngineModel) -> Iterator[PcmAudio]:
            try:
                seed_generation(request.seed)
                chunks = model.stream(
                    request.text,
                    language=request.language,
                    voice=voice,
                    chunk_tokens=chunk_tokens,
                    **speed_arguments(request.options),
                )
                for chunk in chunks:
                    if chunk.size:
                        yield PcmAudio(float_to_pcm16(chunk), model.sample_rate)
            except GeneratorExit:
                raise  # the consumer left; the pool is closing us
            except BaseException as exc:
                classified = classify_engine_error(exc, provider=provider)
                if classified is exc:
                    raise
                raise classified from exc

        async for audio in self._pool.stream(job):
            yield audio

    def check_options(self, options: SpeechOptions) -> None:
        check_against(options, OPTION_RULES)

    # --- lifecycle ----------------------------------------------------------------

    async def warm_up(self) -> None:
        """Load every worker's model now and wait for them (within the load timeout);
        for start-up and readiness checks. Not part of ``base.Provider``."""
        await self._models.wait_ready()

    async def aclose(self) -> None:
        await self._pool.aclose()
        self._models.unload()
        self._voices.clear()
        if self.device.startswith("cuda"):
            torch.cuda.empty_cache()

    # --- helpers ------------------------------------------------------------------

    async def _voice(self, label: str) -> VoiceLatents:
        voice = self._voices.get(label)
        if voice is not None:
            return voice
        key = voice_key(label)
        try:
            data = await self._storage.get(key)
        except NotFound:
            raise VoiceNotFound(f"no local voice {label!r}", provider=self.name) from None
        voice = await asyncio.to_thread(latents_from_bytes, data)
        self._voices.put(label, voice)
        return voice

    def _guarded(self, job: Callable[[EngineModel], T]) -> Callable[[EngineModel], T]:
        """``job`` with its errors translated into the taxonomy, on the worker thread."""
        provider = self.name

        def guarded(model: EngineModel) -> T:
            try:
                return job(model)
            except BaseException as exc:
                classified = classify_engine_error(exc, provider=provider)
                if classified is exc:
                    raise
                raise classified from exc

        return guarded


def _remote(label: str) -> RemoteVoice:
    return RemoteVoice(provider_voice_id=label, label=label, name=label)


def _log_speed(audio: PcmAudio, elapsed_s: float) -> None:
    if audio.duration_s > 0:
        logger.debug(
            "synthesized %.2f s of audio in %.2f s (real-time factor %.2f)",
            audio.duration_s,
            elapsed_s,
            elapsed_s / audio.duration_s,
        )
