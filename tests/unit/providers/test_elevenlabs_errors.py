"""ElevenLabs' error bodies → the taxonomy (the table in providers/README.md), and the
adapter's other pure decisions."""

from __future__ import annotations

import json

import pytest

from voiceslot.providers import elevenlabs as el
from voiceslot.providers.base import Capacity
from voiceslot.providers.errors import (
    AddEditBudgetSpent,
    AuthError,
    CapacityFull,
    Fatal,
    InvalidInput,
    ProviderError,
    RateLimited,
    Transient,
    VoiceNotFound,
)


def detail(status: str, message: str) -> bytes:
    return json.dumps({"detail": {"status": status, "message": message}}).encode()


README_TABLE = [
    (400, detail("voice_limit_reached", "maximum amount of custom voices (10 / 10)"), CapacityFull),
    (400, detail("voice_add_edit_limit_reached", "monthly cap"), AddEditBudgetSpent),
    (400, detail("bad_request", "You cannot upload the same file twice."), InvalidInput),
    (401, detail("invalid_api_key", "Invalid API key"), AuthError),
    (401, detail("quota_exceeded", "This request exceeds your quota"), AuthError),
    (403, detail("can_not_use_instant_voice_cloning", "plan"), AuthError),
    (404, detail("voice_not_found", "A voice with the voice_id x was not found."), VoiceNotFound),
    (429, detail("too_many_concurrent_requests", "Too many concurrent requests"), RateLimited),
    (429, detail("system_busy", "high traffic"), RateLimited),
    (500, detail("internal_error", "oops"), Transient),
    (503, b"<html>Service Unavailable</html>", Transient),
    (
        422,
        json.dumps(
            {"detail": [{"loc": ["body", "text"], "msg": "Field required", "type": "missing"}]}
        ).encode(),
        InvalidInput,
    ),
    (400, detail("max_character_limit_exceeded", "too long"), InvalidInput),
    (409, detail("conflict", "?"), Fatal),
]


@pytest.mark.parametrize(("status", "body", "expected"), README_TABLE)
def test_classify_error_follows_the_readme_table(
    status: int, body: bytes, expected: type[ProviderError]
) -> None:
    error = el.classify_error(status, body, provider="el", retry_after=3.0, voice_scoped=True)

    assert type(error) is expected
    assert error.status_code == status and error.provider == "el" and error.retry_after == 3.0


def test_classification_uses_the_code_not_only_the_status() -> None:
    """voice_limit_reached is retryable (a slot frees up); the add/edit cap is not."""
    full = el.classify_error(400, detail("voice_limit_reached", "m"), provider="el")
    spent = el.classify_error(400, detail("voice_add_edit_limit_reached", "m"), provider="el")
    assert full.retryable and not spent.retryable


def test_404_outside_a_voice_is_fatal() -> None:
    error = el.classify_error(404, b'{"detail": "Not Found"}', provider="el")
    assert type(error) is Fatal


def test_message_carries_code_message_and_request_id() -> None:
    error = el.classify_error(
        429, detail("system_busy", "Busy now"), provider="el", request_id="req-1"
    )
    assert error.message == "system_busy: Busy now (request-id req-1)"


@pytest.mark.parametrize(
    ("body", "code", "message"),
    [
        (detail("x_code", "x message"), "x_code", "x message"),
        (b'{"detail": {"code": "newer_shape", "message": "m"}}', "newer_shape", "m"),
        (b'{"detail": "plain detail"}', "", "plain detail"),
        (
            b'{"detail": [{"loc": ["body", "name"], "msg": "Field required", "type": "missing"}]}',
            "validation_error",
            "body.name: Field required",
        ),
        (b"upstream connect error", "", "upstream connect error"),
        (b"", "", "(empty body)"),
    ],
)
def test_parse_error_body_shapes(body: bytes, code: str, message: str) -> None:
    assert el.parse_error_body(body) == (code, message)


@pytest.mark.parametrize(
    ("subscription", "configured", "expected"),
    [
        (
            {
                "voice_limit": 30,
                "voice_slots_used": 4,
                "max_voice_add_edits": 95,
                "voice_add_edit_counter": 90,
            },
            None,
            Capacity(limit=30, used=4, add_edit_remaining=5),
        ),
        (
            {
                "voice_limit": 10,
                "voice_slots_used": 10,
                "max_voice_add_edits": None,
                "voice_add_edit_counter": 3,
            },
            None,
            Capacity(limit=10, used=10, add_edit_remaining=None),
        ),
        (
            {
                "voice_limit": 30,
                "voice_slots_used": 2,
                "max_voice_add_edits": 5,
                "voice_add_edit_counter": 9,
            },
            8,
            Capacity(limit=8, used=2, add_edit_remaining=0),
        ),
        ({"voice_limit": 10, "voice_slots_used": 0}, 50, Capacity(limit=10, used=0)),
    ],
)
def test_capacity_from_subscription(
    subscription: dict[str, object], configured: int | None, expected: Capacity
) -> None:
    assert el.capacity_from_subscription(subscription, configured_limit=configured) == expected


@pytest.mark.parametrize(
    ("rate", "fmt"),
    [
        (0, ("pcm_24000", 24000)),
        (16000, ("pcm_16000", 16000)),
        (44100, ("pcm_44100", 44100)),
        (32000, ("pcm_24000", 24000)),
    ],
)
def test_output_format_for(rate: int, fmt: tuple[str, int]) -> None:
    assert el.output_format_for(rate) == fmt


@pytest.mark.parametrize(
    ("model", "cap", "language"),
    [
        ("eleven_multilingual_v2", 10_000, False),
        ("eleven_flash_v2_5", 40_000, True),
        ("eleven_turbo_v2_5", 40_000, True),
        ("eleven_v3", 3_000, True),
    ],
)
def test_model_caps_and_language_support(model: str, cap: int, language: bool) -> None:
    assert el.character_cap(model) == cap
    assert el.supports_language_code(model) is language


def test_labels_and_matching() -> None:
    ours = {
        "voice_id": "a",
        "name": "vs-x-g1",
        "labels": {"voiceslot_label": "vs-x-g1"},
        "category": "cloned",
    }
    by_hand = {
        "voice_id": "b",
        "name": "Grandpa",
        "labels": {"accent": "british"},
        "category": "cloned",
    }
    premade = {"voice_id": "c", "name": "Rachel", "labels": {}, "category": "premade"}

    assert el.label_of(ours) == "vs-x-g1" and el.label_of(by_hand) is None
    assert el.matches_label(ours, "vs-x-g1") and not el.matches_label(ours, "vs-x-g")
    assert el.is_custom(ours) and el.is_custom(by_hand) and not el.is_custom(premade)
    assert el.to_remote_voice(by_hand).label is None
