"""Audio in and out of the local engine, as plain numpy.

Samples arrive as uploaded files (WAV/FLAC/OGG); soundfile decodes them in memory, so no
temporary file is ever written. Audio leaves as 16-bit signed little-endian mono PCM, the
format every provider hands across ``base.Provider``.
"""

from __future__ import annotations

import io

import numpy as np
import soundfile as sf

from voiceslot.providers.errors import InvalidInput

MIN_SAMPLE_SECONDS = 0.5
"""Shorter samples carry too little voice to clone (XTTS itself refuses under 0.33 s)."""


def decode_sample(
    data: bytes, *, min_seconds: float = MIN_SAMPLE_SECONDS
) -> tuple[np.ndarray, int]:
    """Decode an uploaded sample to mono float32 in [-1, 1] and its sample rate.

    Raises ``InvalidInput`` for bytes that are not audio, and for samples too short or
    silent to clone from: bad input must never surface as an engine failure.
    """
    try:
        audio, rate = sf.read(io.BytesIO(data), dtype="float32", always_2d=True)
    except (sf.LibsndfileError, RuntimeError, TypeError, ValueError) as exc:
        raise InvalidInput(f"the voice sample is not readable audio: {exc}") from None
    mono = audio.mean(axis=1) if audio.shape[1] > 1 else audio[:, 0]
    if mono.size < min_seconds * rate:
        raise InvalidInput(
            f"the voice sample is {mono.size / rate:.2f} s long; at least {min_seconds:g} s is needed"
        )
    if not np.any(mono):
        raise InvalidInput("the voice sample is silent")
    return np.ascontiguousarray(mono, dtype=np.float32), int(rate)


def float_to_pcm16(audio: np.ndarray) -> bytes:
    """Float samples (nominally [-1, 1]) to 16-bit little-endian PCM bytes.

    Out-of-range samples are clipped rather than wrapped: a loud model output must saturate,
    not turn into full-scale clicks; NaN (a diverged model) becomes silence.
    """
    flat = np.nan_to_num(np.asarray(audio, dtype=np.float32).reshape(-1), nan=0.0)
    scaled = np.clip(flat, -1.0, 1.0) * 32767.0
    return np.rint(scaled).astype("<i2").tobytes()
