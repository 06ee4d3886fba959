"""CartesiaProvider against the loopback emulator over real HTTP: every operation, JSON
and plain-text REST errors, and SSE stream errors mapped into the taxonomy."""

from __future__ import annotations

import asyncio
import socket
from collections.abc import Awaitable, Callable

import httpx
import pytest

from voiceslot.providers.base import CloneRequest, PcmAudio, Provider, SynthesisRequest
from voiceslot.providers.cartesia import CartesiaProvider
from voiceslot.providers.errors import (
    AuthError,
    InvalidInput,
    RateLimited,
    Transient,
    VoiceNotFound,
)
from voiceslot.testing.emulator import (
    CARTESIA,
    DEFAULT_CARTESIA_KEY,
    Fault,
    FaultKind,
    Op,
    ProviderEmulator,
)
from voiceslot.testing.emulator.audio import speech_seconds

Sample = Callable[[int], bytes]
WaitUntil = Callable[..., Awaitable[None]]
CARTESIA_HEADERS = {
    "Authorization": f"Bearer {DEFAULT_CARTESIA_KEY}",
    "Cartesia-Version": "2025-04-16",
}


async def clone(provider: Provider, sample: Sample, label: str, seed: int = 0) -> str:
    voice = await provider.clone(CloneRequest(label=label, sample=sample(seed)))
    return voice.provider_voice_id


# -- voices ------------------------------------------------------------------------------


async def test_clone_sends_name_language_and_label_marker(
    cartesia: Provider, emu: ProviderEmulator, sample: Sample
) -> None:
    voice = await cartesia.clone(
        CloneRequest(label="vs-alpha-g1", sample=sample(1), language="en-GB", description="Alpha")
    )

    [created] = emu.state.created_voices(CARTESIA)
    assert created.voice_id == voice.provider_voice_id
    assert created.name == "vs-alpha-g1"
    assert created.language == "en"
    assert created.description == "Alpha [voiceslot_label=vs-alpha-g1]"
    [request] = emu.state.requests(CARTESIA, Op.CLONE)
    assert request.headers["cartesia-version"] == "2025-04-16"
    assert request.headers["content-type"].startswith("multipart/form-data")


async def test_find_by_label_matches_exactly_and_uses_search(
    cartesia: Provider, emu: ProviderEmulator, sample: Sample
) -> None:
    g1 = await clone(cartesia, sample, "vs-beta-g1", 1)
    await clone(cartesia, sample, "vs-beta-g10", 2)

    found = await cartesia.find_by_label("vs-beta-g1")

    assert found is not None and found.provider_voice_id == g1 and found.label == "vs-beta-g1"
    assert await cartesia.find_by_label("vs-beta-g") is None
    assert emu.state.requests(CARTESIA, Op.LIST)[0].query["q"] == "vs-beta-g1"


async def test_list_voices_walks_cursor_pages_and_skips_public_voices(
    cartesia: Provider, emu: ProviderEmulator, sample: Sample
) -> None:
    ours = {await clone(cartesia, sample, f"vs-list-g{i}", i) for i in range(5)}
    emu.state.set_page_size_cap(2)

    listed = [v async for v in cartesia.list_voices()]

    assert {v.provider_voice_id for v in listed} == ours and len(listed) == 5
    queries = [r.query for r in emu.state.requests(CARTESIA, Op.LIST)]
    assert len(queries) == 3
    assert all(q["is_owner"] == "true" and q["limit"] == "100" for q in queries)
    assert [("starting_after" in q) for q in queries] == [False, True, True]


async def test_voices_made_by_hand_have_no_label_and_take_no_slot(
    make_provider: Callable[..., Provider], emu: ProviderEmulator, sample: Sample
) -> None:
    provider = make_provider("cartesia", capacity=12)
    ours = await clone(provider, sample, "vs-ours-g1", 1)
    async with httpx.AsyncClient(base_url=emu.cartesia_url, headers=CARTESIA_HEADERS) as raw:
        made_by_hand = await raw.post(
            "/voices/clone",
            data={"name": "Narrator", "language": "en"},
            files={"clip": ("n.wav", sample(2), "audio/wav")},
        )
    made_by_hand.raise_for_status()

    listed = {v.provider_voice_id: v.label async for v in provider.list_voices()}
    capacity = await provider.capacity()

    assert listed == {ours: "vs-ours-g1", made_by_hand.json()["id"]: None}
    assert [v.provider_voice_id async for v in provider.list_voices(label_prefix="vs-")] == [ours]
    assert (capacity.limit, capacity.used, capacity.add_edit_remaining) == (12, 1, None)


async def test_delete_is_204_and_twice_is_not_found(
    cartesia: Provider, emu: ProviderEmulator, sample: Sample
) -> None:
    emu.state.faults.set_list_lag(30.0)  # asked by id, a copy is seen whatever lists say
    voice_id = await clone(cartesia, sample, "vs-del-g1")
    assert await cartesia.find_by_label("vs-del-g1") is None
    assert await cartesia.exists(voice_id)

    await cartesia.delete(voice_id)

    assert not await cartesia.exists(voice_id)

    assert emu.state.live_voices(CARTESIA) == []
    with pytest.raises(VoiceNotFound):
        await cartesia.delete(voice_id)


# -- speech ------------------------------------------------------------------------------


@pytest.mark.parametrize(
    ("asked", "served"), [(0, 24000), (44000, 44100), (48000, 48000), (11025, 8000)]
)
async def test_synthesize_asks_for_raw_pcm_at_the_nearest_rate(
    cartesia: Provider, emu: ProviderEmulator, sample: Sample, asked: int, served: int
) -> None:
    voice_id = await clone(cartesia, sample, "vs-rate-g1")
    text = "Sonic speaks raw little-endian samples."

    audio = await cartesia.synthesize(
        SynthesisRequest(
            provider_voice_id=voice_id, text=text, sample_rate_hz=asked, language="en-US"
        )
    )

    assert audio.sample_rate == served
    body = emu.state.requests(CARTESIA, Op.TTS)[-1].json
    assert body["output_format"] == {
        "container": "raw",
        "encoding": "pcm_s16le",
        "sample_rate": served,
    }
    assert body["voice"] == {"mode": "id", "id": voice_id}
    assert body["language"] == "en"
    assert audio.duration_s == pytest.approx(speech_seconds(text), abs=0.01)


async def test_sse_stream_yields_the_same_audio_in_order(
    cartesia: Provider, sample: Sample
) -> None:
    voice_id = await clone(cartesia, sample, "vs-stream-g1")
    request = SynthesisRequest(
        provider_voice_id=voice_id, text="Server-sent events, in order. " * 3
    )

    whole = await cartesia.synthesize(request)
    chunks = [chunk async for chunk in cartesia.synthesize_stream(request)]

    assert len(chunks) > 3
    assert all(c.sample_rate == whole.sample_rate and len(c.pcm16) % 2 == 0 for c in chunks)
    assert b"".join(c.pcm16 for c in chunks) == whole.pcm16


async def test_sse_stream_delivers_chunks_as_they_arrive(
    cartesia: Provider, emu: ProviderEmulator, sample: Sample
) -> None:
    voice_id = await clone(cartesia, sample, "vs-live-g1")
    request = SynthesisRequest(provider_voice_id=voice_id, text="One event at a time. " * 4)
    emu.state.hold_streams()
    stream = cartesia.synthesize_stream(request)

    try:
        first = await asyncio.wait_for(anext(stream), timeout=5)
        assert emu.state.account(CARTESIA, DEFAULT_CARTESIA_KEY).in_flight == 1
    finally:
        emu.state.release_streams()
    rest = [chunk async for chunk in stream]

    assert (
        first.pcm16 + b"".join(c.pcm16 for c in rest) == (await cartesia.synthesize(request)).pcm16
    )


# -- errors ------------------------------------------------------------------------------


@pytest.mark.parametrize("operation", ["clone", "find", "capacity", "synthesize", "stream"])
async def test_bad_key_plain_text_401_is_auth_error(
    make_provider: Callable[..., Provider], sample: Sample, operation: str
) -> None:
    provider = make_provider("cartesia", api_key="wrong")
    request = SynthesisRequest(provider_voice_id="v", text="hi")
    calls = {
        "clone": lambda: provider.clone(CloneRequest(label="vs-x-g1", sample=sample(0))),
        "find": lambda: provider.find_by_label("vs-x-g1"),
        "capacity": provider.capacity,
        "synthesize": lambda: provider.synthesize(request),
        "stream": lambda: anext(provider.synthesize_stream(request)),
    }

    with pytest.raises(AuthError, match="Invalid API key") as err:
        await calls[operation]()

    assert err.value.status_code == 401


async def test_invalid_version_header_is_invalid_input(
    make_provider: Callable[..., Provider],
) -> None:
    provider = make_provider("cartesia", api_version="latest")

    with pytest.raises(InvalidInput, match="Cartesia-Version"):
        await provider.capacity()


async def test_unsupported_language_is_invalid_input(cartesia: Provider, sample: Sample) -> None:
    with pytest.raises(InvalidInput, match="language"):
        await cartesia.clone(CloneRequest(label="vs-lang-g1", sample=sample(0), language="xx-YY"))


async def test_unknown_voice_is_voice_not_found_for_speech(cartesia: Provider) -> None:
    request = SynthesisRequest(provider_voice_id="8a1b0c3e-0000-4000-8000-000000000000", text="hi")

    with pytest.raises(VoiceNotFound, match="voice_not_found"):
        await cartesia.synthesize(request)
    with pytest.raises(VoiceNotFound):
        await anext(cartesia.synthesize_stream(request))


async def test_concurrency_429_is_rate_limited_with_retry_after(
    cartesia: Provider, emu: ProviderEmulator, sample: Sample, wait_until: WaitUntil
) -> None:
    voice_id = await clone(cartesia, sample, "vs-busy-g1")
    emu.state.configure_account(
        CARTESIA, DEFAULT_CARTESIA_KEY, max_concurrency=1, concurrency_retry_after=2
    )
    emu.state.hold_streams()
    holder = cartesia.synthesize_stream(
        SynthesisRequest(provider_voice_id=voice_id, text="holding the slot " * 4)
    )
    try:
        await anext(holder)
        await wait_until(lambda s: s.account(CARTESIA, DEFAULT_CARTESIA_KEY).in_flight == 1)

        with pytest.raises(RateLimited) as err:
            await cartesia.synthesize(SynthesisRequest(provider_voice_id=voice_id, text="me too"))
    finally:
        emu.state.release_streams()
        await holder.aclose()

    assert err.value.retry_after == 2


@pytest.mark.parametrize("delay", [4.0, 0.5])
async def test_forced_429_carries_its_retry_after(
    cartesia: Provider, emu: ProviderEmulator, delay: float
) -> None:
    emu.state.faults.inject(Fault(FaultKind.RATE_LIMITED, provider=CARTESIA, retry_after=delay))

    with pytest.raises(RateLimited) as err:
        await cartesia.capacity()

    assert err.value.retry_after == delay


async def test_server_error_is_transient_and_clone_is_not_retried(
    cartesia: Provider, emu: ProviderEmulator, sample: Sample
) -> None:
    emu.state.faults.inject(Fault(FaultKind.SERVER_ERROR, op=Op.CLONE, status=503))

    with pytest.raises(Transient) as err:
        await clone(cartesia, sample, "vs-5xx-g1")

    assert err.value.status_code == 503
    assert emu.state.request_count(CARTESIA, Op.CLONE) == 1
    assert emu.state.created_voices() == []


@pytest.mark.parametrize(
    ("status", "error"), [(500, Transient), (429, RateLimited), (400, InvalidInput)]
)
async def test_sse_error_event_is_classified_after_the_audio_so_far(
    cartesia: Provider,
    emu: ProviderEmulator,
    sample: Sample,
    status: int,
    error: type[Exception],
) -> None:
    voice_id = await clone(cartesia, sample, "vs-sse-err-g1")
    emu.state.faults.inject(Fault(FaultKind.STREAM_BREAK, status=status))
    received: list[PcmAudio] = []

    with pytest.raises(error, match="generation_failed") as err:
        async for chunk in cartesia.synthesize_stream(
            SynthesisRequest(provider_voice_id=voice_id, text="This will fail midway. " * 4)
        ):
            received.append(chunk)

    assert len(received) == 1
    assert err.value.status_code == status  # type: ignore[attr-defined]


async def test_sse_stream_ending_without_done_is_transient(
    cartesia: Provider, emu: ProviderEmulator, sample: Sample
) -> None:
    voice_id = await clone(cartesia, sample, "vs-sse-cut-g1")
    emu.state.faults.inject(Fault(FaultKind.LOST_RESPONSE, op=Op.TTS_STREAM))

    with pytest.raises(Transient, match="done"):
        async for _ in cartesia.synthesize_stream(
            SynthesisRequest(provider_voice_id=voice_id, text="Cut short. " * 6)
        ):
            pass


async def test_hang_past_the_timeout_is_transient(
    make_provider: Callable[..., Provider], emu: ProviderEmulator
) -> None:
    provider = make_provider("cartesia", timeout_s=0.2)
    emu.state.faults.inject(Fault(FaultKind.HANG, op=Op.LIST, hang_s=1.0))

    with pytest.raises(Transient, match="timed out"):
        await provider.find_by_label("vs-anything-g1")


async def test_connection_refused_is_transient(make_provider: Callable[..., Provider]) -> None:
    with socket.socket() as probe:
        probe.bind(("127.0.0.1", 0))
        port = probe.getsockname()[1]
    provider = make_provider("cartesia", base_url=f"http://127.0.0.1:{port}")

    with pytest.raises(Transient):
        await provider.delete("anything")


async def test_an_injected_client_gets_auth_and_version_per_request(
    emu: ProviderEmulator,
) -> None:
    async with httpx.AsyncClient() as shared:
        provider = CartesiaProvider(emu.provider_config("cartesia", capacity=3), client=shared)

        assert (await provider.capacity()).limit == 3
    assert emu.state.requests(CARTESIA, Op.LIST)[-1].headers["cartesia-version"] == "2025-04-16"
