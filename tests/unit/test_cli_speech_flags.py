"""``say``'s speech flags as wire options: unset flags stay unset, explicit zeros and
``--no-speaker-boost`` are settings."""

from __future__ import annotations

from synth_svc.options import speech_options_from_proto
from voiceslot.cli.speech_flags import speech_options
from voiceslot.providers.base import SpeechOptions


def test_no_flags_are_no_options() -> None:
    assert speech_options_from_proto(speech_options()) == SpeechOptions()


def test_each_flag_lands_in_its_provider_section() -> None:
    wire = speech_options(
        speed=1.1, stability=0.0, speaker_boost=False, volume=1.5, emotion="calm", style=0.2
    )
    assert wire.elevenlabs.HasField("stability") and wire.elevenlabs.stability == 0.0
    assert wire.elevenlabs.HasField("use_speaker_boost") and not wire.elevenlabs.use_speaker_boost
    assert not wire.elevenlabs.HasField("similarity_boost")
    assert speech_options_from_proto(wire) == SpeechOptions(
        speed=1.1,
        stability=0.0,
        style=0.2,
        use_speaker_boost=False,
        volume=1.5,
        emotion="calm",
    )
