"""The operator's pure decisions: who may act for which owner, which VoiceSlot owns a
voice, what deleting one does, and how long a retry waits."""

from __future__ import annotations

from datetime import UTC, datetime, timedelta

import pytest

from voiceslot_operator.backoff import backoff_delay
from voiceslot_operator.claims import Claim, claim_of, owner_claim, same_object
from voiceslot_operator.deletion import (
    DeleteFacts,
    Verdict,
    decide_delete,
    deletion_age_s,
    is_forced,
)
from voiceslot_operator.settings import ENV_PREFIX, OperatorConfig
from voiceslot_operator.tenancy import OwnerPolicy

# -- tenancy ---------------------------------------------------------------------------------


def test_a_mapping_lists_the_owners_of_each_namespace() -> None:
    policy = OwnerPolicy({"team-a": ["alice", "bob"], "ops": ["*"]}, home_namespace="voiceslot")
    assert policy.may_act_for("team-a", "alice") and policy.may_act_for("team-a", "bob")
    assert not policy.may_act_for("team-a", "carol")
    assert policy.may_act_for("ops", "carol")
    # Not listed: nobody, not even the owner of the namespace's name.
    assert not policy.may_act_for("carol", "carol")
    # The operator's home namespace acts for everyone.
    assert policy.may_act_for("voiceslot", "carol")
    assert "['alice', 'bob']" in policy.explain("team-a", "carol")


def test_without_a_mapping_a_namespace_acts_for_its_namesake_only() -> None:
    policy = OwnerPolicy({}, home_namespace="voiceslot")
    assert policy.may_act_for("alice", "alice")
    assert not policy.may_act_for("alice", "bob")
    assert not policy.may_act_for("default", "")
    assert policy.may_act_for("voiceslot", "bob")
    assert "own name" in policy.explain("alice", "bob")


def test_the_mapping_is_read_from_the_environment(monkeypatch) -> None:
    monkeypatch.setenv(f"{ENV_PREFIX}NAMESPACE_OWNERS", '{"team-a": ["alice"], "ops": ["*"]}')
    assert OperatorConfig().namespace_owners == {"team-a": ("alice",), "ops": ("*",)}
    monkeypatch.setenv(f"{ENV_PREFIX}NAMESPACE_OWNERS", "")
    assert OperatorConfig().namespace_owners == {}
    monkeypatch.setenv(f"{ENV_PREFIX}METRICS_PORT", "")
    monkeypatch.setenv(f"{ENV_PREFIX}LIVENESS_ENDPOINT", "")
    config = OperatorConfig()
    assert config.metrics_port is None and config.liveness_endpoint is None


def test_metrics_and_liveness_are_on_by_default(monkeypatch) -> None:
    for name in ("METRICS_PORT", "LIVENESS_ENDPOINT"):
        monkeypatch.delenv(f"{ENV_PREFIX}{name}", raising=False)
    config = OperatorConfig()
    assert config.metrics_port == 9090
    assert config.liveness_endpoint == "http://0.0.0.0:8080/healthz"


# -- claims ----------------------------------------------------------------------------------


def claim(name: str, created: str, namespace: str = "ns", *, deleting: bool = False) -> Claim:
    return Claim(created, namespace, name, uid=f"uid-{namespace}-{name}", deleting=deleting)


def anyone(_: str) -> bool:
    return True


def test_the_oldest_voiceslot_owns_the_voice() -> None:
    old = claim("old", "2026-01-01T00:00:00Z")
    new = claim("new", "2026-01-02T00:00:00Z")
    assert owner_claim([new, old], anyone) == old


def test_ties_go_to_namespace_then_name() -> None:
    same = "2026-01-01T00:00:00Z"
    a, b, c = claim("b", same, "x"), claim("a", same, "y"), claim("a", same, "x")
    assert owner_claim([a, b, c], anyone) == c


def test_a_voiceslot_being_deleted_yields_to_a_live_one() -> None:
    old = claim("old", "2026-01-01T00:00:00Z", deleting=True)
    new = claim("new", "2026-01-02T00:00:00Z")
    assert owner_claim([old, new], anyone) == new
    assert owner_claim([old], anyone) == old


def test_a_mirrored_voiceslot_yields_to_a_declared_one() -> None:
    mirrored = Claim("2026-01-01T00:00:00Z", "voiceslot", "v-1", "u1", mirrored=True)
    declared = claim("mine", "2026-01-05T00:00:00Z")
    assert owner_claim([mirrored, declared], anyone) == declared
    assert owner_claim([mirrored], anyone) == mirrored


def test_refused_voiceslots_never_own_the_voice() -> None:
    squatter = claim("first", "2026-01-01T00:00:00Z", "intruder")
    rightful = claim("second", "2026-01-02T00:00:00Z", "team-a")
    assert owner_claim([squatter, rightful], lambda ns: ns == "team-a") == rightful
    assert owner_claim([squatter], lambda ns: ns == "team-a") is None


def test_a_claim_from_object_metadata() -> None:
    meta = {
        "namespace": "ns",
        "name": "a",
        "uid": "u1",
        "creationTimestamp": "2026-01-01T00:00:00Z",
        "deletionTimestamp": "2026-01-03T00:00:00Z",
    }
    found = claim_of(meta)
    assert (found.ref, found.deleting) == ("ns/a", True)
    assert same_object(found, Claim("x", "ns", "other-name", "u1"))
    assert not same_object(None, found)


# -- deletion --------------------------------------------------------------------------------


def facts(**changes: object) -> DeleteFacts:
    values: dict[str, object] = {
        "voice_exists": True,
        "permitted": True,
        "owns_voice": True,
        "successor": None,
        "forced": False,
        "phase": "Ready",
        "active_leases": 0,
        "waited_s": 0.0,
        "wait_bound_s": 600.0,
    }
    values.update(changes)
    return DeleteFacts(**values)  # type: ignore[arg-type]


@pytest.mark.parametrize(
    ("changes", "verdict"),
    [
        ({}, Verdict.RECLAIM),
        ({"voice_exists": False}, Verdict.RELEASE),
        ({"permitted": False, "active_leases": 1}, Verdict.RELEASE),
        ({"owns_voice": False, "forced": True}, Verdict.RELEASE),
        ({"successor": "ns/b", "forced": True}, Verdict.HAND_OVER),
        ({"forced": True, "active_leases": 2}, Verdict.FORCE_RECLAIM),
        ({"phase": "Allocating"}, Verdict.WAIT_SETTLE),
        ({"active_leases": 1, "waited_s": 10.0}, Verdict.WAIT_LEASE),
        ({"active_leases": 1, "waited_s": 600.0}, Verdict.GIVE_UP),
        ({"phase": "Idle"}, Verdict.RELEASE),
        ({"phase": "Queued"}, Verdict.RELEASE),
    ],
)
def test_what_a_deletion_does(changes: dict[str, object], verdict: Verdict) -> None:
    assert decide_delete(facts(**changes)) == verdict


def test_force_annotation_and_deletion_age() -> None:
    assert is_forced({"annotations": {"voiceslot.io/force-delete": "true"}})
    assert is_forced({"annotations": {"voiceslot.io/force-delete": "True"}})
    assert not is_forced({"annotations": {"voiceslot.io/force-delete": "false"}})
    assert not is_forced({})
    now = datetime(2026, 1, 1, 12, 0, 30, tzinfo=UTC)
    assert deletion_age_s({"deletionTimestamp": "2026-01-01T12:00:00Z"}, now=now) == 30.0
    assert deletion_age_s({}, now=now) == 0.0
    assert deletion_age_s({"deletionTimestamp": "garbage"}, now=now) == 0.0
    later = now + timedelta(hours=1)
    assert deletion_age_s({"deletionTimestamp": "2026-01-01T12:00:00Z"}, now=later) == 3630.0


# -- backoff ---------------------------------------------------------------------------------


def test_backoff_doubles_up_to_the_cap_with_jitter() -> None:
    def low() -> float:
        return 0.0

    def high() -> float:
        return 1.0

    assert [backoff_delay(n, base_s=1, cap_s=10, rand=high) for n in range(6)] == [
        1,
        2,
        4,
        8,
        10,
        10,
    ]
    assert backoff_delay(3, base_s=1, cap_s=10, rand=low) == 4.0  # half of 8
    assert backoff_delay(10_000, base_s=1, cap_s=10, rand=high) == 10  # no overflow
    delays = {backoff_delay(2, base_s=1, cap_s=10) for _ in range(20)}
    assert len(delays) > 1 and all(2 <= d <= 4 for d in delays)
