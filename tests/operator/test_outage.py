"""Honest status: when the operator cannot ask the allocator, Ready turns Unknown (and
the phase Unknown) with a reason and one event, within a refresh; when the allocator
answers again, Ready is True again. The allocator itself is fine all along: only the
operator's path to it is cut (a gate between the two)."""

from __future__ import annotations

SLOW_DEADLINE_S = 60.0  # gRPC reconnects with a backoff (at most 10 s in the operator)


async def test_allocator_unreachable_makes_ready_unknown_then_true_again(start_stack) -> None:
    stack = await start_stack(capacity=2)
    voice = await stack.watched_voice("watched")
    assert stack.cluster.condition("watched", "Ready")["status"] == "True"
    assert stack.counter("allocator_up") == 1
    failed_before = stack.counter("errors_total", where="reconcile")

    stack.gate.close()
    unknown = await stack.condition("watched", "Ready", "Unknown")
    # Said by the first refresh that failed (or the one after, had a tick raced the patch).
    assert stack.counter("errors_total", where="reconcile") - failed_before <= 3
    assert unknown["reason"] == "AllocatorUnreachable"
    assert stack.cluster.status("watched")["phase"] == "Unknown"
    await stack.cluster.posted("watched", "AllocatorUnreachable")
    assert stack.counter("allocator_up") == 0

    # More failing refreshes: still Unknown, and no second event for the same outage.
    await stack.counted("errors_total", where="reconcile")
    assert stack.cluster.condition("watched", "Ready")["status"] == "Unknown"
    assert stack.cluster.event_reasons("watched").count("AllocatorUnreachable") == 1
    assert await stack.allocator.state(voice.voice_id) == "READY"  # it was never down

    stack.gate.open()
    ready = await stack.condition("watched", "Ready", "True", timeout=SLOW_DEADLINE_S)
    assert ready["reason"] == "SlotHeld"
    assert stack.cluster.status("watched")["phase"] == "Ready"
    await stack.cluster.posted("watched", "AllocatorReachable")
    assert stack.counter("allocator_up") == 1
