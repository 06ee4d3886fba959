"""Pure pieces of the local engine: samples in, PCM out, text and language checks, error
classification."""

from __future__ import annotations

import io

import numpy as np
import pytest
import soundfile as sf
import torch

from voiceslot.providers.errors import Fatal, InvalidInput, Transient, VoiceNotFound
from voiceslot.providers.local.engine import check_text, classify_engine_error
from voiceslot.providers.local.models import xtts_language
from voiceslot.providers.local.pcm import decode_sample, float_to_pcm16
from voiceslot.testing.samples import make_sample_wav


def wav_bytes(audio: np.ndarray, rate: int) -> bytes:
    buffer = io.BytesIO()
    sf.write(buffer, audio, rate, format="WAV", subtype="FLOAT")
    return buffer.getvalue()


def test_pcm16_scales_clips_and_silences_nan() -> None:
    audio = np.array([0.0, 0.25, -0.25, 1.0, -1.0, 3.0, -3.0, np.nan], dtype=np.float32)
    samples = np.frombuffer(float_to_pcm16(audio), dtype="<i2")
    expected = np.rint(np.clip(np.nan_to_num(audio), -1, 1) * 32767).astype(np.int16)
    assert samples.tolist() == expected.tolist()
    assert samples[3] == 32767 and samples[5] == 32767 and samples[6] == -32767
    assert samples[7] == 0


def test_a_sample_decodes_to_mono_float_at_its_own_rate() -> None:
    rate = 16000
    t = np.arange(rate) / rate
    left = 0.5 * np.sin(2 * np.pi * 220 * t)
    stereo = np.stack([left, np.zeros_like(left)], axis=1).astype(np.float32)

    audio, decoded_rate = decode_sample(wav_bytes(stereo, rate))
    assert decoded_rate == rate
    assert audio.dtype == np.float32 and audio.ndim == 1 and audio.size == rate
    np.testing.assert_allclose(audio, left / 2, atol=1e-6)  # channels averaged

    generated, generated_rate = decode_sample(make_sample_wav(seconds=1.0))
    assert generated_rate == 22050 and generated.size == 22050


@pytest.mark.parametrize(
    ("data", "complaint"),
    [
        (b"RIFF but not really a wave file", "not readable audio"),
        (wav_bytes(np.full(1000, 0.1, dtype=np.float32), 16000), "at least"),
        (wav_bytes(np.zeros(16000, dtype=np.float32), 16000), "silent"),
    ],
)
def test_unusable_samples_are_invalid_input(data: bytes, complaint: str) -> None:
    with pytest.raises(InvalidInput, match=complaint):
        decode_sample(data)


def test_bcp47_tags_map_to_xtts_languages() -> None:
    supported = ["en", "pt", "zh-cn"]
    assert xtts_language("en-US", supported) == "en"
    assert xtts_language("pt_BR", supported) == "pt"
    assert xtts_language("zh", supported) == "zh-cn"
    assert xtts_language("zh-CN", supported) == "zh-cn"
    with pytest.raises(InvalidInput, match="not supported"):
        xtts_language("fr", supported)


def test_text_must_be_present_and_bounded() -> None:
    check_text("Hello.", max_chars=10)
    for text in ("", "   "):
        with pytest.raises(InvalidInput, match="empty"):
            check_text(text, max_chars=10)
    with pytest.raises(InvalidInput, match="split it into sentences"):
        check_text("x" * 11, max_chars=10)


def test_engine_errors_map_onto_the_taxonomy() -> None:
    assert isinstance(classify_engine_error(AssertionError("too long"), provider="p"), InvalidInput)
    oom = classify_engine_error(torch.OutOfMemoryError("CUDA out of memory"), provider="p")
    assert isinstance(oom, Transient) and oom.retryable
    broken = classify_engine_error(RuntimeError("shape mismatch"), provider="p")
    assert isinstance(broken, Fatal) and "RuntimeError: shape mismatch" in broken.message
    known = VoiceNotFound("gone")
    assert classify_engine_error(known, provider="p") is known and known.provider == "p"
    leaving = GeneratorExit()
    assert classify_engine_error(leaving, provider="p") is leaving
