"""Request traces: what the allocator is asked for, in trace time.

A trace is a time-ordered list of requests. Each request wants one voice cloned into a
slot and holds it for ``lease`` seconds of trace time (the synthesis it was asked for);
a voice under a lease cannot be evicted. Voices are interned to small integers so the
replay engine and the policies work on ints; ``Trace.names`` maps them back.

Built-in traces are generated from a seed (numpy's PCG64), so a run is reproducible:

- ``zipf-0.8`` / ``zipf-1.0``: independent requests, voice popularity Zipf(s) — the classic
  cache workload, where frequency wins.
- ``sessions-normal`` / ``sessions-overload``: users open sessions (a run of sentences in
  their own voice, a few seconds apart); user popularity is Zipf, so some come back often.
  Normal load keeps ~60 % of the slots busy with live sessions; overload keeps ~150 %.
  Recency wins here; in overload every pure cache thrashes.
- ``diurnal``: a mix of one-off requests and sessions whose rate follows a (compressed)
  day and whose popular set drifts: yesterday's hot voices go cold.
- ``scan``: Zipf(1.0) traffic with a batch job in the middle that touches thousands of cold
  voices exactly once — the workload that flushes an LRU.

External traces (``parse_trace``): one request a line, ``timestamp voice_id [user_id]
[lease_seconds]``; only ``voice_id`` is required. Blank lines and ``#`` comments are
skipped. Errors name the line.
"""

from __future__ import annotations

from collections.abc import Iterable
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np

DEFAULT_SEED = 20261128


@dataclass(frozen=True, slots=True)
class Request:
    t: float
    """Arrival, in trace seconds."""
    voice: int
    user: int
    lease: float
    """Seconds the request holds its voice once served."""


@dataclass(frozen=True)
class Trace:
    name: str
    requests: list[Request]
    slots: int
    names: list[str] = field(default_factory=list)
    """Voice int -> the id written in the trace (generated traces: ``v<int>``)."""
    description: str = ""

    def voice_name(self, voice: int) -> str:
        return self.names[voice] if self.names else f"v{voice}"


class TraceError(ValueError):
    """A trace file that cannot be replayed; the message names the line."""


# ---------------------------------------------------------------------------- parsing


def parse_trace(lines: Iterable[str], *, name: str = "trace", slots: int = 100) -> Trace:
    """Parse ``timestamp voice_id [user_id] [lease_seconds]`` lines (or bare ``voice_id``).

    A line with one field is a voice id; requests then arrive one second apart (trace
    time must move forward for leases and waits to mean anything). Timestamps must be
    numbers, non-decreasing; leases non-negative. User ids default to the voice id.
    """
    interned: dict[str, int] = {}
    users: dict[str, int] = {}
    requests: list[Request] = []
    last_t = float("-inf")
    for lineno, raw in enumerate(lines, start=1):
        line = raw.split("#", 1)[0].strip()
        if not line:
            continue
        fields = line.split()
        if len(fields) > 4:
            raise TraceError(
                f"line {lineno}: expected at most 4 fields (timestamp voice_id [user_id] [lease_seconds]), got {len(fields)}: {raw.strip()!r}"
            )
        if len(fields) == 1:
            t = float(len(requests))
            voice_s, user_s, lease = fields[0], fields[0], 0.0
        else:
            t = _number(fields[0], "timestamp", lineno)
            voice_s = fields[1]
            user_s = fields[2] if len(fields) >= 3 else voice_s
            lease = _number(fields[3], "lease_seconds", lineno) if len(fields) == 4 else 0.0
            if lease < 0:
                raise TraceError(f"line {lineno}: lease_seconds must be >= 0, got {fields[3]!r}")
        if t < last_t:
            raise TraceError(
                f"line {lineno}: timestamp {t:g} is earlier than the previous request's {last_t:g}; sort the trace by time"
            )
        last_t = t
        voice = interned.setdefault(voice_s, len(interned))
        user = users.setdefault(user_s, len(users))
        requests.append(Request(t, voice, user, lease))
    if not requests:
        raise TraceError("the trace has no requests (only blank or comment lines)")
    if slots < 1:
        raise TraceError(f"--slots must be >= 1, got {slots}")
    return Trace(name, requests, slots, names=list(interned), description="external trace")


def _number(text: str, what: str, lineno: int) -> float:
    try:
        value = float(text)
    except ValueError:
        raise TraceError(f"line {lineno}: {what} must be a number, got {text!r}") from None
    if not np.isfinite(value):
        raise TraceError(f"line {lineno}: {what} must be finite, got {text!r}")
    return value


def read_trace(path: Path, *, slots: int) -> Trace:
    with open(path, encoding="utf-8") as fh:
        return parse_trace(fh, name=path.name, slots=slots)


def write_trace(trace: Trace, path: Path) -> None:
    """The text format ``parse_trace`` reads (for feeding a built-in trace back in)."""
    with open(path, "w", encoding="utf-8") as fh:
        for r in trace.requests:
            fh.write(f"{r.t:.3f} {trace.voice_name(r.voice)} u{r.user} {r.lease:g}\n")


# ---------------------------------------------------------------------------- generators


@dataclass(frozen=True)
class ZipfConfig:
    skew: float
    voices: int = 10_000
    slots: int = 100
    requests: int = 100_000
    rate: float = 2.0
    """Requests per trace second (Poisson)."""
    lease: float = 0.0
    """One-off requests: the voice is needed for an instant."""


@dataclass(frozen=True)
class SessionConfig:
    load: float
    """Mean live sessions as a fraction of the slots (0.6 normal, 1.5 overload)."""
    users: int = 10_000
    user_skew: float = 1.0
    """Zipf skew of how often each user opens a session (each user has one voice)."""
    slots: int = 100
    requests: int = 100_000
    mean_length: float = 20.0
    """Requests per session (geometric)."""
    mean_gap: float = 8.0
    """Seconds between a session's requests (exponential, at least the lease)."""
    lease: float = 3.0


@dataclass(frozen=True)
class DiurnalConfig:
    voices: int = 10_000
    slots: int = 100
    requests: int = 100_000
    skew: float = 0.9
    days: int = 3
    base_rate: float = 2.5
    """Mean requests per second of the one-off stream; the day curve swings it +-60 %."""
    drift: int = 500
    """Popularity ranks the hot set slides across over the whole trace."""
    session_share: float = 0.3
    """Fraction of requests that come in sessions (same shape as ``SessionConfig``)."""


@dataclass(frozen=True)
class ScanConfig:
    voices: int = 10_000
    slots: int = 100
    requests: int = 100_000
    skew: float = 1.0
    rate: float = 2.0
    scan_voices: int = 3_000
    """Distinct cold voices the batch job touches, once each, in the middle of the trace."""
    scan_rate: float = 5.0
    scan_lease: float = 2.0


def _zipf_probs(n: int, skew: float) -> np.ndarray:
    w = 1.0 / np.arange(1, n + 1, dtype=float) ** skew
    return w / w.sum()


def zipf_trace(cfg: ZipfConfig, seed: int = DEFAULT_SEED) -> Trace:
    rng = np.random.default_rng(seed)
    ranks = rng.choice(cfg.voices, size=cfg.requests, p=_zipf_probs(cfg.voices, cfg.skew))
    voice_of_rank = rng.permutation(cfg.voices)  # ids say nothing about popularity
    times = np.cumsum(rng.exponential(1.0 / cfg.rate, size=cfg.requests))
    reqs = [
        Request(float(t), int(v), int(v), cfg.lease)
        for t, v in zip(times, voice_of_rank[ranks], strict=True)
    ]
    return Trace(
        f"zipf-{cfg.skew:.1f}",
        reqs,
        cfg.slots,
        description=f"independent Zipf({cfg.skew:g}), {cfg.voices} voices",
    )


def _sessions(
    rng: np.random.Generator,
    *,
    n_requests: int,
    rate: float,
    users: int,
    skew: float,
    mean_length: float,
    mean_gap: float,
    lease: float,
    voice_base: int = 0,
    rate_at=None,
) -> list[Request]:
    """Session requests until ``n_requests`` are generated. ``rate`` sessions per second;
    ``rate_at(t)``, if given, thins arrivals to a time-varying rate (max ``rate``)."""
    cdf = np.cumsum(_zipf_probs(users, skew))
    user_of_rank = rng.permutation(users)
    out: list[Request] = []
    t = 0.0
    while len(out) < n_requests:
        t += rng.exponential(1.0 / rate)
        if rate_at is not None and rng.random() > rate_at(t) / rate:
            continue
        user = int(user_of_rank[min(int(np.searchsorted(cdf, rng.random())), users - 1)])
        length = int(rng.geometric(1.0 / mean_length))
        at = t
        for _ in range(length):
            out.append(Request(at, voice_base + user, user, lease))
            at += lease + rng.exponential(max(mean_gap - lease, 0.1))
    out.sort(key=lambda r: r.t)
    return out[:n_requests]


def session_trace(
    cfg: SessionConfig, seed: int = DEFAULT_SEED, *, name: str | None = None
) -> Trace:
    rng = np.random.default_rng(seed)
    duration = cfg.mean_length * cfg.mean_gap
    rate = cfg.load * cfg.slots / duration  # Little's law: live sessions = rate x duration
    reqs = _sessions(
        rng,
        n_requests=cfg.requests,
        rate=rate,
        users=cfg.users,
        skew=cfg.user_skew,
        mean_length=cfg.mean_length,
        mean_gap=cfg.mean_gap,
        lease=cfg.lease,
    )
    label = name or ("sessions-overload" if cfg.load > 1 else "sessions-normal")
    return Trace(
        label, reqs, cfg.slots, description=f"bursty sessions, ~{cfg.load:.0%} of slots live"
    )


def diurnal_trace(cfg: DiurnalConfig, seed: int = DEFAULT_SEED) -> Trace:
    rng = np.random.default_rng(seed)
    n_sessions = int(cfg.requests * cfg.session_share)
    n_oneoff = cfg.requests - n_sessions
    duration = n_oneoff / cfg.base_rate
    day = duration / cfg.days

    def day_curve(t: float) -> float:
        return 1.0 + 0.6 * np.sin(2 * np.pi * t / day)

    # One-off stream: thinned Poisson at 1.6x base, popularity ranks sliding with time.
    cdf = np.cumsum(_zipf_probs(cfg.voices, cfg.skew))
    voice_of_rank = rng.permutation(cfg.voices)
    reqs: list[Request] = []
    t = 0.0
    while len(reqs) < n_oneoff:
        t += rng.exponential(1.0 / (1.6 * cfg.base_rate))
        if rng.random() > day_curve(t) / 1.6:
            continue
        offset = int(cfg.drift * min(t / duration, 1.0))
        rank = min(int(np.searchsorted(cdf, rng.random())), cfg.voices - 1)
        v = int(voice_of_rank[(rank + offset) % cfg.voices])
        reqs.append(Request(t, v, v, 1.0))
    # Sessions over the same span, same day curve, their users' voices after the one-offs'.
    sess_rate = 1.6 * n_sessions / (20.0 * duration)
    reqs += _sessions(
        rng,
        n_requests=n_sessions,
        rate=sess_rate,
        users=cfg.voices,
        skew=1.0,
        mean_length=20.0,
        mean_gap=8.0,
        lease=3.0,
        voice_base=cfg.voices,
        rate_at=lambda s: sess_rate * day_curve(s) / 1.6,
    )
    reqs.sort(key=lambda r: r.t)
    return Trace(
        "diurnal",
        reqs,
        cfg.slots,
        description=f"{cfg.days} compressed days, popular set drifting, {cfg.session_share:.0%} sessions",
    )


def scan_trace(cfg: ScanConfig, seed: int = DEFAULT_SEED) -> Trace:
    rng = np.random.default_rng(seed)
    n_bg = cfg.requests - cfg.scan_voices
    ranks = rng.choice(cfg.voices, size=n_bg, p=_zipf_probs(cfg.voices, cfg.skew))
    voice_of_rank = rng.permutation(cfg.voices)
    times = np.cumsum(rng.exponential(1.0 / cfg.rate, size=n_bg))
    reqs = [
        Request(float(t), int(v), int(v), 0.0)
        for t, v in zip(times, voice_of_rank[ranks], strict=True)
    ]
    # The batch job: cold voices (the tail third of the ranks), each once, back to back.
    cold = voice_of_rank[
        rng.choice(np.arange(cfg.voices * 2 // 3, cfg.voices), size=cfg.scan_voices, replace=False)
    ]
    start = float(times[len(times) // 2])
    scan_times = start + np.arange(cfg.scan_voices) / cfg.scan_rate
    reqs += [
        Request(float(t), int(v), -1, cfg.scan_lease) for t, v in zip(scan_times, cold, strict=True)
    ]
    reqs.sort(key=lambda r: r.t)
    return Trace(
        "scan",
        reqs,
        cfg.slots,
        description=f"Zipf({cfg.skew:g}) with a batch job touching {cfg.scan_voices} cold voices once",
    )


def builtin_traces(scale: float = 1.0, seed: int = DEFAULT_SEED) -> list[Trace]:
    """Every built-in trace; ``scale`` shrinks requests, voices, users and slots alike
    (so the cache pressure stays about the same) for quick runs."""

    def s(n: int, least: int = 10) -> int:
        return max(least, round(n * scale))

    voices, slots, requests = s(10_000), s(100), s(100_000, 1_000)
    # Rates shrink with the slots, so each slot turns over as fast as at full size.
    k = slots / 100
    return [
        zipf_trace(ZipfConfig(0.8, voices, slots, requests, rate=2.0 * k), seed),
        zipf_trace(ZipfConfig(1.0, voices, slots, requests, rate=2.0 * k), seed + 1),
        session_trace(SessionConfig(0.6, voices, slots=slots, requests=requests), seed + 2),
        session_trace(SessionConfig(1.5, voices, slots=slots, requests=requests), seed + 3),
        diurnal_trace(
            DiurnalConfig(voices, slots, requests, base_rate=2.5 * k, drift=s(500)), seed + 4
        ),
        scan_trace(
            ScanConfig(
                voices, slots, requests, rate=2.0 * k, scan_voices=s(3_000), scan_rate=5.0 * k
            ),
            seed + 5,
        ),
    ]
