"""Regression tests for the allocator races the fault schedules (``tests/simulation``)
found after the first five paths were fixed (``test_promise_paths.py``). Each ran red on
the code before its fix:

1. a reclaim whose delete was done but whose answer was lost put the voice back to READY
   on a copy that no longer existed;
2. a look-up that failed right after a clone's timeout let a quick retry clone again
   while the first clone was still to land: two copies of one voice;
3. reconciliation kept a second copy that carried a voice's current label beside the copy
   the voice holds (it only deleted labels no voice knew);
4. a stuck allocation's reset re-queued it for at once, so its retry could clone while the
   stuck clone was still to land.

Real HTTP to the provider emulator where the fault is the provider's, the in-memory fake
where only the allocator's bookkeeping is under test.
"""

from __future__ import annotations

import asyncio
from collections.abc import Callable, Iterator
from pathlib import Path

import pytest

from allocator_svc.domain.states import VoiceState
from allocator_svc.maintenance import Task
from voiceslot.providers.base import RemoteVoice
from voiceslot.providers.registry import build_provider
from voiceslot.storage.local import LocalStorage
from voiceslot.testing.emulator import Fault, FaultKind, Op, ProviderEmulator

from .conftest import ServedAllocator
from .test_promise_paths import ADMIN, dispatcher_idle, new_voice, ready_now, state_of, until


@pytest.fixture
def emulator() -> Iterator[ProviderEmulator]:
    with ProviderEmulator() as emulator:
        yield emulator


async def serve_on_emulator(
    serve_allocator: Callable,
    emulator: ProviderEmulator,
    tmp_path: Path,
    *,
    timeout_s: float = 5.0,
    **config: object,
) -> ServedAllocator:
    provider = emulator.provider_config("cartesia", name="fake", timeout_s=timeout_s)
    adapter = build_provider(provider, storage=LocalStorage(tmp_path / "engine"))
    return await serve_allocator(capacity=2, fake=adapter, backoff_base_s=0.05, **config)


def copies_of(emulator: ProviderEmulator, voice_id: str) -> list[tuple[str, bool]]:
    """(remote id, live) of every copy the emulator ever made of ``voice_id``."""
    return [
        (v.voice_id, v.live)
        for v in emulator.state.created_voices("cartesia")
        if voice_id in v.name
    ]


# -- 1. a reclaim whose delete answer was lost ----------------------------------------------


async def test_a_reclaim_whose_delete_answer_was_lost_does_not_go_back_to_ready(
    serve_allocator: Callable, emulator: ProviderEmulator, sample_wav: bytes, tmp_path: Path
):
    served = await serve_on_emulator(serve_allocator, emulator, tmp_path)
    voice_id = await new_voice(served.allocator, sample_wav)
    await served.allocator.ensure_active(ADMIN, voice_id)
    await until(lambda: ready_now(served.allocator, voice_id), "READY")
    # The provider deletes the copy, then answers 502.
    emulator.state.faults.inject(Fault(FaultKind.ERROR_AFTER_WORK, op=Op.DELETE, status=502))
    voice = await served.allocator.reclaim_slot(ADMIN, voice_id, force=False)
    assert not any(live for _, live in copies_of(emulator, voice_id))
    assert voice.state == VoiceState.IDLE, f"{voice.state.name} on a copy that is gone"
    assert voice.provider_voice_id is None


async def test_a_reclaim_whose_delete_never_answers_holds_its_slot_until_confirmed(
    serve_allocator: Callable, emulator: ProviderEmulator, sample_wav: bytes, tmp_path: Path
):
    """Every try of the delete times out and the copy goes late: the voice stays
    RECLAIMING (slot counted) rather than READY, and the stuck-reclaim sweep finishes."""
    served = await serve_on_emulator(
        serve_allocator, emulator, tmp_path, timeout_s=0.3, allocation_timeout_s=0.5
    )
    voice_id = await new_voice(served.allocator, sample_wav)
    await served.allocator.ensure_active(ADMIN, voice_id)
    await until(lambda: ready_now(served.allocator, voice_id), "READY")
    emulator.state.faults.inject(Fault(FaultKind.HANG, op=Op.DELETE, times=10, hang_s=1.0))
    voice = await served.allocator.reclaim_slot(ADMIN, voice_id, force=False)
    assert voice.state == VoiceState.RECLAIMING, voice.state.name
    (stats,) = await served.allocator.repo.provider_stats(served.allocator.clock.now())
    assert stats.used == 1, "a slot whose copy may exist was given back"
    emulator.state.faults.clear()
    await asyncio.sleep(1.2)  # the hung deletes land; the reclaim is past its timeout

    async def idle() -> bool:
        await served.allocator.run_maintenance([Task.RESET_STUCK], provider="")
        return await state_of(served.allocator, voice_id) == VoiceState.IDLE

    await until(idle, "the stuck reclaim to finish")
    assert not any(live for _, live in copies_of(emulator, voice_id))


# -- 2. no second clone while the first may still land -------------------------------------


async def test_a_failed_look_up_after_a_clone_timeout_does_not_clone_again(
    serve_allocator: Callable, emulator: ProviderEmulator, sample_wav: bytes, tmp_path: Path
):
    # The clone lands 2 s after it was sent; we give up after 0.5 s, and the look-ups
    # right after fail. A retry that cloned at once would make a second copy.
    served = await serve_on_emulator(
        serve_allocator, emulator, tmp_path, timeout_s=0.5, clone_settle_s=3.0
    )
    emulator.state.faults.inject(Fault(FaultKind.HANG, op=Op.CLONE, hang_s=2.0))
    voice_id = await new_voice(served.allocator, sample_wav)
    await served.allocator.ensure_active(ADMIN, voice_id)
    await until(lambda: emulator.state.request_count("cartesia", Op.CLONE) == 1, "the clone")
    emulator.state.faults.inject(Fault(FaultKind.SERVER_ERROR, op=Op.LIST, times=2, status=503))
    await until(lambda: ready_now(served.allocator, voice_id), "READY")
    await asyncio.sleep(2.5)  # any second clone would have landed by now
    await until(lambda: dispatcher_idle(served.allocator), "the dispatcher to settle")
    copies = copies_of(emulator, voice_id)
    assert len(copies) == 1, copies
    voice = await served.allocator.get_voice(ADMIN, voice_id)
    assert voice.provider_voice_id == copies[0][0] and copies[0][1]


async def test_a_stuck_allocation_is_retried_only_after_its_clone_could_have_landed(
    serve_allocator: Callable, sample_wav: bytes
):
    served: ServedAllocator = await serve_allocator(
        capacity=1, allocation_timeout_s=0.3, clone_settle_s=2.0
    )
    served.fake.gate = asyncio.Event()  # the clone hangs: the dispatcher looks dead
    voice_id = await new_voice(served.allocator, sample_wav)
    await served.allocator.ensure_active(ADMIN, voice_id)
    await until(lambda: served.fake.clones == 1, "the clone to start")
    await asyncio.sleep(0.5)  # past the dispatch lease
    await served.allocator.run_maintenance([Task.RESET_STUCK], provider="")
    assert await state_of(served.allocator, voice_id) == VoiceState.QUEUED
    await asyncio.sleep(0.5)  # dispatcher rounds run every 50 ms
    assert served.fake.clones == 1, "re-cloned while the stuck clone could still land"
    served.fake.gate.set()  # the stuck clone lands; the retry finds and adopts it
    await until(lambda: ready_now(served.allocator, voice_id), "READY")
    await until(lambda: dispatcher_idle(served.allocator), "the dispatcher to settle")
    assert served.fake.clones == 1
    assert len(served.fake.live) == 1


# -- 3. reconciliation: a second copy under a voice's current label --------------------------


async def test_reconciliation_deletes_a_second_copy_under_the_current_label(
    serve_allocator: Callable, sample_wav: bytes
):
    served: ServedAllocator = await serve_allocator(capacity=2)
    voice_id = await new_voice(served.allocator, sample_wav)
    await served.allocator.ensure_active(ADMIN, voice_id)
    await until(lambda: ready_now(served.allocator, voice_id), "READY")
    held = served.fake.live[(await served.allocator.get_voice(ADMIN, voice_id)).provider_voice_id]
    extra = RemoteVoice("extra", held.label, held.label)  # a lost clone's answer, landed
    served.fake.live[extra.provider_voice_id] = extra
    await served.allocator.run_maintenance([Task.RECONCILE], provider="")
    assert set(served.fake.live) == {held.provider_voice_id}
    voice = await served.allocator.get_voice(ADMIN, voice_id)
    assert voice.state == VoiceState.READY and voice.provider_voice_id == held.provider_voice_id
