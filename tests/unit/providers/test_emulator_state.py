"""The emulator's rules as plain Python: slots, add/edit budgets, duplicates, quotas,
concurrency, pagination, history, and the thread-safe waiting the tests rely on."""

from __future__ import annotations

import threading

import pytest

from voiceslot.testing.emulator.faults import Op
from voiceslot.testing.emulator.state import (
    CARTESIA,
    DEFAULT_CARTESIA_KEY,
    DEFAULT_ELEVENLABS_KEY,
    ELEVENLABS,
    Account,
    EmulatorError,
    EmulatorState,
    VoiceRecord,
    check_clone_allowed,
    decode_page_token,
    encode_page_token,
    paginate,
    select_voices,
)

SAMPLE_A = b"RIFF-a"
SAMPLE_B = b"RIFF-b"


def el_account(state: EmulatorState) -> Account:
    return state.authenticate(ELEVENLABS, DEFAULT_ELEVENLABS_KEY)


def test_authenticate_checks_keys_per_provider() -> None:
    state = EmulatorState()

    assert state.authenticate(CARTESIA, DEFAULT_CARTESIA_KEY).provider == CARTESIA
    for provider, key in [
        (ELEVENLABS, DEFAULT_CARTESIA_KEY),
        (CARTESIA, "nope"),
        (ELEVENLABS, None),
    ]:
        with pytest.raises(EmulatorError) as err:
            state.authenticate(provider, key)
        assert err.value.status == 401


def test_default_plans_come_from_the_readme() -> None:
    el = Account.elevenlabs("k", plan="starter")
    assert (el.voice_limit, el.max_concurrency) == (10, 3)
    assert Account.elevenlabs("k", plan="scale").voice_limit == 660
    assert Account.cartesia("k", plan="scale").max_concurrency == 15
    assert Account.cartesia("k").voice_limit is None
    assert Account.elevenlabs("k", plan="pro", voice_limit=2).voice_limit == 2


def test_voice_limit_counts_live_voices_only() -> None:
    state = EmulatorState(accounts=[Account.elevenlabs(DEFAULT_ELEVENLABS_KEY, voice_limit=1)])
    account = el_account(state)
    first = state.create_voice(account, name="a", sample=SAMPLE_A)

    with pytest.raises(EmulatorError) as err:
        state.create_voice(account, name="b", sample=SAMPLE_B)
    assert (err.value.status, err.value.code) == (400, "voice_limit_reached")
    assert "(1 / 1)" in err.value.message

    state.delete_voice(account, first.voice_id)
    assert state.create_voice(account, name="b", sample=SAMPLE_B).name == "b"


def test_add_edit_budget_is_not_restored_by_deleting_until_a_new_month() -> None:
    state = EmulatorState(
        accounts=[Account.elevenlabs(DEFAULT_ELEVENLABS_KEY, max_voice_add_edits=2)]
    )
    account = el_account(state)
    for name in ("a", "b"):
        voice = state.create_voice(account, name=name, sample=name.encode())
        state.delete_voice(account, voice.voice_id)

    with pytest.raises(EmulatorError) as err:
        state.create_voice(account, name="c", sample=b"c")
    assert err.value.code == "voice_add_edit_limit_reached"

    state.reset_month()
    assert state.create_voice(account, name="c", sample=b"c").live


def test_duplicate_samples_are_rejected_only_when_enabled_and_only_among_live_voices() -> None:
    state = EmulatorState(
        accounts=[Account.elevenlabs(DEFAULT_ELEVENLABS_KEY, reject_duplicate_samples=True)]
    )
    account = el_account(state)
    first = state.create_voice(account, name="a", sample=SAMPLE_A)

    with pytest.raises(EmulatorError, match="cannot upload the same file twice"):
        state.create_voice(account, name="b", sample=SAMPLE_A)
    state.delete_voice(account, first.voice_id)
    assert state.create_voice(account, name="b", sample=SAMPLE_A).live

    permissive = EmulatorState()
    acct = el_account(permissive)
    permissive.create_voice(acct, name="a", sample=SAMPLE_A)
    assert permissive.create_voice(acct, name="b", sample=SAMPLE_A).live


def test_check_clone_allowed_order_forbidden_before_full() -> None:
    account = Account.elevenlabs("k", voice_limit=0, can_clone=False)
    with pytest.raises(EmulatorError) as err:
        check_clone_allowed(account, live_owned=[], sample_sha="x")
    assert (err.value.status, err.value.code) == (403, "can_not_use_instant_voice_cloning")


def test_delete_unknown_foreign_or_deleted_voice_is_404() -> None:
    state = EmulatorState(
        accounts=[Account.elevenlabs(DEFAULT_ELEVENLABS_KEY), Account.elevenlabs("other")]
    )
    mine = el_account(state)
    other = state.authenticate(ELEVENLABS, "other")
    voice = state.create_voice(other, name="theirs", sample=SAMPLE_A)

    for voice_id in ("missing", voice.voice_id):
        with pytest.raises(EmulatorError) as err:
            state.delete_voice(mine, voice_id)
        assert (err.value.status, err.value.code) == (404, "voice_not_found")
    state.delete_voice(other, voice.voice_id)
    with pytest.raises(EmulatorError):
        state.delete_voice(other, voice.voice_id)


def test_history_keeps_deleted_voices_and_counts_labels() -> None:
    state = EmulatorState()
    account = el_account(state)
    voice = state.create_voice(account, name="vs-a-g1", sample=SAMPLE_A)
    state.delete_voice(account, voice.voice_id)
    state.create_voice(account, name="vs-a-g1", sample=SAMPLE_A)

    assert state.created_labels() == {"vs-a-g1": 2}
    assert [v.live for v in state.created_voices()] == [False, True]
    assert len(state.live_voices(ELEVENLABS)) == 1
    assert state.created_labels(CARTESIA) == {}


def test_premade_voices_are_visible_but_not_owned_or_counted() -> None:
    state = EmulatorState()
    account = el_account(state)

    everything = state.list_voices(account, page_size=100).voices
    owned = state.list_voices(account, page_size=100, owned_only=True).voices

    assert {v.category for v in everything} == {"premade"} and owned == ()
    assert state.subscription(account)["voice_slots_used"] == 0
    assert state.get_voice(account, everything[0].voice_id).owner is None


def record(seq: int, name: str, *, owner: str | None = "k", live: bool = True) -> VoiceRecord:
    return VoiceRecord(
        seq=seq,
        voice_id=f"id{seq}",
        provider=ELEVENLABS,
        owner=owner,
        name=name,
        labels={"voiceslot_label": name},
        deleted_at=None if live else 1.0,
    )


def test_select_voices_filters_and_sorts() -> None:
    voices = [
        record(3, "vs-b-g1"),
        record(1, "vs-a-g1"),
        record(2, "Rachel", owner=None),
        record(4, "vs-a-g10", live=False),
        record(5, "foreign", owner="other"),
    ]

    def names(**filters: object) -> list[str]:
        chosen = select_voices(voices, provider=ELEVENLABS, api_key="k", **filters)  # type: ignore[arg-type]
        return [v.name for v in chosen]

    assert names() == ["vs-a-g1", "Rachel", "vs-b-g1"]
    assert names(owned_only=True) == ["vs-a-g1", "vs-b-g1"]
    assert names(premade_only=True) == ["Rachel"]
    assert names(search="VS-A") == ["vs-a-g1"]
    assert names(category="premade") == []


def test_paginate_by_sequence() -> None:
    voices = [record(i, f"v{i}") for i in (2, 5, 7)]

    first = paginate(voices, after_seq=0, page_size=2)
    second = paginate(voices, after_seq=first.voices[-1].seq, page_size=2)

    assert [v.seq for v in first.voices] == [2, 5] and first.has_more and first.total == 3
    assert [v.seq for v in second.voices] == [7] and not second.has_more


def test_deleting_between_pages_skips_nothing() -> None:
    state = EmulatorState()
    account = el_account(state)
    created = [state.create_voice(account, name=f"v{i}", sample=bytes([i])) for i in range(4)]

    page1 = state.list_voices(account, page_size=2, owned_only=True)
    state.delete_voice(account, created[0].voice_id)
    token = encode_page_token(page1.voices[-1].seq)
    page2 = state.list_voices(
        account, page_size=2, owned_only=True, after_seq=decode_page_token(token)
    )

    assert [v.name for v in page1.voices] == ["v0", "v1"]
    assert [v.name for v in page2.voices] == ["v2", "v3"]


def test_page_tokens_round_trip_and_reject_garbage() -> None:
    assert decode_page_token(encode_page_token(42)) == 42
    for token in ("garbage!", encode_page_token(1)[:-2] + "zz", ""):
        with pytest.raises(EmulatorError) as err:
            decode_page_token(token)
        assert err.value.status == 400


def test_page_size_cap_applies_to_paged_lists_only() -> None:
    state = EmulatorState()
    account = el_account(state)
    for i in range(3):
        state.create_voice(account, name=f"v{i}", sample=bytes([i]))
    state.set_page_size_cap(1)

    assert len(state.list_voices(account, page_size=100).voices) == 1
    assert len(state.list_voices(account, page_size=None).voices) == 5  # 3 + 2 premade


def test_concurrency_limit_then_release() -> None:
    state = EmulatorState(
        accounts=[
            Account.cartesia(DEFAULT_CARTESIA_KEY, max_concurrency=1, concurrency_retry_after=4)
        ]
    )
    account = state.authenticate(CARTESIA, DEFAULT_CARTESIA_KEY)
    state.begin_tts(account)

    with pytest.raises(EmulatorError) as err:
        state.begin_tts(account)
    assert (err.value.status, err.value.retry_after) == (429, 4)

    state.end_tts(account)
    state.begin_tts(account)
    assert state.account(CARTESIA, DEFAULT_CARTESIA_KEY).in_flight == 1


def test_character_quota_applies_to_elevenlabs() -> None:
    state = EmulatorState(accounts=[Account.elevenlabs(DEFAULT_ELEVENLABS_KEY, character_limit=10)])
    account = el_account(state)
    state.begin_tts(account, characters=6)
    state.end_tts(account)

    with pytest.raises(EmulatorError) as err:
        state.begin_tts(account, characters=5)
    assert (err.value.status, err.value.code) == (401, "quota_exceeded")
    assert "4 credits remaining" in err.value.message
    assert state.account(ELEVENLABS, DEFAULT_ELEVENLABS_KEY).in_flight == 0


def test_reset_fences_requests_that_began_before_it() -> None:
    state = EmulatorState()
    stale = el_account(state)
    state.reset()

    with pytest.raises(EmulatorError) as err:
        state.create_voice(stale, name="late", sample=SAMPLE_A)
    assert err.value.status == 503
    assert state.created_voices() == []


def test_configure_account_rejects_unknown_settings() -> None:
    state = EmulatorState()
    state.configure_account(ELEVENLABS, DEFAULT_ELEVENLABS_KEY, voice_limit=3)
    assert state.account(ELEVENLABS, DEFAULT_ELEVENLABS_KEY).voice_limit == 3
    with pytest.raises(AttributeError):
        state.configure_account(ELEVENLABS, DEFAULT_ELEVENLABS_KEY, slots=3)
    with pytest.raises(KeyError):
        state.configure_account(CARTESIA, "unknown", voice_limit=3)


def test_begin_counts_and_logs_requests() -> None:
    state = EmulatorState()
    state.begin(ELEVENLABS, Op.CLONE)
    state.begin(ELEVENLABS, Op.LIST)
    state.begin(CARTESIA, Op.LIST)

    assert state.request_count() == 3
    assert state.request_count(op=Op.LIST) == 2
    assert state.request_count(ELEVENLABS, Op.CLONE) == 1


def test_wait_for_wakes_on_a_change_from_another_thread() -> None:
    state = EmulatorState()
    account = el_account(state)
    worker = threading.Thread(target=lambda: state.create_voice(account, name="x", sample=SAMPLE_A))

    worker.start()
    reached = state.wait_for(lambda s: s.created_labels()["x"] == 1, timeout=5)
    worker.join()

    assert reached
    assert not state.wait_for(lambda s: s.created_labels()["y"] == 1, timeout=0.01)


def test_stream_gate_holds_and_releases() -> None:
    state = EmulatorState()
    state.hold_streams()
    assert not state.wait_stream_gate(0.01)
    state.release_streams()
    assert state.wait_stream_gate(0.01)
    state.hold_streams()
    state.closed.set()  # shutting down releases every waiter
    assert state.wait_stream_gate(0.01)


def test_requests_that_arrived_before_a_reset_cannot_authenticate_after_it() -> None:
    state = EmulatorState()
    arrived = state.epoch
    state.reset()

    with pytest.raises(EmulatorError) as err:
        state.authenticate(ELEVENLABS, DEFAULT_ELEVENLABS_KEY, epoch=arrived)
    assert err.value.status == 503
    current = state.authenticate(ELEVENLABS, DEFAULT_ELEVENLABS_KEY, epoch=state.epoch)
    assert current.api_key == DEFAULT_ELEVENLABS_KEY
