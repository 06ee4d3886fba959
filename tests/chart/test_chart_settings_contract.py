"""What the chart hands each container (the settings file from the ConfigMap and the
VOICESLOT_* environment, secrets resolved from the Secret) loads through the real
voiceslot.config.Settings and means what the values say. A renamed setting in the code
or the chart fails here, not at start-up in a cluster."""

from __future__ import annotations

import base64
import json
import os
from pathlib import Path
from typing import Any

import pytest

from tests.chart.chartkit import RELEASE, VALUE_SETS, container, find, one, production_values
from voiceslot.config import Settings

ALLOCATOR = f"{RELEASE}-allocator"
SYNTH = f"{RELEASE}-synthesizer"
OPERATOR = f"{RELEASE}-operator"

# What an operator of the production values puts in their existing Secret (documented
# in values.yaml and ci/production-values.yaml).
EXISTING_SECRET = {
    "VOICESLOT_PROVIDERS": json.dumps(
        [
            {"name": "elevenlabs", "kind": "elevenlabs", "api_key": "xi-prod", "capacity": 160},
            {"name": "local", "kind": "local", "device": "cuda"},
        ]
    ),
    "VOICESLOT_AUTH__API_KEYS": json.dumps(
        [
            {"key": "p" * 40, "user": "voiceslot-operator", "role": "admin"},
            {"key": "q" * 40, "user": "voiceslot-synthesizer", "role": "admin"},
            {"key": "u" * 40, "user": "app"},
        ]
    ),
    "VOICESLOT_ALLOCATOR__DATABASE_URL": "postgresql+asyncpg://a:pw@pg/allocator",
    "VOICESLOT_SYNTH__DATABASE_URL": "postgresql+asyncpg://s:pw@pg/synth",
    "VOICESLOT_SYNTH__ALLOCATOR_API_KEY": "q" * 40,
    "VOICESLOT_OPERATOR__ALLOCATOR_API_KEY": "p" * 40,
}


def _secret_data(objects: list[dict[str, Any]], name: str) -> dict[str, str]:
    secrets = find(objects, "Secret", name)
    if not secrets:
        return EXISTING_SECRET
    (secret,) = secrets
    data = dict(secret.get("stringData", {}))
    data.update({k: base64.b64decode(v).decode() for k, v in secret.get("data", {}).items()})
    return data


def _container_environment(
    objects: list[dict[str, Any]], deployment: str, config_path: Path
) -> dict[str, str]:
    c = container(one(objects, "Deployment", deployment))
    env: dict[str, str] = {}
    for item in c["env"]:
        if "value" in item:
            env[item["name"]] = str(item["value"])
            continue
        source = item["valueFrom"]
        if "fieldRef" in source:
            env[item["name"]] = f"fake-{source['fieldRef']['fieldPath']}"
        elif "secretKeyRef" in source:
            ref = source["secretKeyRef"]
            data = _secret_data(objects, ref["name"])
            if ref["key"] in data:
                env[item["name"]] = data[ref["key"]]
            else:
                assert ref.get("optional"), (
                    f"{deployment}: required Secret key {ref['key']} is missing"
                )
        else:
            raise AssertionError(f"unexpected env source {source}")
    # The settings file is mounted from the ConfigMap at the path VOICESLOT_CONFIG names.
    (volume,) = [
        v
        for v in one(objects, "Deployment", deployment)["spec"]["template"]["spec"]["volumes"]
        if v["name"] == "config"
    ]
    (mount,) = [m for m in c["volumeMounts"] if m["name"] == "config"]
    assert env["VOICESLOT_CONFIG"].startswith(mount["mountPath"] + "/")
    key = env["VOICESLOT_CONFIG"].removeprefix(mount["mountPath"] + "/")
    config_map = one(objects, "ConfigMap", volume["configMap"]["name"])
    config_path.write_text(config_map["data"][key])
    env["VOICESLOT_CONFIG"] = str(config_path)
    return env


def _load(monkeypatch: pytest.MonkeyPatch, env: dict[str, str]) -> Settings:
    for name in list(os.environ):
        if name.startswith("VOICESLOT_"):
            monkeypatch.delenv(name)
    for name, value in env.items():
        monkeypatch.setenv(name, value)
    return Settings()


@pytest.mark.parametrize("values_name", sorted(VALUE_SETS))
@pytest.mark.parametrize("deployment", [ALLOCATOR, SYNTH, OPERATOR])
def test_every_container_loads_its_settings(
    render, monkeypatch, tmp_path, values_name: str, deployment: str
) -> None:
    objects = render(VALUE_SETS[values_name]())
    if not find(objects, "Deployment", deployment):
        assert deployment == OPERATOR and values_name == "no-operator"
        return
    settings = _load(
        monkeypatch, _container_environment(objects, deployment, tmp_path / "config.yaml")
    )
    if deployment != OPERATOR:
        assert settings.listen == "0.0.0.0:50051"
        assert settings.metrics_port == 9090
        assert str(settings.data_dir) == "/var/lib/voiceslot"


def test_embedded_defaults(render, monkeypatch, tmp_path) -> None:
    objects = render()
    allocator = _load(monkeypatch, _container_environment(objects, ALLOCATOR, tmp_path / "a.yaml"))
    assert allocator.allocator_database_url.startswith("sqlite+aiosqlite:////var/lib/voiceslot/")
    assert allocator.storage.kind == "local"
    assert [p.name for p in allocator.providers] == ["local"]
    assert allocator.default_provider == "local"
    # The operator drives maintenance, so the allocator's own loop is off.
    assert allocator.allocator.maintenance_interval_s is None
    # The generated operator key is an accepted admin credential.
    admins = {
        k.user: k.key.get_secret_value() for k in allocator.auth.api_keys if k.role == "admin"
    }
    operator_env = _container_environment(objects, OPERATOR, tmp_path / "o.yaml")
    assert admins["voiceslot-operator"] == operator_env["VOICESLOT_OPERATOR__ALLOCATOR_API_KEY"]
    assert len(admins["voiceslot-operator"]) >= 32

    synth = _load(monkeypatch, _container_environment(objects, SYNTH, tmp_path / "s.yaml"))
    assert synth.synth.allocator_target == f"{ALLOCATOR}:50051"
    assert synth.synth_database_url.startswith("sqlite+aiosqlite:////var/lib/voiceslot/")
    # Batch jobs (no caller) need the synthesizer's own key, accepted by the allocator as admin:
    # a separate pod has no local credentials file to fall back on.
    synth_key = synth.synth.allocator_api_key.get_secret_value()
    assert admins["voiceslot-synthesizer"] == synth_key
    assert len(synth_key) >= 32 and synth_key != admins["voiceslot-operator"]


def test_without_the_operator_the_allocator_runs_maintenance(render, monkeypatch, tmp_path) -> None:
    objects = render(VALUE_SETS["no-operator"]())
    allocator = _load(monkeypatch, _container_environment(objects, ALLOCATOR, tmp_path / "a.yaml"))
    assert allocator.allocator.maintenance_interval_s == 30.0  # the code's default
    assert [k.user for k in allocator.auth.api_keys] == ["voiceslot-synthesizer"]


def test_services_may_share_one_database(render, monkeypatch, tmp_path) -> None:
    url = "postgresql+asyncpg://vs:pw@pg/voiceslot"
    objects = render({"database": {"kind": "postgresql", "allocatorUrl": url}})
    allocator = _load(monkeypatch, _container_environment(objects, ALLOCATOR, tmp_path / "a.yaml"))
    synth = _load(monkeypatch, _container_environment(objects, SYNTH, tmp_path / "s.yaml"))
    assert allocator.allocator.database_url == synth.synth.database_url == url


def test_inline_production_settings(render, monkeypatch, tmp_path) -> None:
    values = VALUE_SETS["postgres-inline"]()
    objects = render(values)
    allocator = _load(monkeypatch, _container_environment(objects, ALLOCATOR, tmp_path / "a.yaml"))
    assert allocator.allocator.database_url == values["database"]["allocatorUrl"]
    assert allocator.synth.database_url is None, (
        "the allocator never sees the synthesizer's database"
    )
    assert allocator.storage.kind == "s3"
    assert allocator.storage.bucket == "voices"
    assert allocator.storage.endpoint_url == "https://minio.example.com"
    assert allocator.default_provider == "elevenlabs"
    assert {
        p.name: p.api_key.get_secret_value() if p.api_key else None for p in allocator.providers
    } == {"elevenlabs": "xi-test-key", "cartesia": "sk_car_test", "local": None}
    keys = {k.user: (k.key.get_secret_value(), k.role) for k in allocator.auth.api_keys}
    assert keys == {
        "alice@example.com": ("k" * 32, "user"),
        "ops": ("a" * 32, "admin"),
        "voiceslot-operator": ("o" * 32, "admin"),
        "voiceslot-synthesizer": ("s" * 32, "admin"),
    }

    synth_env = _container_environment(objects, SYNTH, tmp_path / "s.yaml")
    assert synth_env["AWS_ACCESS_KEY_ID"] == "AKIAEXAMPLE"
    assert synth_env["AWS_SECRET_ACCESS_KEY"] == "s3cr3t"
    assert synth_env["AWS_REGION"] == "us-east-1"
    synth = _load(monkeypatch, synth_env)
    assert synth.synth.database_url == values["database"]["synthUrl"]
    assert synth.allocator.database_url is None
    assert synth.synth.allocator_api_key.get_secret_value() == "s" * 32

    operator_env = _container_environment(objects, OPERATOR, tmp_path / "o.yaml")
    assert operator_env["VOICESLOT_OPERATOR__ALLOCATOR_API_KEY"] == "o" * 32
    assert not {
        "VOICESLOT_PROVIDERS",
        "VOICESLOT_ALLOCATOR__DATABASE_URL",
        "VOICESLOT_SYNTH__DATABASE_URL",
        "AWS_SECRET_ACCESS_KEY",
    } & set(operator_env), "the operator gets no service secrets"


def test_existing_secret_settings(render, monkeypatch, tmp_path) -> None:
    objects = render(production_values())
    allocator = _load(monkeypatch, _container_environment(objects, ALLOCATOR, tmp_path / "a.yaml"))
    assert allocator.allocator.database_url == EXISTING_SECRET["VOICESLOT_ALLOCATOR__DATABASE_URL"]
    assert allocator.storage.kind == "s3" and allocator.storage.region == "eu-west-1"
    assert allocator.storage.retention_days == 30
    assert allocator.allocator.idle_reclaim_after_s == 600
    assert allocator.default_provider == "elevenlabs"

    operator_env = _container_environment(objects, OPERATOR, tmp_path / "o.yaml")
    assert json.loads(operator_env["VOICESLOT_OPERATOR__NAMESPACES"]) == [
        "voiceslot",
        "voiceslot-tenants",
    ]
    assert operator_env["VOICESLOT_OPERATOR__CLUSTERWIDE"] == "false"
    assert operator_env["VOICESLOT_OPERATOR__PEERING"] == ""
    assert operator_env["VOICESLOT_OPERATOR__ALLOCATOR_TARGET"] == f"{ALLOCATOR}:50051"


@pytest.mark.parametrize(
    ("values", "key"),
    [
        ({"operator": {"apiKey": "x" * 32}}, "VOICESLOT_OPERATOR__ALLOCATOR_API_KEY"),
        ({"synthesizer": {"allocatorApiKey": "x" * 32}}, "VOICESLOT_SYNTH__ALLOCATOR_API_KEY"),
    ],
)
def test_service_keys_are_given_or_generated(render, values: dict[str, Any], key: str) -> None:
    assert _secret_data(render(values), RELEASE)[key] == "x" * 32
    # Without one, each fresh render (no cluster to look the old Secret up in) makes a new one.
    first = _secret_data(render(), RELEASE)[key]
    second = _secret_data(render(), RELEASE)[key]
    assert first != second and len(first) == len(second) == 40
