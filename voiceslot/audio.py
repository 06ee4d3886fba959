"""Audio in and out: validating uploaded voice samples, resampling, and encoding engine
output for the wire and for storage.

Every engine hands back ``PcmAudio`` (16-bit little-endian mono PCM at the engine's rate);
this module is the one place that turns it into what a caller asked for:

- ``"wav"``: RIFF/WAVE, 16-bit PCM. Whole files carry exact sizes; a streamed file starts
  with a header whose sizes are the maximum (0xFFFFFFFF), the convention for WAV of unknown
  length, which decoders read up to the end of the data.
- ``"pcm16"``: the bare samples, no header.
- ``"mp3"``: MPEG audio layer III, constant bit rate sized for speech. Only 8, 11.025, 12,
  16, 22.05, 24, 32, 44.1 and 48 kHz exist; see ``supported_rate``.
- ``"opus"``: Opus in an Ogg container. Opus only runs at 8, 12, 16, 24 and 48 kHz; see
  ``supported_rate``.
- ``"mulaw"``, ``"alaw"``: G.711 μ-law and A-law, one byte a sample, no header, at 8 kHz
  (what SIP trunks and Twilio media streams carry). G.711 codes each sample on its own, so
  a stream's chunks are encoded independently and concatenate to the whole.

Rates: a requested rate the codec cannot carry becomes the lowest rate it can that is at
least the one asked for (22.05 kHz Opus is written at 24 kHz), else its highest rate, so the
bandwidth asked for is never cut. ``supported_rate`` tells callers which rate they get.

Streaming (``StreamEncoder``) produces the same file as ``encode`` in pieces. Resampling
runs through one stateful soxr stream per encoder, so chunk boundaries leave no clicks and
the total length is that of resampling the whole at once. One difference is inherent to
streaming MP3: the Xing/LAME header that tells a decoder to drop the encoder's priming
samples can only be written once the whole stream is known, so a streamed MP3 has none and
decodes with about 1105 samples (≈ 46 ms at 24 kHz) of leading silence and up to one frame
of padding at the end.

Everything here is synchronous CPU work; async callers run it with ``asyncio.to_thread``.
"""

from __future__ import annotations

import io
import math
import os
import selectors
import struct
import threading
import weakref
from dataclasses import dataclass
from typing import Any

import numpy as np
import soundfile as sf
import soxr

from voiceslot.errors import InvalidArgument, PayloadTooLarge
from voiceslot.providers.base import PcmAudio

ENCODINGS = ("wav", "pcm16", "mp3", "opus", "mulaw", "alaw")
"""Encodings ``encode`` and ``StreamEncoder`` write."""

MEDIA_TYPES = {
    "wav": "audio/wav",
    "pcm16": "audio/L16",
    "mp3": "audio/mpeg",
    "opus": "audio/ogg; codecs=opus",
    "mulaw": "audio/PCMU",  # RFC 3551's names for G.711
    "alaw": "audio/PCMA",
}
FILE_EXTENSIONS = {
    "wav": "wav",
    "pcm16": "pcm",
    "mp3": "mp3",
    "opus": "ogg",
    "mulaw": "ulaw",
    "alaw": "alaw",
}
G711_SUBTYPES = {"mulaw": "ULAW", "alaw": "ALAW"}
"""libsndfile's raw subtype for each G.711 encoding."""
G711_RATES = (8000,)

OPUS_RATES = (8000, 12000, 16000, 24000, 48000)
MP3_RATES = (8000, 11025, 12000, 16000, 22050, 24000, 32000, 44100, 48000)

SAMPLE_FORMATS = {"WAV": "wav", "WAVEX": "wav", "FLAC": "flac", "OGG": "ogg", "MP3": "mp3"}
"""Containers accepted as voice samples (libsndfile's name → ours)."""
MIN_SAMPLE_RATE = 8000
MAX_SAMPLE_RATE = 192_000
MAX_SAMPLE_CHANNELS = 8
SILENCE_DBFS = -60.0
"""RMS level at or below which audio counts as silent (a quiet room's noise floor)."""

OPUS_STREAM_PAGE_MS = 100.0
"""Audio per Ogg page in streamed Opus: how long a listener waits for the first sound."""

_PCM16 = np.dtype("<i2")
_SFC_SET_OGG_PAGE_LATENCY_MS = 0x1302  # sndfile.h
_READ_BLOCK_FRAMES = 65536
_WAV_STREAM_SIZE = 0xFFFFFFFF


class AudioError(ValueError):
    """Audio that cannot be processed: undecodable bytes, or no samples where some are
    needed. A server-side fault when it concerns engine output; user input is reported as
    ``InvalidArgument`` by ``validate_sample`` instead."""


class EmptyAudio(AudioError):
    """There are no samples to encode: an engine returned no audio. Never stored or sent
    as an empty file."""


@dataclass(frozen=True)
class SampleInfo:
    format: str
    """One of "wav", "flac", "ogg", "mp3"."""
    sample_rate: int
    channels: int
    duration_s: float


# --- samples ---------------------------------------------------------------------------


def validate_sample(
    data: bytes,
    *,
    max_bytes: int,
    min_seconds: float = 1.0,
    max_seconds: float = 60.0,
    field: str = "sample",
) -> SampleInfo:
    """Check that ``data`` is a usable voice sample and describe it.

    Raises ``PayloadTooLarge`` over ``max_bytes`` and ``InvalidArgument(field, reason)``
    for anything else wrong: empty, not audio, a container other than WAV/FLAC/OGG/MP3,
    an unusable sample rate or channel count, too short, too long, non-finite samples
    (NaN or infinite, possible in IEEE-float files), or silent. Decoding
    stops once the audio is known to be too long, so a small file that unpacks to hours
    of audio costs no more than ``max_seconds`` of it.
    """
    if not data:
        raise InvalidArgument(field, "is empty")
    if len(data) > max_bytes:
        raise PayloadTooLarge(field, max_bytes)
    if _riff_sample_rate(data) == 0:
        # libsndfile rejects this with an opaque "SF_INFO struct incomplete".
        raise InvalidArgument(field, "declares a sample rate of 0 Hz")
    try:
        f = _open(data)
    except AudioError as e:
        raise InvalidArgument(
            field, f"is not a readable audio file ({e}); upload WAV, FLAC, OGG or MP3"
        ) from None
    with f:
        fmt = SAMPLE_FORMATS.get(f.format)
        if fmt is None:
            raise InvalidArgument(field, f"is {f.format}; upload WAV, FLAC, OGG or MP3")
        rate, channels = f.samplerate, f.channels
        if not MIN_SAMPLE_RATE <= rate <= MAX_SAMPLE_RATE:
            raise InvalidArgument(
                field,
                f"has a sample rate of {rate} Hz; {MIN_SAMPLE_RATE}..{MAX_SAMPLE_RATE} Hz "
                "is accepted",
            )
        if not 1 <= channels <= MAX_SAMPLE_CHANNELS:
            raise InvalidArgument(
                field, f"has {channels} channels; 1..{MAX_SAMPLE_CHANNELS} are accepted"
            )
        max_frames = math.floor(max_seconds * rate)
        try:
            mono = _read_mono(f, limit=max_frames + 1)
        except AudioError as e:
            raise InvalidArgument(field, f"could not be decoded ({e})") from None
    if mono.size > max_frames:
        raise InvalidArgument(field, f"is longer than the maximum of {max_seconds:g} s")
    if mono.size == 0:
        raise InvalidArgument(field, "contains no audio")
    duration = mono.size / rate
    if duration < min_seconds:
        raise InvalidArgument(
            field, f"is {duration:.2f} s long; at least {min_seconds:g} s is needed"
        )
    if not np.isfinite(mono).all():
        # IEEE-float files can hold NaN and infinities; the level of such audio is not a
        # number, so it would pass the silence check and reach a provider as noise.
        raise InvalidArgument(
            field, "contains samples that are not numbers (NaN or infinite); record a voice"
        )
    if is_silent(mono):
        raise InvalidArgument(field, "is silent; record a voice speaking")
    return SampleInfo(format=fmt, sample_rate=rate, channels=channels, duration_s=duration)


def decode(data: bytes) -> tuple[np.ndarray, int]:
    """Decode any file libsndfile reads to float32 mono in [-1, 1] (channels averaged)
    and its sample rate. Raises ``AudioError`` when ``data`` is not readable audio."""
    with _open(data) as f:
        return _read_mono(f, limit=None), f.samplerate


def is_silent(audio: np.ndarray | PcmAudio, *, threshold_dbfs: float = SILENCE_DBFS) -> bool:
    """Whether the RMS level of ``audio`` (float samples in [-1, 1], or ``PcmAudio``) is at
    or below ``threshold_dbfs``. No samples at all count as silent."""
    if isinstance(audio, PcmAudio):
        audio = _pcm_samples(audio).astype(np.float32) / 32768.0
    if audio.size == 0:
        return True
    rms = math.sqrt(float(np.mean(np.square(audio, dtype=np.float64))))
    return rms <= 10 ** (threshold_dbfs / 20)


# --- resampling ------------------------------------------------------------------------


def resample(pcm: PcmAudio, rate: int) -> PcmAudio:
    """``pcm`` at ``rate`` Hz (soxr, high quality); ``pcm`` itself when already there."""
    if rate <= 0:
        raise ValueError(f"sample rate must be positive, not {rate}")
    if rate == pcm.sample_rate:
        return pcm
    out = _Resampler(pcm.sample_rate, rate).process(_pcm_samples(pcm), last=True)
    return PcmAudio(out.tobytes(), rate)


def supported_rate(encoding: str, rate: int) -> int:
    """The rate ``encoding`` is written at when ``rate`` is asked for: ``rate`` itself where
    the codec carries it, else the lowest supported rate above it, else the highest."""
    _check_encoding(encoding)
    if rate <= 0:
        raise ValueError(f"sample rate must be positive, not {rate}")
    rates = {"mp3": MP3_RATES, "opus": OPUS_RATES, **dict.fromkeys(G711_SUBTYPES, G711_RATES)}.get(
        encoding
    )
    if rates is None:
        return rate
    return next((r for r in rates if r >= rate), rates[-1])


class _Resampler:
    """int16 in, int16 out, through one stateful soxr stream.

    The stream runs in float32: soxr's int16 path gives results that differ by a few
    LSB depending on how the input is chunked, the float path does not, so a streamed
    file has exactly the samples of the whole one.
    """

    def __init__(self, in_rate: int, out_rate: int) -> None:
        if in_rate <= 0 or out_rate <= 0:
            raise ValueError(f"sample rates must be positive, not {in_rate} → {out_rate}")
        self._stream = (
            None
            if in_rate == out_rate
            else soxr.ResampleStream(in_rate, out_rate, 1, dtype="float32", quality="HQ")
        )

    def process(self, samples: np.ndarray, *, last: bool) -> np.ndarray:
        if self._stream is None:
            return samples
        out = self._stream.resample_chunk(samples.astype(np.float32) / 32768.0, last=last)
        return _to_pcm16(out)


# --- encoding --------------------------------------------------------------------------


def encode(pcm: PcmAudio, encoding: str, *, sample_rate: int = 0) -> bytes:
    """The whole of ``pcm`` as a file in ``encoding`` at ``sample_rate`` (0: the rate of
    ``pcm``, adjusted by ``supported_rate``). Raises ``EmptyAudio`` for no samples."""
    _check_encoding(encoding)
    samples = _pcm_samples(pcm)
    rate = supported_rate(encoding, sample_rate or pcm.sample_rate)
    out = _Resampler(pcm.sample_rate, rate).process(samples, last=True)
    if out.size == 0:
        raise EmptyAudio(f"no audio to encode as {encoding}: the engine returned 0 samples")
    if encoding == "pcm16":
        return out.tobytes()
    if encoding == "wav":
        return _wav_header(rate, out.nbytes) + out.tobytes()
    if encoding in G711_SUBTYPES:
        return _g711(out, encoding)
    buf = io.BytesIO()
    # A seekable target: libsndfile goes back at close to fill in MP3's Xing/LAME header,
    # which lets decoders drop the priming samples and report the exact length.
    with sf.SoundFile(buf, "w", rate, 1, **_codec_settings(encoding, rate)) as f:
        f.write(out)
    return buf.getvalue()


class StreamEncoder:
    """Encodes audio that arrives in pieces, handing back each piece's bytes at once.

    ``start()`` (the header), then ``feed()`` for each ``PcmAudio`` chunk at
    ``input_rate``, then ``finish()``; the bytes they return, concatenated, are one valid
    file. ``finish()`` raises ``EmptyAudio`` when no samples were fed, so a caller that
    has already sent the header reports an error instead of ending with an empty file.
    ``close()`` abandons the stream (also on leaving a ``with`` block). One encoder per
    stream; not thread-safe.
    """

    def __init__(self, encoding: str, *, input_rate: int, output_rate: int = 0) -> None:
        _check_encoding(encoding)
        if input_rate <= 0:
            raise ValueError(f"input rate must be positive, not {input_rate}")
        self.encoding = encoding
        self.input_rate = input_rate
        self.sample_rate = supported_rate(encoding, output_rate or input_rate)
        """The rate of the encoded output."""
        self._resampler = _Resampler(input_rate, self.sample_rate)
        self._fed = 0
        self._state = "new"
        self._sink: _PipeSink | None = None
        self._file: sf.SoundFile | None = None
        self._finalizer: weakref.finalize | None = None

    def start(self) -> bytes:
        self._expect("new", "start")
        self._state = "open"
        if self.encoding == "wav":
            return _wav_header(self.sample_rate, None)
        if self.encoding == "pcm16" or self.encoding in G711_SUBTYPES:
            return b""
        sink = _PipeSink()
        try:
            file = sf.SoundFile(
                sink.write_fd,
                "w",
                self.sample_rate,
                1,
                closefd=False,  # the sink owns both ends, also when opening fails
                **_codec_settings(self.encoding, self.sample_rate),
            )
        except BaseException:
            self._state = "closed"
            sink.close_writer()
            sink.finish()
            raise
        self._file, self._sink = file, sink
        # Also run when an abandoned encoder is collected, so its reader thread ends.
        self._finalizer = weakref.finalize(self, _close_codec, file, sink)
        if self.encoding == "opus":
            _set_ogg_page_latency(file, OPUS_STREAM_PAGE_MS)
        return sink.take()  # whatever the codec wrote on opening

    def feed(self, pcm: PcmAudio) -> bytes:
        self._expect("open", "feed")
        if pcm.sample_rate != self.input_rate:
            raise ValueError(
                f"chunk at {pcm.sample_rate} Hz fed to an encoder for {self.input_rate} Hz"
            )
        samples = _pcm_samples(pcm)
        self._fed += samples.size
        return self._write(self._resampler.process(samples, last=False))

    def finish(self) -> bytes:
        self._expect("open", "finish")
        try:
            data = self._write(self._resampler.process(np.zeros(0, _PCM16), last=True))
            data += self._finish_codec()
        finally:
            self.close()
        if self._fed == 0:
            raise EmptyAudio(f"no audio to encode as {self.encoding}: 0 samples were fed")
        return data

    def close(self) -> None:
        """Release the codec; what it still had buffered is discarded. Idempotent."""
        if self._state != "closed":
            self._state = "closed"
            self._finish_codec()

    def __enter__(self) -> StreamEncoder:
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()

    def _write(self, samples: np.ndarray) -> bytes:
        if self.encoding in G711_SUBTYPES:
            return _g711(samples, self.encoding)
        if self._file is None:
            return samples.tobytes()
        if samples.size:
            self._file.write(samples)
        assert self._sink is not None
        return self._sink.take()

    def _finish_codec(self) -> bytes:
        """Flush and close the codec (once) and return its last bytes."""
        if self._finalizer is None:
            return b""
        return self._finalizer() or b""

    def _expect(self, state: str, action: str) -> None:
        if self._state != state:
            raise RuntimeError(f"cannot {action} a stream encoder that is {self._state}")


class _PipeSink:
    """Collects what libsndfile writes into a pipe.

    Why a pipe: libsndfile treats a pipe as unseekable, so no encoder plans to seek back
    and patch earlier bytes at close (MP3 would otherwise write a placeholder Xing/LAME
    frame first and fill it in last); every byte is final as soon as it is written. A
    reader thread drains the pipe so a large write never blocks on a full pipe buffer;
    ``take`` also reads under the same lock, so it returns everything written so far.
    """

    def __init__(self) -> None:
        self._read_fd, self.write_fd = os.pipe()
        os.set_blocking(self._read_fd, False)
        self._lock = threading.Lock()
        self._chunks: list[bytes] = []
        self._eof = False
        self._thread = threading.Thread(target=self._drain, name="audio-pipe", daemon=True)
        self._thread.start()

    def _read_available(self) -> None:
        """Move what the pipe holds into ``_chunks``; caller holds the lock."""
        while not self._eof:
            try:
                chunk = os.read(self._read_fd, 1 << 16)
            except BlockingIOError:
                return
            if chunk:
                self._chunks.append(chunk)
            else:
                self._eof = True  # every write end is closed

    def _drain(self) -> None:
        with selectors.DefaultSelector() as selector:
            selector.register(self._read_fd, selectors.EVENT_READ)
            while not self._eof:
                selector.select()
                with self._lock:
                    self._read_available()
        # Only this thread closes the read end, and only once nothing will read it again.
        os.close(self._read_fd)

    def close_writer(self) -> None:
        if self.write_fd >= 0:
            os.close(self.write_fd)
            self.write_fd = -1

    def take(self) -> bytes:
        with self._lock:
            self._read_available()
            data = b"".join(self._chunks)
            self._chunks.clear()
        return data

    def finish(self) -> bytes:
        """The rest of the output; call after ``close_writer``."""
        self._thread.join()
        return self.take()


def _close_codec(file: sf.SoundFile, sink: _PipeSink) -> bytes:
    file.close()  # flushes the encoder into the pipe
    sink.close_writer()
    return sink.finish()


# --- helpers ---------------------------------------------------------------------------


def _check_encoding(encoding: str) -> None:
    if encoding not in ENCODINGS:
        raise ValueError(f"unknown encoding {encoding!r}; expected one of {ENCODINGS}")


def _pcm_samples(pcm: PcmAudio) -> np.ndarray:
    if len(pcm.pcm16) % 2:
        raise ValueError(f"16-bit PCM has an even number of bytes, not {len(pcm.pcm16)}")
    if pcm.sample_rate <= 0:
        raise ValueError(f"sample rate must be positive, not {pcm.sample_rate}")
    return np.frombuffer(pcm.pcm16, dtype=_PCM16)


def _to_pcm16(samples: np.ndarray) -> np.ndarray:
    """float [-1, 1] → int16, rounded and clipped (resampling can overshoot full scale)."""
    return np.clip(np.rint(samples * 32768.0), -32768, 32767).astype(_PCM16)


def _wav_header(rate: int, data_bytes: int | None) -> bytes:
    """A 44-byte RIFF/WAVE header for 16-bit mono PCM; ``None``: length unknown (stream)."""
    if data_bytes is None:
        riff_size = data_size = _WAV_STREAM_SIZE
    else:
        if data_bytes > _WAV_STREAM_SIZE - 36:
            raise ValueError(f"{data_bytes} bytes of PCM do not fit in a WAV file")
        riff_size, data_size = 36 + data_bytes, data_bytes
    fmt = struct.pack("<HHIIHH", 1, 1, rate, rate * 2, 2, 16)  # PCM, mono, 16-bit
    return (
        b"RIFF"
        + struct.pack("<I", riff_size)
        + b"WAVE"
        + b"fmt "
        + struct.pack("<I", len(fmt))
        + fmt
        + b"data"
        + struct.pack("<I", data_size)
    )


def min_bytes_per_second(encoding: str, rate: int) -> float:
    """The fewest bytes one second of audio at ``rate`` Hz takes as ``encoding`` from
    ``encode``: exact for WAV and PCM (16-bit mono), the constant bit rate for MP3, and
    none for Opus (its variable rate spends next to nothing on pauses). Lets a caller know
    an answer is too large before making it."""
    _check_encoding(encoding)
    if encoding in ("wav", "pcm16"):
        return 2.0 * rate
    if encoding in G711_SUBTYPES:
        return 1.0 * rate
    if encoding == "mp3":
        return _mp3_kbps(rate) * 1000 / 8
    return 0.0


def _g711(samples: np.ndarray, encoding: str) -> bytes:
    """16-bit samples as G.711 bytes (libsndfile's coder: one byte a sample, stateless)."""
    if samples.size == 0:
        return b""
    buf = io.BytesIO()
    sf.write(buf, samples, G711_RATES[0], format="RAW", subtype=G711_SUBTYPES[encoding])
    return buf.getvalue()


def _mp3_kbps(rate: int) -> int:
    """Constant bit rate for mono speech in each MPEG version's band of rates."""
    return 96 if rate >= 32000 else 64 if rate >= 16000 else 32


def _codec_settings(encoding: str, rate: int) -> dict[str, Any]:
    if encoding == "opus":
        return {"format": "OGG", "subtype": "OPUS"}  # libsndfile's default suits speech
    # libsndfile maps compression level c to kbps = int(hi - c * (hi - lo)) for the MPEG
    # version the rate implies; aim half a kbps above the target so int() lands on it.
    lo, hi = (32, 320) if rate >= 32000 else (8, 160) if rate >= 16000 else (8, 64)
    level = (hi - (_mp3_kbps(rate) + 0.5)) / (hi - lo)
    return {
        "format": "MP3",
        "subtype": "MPEG_LAYER_III",
        "bitrate_mode": "CONSTANT",
        "compression_level": level,
    }


def _set_ogg_page_latency(file: sf.SoundFile, ms: float) -> None:
    """Ask libsndfile to close an Ogg page every ``ms`` of audio (its default is about a
    second, which a listener would hear as start-up delay). soundfile has no public call
    for this command, so it goes through soundfile's handles to libsndfile; where those
    are missing the stream still works, with the default page length."""
    try:
        value = sf._ffi.new("double *", ms)
        sf._snd.sf_command(
            file._file, _SFC_SET_OGG_PAGE_LATENCY_MS, value, sf._ffi.sizeof("double")
        )
    except AttributeError:
        pass


def _open(data: bytes) -> sf.SoundFile:
    try:
        return sf.SoundFile(io.BytesIO(data))
    except sf.LibsndfileError as e:
        raise AudioError(e.error_string) from None
    except (RuntimeError, TypeError, ValueError) as e:
        raise AudioError(str(e)) from None


def _read_mono(f: sf.SoundFile, *, limit: int | None) -> np.ndarray:
    """Up to ``limit`` frames (all when None) as float32 mono, read block by block so
    memory follows what is read, not what the header claims."""
    blocks: list[np.ndarray] = []
    total = 0
    while limit is None or total < limit:
        want = _READ_BLOCK_FRAMES if limit is None else min(_READ_BLOCK_FRAMES, limit - total)
        try:
            block = f.read(want, dtype="float32", always_2d=True)
        except (sf.LibsndfileError, RuntimeError) as e:
            raise AudioError(str(e)) from None
        if not len(block):
            break
        blocks.append(block.mean(axis=1, dtype=np.float32))
        total += len(block)
    return np.concatenate(blocks) if blocks else np.zeros(0, np.float32)


def _riff_sample_rate(data: bytes) -> int | None:
    """The sample rate a RIFF/WAVE file's fmt chunk declares; None when ``data`` is not
    one or has no fmt chunk."""
    if len(data) < 12 or data[:4] != b"RIFF" or data[8:12] != b"WAVE":
        return None
    pos = 12
    while pos + 8 <= len(data):
        size = int.from_bytes(data[pos + 4 : pos + 8], "little")
        if data[pos : pos + 4] == b"fmt ":
            field = data[pos + 12 : pos + 16]
            return int.from_bytes(field, "little") if len(field) == 4 else None
        pos += 8 + size + (size & 1)  # chunks are padded to even sizes
    return None
