"""Allocation failures through ``Lifecycle`` and ``AllocatorRepository`` on both
databases, with an in-test provider whose every answer the test scripts: backoff and
dead-lettering, 429 with Retry-After, and the breaker and token bucket kept on the
provider's row so that separate replicas agree."""

from __future__ import annotations

import random
from collections.abc import Callable
from datetime import timedelta
from pathlib import Path

import pytest

from allocator_svc.domain.breaker import BreakerPolicy, BreakerState
from allocator_svc.domain.retry import RetryPolicy
from allocator_svc.domain.states import EventReason, VoiceState
from allocator_svc.lifecycle import Lifecycle
from allocator_svc.repository import AllocatorRepository
from voiceslot.clock import ManualClock
from voiceslot.providers.errors import InvalidInput, RateLimited, Transient
from voiceslot.storage.local import LocalStorage
from voiceslot.token_bucket import TokenBucket

from .conftest import T0, add_voice, claim, ensure_params
from .fakes import FakeProvider

BREAKER = BreakerPolicy(
    failure_threshold=3, cooldown=timedelta(seconds=30), probe_timeout=timedelta(seconds=60)
)


@pytest.fixture
async def world(repo: AllocatorRepository, tmp_path: Path):
    storage = LocalStorage(tmp_path / "storage")
    await storage.put("samples/none.wav", b"RIFF")
    fake = FakeProvider("p")
    clock = ManualClock(T0)
    lifecycle = Lifecycle(
        repo=repo,
        providers={"p": fake},
        storage=storage,
        clock=clock,
        retry=RetryPolicy(max_attempts=3, base_s=1.0, max_s=4.0),
        label_prefix="vs-",
        rng=random.Random(7),
        breaker=BREAKER,
    )
    await repo.upsert_providers([("p", "cartesia", 10)], T0)
    return lifecycle, fake, clock


async def dispatch(lifecycle: Lifecycle, **kw) -> list:
    """One dispatcher round, its allocations run to the end."""
    result = await claim(
        lifecycle.repo,
        lifecycle.clock.now(),
        breaker=lifecycle.breaker,
        bucket=lifecycle.bucket,
        **kw,
    )
    return [await lifecycle.allocate(c) for c in result.claims]


async def test_retryable_failures_back_off_then_dead_letter_with_a_bounded_error(world):
    lifecycle, fake, clock = world
    repo = lifecycle.repo
    voice = await add_voice(repo, "u")
    await repo.ensure_active(ensure_params(voice.id), clock.now())
    fake.clone_errors = [Transient("upstream exploded: " + "x" * 2000)] * 3
    lifecycle.breaker = BreakerPolicy(failure_threshold=100)  # this test is about retries

    outcomes = []
    for _ in range(3):
        (outcome,) = await dispatch(lifecycle)
        outcomes.append(outcome.state)
        if outcome.state == VoiceState.QUEUED:
            # Not due again before its backoff: a claim right now finds nothing.
            assert await dispatch(lifecycle) == []
        clock.advance(4.0)  # the policy's cap
    assert outcomes == [VoiceState.QUEUED, VoiceState.QUEUED, VoiceState.FAILED]
    failed = await repo.get_voice(voice.id, clock.now())
    assert failed.state == VoiceState.FAILED
    assert failed.last_error.startswith("Transient: upstream exploded")
    assert len(failed.last_error) == 500
    events = await repo.list_events(voice.id, before_id=None, limit=50)
    assert [e.reason for e in events].count(EventReason.ALLOCATION_RETRY) == 2
    assert events[0].reason == EventReason.DEAD_LETTERED and len(events[0].message) <= 500
    assert (await repo.provider_stats(clock.now(), name="p"))[0].queued == 0
    assert fake.clones == 3

    # Asked for again, a dead-lettered voice gets a fresh request with fresh attempts.
    await repo.ensure_active(ensure_params(voice.id), clock.now())
    (outcome,) = await dispatch(lifecycle)
    assert outcome.state == VoiceState.READY
    assert sum(fake.created.values()) == 1


async def test_a_fatal_error_dead_letters_at_once(world):
    lifecycle, fake, clock = world
    voice = await add_voice(lifecycle.repo, "u")
    await lifecycle.repo.ensure_active(ensure_params(voice.id), clock.now())
    fake.clone_errors = [InvalidInput("sample is silent")]
    (outcome,) = await dispatch(lifecycle)
    assert outcome.state == VoiceState.FAILED
    assert "sample is silent" in (await lifecycle.repo.get_voice(voice.id, clock.now())).last_error
    # A refusal of one request says nothing against the provider.
    breaker, _ = await lifecycle.repo.provider_health("p")
    assert breaker.state == BreakerState.CLOSED and breaker.failures == 0


async def test_429_retry_after_sets_run_at_and_pauses_the_whole_provider(world):
    lifecycle, fake, clock = world
    repo = lifecycle.repo
    first, second = await add_voice(repo, "a"), await add_voice(repo, "b")
    await repo.ensure_active(ensure_params(first.id), clock.now())
    fake.clone_errors = [RateLimited("too many requests", retry_after=7.0)]
    (outcome,) = await dispatch(lifecycle)
    assert outcome.state == VoiceState.QUEUED
    # Another user's request, due now, must wait out the provider's pause too.
    await repo.ensure_active(ensure_params(second.id), clock.now())
    clock.advance(6.9)
    assert await dispatch(lifecycle) == []
    clock.advance(0.2)
    done = {o.voice_id: o.state for o in await dispatch(lifecycle)}
    assert done == {first.id: VoiceState.READY, second.id: VoiceState.READY}
    # Throttling is not an outage.
    breaker, _ = await repo.provider_health("p")
    assert breaker.state == BreakerState.CLOSED and breaker.failures == 0


async def test_breaker_opens_probes_once_and_replicas_agree(
    world, make_repo: Callable[[], AllocatorRepository]
):
    lifecycle, fake, clock = world
    repo = lifecycle.repo
    other_replica = make_repo()  # its own engine and connections: shares only the database
    voices = [await add_voice(repo, f"u{i}") for i in range(6)]
    for v in voices[:3]:
        await repo.ensure_active(ensure_params(v.id), clock.now())
    fake.clone_errors = [Transient("503")] * 3
    assert [o.state for o in await dispatch(lifecycle)] == [VoiceState.QUEUED] * 3
    breaker, _ = await other_replica.provider_health("p")
    assert breaker.state == BreakerState.OPEN and breaker.failures == 3

    for v in voices[3:]:
        await repo.ensure_active(ensure_params(v.id), clock.now())
    clock.advance(29)  # backoffs are over, the cool-down is not: nothing goes out
    assert (await claim(other_replica, clock.now(), breaker=BREAKER)).claims == []
    assert await dispatch(lifecycle) == []

    clock.advance(2)  # cool-down over: exactly one probe, whoever asks first
    probe = await claim(other_replica, clock.now(), breaker=BREAKER)
    assert len(probe.claims) == 1
    assert (await claim(repo, clock.now(), breaker=BREAKER)).claims == []
    breaker, _ = await repo.provider_health("p")
    assert breaker.state == BreakerState.HALF_OPEN

    assert (await lifecycle.allocate(probe.claims[0])).state == VoiceState.READY
    breaker, _ = await other_replica.provider_health("p")
    assert breaker == type(breaker)()  # closed, no failures
    assert len(await dispatch(lifecycle)) == 5


async def test_a_failed_probe_opens_the_breaker_again(world):
    lifecycle, fake, clock = world
    repo = lifecycle.repo
    voices = [await add_voice(repo, f"u{i}") for i in range(4)]
    for v in voices:
        await repo.ensure_active(ensure_params(v.id), clock.now())
    fake.clone_errors = [Transient("503")] * 4
    await dispatch(lifecycle, limit=3)
    clock.advance(31)
    (probe,) = await dispatch(lifecycle)
    assert probe.state == VoiceState.QUEUED
    breaker, _ = await repo.provider_health("p")
    assert breaker.state == BreakerState.OPEN
    assert breaker.open_until == clock.now() + BREAKER.cooldown


async def test_token_bucket_limits_clone_starts_across_replicas(
    world, make_repo: Callable[[], AllocatorRepository]
):
    lifecycle, fake, clock = world
    repo = lifecycle.repo
    bucket = TokenBucket(rate_per_s=2.0, burst=3.0)
    voices = [await add_voice(repo, f"u{i}") for i in range(8)]
    for v in voices:
        await repo.ensure_active(ensure_params(v.id), clock.now())
    other = make_repo()
    assert len((await claim(repo, clock.now(), bucket=bucket)).claims) == 3  # the burst
    assert (await claim(other, clock.now(), bucket=bucket)).claims == []
    clock.advance(1.0)  # two tokens refilled
    assert len((await claim(other, clock.now(), bucket=bucket)).claims) == 2
    assert (await claim(repo, clock.now(), bucket=bucket)).claims == []
