"""The operator reads what the chart hands it: every ``VOICESLOT_OPERATOR__*`` variable in
the rendered Deployment is a field of ``OperatorConfig`` and means what the values say;
and the kopf settings the operator applies (finalizer, storage, watch timeouts)."""

from __future__ import annotations

import base64
import logging
import os
from typing import Any

import helm_python
import kopf
import pytest
from click.testing import CliRunner

from tests.chart.chartkit import (
    CHART_DIR,
    RELEASE,
    cluster_wide_values,
    container,
    find,
    one,
    parse,
    production_values,
)
from voiceslot_operator.cli import operator_command
from voiceslot_operator.finalizer import FINALIZER
from voiceslot_operator.handlers import configure_settings
from voiceslot_operator.settings import ENV_PREFIX, OperatorConfig

OPERATOR = f"{RELEASE}-operator"


@pytest.fixture(scope="module")
def chart() -> Any:
    loaded = helm_python.Chart.load(CHART_DIR)
    try:
        yield loaded
    finally:
        loaded.close()


def operator_env(chart: Any, values: dict[str, Any] | None) -> dict[str, str]:
    """The operator container's environment, Secret references resolved (a key the chart
    does not render, from an existing Secret, gets a stand-in)."""
    objects = parse(chart.render(values, name=RELEASE, namespace="voiceslot"))
    secrets = find(objects, "Secret", RELEASE)
    data = {}
    for secret in secrets:
        data.update(secret.get("stringData", {}))
        data.update({k: base64.b64decode(v).decode() for k, v in secret.get("data", {}).items()})
    env = {}
    for item in container(one(objects, "Deployment", OPERATOR))["env"]:
        if "value" in item:
            env[item["name"]] = str(item["value"])
        elif "secretKeyRef" in item["valueFrom"]:
            env[item["name"]] = data.get(item["valueFrom"]["secretKeyRef"]["key"], "x" * 40)
    return env


def load(monkeypatch: pytest.MonkeyPatch, env: dict[str, str]) -> OperatorConfig:
    for name in [n for n in os.environ if n.startswith("VOICESLOT_")]:
        monkeypatch.delenv(name)
    for name, value in env.items():
        monkeypatch.setenv(name, value)
    return OperatorConfig()


@pytest.mark.parametrize(
    "values",
    [None, production_values(), cluster_wide_values()],
    ids=["default", "production", "cluster-wide"],
)
def test_every_variable_the_chart_sets_is_a_setting(chart, values) -> None:
    names = {n for n in operator_env(chart, values) if n.startswith(ENV_PREFIX)}
    assert names >= {f"{ENV_PREFIX}ALLOCATOR_TARGET", f"{ENV_PREFIX}ALLOCATOR_API_KEY"}
    unknown = {
        n for n in names if n.removeprefix(ENV_PREFIX).lower() not in OperatorConfig.model_fields
    }
    assert not unknown, f"the chart sets variables the operator ignores: {unknown}"


def test_default_values(chart, monkeypatch) -> None:
    config = load(monkeypatch, operator_env(chart, None))
    assert config.allocator_target == f"{RELEASE}-allocator:50051"
    assert config.allocator_api_key is not None
    assert len(config.allocator_api_key.get_secret_value()) >= 32
    assert not config.clusterwide
    assert config.watch_scope() == ("voiceslot",)
    assert config.standalone and config.peering == ""
    assert config.effective_mirror_namespace() == "voiceslot"


def test_production_values_watch_their_namespaces(chart, monkeypatch) -> None:
    config = load(monkeypatch, operator_env(chart, production_values()))
    assert config.watch_scope() == ("voiceslot", "voiceslot-tenants")
    assert config.effective_mirror_namespace() == "voiceslot"


def test_cluster_wide_with_peering(chart, monkeypatch) -> None:
    config = load(monkeypatch, operator_env(chart, cluster_wide_values()))
    assert config.clusterwide and config.watch_scope() == ()
    assert config.peering == "voiceslot" and not config.standalone
    # Mirrored VoiceSlots go to the release namespace (POD_NAMESPACE).
    assert config.effective_mirror_namespace(environ={"POD_NAMESPACE": "voiceslot"}) == "voiceslot"


def test_empty_values_mean_unset(monkeypatch) -> None:
    config = load(
        monkeypatch,
        {
            f"{ENV_PREFIX}ALLOCATOR_API_KEY": "",
            f"{ENV_PREFIX}PEERING": "",
            f"{ENV_PREFIX}MIRROR_NAMESPACE": "",
        },
    )
    assert config.allocator_api_key is None
    assert config.standalone
    assert config.mirror_namespace is None


def test_cluster_wide_and_namespaces_conflict(monkeypatch) -> None:
    env = {f"{ENV_PREFIX}CLUSTERWIDE": "true", f"{ENV_PREFIX}NAMESPACES": '["a"]'}
    with pytest.raises(ValueError, match="either clusterwide or namespaces"):
        load(monkeypatch, env)
    # The command says so instead of starting.
    result = CliRunner().invoke(operator_command, [], env=env)
    assert result.exit_code == 2
    assert "either clusterwide or namespaces" in result.output


def test_config_is_frozen() -> None:
    config = OperatorConfig()
    with pytest.raises(ValueError):
        config.reconcile_interval_s = 1.0  # type: ignore[misc]


def test_kopf_settings() -> None:
    settings = kopf.OperatorSettings()
    config = OperatorConfig(
        watch_server_timeout_s=120, watch_client_timeout_s=150, watch_connect_timeout_s=7
    )
    configure_settings(settings, config, identity="voiceslot-operator-0")
    assert settings.persistence.finalizer == FINALIZER == "voiceslot.io/reclaim"
    # Nothing under status.kopf: the CRD's structural schema would prune it.
    assert isinstance(settings.persistence.progress_storage, kopf.AnnotationsProgressStorage)
    assert isinstance(settings.persistence.diffbase_storage, kopf.AnnotationsDiffBaseStorage)
    assert (
        settings.watching.server_timeout,
        settings.watching.client_timeout,
        settings.watching.connect_timeout,
    ) == (120, 150, 7)
    assert settings.posting.level == logging.WARNING
    assert settings.posting.reporting_instance == "voiceslot-operator-0"
