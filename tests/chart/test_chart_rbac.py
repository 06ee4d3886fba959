"""The operator's RBAC grants exactly what kopf and the operator need, nothing wider:
its VoiceSlots (+status, +finalizers), events, CRD and namespace watching, and kopf's
peering objects only when peering is on. The services get no Kubernetes API access."""

from __future__ import annotations

from collections import defaultdict
from typing import Any

import pytest

from tests.chart.chartkit import (
    NAMESPACE,
    RELEASE,
    VALUE_SETS,
    container,
    find,
    one,
    production_values,
)

OPERATOR = f"{RELEASE}-operator"

Grants = dict[tuple[str, str], set[str]]

VOICESLOT_RULES: Grants = {
    ("voiceslot.io", "voiceslots"): {"get", "list", "watch", "patch", "create", "delete"},
    ("voiceslot.io", "voiceslots/status"): {"get", "patch"},
    ("voiceslot.io", "voiceslots/finalizers"): {"update"},
    ("", "events"): {"create", "patch"},
}
CRD_WATCH: Grants = {("apiextensions.k8s.io", "customresourcedefinitions"): {"list", "watch"}}
NAMESPACE_WATCH: Grants = {("", "namespaces"): {"list", "watch"}}


def _grants(role: dict[str, Any]) -> Grants:
    grants: Grants = defaultdict(set)
    for rule in role["rules"]:
        assert set(rule) <= {"apiGroups", "resources", "verbs"}, "no resourceNames/nonResourceURLs"
        for group in rule["apiGroups"]:
            for resource in rule["resources"]:
                grants[(group, resource)] |= set(rule["verbs"])
    return dict(grants)


def _roles(objects: list[dict[str, Any]]) -> list[dict[str, Any]]:
    return find(objects, "Role") + find(objects, "ClusterRole")


@pytest.mark.parametrize("values_name", sorted(VALUE_SETS))
def test_no_wildcards_and_no_secrets(render, values_name: str) -> None:
    for role in _roles(render(VALUE_SETS[values_name]())):
        for rule in role["rules"]:
            for field in ("apiGroups", "resources", "verbs"):
                assert "*" not in rule[field], (role["metadata"]["name"], rule)
                assert all("*" not in item for item in rule[field] if item), rule
            assert not {"secrets", "pods", "pods/exec", "configmaps", "serviceaccounts"} & set(
                rule["resources"]
            )
            assert not {"escalate", "bind", "impersonate", "deletecollection"} & set(rule["verbs"])


def test_namespaced_operator(render) -> None:
    objects = render()
    (role,) = find(objects, "Role")
    assert role["metadata"]["namespace"] == NAMESPACE
    assert _grants(role) == VOICESLOT_RULES
    (cluster_role,) = find(objects, "ClusterRole")
    assert _grants(cluster_role) == {**CRD_WATCH, **NAMESPACE_WATCH}


def test_one_role_per_watched_namespace(render) -> None:
    objects = render(production_values())
    roles = find(objects, "Role")
    assert sorted(r["metadata"]["namespace"] for r in roles) == ["voiceslot", "voiceslot-tenants"]
    for role in roles:
        assert _grants(role) == VOICESLOT_RULES
    bindings = find(objects, "RoleBinding")
    assert sorted(b["metadata"]["namespace"] for b in bindings) == [
        "voiceslot",
        "voiceslot-tenants",
    ]
    for binding in bindings:
        assert binding["roleRef"] == {
            "apiGroup": "rbac.authorization.k8s.io",
            "kind": "Role",
            "name": role["metadata"]["name"],
        }
        # The subject is the operator's account in the release namespace, wherever the Role is.
        assert binding["subjects"] == [
            {"kind": "ServiceAccount", "name": OPERATOR, "namespace": NAMESPACE}
        ]


def test_cluster_wide_operator_with_peering(render) -> None:
    objects = render(VALUE_SETS["cluster-wide"]())
    assert find(objects, "Role") == [] and find(objects, "RoleBinding") == []
    (cluster_role,) = find(objects, "ClusterRole")
    assert _grants(cluster_role) == {
        **VOICESLOT_RULES,
        **CRD_WATCH,
        ("kopf.dev", "clusterkopfpeerings"): {"get", "list", "watch", "patch"},
    }
    env = {
        e["name"]: e.get("value") for e in container(one(objects, "Deployment", OPERATOR))["env"]
    }
    assert env["VOICESLOT_OPERATOR__CLUSTERWIDE"] == "true"
    assert "VOICESLOT_OPERATOR__NAMESPACES" not in env
    assert env["VOICESLOT_OPERATOR__PEERING"] == "voiceslot"


def test_cluster_wide_without_peering_has_no_peering_rules(render) -> None:
    objects = render({"operator": {"watch": {"clusterWide": True}}})
    (cluster_role,) = find(objects, "ClusterRole")
    assert _grants(cluster_role) == {**VOICESLOT_RULES, **CRD_WATCH}


def test_namespaced_peering(render) -> None:
    objects = render({"operator": {"peering": {"enabled": True, "name": "vs"}}})
    (role,) = find(objects, "Role")
    assert _grants(role) == {
        **VOICESLOT_RULES,
        ("kopf.dev", "kopfpeerings"): {"get", "list", "watch", "patch"},
    }
    (cluster_role,) = find(objects, "ClusterRole")
    assert ("kopf.dev", "clusterkopfpeerings") not in _grants(cluster_role)


def test_without_mirroring_the_operator_cannot_create_or_delete(render) -> None:
    (role,) = find(render({"operator": {"mirrorVoiceSlots": False}}), "Role")
    assert _grants(role)[("voiceslot.io", "voiceslots")] == {"get", "list", "watch", "patch"}


def test_bindings_name_the_operator_account(render) -> None:
    objects = render()
    operator_pod = one(objects, "Deployment", OPERATOR)["spec"]["template"]["spec"]
    assert operator_pod["serviceAccountName"] == OPERATOR
    one(objects, "ServiceAccount", OPERATOR)
    (cluster_binding,) = find(objects, "ClusterRoleBinding")
    (cluster_role,) = find(objects, "ClusterRole")
    assert cluster_binding["roleRef"]["name"] == cluster_role["metadata"]["name"]
    assert cluster_binding["subjects"] == [
        {"kind": "ServiceAccount", "name": OPERATOR, "namespace": NAMESPACE}
    ]
    # Nothing is bound to the services' account.
    for binding in find(objects, "RoleBinding") + find(objects, "ClusterRoleBinding"):
        assert all(s["name"] == OPERATOR for s in binding["subjects"])


def test_cluster_objects_of_two_releases_do_not_collide(render) -> None:
    a = {
        o["metadata"]["name"]
        for o in render(None, namespace="team-a")
        if o["kind"].startswith("Cluster")
    }
    b = {
        o["metadata"]["name"]
        for o in render(None, namespace="team-b")
        if o["kind"].startswith("Cluster")
    }
    assert a and not a & b


def test_no_operator_no_rbac(render) -> None:
    objects = render(VALUE_SETS["no-operator"]())
    assert _roles(objects) == []
    assert find(objects, "RoleBinding") == [] and find(objects, "ClusterRoleBinding") == []
    assert find(objects, "ServiceAccount", OPERATOR) == []
