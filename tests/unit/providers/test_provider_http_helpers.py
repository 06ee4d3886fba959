"""The pure helpers shared by the HTTP adapters (voiceslot.providers.http)."""

from __future__ import annotations

from datetime import UTC, datetime

import httpx
import pytest

from voiceslot.providers import http
from voiceslot.providers.errors import (
    AuthError,
    Fatal,
    InvalidInput,
    ProviderError,
    RateLimited,
    Transient,
    VoiceNotFound,
)

NOW = datetime(2025, 6, 1, 12, 0, 0, tzinfo=UTC)


@pytest.mark.parametrize(
    ("header", "seconds"),
    [
        ("7", 7.0),
        ("  12 ", 12.0),
        ("0.5", 0.5),
        ("0", 0.0),
        ("-3", 0.0),
        ("Sun, 01 Jun 2025 12:00:30 GMT", 30.0),
        ("Sun, 01 Jun 2025 11:59:00 GMT", 0.0),  # in the past
        (None, None),
        ("", None),
        ("soon", None),
        ("nan", None),
        ("inf", None),
    ],
)
def test_parse_retry_after(header: str | None, seconds: float | None) -> None:
    assert http.parse_retry_after(header, now=NOW) == seconds


@pytest.mark.parametrize(
    ("status", "voice_scoped", "expected"),
    [
        (400, False, InvalidInput),
        (413, False, InvalidInput),
        (422, False, InvalidInput),
        (401, False, AuthError),
        (402, False, AuthError),
        (403, False, AuthError),
        (404, True, VoiceNotFound),
        (404, False, Fatal),  # a wrong URL, not a missing voice
        (408, False, Transient),
        (409, False, Fatal),
        (429, False, RateLimited),
        (500, False, Transient),
        (503, False, Transient),
        (504, True, Transient),
    ],
)
def test_error_for_status(status: int, voice_scoped: bool, expected: type[ProviderError]) -> None:
    error = http.error_for_status(
        status, "msg", provider="acct", retry_after=2.0, voice_scoped=voice_scoped
    )

    assert type(error) is expected
    assert (error.status_code, error.provider, error.retry_after) == (status, "acct", 2.0)


@pytest.mark.parametrize(
    ("exc", "expected", "text"),
    [
        (httpx.ReadTimeout("slow"), Transient, "timed out"),
        (httpx.ConnectTimeout("slow"), Transient, "timed out"),
        (httpx.ConnectError("refused"), Transient, "ConnectError"),
        (httpx.RemoteProtocolError("peer closed"), Transient, "peer closed"),
        (httpx.UnsupportedProtocol("ftp"), Fatal, "ftp"),
    ],
)
def test_transport_errors_become_taxonomy(
    exc: Exception, expected: type[ProviderError], text: str
) -> None:
    with pytest.raises(expected, match=text) as err, http.transport_errors("acct", "clone"):
        raise exc
    assert err.value.provider == "acct"
    assert err.value.__cause__ is exc


def test_transport_errors_let_other_exceptions_through() -> None:
    with pytest.raises(KeyError), http.transport_errors("acct", "clone"):
        raise KeyError("x")


@pytest.mark.parametrize(
    ("asked", "expected"),
    [
        (0, 24000),
        (-1, 24000),
        (16000, 16000),
        (19000, 16000),
        (19025, 22050),
        (23025, 24000),
        (96000, 44100),
    ],
)
def test_nearest_rate(asked: int, expected: int) -> None:
    assert http.nearest_rate(asked, (16000, 22050, 24000, 44100), default=24000) == expected


def test_nearest_rate_breaks_ties_upwards() -> None:
    assert http.nearest_rate(20000, (16000, 24000), default=16000) == 24000


def test_sample_aligner_keeps_whole_samples_in_order() -> None:
    aligner = http.SampleAligner()
    pieces = [b"\x01", b"\x02\x03\x04\x05", b"", b"\x06\x07", b"\x08"]

    out = [aligner.feed(p) for p in pieces]

    assert out == [b"", b"\x01\x02\x03\x04", b"", b"\x05\x06", b"\x07\x08"]
    assert all(len(o) % 2 == 0 for o in out)
    assert aligner.pending == 0


def test_sample_aligner_reports_a_dangling_byte() -> None:
    aligner = http.SampleAligner()
    assert aligner.feed(b"abc") == b"ab"
    assert aligner.pending == 1


def test_sse_decoder_events_comments_and_multiline_data() -> None:
    decoder = http.SseDecoder()
    lines = [
        ": keep-alive",
        "event: chunk",
        'data: {"a":',
        "data: 1}",
        "",
        "",
        "data:no-space",
        "id: 7",
        "",
        "event: done",
    ]

    events = [e for e in (decoder.feed(line) for line in lines) if e is not None]

    assert events == [
        http.SseEvent(event="chunk", data='{"a":\n1}'),
        http.SseEvent(event="message", data="no-space"),
    ]
    assert decoder.flush() is None  # an event line without data dispatches nothing


def test_sse_decoder_flushes_an_unterminated_last_event() -> None:
    decoder = http.SseDecoder()
    assert decoder.feed("data: tail") is None
    assert decoder.flush() == http.SseEvent(event="message", data="tail")


@pytest.mark.parametrize(
    ("name", "content_type"),
    [
        ("s.wav", "audio/wav"),
        ("S.FLAC", "audio/flac"),
        ("a.ogg", "audio/ogg"),
        ("x", "application/octet-stream"),
    ],
)
def test_sample_content_type(name: str, content_type: str) -> None:
    assert http.sample_content_type(name) == content_type


def test_body_helpers() -> None:
    assert http.json_or_none(b'{"a": 1}') == {"a": 1}
    assert http.json_or_none(b"Invalid API key") is None
    assert http.json_or_none(b"\xff\xfe") is None
    assert http.body_text(b"x" * 600, limit=10) == "x" * 9 + "…"


async def test_build_client_has_the_timeout_and_no_base_url() -> None:
    client = http.build_client(timeout_s=3.5)
    try:
        assert client.timeout == httpx.Timeout(3.5)
        assert str(client.base_url) == ""
    finally:
        await client.aclose()
