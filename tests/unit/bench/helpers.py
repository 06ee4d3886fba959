"""Drive a policy over a plain sequence of voices (no leases), recording its victims."""

from __future__ import annotations

from collections.abc import Sequence

from slot_economy.policies import AdmitContext, ReplayPolicy, Wait
from slot_economy.traces import Request


def drive(policy: ReplayPolicy, seq: Sequence[int], slots: int) -> tuple[list[int], int]:
    """(victims in order, clones) for requests of ``seq`` one second apart."""
    resident: set[int] = set()
    victims: list[int] = []
    clones = 0
    for i, v in enumerate(seq):
        policy.observe(i, Request(float(i), v, v, 0.0))
        if v in resident:
            policy.hit(v, float(i))
            continue
        ctx = AdmitContext(
            now=float(i),
            free_slots=slots - len(resident),
            evictable=lambda x: x in resident,
            residents=resident,
            lease_until={},
            waiting_since=float(i),
            backlog=1,
        )
        out = policy.admit(v, ctx)
        assert not isinstance(out, Wait)
        if out is not None:
            assert out in resident
            resident.discard(out)
            victims.append(out)
        assert len(resident) < slots
        resident.add(v)
        clones += 1
    return victims, clones


A, B, C, D, E, F = range(6)
