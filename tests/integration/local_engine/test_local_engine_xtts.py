"""The local provider end to end over a tiny random-weight XTTS loaded by the real loaders.

Random weights give noise, not speech: these tests assert sample rate, length,
non-silence, chunk order, determinism and timing, never intelligibility.
"""

from __future__ import annotations

import asyncio
import json
import threading
import time
from collections.abc import Callable
from pathlib import Path
from typing import Any

import numpy as np
import pytest

from voiceslot.providers.base import CloneRequest, PcmAudio, Provider, SynthesisRequest
from voiceslot.providers.errors import Fatal, InvalidInput, Transient, VoiceNotFound
from voiceslot.providers.local import LocalProvider
from voiceslot.providers.local.latents import latents_from_bytes, voice_key
from voiceslot.providers.local.loading import TOS_ENV, load_model_dir
from voiceslot.providers.local.models import seed_generation
from voiceslot.providers.local.pcm import float_to_pcm16
from voiceslot.storage.local import LocalStorage

from .conftest import STREAM_CHUNK_TOKENS, SpyModel

XTTS_RATE = 24000
TEXT = "Hello there, this is a test."


def samples_of(audio: PcmAudio) -> np.ndarray:
    assert len(audio.pcm16) % 2 == 0
    return np.frombuffer(audio.pcm16, dtype="<i2")


def max_samples(model_dir: Path) -> int:
    """The longest audio the tiny model can make: XTTS generates at most
    ``gpt_max_audio_tokens - 3`` codes of ``gpt_code_stride_len`` samples at 22.05 kHz,
    decoded to 24 kHz."""
    args = json.loads((model_dir / "config.json").read_text())["model_args"]
    codes = args["gpt_max_audio_tokens"] - 3
    return int(codes * args["gpt_code_stride_len"] * XTTS_RATE / 22050) + 1024


async def clone(provider: LocalProvider, label: str, sample: bytes) -> str:
    voice = await provider.clone(CloneRequest(label=label, sample=sample))
    return voice.provider_voice_id


def request(voice_id: str, *, text: str = TEXT, seed: int | None = 7) -> SynthesisRequest:
    return SynthesisRequest(provider_voice_id=voice_id, text=text, seed=seed)


async def test_a_cloned_voice_speaks_whole_sentences_at_24khz(
    make_provider: Callable[..., LocalProvider],
    storage: LocalStorage,
    sample_wav: bytes,
    tiny_xtts_dir: Path,
) -> None:
    provider = make_provider()
    assert isinstance(provider, Provider) and provider.kind == "local"

    voice_id = await clone(provider, "vs-alice-g1", sample_wav)
    assert voice_id == "vs-alice-g1"
    assert await storage.exists("local-voices/vs-alice-g1.pth")

    audio = await provider.synthesize(request(voice_id))
    samples = samples_of(audio)
    assert audio.sample_rate == XTTS_RATE
    assert 0.1 * XTTS_RATE < samples.size <= max_samples(tiny_xtts_dir)
    assert audio.duration_s == pytest.approx(samples.size / XTTS_RATE)
    rms = float(np.sqrt(np.mean(samples.astype(np.float64) ** 2)))
    assert rms > 30 and samples.std() > 0  # sound, not silence or a constant


async def test_a_seed_makes_synthesis_repeatable(
    make_provider: Callable[..., LocalProvider], sample_wav: bytes
) -> None:
    provider = make_provider()
    voice_id = await clone(provider, "vs-seed-g1", sample_wav)
    first = await provider.synthesize(request(voice_id, seed=11))
    again = await provider.synthesize(request(voice_id, seed=11))
    other = await provider.synthesize(request(voice_id, seed=12))
    assert first.pcm16 == again.pcm16
    assert other.pcm16 != first.pcm16


async def test_streamed_chunks_arrive_in_the_order_the_model_made_them(
    make_provider: Callable[..., LocalProvider],
    storage: LocalStorage,
    sample_wav: bytes,
    tiny_xtts_dir: Path,
) -> None:
    provider = make_provider()
    voice_id = await clone(provider, "vs-stream-g1", sample_wav)
    chunks = [chunk async for chunk in provider.synthesize_stream(request(voice_id, seed=3))]

    assert len(chunks) >= 2
    assert all(chunk.sample_rate == XTTS_RATE and chunk.pcm16 for chunk in chunks)
    total = sum(len(chunk.pcm16) // 2 for chunk in chunks)
    assert 0.1 * XTTS_RATE < total <= max_samples(tiny_xtts_dir)

    # The same generation straight from a separately loaded model, outside the pool.
    voice = latents_from_bytes(await storage.get(voice_key(voice_id)))

    def reference() -> list[bytes]:
        model = load_model_dir(tiny_xtts_dir, device="cpu")
        seed_generation(3)
        stream = model.stream(TEXT, language="en", voice=voice, chunk_tokens=STREAM_CHUNK_TOKENS)
        return [float_to_pcm16(chunk) for chunk in stream]

    assert [chunk.pcm16 for chunk in chunks] == await asyncio.to_thread(reference)


async def test_a_pool_of_one_serves_concurrent_requests_one_after_another(
    make_provider: Callable[..., LocalProvider],
    spy_loader: tuple[Callable[[], SpyModel], list[SpyModel]],
    sample_wav: bytes,
) -> None:
    loader, spies = spy_loader
    provider = make_provider(loader=loader, workers=1)
    voice_id = await clone(provider, "vs-pool-g1", sample_wav)
    first = request(voice_id, text="The first request.", seed=1)
    second = request(voice_id, text="And the second one.", seed=2)

    alone = [await provider.synthesize(first), await provider.synthesize(second)]
    (spy,) = spies
    spy.spans.clear()
    together = await asyncio.gather(provider.synthesize(first), provider.synthesize(second))

    assert [a.pcm16 for a in together] == [a.pcm16 for a in alone]  # neither corrupted
    assert len(spy.spans) == 2
    earlier, later = sorted(spy.spans, key=lambda span: span.started)
    assert earlier.ended <= later.started  # they did not overlap
    assert earlier.thread == later.thread == "local-engine-0"


async def test_a_model_load_past_its_timeout_fails_clearly_instead_of_hanging(
    make_provider: Callable[..., LocalProvider], sample_wav: bytes, tiny_xtts_dir: Path
) -> None:
    release = threading.Event()

    def slow_loader() -> SpyModel:
        release.wait(60)
        return SpyModel(load_model_dir(tiny_xtts_dir, device="cpu"))

    provider = make_provider(loader=slow_loader, load_timeout_s=0.3)
    began = time.perf_counter()
    try:
        with pytest.raises(Transient) as late:
            await clone(provider, "vs-slow-g1", sample_wav)
        with pytest.raises(Transient):
            await provider.warm_up()
    finally:
        release.set()
    assert late.value.message == "model load did not finish within 0.3 s"
    assert late.value.retryable and late.value.provider == "local"
    assert time.perf_counter() - began < 10


async def test_stored_latents_serve_a_new_provider_without_cloning_again(
    make_provider: Callable[..., LocalProvider],
    spy_loader: tuple[Callable[[], SpyModel], list[SpyModel]],
    storage: LocalStorage,
    sample_wav: bytes,
) -> None:
    first = make_provider()
    voice_id = await clone(first, "vs-keep-g1", sample_wav)
    spoken = await first.synthesize(request(voice_id, seed=5))
    await first.aclose()

    loader, spies = spy_loader
    restarted = make_provider(storage=storage, loader=loader)
    found = await restarted.find_by_label("vs-keep-g1")
    assert found is not None and found.provider_voice_id == voice_id
    again = await restarted.synthesize(request(voice_id, seed=5))
    assert again.pcm16 == spoken.pcm16
    (spy,) = spies
    assert spy.clones == 0 and [span.text for span in spy.spans] == [TEXT]


async def test_voices_are_listed_counted_and_deleted(
    make_provider: Callable[..., LocalProvider], storage: LocalStorage, sample_wav: bytes
) -> None:
    provider = make_provider(max_hot_voices=5)
    with pytest.raises(VoiceNotFound):
        await provider.delete("vs-never-g1")

    await clone(provider, "vs-one-g1", sample_wav)
    await clone(provider, "other-two-g1", sample_wav)
    await storage.put("local-voices/README.txt", b"not a voice")
    listed = [voice.label async for voice in provider.list_voices()]
    assert sorted(listed) == ["other-two-g1", "vs-one-g1"]
    assert [voice.label async for voice in provider.list_voices(label_prefix="vs-")] == [
        "vs-one-g1"
    ]
    capacity = await provider.capacity()
    assert (capacity.limit, capacity.used) == (5, 2)
    capped = make_provider(max_hot_voices=5, capacity=3)
    assert (await capped.capacity()).limit == 3

    await provider.synthesize(request("vs-one-g1"))  # now hot in memory
    await provider.delete("vs-one-g1")
    assert await provider.find_by_label("vs-one-g1") is None
    with pytest.raises(VoiceNotFound):
        await provider.synthesize(request("vs-one-g1"))
    with pytest.raises(VoiceNotFound):
        await provider.delete("vs-one-g1")
    assert (await provider.capacity()).used == 1


async def test_bad_input_is_invalid_input_not_an_engine_failure(
    make_provider: Callable[..., LocalProvider], sample_wav: bytes, tiny_xtts_dir: Path
) -> None:
    def load_with_a_low_token_limit() -> Any:
        # XTTS asserts past gpt_max_text_tokens. A sentence past its language's character
        # limit is spoken in pieces, so reach the token limit within one piece: lower it.
        model = load_model_dir(tiny_xtts_dir, device="cpu")
        model.model.args.gpt_max_text_tokens = 40
        return model

    provider = make_provider(loader=load_with_a_low_token_limit)
    voice_id = await clone(provider, "vs-input-g1", sample_wav)
    # One token per character in the tiny vocabulary: past the 40-token limit, yet under
    # the character limit, so the model's own tokenizer must catch it.
    with pytest.raises(InvalidInput, match="tokens"):
        await provider.synthesize(request(voice_id, text="word " * 20))
    with pytest.raises(InvalidInput, match="not supported"):
        await provider.synthesize(SynthesisRequest(voice_id, "Bonjour.", language="fr"))
    with pytest.raises(InvalidInput, match="empty"):
        await provider.synthesize(request(voice_id, text="  "))
    with pytest.raises(InvalidInput, match="tokens"):
        async for _ in provider.synthesize_stream(request(voice_id, text="word " * 20)):
            pass
    with pytest.raises(InvalidInput, match="not readable audio"):
        await clone(provider, "vs-noise-g1", b"not audio at all")
    with pytest.raises(InvalidInput):
        await clone(provider, "bad/label", sample_wav)
    # The engine still serves after all of that.
    assert (await provider.synthesize(request(voice_id))).pcm16


async def test_leaving_a_stream_early_frees_the_only_worker(
    make_provider: Callable[..., LocalProvider], sample_wav: bytes
) -> None:
    provider = make_provider(workers=1)
    voice_id = await clone(provider, "vs-leave-g1", sample_wav)
    stream = provider.synthesize_stream(request(voice_id))
    async for _first in stream:
        break
    await stream.aclose()
    audio = await asyncio.wait_for(provider.synthesize(request(voice_id)), 60)
    assert audio.sample_rate == XTTS_RATE and audio.pcm16


async def test_a_model_that_cannot_clone_says_so(
    make_provider: Callable[..., LocalProvider], tiny_vits_dir: Path, sample_wav: bytes
) -> None:
    provider = make_provider(model_dir=tiny_vits_dir)
    with pytest.raises(InvalidInput, match=r"\(vits\) cannot clone a voice"):
        await clone(provider, "vs-vits-g1", sample_wav)


async def test_without_a_model_dir_the_licence_must_be_agreed_first(
    make_provider: Callable[..., LocalProvider],
    sample_wav: bytes,
    tmp_path: Path,
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    monkeypatch.delenv(TOS_ENV, raising=False)
    monkeypatch.setenv("TTS_HOME", str(tmp_path / "coqui-home"))  # no agreement on file there
    provider = make_provider(model_dir=None)
    with pytest.raises(Fatal, match=f"{TOS_ENV}=1") as refused:
        await clone(provider, "vs-tos-g1", sample_wav)
    assert "Coqui Public Model License" in refused.value.message
