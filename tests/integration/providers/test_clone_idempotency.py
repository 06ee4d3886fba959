"""The clone contract of both adapters: a clone is sent once; after ``Transient`` the
caller's next attempt looks the label up first and adopts what it finds, so a lost answer
never becomes a second remote voice. Counted at the emulator, which remembers every voice
ever made, deleted or not."""

from __future__ import annotations

from collections.abc import Awaitable, Callable

import pytest

from voiceslot.providers.base import CloneRequest, Provider, RemoteVoice
from voiceslot.providers.errors import Transient
from voiceslot.testing.emulator import Fault, FaultKind, Op, ProviderEmulator

Sample = Callable[[int], bytes]
WaitUntil = Callable[..., Awaitable[None]]
KINDS = ["elevenlabs", "cartesia"]


async def ensure_cloned(provider: Provider, request: CloneRequest) -> RemoteVoice:
    """One attempt as the allocator makes it: adopt a copy carrying the label if there is
    one, else clone (once). A ``Transient`` ends the attempt; the next one, after a
    backoff, starts with the look-up again."""
    found = await provider.find_by_label(request.label)
    return found if found is not None else await provider.clone(request)


@pytest.mark.parametrize("kind", KINDS)
async def test_lost_clone_response_is_adopted_not_recloned(
    make_provider: Callable[..., Provider], emu: ProviderEmulator, sample: Sample, kind: str
) -> None:
    provider = make_provider(kind)
    emu.state.faults.inject(Fault(FaultKind.LOST_RESPONSE, op=Op.CLONE))
    request = CloneRequest(label="vs-lost-g1", sample=sample(1))

    with pytest.raises(Transient):
        await ensure_cloned(provider, request)
    voice = await ensure_cloned(provider, request)

    assert emu.state.created_labels()["vs-lost-g1"] == 1
    [created] = emu.state.created_voices()
    assert voice.provider_voice_id == created.voice_id
    assert emu.state.request_count(op=Op.CLONE) == 1


@pytest.mark.parametrize("kind", KINDS)
async def test_server_error_before_the_work_is_cloned_again_once(
    make_provider: Callable[..., Provider], emu: ProviderEmulator, sample: Sample, kind: str
) -> None:
    provider = make_provider(kind)
    emu.state.faults.inject(Fault(FaultKind.SERVER_ERROR, op=Op.CLONE, status=502))

    request = CloneRequest(label="vs-5xx-g1", sample=sample(2))

    with pytest.raises(Transient):
        await ensure_cloned(provider, request)
    voice = await ensure_cloned(provider, request)

    assert emu.state.created_labels()["vs-5xx-g1"] == 1
    assert emu.state.request_count(op=Op.CLONE) == 2
    assert [v.voice_id for v in emu.state.live_voices()] == [voice.provider_voice_id]


@pytest.mark.parametrize("kind", KINDS)
async def test_clone_finished_after_the_client_timed_out_is_adopted(
    make_provider: Callable[..., Provider],
    emu: ProviderEmulator,
    sample: Sample,
    wait_until: WaitUntil,
    kind: str,
) -> None:
    provider = make_provider(kind, timeout_s=0.2)
    emu.state.faults.inject(Fault(FaultKind.HANG, op=Op.CLONE, hang_s=0.6))
    request = CloneRequest(label="vs-late-g1", sample=sample(3))

    with pytest.raises(Transient, match="timed out"):
        await ensure_cloned(provider, request)
    # The provider finishes the work although nobody waits for the answer any more.
    await wait_until(lambda state: state.created_labels()["vs-late-g1"] == 1)
    voice = await ensure_cloned(provider, request)

    assert emu.state.created_labels()["vs-late-g1"] == 1
    assert voice.provider_voice_id == emu.state.created_voices()[0].voice_id


@pytest.mark.parametrize("kind", KINDS)
async def test_blind_retry_would_duplicate_and_the_emulator_sees_it(
    make_provider: Callable[..., Provider], emu: ProviderEmulator, sample: Sample, kind: str
) -> None:
    """The control case: retrying without the look-up makes two remote voices."""
    provider = make_provider(kind)
    emu.state.faults.inject(Fault(FaultKind.LOST_RESPONSE, op=Op.CLONE))
    request = CloneRequest(label="vs-blind-g1", sample=sample(4))

    with pytest.raises(Transient):
        await provider.clone(request)
    await provider.clone(request)

    assert emu.state.created_labels()["vs-blind-g1"] == 2


async def test_a_clone_hanging_across_a_reset_does_not_leak_into_the_new_state(
    make_provider: Callable[..., Provider],
    emu: ProviderEmulator,
    sample: Sample,
    wait_until: WaitUntil,
) -> None:
    provider = make_provider("elevenlabs", timeout_s=0.1)
    emu.state.faults.inject(Fault(FaultKind.HANG, op=Op.CLONE, hang_s=0.3))
    with pytest.raises(Transient):
        await provider.clone(CloneRequest(label="vs-stale-g1", sample=sample(5)))
    fenced_before = emu.state.fenced_requests

    emu.reset()  # what the next test's fixture does
    await wait_until(lambda state: state.fenced_requests == fenced_before + 1)

    assert emu.state.created_voices() == []
