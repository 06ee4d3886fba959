"""Per-user caps and idempotency keys under concurrency, on both databases."""

from __future__ import annotations

import asyncio

import pytest

from allocator_svc.domain.states import VoiceState
from allocator_svc.records import Queued
from allocator_svc.repository import AllocatorRepository, NewVoice
from voiceslot.errors import QuotaExceeded
from voiceslot.ids import new_id

from .conftest import T0, add_voice, at, claim, ensure_params


async def test_per_user_cap_holds_exactly_under_concurrent_enqueues(repo: AllocatorRepository):
    await repo.upsert_providers([("p", "cartesia", 1)], T0)
    mine = [await add_voice(repo, "greedy") for _ in range(12)]
    theirs = await add_voice(repo, "other")

    outcomes = await asyncio.gather(
        *(repo.ensure_active(ensure_params(v.id, cap=4), at(1)) for v in mine),
        return_exceptions=True,
    )
    refused = [o for o in outcomes if isinstance(o, QuotaExceeded)]
    assert sum(isinstance(o, Queued) for o in outcomes) == 4
    assert len(refused) == 8
    (violation,) = refused[0].violations
    assert violation.subject == "user:greedy" and "4" in violation.description
    # The cap is per user: someone else is not refused, and in-flight requests count too.
    assert isinstance(await repo.ensure_active(ensure_params(theirs.id, cap=4), at(1)), Queued)
    assert len((await claim(repo, at(2))).claims) == 1
    rest = [v for v, o in zip(mine, outcomes, strict=True) if isinstance(o, QuotaExceeded)]
    with pytest.raises(QuotaExceeded):
        await repo.ensure_active(ensure_params(rest[0].id, cap=4), at(3))


async def test_concurrent_ensures_of_one_voice_enqueue_one_request(repo: AllocatorRepository):
    await repo.upsert_providers([("p", "cartesia", 5)], T0)
    voice = await add_voice(repo, "u")
    outcomes = await asyncio.gather(
        *(repo.ensure_active(ensure_params(voice.id), at(1)) for _ in range(20))
    )
    assert all(isinstance(o, Queued) for o in outcomes)
    assert (await repo.provider_stats(at(1), name="p"))[0].queued == 1
    (c,) = (await claim(repo, at(2))).claims
    assert c.voice_id == voice.id and c.generation == 0


async def test_registration_idempotency_key_is_unique_per_owner(repo: AllocatorRepository):
    def new(owner: str, key: str) -> NewVoice:
        return NewVoice(
            id=new_id("v"),
            owner=owner,
            display_name="n",
            provider="p",
            language="en",
            sample_key="samples/x.wav",
            sample_sha256="0" * 64,
            sample_bytes=1,
            idempotency_key=key,
        )

    results = await asyncio.gather(*(repo.create_voice(new("u", "k-1"), T0) for _ in range(8)))
    assert sum(created for _, created in results) == 1
    assert len({voice.id for voice, _ in results}) == 1
    assert results[0][0].state == VoiceState.REGISTERED
    # The same key from another owner is another voice.
    other, created = await repo.create_voice(new("someone-else", "k-1"), T0)
    assert created and other.id != results[0][0].id
    assert (await repo.find_by_idempotency_key("u", "k-1")).id == results[0][0].id
