"""Synthetic voice samples: speech-like audio generated from numbers, so tests and demos
need no recording. A vowel-like harmonic series with a wandering pitch and a syllable
envelope is enough for the engines' speaker encoders to produce stable embeddings."""

from __future__ import annotations

import io

import numpy as np
import soundfile as sf


def make_sample_wav(
    *, seconds: float = 3.0, sample_rate: int = 22050, pitch_hz: float = 140.0, seed: int = 0
) -> bytes:
    """A mono 16-bit WAV of ``seconds`` of voiced, syllable-shaped sound."""
    rng = np.random.default_rng(seed)
    t = np.arange(int(seconds * sample_rate)) / sample_rate
    pitch = pitch_hz * (1 + 0.08 * np.sin(2 * np.pi * 0.7 * t + rng.uniform(0, np.pi)))
    phase = 2 * np.pi * np.cumsum(pitch) / sample_rate
    voice = sum(np.sin(k * phase) / k for k in range(1, 12))
    syllables = 0.5 * (1 - np.cos(2 * np.pi * 3.5 * t)) ** 2
    audio = 0.3 * voice * syllables + 0.005 * rng.standard_normal(t.size)
    audio = audio / max(1e-9, float(np.max(np.abs(audio)))) * 0.8
    buf = io.BytesIO()
    sf.write(buf, audio.astype(np.float32), sample_rate, format="WAV", subtype="PCM_16")
    return buf.getvalue()
