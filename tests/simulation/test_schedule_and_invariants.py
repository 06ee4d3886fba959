"""The pure halves of the simulation: the seeded schedule generator and the invariant
checkers, without processes."""

from __future__ import annotations

from collections import Counter

import pytest

from tests.simulation.invariants import (
    INVARIANTS,
    LeaseWindow,
    Observations,
    RemoteDelete,
    RemoteVoice,
    RequestOutcome,
    VoiceRow,
    check,
    check_agreement,
    check_capacity,
    check_duplicates,
    check_leases,
    check_requests,
)
from tests.simulation.schedule import (
    ADMIN_ACTIONS,
    FAULT_KINDS,
    USER_ACTIONS,
    Topology,
    generate,
    topology_for,
)

# -- schedules ------------------------------------------------------------------------------


def test_the_same_seed_gives_the_same_schedule() -> None:
    topology = topology_for(7, "postgres")
    assert generate(3, topology) == generate(3, topology)
    assert generate(3, topology) != generate(4, topology)
    assert topology_for(7, "postgres") == topology


def test_topologies_round_trip_through_their_replay_form() -> None:
    for seed in range(20):
        for database in ("postgres", "sqlite"):
            topology = topology_for(seed, database)
            assert Topology.parse(str(topology)) == topology
            assert 1 <= topology.replicas <= (4 if database == "postgres" else 1)
    with pytest.raises(ValueError):
        Topology.parse("mysql:r2")


def test_schedules_are_ordered_and_refer_only_to_voices_that_exist() -> None:
    for seed in range(50):
        schedule = generate(seed, topology_for(seed, "postgres"))
        offsets = [s.at for s in schedule.steps]
        assert offsets == sorted(offsets)
        assert all(0 <= s.at <= schedule.duration_s for s in schedule.steps)
        known = len(schedule.initial_voices)
        for step in schedule.steps:
            assert 0 <= step.replica < schedule.replicas
            if step.action == "register":
                assert step.voice == known
                known += 1
            elif step.action in ("ensure", "delete", "pin", "reset_stuck", "reclaim"):
                assert 0 <= step.voice < known
            if step.action == "hang_late_success":
                assert step.hang_s > schedule.adapter_timeout_s  # the client gives up first
        assert schedule.voice_count == known


def test_over_many_seeds_every_action_and_fault_kind_appears() -> None:
    seen: Counter[str] = Counter()
    for seed in range(100):
        seen.update(s.action for s in generate(seed, topology_for(seed, "postgres")).steps)
    for action in (*USER_ACTIONS, *ADMIN_ACTIONS, *FAULT_KINDS):
        assert seen[action] >= 20, (action, seen)
    sqlite = Counter(
        s.action for seed in range(50) for s in generate(seed, topology_for(seed, "sqlite")).steps
    )
    assert "pg_drop" not in sqlite and sqlite["kill"] > 0


# -- invariants -----------------------------------------------------------------------------


def test_duplicates_and_capacity() -> None:
    assert check_duplicates({"v1": 1, "v2": 2}) == [
        check_duplicates({"v2": 2})[0],
    ]
    assert [v.subject for v in check_capacity({"el": 0, "ca": 3})] == ["ca"]


def test_agreement_between_rows_and_the_provider() -> None:
    rows = [
        VoiceRow("v1", "READY", "el", "r1"),
        VoiceRow("v2", "READY", "el", "r2"),  # remote copy gone
        VoiceRow("v3", "IDLE", "el", ""),
        VoiceRow("v4", "READY", "ca", "r4"),
    ]
    remote = [
        RemoteVoice("el", "r1", "v1"),
        RemoteVoice("el", "r3", "v3"),  # row is IDLE: nobody holds r3
        RemoteVoice("ca", "r4", "v4"),
        RemoteVoice("ca", "r9", "v9"),  # no row at all
    ]
    found = {(v.invariant, v.subject) for v in check_agreement(rows, remote)}
    assert found == {
        ("ready_remote_missing", "v2"),
        ("remote_without_row", "v3"),
        ("remote_without_row", "v9"),
    }


def test_a_delete_inside_a_lease_window_is_a_reclaim_under_lease() -> None:
    leases = [LeaseWindow("v1", "l1", "r1", start=10.0, end=12.0)]
    inside = RemoteDelete("v1", "r1", at=11.0)
    after = RemoteDelete("v1", "r1", at=12.5)
    other_copy = RemoteDelete("v1", "r2", at=11.0)  # a duplicate being cleaned up
    edge = RemoteDelete("v1", "r1", at=11.99)  # within the clock margin of the end
    assert [v.invariant for v in check_leases(leases, [inside], {})] == ["reclaim_under_lease"]
    assert check_leases(leases, [after, other_copy, edge], {}) == []
    # The owner asked to delete the voice before: that delete is theirs, not a reclaim.
    assert check_leases(leases, [inside], {"v1": 10.5}) == []
    assert len(check_leases(leases, [inside], {"v1": 11.5})) == 1


def test_every_request_ends_ready_queued_or_failed_with_a_reason() -> None:
    requests = [
        RequestOutcome("a", "v1", "ready"),
        RequestOutcome("b", "v1", "queued"),
        RequestOutcome("c", "v2", "failed", "InvalidInput: not audio"),
        RequestOutcome("d", "v3", "deleted"),
        RequestOutcome("e", "v4", "failed", ""),
        RequestOutcome("f", "v5", "stuck", "still ALLOCATING"),
        RequestOutcome("g", "v6", "lost", "still IDLE"),
    ]
    rows = [VoiceRow("v7", "RECLAIMING", "el", "r7")]
    found = [(v.invariant, v.subject) for v in check_requests(requests, rows)]
    assert found == [
        ("lost_requests", "e"),
        ("stuck_requests", "f"),
        ("lost_requests", "g"),
        ("stuck_requests", "v7"),
    ]


def test_check_names_only_known_invariants() -> None:
    obs = Observations(
        voice_peaks={"v1": 2},
        over_capacity={"el": 1},
        leases=[LeaseWindow("v1", "l1", "r1", 0.0, 5.0)],
        remote_deletes=[RemoteDelete("v1", "r1", 1.0)],
        requests=[RequestOutcome("a", "v1", "lost")],
        rows=[VoiceRow("v1", "READY", "el", "r1")],
        remote_live=[],
    )
    names = {v.invariant for v in check(obs)}
    assert names == set(INVARIANTS) - {"remote_without_row", "stuck_requests"}


# -- planning and summing up ----------------------------------------------------------------


def test_plans_cover_every_seed_once_with_some_sessions_on_sqlite() -> None:
    from tests.simulation.summary import plan

    sessions = plan(300, first_seed=1, per_cluster=10)
    seeds = [seed for s in sessions for seed in s.seeds]
    assert seeds == list(range(1, 301))
    databases = Counter(s.topology.database for s in sessions)
    assert databases == {"postgres": 24, "sqlite": 6}
    assert {s.topology.replicas for s in sessions if s.topology.database == "postgres"} == {
        1,
        2,
        3,
        4,
    }


def test_the_summary_counts_kills_faults_and_violations_per_invariant() -> None:
    from tests.simulation.invariants import Violation
    from tests.simulation.session import RunResult
    from tests.simulation.summary import Summary

    topology = topology_for(1, "postgres")
    summary = Summary()
    summary.add(
        RunResult(
            schedule=generate(5, topology),
            violations=[Violation("duplicates", "v_1", "2 live remote copies at one instant")],
            injections=Counter({"kill": 2, "hang_late_success": 3}),
            hits=Counter({"kill": 2, "hang_late_success": 1}),
            outcomes=Counter({"request ready": 4, "request failed": 1}),
            evidence={"v_1": ["t +1.00s provider create vs-v_1-g0"]},
        )
    )
    summary.add(RunResult(schedule=generate(6, topology), violations=[]))
    body = summary.to_json()
    assert body["schedules"] == 2 and body["process_kills"] == 2
    assert body["injections"]["hang_late_success"] == 3
    assert body["faults_hit"]["hang_late_success"] == 1
    assert body["violations"] == {name: int(name == "duplicates") for name in INVARIANTS}
    assert body["request_outcomes"] == {"failed": 1, "ready": 4}
    (failing,) = body["failing"]
    assert failing["seed"] == 5 and f"--topology {topology} --seed 5" in failing["replay"]
    assert failing["evidence"] == {"v_1": ["t +1.00s provider create vs-v_1-g0"]}
