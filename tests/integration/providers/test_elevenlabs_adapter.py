"""ElevenLabsProvider against the loopback emulator over real HTTP: every operation, and
every error of providers/README.md mapped into the taxonomy."""

from __future__ import annotations

import asyncio
import json
import socket
import time
from collections.abc import Awaitable, Callable

import httpx
import pytest

from voiceslot.providers.base import CloneRequest, PcmAudio, Provider, SynthesisRequest
from voiceslot.providers.elevenlabs import ElevenLabsProvider
from voiceslot.providers.errors import (
    AddEditBudgetSpent,
    AuthError,
    CapacityFull,
    InvalidInput,
    RateLimited,
    Transient,
    VoiceNotFound,
)
from voiceslot.testing.emulator import (
    DEFAULT_ELEVENLABS_KEY,
    ELEVENLABS,
    Account,
    Fault,
    FaultKind,
    Op,
    ProviderEmulator,
)
from voiceslot.testing.emulator.audio import speech_seconds

Sample = Callable[[int], bytes]
WaitUntil = Callable[..., Awaitable[None]]


async def clone(provider: Provider, sample: Sample, label: str, seed: int = 0) -> str:
    voice = await provider.clone(CloneRequest(label=label, sample=sample(seed)))
    return voice.provider_voice_id


# -- voices ------------------------------------------------------------------------------


async def test_clone_stores_label_in_name_and_labels(
    eleven: Provider, emu: ProviderEmulator, sample: Sample
) -> None:
    voice = await eleven.clone(
        CloneRequest(label="vs-alpha-g1", sample=sample(1), description="alpha's voice")
    )

    assert voice.label == "vs-alpha-g1"
    [created] = emu.state.created_voices(ELEVENLABS)
    assert created.voice_id == voice.provider_voice_id
    assert created.name == "vs-alpha-g1"
    assert created.labels == {"voiceslot_label": "vs-alpha-g1"}
    assert created.description == "alpha's voice"
    [request] = emu.state.requests(ELEVENLABS, Op.CLONE)
    assert json.loads(request.form["labels"]) == {"voiceslot_label": "vs-alpha-g1"}


async def test_find_by_label_matches_exactly_not_by_substring(
    eleven: Provider, sample: Sample
) -> None:
    g1 = await clone(eleven, sample, "vs-beta-g1", 1)
    g10 = await clone(eleven, sample, "vs-beta-g10", 2)

    found_g1 = await eleven.find_by_label("vs-beta-g1")
    found_g10 = await eleven.find_by_label("vs-beta-g10")

    assert found_g1 is not None and found_g1.provider_voice_id == g1
    assert found_g10 is not None and found_g10.provider_voice_id == g10
    assert await eleven.find_by_label("vs-beta-g") is None
    assert await eleven.find_by_label("vs-gamma-g1") is None


async def test_find_by_label_searches_every_page(
    eleven: Provider, emu: ProviderEmulator, sample: Sample
) -> None:
    # The search for "vs-page-g1" also matches g10..g12, created first: the exact match
    # is on the last of four one-voice pages.
    for i in (10, 11, 12):
        await clone(eleven, sample, f"vs-page-g{i}", i)
    target = await clone(eleven, sample, "vs-page-g1", 1)
    emu.state.set_page_size_cap(1)
    before = emu.state.request_count(ELEVENLABS, Op.LIST)

    found = await eleven.find_by_label("vs-page-g1")

    assert found is not None and found.provider_voice_id == target
    assert emu.state.request_count(ELEVENLABS, Op.LIST) - before == 4


async def test_list_voices_walks_all_pages_and_skips_premade(
    eleven: Provider, emu: ProviderEmulator, sample: Sample
) -> None:
    ours = {await clone(eleven, sample, f"vs-list-g{i}", i) for i in range(5)}
    emu.state.set_page_size_cap(2)
    before = emu.state.request_count(ELEVENLABS, Op.LIST)

    listed = [v async for v in eleven.list_voices()]

    assert {v.provider_voice_id for v in listed} == ours
    assert len(listed) == 5
    assert emu.state.request_count(ELEVENLABS, Op.LIST) - before == 3  # 2 + 2 + 1
    queries = [r.query for r in emu.state.requests(ELEVENLABS, Op.LIST)]
    assert all(q["page_size"] == "100" for q in queries)
    assert any("next_page_token" in q for q in queries)


async def test_list_voices_filters_by_label_prefix(eleven: Provider, sample: Sample) -> None:
    keep = await clone(eleven, sample, "vs-keep-g1", 1)
    await clone(eleven, sample, "other-g1", 2)

    listed = [v async for v in eleven.list_voices(label_prefix="vs-")]

    assert [v.provider_voice_id for v in listed] == [keep]


async def test_delete_removes_the_voice_and_twice_is_not_found(
    eleven: Provider, emu: ProviderEmulator, sample: Sample
) -> None:
    emu.state.faults.set_list_lag(30.0)  # asked by id, a copy is seen whatever lists say
    voice_id = await clone(eleven, sample, "vs-del-g1")
    assert await eleven.find_by_label("vs-del-g1") is None
    assert await eleven.exists(voice_id)

    await eleven.delete(voice_id)

    assert not await eleven.exists(voice_id)

    assert emu.state.live_voices(ELEVENLABS) == []
    assert await eleven.find_by_label("vs-del-g1") is None
    with pytest.raises(VoiceNotFound) as err:
        await eleven.delete(voice_id)
    assert err.value.status_code == 404
    assert not err.value.retryable


async def test_capacity_reads_slots_and_add_edit_budget(
    eleven: Provider, emu: ProviderEmulator, sample: Sample
) -> None:
    emu.state.configure_account(
        ELEVENLABS, DEFAULT_ELEVENLABS_KEY, voice_limit=4, max_voice_add_edits=6
    )
    first = await clone(eleven, sample, "vs-cap-g1", 1)
    await clone(eleven, sample, "vs-cap-g2", 2)
    await eleven.delete(first)

    capacity = await eleven.capacity()

    assert capacity.limit == 4
    assert capacity.used == 1
    assert capacity.add_edit_remaining == 4  # deleting did not give the clone back


async def test_configured_capacity_only_lowers_the_provider_limit(
    make_provider: Callable[..., Provider],
) -> None:
    lower = make_provider("elevenlabs", capacity=7)
    higher = make_provider("elevenlabs", name="el-higher", capacity=500)

    assert (await lower.capacity()).limit == 7
    assert (await higher.capacity()).limit == 30  # the Creator plan's real limit


# -- speech ------------------------------------------------------------------------------


@pytest.mark.parametrize(
    ("asked", "served"), [(0, 24000), (16000, 16000), (22000, 22050), (48000, 44100), (8000, 16000)]
)
async def test_synthesize_asks_for_the_nearest_pcm_rate(
    eleven: Provider, emu: ProviderEmulator, sample: Sample, asked: int, served: int
) -> None:
    voice_id = await clone(eleven, sample, "vs-rate-g1")
    text = "The quick brown fox jumps over the lazy dog."

    audio = await eleven.synthesize(
        SynthesisRequest(provider_voice_id=voice_id, text=text, sample_rate_hz=asked)
    )

    assert audio.sample_rate == served
    assert emu.state.requests(ELEVENLABS, Op.TTS)[-1].query["output_format"] == f"pcm_{served}"
    assert audio.duration_s == pytest.approx(speech_seconds(text), abs=0.01)
    assert any(audio.pcm16[i] for i in range(0, len(audio.pcm16), 97))  # not silence


async def test_different_voices_sound_different(eleven: Provider, sample: Sample) -> None:
    a = await clone(eleven, sample, "vs-va-g1", 1)
    b = await clone(eleven, sample, "vs-vb-g1", 2)
    text = "Same words, two voices."

    audio_a = await eleven.synthesize(SynthesisRequest(provider_voice_id=a, text=text))
    audio_b = await eleven.synthesize(SynthesisRequest(provider_voice_id=b, text=text))

    assert len(audio_a.pcm16) == len(audio_b.pcm16)
    assert audio_a.pcm16 != audio_b.pcm16


async def test_stream_yields_whole_samples_in_order(eleven: Provider, sample: Sample) -> None:
    voice_id = await clone(eleven, sample, "vs-stream-g1")
    request = SynthesisRequest(
        provider_voice_id=voice_id, text="Streaming keeps every sample in order. " * 3
    )

    whole = await eleven.synthesize(request)
    chunks = [chunk async for chunk in eleven.synthesize_stream(request)]

    assert len(chunks) > 3
    assert all(len(c.pcm16) % 2 == 0 and c.sample_rate == whole.sample_rate for c in chunks)
    assert b"".join(c.pcm16 for c in chunks) == whole.pcm16


async def test_stream_delivers_chunks_as_they_arrive(
    eleven: Provider, emu: ProviderEmulator, sample: Sample
) -> None:
    voice_id = await clone(eleven, sample, "vs-live-g1")
    request = SynthesisRequest(provider_voice_id=voice_id, text="Hold the line, please. " * 4)
    emu.state.hold_streams()
    stream = eleven.synthesize_stream(request)

    try:
        first = await asyncio.wait_for(anext(stream), timeout=5)
        # The server is still holding the rest of the stream, so this chunk came early.
        assert emu.state.account(ELEVENLABS, DEFAULT_ELEVENLABS_KEY).in_flight == 1
    finally:
        emu.state.release_streams()
    rest = [chunk async for chunk in stream]

    whole = await eleven.synthesize(request)
    assert first.pcm16 + b"".join(c.pcm16 for c in rest) == whole.pcm16


async def test_text_over_the_model_cap_is_rejected_before_sending(
    eleven: Provider, emu: ProviderEmulator
) -> None:
    with pytest.raises(InvalidInput):
        await eleven.synthesize(SynthesisRequest(provider_voice_id="any", text="x" * 10_001))
    assert emu.state.request_count(ELEVENLABS, Op.TTS) == 0


# -- errors from providers/README.md -----------------------------------------------------


async def test_voice_limit_reached_is_capacity_full(
    eleven: Provider, emu: ProviderEmulator, sample: Sample
) -> None:
    emu.state.configure_account(ELEVENLABS, DEFAULT_ELEVENLABS_KEY, voice_limit=1)
    await clone(eleven, sample, "vs-full-g1", 1)

    with pytest.raises(CapacityFull) as err:
        await clone(eleven, sample, "vs-full-g2", 2)

    assert err.value.status_code == 400
    assert err.value.retryable
    assert "1 / 1" in err.value.message


async def test_add_edit_budget_spent_survives_deletes(
    eleven: Provider, emu: ProviderEmulator, sample: Sample
) -> None:
    emu.state.configure_account(ELEVENLABS, DEFAULT_ELEVENLABS_KEY, max_voice_add_edits=1)
    await eleven.delete(await clone(eleven, sample, "vs-budget-g1", 1))

    with pytest.raises(AddEditBudgetSpent) as err:
        await clone(eleven, sample, "vs-budget-g2", 2)

    assert not err.value.retryable
    assert emu.state.live_voices(ELEVENLABS) == []


async def test_same_file_twice_is_invalid_input(
    eleven: Provider, emu: ProviderEmulator, sample: Sample
) -> None:
    emu.state.configure_account(ELEVENLABS, DEFAULT_ELEVENLABS_KEY, reject_duplicate_samples=True)
    await clone(eleven, sample, "vs-dup-g1", 5)

    with pytest.raises(InvalidInput, match="cannot upload the same file twice"):
        await clone(eleven, sample, "vs-dup-g2", 5)


@pytest.mark.parametrize("operation", ["clone", "find", "list", "capacity", "synthesize", "delete"])
async def test_invalid_api_key_is_auth_error(
    make_provider: Callable[..., Provider], sample: Sample, operation: str
) -> None:
    provider = make_provider("elevenlabs", api_key="not-a-key")
    calls = {
        "clone": lambda: provider.clone(CloneRequest(label="vs-x-g1", sample=sample(0))),
        "find": lambda: provider.find_by_label("vs-x-g1"),
        "list": lambda: anext(provider.list_voices()),
        "capacity": provider.capacity,
        "synthesize": lambda: provider.synthesize(
            SynthesisRequest(provider_voice_id="v", text="hi")
        ),
        "delete": lambda: provider.delete("v"),
    }

    with pytest.raises(AuthError, match="invalid_api_key") as err:
        await calls[operation]()

    assert err.value.status_code == 401


async def test_quota_exceeded_is_auth_error(
    eleven: Provider, emu: ProviderEmulator, sample: Sample
) -> None:
    voice_id = await clone(eleven, sample, "vs-quota-g1")
    emu.state.configure_account(ELEVENLABS, DEFAULT_ELEVENLABS_KEY, character_limit=20)
    await eleven.synthesize(SynthesisRequest(provider_voice_id=voice_id, text="fifteen chars!!"))

    with pytest.raises(AuthError, match="quota_exceeded"):
        await eleven.synthesize(
            SynthesisRequest(provider_voice_id=voice_id, text="fifteen more!!!")
        )


async def test_plan_without_instant_cloning_is_auth_error(
    eleven: Provider, emu: ProviderEmulator, sample: Sample
) -> None:
    emu.state.configure_account(ELEVENLABS, DEFAULT_ELEVENLABS_KEY, can_clone=False)

    with pytest.raises(AuthError, match="can_not_use_instant_voice_cloning") as err:
        await clone(eleven, sample, "vs-nope-g1")

    assert err.value.status_code == 403


async def test_unknown_voice_is_voice_not_found_for_speech(eleven: Provider) -> None:
    request = SynthesisRequest(provider_voice_id="doesnotexist00000000", text="hello")

    with pytest.raises(VoiceNotFound):
        await eleven.synthesize(request)
    with pytest.raises(VoiceNotFound):
        await anext(eleven.synthesize_stream(request))


async def test_too_many_concurrent_requests_is_rate_limited_with_retry_after(
    eleven: Provider, emu: ProviderEmulator, sample: Sample, wait_until: WaitUntil
) -> None:
    voice_id = await clone(eleven, sample, "vs-busy-g1")
    emu.state.configure_account(
        ELEVENLABS, DEFAULT_ELEVENLABS_KEY, max_concurrency=1, concurrency_retry_after=3
    )
    emu.state.hold_streams()
    request = SynthesisRequest(provider_voice_id=voice_id, text="occupying the only slot " * 3)
    holder = eleven.synthesize_stream(request)
    try:
        await anext(holder)
        await wait_until(lambda s: s.account(ELEVENLABS, DEFAULT_ELEVENLABS_KEY).in_flight == 1)

        with pytest.raises(RateLimited, match="too_many_concurrent_requests") as err:
            await eleven.synthesize(SynthesisRequest(provider_voice_id=voice_id, text="me too"))
    finally:
        emu.state.release_streams()
        await holder.aclose()

    assert err.value.retry_after == 3
    assert err.value.status_code == 429


@pytest.mark.parametrize("operation", [Op.CLONE, Op.LIST, Op.TTS, Op.SUBSCRIPTION])
async def test_system_busy_is_rate_limited_with_its_delay(
    eleven: Provider, emu: ProviderEmulator, sample: Sample, operation: Op
) -> None:
    voice_id = await clone(eleven, sample, "vs-429-g1")
    emu.state.faults.inject(Fault(FaultKind.RATE_LIMITED, op=operation, retry_after=7))
    calls = {
        Op.CLONE: lambda: eleven.clone(CloneRequest(label="vs-429-g2", sample=sample(2))),
        Op.LIST: lambda: eleven.find_by_label("vs-429-g1"),
        Op.TTS: lambda: eleven.synthesize(SynthesisRequest(provider_voice_id=voice_id, text="hi")),
        Op.SUBSCRIPTION: eleven.capacity,
    }

    with pytest.raises(RateLimited, match="system_busy") as err:
        await calls[operation]()

    assert err.value.retry_after == 7
    assert emu.state.created_labels()["vs-429-g2"] == 0


async def test_validation_error_422_is_invalid_input(eleven: Provider, sample: Sample) -> None:
    with pytest.raises(InvalidInput, match="body.name") as err:
        await eleven.clone(CloneRequest(label="", sample=sample(0)))
    assert err.value.status_code == 422


@pytest.mark.parametrize("status", [500, 502, 503])
async def test_server_errors_are_transient_and_clone_is_not_retried(
    eleven: Provider, emu: ProviderEmulator, sample: Sample, status: int
) -> None:
    emu.state.faults.inject(Fault(FaultKind.SERVER_ERROR, op=Op.CLONE, status=status))

    with pytest.raises(Transient) as err:
        await clone(eleven, sample, "vs-5xx-g1")

    assert err.value.status_code == status
    assert emu.state.request_count(ELEVENLABS, Op.CLONE) == 1
    assert emu.state.created_voices() == []


async def test_hang_past_the_timeout_is_transient(
    make_provider: Callable[..., Provider], emu: ProviderEmulator
) -> None:
    provider = make_provider("elevenlabs", timeout_s=0.2)
    emu.state.faults.inject(Fault(FaultKind.HANG, op=Op.SUBSCRIPTION, hang_s=1.0))
    started = time.monotonic()

    with pytest.raises(Transient, match="timed out"):
        await provider.capacity()

    assert time.monotonic() - started < 0.9


async def test_added_latency_delays_but_succeeds(eleven: Provider, emu: ProviderEmulator) -> None:
    emu.state.faults.set_latency(0.25)
    started = time.monotonic()

    await eleven.capacity()

    assert time.monotonic() - started >= 0.25


async def test_connection_refused_is_transient(make_provider: Callable[..., Provider]) -> None:
    with socket.socket() as probe:  # a port nobody listens on
        probe.bind(("127.0.0.1", 0))
        port = probe.getsockname()[1]
    provider = make_provider("elevenlabs", base_url=f"http://127.0.0.1:{port}")

    with pytest.raises(Transient):
        await provider.capacity()


async def test_stream_broken_midway_is_transient_after_the_audio_so_far(
    eleven: Provider, emu: ProviderEmulator, sample: Sample
) -> None:
    voice_id = await clone(eleven, sample, "vs-break-g1")
    emu.state.faults.inject(Fault(FaultKind.STREAM_BREAK))
    received: list[PcmAudio] = []

    with pytest.raises(Transient):
        async for chunk in eleven.synthesize_stream(
            SynthesisRequest(provider_voice_id=voice_id, text="This stream will break. " * 4)
        ):
            received.append(chunk)

    assert received and sum(len(c.pcm16) for c in received) % 2 == 0


async def test_random_server_errors_are_all_transient(
    eleven: Provider, emu: ProviderEmulator
) -> None:
    emu.state.faults.set_error_rate(0.5, seed=3)
    outcomes: list[str] = []
    for _ in range(16):
        try:
            await eleven.capacity()
            outcomes.append("ok")
        except Transient:
            outcomes.append("transient")

    assert set(outcomes) == {"ok", "transient"}


async def test_second_account_is_isolated(
    emu: ProviderEmulator, make_provider: Callable[..., Provider], sample: Sample
) -> None:
    emu.state.add_account(Account.elevenlabs("el-second", plan="starter"))
    first = make_provider("elevenlabs")
    second = make_provider("elevenlabs", name="el-second", api_key="el-second")
    await clone(first, sample, "vs-iso-g1")

    assert await second.find_by_label("vs-iso-g1") is None
    assert (await second.capacity()).limit == 10


async def test_an_injected_client_gets_auth_and_timeout_per_request(emu: ProviderEmulator) -> None:
    async with httpx.AsyncClient() as shared:
        provider = ElevenLabsProvider(emu.provider_config("elevenlabs"), client=shared)

        assert (await provider.capacity()).limit == 30
