"""Sample validation, resampling, whole-file and streaming encoding."""

from __future__ import annotations

import gc
import io
import math
import os
import random
import struct
import threading

import numpy as np
import pytest
import soundfile as sf

from voiceslot.audio import (
    ENCODINGS,
    AudioError,
    EmptyAudio,
    StreamEncoder,
    decode,
    encode,
    is_silent,
    resample,
    supported_rate,
    validate_sample,
)
from voiceslot.errors import InvalidArgument, PayloadTooLarge
from voiceslot.providers.base import PcmAudio
from voiceslot.testing.samples import make_sample_wav

MAX_BYTES = 10 * 1024 * 1024


def speech(seconds: float = 2.0, rate: int = 24000, *, seed: int = 0) -> PcmAudio:
    """Speech-like engine output."""
    wav = make_sample_wav(seconds=seconds, sample_rate=rate, seed=seed)
    samples, _ = sf.read(io.BytesIO(wav), dtype="int16")
    return PcmAudio(samples.astype("<i2").tobytes(), rate)


def pcm_of(samples: np.ndarray, rate: int) -> PcmAudio:
    return PcmAudio(np.asarray(samples, dtype="<i2").tobytes(), rate)


def as_float(pcm: PcmAudio) -> np.ndarray:
    return np.frombuffer(pcm.pcm16, dtype="<i2").astype(np.float32) / 32768


def write(samples: np.ndarray, rate: int, **kwargs: str) -> bytes:
    buf = io.BytesIO()
    sf.write(buf, samples, rate, **kwargs)
    return buf.getvalue()


def chunks(pcm: PcmAudio, sizes: list[int]) -> list[PcmAudio]:
    """``pcm`` cut at the given sample counts, cycling through them."""
    out, pos, i = [], 0, 0
    total = len(pcm.pcm16) // 2
    while pos < total:
        n = sizes[i % len(sizes)]
        out.append(PcmAudio(pcm.pcm16[2 * pos : 2 * (pos + n)], pcm.sample_rate))
        pos += n
        i += 1
    return out


def stream_encode(encoding: str, parts: list[PcmAudio], *, output_rate: int = 0) -> bytes:
    encoder = StreamEncoder(encoding, input_rate=parts[0].sample_rate, output_rate=output_rate)
    pieces = [encoder.start()]
    pieces += [encoder.feed(part) for part in parts]
    pieces.append(encoder.finish())
    return b"".join(pieces)


def aligned_error(
    signal: np.ndarray, reference: np.ndarray, *, max_lag: int = 2000
) -> tuple[int, float]:
    """Best lag of ``signal`` against ``reference`` and the RMS error there, relative to
    the reference's RMS."""
    n = min(len(reference), len(signal) - max_lag)
    ref = reference[:n]
    errors = [float(np.mean((signal[lag : lag + n] - ref) ** 2)) for lag in range(max_lag)]
    lag = int(np.argmin(errors))
    return lag, math.sqrt(errors[lag]) / math.sqrt(float(np.mean(ref**2)))


def no_pipe_threads() -> bool:
    return not any(t.name == "audio-pipe" for t in threading.enumerate())


# --- validate_sample -------------------------------------------------------------------


@pytest.mark.parametrize(
    ("fmt", "subtype", "expected"),
    [
        ("WAV", "PCM_16", "wav"),
        ("WAV", "FLOAT", "wav"),
        ("FLAC", "PCM_16", "flac"),
        ("OGG", "VORBIS", "ogg"),
        ("MP3", "MPEG_LAYER_III", "mp3"),
    ],
)
def test_accepts_common_formats(fmt: str, subtype: str, expected: str) -> None:
    samples = as_float(speech(3.0, 24000))
    data = write(samples, 24000, format=fmt, subtype=subtype)
    info = validate_sample(data, max_bytes=MAX_BYTES)
    assert (info.format, info.sample_rate, info.channels) == (expected, 24000, 1)
    assert info.duration_s == pytest.approx(3.0, abs=0.1)


def test_accepts_ogg_opus_and_stereo() -> None:
    mono = as_float(speech(2.0, 48000))
    assert (
        validate_sample(
            write(mono, 48000, format="OGG", subtype="OPUS"), max_bytes=MAX_BYTES
        ).format
        == "ogg"
    )
    stereo = np.stack([mono, mono * 0.5], axis=1)
    info = validate_sample(
        write(stereo, 48000, format="WAV", subtype="PCM_16"), max_bytes=MAX_BYTES
    )
    assert info.channels == 2
    assert info.duration_s == pytest.approx(2.0)


def test_accepts_the_shared_test_sample(sample_wav: bytes) -> None:
    info = validate_sample(sample_wav, max_bytes=MAX_BYTES)
    assert info.format == "wav" and info.duration_s == pytest.approx(3.0)


def rejection(data: bytes, **limits: float) -> InvalidArgument:
    with pytest.raises(InvalidArgument) as info:
        validate_sample(data, max_bytes=MAX_BYTES, **limits)  # type: ignore[arg-type]
    assert info.value.field == "sample"
    return info.value


def test_rejects_empty() -> None:
    assert "empty" in rejection(b"").description


@pytest.mark.parametrize(
    "data",
    [
        b"hello, this is not audio" * 20,
        b"\x00" * 4096,
        b"RIFF\x10\x00\x00\x00WAVEjunk",
        b"%PDF-1.7\n" + b"x" * 500,
    ],
)
def test_rejects_non_audio(data: bytes) -> None:
    assert "not a readable audio file" in rejection(data).description


def test_rejects_truncated_file(sample_wav: bytes) -> None:
    # A WAV cut inside its header is not audio; cut inside the data it is only shorter.
    assert "not a readable" in rejection(sample_wav[:30]).description
    assert "at least" in rejection(sample_wav[:20000]).description


def test_rejects_too_short() -> None:
    data = write(as_float(speech(0.5, 16000)), 16000, format="WAV")
    message = rejection(data).description
    assert "0.50 s" in message and "at least 1 s" in message


def test_rejects_too_long() -> None:
    data = write(as_float(speech(3.0, 8000)), 8000, format="WAV")
    assert "longer than the maximum of 2.5 s" in rejection(data, max_seconds=2.5).description
    assert validate_sample(data, max_bytes=MAX_BYTES, max_seconds=3.0).duration_s == pytest.approx(
        3.0
    )


def test_rejects_small_file_that_unpacks_to_hours() -> None:
    # Ten minutes of silence compress to a few kB of FLAC; decoding stops at the limit
    # (the length is judged before the silence).
    data = write(np.zeros(8000 * 600, dtype=np.float32), 8000, format="FLAC")
    assert len(data) < 100_000
    assert "longer than" in rejection(data).description


def test_rejects_zero_sample_rate() -> None:
    pcm = speech(2.0, 16000).pcm16
    fmt = struct.pack("<HHIIHH", 1, 1, 0, 0, 2, 16)
    data = b"RIFF" + struct.pack("<I", 36 + len(pcm)) + b"WAVEfmt " + struct.pack("<I", 16) + fmt
    data += b"data" + struct.pack("<I", len(pcm)) + pcm
    assert "0 Hz" in rejection(data).description


def test_rejects_unusable_sample_rate() -> None:
    data = write(as_float(speech(2.0, 8000))[::2].copy(), 4000, format="WAV")
    assert "4000 Hz" in rejection(data).description


@pytest.mark.parametrize("level", [0.0, 1e-4])  # digital silence, and a -80 dBFS hiss
def test_rejects_silence(level: float) -> None:
    rng = np.random.default_rng(1)
    data = write((level * rng.standard_normal(16000 * 2)).astype(np.float32), 16000, format="WAV")
    assert "silent" in rejection(data).description


@pytest.mark.parametrize("bad", [np.nan, np.inf, -np.inf])
@pytest.mark.parametrize("spread", ["all", "one"])
def test_rejects_non_finite_float_samples(bad: float, spread: str) -> None:
    # IEEE-float WAV may hold NaN/inf; such a sample has no level at all, so it slipped
    # past the silence check and was cloned and synthesized (issue 15).
    samples = as_float(speech(2.0, 16000)).copy()
    if spread == "all":
        samples[:] = bad
    else:
        samples[1234] = bad
    data = write(samples, 16000, format="WAV", subtype="FLOAT")
    assert "NaN or infinite" in rejection(data).description


def test_rejects_other_containers() -> None:
    data = write(as_float(speech(2.0, 16000)), 16000, format="AIFF")
    message = rejection(data).description
    assert "AIFF" in message and "WAV" in message


def test_rejects_too_many_bytes_before_parsing() -> None:
    with pytest.raises(PayloadTooLarge) as info:
        validate_sample(b"\x00" * 2048, max_bytes=1024)
    assert info.value.limit == 1024


# --- decode / is_silent ----------------------------------------------------------------


def test_decode_mixes_channels_to_mono() -> None:
    left = np.full(1000, 0.5, dtype=np.float32)
    samples, rate = decode(
        write(np.stack([left, -left * 0.2], axis=1), 16000, format="WAV", subtype="FLOAT")
    )
    assert rate == 16000
    assert samples.shape == (1000,) and np.allclose(samples, 0.2)


def test_decode_rejects_junk() -> None:
    with pytest.raises(AudioError):
        decode(b"not audio at all")


def test_is_silent() -> None:
    assert is_silent(PcmAudio(b"\x00\x00" * 1000, 16000))
    assert is_silent(np.zeros(0, dtype=np.float32))
    assert not is_silent(speech(1.0, 16000))
    tone = 0.01 * np.sin(np.arange(16000) / 5).astype(np.float32)  # about -43 dBFS
    assert not is_silent(tone)
    assert is_silent(tone, threshold_dbfs=-40)


# --- resample / supported_rate ---------------------------------------------------------


def test_resample_identity_returns_the_same_audio() -> None:
    pcm = speech(0.5, 22050)
    assert resample(pcm, 22050) is pcm


@pytest.mark.parametrize(("src", "dst"), [(24000, 16000), (22050, 48000), (44100, 24000)])
def test_resample_keeps_length_and_pitch(src: int, dst: int) -> None:
    t = np.arange(src) / src
    tone = pcm_of(np.round(8000 * np.sin(2 * np.pi * 440 * t)), src)
    out = resample(tone, dst)
    samples = as_float(out)
    assert out.sample_rate == dst
    assert len(samples) == dst  # one second in, one second out
    spectrum = np.abs(np.fft.rfft(samples))
    assert np.argmax(spectrum) * dst / len(samples) == pytest.approx(440, abs=2)


def test_resample_rejects_nonpositive_rate() -> None:
    with pytest.raises(ValueError):
        resample(speech(0.1), 0)


@pytest.mark.parametrize(
    ("encoding", "asked", "got"),
    [
        ("opus", 22050, 24000),
        ("opus", 44100, 48000),
        ("opus", 32000, 48000),
        ("opus", 16000, 16000),
        ("opus", 4000, 8000),
        ("opus", 96000, 48000),
        ("mp3", 20000, 22050),
        ("mp3", 44100, 44100),
        ("mp3", 96000, 48000),
        ("wav", 12345, 12345),
        ("pcm16", 96000, 96000),
        ("mulaw", 24000, 8000),
        ("alaw", 8000, 8000),
    ],
)
def test_supported_rate(encoding: str, asked: int, got: int) -> None:
    assert supported_rate(encoding, asked) == got


# --- encode ----------------------------------------------------------------------------


def test_encode_wav_is_exact() -> None:
    pcm = speech(1.0, 22050)
    data = encode(pcm, "wav")
    samples, rate = sf.read(io.BytesIO(data), dtype="int16")
    assert rate == 22050
    assert samples.astype("<i2").tobytes() == pcm.pcm16
    assert len(data) == 44 + len(pcm.pcm16)


def test_encode_pcm16_is_the_samples() -> None:
    pcm = speech(1.0, 24000)
    assert encode(pcm, "pcm16") == pcm.pcm16
    assert encode(pcm, "pcm16", sample_rate=16000) == resample(pcm, 16000).pcm16


@pytest.mark.parametrize(("encoding", "tolerance"), [("mp3", 0.15), ("opus", 0.3)])
@pytest.mark.parametrize("rate", [0, 16000, 22050, 48000])
def test_encode_lossy_decodes_to_the_same_audio(encoding: str, tolerance: float, rate: int) -> None:
    pcm = speech(2.0, 24000)
    data = encode(pcm, encoding, sample_rate=rate)
    samples, got_rate = decode(data)
    assert got_rate == supported_rate(encoding, rate or 24000)
    reference = as_float(resample(pcm, got_rate))
    assert len(samples) == pytest.approx(len(reference), rel=0.05)
    lag, error = aligned_error(samples, reference)
    assert error < tolerance
    assert lag < 50  # whole files carry what decoders need to drop codec delay


def test_encode_mp3_uses_the_speech_bit_rate() -> None:
    data = encode(speech(4.0, 24000), "mp3")
    kbps = len(data) * 8 / 4.0 / 1000
    assert kbps == pytest.approx(64, rel=0.05)


def test_encode_resamples_wav() -> None:
    data = encode(speech(1.0, 24000), "wav", sample_rate=16000)
    samples, rate = sf.read(io.BytesIO(data), dtype="int16")
    assert rate == 16000 and len(samples) == 16000


@pytest.mark.parametrize("encoding", ENCODINGS)
def test_encode_refuses_empty_audio(encoding: str) -> None:
    with pytest.raises(EmptyAudio):
        encode(PcmAudio(b"", 24000), encoding)


def test_encode_refuses_bad_input() -> None:
    with pytest.raises(ValueError, match="unknown encoding"):
        encode(speech(0.1), "flac")
    with pytest.raises(ValueError, match="even number"):
        encode(PcmAudio(b"\x00\x00\x00", 24000), "wav")


@pytest.mark.parametrize("encoding", ["mulaw", "alaw"])
def test_encode_g711_is_one_byte_a_sample_at_8khz(encoding: str) -> None:
    pcm = speech(1.0, 24000)
    data = encode(pcm, encoding)
    reference = resample(pcm, 8000)
    assert len(data) == len(reference.pcm16) // 2  # 8 bits a sample, no header
    subtype = {"mulaw": "ULAW", "alaw": "ALAW"}[encoding]
    samples, _ = sf.read(
        io.BytesIO(data), samplerate=8000, channels=1, format="RAW", subtype=subtype
    )
    lag, error = aligned_error(samples.astype(np.float32), as_float(reference))
    assert lag == 0 and error < 0.05  # G.711 keeps ~12 bits of dynamic range


# --- StreamEncoder ---------------------------------------------------------------------

CHUNKINGS = {
    "one": [10**9],
    "even": [2400],
    "ragged": [1, 0, 7, 333, 4096, 2, 999],
}


@pytest.mark.parametrize("encoding", ["wav", "pcm16"])
@pytest.mark.parametrize(
    ("input_rate", "output_rate"), [(24000, 0), (22050, 24000), (24000, 16000)]
)
@pytest.mark.parametrize("chunking", CHUNKINGS)
def test_stream_lossless_equals_whole(
    encoding: str, input_rate: int, output_rate: int, chunking: str
) -> None:
    pcm = speech(1.5, input_rate)
    whole = encode(pcm, encoding, sample_rate=output_rate)
    streamed = stream_encode(encoding, chunks(pcm, CHUNKINGS[chunking]), output_rate=output_rate)
    if encoding == "pcm16":
        assert streamed == whole
        return
    assert streamed[44:] == whole[44:]  # same samples, exactly
    stream_samples, rate = sf.read(io.BytesIO(streamed), dtype="int16")
    whole_samples, _ = sf.read(io.BytesIO(whole), dtype="int16")
    assert rate == (output_rate or input_rate)
    assert np.array_equal(stream_samples, whole_samples)


@pytest.mark.parametrize("encoding", ["mulaw", "alaw"])
@pytest.mark.parametrize("chunking", CHUNKINGS)
def test_stream_g711_equals_whole(encoding: str, chunking: str) -> None:
    pcm = speech(1.5, 24000)
    streamed = stream_encode(encoding, chunks(pcm, CHUNKINGS[chunking]))
    assert streamed == encode(pcm, encoding)


def test_stream_wav_header_has_maximum_sizes() -> None:
    encoder = StreamEncoder("wav", input_rate=16000)
    header = encoder.start()
    assert len(header) == 44 and header[:4] == b"RIFF" and header[8:16] == b"WAVEfmt "
    assert struct.unpack("<I", header[4:8])[0] == 0xFFFFFFFF
    assert struct.unpack("<I", header[40:44])[0] == 0xFFFFFFFF
    assert struct.unpack("<I", header[24:28])[0] == 16000
    encoder.close()


def test_stream_resampling_has_no_clicks_at_chunk_boundaries() -> None:
    rate_in, rate_out = 22050, 16000
    t = np.arange(rate_in) / rate_in
    tone = pcm_of(np.round(10000 * np.sin(2 * np.pi * 300 * t)), rate_in)
    data = stream_encode("pcm16", chunks(tone, [97, 1, 500]), output_rate=rate_out)
    samples = np.frombuffer(data, dtype="<i2").astype(np.float64)
    assert len(samples) == rate_out
    # A 300 Hz sine at amplitude 10000 moves at most 2π·300·10000/16000 ≈ 1178 per sample;
    # a restarted or misaligned resampler at a boundary jumps much further.
    steps = np.abs(np.diff(samples[200:-200]))
    assert steps.max() < 1300


@pytest.mark.parametrize(("encoding", "tolerance"), [("mp3", 0.05), ("opus", 0.05)])
@pytest.mark.parametrize(("input_rate", "output_rate"), [(24000, 0), (22050, 0), (24000, 48000)])
@pytest.mark.parametrize("chunking", ["even", "ragged"])
def test_stream_lossy_decodes_like_whole(
    encoding: str, tolerance: float, input_rate: int, output_rate: int, chunking: str
) -> None:
    pcm = speech(2.0, input_rate)
    whole_samples, whole_rate = decode(encode(pcm, encoding, sample_rate=output_rate))
    streamed_samples, rate = decode(
        stream_encode(encoding, chunks(pcm, CHUNKINGS[chunking]), output_rate=output_rate)
    )
    assert rate == whole_rate == supported_rate(encoding, output_rate or input_rate)
    assert len(streamed_samples) == pytest.approx(len(whole_samples), rel=0.05)
    _, error = aligned_error(streamed_samples, whole_samples)
    assert error < tolerance


@pytest.mark.parametrize("encoding", ["mp3", "opus"])
def test_stream_lossy_bytes_arrive_before_finish(encoding: str) -> None:
    """A streamed file is sent as it is made, not held back until the end."""
    pcm = speech(3.0, 24000)
    encoder = StreamEncoder(encoding, input_rate=24000)
    head = encoder.start()
    early = [encoder.feed(part) for part in chunks(pcm, [2400])]  # 100 ms chunks
    tail = encoder.finish()
    total = len(head) + sum(map(len, early)) + len(tail)
    assert sum(map(len, early[:10])) > 0  # something within the first second
    assert sum(map(len, early)) > 0.8 * total


@pytest.mark.parametrize("encoding", ENCODINGS)
def test_stream_with_no_audio_is_an_error_and_releases_the_codec(encoding: str) -> None:
    encoder = StreamEncoder(encoding, input_rate=24000)
    encoder.start()
    encoder.feed(PcmAudio(b"", 24000))
    with pytest.raises(EmptyAudio):
        encoder.finish()
    assert no_pipe_threads()


def test_stream_misuse_is_refused() -> None:
    encoder = StreamEncoder("wav", input_rate=24000)
    with pytest.raises(RuntimeError):
        encoder.feed(speech(0.1))
    encoder.start()
    with pytest.raises(RuntimeError):
        encoder.start()
    with pytest.raises(ValueError, match="16000 Hz"):
        encoder.feed(speech(0.1, 16000))
    encoder.feed(speech(0.1))
    encoder.finish()
    with pytest.raises(RuntimeError):
        encoder.finish()
    with pytest.raises(ValueError):
        StreamEncoder("aac", input_rate=24000)


@pytest.mark.parametrize("encoding", ["mp3", "opus"])
def test_abandoned_streams_release_their_threads(encoding: str) -> None:
    with StreamEncoder(encoding, input_rate=24000) as encoder:
        encoder.start()
        encoder.feed(speech(0.5))
    assert no_pipe_threads()

    forgotten = StreamEncoder(encoding, input_rate=24000)
    forgotten.start()
    forgotten.feed(speech(0.5))
    del forgotten
    gc.collect()
    assert no_pipe_threads()


def test_stream_survives_output_larger_than_a_pipe_buffer() -> None:
    # One feed whose encoded output is far above the 64 KiB a pipe holds.
    rng = random.Random(3)
    pcm = speech(30.0, 48000, seed=rng.randint(0, 100))
    encoder = StreamEncoder("opus", input_rate=48000)
    data = encoder.start() + encoder.feed(pcm) + encoder.finish()
    samples, rate = decode(data)
    assert rate == 48000 and len(samples) == pytest.approx(30 * 48000, rel=0.01)


def open_fds() -> int:
    return len(os.listdir("/proc/self/fd"))


@pytest.mark.parametrize("encoding", ["mp3", "opus"])
def test_streams_leave_no_file_descriptors_open(encoding: str) -> None:
    pcm = speech(0.2)
    before = open_fds()
    for n in range(20):
        encoder = StreamEncoder(encoding, input_rate=24000)
        encoder.start()
        encoder.feed(pcm)
        if n % 2:
            encoder.finish()
        else:
            encoder.close()
    assert open_fds() == before
