"""The pure parts of the live sessions and word timings: sentence attribution from
ElevenLabs alignments, Cartesia timestamps, per-line time origins, close codes and refused
handshakes mapped to the error taxonomy."""

from __future__ import annotations

import base64

import pytest
from websockets.datastructures import Headers
from websockets.exceptions import InvalidStatus, InvalidURI
from websockets.http11 import Response

from voiceslot.providers.cartesia import classify_error as cartesia_classify
from voiceslot.providers.elevenlabs import classify_error as elevenlabs_classify
from voiceslot.providers.elevenlabs_live import (
    Attribution,
    ElevenLabsLiveSession,
    alignment_of,
    classify_ws_error,
    live_url,
    visible_length,
)
from voiceslot.providers.errors import (
    AuthError,
    Fatal,
    InvalidInput,
    ProviderError,
    RateLimited,
    Transient,
    VoiceNotFound,
)
from voiceslot.providers.live_ws import LiveLimits, close_error, handshake_error, http_to_ws
from voiceslot.providers.timestamps import ElevenLabsTimedStream, cartesia_words, chunk_origin


def frame(text: str, *, step_ms: float = 10.0, start_ms: float = 0.0):
    """(chars, starts, durations) of a frame speaking ``text`` evenly."""
    chars = list(text)
    return chars, [start_ms + i * step_ms for i in range(len(chars))], [step_ms] * len(chars)


def test_frames_belong_to_the_sentence_of_their_first_character() -> None:
    attribution = Attribution()
    attribution.add_sentence("Hi there. ")
    attribution.add_sentence("Bye. ")

    first, words = attribution.feed(*frame("Hi the"), offset_s=0.0)
    assert (first, [w.word for w in words]) == (0, ["Hi"])
    second, words = attribution.feed(*frame("re. "), offset_s=0.06)
    assert (second, [w.word for w in words]) == (0, ["there."])
    # Trailing silence (no characters) still belongs to the sentence just spoken.
    assert attribution.feed([], [], [], offset_s=0.1)[0] == 0
    assert not attribution.complete
    third, words = attribution.feed(*frame("Bye. "), offset_s=0.2)
    assert (third, [w.word for w in words]) == (1, ["Bye."])
    assert attribution.complete


def test_a_word_split_across_frames_is_timed_from_its_first_to_its_last_character() -> None:
    attribution = Attribution()
    attribution.add_sentence("Wonderful day.")
    _, words = attribution.feed(*frame("Wonder"), offset_s=1.0)
    assert words == []
    _, words = attribution.feed(*frame("ful day."), offset_s=1.06)
    assert [w.word for w in words] == ["Wonderful", "day."]
    wonderful = words[0]
    assert wonderful.start_s == pytest.approx(1.0)
    assert wonderful.end_s == pytest.approx(1.06 + 0.03)


def test_attribution_ignores_how_the_provider_spaces_the_text() -> None:
    attribution = Attribution()
    attribution.add_sentence("One  two. ")
    attribution.add_sentence("Three.")
    # The alignment drops the double space and the trailing one.
    assert attribution.feed(*frame("One two."), offset_s=0.0)[0] == 0
    assert attribution.feed(*frame("Three."), offset_s=0.5)[0] == 1


def test_characters_beyond_what_was_said_stay_with_the_last_sentence() -> None:
    attribution = Attribution()
    attribution.add_sentence("A.")
    assert attribution.feed(*frame("A. extra"), offset_s=0.0)[0] == 0
    assert attribution.current == 0


def test_sentences_with_nothing_to_say_are_not_waited_for() -> None:
    attribution = Attribution()
    attribution.add_sentence("Hi.")
    attribution.add_sentence("  ")
    attribution.feed(*frame("Hi."), offset_s=0.0)
    assert attribution.complete
    attribution.add_sentence("Next.")
    assert not attribution.complete
    assert attribution.feed(*frame("Next."), offset_s=0.1)[0] == 2
    assert attribution.complete


def test_visible_length_counts_what_alignment_accounts_for() -> None:
    assert visible_length("  Hello,\tworld. ") == 12


def test_alignment_accepts_both_duration_spellings() -> None:
    new = {"alignment": {"chars": ["a"], "charStartTimesMs": [0], "charsDurationsMs": [5]}}
    old = {"normalizedAlignment": {"chars": ["a"], "charStartTimesMs": [0], "charDurationsMs": [5]}}
    plural = {"alignment": {"chars": ["a"], "charsStartTimesMs": [0], "charsDurationsMs": [5]}}
    assert alignment_of(new) == (["a"], [0], [5])
    assert alignment_of(plural) == (["a"], [0], [5])
    assert alignment_of(old) == (["a"], [0], [5])
    assert alignment_of({"alignment": None}) is None


def test_live_url_carries_the_documented_query() -> None:
    url = live_url(
        "wss://api.elevenlabs.io", "v/1", model_id="m", output_format="pcm_16000", language="de"
    )
    assert url.startswith("wss://api.elevenlabs.io/v1/text-to-speech/v%2F1/stream-input?")
    assert "output_format=pcm_16000" in url and "language_code=de" in url
    assert "inactivity_timeout=" in url


@pytest.mark.parametrize(
    ("base", "expected"),
    [("https://a.b/x", "wss://a.b/x"), ("http://127.0.0.1:9", "ws://127.0.0.1:9")],
)
def test_http_to_ws(base: str, expected: str) -> None:
    assert http_to_ws(base) == expected


@pytest.mark.parametrize(
    ("code", "reason", "kind"),
    [
        (1008, "Invalid API key", AuthError),
        (1008, "Have not received a new text input within the timeout of 20 seconds.", Transient),
        (1008, "Messages must be JSON objects.", InvalidInput),
        (1013, "try again later", RateLimited),
        (1009, "too big", InvalidInput),
        (1011, "internal error", Transient),
        (None, "", Transient),
        (1000, "", Transient),
    ],
)
def test_close_codes_map_to_the_taxonomy(
    code: int | None, reason: str, kind: type[ProviderError]
) -> None:
    assert type(close_error(code, reason, provider="p")) is kind


@pytest.mark.parametrize(
    ("message", "kind"),
    [
        ({"message": "Invalid API key", "error": "invalid_api_key"}, AuthError),
        ({"message": "Quota exceeded", "error": "quota_exceeded"}, AuthError),
        ({"message": "Too many concurrent requests", "error": "rate_limited"}, RateLimited),
        (
            {"message": "A voice with that id was not found", "error": "voice_not_found"},
            VoiceNotFound,
        ),
        ({"message": "Text too long", "error": "invalid_request"}, InvalidInput),
        ({"message": "Something broke"}, Fatal),
    ],
)
def test_elevenlabs_error_frames_map_to_the_taxonomy(
    message: dict[str, str], kind: type[ProviderError]
) -> None:
    assert type(classify_ws_error(message, provider="p")) is kind


def refused(status: int, body: bytes, retry_after: str | None = None) -> InvalidStatus:
    headers = Headers({"Retry-After": retry_after} if retry_after else {})
    return InvalidStatus(Response(status, "refused", headers, body))


def test_refused_handshakes_use_the_providers_http_classifiers() -> None:
    def eleven(status: int, body: bytes, retry_after: float | None) -> ProviderError:
        return elevenlabs_classify(status, body, provider="el", retry_after=retry_after)

    def cartesia(status: int, body: bytes, retry_after: float | None) -> ProviderError:
        return cartesia_classify(status, body, provider="ca", retry_after=retry_after)

    auth = handshake_error(
        refused(401, b'{"detail": {"status": "invalid_api_key", "message": "bad"}}'),
        provider="el",
        classify=eleven,
    )
    assert isinstance(auth, AuthError)
    limited = handshake_error(refused(429, b"Too many", "3"), provider="ca", classify=cartesia)
    assert isinstance(limited, RateLimited) and limited.retry_after == 3.0
    assert isinstance(
        handshake_error(refused(503, b""), provider="ca", classify=cartesia), Transient
    )
    assert isinstance(handshake_error(TimeoutError(), provider="ca", classify=cartesia), Transient)
    assert isinstance(
        handshake_error(ConnectionRefusedError(), provider="ca", classify=cartesia), Transient
    )
    assert isinstance(
        handshake_error(InvalidURI("x", "bad"), provider="ca", classify=cartesia), Fatal
    )


def test_cartesia_words_are_shifted_and_malformed_entries_dropped() -> None:
    payload = {
        "type": "timestamps",
        "word_timestamps": {"words": ["a", "b", "c"], "start": [0, "x", 1.0], "end": [0.5, 1, 1.5]},
    }
    words = cartesia_words(payload, origin_s=2.0)
    assert [(w.word, w.start_s, w.end_s) for w in words] == [("a", 2.0, 2.5), ("c", 3.0, 3.5)]
    assert cartesia_words({"word_timestamps": None}) == []


@pytest.mark.parametrize(
    ("first_start", "before", "origin"),
    [(0.0, 0.0, 0.0), (1.98, 2.0, 0.0), (2.0, 2.0, 0.0), (0.01, 2.0, 2.0), (0.0, 0.4, 0.4)],
)
def test_chunk_origin_tells_cumulative_from_per_line_times(
    first_start: float, before: float, origin: float
) -> None:
    assert chunk_origin(first_start, before) == origin


def test_elevenlabs_timed_stream_handles_per_line_times() -> None:
    stream = ElevenLabsTimedStream("ab cd", sample_rate=1000, provider="p")
    one_second = base64.b64encode(b"\0\0" * 1000).decode()

    def line(chars: str, starts: list[float]) -> dict[str, object]:
        return {
            "audio_base64": one_second,
            "alignment": {
                "characters": list(chars),
                "character_start_times_seconds": starts,
                "character_end_times_seconds": [s + 0.1 for s in starts],
            },
        }

    _, words = stream.feed(line("ab ", [0.0, 0.1, 0.2]))
    assert [(w.word, w.start_s) for w in words] == [("ab", 0.0)]
    # The second line's times restart at 0: they count from its own start (1 s in).
    _, words = stream.feed(line("cd", [0.0, 0.1]))
    assert [(w.word, w.start_s, round(w.end_s, 3)) for w in words] == [("cd", 1.0, 1.2)]


async def test_a_session_with_a_malformed_url_fails_fatally() -> None:
    session = ElevenLabsLiveSession(
        provider="p",
        url="not a url",
        api_key="k",
        sample_rate=16000,
        voice_settings={},
        word_timings=False,
        classify=lambda status, body, retry: Fatal("unused"),
        limits=LiveLimits(connect_timeout_s=1.0),
    )
    try:
        with pytest.raises(Fatal):
            await session.say("Hello.")
    finally:
        await session.aclose()
