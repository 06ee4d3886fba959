"""Trace files, the built-in generators and the replay engine's rules (leases, waits,
one clone for every request queued on the same voice)."""

from __future__ import annotations

import pytest
from slot_economy.adapters import ProductLRU
from slot_economy.belady import Belady, next_use
from slot_economy.policies import LRU, AdmitContext, Wait, _Base
from slot_economy.replay import replay
from slot_economy.traces import Request, Trace, TraceError, builtin_traces, parse_trace


def test_parse_accepts_every_documented_shape() -> None:
    trace = parse_trace(
        [
            "# recorded 2026-11-27\n",
            "\n",
            "0.0 alice\n",
            "1.5 bob u7\n",
            "2 alice u1 3.5  # trailing comment\n",
        ],
        slots=3,
    )
    assert [(r.t, trace.voice_name(r.voice), r.lease) for r in trace.requests] == [
        (0.0, "alice", 0.0),
        (1.5, "bob", 0.0),
        (2.0, "alice", 3.5),
    ]
    assert trace.slots == 3


def test_parse_a_bare_voice_per_line_spaces_requests_a_second_apart() -> None:
    trace = parse_trace(["a", "b", "a"])
    assert [r.t for r in trace.requests] == [0.0, 1.0, 2.0]
    assert trace.requests[0].voice == trace.requests[2].voice


@pytest.mark.parametrize(
    ("lines", "message"),
    [
        (["0 a", "x b"], "line 2: timestamp must be a number, got 'x'"),
        (["5 a", "4 b"], "line 2: timestamp 4 is earlier than the previous request's 5"),
        (["0 a u -1"], "line 1: lease_seconds must be >= 0"),
        (["0 a u 1 extra"], "line 1: expected at most 4 fields"),
        (["0 a u nan"], "line 1: lease_seconds must be finite"),
        (["# nothing", ""], "no requests"),
    ],
)
def test_parse_errors_name_the_line(lines: list[str], message: str) -> None:
    with pytest.raises(TraceError, match=message.replace("(", r"\(").replace(")", r"\)")):
        parse_trace(lines)


def test_builtin_traces_are_seeded_sorted_and_sized() -> None:
    first = builtin_traces(0.01)
    again = builtin_traces(0.01)
    assert [t.name for t in first] == [
        "zipf-0.8",
        "zipf-1.0",
        "sessions-normal",
        "sessions-overload",
        "diurnal",
        "scan",
    ]
    for a, b in zip(first, again, strict=True):
        assert a.requests == b.requests
        assert len(a.requests) == 1000
        assert all(x.t <= y.t for x, y in zip(a.requests, a.requests[1:], strict=False))
        assert a.slots == 10


def _trace(rows: list[tuple[float, int, float]], slots: int) -> Trace:
    return Trace("t", [Request(t, v, v, lease) for t, v, lease in rows], slots)


def test_a_request_waits_while_every_slot_is_leased() -> None:
    # one slot, held 0..5 by voice 0; voice 1 arrives at 1 and is served at 5
    result = replay(_trace([(0, 0, 5.0), (1, 1, 0.0)], 1), LRU(1))
    assert result.clones == 2
    assert result.waited == 1
    assert result.wait_max == pytest.approx(4.0)


def test_requests_queued_on_one_voice_share_its_clone() -> None:
    result = replay(_trace([(0, 0, 5.0), (1, 1, 0.0), (2, 1, 0.0), (3, 1, 0.0)], 1), LRU(1))
    assert result.clones == 2
    assert result.waited == 3


def test_the_engine_rejects_a_policy_that_breaks_the_rules() -> None:
    class EvictsAStranger(_Base):
        name = "bad"

        def hit(self, voice: int, now: float) -> None:
            pass

        def admit(self, voice: int, ctx: AdmitContext) -> int | None:
            return None if ctx.free_slots else 999

    with pytest.raises(RuntimeError, match="not an evictable resident"):
        replay(_trace([(0, 0, 0.0), (1, 1, 0.0)], 1), EvictsAStranger())

    class WaitsUndeclared(EvictsAStranger):
        def admit(self, voice: int, ctx: AdmitContext) -> int | None | Wait:
            return None if ctx.free_slots else Wait(None)

    with pytest.raises(RuntimeError, match="does not declare may_wait"):
        replay(_trace([(0, 0, 0.0), (1, 1, 0.0)], 1), WaitsUndeclared())


def test_belady_with_leases_waits_then_evicts_by_next_use() -> None:
    # slots 2: 0 and 1 leased until 10; 2 arrives at 1 and waits; at 10 voice 0 is
    # needed again at index 3 and voice 1 never: 1 goes.
    rows = [(0, 0, 10.0), (0, 1, 10.0), (1, 2, 0.0), (20, 0, 0.0)]
    trace = _trace(rows, 2)
    result = replay(trace, Belady(2, trace.requests))
    assert result.clones == 3
    assert result.wait_max == pytest.approx(9.0)
    assert next_use(trace.requests) == [3, float("inf"), float("inf"), float("inf")]


def test_the_products_lru_setting_replays_as_lru() -> None:
    seq = [0, 1, 2, 0, 3, 1, 4, 0, 2, 5, 3, 0, 1]
    trace = _trace([(1.0 * i, v, 0.0) for i, v in enumerate(seq)], 3)
    assert replay(trace, ProductLRU(3)).clones == replay(trace, LRU(3)).clones
