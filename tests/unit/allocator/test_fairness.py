"""The cut-off key of the fair order, from users' counts alone (domain.fairness), against
the keys themselves listed one by one."""

from __future__ import annotations

from hypothesis import given
from hypothesis import strategies as st

from allocator_svc.domain.fairness import Standing, cutoff_key, keys_below

standings = st.lists(
    st.builds(Standing, st.text(min_size=1, max_size=3), st.integers(0, 40), st.integers(0, 8)),
    max_size=12,
)


def all_keys(users: list[Standing]) -> list[int]:
    """Every due request's key: a user's are held + 1 .. held + due."""
    return sorted(k for u in users for k in range(u.held + 1, u.held + u.due + 1))


@given(standings, st.integers(1, 60))
def test_cutoff_is_the_key_of_the_nth_place(users: list[Standing], n: int) -> None:
    keys = all_keys(users)
    assert cutoff_key(users, n) == (keys[min(n, len(keys)) - 1] if keys else 0)


@given(standings, st.integers(0, 60))
def test_keys_below_counts_smaller_keys(users: list[Standing], key: int) -> None:
    assert keys_below(users, key) == sum(1 for k in all_keys(users) if k < key)


def test_far_apart_holdings_take_one_step_per_change_not_per_key() -> None:
    # A user holding a million slots must not make the walk a million steps long.
    users = [Standing("small", 0, 1), Standing("big", 1_000_000, 3)]
    assert cutoff_key(users, 2) == 1_000_001
    assert cutoff_key(users, 10) == 1_000_003


def test_the_standing_triggers_count_the_states_that_hold_a_slot() -> None:
    # The triggers (migration a0005) are SQL written once; a change of SLOT_HOLDING needs
    # a migration that recreates them.
    import importlib.util
    from pathlib import Path

    from allocator_svc.domain.states import SLOT_HOLDING

    path = Path(__file__).parents[3] / "allocator_svc/migrations/versions/a0005_queue_standing.py"
    spec = importlib.util.spec_from_file_location("a0005", path)
    assert spec is not None and spec.loader is not None
    migration = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(migration)
    assert set(migration.HOLDING_STATES) == {s.value for s in SLOT_HOLDING}
