"""The emulator's audio: deterministic, text-length-shaped, voice-specific, and valid in
every output format it claims to serve."""

from __future__ import annotations

import io

import numpy as np
import pytest
import soundfile as sf

from voiceslot.testing.emulator import audio
from voiceslot.testing.samples import make_sample_wav


def test_rendering_is_deterministic_and_voice_specific() -> None:
    one = audio.render_speech("hello world", voice_key="a", sample_rate=16000)
    again = audio.render_speech("hello world", voice_key="a", sample_rate=16000)
    other = audio.render_speech("hello world", voice_key="b", sample_rate=16000)

    assert np.array_equal(one, again)
    assert not np.array_equal(one, other)
    assert one.dtype == np.float32 and float(np.max(np.abs(one))) <= 0.8 + 1e-6


def test_length_follows_the_text_within_bounds() -> None:
    assert audio.speech_seconds("") == audio.MIN_SECONDS
    assert audio.speech_seconds("x" * 100) == pytest.approx(4.5)
    assert audio.speech_seconds("x" * 100_000) == audio.MAX_SECONDS
    rendered = audio.render_speech("x" * 100, voice_key="a", sample_rate=8000)
    assert rendered.size == 36000


def test_voice_pitch_is_in_a_speaking_range() -> None:
    pitches = {audio.voice_pitch(str(i)) for i in range(50)}
    assert all(90 <= p < 250 for p in pitches) and len(pitches) > 40


def test_pcm16_is_little_endian_and_clipped() -> None:
    pcm = audio.to_pcm16(np.array([0.0, 1.0, -1.0, 2.0], dtype=np.float32))
    assert np.frombuffer(pcm, "<i2").tolist() == [0, 32767, -32767, 32767]


@pytest.mark.parametrize(
    ("container", "encoding", "subtype"),
    [
        ("wav", "pcm_s16le", "PCM_16"),
        ("wav", "pcm_f32le", "FLOAT"),
        ("wav", "pcm_mulaw", "ULAW"),
        ("wav", "pcm_alaw", "ALAW"),
        ("mp3", "", "MPEG_LAYER_III"),
        ("ogg", "opus", "OPUS"),
    ],
)
def test_encoded_files_decode_at_the_rate_asked(
    container: str, encoding: str, subtype: str
) -> None:
    rate = 48000 if container == "ogg" else 16000
    samples = audio.render_speech("format check", voice_key="a", sample_rate=rate)

    data = audio.encode(samples, sample_rate=rate, container=container, encoding=encoding)
    info = sf.info(io.BytesIO(data))

    assert info.samplerate == rate and info.subtype == subtype
    assert info.frames >= samples.size * 0.9


@pytest.mark.parametrize(
    ("encoding", "width"), [("pcm_s16le", 2), ("pcm_f32le", 4), ("pcm_mulaw", 1), ("pcm_alaw", 1)]
)
def test_raw_encodings_have_their_sample_width(encoding: str, width: int) -> None:
    samples = audio.render_speech("raw", voice_key="a", sample_rate=8000)
    data = audio.encode(samples, sample_rate=8000, container="raw", encoding=encoding)
    assert len(data) == samples.size * width


def test_unknown_formats_are_refused() -> None:
    samples = audio.render_speech("x", voice_key="a", sample_rate=8000)
    assert not audio.supported("flac", "pcm_s16le")
    with pytest.raises(ValueError):
        audio.encode(samples, sample_rate=8000, container="flac", encoding="pcm_s16le")


def test_is_audio_accepts_samples_and_rejects_junk() -> None:
    assert audio.is_audio(make_sample_wav(seconds=0.5))
    assert not audio.is_audio(b"definitely not audio")
    assert not audio.is_audio(b"")
