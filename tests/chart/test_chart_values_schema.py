"""values.schema.json rejects bad values (wrong types, unknown keys, bad enums, unsafe
combinations) with an error naming the offending key, and the templates refuse what
the schema cannot express (at render time: `helm lint` runs templates in lint mode,
where `fail` only logs)."""

from __future__ import annotations

from typing import Any

import helm_python
import pytest

from tests.chart.chartkit import VALUE_SETS

INVALID: list[tuple[str, dict[str, Any], str]] = [
    # wrong types
    ("replicas-not-int", {"allocator": {"replicaCount": "three"}}, "/allocator/replicaCount"),
    ("replicas-zero", {"allocator": {"replicaCount": 0}}, "/allocator/replicaCount"),
    ("port-out-of-range", {"grpcPort": 70000}, "/grpcPort"),
    ("bool-as-string", {"operator": {"enabled": "yes"}}, "/operator/enabled"),
    (
        "gpu-count-zero",
        {"synthesizer": {"gpu": {"enabled": True, "count": 0}}},
        "/synthesizer/gpu/count",
    ),
    (
        "quantity",
        {"allocator": {"resources": {"limits": {"memory": "lots"}}}},
        "/allocator/resources/limits/memory",
    ),
    (
        "lease-ttl-negative",
        {"config": {"allocator": {"default_lease_ttl_s": -1}}},
        "/config/allocator/default_lease_ttl_s",
    ),
    # unknown keys
    ("unknown-top-level", {"replicas": 3}, "replicas"),
    ("unknown-config-key", {"config": {"storage": {"bucket_name": "x"}}}, "bucket_name"),
    ("typo-in-component", {"synthesizer": {"autoscalling": {}}}, "autoscalling"),
    ("chart-owned-setting", {"config": {"listen": "0.0.0.0:1"}}, "listen"),
    (
        "secret-in-configmap",
        {"config": {"allocator": {"database_url": "postgresql+asyncpg://x/y"}}},
        "database_url",
    ),
    (
        "unknown-provider-field",
        {"providers": [{"name": "local", "kind": "local", "gpu": True}]},
        "gpu",
    ),
    # bad enums and patterns
    ("database-kind", {"database": {"kind": "mysql"}}, "/database/kind"),
    ("log-format", {"config": {"log_format": "xml"}}, "/config/log_format"),
    ("storage-kind", {"config": {"storage": {"kind": "gcs"}}}, "/config/storage/kind"),
    ("provider-kind", {"providers": [{"name": "local", "kind": "openai"}]}, "/providers/0/kind"),
    ("provider-name", {"providers": [{"name": "Local", "kind": "local"}]}, "/providers/0/name"),
    (
        "encoding",
        {"config": {"synth": {"default_encoding": "flac"}}},
        "/config/synth/default_encoding",
    ),
    ("pull-policy", {"image": {"pullPolicy": "Sometimes"}}, "/image/pullPolicy"),
    (
        "api-key-role",
        {"auth": {"apiKeys": [{"key": "x" * 32, "user": "u", "role": "root"}]}},
        "/auth/apiKeys/0/role",
    ),
    (
        "short-api-key",
        {"auth": {"apiKeys": [{"key": "short", "user": "u"}]}},
        "/auth/apiKeys/0/key",
    ),
    (
        "namespace-name",
        {"operator": {"watch": {"namespaces": ["Bad_NS"]}}},
        "/operator/watch/namespaces/0",
    ),
    (
        "db-url-scheme",
        {
            "database": {
                "kind": "postgresql",
                "allocatorUrl": "mysql://x/y",
                "synthUrl": "postgresql+asyncpg://x/y",
            }
        },
        "/database/allocatorUrl",
    ),
    (
        "toleration-operator",
        {"synthesizer": {"tolerations": [{"key": "a", "operator": "Maybe"}]}},
        "/synthesizer/tolerations/0/operator",
    ),
    # combinations
    (
        "remote-provider-without-key",
        {"providers": [{"name": "el", "kind": "elevenlabs"}], "defaultProvider": "el"},
        "api_key",
    ),
    ("s3-without-bucket", {"config": {"storage": {"kind": "s3"}}}, "bucket"),
    ("sqlite-with-replicas", {"allocator": {"replicaCount": 3}}, "/allocator/replicaCount"),
    (
        "sqlite-with-hpa",
        {"synthesizer": {"autoscaling": {"enabled": True}}},
        "/synthesizer/autoscaling/enabled",
    ),
    ("postgresql-without-urls", {"database": {"kind": "postgresql"}}, "/database/allocatorUrl"),
    # Both Deployments mount the data claim, from pods on any node: ReadWriteMany only.
    ("persistence-rwo", {"persistence": {"enabled": True}}, "/persistence/accessModes"),
    (
        "persistence-rwop",
        {"persistence": {"enabled": True, "accessModes": ["ReadWriteOncePod"]}},
        "/persistence/accessModes",
    ),
    # operations values
    (
        "namespace-owners-bad-namespace",
        {"operator": {"namespaceOwners": {"Team_A": ["alice"]}}},
        "Team_A",
    ),
    (
        "namespace-owners-not-a-list",
        {"operator": {"namespaceOwners": {"team-a": "alice"}}},
        "/operator/namespaceOwners/team-a",
    ),
    (
        "egress-cidr-and-peers",
        {
            "networkPolicy": {
                "egress": {
                    "database": [
                        {"cidr": "10.0.0.0/8", "to": [{"podSelector": {}}], "ports": [5432]}
                    ]
                }
            }
        },
        "/networkPolicy/egress/database/0",
    ),
    (
        "egress-without-ports",
        {"networkPolicy": {"egress": {"database": [{"cidr": "10.0.0.0/8"}]}}},
        "/networkPolicy/egress/database/0",
    ),
    (
        "error-ratio-above-one",
        {"monitoring": {"prometheusRule": {"allocationErrorRatio": 2}}},
        "/monitoring/prometheusRule/allocationErrorRatio",
    ),
    ("operator-metrics-port", {"operator": {"metricsPort": 0}}, "/operator/metricsPort"),
    ("migration-job-typo", {"migrations": {"jobs": {}}}, "jobs"),
]


@pytest.mark.parametrize(("values", "where"), [pytest.param(v, w, id=i) for i, v, w in INVALID])
def test_schema_rejects(chart, values: dict[str, Any], where: str) -> None:
    with pytest.raises(helm_python.HelmValuesError) as info:
        chart.validate_schema(values)
    assert where in str(info.value)
    # Rendering (helm install/template) refuses them the same way.
    with pytest.raises(helm_python.HelmValuesError):
        chart.render(values, name="voiceslot", namespace="voiceslot")


@pytest.mark.parametrize("values_name", sorted(VALUE_SETS))
def test_schema_accepts_the_supported_configurations(chart, values_name: str) -> None:
    chart.validate_schema(VALUE_SETS[values_name]())


def test_schema_accepts_code_level_settings(chart) -> None:
    """Keys of voiceslot.config.Settings that the chart passes through are accepted."""
    chart.validate_schema(
        {
            "config": {
                "log_level": "DEBUG",
                "log_format": "console",
                "shutdown_grace_s": 10,
                "storage": {
                    "kind": "local",
                    "root": "/var/lib/voiceslot/files",
                    "presign_ttl_s": 600,
                    "retention_days": 7,
                },
                "allocator": {
                    "label_prefix": "prod-",
                    "max_attempts": 3,
                    "maintenance_interval_s": 60,
                    "idle_reclaim_after_s": 120,
                },
                "synth": {"batch_workers": 0, "default_encoding": "opus"},
                "auth": {"rate_limit_per_second": 50, "rate_limit_burst": 100},
            }
        }
    )


SET_BY_THE_CHART = {
    # Wired from the chart's own values (database, listen address, the synthesizer's way
    # to the allocator), or kept out of values on purpose (secrets travel in a Secret).
    "database_url",
    "allocator_target",
    "allocator_api_key",
}


def test_schema_mirrors_the_settings_model(chart) -> None:
    """Every key the schema accepts under `config` is a field of voiceslot.config.Settings,
    so a value the schema lets through never makes the services fail at start-up."""
    from voiceslot import config as settings_module

    config_schema = chart.schema["properties"]["config"]
    sections = {
        None: settings_module.Settings,
        "storage": settings_module.StorageConfig,
        "allocator": settings_module.AllocatorConfig,
        "synth": settings_module.SynthConfig,
        "auth": settings_module.AuthConfig,
    }
    for section, model in sections.items():
        props = (
            config_schema["properties"]
            if section is None
            else config_schema["properties"][section]["properties"]
        )
        keys = {k for k in props if k not in sections}
        assert keys <= set(model.model_fields), (section, keys - set(model.model_fields))
        if section in ("allocator", "synth"):
            # The other way too: a service setting the schema forgot (clone_settle_s once)
            # could not be set through the chart at all.
            forgotten = set(model.model_fields) - keys - SET_BY_THE_CHART
            assert not forgotten, (section, forgotten)
    provider_keys = set(chart.schema["properties"]["providers"]["items"]["properties"])
    assert provider_keys == set(settings_module.ProviderConfig.model_fields)
    api_key_keys = set(
        chart.schema["properties"]["auth"]["properties"]["apiKeys"]["items"]["properties"]
    )
    assert api_key_keys == set(settings_module.ApiKeyConfig.model_fields)


TEMPLATE_FAILURES: list[tuple[str, dict[str, Any], str]] = [
    (
        "duplicate-provider",
        {"providers": [{"name": "local", "kind": "local"}, {"name": "local", "kind": "local"}]},
        "used twice",
    ),
    ("default-provider-missing", {"defaultProvider": "elevenlabs"}, "defaultProvider"),
    (
        "hpa-min-above-max",
        {
            **VALUE_SETS["shared-local-storage"](),
            "synthesizer": {"autoscaling": {"enabled": True, "minReplicas": 5, "maxReplicas": 2}},
        },
        "minReplicas",
    ),
    (
        "hpa-without-cpu-request",
        {
            **VALUE_SETS["shared-local-storage"](),
            "synthesizer": {
                "resources": {"requests": {"cpu": None, "memory": "1Gi"}},
                "autoscaling": {"enabled": True},
            },
        },
        "requests.cpu",
    ),
    (
        "local-storage-unshared",
        {
            "database": VALUE_SETS["shared-local-storage"]()["database"],
            "allocator": {"replicaCount": 2},
        },
        "shared volume",
    ),
    ("s3-secret-key-missing", {"s3": {"accessKeyId": "AKIA"}}, "s3.secretAccessKey"),
    (
        "egress-without-endpoints",
        {
            "database": VALUE_SETS["shared-local-storage"]()["database"],
            "networkPolicy": {"egress": {"enabled": True}},
        },
        "networkPolicy.egress.database (database.kind is postgresql), "
        "networkPolicy.egress.kubernetesApi",
    ),
]


@pytest.mark.parametrize(
    ("values", "message"), [pytest.param(v, m, id=i) for i, v, m in TEMPLATE_FAILURES]
)
def test_templates_refuse(chart, values: dict[str, Any], message: str) -> None:
    chart.validate_schema(values)  # the schema alone lets these through
    with pytest.raises(helm_python.HelmRenderError) as info:
        chart.render(values, name="voiceslot", namespace="voiceslot")
    assert message in str(info.value)
