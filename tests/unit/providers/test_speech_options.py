"""Per-request speech options: the wire form to the domain, each engine's rules, and what
each adapter puts in the provider's request. Pure: no I/O."""

from __future__ import annotations

import math
from pathlib import Path

import pytest
import yaml

from synth_svc.options import speech_options_from_proto
from voiceslot.config import ProviderConfig
from voiceslot.errors import InvalidArgument
from voiceslot.providers import cartesia, elevenlabs
from voiceslot.providers.base import SpeechOptions
from voiceslot.providers.local import engine as local_engine
from voiceslot.providers.options import check_against, check_finite, set_options
from voiceslot.v1 import synthesizer_pb2 as pb

OPENAPI = Path(__file__).resolve().parents[2] / "contracts" / "openapi"


def refused(options: SpeechOptions, rules) -> InvalidArgument:
    with pytest.raises(InvalidArgument) as caught:
        check_against(options, rules)
    return caught.value


def test_unset_proto_options_keep_every_engine_default() -> None:
    options = speech_options_from_proto(pb.SpeechOptions())
    assert options == SpeechOptions()
    assert set_options(options) == []


def test_proto_options_are_carried_as_sent_including_explicit_zeros() -> None:
    message = pb.SpeechOptions(
        speed=1.1,
        word_timings=True,
        elevenlabs=pb.ElevenLabsVoiceSettings(
            stability=0.0, similarity_boost=0.5, use_speaker_boost=False
        ),
        cartesia=pb.CartesiaVoiceControls(volume=1.5, emotion="calm"),
    )
    options = speech_options_from_proto(message)
    assert options.speed == pytest.approx(1.1)
    assert options.word_timings is True
    # optional fields: an explicit 0 / False is a setting, not "unset"
    assert options.stability == 0.0
    assert options.use_speaker_boost is False
    assert options.similarity_boost == pytest.approx(0.5)
    assert options.style is None
    assert options.volume == pytest.approx(1.5)
    assert options.emotion == "calm"


def test_a_negative_speed_is_kept_to_be_refused_by_name() -> None:
    options = speech_options_from_proto(pb.SpeechOptions(speed=-1.0))
    error = refused(options, elevenlabs.OPTION_RULES)
    assert error.field == "options.speed"


@pytest.mark.parametrize("value", [math.nan, math.inf, -math.inf])
@pytest.mark.parametrize("name", ["speed", "stability", "volume"])
def test_numbers_that_are_not_finite_are_refused_for_every_engine(name: str, value: float) -> None:
    with pytest.raises(InvalidArgument) as caught:
        check_finite(SpeechOptions(**{name: value}))
    assert caught.value.field.endswith(name)
    assert "finite" in caught.value.description


@pytest.mark.parametrize(
    ("rules", "options", "field"),
    [
        (elevenlabs.OPTION_RULES, SpeechOptions(volume=1.0), "options.cartesia.volume"),
        (elevenlabs.OPTION_RULES, SpeechOptions(emotion="calm"), "options.cartesia.emotion"),
        (cartesia.OPTION_RULES, SpeechOptions(stability=0.5), "options.elevenlabs.stability"),
        (
            cartesia.OPTION_RULES,
            SpeechOptions(use_speaker_boost=True),
            "options.elevenlabs.use_speaker_boost",
        ),
        (local_engine.OPTION_RULES, SpeechOptions(style=0.2), "options.elevenlabs.style"),
        (local_engine.OPTION_RULES, SpeechOptions(volume=1.2), "options.cartesia.volume"),
    ],
)
def test_an_option_the_engine_lacks_is_refused_by_its_path(rules, options, field) -> None:
    error = refused(options, rules)
    assert error.field == field
    assert "not supported" in error.description and rules.engine in error.description


@pytest.mark.parametrize(
    ("rules", "name", "inside", "outside"),
    [
        (elevenlabs.OPTION_RULES, "speed", (0.7, 1.2), (0.69, 1.21)),
        (elevenlabs.OPTION_RULES, "stability", (0.0, 1.0), (-0.01, 1.01)),
        (elevenlabs.OPTION_RULES, "similarity_boost", (0.0, 1.0), (-0.5, 2.0)),
        (elevenlabs.OPTION_RULES, "style", (0.0, 1.0), (-0.1, 1.5)),
        (cartesia.OPTION_RULES, "speed", (0.6, 1.5), (0.59, 1.51)),
        (cartesia.OPTION_RULES, "volume", (0.5, 2.0), (0.49, 2.01)),
        (local_engine.OPTION_RULES, "speed", (0.5, 2.0), (0.49, 2.01)),
    ],
)
def test_ranges_are_inclusive_and_refused_outside(rules, name, inside, outside) -> None:
    for value in inside:
        check_against(SpeechOptions(**{name: value}), rules)
    for value in outside:
        error = refused(SpeechOptions(**{name: value}), rules)
        assert error.field.endswith(name)
        assert f"{inside[0]:g}..{inside[1]:g}" in error.description


def test_word_timings_are_asked_of_every_engine_without_error() -> None:
    for rules in (elevenlabs.OPTION_RULES, cartesia.OPTION_RULES, local_engine.OPTION_RULES):
        check_against(SpeechOptions(word_timings=True), rules)


def test_cartesia_emotions_are_exactly_the_apis_enum() -> None:
    spec = yaml.safe_load((OPENAPI / "cartesia-openapi.yaml").read_text())
    assert set(spec["components"]["schemas"]["Emotion"]["enum"]) == cartesia.EMOTIONS
    check_against(SpeechOptions(emotion="calm"), cartesia.OPTION_RULES)
    error = refused(SpeechOptions(emotion="furious\u200b" * 40), cartesia.OPTION_RULES)
    assert error.field == "options.cartesia.emotion"
    assert "\u200b" not in error.description  # quoted short and ASCII-safe
    assert len(error.description) < 1024


def test_elevenlabs_voice_settings_carry_only_what_was_set() -> None:
    assert elevenlabs.voice_settings(SpeechOptions()) == {}
    assert elevenlabs.voice_settings(
        SpeechOptions(speed=1.1, stability=0.0, use_speaker_boost=False)
    ) == {"speed": 1.1, "stability": 0.0, "use_speaker_boost": False}


def test_cartesia_generation_config_carries_only_what_was_set() -> None:
    assert cartesia.generation_config(SpeechOptions()) == {}
    assert cartesia.generation_config(SpeechOptions(speed=0.8, emotion="sad")) == {
        "speed": 0.8,
        "emotion": "sad",
    }


def test_cartesia_refuses_controls_a_pre_sonic_3_model_would_ignore() -> None:
    def account(model_id: str) -> cartesia.CartesiaProvider:
        return cartesia.CartesiaProvider(
            ProviderConfig(name="c", kind="cartesia", api_key="k", model_id=model_id)
        )

    account("sonic-3").check_options(SpeechOptions(speed=1.2))
    account("sonic-2").check_options(SpeechOptions())  # nothing asked: nothing refused
    with pytest.raises(InvalidArgument) as caught:
        account("sonic-2").check_options(SpeechOptions(emotion="calm"))
    assert caught.value.field == "options" and "sonic-2" in caught.value.description


def test_local_engine_passes_speed_only_when_set() -> None:
    assert local_engine.speed_arguments(SpeechOptions()) == {}
    assert local_engine.speed_arguments(SpeechOptions(speed=1.5)) == {"speed": 1.5}


def test_float32_values_arrive_as_the_decimal_sent_so_range_ends_are_accepted() -> None:
    message = pb.SpeechOptions(speed=1.2, cartesia=pb.CartesiaVoiceControls(volume=0.5))
    assert message.speed != 1.2  # what 32 bits make of it
    options = speech_options_from_proto(message)
    assert options.speed == 1.2 and options.volume == 0.5
    check_against(SpeechOptions(speed=options.speed), elevenlabs.OPTION_RULES)
