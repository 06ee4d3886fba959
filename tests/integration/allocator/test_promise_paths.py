"""Regression tests for the five paths by which the allocator broke its promise ("never
duplicates a remote voice, leaks a slot or loses a request"), issue 10:

1. a clone that times out on our side and completes at the provider later is adopted by
   the retry (same label), not cloned a second time;
2. reclaims in flight count against the backlog they serve (dispatcher rounds and idle
   reclaim alike), and idle reclaim respects the add/edit budget;
3. a stuck reset never acts on an allocation whose dispatch lease is live, and a
   fenced-off dispatcher never deletes the remote voice a reset adopted;
4. a voice's row is not deleted while its remote copy may still exist (DELETING);
5. sample downloads are bounded like uploads.

Each ran red on the code before its fix.
"""

from __future__ import annotations

import asyncio
import time
from collections.abc import Callable, Iterator
from pathlib import Path

import pytest

from allocator_svc.domain.states import VoiceState
from allocator_svc.lifecycle import DELETE_ATTEMPTS
from allocator_svc.maintenance import Task
from allocator_svc.records import Queued
from allocator_svc.repository import AllocatorRepository
from allocator_svc.service import Allocator, RegisterParams
from tests.integration.synth.support import eventually
from voiceslot.auth import Principal
from voiceslot.errors import FailedPrecondition, NotFound
from voiceslot.providers.errors import Transient
from voiceslot.providers.registry import build_provider
from voiceslot.storage.local import LocalStorage
from voiceslot.testing.emulator import Fault, FaultKind, Op, ProviderEmulator

from .conftest import ServedAllocator, add_voice, at, claim, ensure_params
from .test_reclaim import fill, use

ADMIN = Principal("admin", "admin")
# Deadlines sized for a loaded 2-core machine: generous, and only ever waited out on failure.
DEADLINE_S = 30.0


async def new_voice(allocator: Allocator, sample: bytes, owner: str = "alice") -> str:
    voice, _ = await allocator.register_voice(
        ADMIN,
        RegisterParams(
            display_name="v", provider="", language="en", idempotency_key="", owner=owner
        ),
        sample,
    )
    return voice.id


async def until(predicate: Callable[[], object], what: str) -> None:
    await eventually(predicate, timeout=DEADLINE_S, what=what)


async def state_of(allocator: Allocator, voice_id: str) -> VoiceState | None:
    try:
        return (await allocator.get_voice(ADMIN, voice_id)).state
    except NotFound:
        return None


def dispatcher_idle(allocator: Allocator) -> bool:
    return not allocator.dispatcher._inflight


# -- 1. the same label until the remote copy is confirmed gone ------------------------------


@pytest.fixture
def emulator() -> Iterator[ProviderEmulator]:
    with ProviderEmulator() as emulator:
        yield emulator


async def test_a_clone_that_lands_after_our_timeout_is_adopted_not_cloned_again(
    serve_allocator: Callable, emulator: ProviderEmulator, sample_wav: bytes, tmp_path: Path
):
    # The adapter gives up after 0.5 s; the emulator finishes the clone after 2 s.
    config = emulator.provider_config("cartesia", name="fake", timeout_s=0.5)
    adapter = build_provider(config, storage=LocalStorage(tmp_path / "engine"))
    emulator.state.faults.inject(Fault(FaultKind.HANG, op=Op.CLONE, hang_s=2.0))
    served: ServedAllocator = await serve_allocator(
        capacity=2, fake=adapter, clone_settle_s=3.0, backoff_base_s=0.05
    )
    voice_id = await new_voice(served.allocator, sample_wav)
    started = time.monotonic()
    assert isinstance(await served.allocator.ensure_active(ADMIN, voice_id), Queued)
    await until(lambda: state_of(served.allocator, voice_id), "the voice to leave REGISTERED")

    async def ready() -> bool:
        return await state_of(served.allocator, voice_id) == VoiceState.READY

    await until(ready, "the voice to become READY")
    # Let any clone still hanging at the emulator land before counting.
    await asyncio.sleep(max(0.0, 2.5 - (time.monotonic() - started)))
    await until(lambda: dispatcher_idle(served.allocator), "the dispatcher to settle")
    ever = [v for v in emulator.state.created_voices("cartesia") if voice_id in v.name]
    assert len(ever) == 1, [(v.name, v.voice_id, v.live) for v in ever]
    voice = await served.allocator.get_voice(ADMIN, voice_id)
    assert voice.provider_voice_id == ever[0].voice_id and ever[0].live


async def test_a_5xx_after_the_provider_cloned_is_not_cloned_again_under_a_lagging_list(
    serve_allocator: Callable, emulator: ProviderEmulator, sample_wav: bytes, tmp_path: Path
):
    """A 5xx does not prove that nothing happened: a gateway can fail after the backend
    created the voice. With the listing a moment behind, the look-up right after the error
    does not see it; the retry must not clone a second copy under the same label."""
    config = emulator.provider_config("cartesia", name="fake")
    adapter = build_provider(config, storage=LocalStorage(tmp_path / "engine"))
    emulator.state.faults.set_list_lag(1.0)
    emulator.state.faults.inject(Fault(FaultKind.ERROR_AFTER_WORK, op=Op.CLONE, status=502))
    served: ServedAllocator = await serve_allocator(
        capacity=2, fake=adapter, clone_settle_s=2.0, backoff_base_s=0.05
    )
    voice_id = await new_voice(served.allocator, sample_wav)
    assert isinstance(await served.allocator.ensure_active(ADMIN, voice_id), Queued)

    async def ready() -> bool:
        return await state_of(served.allocator, voice_id) == VoiceState.READY

    await until(ready, "the voice to become READY")
    await until(lambda: dispatcher_idle(served.allocator), "the dispatcher to settle")
    ever = [v for v in emulator.state.created_voices("cartesia") if voice_id in v.name]
    assert len(ever) == 1, [(v.name, v.voice_id, v.live) for v in ever]
    voice = await served.allocator.get_voice(ADMIN, voice_id)
    assert voice.provider_voice_id == ever[0].voice_id and ever[0].live


async def test_a_copy_the_listing_does_not_show_yet_is_not_called_gone(
    serve_allocator: Callable, sample_wav: bytes
):
    served: ServedAllocator = await serve_allocator(capacity=1, clone_settle_s=1.0)
    allocator = served.allocator
    voice_id = await new_voice(allocator, sample_wav)
    await allocator.ensure_active(ADMIN, voice_id)
    await until(lambda: ready_now(allocator, voice_id), "READY")
    before = await allocator.get_voice(ADMIN, voice_id)
    served.fake.unlisted.add(before.provider_voice_id or "")  # the index lags the create
    await allocator.run_maintenance([Task.RECONCILE], provider="")
    after = await allocator.get_voice(ADMIN, voice_id)
    assert after.state == VoiceState.READY, "a copy the listing lags behind was called gone"
    assert after.generation == before.generation
    await asyncio.sleep(1.2)  # however long the listing lags, the copy itself answers
    await allocator.run_maintenance([Task.RECONCILE], provider="")
    assert await state_of(allocator, voice_id) == VoiceState.READY
    served.fake.live.pop(before.provider_voice_id or "")  # now it is really gone
    await allocator.run_maintenance([Task.RECONCILE], provider="")
    assert await state_of(allocator, voice_id) == VoiceState.IDLE


# -- 2. reclaims in flight count; one decision for backlog and idle reclaim -----------------


async def test_dispatcher_rounds_do_not_evict_again_for_a_request_a_reclaim_serves(
    repo: AllocatorRepository,
):
    a, b, c = await fill(repo, 3)
    for t, voice in ((30, a), (40, b), (50, c)):
        await use(repo, voice, t)
    waiting = await add_voice(repo, "newcomer")
    await repo.ensure_active(ensure_params(waiting.id), at(60))
    evicted = []
    for t in (61, 62, 63):  # three rounds while the first reclaim is still deleting
        evicted += [r.voice_id for r in (await claim(repo, at(t))).reclaims]
    assert evicted == [a.id]


async def test_idle_reclaim_counts_reclaims_in_flight(serve_allocator: Callable, sample_wav: bytes):
    served: ServedAllocator = await serve_allocator(capacity=2, idle_reclaim_after_s=0.01)
    allocator = served.allocator
    holders = [await new_voice(allocator, sample_wav, owner=f"u{i}") for i in range(2)]
    for voice_id in holders:
        await allocator.ensure_active(ADMIN, voice_id)
    for voice_id in holders:
        await until(lambda v=voice_id: ready_now(allocator, v), "holders READY")
    served.fake.delete_gate = asyncio.Event()  # reclaims hang in the remote delete
    newcomer = await new_voice(allocator, sample_wav, owner="newcomer")
    await asyncio.sleep(0.05)  # past the idle threshold
    await allocator.ensure_active(ADMIN, newcomer)
    await until(lambda: served.fake.delete_started.is_set(), "a reclaim to start")
    await asyncio.sleep(0.3)  # more dispatcher rounds
    await allocator.run_maintenance([Task.RECLAIM_IDLE], provider="")
    states = [await state_of(allocator, v) for v in holders]
    assert sorted(states) == sorted([VoiceState.READY, VoiceState.RECLAIMING]), states
    served.fake.delete_gate.set()
    await until(lambda: ready_now(allocator, newcomer), "the newcomer READY")


async def test_idle_reclaim_respects_the_add_edit_budget(
    serve_allocator: Callable, sample_wav: bytes
):
    served: ServedAllocator = await serve_allocator(capacity=1, idle_reclaim_after_s=0.01)
    allocator = served.allocator
    holder = await new_voice(allocator, sample_wav, owner="holder")
    await allocator.ensure_active(ADMIN, holder)
    await until(lambda: ready_now(allocator, holder), "the holder READY")
    # No clone left this month: evicting the holder would free a slot nobody can fill.
    await allocator.repo.set_add_edit_remaining("fake", 0, allocator.clock.now())
    newcomer = await new_voice(allocator, sample_wav, owner="newcomer")
    await asyncio.sleep(0.05)
    await allocator.ensure_active(ADMIN, newcomer)
    await asyncio.sleep(0.2)
    await allocator.run_maintenance([Task.RECLAIM_IDLE], provider="")
    assert await state_of(allocator, holder) == VoiceState.READY
    assert served.fake.deletes == 0


async def ready_now(allocator: Allocator, voice_id: str) -> bool:
    return await state_of(allocator, voice_id) == VoiceState.READY


# -- 3. resets are fenced by the dispatch lease; adopted copies are never deleted ----------


async def test_admin_reset_of_a_live_allocation_is_failed_precondition(
    serve_allocator: Callable, sample_wav: bytes
):
    served: ServedAllocator = await serve_allocator(capacity=1)
    served.fake.gate = asyncio.Event()  # the clone is in flight, its lease live (300 s)
    voice_id = await new_voice(served.allocator, sample_wav)
    await served.allocator.ensure_active(ADMIN, voice_id)
    await until(lambda: served.fake.clones == 1, "the clone to start")
    with pytest.raises(FailedPrecondition, match="live dispatch lease"):
        await served.allocator.reset_stuck(ADMIN, voice_id)
    assert await state_of(served.allocator, voice_id) == VoiceState.ALLOCATING
    served.fake.gate.set()
    await until(lambda: ready_now(served.allocator, voice_id), "READY")
    assert sum(served.fake.created.values()) == 1


async def test_a_fenced_off_dispatcher_keeps_the_copy_a_reset_adopted(
    serve_allocator: Callable, sample_wav: bytes
):
    served: ServedAllocator = await serve_allocator(capacity=1, allocation_timeout_s=0.3)
    served.fake.answer_gate = asyncio.Event()  # the clone is made; its answer hangs
    voice_id = await new_voice(served.allocator, sample_wav)
    await served.allocator.ensure_active(ADMIN, voice_id)
    await until(lambda: served.fake.live, "the remote voice to exist")
    await asyncio.sleep(0.5)  # past the dispatch lease: the sweeper may act
    await served.allocator.run_maintenance([Task.RESET_STUCK], provider="")
    adopted = await served.allocator.get_voice(ADMIN, voice_id)
    assert adopted.state == VoiceState.READY and adopted.provider_voice_id
    served.fake.answer_gate.set()  # the hung dispatcher comes back, fenced off
    await until(lambda: dispatcher_idle(served.allocator), "the dispatcher to finish")
    voice = await served.allocator.get_voice(ADMIN, voice_id)
    assert voice.state == VoiceState.READY
    assert voice.provider_voice_id in served.fake.live, "READY without its remote copy"


async def test_the_sweeper_leaves_a_renewed_dispatch_lease_alone(repo: AllocatorRepository):
    await repo.upsert_providers([("p", "cartesia", 1)], at(0))
    voice = await add_voice(repo, "a")
    await repo.ensure_active(ensure_params(voice.id), at(0))
    (c,) = (await claim(repo, at(1))).claims  # lease until at(301)
    assert (
        await repo.complete_allocation(c, "r1", at(2), adopted=True, lease_expired_by=at(2))
        is False
    )
    assert (
        await repo.fail_allocation(c, "reset", at(2), retry_at=at(2), lease_expired_by=at(2))
        is None
    )
    assert (await repo.get_voice(voice.id, at(2))).state == VoiceState.ALLOCATING
    with pytest.raises(FailedPrecondition):
        await repo.claim_for_voice(voice.id, at(2))
    assert await repo.complete_allocation(c, "r1", at(302), adopted=True, lease_expired_by=at(302))


# -- 4. no row is deleted while its remote copy may exist -----------------------------------


async def test_a_failed_remote_delete_keeps_a_tombstone_that_maintenance_finishes(
    serve_allocator: Callable, sample_wav: bytes
):
    served: ServedAllocator = await serve_allocator(capacity=1)
    allocator = served.allocator
    voice_id = await new_voice(allocator, sample_wav)
    await allocator.ensure_active(ADMIN, voice_id)
    await until(lambda: ready_now(allocator, voice_id), "READY")
    remote = (await allocator.get_voice(ADMIN, voice_id)).provider_voice_id
    # Every try of the delete fails (a delete is retried a few times in place).
    served.fake.delete_errors = [Transient("503", status_code=503)] * DELETE_ATTEMPTS
    await allocator.delete_voice(ADMIN, voice_id, force=False)
    # The copy is still there, so is the row, and so is its slot.
    assert remote in served.fake.live
    assert await state_of(allocator, voice_id) is not None, "row deleted, remote copy leaked"
    assert await state_of(allocator, voice_id) == VoiceState.DELETING
    (stats,) = await allocator.repo.provider_stats(allocator.clock.now())
    assert stats.used == 1
    with pytest.raises(FailedPrecondition):
        await allocator.ensure_active(ADMIN, voice_id)
    await allocator.run_maintenance([Task.RESET_STUCK], provider="")
    assert remote not in served.fake.live
    assert await state_of(allocator, voice_id) is None


async def test_a_forced_delete_mid_clone_deletes_the_late_copy_before_the_row(
    serve_allocator: Callable, sample_wav: bytes
):
    served: ServedAllocator = await serve_allocator(capacity=1)
    allocator = served.allocator
    served.fake.gate = asyncio.Event()
    voice_id = await new_voice(allocator, sample_wav)
    await allocator.ensure_active(ADMIN, voice_id)
    await until(lambda: served.fake.clones == 1, "the clone to start")
    await allocator.delete_voice(ADMIN, voice_id, force=True)
    assert await state_of(allocator, voice_id) is not None, "row deleted mid-clone"
    assert await state_of(allocator, voice_id) == VoiceState.DELETING
    served.fake.gate.set()  # the clone lands; its dispatcher is fenced off
    await until(lambda: dispatcher_idle(allocator), "the dispatcher to finish")
    assert served.fake.live == {}
    await allocator.run_maintenance([Task.RESET_STUCK], provider="")
    assert await state_of(allocator, voice_id) is None


# -- 5. sample downloads are bounded --------------------------------------------------------


async def test_a_sample_over_the_cap_is_not_downloaded_nor_cloned(
    serve_allocator: Callable, sample_wav: bytes
):
    cap = len(sample_wav) + 1024
    served: ServedAllocator = await serve_allocator(capacity=1, sample_max_bytes=cap)
    allocator = served.allocator
    voice_id = await new_voice(allocator, sample_wav)
    voice = await allocator.get_voice(ADMIN, voice_id)
    await allocator.storage.put(voice.sample_key, b"\0" * (cap + 1))  # not via the upload
    await allocator.ensure_active(ADMIN, voice_id)

    async def ended() -> bool:
        return await state_of(allocator, voice_id) in (VoiceState.FAILED, VoiceState.READY)

    await until(ended, "the allocation to end")
    assert served.fake.clones == 0, "cloned from a sample over the cap"
    assert await state_of(allocator, voice_id) == VoiceState.FAILED
    assert "exceeds the limit" in (await allocator.get_voice(ADMIN, voice_id)).last_error


async def test_storage_reads_at_most_one_byte_past_the_limit(tmp_path: Path):
    storage = LocalStorage(tmp_path)
    await storage.put("a/b", b"x" * 100)
    assert await storage.get("a/b", max_bytes=100) == b"x" * 100
    with pytest.raises(Exception, match="exceeds the limit of 99"):
        await storage.get("a/b", max_bytes=99)
