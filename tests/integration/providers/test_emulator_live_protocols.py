"""The emulator's streaming-input WebSockets spoken to directly (a raw ``websockets``
client, real loopback frames): the parts of each protocol the adapters do not use, and
its ledger. The adapters' own paths are in ``test_live_sessions``."""

from __future__ import annotations

import asyncio
import base64
import json
from collections.abc import AsyncIterator
from typing import Any

import httpx
import pytest
from websockets.asyncio.client import ClientConnection, connect
from websockets.exceptions import ConnectionClosed, InvalidStatus

from voiceslot.testing.emulator import (
    CARTESIA,
    DEFAULT_CARTESIA_KEY,
    DEFAULT_ELEVENLABS_KEY,
    ELEVENLABS,
    ProviderEmulator,
)
from voiceslot.testing.emulator.audio import speech_seconds

DEADLINE_S = 20.0
VERSION = "2025-04-16"


def public_voice(emu: ProviderEmulator, provider: str) -> str:
    key = DEFAULT_ELEVENLABS_KEY if provider == ELEVENLABS else DEFAULT_CARTESIA_KEY
    account = emu.state.account(provider, key)  # type: ignore[arg-type]
    return emu.state.list_voices(account, page_size=1).voices[0].voice_id


def ws_url(http_url: str) -> str:
    return "ws://" + http_url.removeprefix("http://")


async def frames(ws: ClientConnection) -> AsyncIterator[dict[str, Any]]:
    while True:
        try:
            raw = await asyncio.wait_for(ws.recv(), DEADLINE_S)
        except ConnectionClosed:
            return
        yield json.loads(raw)


# -- ElevenLabs stream-input ------------------------------------------------------------


def eleven_url(emu: ProviderEmulator, **query: str) -> str:
    voice = public_voice(emu, ELEVENLABS)
    params = "&".join(f"{k}={v}" for k, v in {"output_format": "pcm_16000", **query}.items())
    return f"{ws_url(emu.elevenlabs_url)}/v1/text-to-speech/{voice}/stream-input?{params}"


async def test_elevenlabs_key_in_the_first_message_and_the_chunk_schedule(
    emu: ProviderEmulator,
) -> None:
    long_text = "word " * 30  # 150 characters: past the first threshold (120)
    async with connect(eleven_url(emu)) as ws:
        await ws.send(json.dumps({"text": " ", "xi_api_key": DEFAULT_ELEVENLABS_KEY}))
        await ws.send(json.dumps({"text": long_text}))
        # Generation starts without flush or end: the schedule's threshold was reached.
        first = json.loads(await asyncio.wait_for(ws.recv(), DEADLINE_S))
        assert first["audio"] and first["isFinal"] is None
        assert first["alignment"]["chars"][:4] == list("word")
        await ws.send(json.dumps({"text": ""}))
        rest = [message async for message in frames(ws)]
        assert ws.close_code == 1000
    assert rest[-1] == {"isFinal": True}
    audio = b"".join(base64.b64decode(m["audio"]) for m in [first, *rest] if m.get("audio"))
    assert len(audio) == 2 * round(speech_seconds(long_text) * 16000)
    [record] = emu.state.live.records(ELEVENLABS)
    assert (record.outcome, record.text, record.generated_chars) == (
        "finished",
        long_text,  # the initial " " only opens the stream
        len(long_text),
    )


async def test_live_faults_and_records_through_the_debug_api(emu: ProviderEmulator) -> None:
    fault = {"kind": "server_error", "op": "tts_live", "provider": "elevenlabs", "status": 503}
    headers = {"xi-api-key": DEFAULT_ELEVENLABS_KEY}
    async with httpx.AsyncClient(base_url=emu.debug_url) as debug:
        assert (await debug.post("/faults", json=fault)).status_code == 200
        with pytest.raises(InvalidStatus) as refused:
            async with connect(eleven_url(emu), additional_headers=headers):
                pass
        assert refused.value.response.status_code == 503
        async with connect(eleven_url(emu), additional_headers=headers) as ws:
            await ws.send(json.dumps({"text": " "}))
            await ws.send(json.dumps({"text": "Recorded. ", "flush": True}))
            await ws.send(json.dumps({"text": ""}))
            _ = [m async for m in frames(ws)]
        records = (await debug.get("/live", params={"provider": "elevenlabs"})).json()
    assert [(r["outcome"], r["text"], r["flushes"]) for r in records] == [
        ("finished", "Recorded. ", 1)
    ]


async def test_elevenlabs_wrong_key_in_the_first_message_closes_1008(
    emu: ProviderEmulator,
) -> None:
    async with connect(eleven_url(emu)) as ws:
        await ws.send(json.dumps({"text": " ", "xi_api_key": "wrong"}))
        assert [m async for m in frames(ws)] == []
        assert ws.close_code == 1008
        assert "API key" in (ws.close_reason or "")


async def test_elevenlabs_inactivity_closes_1008_and_is_recorded(emu: ProviderEmulator) -> None:
    headers = {"xi-api-key": DEFAULT_ELEVENLABS_KEY}
    async with connect(eleven_url(emu, inactivity_timeout="1"), additional_headers=headers) as ws:
        await ws.send(json.dumps({"text": " "}))
        assert [m async for m in frames(ws)] == []
        assert ws.close_code == 1008
        assert "timeout" in (ws.close_reason or "")
    assert emu.state.live.records(ELEVENLABS)[-1].outcome == "expired"


@pytest.mark.parametrize(
    ("query", "status"),
    [({"output_format": "wav_1"}, 422), ({"inactivity_timeout": "999"}, 422)],
)
async def test_elevenlabs_bad_query_refuses_the_upgrade(
    emu: ProviderEmulator, query: dict[str, str], status: int
) -> None:
    headers = {"xi-api-key": DEFAULT_ELEVENLABS_KEY}
    with pytest.raises(InvalidStatus) as refused:
        async with connect(eleven_url(emu, **query), additional_headers=headers):
            pass
    assert refused.value.response.status_code == status
    assert json.loads(bytes(refused.value.response.body or b""))["detail"]


# -- Cartesia tts/websocket -------------------------------------------------------------


def cartesia_url(emu: ProviderEmulator, *, key: str = DEFAULT_CARTESIA_KEY) -> str:
    return f"{ws_url(emu.cartesia_url)}/tts/websocket?api_key={key}&cartesia_version={VERSION}"


def request(emu: ProviderEmulator, context: str, transcript: str, **flags: Any) -> str:
    return json.dumps(
        {
            "model_id": "sonic-3",
            "voice": {"mode": "id", "id": public_voice(emu, CARTESIA)},
            "output_format": {"container": "raw", "encoding": "pcm_s16le", "sample_rate": 16000},
            "language": "en",
            "context_id": context,
            "transcript": transcript,
            "max_buffer_delay_ms": 0,
            **flags,
        }
    )


async def until(ws: ClientConnection, kind: str, context: str) -> list[dict[str, Any]]:
    seen = []
    async for message in frames(ws):
        seen.append(message)
        if message["type"] == kind and message.get("context_id") == context:
            return seen
    raise AssertionError(f"socket closed before {kind} for {context}: {seen}")


async def test_cartesia_contexts_are_independent_on_one_socket(emu: ProviderEmulator) -> None:
    async with connect(cartesia_url(emu)) as ws:
        await ws.send(request(emu, "a", "First context. ", **{"continue": True}))
        await ws.send(request(emu, "b", "Second context.", **{"continue": False}))
        seen = await until(ws, "done", "b")
        await ws.send(request(emu, "a", "More for a.", **{"continue": False}))
        seen += await until(ws, "done", "a")
        # A finished context cannot be reused.
        await ws.send(request(emu, "b", "Again.", **{"continue": False}))
        [error] = await until(ws, "error", "b")
    assert error["error_code"] == "context_closed"
    texts = {r.context_id: r.text for r in emu.state.live.records(CARTESIA)}
    assert texts == {"a": "First context. More for a.", "b": "Second context."}
    audio_a = b"".join(
        base64.b64decode(m["data"]) for m in seen if m["type"] == "chunk" and m["context_id"] == "a"
    )
    expected = round(speech_seconds("First context. ") * 16000) + round(
        speech_seconds("More for a.") * 16000
    )
    assert len(audio_a) == 2 * expected


async def test_cartesia_fields_are_fixed_within_a_context(emu: ProviderEmulator) -> None:
    async with connect(cartesia_url(emu)) as ws:
        await ws.send(request(emu, "c", "One. ", **{"continue": True}))
        await ws.send(request(emu, "c", "Two.", language="de", **{"continue": True}))
        messages = await until(ws, "error", "c")
    assert messages[-1]["status_code"] == 400
    assert "language" in messages[-1]["message"]


async def test_cartesia_buffers_until_a_sentence_ends_or_the_delay_runs_out(
    emu: ProviderEmulator,
) -> None:
    async with connect(cartesia_url(emu)) as ws:
        await ws.send(
            request(emu, "d", "Half a sen", max_buffer_delay_ms=300, **{"continue": True})
        )
        await ws.send(
            request(emu, "d", "tence. And", max_buffer_delay_ms=300, **{"continue": True})
        )
        first = json.loads(await asyncio.wait_for(ws.recv(), DEADLINE_S))
        assert first["type"] == "chunk"
        # "Half a sentence. " was spoken at once; " And" waited for the delay.
        await until(ws, "chunk", "d")
    [record] = emu.state.live.records(CARTESIA)
    assert record.text == "Half a sentence. And"


async def test_cartesia_cancel_stops_the_context(emu: ProviderEmulator) -> None:
    emu.state.hold_streams()
    try:
        async with connect(cartesia_url(emu)) as ws:
            await ws.send(
                request(emu, "e", "A long sentence to be cut short. " * 3, **{"continue": True})
            )
            first = json.loads(await asyncio.wait_for(ws.recv(), DEADLINE_S))
            assert first["type"] == "chunk"
            await ws.send(json.dumps({"context_id": "e", "cancel": True}))
            ok = await asyncio.to_thread(
                emu.state.live.wait_for,
                lambda records: records[-1].outcome == "cancelled",
                DEADLINE_S,
            )
            assert ok
    finally:
        emu.state.release_streams()
    [record] = emu.state.live.records(CARTESIA)
    assert record.audio_frames == 1


@pytest.mark.parametrize(
    ("url_of", "status"),
    [
        (lambda emu: cartesia_url(emu, key="wrong"), 401),
        (
            lambda emu: f"{ws_url(emu.cartesia_url)}/tts/websocket?api_key={DEFAULT_CARTESIA_KEY}",
            400,
        ),
    ],
)
async def test_cartesia_refuses_bad_keys_and_missing_versions(
    emu: ProviderEmulator, url_of: Any, status: int
) -> None:
    with pytest.raises(InvalidStatus) as refused:
        async with connect(url_of(emu)):
            pass
    assert refused.value.response.status_code == status


# -- ElevenLabs multi-stream-input ------------------------------------------------------


def multi_url(emu: ProviderEmulator) -> str:
    return eleven_url(emu).replace("/stream-input?", "/multi-stream-input?")


def multi_headers() -> dict[str, str]:
    return {"xi-api-key": DEFAULT_ELEVENLABS_KEY}


async def until_final(ws: ClientConnection, context: str) -> list[dict[str, Any]]:
    seen = []
    async for message in frames(ws):
        seen.append(message)
        if message.get("isFinal") is True and message.get("contextId") == context:
            return seen
    raise AssertionError(f"socket closed before isFinal for {context}: {seen}")


async def test_multi_contexts_share_a_socket_and_are_told_apart(emu: ProviderEmulator) -> None:
    async with connect(multi_url(emu), additional_headers=multi_headers()) as ws:
        for context in ("a", "b"):
            await ws.send(json.dumps({"text": " ", "context_id": context}))
        await ws.send(json.dumps({"text": "For a. ", "context_id": "a", "flush": True}))
        await ws.send(json.dumps({"text": "For b, longer. ", "context_id": "b", "flush": True}))
        # The opening " " stays in each context's buffer: it is spoken with the text.
        expected = {
            context: 2 * round(speech_seconds(text) * 16000)
            for context, text in (("a", " For a. "), ("b", " For b, longer. "))
        }
        audio: dict[str, int] = {"a": 0, "b": 0}
        async for message in frames(ws):
            audio[message["contextId"]] += len(base64.b64decode(message["audio"]))
            if audio == expected:
                break
        await ws.send(json.dumps({"context_id": "a", "close_context": True}))
        assert [m for m in await until_final(ws, "a") if m.get("audio")] == []
        await ws.send(json.dumps({"close_socket": True}))
        _ = [m async for m in frames(ws)]
        assert ws.close_code == 1000
    outcomes = {r.context_id: (r.outcome, r.text) for r in emu.state.live.records(ELEVENLABS)}
    assert outcomes == {"a": ("finished", " For a. "), "b": ("finished", " For b, longer. ")}


async def test_multi_close_context_is_a_barge_in(emu: ProviderEmulator) -> None:
    emu.state.hold_streams()
    try:
        async with connect(multi_url(emu), additional_headers=multi_headers()) as ws:
            await ws.send(json.dumps({"text": " ", "context_id": "old"}))
            await ws.send(
                json.dumps({"text": "A long reply. " * 4, "context_id": "old", "flush": True})
            )
            first = json.loads(await asyncio.wait_for(ws.recv(), DEADLINE_S))
            assert first["contextId"] == "old" and first["audio"]
            await ws.send(json.dumps({"context_id": "old", "close_context": True}))
            await until_final(ws, "old")
            # The socket goes on: a new context speaks.
            await ws.send(json.dumps({"text": "New. ", "context_id": "new", "flush": True}))
            reply = json.loads(await asyncio.wait_for(ws.recv(), DEADLINE_S))
            assert reply["contextId"] == "new"
    finally:
        emu.state.release_streams()
    old = next(r for r in emu.state.live.records(ELEVENLABS) if r.context_id == "old")
    assert (old.outcome, old.audio_frames) == ("cancelled", 1)


async def test_multi_refuses_a_sixth_context(emu: ProviderEmulator) -> None:
    async with connect(multi_url(emu), additional_headers=multi_headers()) as ws:
        for index in range(6):
            await ws.send(json.dumps({"text": " ", "context_id": f"c{index}"}))
        [error] = [m async for m in frames(ws)]
        assert ws.close_code == 1008
    assert error["error"] == "max_active_conversations"
    assert len(emu.state.live.records(ELEVENLABS)) == 5
