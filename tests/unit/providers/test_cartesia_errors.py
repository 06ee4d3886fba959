"""Cartesia's REST and stream errors → the taxonomy, SSE event interpretation, and the
adapter's other pure decisions."""

from __future__ import annotations

import base64
import json

import pytest

from voiceslot.providers import cartesia as ca
from voiceslot.providers.errors import (
    AuthError,
    Fatal,
    InvalidInput,
    ProviderError,
    RateLimited,
    Transient,
    VoiceNotFound,
)
from voiceslot.providers.http import SseEvent


def error_json(status: int, code: str, message: str) -> bytes:
    return json.dumps(
        {
            "error_code": code,
            "title": "T",
            "message": message,
            "request_id": "r1",
            "status_code": status,
        }
    ).encode()


@pytest.mark.parametrize(
    ("status", "body", "expected"),
    [
        (401, b"Invalid API key", AuthError),
        (402, error_json(402, "insufficient_credits", "out of credits"), AuthError),
        (403, b"Forbidden", AuthError),
        (400, error_json(400, "invalid_request", "bad language"), InvalidInput),
        (404, error_json(404, "voice_not_found", "no such voice"), VoiceNotFound),
        (429, b"Too many requests", RateLimited),
        (500, error_json(500, "internal", "oops"), Transient),
        (502, b"Bad gateway", Transient),
        (409, b"conflict", Fatal),
    ],
)
def test_classify_rest_errors_json_or_plain_text(
    status: int, body: bytes, expected: type[ProviderError]
) -> None:
    error = ca.classify_error(status, body, provider="ca", retry_after=1.5, voice_scoped=True)

    assert type(error) is expected
    assert (error.status_code, error.retry_after, error.provider) == (status, 1.5, "ca")


def test_error_message_keeps_code_text_and_request_id() -> None:
    error = ca.classify_error(400, error_json(400, "invalid_request", "bad"), provider="ca")
    assert error.message == "invalid_request: bad (request_id r1)"
    assert ca.classify_error(401, b"Invalid API key", provider="ca").message == "Invalid API key"


@pytest.mark.parametrize(
    ("event", "expected", "status"),
    [
        (
            {
                "type": "error",
                "status_code": 500,
                "title": "t",
                "message": "m",
                "error_code": "e",
                "request_id": "r",
            },
            Transient,
            500,
        ),
        (
            {"type": "error", "status_code": 429, "title": "t", "message": "m", "request_id": "r"},
            RateLimited,
            429,
        ),
        (
            {
                "type": "error",
                "status_code": 404,
                "title": "Voice not found",
                "message": "m",
                "request_id": "r",
            },
            VoiceNotFound,
            404,
        ),
        (
            {"type": "error", "status_code": 400, "title": "t", "message": "m", "request_id": "r"},
            InvalidInput,
            400,
        ),
        ({"type": "error", "status_code": "junk", "message": "m"}, Transient, 500),
        ({"type": "error", "title": "only a title"}, Transient, 500),
    ],
)
def test_classify_stream_errors(
    event: dict[str, object], expected: type[ProviderError], status: int
) -> None:
    error = ca.classify_stream_error(event, provider="ca")
    assert type(error) is expected and error.status_code == status


def chunk_event(audio: bytes, *, with_type: bool = True) -> SseEvent:
    payload = {
        "done": False,
        "status_code": 206,
        "step_time": 1,
        "data": base64.b64encode(audio).decode(),
    }
    if with_type:
        payload["type"] = "chunk"
    return SseEvent(event="chunk", data=json.dumps(payload))


def test_interpret_events() -> None:
    assert ca.interpret_event(chunk_event(b"\x01\x02"), provider="ca") == b"\x01\x02"
    # The event name is enough when the payload has no "type".
    assert (
        ca.interpret_event(chunk_event(b"\x03\x04", with_type=False), provider="ca") == b"\x03\x04"
    )
    assert (
        ca.interpret_event(SseEvent("done", '{"type": "done", "done": true}'), provider="ca")
        is None
    )
    assert (
        ca.interpret_event(SseEvent("timestamps", '{"type": "timestamps"}'), provider="ca") == b""
    )
    assert ca.interpret_event(SseEvent("message", "not json"), provider="ca") == b""
    assert ca.interpret_event(SseEvent("message", "[1, 2]"), provider="ca") == b""
    assert ca.interpret_event(None, provider="ca") == b""


def test_interpret_error_event_raises_its_error() -> None:
    event = SseEvent("error", json.dumps({"type": "error", "status_code": 429, "message": "busy"}))
    with pytest.raises(RateLimited, match="busy"):
        ca.interpret_event(event, provider="ca")


def test_interpret_rejects_a_chunk_that_is_not_base64() -> None:
    event = SseEvent("chunk", json.dumps({"type": "chunk", "data": "***"}))
    with pytest.raises(Fatal, match="base64"):
        ca.interpret_event(event, provider="ca")


def test_label_marker_round_trip() -> None:
    description = ca.describe("vs-u1-g3", "Alice's voice")
    assert description == "Alice's voice [voiceslot_label=vs-u1-g3]"
    assert ca.label_of({"description": description}) == "vs-u1-g3"
    assert ca.label_of({"description": ca.describe("vs-u1-g3", "  ")}) == "vs-u1-g3"
    assert ca.label_of({"description": "A narrator"}) is None
    assert ca.label_of({"description": None}) is None


def test_matches_label_exactly() -> None:
    voice = {"id": "1", "name": "vs-a-g10", "description": ca.describe("vs-a-g10", "")}
    assert ca.matches_label(voice, "vs-a-g10")
    assert not ca.matches_label(voice, "vs-a-g1")


@pytest.mark.parametrize(
    ("tag", "code"), [("en", "en"), ("en-GB", "en"), ("pt_BR", "pt"), ("ZH-Hans", "zh"), ("", "en")]
)
def test_language_code(tag: str, code: str) -> None:
    assert ca.language_code(tag) == code


@pytest.mark.parametrize(
    ("rate", "served"), [(0, 24000), (8000, 8000), (47000, 48000), (30000, 24000)]
)
def test_output_format(rate: int, served: int) -> None:
    assert ca.output_format(rate) == {
        "container": "raw",
        "encoding": "pcm_s16le",
        "sample_rate": served,
    }
