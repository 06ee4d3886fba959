"""Unary answers are sized before the work and after encoding (issue 15, item 4)."""

from __future__ import annotations

import pytest

from synth_svc.domain.formats import (
    OutputFormat,
    least_audio_seconds,
    too_large_for_one_message,
)
from voiceslot.audio import encode, min_bytes_per_second
from voiceslot.providers.base import PcmAudio

MIB = 1024 * 1024


def test_fits_or_names_the_streaming_call() -> None:
    fmt = OutputFormat("wav", 48000)
    assert too_large_for_one_message(16 * MIB, 16 * MIB, fmt, estimated=True) is None
    error = too_large_for_one_message(21 * MIB, 16 * MIB, fmt, estimated=False)
    assert error is not None
    assert error.field == "text"
    assert "SynthesizeStream" in error.description and "21.0 MiB" in error.description


def test_five_thousand_characters_of_48k_wav_cannot_fit_sixteen_mib() -> None:
    least = least_audio_seconds(5000) * min_bytes_per_second("wav", 48000)
    assert least > 16 * MIB


@pytest.mark.parametrize("encoding", ["wav", "pcm16", "mp3", "opus"])
@pytest.mark.parametrize("rate", [16000, 24000, 48000])
def test_min_bytes_per_second_is_a_lower_bound_of_encode(encoding: str, rate: int) -> None:
    seconds = 3
    silence = PcmAudio(b"\x00\x00" * rate * seconds, rate)
    assert len(encode(silence, encoding)) >= min_bytes_per_second(encoding, rate) * seconds * 0.9
