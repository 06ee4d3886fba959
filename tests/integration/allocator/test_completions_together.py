"""Allocations completing together (one statement for all of them on PostgreSQL) end as
each would alone: every one fenced by its own claim's token, each voice READY with its
own remote copy and event, and the provider's mean clone duration moved by every
measured clone in turn."""

from __future__ import annotations

import asyncio
import dataclasses

import pytest

from allocator_svc.domain.estimates import ewma
from allocator_svc.domain.states import EventReason, VoiceState
from allocator_svc.records import Queued
from allocator_svc.repository import AllocatorRepository

from .conftest import add_voice, at, claim, ensure_params


async def test_completions_together_are_fenced_and_counted_one_by_one(
    repo: AllocatorRepository,
):
    await repo.upsert_providers([("p", "cartesia", 4)], at(0))
    voices = [await add_voice(repo, f"u{i}") for i in range(5)]
    for v in voices:
        await repo.ensure_active(ensure_params(v.id), at(1))
    claims = (await claim(repo, at(2), limit=4)).claims
    assert len(claims) == 4
    stale = dataclasses.replace(claims[3], token="not-this-claim")
    seconds = [2.0, 4.0, 6.0]

    done = await asyncio.gather(
        *(
            repo.complete_allocation(c, f"r-{c.voice_id}", at(3), adopted=False, clone_seconds=s)
            for c, s in zip(claims[:3], seconds, strict=True)
        ),
        repo.complete_allocation(stale, "r-stale", at(3), adopted=False, clone_seconds=100.0),
    )

    assert done == [True, True, True, False]
    for c in claims[:3]:
        v = await repo.get_voice(c.voice_id, at(4))
        assert (v.state, v.provider_voice_id) == (VoiceState.READY, f"r-{c.voice_id}")
        events = await repo.list_events(c.voice_id, before_id=None, limit=100)
        assert [e.reason for e in events].count(EventReason.CLONED) == 1
    fenced = await repo.get_voice(stale.voice_id, at(4))
    assert (fenced.state, fenced.provider_voice_id) == (VoiceState.ALLOCATING, None)
    # The mean as if the three had completed one after another; the fenced one is no
    # measurement. The waiting voice is first in line: one wave of that mean.
    mean = seconds[0]
    for s in seconds:
        mean = ewma(mean, s)
    (waiting,) = [v for v in voices if v.id not in {c.voice_id for c in claims}]
    out = await repo.ensure_active(ensure_params(waiting.id), at(5))
    assert isinstance(out, Queued)
    assert out.estimated_wait_s == pytest.approx(mean)
