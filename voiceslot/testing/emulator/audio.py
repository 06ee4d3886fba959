"""Audio the emulator "speaks": deterministic, speech-shaped, in the formats asked for.

Real engines are not needed to test adapters; what matters is that the audio is valid in
the requested format and rate, has a length that grows with the text, differs between
voices, and is identical for identical requests (so a test can compare a streamed
rendering with a unary one byte for byte). Pure functions of their arguments.
"""

from __future__ import annotations

import hashlib
import io

import numpy as np
import soundfile as sf

SECONDS_PER_CHAR = 0.045
MIN_SECONDS = 0.25
MAX_SECONDS = 120.0


def voice_pitch(voice_key: str) -> float:
    """A stable pitch in 90–250 Hz for a voice (from its sample's hash or its id)."""
    digest = hashlib.sha256(voice_key.encode()).digest()
    return 90.0 + (int.from_bytes(digest[:4], "big") % 1600) / 10.0


def speech_seconds(text: str, *, speed: float = 1.0) -> float:
    """How long ``text`` takes at ``speed`` (a multiple of the normal rate)."""
    return min(MAX_SECONDS, max(MIN_SECONDS, SECONDS_PER_CHAR * len(text) / speed))


def render_speech(
    text: str, *, voice_key: str, sample_rate: int, seed: int = 0, speed: float = 1.0
) -> np.ndarray:
    """Mono float32 audio in [-0.8, 0.8]: a voiced tone with syllable envelopes whose
    pitch is the voice's and whose length follows the text (shorter at a higher
    ``speed``, so a test can hear that a speed reached the provider)."""
    n = int(round(speech_seconds(text, speed=speed) * sample_rate))
    t = np.arange(n, dtype=np.float64) / sample_rate
    base = voice_pitch(voice_key)
    wobble = (
        int.from_bytes(hashlib.sha256(f"{text}|{seed}".encode()).digest()[:2], "big") % 628
    ) / 100
    pitch = base * (1 + 0.06 * np.sin(2 * np.pi * 0.9 * t + wobble))
    phase = 2 * np.pi * np.cumsum(pitch) / sample_rate
    voiced = sum(np.sin(k * phase) / k for k in range(1, 8))
    syllables = 0.5 * (1 - np.cos(2 * np.pi * 4.0 * t)) ** 2
    audio = voiced * syllables
    peak = float(np.max(np.abs(audio))) if n else 0.0
    if peak > 0:
        audio = audio / peak * 0.8
    return audio.astype(np.float32)


def to_pcm16(audio: np.ndarray) -> bytes:
    """16-bit signed little-endian PCM."""
    return (np.clip(audio, -1.0, 1.0) * 32767.0).round().astype("<i2").tobytes()


# (container, encoding) → (soundfile format, subtype). Cartesia's encodings name raw
# sample formats; ElevenLabs' ulaw_8000 is raw μ-law.
_FORMATS: dict[tuple[str, str], tuple[str, str]] = {
    ("raw", "pcm_s16le"): ("RAW", "PCM_16"),
    ("raw", "pcm_f32le"): ("RAW", "FLOAT"),
    ("raw", "pcm_mulaw"): ("RAW", "ULAW"),
    ("raw", "pcm_alaw"): ("RAW", "ALAW"),
    ("wav", "pcm_s16le"): ("WAV", "PCM_16"),
    ("wav", "pcm_f32le"): ("WAV", "FLOAT"),
    ("wav", "pcm_mulaw"): ("WAV", "ULAW"),
    ("wav", "pcm_alaw"): ("WAV", "ALAW"),
    ("mp3", ""): ("MP3", "MPEG_LAYER_III"),
    ("ogg", "opus"): ("OGG", "OPUS"),
}


def supported(container: str, encoding: str = "") -> bool:
    return (container, encoding if container != "mp3" else "") in _FORMATS


def encode(audio: np.ndarray, *, sample_rate: int, container: str, encoding: str = "") -> bytes:
    """``audio`` in a container/encoding pair (see ``_FORMATS``)."""
    if container == "raw" and encoding == "pcm_s16le":
        return to_pcm16(audio)  # the hot path, without a soundfile round trip
    key = (container, encoding if container != "mp3" else "")
    if key not in _FORMATS:
        raise ValueError(f"unsupported output format {container}/{encoding}")
    fmt, subtype = _FORMATS[key]
    buf = io.BytesIO()
    sf.write(buf, audio, sample_rate, format=fmt, subtype=subtype)
    return buf.getvalue()


def is_audio(data: bytes) -> bool:
    """Whether ``data`` is an audio file soundfile can read (used to vet clone samples)."""
    try:
        info = sf.info(io.BytesIO(data))
    except (sf.LibsndfileError, RuntimeError, TypeError, ValueError):
        return False
    return info.frames > 0
