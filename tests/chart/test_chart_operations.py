"""Operations pieces of the chart: the migration Job hook, NetworkPolicies, the operator's
metrics and liveness, the PrometheusRule and Grafana dashboard, and keys that stay put
across renders with an existing Secret."""

from __future__ import annotations

import json
import os
import re
from typing import Any

import helm_python
import jsonschema
import pytest
from click.testing import CliRunner

from tests.chart.chartkit import (
    KUBE_VERSIONS,
    NAMESPACE,
    RELEASE,
    container,
    find,
    kube_validate,
    one,
    production_values,
)

ALLOCATOR = f"{RELEASE}-allocator"
SYNTH = f"{RELEASE}-synthesizer"
OPERATOR = f"{RELEASE}-operator"
MIGRATIONS = f"{RELEASE}-migrations"

# The subset of prometheus-operator's CRD schemas (monitoring.coreos.com/v1) the chart
# uses, strict: an unknown or misspelt field is an error, as the API server's strict
# field validation would make it.
_DURATION = {
    "type": "string",
    "pattern": r"^(0|(([0-9]+)y)?(([0-9]+)w)?(([0-9]+)d)?(([0-9]+)h)?(([0-9]+)m)?(([0-9]+)s)?(([0-9]+)ms)?)$",
}
_STRING_MAP = {"type": "object", "additionalProperties": {"type": "string"}}
PROMETHEUS_RULE_SCHEMA: dict[str, Any] = {
    "type": "object",
    "required": ["apiVersion", "kind", "metadata", "spec"],
    "properties": {
        "apiVersion": {"const": "monitoring.coreos.com/v1"},
        "kind": {"const": "PrometheusRule"},
        "metadata": {"type": "object"},
        "spec": {
            "type": "object",
            "additionalProperties": False,
            "properties": {
                "groups": {
                    "type": "array",
                    "items": {
                        "type": "object",
                        "additionalProperties": False,
                        "required": ["name", "rules"],
                        "properties": {
                            "name": {"type": "string", "minLength": 1},
                            "interval": _DURATION,
                            "rules": {
                                "type": "array",
                                "items": {
                                    "type": "object",
                                    "additionalProperties": False,
                                    "required": ["expr"],
                                    "oneOf": [{"required": ["alert"]}, {"required": ["record"]}],
                                    "properties": {
                                        "alert": {"type": "string", "minLength": 1},
                                        "record": {"type": "string", "minLength": 1},
                                        "expr": {"type": ["string", "integer"]},
                                        "for": _DURATION,
                                        "labels": _STRING_MAP,
                                        "annotations": _STRING_MAP,
                                    },
                                },
                            },
                        },
                    },
                }
            },
        },
    },
}
SERVICE_MONITOR_SCHEMA: dict[str, Any] = {
    "type": "object",
    "required": ["apiVersion", "kind", "metadata", "spec"],
    "properties": {
        "apiVersion": {"const": "monitoring.coreos.com/v1"},
        "kind": {"const": "ServiceMonitor"},
        "metadata": {"type": "object"},
        "spec": {
            "type": "object",
            "additionalProperties": False,
            "required": ["selector", "endpoints"],
            "properties": {
                "selector": {"type": "object"},
                "namespaceSelector": {
                    "type": "object",
                    "additionalProperties": False,
                    "properties": {
                        "any": {"type": "boolean"},
                        "matchNames": {"type": "array", "items": {"type": "string"}},
                    },
                },
                "endpoints": {
                    "type": "array",
                    "items": {
                        "type": "object",
                        "additionalProperties": False,
                        "properties": {
                            "port": {"type": "string"},
                            "path": {"type": "string"},
                            "interval": _DURATION,
                            "scrapeTimeout": _DURATION,
                        },
                    },
                },
            },
        },
    },
}


def _postgres_values(url: str = "postgresql+asyncpg://vs:pw@db:5432/voiceslot") -> dict[str, Any]:
    return {"database": {"kind": "postgresql", "allocatorUrl": url}}


def _env(c: dict[str, Any]) -> dict[str, Any]:
    return {e["name"]: e.get("value", e.get("valueFrom")) for e in c["env"]}


def _labels_match(selector: dict[str, str], labels: dict[str, str]) -> bool:
    return selector.items() <= labels.items()


def _series(metrics: Any) -> dict[str, set[str]]:
    """Series names of prometheus_client metric objects, with their label names."""
    from prometheus_client.metrics import MetricWrapperBase

    names: dict[str, set[str]] = {}
    for metric in metrics:
        if not isinstance(metric, MetricWrapperBase):
            continue
        labels = set(metric._labelnames)
        suffixes = {
            "counter": ["_total"],
            "histogram": ["_bucket", "_sum", "_count"],
            "gauge": [""],
        }[metric._type]
        for suffix in suffixes:
            names[metric._name + suffix] = labels | ({"le"} if suffix == "_bucket" else set())
    return names


def _telemetry_metrics() -> dict[str, set[str]]:
    """Every series the allocator and the synthesizer (voiceslot.telemetry) expose."""
    from voiceslot import telemetry

    return _series(vars(telemetry).values())


def _operator_metrics() -> dict[str, set[str]]:
    """Every series the operator exposes (its metrics live on a registry of their own)."""
    from voiceslot_operator.metrics import OperatorMetrics

    return _series(vars(OperatorMetrics()).values())


_SELECTOR = re.compile(r"(voiceslot_[a-z_]+)(\{[^}]*\})?")


def _check_metrics(expr: str, known: dict[str, set[str]]) -> set[str]:
    """The metrics `expr` uses; fails on a name or a label the code does not have."""
    used = set()
    for name, selector in _SELECTOR.findall(expr):
        assert name in known, f"{name} is not a metric of voiceslot.telemetry ({expr})"
        used.add(name)
        for label in re.findall(r"([a-z_]+)\s*=~?", selector or ""):
            # namespace and service come from the scrape (the ServiceMonitor), not the code
            assert label in known[name] | {"namespace", "service"}, (name, label)
    return used


# -- migrations ------------------------------------------------------------------------


def test_migrations_run_in_a_pre_install_and_pre_upgrade_job(render) -> None:
    url = "postgresql+asyncpg://vs:pw@db:5432/voiceslot"
    objects = render(_postgres_values(url))
    job = one(objects, "Job", MIGRATIONS)
    hook = one(objects, "Secret", MIGRATIONS)
    for obj in (job, hook):
        annotations = obj["metadata"]["annotations"]
        assert annotations["helm.sh/hook"] == "pre-install,pre-upgrade"
        policy = annotations["helm.sh/hook-delete-policy"].split(",")
        assert "before-hook-creation" in policy and "hook-succeeded" in policy
        assert "hook-failed" not in policy, "a failed Job is kept for its logs"
    # The hook Secret exists before the Job (lower weight runs first).
    assert int(hook["metadata"]["annotations"]["helm.sh/hook-weight"]) < int(
        job["metadata"]["annotations"]["helm.sh/hook-weight"]
    )
    assert hook["stringData"] == {
        "VOICESLOT_ALLOCATOR__DATABASE_URL": url,
        "VOICESLOT_SYNTH__DATABASE_URL": url,
    }

    pod = job["spec"]["template"]["spec"]
    c = container(job)
    assert c["args"] == ["migrate"]
    assert pod["restartPolicy"] == "Never"
    assert job["spec"]["backoffLimit"] >= 0 and job["spec"]["activeDeadlineSeconds"] > 0
    # Nothing of the release exists yet when a pre-install hook runs: the Job names no
    # ServiceAccount, ConfigMap, claim or Secret of the release except its hook Secret.
    assert "serviceAccountName" not in pod
    assert pod["automountServiceAccountToken"] is False
    assert all("configMap" not in v and "persistentVolumeClaim" not in v for v in pod["volumes"])
    refs = {e["valueFrom"]["secretKeyRef"]["name"] for e in c["env"] if "valueFrom" in e}
    assert refs == {MIGRATIONS}
    assert set(hook["stringData"]) >= {
        e["valueFrom"]["secretKeyRef"]["key"] for e in c["env"] if "valueFrom" in e
    }
    # Same unprivileged pod as the services.
    assert pod["securityContext"]["runAsNonRoot"] is True
    assert c["securityContext"]["readOnlyRootFilesystem"] is True

    # The servers wait for the schema instead of migrating under the old pods.
    for name in (ALLOCATOR, SYNTH):
        env = _env(container(one(objects, "Deployment", name)))
        assert env["VOICESLOT_MIGRATE_ON_START"] == "false"
        assert env["VOICESLOT_SCHEMA_WAIT_S"] == "300"


def test_the_job_uses_an_existing_secret(render) -> None:
    objects = render(production_values())
    assert find(objects, "Secret") == []
    c = container(one(objects, "Job", MIGRATIONS))
    refs = {e["valueFrom"]["secretKeyRef"]["name"] for e in c["env"] if "valueFrom" in e}
    assert refs == {"voiceslot-prod"}


@pytest.mark.parametrize(
    "values",
    [
        pytest.param(None, id="sqlite"),
        pytest.param({**_postgres_values(), "migrations": {"job": {"enabled": False}}}, id="off"),
    ],
)
def test_without_the_job_the_services_migrate_on_start(render, values) -> None:
    objects = render(values)
    assert find(objects, "Job") == []
    assert find(objects, "Secret", MIGRATIONS) == []
    for name in (ALLOCATOR, SYNTH):
        assert "VOICESLOT_MIGRATE_ON_START" not in _env(container(one(objects, "Deployment", name)))


@pytest.mark.postgres
def test_the_job_migrates_a_real_database(render, postgres_url, monkeypatch, tmp_path) -> None:
    """What the Job's container is given is enough for `voiceslot migrate` to bring both
    services to head; a server given what the chart gives it then waits (not migrates)
    and finds its schema ready at once. Before the Job ran, it would not be."""
    import asyncio

    from allocator_svc import app as allocator_app
    from synth_svc import app as synth_app
    from voiceslot.cli.main import cli
    from voiceslot.config import Settings
    from voiceslot.db import SchemaNotReady, prepare_schema, schema_status

    objects = render(_postgres_values(postgres_url))
    job = one(objects, "Job", MIGRATIONS)
    secrets = {o["metadata"]["name"]: o["stringData"] for o in find(objects, "Secret")}
    assert MIGRATIONS in secrets, "the Job's hook Secret"

    def resolve(c: dict[str, Any]) -> dict[str, str]:
        """Plain values and the Secret keys the container names (field refs and optional
        keys the Secret does not hold are left out)."""
        out = {}
        for e in c["env"]:
            ref = e.get("valueFrom", {}).get("secretKeyRef")
            if "value" in e:
                out[e["name"]] = str(e["value"])
            elif ref and ref["key"] in secrets[ref["name"]]:
                out[e["name"]] = secrets[ref["name"]][ref["key"]]
        return out

    def server_settings(deployment: str) -> Settings:
        """Settings of a server from the chart's environment (no settings file)."""
        for name in [n for n in os.environ if n.startswith("VOICESLOT_")]:
            monkeypatch.delenv(name)
        for name, value in resolve(container(one(objects, "Deployment", deployment))).items():
            if name.startswith("VOICESLOT_") and name != "VOICESLOT_CONFIG":
                monkeypatch.setenv(name, value)
        monkeypatch.setenv("VOICESLOT_DATA_DIR", str(tmp_path))
        return Settings()

    servers = [
        (server_settings(ALLOCATOR), allocator_app, "allocator_database_url"),
        (server_settings(SYNTH), synth_app, "synth_database_url"),
    ]

    def server_start(wait_s: float) -> None:
        for settings, module, url in servers:
            assert settings.migrate_on_start is False and settings.schema_wait_s == 300
            assert getattr(settings, url) == postgres_url
            asyncio.run(
                prepare_schema(
                    module.MIGRATIONS,
                    getattr(settings, url),
                    version_table=module.VERSION_TABLE,
                    migrate=settings.migrate_on_start,
                    wait_s=wait_s,
                )
            )

    with pytest.raises(SchemaNotReady):
        server_start(0.3)

    job_env = resolve(container(job))
    job_env["VOICESLOT_DATA_DIR"] = str(tmp_path)  # the pod's emptyDir
    result = CliRunner().invoke(cli, container(job)["args"], env=job_env)
    assert result.exit_code == 0, result.output
    server_start(5)
    for _settings, module, _url in servers:
        status = schema_status(module.MIGRATIONS, postgres_url, version_table=module.VERSION_TABLE)
        assert asyncio.run(status) is None


# -- network policies ------------------------------------------------------------------


def _policy(objects: list[dict[str, Any]], name: str) -> dict[str, Any]:
    return one(objects, "NetworkPolicy", name)


def _rule_for_port(policy: dict[str, Any], port: str) -> dict[str, Any]:
    (rule,) = [r for r in policy["spec"]["ingress"] if any(p["port"] == port for p in r["ports"])]
    return rule


def test_network_policies_by_default(render) -> None:
    objects = render()
    deployments = {d["metadata"]["name"]: d for d in find(objects, "Deployment")}
    policies = {p["metadata"]["name"]: p for p in find(objects, "NetworkPolicy")}
    assert set(policies) == {ALLOCATOR, SYNTH, OPERATOR}
    for name, policy in policies.items():
        pod_labels = deployments[name]["spec"]["template"]["metadata"]["labels"]
        assert _labels_match(policy["spec"]["podSelector"]["matchLabels"], pod_labels)
        others = [d for n, d in deployments.items() if n != name]
        for other in others:
            assert not _labels_match(
                policy["spec"]["podSelector"]["matchLabels"],
                other["spec"]["template"]["metadata"]["labels"],
            )
        # Egress stays open unless asked: the chart cannot know the endpoints.
        assert policy["spec"]["policyTypes"] == ["Ingress"]
        # Every port a rule names is a port of the pod.
        port_names = {p["name"] for p in container(deployments[name])["ports"]}
        for rule in policy["spec"]["ingress"]:
            assert {p["port"] for p in rule["ports"]} <= port_names

    # The allocator's gRPC: only the synthesizer and the operator.
    grpc = _rule_for_port(policies[ALLOCATOR], "grpc")
    callers = [
        n
        for n, d in deployments.items()
        if any(
            _labels_match(
                peer["podSelector"]["matchLabels"], d["spec"]["template"]["metadata"]["labels"]
            )
            for peer in grpc["from"]
        )
    ]
    assert sorted(callers) == sorted([SYNTH, OPERATOR])
    assert all(set(peer) == {"podSelector"} for peer in grpc["from"]), "same namespace only"
    # The synthesizer's gRPC: clients from anywhere by default.
    assert "from" not in _rule_for_port(policies[SYNTH], "grpc")
    # Metrics: Prometheus only; the operator takes nothing else (kubelet probes need no rule).
    for policy in policies.values():
        metrics = _rule_for_port(policy, "metrics")
        assert metrics["from"] == [
            {
                "namespaceSelector": {},
                "podSelector": {"matchLabels": {"app.kubernetes.io/name": "prometheus"}},
            }
        ]
    assert len(policies[OPERATOR]["spec"]["ingress"]) == 1


def test_network_policy_peers_are_configurable(render) -> None:
    apps = [{"namespaceSelector": {"matchLabels": {"kubernetes.io/metadata.name": "apps"}}}]
    admin = [{"podSelector": {"matchLabels": {"app": "voice-admin"}}}]
    objects = render({"networkPolicy": {"clients": apps, "allocatorClients": admin, "metrics": []}})
    assert _rule_for_port(_policy(objects, SYNTH), "grpc")["from"] == apps
    assert _rule_for_port(_policy(objects, ALLOCATOR), "grpc")["from"][-1] == admin[0]
    assert "from" not in _rule_for_port(_policy(objects, ALLOCATOR), "metrics")
    assert find(render({"networkPolicy": {"enabled": False}}), "NetworkPolicy") == []


def test_restricted_egress(render) -> None:
    objects = render(production_values())
    policies = {p["metadata"]["name"]: p for p in find(objects, "NetworkPolicy")}
    assert set(policies) == {ALLOCATOR, SYNTH, OPERATOR, MIGRATIONS}

    def destinations(name: str) -> list[tuple[Any, ...]]:
        out = []
        for rule in policies[name]["spec"]["egress"]:
            ports = tuple(sorted((p["protocol"], p["port"]) for p in rule["ports"]))
            for peer in rule["to"]:
                out.append((json.dumps(peer, sort_keys=True), ports))
        return out

    def has(name: str, fragment: str, port: int) -> bool:
        return any(
            fragment in peer and ("TCP", port) in ports for peer, ports in destinations(name)
        )

    for name, policy in policies.items():
        assert policy["spec"]["policyTypes"] == ["Ingress", "Egress"], name
        # DNS over UDP and TCP everywhere.
        assert any(
            "kube-dns" in peer and ("UDP", 53) in ports and ("TCP", 53) in ports
            for peer, ports in destinations(name)
        ), name
    for name in (ALLOCATOR, SYNTH, MIGRATIONS):
        assert has(name, "10.20.0.0/24", 5432), name  # the database
    for name in (ALLOCATOR, SYNTH):
        assert has(name, "0.0.0.0/0", 443), name  # S3, provider APIs
    for name in (SYNTH, OPERATOR):
        assert has(name, '"app.kubernetes.io/component": "allocator"', 50051), name
    assert has(OPERATOR, "10.96.0.1/32", 443)
    # Nothing more than each needs.
    assert not has(ALLOCATOR, '"app.kubernetes.io/component": "allocator"', 50051)
    assert not has(OPERATOR, "10.20.0.0/24", 5432)
    assert not has(MIGRATIONS, "0.0.0.0/0", 443)
    for name in (ALLOCATOR, SYNTH, MIGRATIONS):
        assert not has(name, "10.96.0.1/32", 443), name
    assert policies[MIGRATIONS]["spec"]["ingress"] == []


# -- operator --------------------------------------------------------------------------


def test_operator_serves_metrics_and_liveness(render) -> None:
    objects = render()
    deployment = one(objects, "Deployment", OPERATOR)
    c = container(deployment)
    ports = {p["name"]: p["containerPort"] for p in c["ports"]}
    assert ports == {"metrics": 9090, "liveness": 8080}
    env = _env(c)
    assert env["VOICESLOT_OPERATOR__METRICS_PORT"] == "9090"
    assert env["VOICESLOT_OPERATOR__LIVENESS_ENDPOINT"] == "http://0.0.0.0:8080/healthz"
    assert "VOICESLOT_OPERATOR__NAMESPACE_OWNERS" not in env
    probe = c["livenessProbe"]["httpGet"]
    assert probe["path"] == "/healthz" and ports[probe["port"]] == 8080

    service = one(objects, "Service", OPERATOR)
    assert _labels_match(
        service["spec"]["selector"], deployment["spec"]["template"]["metadata"]["labels"]
    )
    assert service["spec"]["ports"] == [
        {
            "name": "metrics",
            "port": 9090,
            "targetPort": "metrics",
            "protocol": "TCP",
            "appProtocol": "http",
        }
    ]

    moved = render({"operator": {"metricsPort": 9300, "livenessPort": 8181}})
    c = container(one(moved, "Deployment", OPERATOR))
    assert {p["name"]: p["containerPort"] for p in c["ports"]} == {
        "metrics": 9300,
        "liveness": 8181,
    }
    assert _env(c)["VOICESLOT_OPERATOR__LIVENESS_ENDPOINT"] == "http://0.0.0.0:8181/healthz"
    assert one(moved, "Service", OPERATOR)["spec"]["ports"][0]["port"] == 9300
    # The probe can be switched off.
    assert "livenessProbe" not in container(
        one(render({"operator": {"livenessProbe": None}}), "Deployment", OPERATOR)
    )


def test_operator_settings_mean_what_the_values_say(render, monkeypatch) -> None:
    """The operator's own settings model reads the ports and the tenancy mapping the
    chart renders (a renamed setting fails here, not as a silently ignored variable)."""
    from voiceslot_operator.settings import ENV_PREFIX, OperatorConfig

    owners = {"team-a": ["alice@example.com", "bob"], "shared": ["*"]}
    values = {"operator": {"namespaceOwners": owners, "metricsPort": 9300, "livenessPort": 8181}}
    env = _env(container(one(render(values), "Deployment", OPERATOR)))
    assert json.loads(env["VOICESLOT_OPERATOR__NAMESPACE_OWNERS"]) == owners
    for name in [n for n in os.environ if n.startswith(ENV_PREFIX)]:
        monkeypatch.delenv(name)
    for name, value in env.items():
        if name.startswith(ENV_PREFIX) and isinstance(value, str):
            monkeypatch.setenv(name, value)
    config = OperatorConfig()
    assert config.metrics_port == 9300
    assert config.liveness_endpoint == "http://0.0.0.0:8181/healthz"
    assert {k: list(v) for k, v in config.namespace_owners.items()} == owners


# -- monitoring ------------------------------------------------------------------------


def test_monitoring_objects_only_when_enabled(render) -> None:
    objects = render()
    assert find(objects, "PrometheusRule") == []
    assert [c["metadata"]["name"] for c in find(objects, "ConfigMap")] == [f"{RELEASE}-config"]


def test_service_monitor_scrapes_the_operator(render) -> None:
    objects = render(production_values())
    monitor = one(objects, "ServiceMonitor", RELEASE)
    jsonschema.validate(monitor, SERVICE_MONITOR_SCHEMA)
    (components,) = [
        e["values"]
        for e in monitor["spec"]["selector"]["matchExpressions"]
        if e["key"] == "app.kubernetes.io/component"
    ]
    assert components == ["allocator", "synthesizer", "operator"]


def test_prometheus_rule(render) -> None:
    values = {
        "monitoring": {
            "prometheusRule": {
                "enabled": True,
                "labels": {"release": "prom"},
                "alertLabels": {"team": "voice"},
                "queueOldestAgeSeconds": 120,
                "stuckFor": "15m",
            }
        }
    }
    rule = one(render(values), "PrometheusRule", RELEASE)
    jsonschema.validate(rule, PROMETHEUS_RULE_SCHEMA)
    assert rule["metadata"]["labels"]["release"] == "prom"
    alerts = {r["alert"]: r for g in rule["spec"]["groups"] for r in g["rules"]}
    assert {
        "VoiceslotQueueStalled",
        "VoiceslotAllocationErrors",
        "VoiceslotBreakerOpen",
        "VoiceslotStuckAllocations",
        "VoiceslotAddEditBudgetLow",
        "VoiceslotReconciliationDrift",
    } <= set(alerts)
    assert alerts["VoiceslotQueueStalled"]["expr"].endswith("> 120")
    # Prometheus' own templates survive Helm's rendering.
    assert "{{ $labels.provider }}" in alerts["VoiceslotQueueStalled"]["annotations"]["summary"]
    assert alerts["VoiceslotStuckAllocations"]["for"] == "15m"
    known = {
        "voiceslot.allocator": (ALLOCATOR, _telemetry_metrics()),
        "voiceslot.operator": (OPERATOR, _operator_metrics()),
    }
    used: set[str] = set()
    for group in rule["spec"]["groups"]:
        service, metrics = known[group["name"]]
        for alert in group["rules"]:
            assert alert["labels"]["team"] == "voice"
            assert alert["labels"]["severity"] in {"warning", "critical"}
            assert alert["annotations"]["summary"]
            # Series of this release's component only.
            assert f'service="{service}"' in alert["expr"]
            assert f'namespace="{NAMESPACE}"' in alert["expr"]
            used |= _check_metrics(alert["expr"], metrics)
    assert {
        "voiceslot_queue_oldest_age_seconds",
        "voiceslot_allocations_total",
        "voiceslot_breaker_open",
        "voiceslot_stuck_allocations",
        "voiceslot_add_edit_remaining",
        "voiceslot_reconcile_drift_total",
        "voiceslot_operator_allocator_up",
        "voiceslot_operator_maintenance_last_success_timestamp_seconds",
    } <= used
    # Without the operator, no operator alerts; when it does not drive maintenance, no
    # alert on the maintenance it does not run.
    values["operator"] = {"enabled": False}
    rule = one(render(values), "PrometheusRule", RELEASE)
    assert [g["name"] for g in rule["spec"]["groups"]] == ["voiceslot.allocator"]
    values["operator"] = {"drivesMaintenance": False}
    rule = one(render(values), "PrometheusRule", RELEASE)
    alerts = {r["alert"] for g in rule["spec"]["groups"] for r in g["rules"]}
    assert "VoiceslotOperatorErrors" in alerts and "VoiceslotMaintenanceStalled" not in alerts


def test_dashboard_config_map(render) -> None:
    objects = render(
        {"monitoring": {"dashboard": {"enabled": True, "annotations": {"grafana_folder": "vs"}}}}
    )
    config_map = one(objects, "ConfigMap", f"{RELEASE}-dashboard")
    assert config_map["metadata"]["labels"]["grafana_dashboard"] == "1"
    assert config_map["metadata"]["annotations"] == {"grafana_folder": "vs"}
    dashboard = json.loads(config_map["data"]["voiceslot.json"])
    assert dashboard["uid"] and dashboard["panels"]
    known = _telemetry_metrics()
    operator = _operator_metrics()
    used: set[str] = set()
    for panel in dashboard["panels"]:
        for target in panel["targets"]:
            used |= _check_metrics(target["expr"], known | operator)
    # Every metric the allocator and the synthesizer export is on it.
    families = {re.sub(r"_(bucket|sum|count)$", "", n) for n in known}
    assert {re.sub(r"_bucket$", "", n) for n in used} >= families - {
        "voiceslot_synthesis_real_time_factor"
    }


# -- persistence -----------------------------------------------------------------------


@pytest.mark.parametrize("modes", [["ReadWriteOnce"], ["ReadWriteOncePod"]])
def test_a_claim_both_deployments_mount_must_be_read_write_many(chart, modes) -> None:
    with pytest.raises(helm_python.HelmValuesError) as info:
        chart.render(
            {"persistence": {"enabled": True, "accessModes": modes}},
            name=RELEASE,
            namespace=NAMESPACE,
        )
    assert "/persistence/accessModes" in str(info.value)
    assert "ReadWriteMany" in str(info.value)
    # Accepted: ReadWriteMany, or an existing claim (looked up in the cluster on install).
    chart.validate_schema({"persistence": {"enabled": True, "accessModes": ["ReadWriteMany"]}})
    chart.validate_schema({"persistence": {"enabled": True, "existingClaim": "data"}})


# -- secrets and GitOps ----------------------------------------------------------------


@pytest.mark.parametrize("values_name", ["production", "pinned-keys"])
def test_renders_are_stable_without_generated_keys(render_raw, values_name: str) -> None:
    """With secrets.existingSecret (the GitOps path) or every key given, two renders are
    byte for byte the same: nothing rolls the pods or changes credentials by itself."""
    values = (
        production_values()
        if values_name == "production"
        else {"operator": {"apiKey": "o" * 32}, "synthesizer": {"allocatorApiKey": "s" * 32}}
    )
    assert render_raw(values) == render_raw(values)


def test_generated_keys_change_on_every_render_without_a_cluster(render_raw) -> None:
    """Why the GitOps path exists: `helm template` cannot look the Secret up."""
    assert render_raw(None) != render_raw(None)


def test_notes_point_gitops_users_at_the_existing_secret(render_raw) -> None:
    notes = f"{RELEASE}/templates/NOTES.txt"
    assert "secrets.existingSecret" in render_raw(None)[notes]
    pinned = {"operator": {"apiKey": "o" * 32}, "synthesizer": {"allocatorApiKey": "s" * 32}}
    assert "secrets.existingSecret" not in render_raw(pinned)[notes]
    production = render_raw(production_values())[notes]
    assert "secrets.existingSecret" not in production
    assert f"logs job/{MIGRATIONS}" in production


@pytest.mark.parametrize("name", [RELEASE, "a" * 53])
def test_operations_objects_are_valid_kubernetes(render, name: str) -> None:
    """Every form the values allow (peers or CIDRs, hooks, long release names) renders
    objects the API server accepts."""
    values = {
        **_postgres_values(),
        "networkPolicy": {
            "allocatorClients": [{"podSelector": {"matchLabels": {"app": "voice-admin"}}}],
            "egress": {
                "enabled": True,
                "database": [
                    {
                        "to": [
                            {
                                "namespaceSelector": {"matchLabels": {"team": "db"}},
                                "podSelector": {"matchLabels": {"cnpg.io/cluster": "pg"}},
                            }
                        ],
                        "ports": [5432],
                    }
                ],
                "kubernetesApi": [{"cidr": "172.20.0.1/32", "ports": [443]}],
            },
        },
        "monitoring": {"prometheusRule": {"enabled": True}, "dashboard": {"enabled": True}},
        "serviceMonitor": {"enabled": True},
    }
    objects = render(values, name=name)
    kinds = {o["kind"] for o in objects}
    assert {"Job", "NetworkPolicy", "PrometheusRule", "ServiceMonitor"} <= kinds
    for obj in objects:
        assert len(obj["metadata"]["name"]) <= 63
        if obj["kind"] == "PrometheusRule":
            jsonschema.validate(obj, PROMETHEUS_RULE_SCHEMA)
        elif obj["kind"] == "ServiceMonitor":
            jsonschema.validate(obj, SERVICE_MONITOR_SCHEMA)
        else:
            for version in KUBE_VERSIONS:
                kube_validate(obj, version)
    # The embedded schemas are not vacuous.
    (rule,) = find(objects, "PrometheusRule")
    rule["spec"]["groups"][0]["rules"][0]["for"] = "five minutes"
    with pytest.raises(jsonschema.ValidationError):
        jsonschema.validate(rule, PROMETHEUS_RULE_SCHEMA)
