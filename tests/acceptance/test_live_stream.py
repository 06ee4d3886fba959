"""SynthesizeLive as a voice agent uses it, over real gRPC sockets: text fragments piped in
with gaps between them (an LLM writing), audio streamed back sentence by sentence.

Against the local tiny engine (sentence by sentence through ``synthesize_stream``) and
against the provider emulator (ElevenLabs and Cartesia, through their streaming-input
WebSockets where the adapter has a live session, else sentence by sentence over HTTP):

- audio for the first sentence arrives before the last fragment is sent;
- chunks come in order (consecutive ``sequence``) with the text span each speaks, and
  the spans are the turn's sentences in order;
- the concatenated audio decodes;
- cancelling mid-turn (barge-in) releases the voice's lease at once, as the allocator
  reports (its lease TTL here is far longer than the test waits);
- each bound (``synth.live.*``) and each protocol error ends the call with its status,
  naming the setting or the field.
"""

from __future__ import annotations

import asyncio
import io
from collections.abc import AsyncIterator, Callable
from typing import Any

import grpc
import numpy as np
import pytest
import soundfile as sf
from prometheus_client import REGISTRY

from tests.conftest import ADMIN_KEY, ALICE_KEY, auth
from tests.support import ensure_ready, register
from voiceslot.cli.runtime import Runtime
from voiceslot.config import AllocatorConfig, LiveConfig, Settings, SynthConfig
from voiceslot.providers.cartesia import CartesiaProvider
from voiceslot.providers.elevenlabs import ElevenLabsProvider
from voiceslot.testing.emulator import CARTESIA, ELEVENLABS, Op, ProviderEmulator
from voiceslot.v1 import allocator_pb2 as apb
from voiceslot.v1 import allocator_pb2_grpc, common_pb2, synthesizer_pb2_grpc
from voiceslot.v1 import synthesizer_pb2 as spb

WAV = common_pb2.AudioFormat(encoding=common_pb2.AUDIO_ENCODING_WAV)
LEASE_TTL_S = 600.0
"""Far longer than any test waits: a lease gone within the test was released, not lapsed."""
WAIT_S = 120.0
"""Generous, for a loaded 2-core machine; a hang fails here instead of blocking the run."""
GAP_S = 0.02
"""Between fragments, as an LLM's tokens come (a gap, not a synchronisation)."""

SENTENCES = ["Hello there, this is the first sentence.", "The second one follows!"]
FIRST_FRAGMENTS = ["Hello ", "there, ", "this is ", "the first ", "sentence."]
REST_FRAGMENTS = [" The ", "second ", "one ", "follows!"]
TURN_TEXT = "".join(FIRST_FRAGMENTS + REST_FRAGMENTS)


def text(fragment: str) -> spb.SynthesizeLiveRequest:
    return spb.SynthesizeLiveRequest(text=fragment)


def start(voice_id: str, **kw: Any) -> spb.SynthesizeLiveRequest:
    return spb.SynthesizeLiveRequest(
        start=spb.LiveStart(voice_id=voice_id, format=kw.pop("format", WAV), **kw)
    )


END = spb.SynthesizeLiveRequest(end=spb.LiveEnd())
FLUSH = spb.SynthesizeLiveRequest(flush=spb.LiveFlush())


def live_settings(base: Settings, **live: Any) -> Settings:
    """``base`` with long leases and the given ``synth.live`` bounds."""
    return base.model_copy(
        update={
            "allocator": base.allocator.model_copy(update={"default_lease_ttl_s": LEASE_TTL_S}),
            "synth": base.synth.model_copy(update={"live": LiveConfig(**live)}),
        }
    )


@pytest.fixture(scope="module")
def emulator() -> Any:
    with ProviderEmulator() as emu:
        yield emu


class Deployments:
    """Both services on ``engine`` ("local", or an emulated provider kind) with the given
    ``synth.live`` bounds and a READY voice: ``await serve(engine, **live)`` gives
    (channel, voice id). Stopped after the test unless a test stops one itself."""

    def __init__(
        self, make_settings: Callable[..., Settings], emulator: ProviderEmulator, sample: bytes
    ) -> None:
        self.make_settings = make_settings
        self.emulator = emulator
        self.sample = sample
        self.runtimes: list[Runtime] = []
        self.channels: list[grpc.aio.Channel] = []

    async def __call__(
        self, engine: str = "local", *, grace_s: float = 10.0, **live: Any
    ) -> tuple[grpc.aio.Channel, str]:
        if engine == "local":
            settings = self.make_settings(shutdown_grace_s=grace_s)
        else:
            self.emulator.reset()
            self.emulator.state.live.clear()  # the live-session ledger: this test's only
            name = f"{engine}-emu"
            settings = self.make_settings(
                providers=(self.emulator.provider_config(engine, name=name, capacity=4),),
                default_provider=name,
                allocator=AllocatorConfig(maintenance_interval_s=None, dispatch_interval_s=0.1),
                synth=SynthConfig(),
                shutdown_grace_s=grace_s,
            )
        rt = await Runtime(live_settings(settings, **live)).start()
        self.runtimes.append(rt)
        channel = grpc.aio.insecure_channel(f"127.0.0.1:{rt.port}")
        self.channels.append(channel)
        md = auth(ALICE_KEY)
        voice = await register(channel, md, self.sample)
        ready = await ensure_ready(channel, md, voice.voice_id, timeout=WAIT_S)
        await allocator_pb2_grpc.AllocatorServiceStub(channel).ReleaseLease(
            apb.ReleaseLeaseRequest(lease_id=ready.ready.lease.lease_id), metadata=md
        )
        return channel, voice.voice_id

    async def stop_last(self) -> None:
        await self.runtimes.pop().stop()

    async def close(self) -> None:
        for ch in self.channels:
            await ch.close()
        for rt in reversed(self.runtimes):
            await rt.stop()


@pytest.fixture
async def serve(
    make_settings: Callable[..., Settings], emulator: ProviderEmulator, sample_wav: bytes
) -> AsyncIterator[Deployments]:
    deployments = Deployments(make_settings, emulator, sample_wav)
    yield deployments
    await deployments.close()


def live_call(channel: grpc.aio.Channel) -> grpc.aio.StreamStreamCall:
    stub = synthesizer_pb2_grpc.SynthesizerServiceStub(channel)
    return stub.SynthesizeLive(metadata=auth(ALICE_KEY), timeout=WAIT_S)


async def get_voice(channel: grpc.aio.Channel, voice_id: str) -> apb.Voice:
    stub = allocator_pb2_grpc.AllocatorServiceStub(channel)
    answer = await stub.GetVoice(apb.GetVoiceRequest(voice_id=voice_id), metadata=auth(ADMIN_KEY))
    return answer.voice


async def active_leases(channel: grpc.aio.Channel, voice_id: str) -> int:
    return (await get_voice(channel, voice_id)).active_leases


async def leases_released(channel: grpc.aio.Channel, voice_id: str, when: str) -> None:
    """Wait until the voice has no lease: released, as ``LEASE_TTL_S`` is far off. (A
    turn's end may be heard before its release lands: a lease granted as the turn failed
    is released once its answer arrives.)"""
    loop = asyncio.get_running_loop()
    deadline = loop.time() + WAIT_S
    while await active_leases(channel, voice_id) != 0:
        assert loop.time() < deadline, f"the lease was not released {when}"
        await asyncio.sleep(0.05)


async def read(call: grpc.aio.StreamStreamCall) -> spb.SynthesizeLiveResponse:
    message = await asyncio.wait_for(call.read(), WAIT_S)
    assert message is not grpc.aio.EOF, "the call ended before any audio"
    return message


async def read_rest(call: grpc.aio.StreamStreamCall) -> list[spb.SynthesizeLiveResponse]:
    messages = []
    while (message := await asyncio.wait_for(call.read(), WAIT_S)) is not grpc.aio.EOF:
        messages.append(message)
    return messages


async def failure(call: grpc.aio.StreamStreamCall) -> grpc.aio.AioRpcError:
    with pytest.raises(grpc.aio.AioRpcError) as caught:
        await read_rest(call)
    return caught.value


def spans(messages: list[spb.SynthesizeLiveResponse]) -> list[tuple[int, int, str]]:
    """The distinct spans in the order the chunks carry them."""
    out: list[tuple[int, int, str]] = []
    for m in messages:
        span = (m.span.start, m.span.end, m.span.text)
        if not out or out[-1] != span:
            out.append(span)
    return out


def expected_spans() -> list[tuple[int, int, str]]:
    out = []
    for sentence in SENTENCES:
        at = TURN_TEXT.index(sentence)
        out.append((at, at + len(sentence), sentence))
    return out


def first_audio_timings(labels: dict[str, str]) -> float:
    count = REGISTRY.get_sample_value("voiceslot_live_first_audio_seconds_count", labels)
    return count or 0.0


async def speak_in_fragments(channel: grpc.aio.Channel, voice_id: str) -> None:
    """The bar: the first sentence's audio is back before the last fragment is sent;
    then every chunk in order, spans right, the whole a decodable WAV."""
    call = live_call(channel)
    await call.write(start(voice_id))
    for fragment in FIRST_FRAGMENTS + REST_FRAGMENTS[:1]:  # " The" makes the "." certain
        await call.write(text(fragment))
        await asyncio.sleep(GAP_S)
    first = await read(call)  # before the last fragments are written
    assert first.sequence == 0
    assert first.format.encoding == common_pb2.AUDIO_ENCODING_WAV
    assert (first.span.start, first.span.end, first.span.text) == expected_spans()[0]
    for fragment in REST_FRAGMENTS[1:]:
        await call.write(text(fragment))
        await asyncio.sleep(GAP_S)
    await call.write(END)
    await call.done_writing()
    messages = [first, *await read_rest(call)]
    assert await call.code() == grpc.StatusCode.OK
    assert [m.sequence for m in messages] == list(range(len(messages)))
    assert spans(messages) == expected_spans()
    for m in messages:
        assert TURN_TEXT[m.span.start : m.span.end] == m.span.text
    audio, rate = sf.read(io.BytesIO(b"".join(m.audio_chunk for m in messages)), dtype="int16")
    assert rate == first.format.sample_rate_hz > 0
    assert audio.size > rate // 10 and np.abs(audio).max() > 0


async def cancel_releases_the_lease(channel: grpc.aio.Channel, voice_id: str) -> None:
    call = live_call(channel)
    await call.write(start(voice_id))
    for fragment in FIRST_FRAGMENTS + REST_FRAGMENTS:
        await call.write(text(fragment))
    await read(call)  # speaking now
    assert await active_leases(channel, voice_id) == 1
    call.cancel()  # barge-in
    await leases_released(channel, voice_id, "after the cancel")


ENGINES = ["local", ELEVENLABS, CARTESIA]
ADAPTERS = {ELEVENLABS: ElevenLabsProvider, CARTESIA: CartesiaProvider}


@pytest.mark.parametrize("engine", ENGINES)
async def test_fragments_in_audio_out_in_order(serve, engine: str, emulator) -> None:
    # No idle flush while the test waits for the first audio (a slow engine on a loaded
    # machine): the spans checked are the sentences, not what an idle spell cut.
    channel, voice_id = await serve(engine, idle_flush_s=WAIT_S)
    provider = {"provider": (await get_voice(channel, voice_id)).provider}
    timed_before = first_audio_timings(provider)
    await speak_in_fragments(channel, voice_id)
    # Each sentence's wait for its first audio is on the metrics, as a voice agent sees it.
    assert first_audio_timings(provider) == timed_before + len(SENTENCES)
    if engine != "local":
        # Through the provider's streaming-input WebSocket when its adapter has a live
        # session (voiceslot.providers.base.LiveInputProvider); sentence by sentence over
        # HTTP streaming otherwise.
        state = emulator.state
        if hasattr(ADAPTERS[engine], "open_live"):
            assert state.request_count(engine, Op.TTS_LIVE) == 1
            assert state.request_count(engine, Op.TTS_STREAM) == 0
        else:
            assert state.request_count(engine, Op.TTS_STREAM) == len(SENTENCES)


@pytest.mark.parametrize("engine", ENGINES)
async def test_cancel_mid_turn_releases_the_lease_at_once(serve, engine: str, emulator) -> None:
    channel, voice_id = await serve(engine)
    if engine != "local":
        # The provider sends a sentence's first frame and then waits: the turn cannot
        # finish on its own, whatever reaches the provider before the cancel does. (grpc.aio
        # shows a cancelled call's request stream as ended, a moment before it cancels the
        # handler, and a request stream ended without `end` is read as the turn's end.)
        emulator.state.hold_streams()
    try:
        await cancel_releases_the_lease(channel, voice_id)
    finally:
        emulator.state.release_streams()
    if engine != "local":
        # Generation stopped at the provider: its WebSocket session was closed by us (held
        # after its first frame, it cannot have finished on its own).
        closed = await asyncio.to_thread(
            emulator.state.live.wait_for,
            lambda records: bool(records) and not any(r.open for r in records),
            WAIT_S,
        )
        assert closed, emulator.state.live.snapshot(engine)
        assert all(r.outcome != "finished" for r in emulator.state.live.records(engine))


async def test_protocol_errors_name_what_is_wrong(serve) -> None:
    channel, voice_id = await serve("local")

    call = live_call(channel)
    await call.write(text("Hello."))
    error = await failure(call)
    assert error.code() == grpc.StatusCode.INVALID_ARGUMENT
    assert "start" in error.details()

    call = live_call(channel)
    await call.write(start(voice_id))
    await call.write(start(voice_id))
    error = await failure(call)
    assert error.code() == grpc.StatusCode.INVALID_ARGUMENT
    assert "twice" in error.details()

    call = live_call(channel)
    await call.write(start("not-a-voice"))
    error = await failure(call)
    assert error.code() == grpc.StatusCode.INVALID_ARGUMENT
    assert "voice_id" in error.details()

    call = live_call(channel)
    await call.write(start(voice_id, format=common_pb2.AudioFormat(sample_rate_hz=7)))
    error = await failure(call)
    assert error.code() == grpc.StatusCode.INVALID_ARGUMENT
    assert "sample_rate_hz" in error.details()

    call = live_call(channel)
    await call.write(spb.SynthesizeLiveRequest())
    error = await failure(call)
    assert error.code() == grpc.StatusCode.INVALID_ARGUMENT

    # A text fragment that is not UTF-8 (field 2, 2 bytes), sent as raw bytes.
    raw = channel.stream_stream(
        "/voiceslot.v1.SynthesizerService/SynthesizeLive",
        request_serializer=lambda b: b,
        response_deserializer=spb.SynthesizeLiveResponse.FromString,
    )(metadata=auth(ALICE_KEY), timeout=WAIT_S)
    await raw.write(start(voice_id).SerializeToString())
    await raw.write(b"\x12\x02\xff\xfe")
    error = await failure(raw)
    assert error.code() == grpc.StatusCode.INVALID_ARGUMENT
    assert "UTF-8" in error.details()

    # The interceptor admits stream-stream calls like every other: no key, no call.
    stub = synthesizer_pb2_grpc.SynthesizerServiceStub(channel)
    call = stub.SynthesizeLive(timeout=WAIT_S)  # refused before any message is read
    error = await failure(call)
    assert error.code() == grpc.StatusCode.UNAUTHENTICATED


async def test_bounds_end_the_turn_with_their_status(serve) -> None:
    # Each case sends exactly the messages that cross its bound and then only reads: a
    # write racing the server's answer is refused by grpc's client as its own INTERNAL,
    # which would hide the status under test.
    channel, voice_id = await serve(
        "local",
        max_fragment_chars=200,
        max_buffered_chars=120,
        max_fragments_per_s=1,
        idle_flush_s=0.5,
        idle_end_s=2.0,
    )

    call = live_call(channel)
    await call.write(start(voice_id))
    await call.write(text("x" * 201))
    error = await failure(call)
    assert error.code() == grpc.StatusCode.INVALID_ARGUMENT
    assert "synth.live.max_fragment_chars" in error.details()

    call = live_call(channel)
    await call.write(start(voice_id))
    await call.write(text("word " * 30))  # 150 characters waiting for a sentence end
    error = await failure(call)
    assert error.code() == grpc.StatusCode.RESOURCE_EXHAUSTED
    assert "synth.live.max_buffered_chars" in error.details()

    call = live_call(channel)
    await call.write(start(voice_id))
    await call.write(text("One "))
    await call.write(text("two "))  # the second within the second: over 1 a second
    error = await failure(call)
    assert error.code() == grpc.StatusCode.RESOURCE_EXHAUSTED
    assert "synth.live.max_fragments_per_s" in error.details()

    # Never sending `end`: what came is spoken (flushed after the idle spell, before the
    # turn ends), then DEADLINE_EXCEEDED.
    call = live_call(channel)
    await call.write(start(voice_id))
    await call.write(text("Said, then silence"))
    first = await read(call)
    assert first.span.text == "Said, then silence"
    error = await failure(call)
    assert error.code() == grpc.StatusCode.DEADLINE_EXCEEDED
    assert "synth.live.idle_end_s" in error.details()

    # Never sending `start` either.
    call = live_call(channel)
    error = await failure(call)
    assert error.code() == grpc.StatusCode.DEADLINE_EXCEEDED
    assert "synth.live.idle_end_s" in error.details()

    await leases_released(channel, voice_id, "after the turns ended")


def assert_timed(words: list[spb.WordTiming], text: str, audio_s: float) -> None:
    """Every word of ``text`` in order, on one clock from the call's audio start: never
    going back (the second sentence's words after the first's) and within the audio."""
    assert [w.word for w in words] == text.split()
    times = [(w.start.ToNanoseconds() / 1e9, w.end.ToNanoseconds() / 1e9) for w in words]
    assert all(start < end for start, end in times)
    assert all(a[1] <= b[0] + 1e-3 for a, b in zip(times, times[1:], strict=False))
    assert times[-1][1] <= audio_s + 1e-3


def wav_seconds(messages: list[Any]) -> float:
    audio, rate = sf.read(io.BytesIO(b"".join(m.audio_chunk for m in messages)), dtype="int16")
    return audio.size / rate


@pytest.mark.parametrize("engine", [ELEVENLABS, CARTESIA])
async def test_word_timings_in_both_streaming_calls(serve, engine: str) -> None:
    channel, voice_id = await serve(engine, idle_flush_s=WAIT_S)
    timed = spb.SpeechOptions(word_timings=True)
    whole = " ".join(SENTENCES)
    stub = synthesizer_pb2_grpc.SynthesizerServiceStub(channel)
    stream = [
        m
        async for m in stub.SynthesizeStream(
            spb.SynthesizeStreamRequest(voice_id=voice_id, text=whole, format=WAV, options=timed),
            metadata=auth(ALICE_KEY),
            timeout=WAIT_S,
        )
    ]
    assert_timed([w for m in stream for w in m.word_timings], whole, wav_seconds(stream))

    call = live_call(channel)
    await call.write(start(voice_id, options=timed))
    for fragment in FIRST_FRAGMENTS + REST_FRAGMENTS:
        await call.write(text(fragment))
    await call.write(END)
    live = await read_rest(call)
    assert_timed([w for m in live for w in m.word_timings], TURN_TEXT, wav_seconds(live))
    for m in live:  # each word comes with the span that says it
        assert all(w.word in m.span.text.split() for w in m.word_timings)


async def test_server_shutdown_ends_a_turn_and_closes_the_provider_session(serve, emulator) -> None:
    channel, voice_id = await serve(ELEVENLABS, grace_s=1.0)
    call = live_call(channel)
    await call.write(start(voice_id))
    for fragment in FIRST_FRAGMENTS + REST_FRAGMENTS:
        await call.write(text(fragment))
    await read(call)  # speaking, and the client never sends `end`
    await asyncio.wait_for(serve.stop_last(), WAIT_S)  # SIGTERM's path: drain, then stop
    error = await failure(call)
    assert error.code() in (grpc.StatusCode.CANCELLED, grpc.StatusCode.UNAVAILABLE)
    closed = await asyncio.to_thread(
        emulator.state.live.wait_for,
        lambda records: bool(records) and not any(r.open for r in records),
        WAIT_S,
    )
    assert closed, emulator.state.live.snapshot(ELEVENLABS)
