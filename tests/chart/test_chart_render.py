"""The chart lints clean, renders for every supported configuration, and every rendered
object is valid Kubernetes for a current release; the workloads are wired together
(selectors, ports, probes, targets) the way the services expect."""

from __future__ import annotations

from collections import Counter
from typing import Any

import helm_python
import kubernetes_validate
import pytest
import yaml

from tests.chart.chartkit import (
    CHART_DIR,
    CRD_PATH,
    KUBE_VERSIONS,
    NAMESPACE,
    RELEASE,
    VALUE_SETS,
    container,
    find,
    kube_validate,
    one,
    production_values,
)

# Kinds served by CRDs the validator cannot know; everything else must validate.
CUSTOM_KINDS = {
    ("monitoring.coreos.com/v1", "ServiceMonitor"),
    ("monitoring.coreos.com/v1", "PrometheusRule"),
}

ALLOCATOR = f"{RELEASE}-allocator"
SYNTH = f"{RELEASE}-synthesizer"
OPERATOR = f"{RELEASE}-operator"


def _lint_problems(report: dict[str, Any]) -> list[dict[str, Any]]:
    """Lint messages at warning (2) or error (3) severity."""
    return [m for m in report["messages"] if m["severity"] >= 2]


@pytest.mark.parametrize("values_name", ["default", "production"])
@pytest.mark.parametrize("kube_version", [None, "v1.30.0"])
def test_lint_is_clean(values_name: str, kube_version: str | None) -> None:
    values = VALUE_SETS[values_name]()
    report = helm_python.lint(
        CHART_DIR, values, strict=True, namespace=NAMESPACE, kube_version=kube_version
    )
    assert report["total_charts_linted"] == 1
    assert report["errors"] == []
    assert _lint_problems(report) == []


def test_lint_reports_bad_values() -> None:
    """Lint is not vacuous: bad values are errors."""
    report = helm_python.lint(CHART_DIR, {"allocator": {"replicaCount": "three"}}, strict=True)
    assert report["errors"], report
    assert any("/allocator/replicaCount" in e for e in report["errors"])


@pytest.mark.parametrize("values_name", sorted(VALUE_SETS))
def test_every_manifest_is_valid_kubernetes(render, values_name: str) -> None:
    objects = render(VALUE_SETS[values_name]())
    assert objects
    checked = 0
    for obj in objects:
        assert obj["metadata"]["name"], obj
        if obj["kind"] not in ("ClusterRole", "ClusterRoleBinding"):
            assert obj["metadata"]["namespace"], f"{obj['kind']} without a namespace"
        if (obj["apiVersion"], obj["kind"]) in CUSTOM_KINDS:
            with pytest.raises(kubernetes_validate.SchemaNotFoundError):
                kube_validate(obj, KUBE_VERSIONS[-1])
            continue
        for version in KUBE_VERSIONS:
            kube_validate(obj, version)
        checked += 1
    assert checked >= 9


def test_validation_is_not_vacuous(render) -> None:
    """The strict validator rejects what the API server would."""
    deployment = one(render(), "Deployment", ALLOCATOR)
    container(deployment)["readinessProbe"]["grpc"]["port"] = "grpc"  # must be an integer
    with pytest.raises(kubernetes_validate.ValidationError):
        kube_validate(deployment, KUBE_VERSIONS[0])
    deployment = one(render(), "Deployment", ALLOCATOR)
    deployment["spec"]["template"]["spec"]["containerz"] = []
    with pytest.raises(kubernetes_validate.ValidationError):
        kube_validate(deployment, KUBE_VERSIONS[0])


@pytest.mark.parametrize("version", KUBE_VERSIONS)
def test_crd_is_valid_apiextensions_v1(crd, version: str) -> None:
    assert crd["apiVersion"] == "apiextensions.k8s.io/v1"
    kube_validate(crd, version)


def test_crd_is_not_templated(chart) -> None:
    """Helm installs crds/ verbatim; the file is the chart's only CRD."""
    crds = chart.crds
    assert [c["filename"] for c in crds] == [f"{RELEASE}/crds/{CRD_PATH.name}"]
    assert yaml.safe_load(crds[0]["data"]) == yaml.safe_load(CRD_PATH.read_text())


def test_default_render_has_the_expected_objects(render) -> None:
    kinds = Counter(o["kind"] for o in render())
    assert kinds == Counter(
        {
            "Deployment": 3,
            "Service": 3,
            "NetworkPolicy": 3,
            "ConfigMap": 1,
            "Secret": 1,
            "ServiceAccount": 2,
            "PodDisruptionBudget": 2,
            "ClusterRole": 1,
            "ClusterRoleBinding": 1,
            "Role": 1,
            "RoleBinding": 1,
        }
    )


def test_production_render(render) -> None:
    objects = render(production_values())
    kinds = Counter(o["kind"] for o in objects)
    assert kinds["HorizontalPodAutoscaler"] == 1
    assert kinds["ServiceMonitor"] == 1
    assert kinds["Secret"] == 0, "production uses secrets.existingSecret"
    assert kinds["Role"] == 2 and kinds["RoleBinding"] == 2  # two watched namespaces

    allocator = one(objects, "Deployment", ALLOCATOR)
    assert allocator["spec"]["replicas"] == 3
    assert allocator["spec"]["strategy"]["type"] == "RollingUpdate"

    synth = one(objects, "Deployment", SYNTH)
    assert "replicas" not in synth["spec"], "the HPA owns the replica count"
    pod = synth["spec"]["template"]["spec"]
    assert container(synth)["resources"]["limits"]["nvidia.com/gpu"] == 1
    assert pod["nodeSelector"] == {"nvidia.com/gpu.present": "true"}
    assert {"key": "nvidia.com/gpu", "operator": "Exists", "effect": "NoSchedule"} in pod[
        "tolerations"
    ]
    assert pod["runtimeClassName"] == "nvidia"

    hpa = one(objects, "HorizontalPodAutoscaler", SYNTH)
    assert hpa["apiVersion"] == "autoscaling/v2"
    assert hpa["spec"]["scaleTargetRef"] == {
        "apiVersion": "apps/v1",
        "kind": "Deployment",
        "name": SYNTH,
    }
    assert (hpa["spec"]["minReplicas"], hpa["spec"]["maxReplicas"]) == (2, 8)
    assert hpa["spec"]["metrics"][0]["resource"]["name"] == "cpu"

    sa = one(objects, "ServiceAccount", RELEASE)
    assert sa["metadata"]["annotations"]["eks.amazonaws.com/role-arn"].startswith("arn:aws:iam::")

    for deployment in find(objects, "Deployment"):
        for env in container(deployment)["env"]:
            ref = env.get("valueFrom", {}).get("secretKeyRef")
            if ref:
                assert ref["name"] == "voiceslot-prod"


def test_no_gpu_by_default(render) -> None:
    synth = one(render(), "Deployment", SYNTH)
    pod = synth["spec"]["template"]["spec"]
    assert not any("gpu" in k for k in container(synth)["resources"].get("limits", {}))
    assert "nodeSelector" not in pod and "tolerations" not in pod
    assert synth["spec"]["replicas"] == 1


@pytest.mark.parametrize("values_name", sorted(VALUE_SETS))
def test_workloads_are_wired_together(render, values_name: str) -> None:
    objects = render(VALUE_SETS[values_name]())
    deployments = {d["metadata"]["name"]: d for d in find(objects, "Deployment")}
    services = {s["metadata"]["name"]: s for s in find(objects, "Service")}
    assert {ALLOCATOR, SYNTH} <= set(deployments)
    with_operator = values_name != "no-operator"
    # The operator's Service serves only its metrics.
    assert set(services) == {ALLOCATOR, SYNTH} | ({OPERATOR} if with_operator else set())

    for name, service in services.items():
        pod_labels = deployments[name]["spec"]["template"]["metadata"]["labels"]
        assert service["spec"]["selector"].items() <= pod_labels.items()
        other = SYNTH if name == ALLOCATOR else ALLOCATOR
        other_labels = deployments[other]["spec"]["template"]["metadata"]["labels"]
        assert not service["spec"]["selector"].items() <= other_labels.items()
        port_names = {p["name"] for p in container(deployments[name])["ports"]}
        assert {p["targetPort"] for p in service["spec"]["ports"]} <= port_names

    for deployment in deployments.values():
        spec = deployment["spec"]
        assert (
            spec["selector"]["matchLabels"].items()
            <= spec["template"]["metadata"]["labels"].items()
        )

    for pdb in find(objects, "PodDisruptionBudget"):
        selector = pdb["spec"]["selector"]["matchLabels"]
        matched = [
            d
            for d in deployments.values()
            if selector.items() <= d["spec"]["template"]["metadata"]["labels"].items()
        ]
        assert len(matched) == 1, pdb["metadata"]["name"]

    # Every referenced ConfigMap, Secret (unless existing), PVC and ServiceAccount exists.
    existing = {(o["kind"], o["metadata"]["name"]) for o in objects}
    external_secret = (VALUE_SETS[values_name]() or {}).get("secrets", {}).get("existingSecret")
    for deployment in deployments.values():
        pod = deployment["spec"]["template"]["spec"]
        assert ("ServiceAccount", pod["serviceAccountName"]) in existing
        for volume in pod["volumes"]:
            if "configMap" in volume:
                assert ("ConfigMap", volume["configMap"]["name"]) in existing
            if "persistentVolumeClaim" in volume:
                assert (
                    "PersistentVolumeClaim",
                    volume["persistentVolumeClaim"]["claimName"],
                ) in existing
        for env in container(deployment)["env"]:
            ref = env.get("valueFrom", {}).get("secretKeyRef")
            if ref:
                if external_secret:
                    assert ref["name"] == external_secret
                else:
                    assert ("Secret", ref["name"]) in existing


@pytest.mark.parametrize("values_name", sorted(VALUE_SETS))
def test_services_use_native_grpc_probes(render, values_name: str) -> None:
    objects = render(VALUE_SETS[values_name]())
    for name in (ALLOCATOR, SYNTH):
        c = container(one(objects, "Deployment", name))
        grpc_port = next(p["containerPort"] for p in c["ports"] if p["name"] == "grpc")
        for probe in ("startupProbe", "readinessProbe", "livenessProbe"):
            assert c[probe]["grpc"]["port"] == grpc_port, (name, probe)
            assert "httpGet" not in c[probe] and "exec" not in c[probe]
        env = {e["name"]: e.get("value") for e in c["env"]}
        assert env["VOICESLOT_LISTEN"] == f"0.0.0.0:{grpc_port}"
        metrics_port = next(p["containerPort"] for p in c["ports"] if p["name"] == "metrics")
        assert env["VOICESLOT_METRICS_PORT"] == str(metrics_port)


def test_ports_are_configurable(render) -> None:
    objects = render({"grpcPort": 6000, "metricsPort": 9300})
    synth = container(one(objects, "Deployment", SYNTH))
    env = {e["name"]: e.get("value") for e in synth["env"]}
    assert env["VOICESLOT_LISTEN"] == "0.0.0.0:6000"
    assert env["VOICESLOT_METRICS_PORT"] == "9300"
    assert env["VOICESLOT_SYNTH__ALLOCATOR_TARGET"] == f"{ALLOCATOR}:6000"
    assert synth["readinessProbe"]["grpc"]["port"] == 6000
    service = one(objects, "Service", ALLOCATOR)
    assert {p["name"]: p["port"] for p in service["spec"]["ports"]} == {
        "grpc": 6000,
        "metrics": 9300,
    }


@pytest.mark.parametrize("values_name", sorted(VALUE_SETS))
def test_synthesizer_reaches_the_allocator_service(render, values_name: str) -> None:
    objects = render(VALUE_SETS[values_name]())
    env = {e["name"]: e.get("value") for e in container(one(objects, "Deployment", SYNTH))["env"]}
    host, port = env["VOICESLOT_SYNTH__ALLOCATOR_TARGET"].rsplit(":", 1)
    service = one(objects, "Service", host)
    grpc = next(p for p in service["spec"]["ports"] if p["name"] == "grpc")
    assert grpc["port"] == int(port)
    assert service["spec"]["selector"]["app.kubernetes.io/component"] == "allocator"


@pytest.mark.parametrize("values_name", sorted(VALUE_SETS))
def test_commands_and_operator_singleton(render, values_name: str) -> None:
    objects = render(VALUE_SETS[values_name]())
    assert container(one(objects, "Deployment", ALLOCATOR))["args"][:3] == [
        "serve",
        "--only",
        "allocator",
    ]
    assert container(one(objects, "Deployment", SYNTH))["args"][:3] == ["serve", "--only", "synth"]
    operators = find(objects, "Deployment", OPERATOR)
    if values_name == "no-operator":
        assert operators == []
        return
    (operator,) = operators
    assert container(operator)["args"][0] == "operator"
    assert operator["spec"]["replicas"] == 1
    assert operator["spec"]["strategy"] == {"type": "Recreate"}


@pytest.mark.parametrize("values_name", sorted(VALUE_SETS))
def test_pods_run_unprivileged(render, values_name: str) -> None:
    for deployment in find(render(VALUE_SETS[values_name]()), "Deployment"):
        pod = deployment["spec"]["template"]["spec"]
        assert pod["securityContext"]["runAsNonRoot"] is True
        assert pod["securityContext"]["runAsUser"] != 0
        c = container(deployment)
        assert c["securityContext"]["allowPrivilegeEscalation"] is False
        assert c["securityContext"]["readOnlyRootFilesystem"] is True
        assert c["securityContext"]["capabilities"]["drop"] == ["ALL"]
        mounts = {m["mountPath"] for m in c["volumeMounts"]}
        assert "/tmp" in mounts, "a read-only root needs a writable /tmp"
        name = deployment["metadata"]["name"]
        assert pod["automountServiceAccountToken"] is (name == OPERATOR)


def test_sqlite_services_never_overlap_during_rollouts(render) -> None:
    objects = render()
    for name in (ALLOCATOR, SYNTH):
        assert one(objects, "Deployment", name)["spec"]["strategy"] == {"type": "Recreate"}


def test_config_or_secret_changes_roll_the_pods(render) -> None:
    def annotations(values: dict[str, Any] | None) -> dict[str, str]:
        deployment = one(render(values), "Deployment", ALLOCATOR)
        return deployment["spec"]["template"]["metadata"]["annotations"]

    base = annotations(None)
    changed_config = annotations({"config": {"log_level": "DEBUG"}})
    changed_secret = annotations({"auth": {"apiKeys": [{"key": "z" * 32, "user": "bob"}]}})
    assert changed_config["checksum/config"] != base["checksum/config"]
    assert changed_config["checksum/secret"] == base["checksum/secret"]
    assert changed_secret["checksum/secret"] != base["checksum/secret"]
    assert changed_secret["checksum/config"] == base["checksum/config"]


def test_persistence_claim(render) -> None:
    objects = render(VALUE_SETS["shared-local-storage"]())
    pvc = one(objects, "PersistentVolumeClaim", f"{RELEASE}-data")
    assert pvc["spec"]["accessModes"] == ["ReadWriteMany"]
    assert pvc["spec"]["resources"]["requests"]["storage"] == "50Gi"
    assert pvc["spec"]["storageClassName"] == "nfs"
    for name in (ALLOCATOR, SYNTH):
        volumes = one(objects, "Deployment", name)["spec"]["template"]["spec"]["volumes"]
        data = next(v for v in volumes if v["name"] == "data")
        assert data == {"name": "data", "persistentVolumeClaim": {"claimName": f"{RELEASE}-data"}}

    objects = render({"persistence": {"enabled": True, "existingClaim": "mine"}})
    assert find(objects, "PersistentVolumeClaim") == []
    volumes = one(objects, "Deployment", ALLOCATOR)["spec"]["template"]["spec"]["volumes"]
    assert {"name": "data", "persistentVolumeClaim": {"claimName": "mine"}} in volumes


def test_service_monitor(render) -> None:
    assert find(render(), "ServiceMonitor") == []
    objects = render(
        {"serviceMonitor": {"enabled": True, "labels": {"release": "prom"}, "interval": "15s"}}
    )
    monitor = one(objects, "ServiceMonitor", RELEASE)
    assert monitor["metadata"]["labels"]["release"] == "prom"
    assert monitor["spec"]["endpoints"][0]["port"] == "metrics"
    assert monitor["spec"]["endpoints"][0]["interval"] == "15s"
    assert monitor["spec"]["namespaceSelector"] == {"matchNames": [NAMESPACE]}

    # The selector picks exactly the two services.
    def selected(service: dict[str, Any]) -> bool:
        labels = service["metadata"]["labels"]
        return all(
            labels.get(e["key"]) in e["values"]
            for e in monitor["spec"]["selector"]["matchExpressions"]
        )

    assert {s["metadata"]["name"] for s in find(objects, "Service") if selected(s)} == {
        ALLOCATOR,
        SYNTH,
        OPERATOR,
    }


def test_names_follow_the_release(render) -> None:
    objects = render(None, name="vs-eu", namespace="tenant-a")
    names = {o["metadata"]["name"] for o in objects if o["kind"] == "Deployment"}
    assert names == {
        "vs-eu-voiceslot-allocator",
        "vs-eu-voiceslot-synthesizer",
        "vs-eu-voiceslot-operator",
    }
    assert {o["metadata"]["namespace"] for o in objects if "namespace" in o["metadata"]} == {
        "tenant-a"
    }
    for obj in objects:
        assert len(obj["metadata"]["name"]) <= 63


def test_long_release_names_stay_valid(render) -> None:
    long = "a" * 53  # Helm's maximum release name length
    for obj in render(None, name=long):
        assert len(obj["metadata"]["name"]) <= 63
        kube_validate(obj, KUBE_VERSIONS[-1])


def test_notes_warn_about_unshared_local_storage(render_raw) -> None:
    default_notes = render_raw()[f"{RELEASE}/templates/NOTES.txt"]
    assert "WARNING: config.storage.kind is local" in default_notes
    assert "kubectl get voiceslots" in default_notes
    production_notes = render_raw(production_values())[f"{RELEASE}/templates/NOTES.txt"]
    assert "WARNING" not in production_notes
    assert "voiceslot, voiceslot-tenants" in production_notes


def test_readiness_asks_about_the_component_service(render) -> None:
    """The probes name services the servers register with grpc.health.v1 (their proto
    full names), so a draining server turns unready."""
    from voiceslot.v1 import allocator_pb2, synthesizer_pb2

    expected = {
        ALLOCATOR: allocator_pb2.DESCRIPTOR.services_by_name["AllocatorService"].full_name,
        SYNTH: synthesizer_pb2.DESCRIPTOR.services_by_name["SynthesizerService"].full_name,
    }
    objects = render()
    for name, service in expected.items():
        c = container(one(objects, "Deployment", name))
        assert c["readinessProbe"]["grpc"]["service"] == service
        assert c["startupProbe"]["grpc"]["service"] == service
        assert c["livenessProbe"]["grpc"]["service"] == ""


def test_workers_per_pod_become_serve_arguments(render) -> None:
    values = production_values()
    values["allocator"]["workers"] = 4
    values.setdefault("synthesizer", {})["workers"] = 2
    objects = render(values)
    allocator_args = container(one(objects, "Deployment", ALLOCATOR))["args"]
    synth_args = container(one(objects, "Deployment", SYNTH))["args"]
    assert allocator_args[:5] == ["serve", "--only", "allocator", "--workers", "4"]
    assert synth_args[:5] == ["serve", "--only", "synth", "--workers", "2"]
    # One process per pod by default: no flag at all.
    default = render(None)
    assert "--workers" not in container(one(default, "Deployment", ALLOCATOR))["args"]


def test_workers_need_postgresql() -> None:
    """SQLite serves one process: the schema refuses several workers on it."""
    report = helm_python.lint(CHART_DIR, {"allocator": {"workers": 2}}, strict=True)
    assert any("workers" in e for e in report["errors"]), report
