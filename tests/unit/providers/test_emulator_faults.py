"""Fault scripting decisions (pure): matching, counting down, precedence, seeded rates."""

from __future__ import annotations

import pytest

from voiceslot.testing.emulator.faults import Fault, FaultKind, FaultScript, Op


def test_no_faults_means_clean_requests() -> None:
    script = FaultScript()
    assert script.decide("elevenlabs", Op.CLONE).fault is None


def test_a_fault_hits_only_matching_requests_and_only_its_count() -> None:
    script = FaultScript()
    script.inject(Fault(FaultKind.SERVER_ERROR, op=Op.CLONE, provider="cartesia", times=2))

    assert script.decide("elevenlabs", Op.CLONE).fault is None
    assert script.decide("cartesia", Op.LIST).fault is None
    hits = [script.decide("cartesia", Op.CLONE).fault for _ in range(3)]

    assert [f.kind if f else None for f in hits] == [FaultKind.SERVER_ERROR] * 2 + [None]
    assert script.pending == []


def test_faults_apply_in_injection_order() -> None:
    script = FaultScript()
    script.inject(Fault(FaultKind.RATE_LIMITED, retry_after=3))
    script.inject(Fault(FaultKind.HANG, hang_s=2))

    first = script.decide("elevenlabs", Op.TTS).fault
    second = script.decide("elevenlabs", Op.TTS).fault

    assert first is not None and first.kind == FaultKind.RATE_LIMITED and first.retry_after == 3
    assert second is not None and second.kind == FaultKind.HANG


def test_stream_breaks_wait_for_a_stream() -> None:
    script = FaultScript()
    script.inject(Fault(FaultKind.STREAM_BREAK))

    assert script.decide("elevenlabs", Op.TTS).fault is None
    assert script.decide("elevenlabs", Op.CLONE).fault is None
    hit = script.decide("elevenlabs", Op.TTS_STREAM).fault
    assert hit is not None and hit.kind == FaultKind.STREAM_BREAK


def test_latency_applies_to_every_decision() -> None:
    script = FaultScript()
    script.set_latency(0.3)
    script.inject(Fault(FaultKind.SERVER_ERROR))

    assert script.decide("cartesia", Op.LIST).latency_s == 0.3
    assert script.decide("cartesia", Op.LIST).latency_s == 0.3


def pattern(script: FaultScript, n: int = 200) -> list[bool]:
    return [script.decide("elevenlabs", Op.LIST).fault is not None for _ in range(n)]


def test_random_error_rate_is_seeded_and_roughly_right() -> None:
    a, b, c = FaultScript(), FaultScript(), FaultScript()
    a.set_error_rate(0.25, seed=11)
    b.set_error_rate(0.25, seed=11)
    c.set_error_rate(0.25, seed=12)

    runs = pattern(a), pattern(b), pattern(c)

    assert runs[0] == runs[1]
    assert runs[0] != runs[2]
    assert 25 <= sum(runs[0]) <= 75


def test_random_errors_carry_the_configured_status() -> None:
    script = FaultScript()
    script.set_error_rate(1.0, seed=0, status=502)
    fault = script.decide("cartesia", Op.TTS).fault
    assert fault is not None and fault.kind == FaultKind.SERVER_ERROR and fault.status == 502


def test_scripted_faults_take_precedence_over_the_random_rate() -> None:
    script = FaultScript()
    script.set_error_rate(1.0, seed=0)
    script.inject(Fault(FaultKind.LOST_RESPONSE, op=Op.CLONE))

    fault = script.decide("elevenlabs", Op.CLONE).fault
    assert fault is not None and fault.kind == FaultKind.LOST_RESPONSE


def test_clear_removes_everything() -> None:
    script = FaultScript()
    script.set_latency(1)
    script.set_error_rate(1.0)
    script.inject(Fault(FaultKind.HANG))
    script.clear()

    assert script.decide("cartesia", Op.TTS) == script.decide("cartesia", Op.TTS)
    assert script.decide("cartesia", Op.TTS).fault is None and script.latency_s == 0


@pytest.mark.parametrize(
    "bad",
    [
        lambda s: s.inject(Fault(FaultKind.HANG, times=0)),
        lambda s: s.set_error_rate(1.5),
        lambda s: s.set_latency(-1),
    ],
)
def test_invalid_settings_are_refused(bad: object) -> None:
    with pytest.raises(ValueError):
        bad(FaultScript())  # type: ignore[operator]
