"""NextRun: callers asking together share one run, and never one that began before
they asked."""

from __future__ import annotations

import asyncio

import pytest

from allocator_svc.coalesce import NextRun


class Probe:
    """A call that counts its runs and waits until the test lets the current one end."""

    def __init__(self) -> None:
        self.runs = 0
        self.release = asyncio.Event()

    async def __call__(self, key: str) -> int:
        self.runs += 1
        run = self.runs
        await self.release.wait()
        self.release.clear()
        return run


async def settle() -> None:
    for _ in range(5):
        await asyncio.sleep(0)


async def test_callers_during_a_run_share_the_next_one():
    probe = Probe()
    shared = NextRun(probe)
    first = asyncio.create_task(shared("p"))
    await settle()
    later = [asyncio.create_task(shared("p")) for _ in range(5)]
    await settle()
    assert probe.runs == 1  # the five wait for the run after the one already out
    probe.release.set()
    assert await first == 1
    await settle()
    assert probe.runs == 2
    probe.release.set()
    assert await asyncio.gather(*later) == [2] * 5


async def test_keys_run_apart_and_errors_reach_every_sharer():
    calls: list[str] = []

    async def failing(key: str) -> None:
        calls.append(key)
        await asyncio.sleep(0)
        raise RuntimeError(key)

    shared = NextRun(failing)
    results = await asyncio.gather(
        shared("a"), shared("b"), shared("a"), shared("a"), return_exceptions=True
    )
    assert [str(r) for r in results] == ["a", "b", "a", "a"]
    assert sorted(calls) == ["a", "a", "b"]  # the two later callers of "a" shared one run
    with pytest.raises(RuntimeError):
        await shared("b")
