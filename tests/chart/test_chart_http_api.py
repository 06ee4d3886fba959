"""The synthesizer's OpenAI-compatible HTTP API in the chart: on by default on httpPort,
exposed by the container, the Service and the NetworkPolicy under the port name
"http", wired to the settings the service reads; switched off, none of it renders."""

from __future__ import annotations

from typing import Any

import helm_python
import pytest

from tests.chart.chartkit import RELEASE, container, one
from voiceslot.config import Settings

SYNTH = f"{RELEASE}-synthesizer"


def _env(deployment: dict[str, Any]) -> dict[str, str]:
    return {e["name"]: e.get("value") for e in container(deployment).get("env", [])}


def _settings(env: dict[str, str], monkeypatch) -> Settings:
    for name, value in env.items():
        if name.startswith("VOICESLOT_SYNTH__HTTP__"):
            monkeypatch.setenv(name, value)
    return Settings()


def test_the_http_api_is_served_on_http_port_by_default(render, monkeypatch) -> None:
    objects = render({"httpPort": 8123})
    deployment = one(objects, "Deployment", SYNTH)
    ports = {p["name"]: p["containerPort"] for p in container(deployment)["ports"]}
    assert ports["http"] == 8123
    http = _settings(_env(deployment), monkeypatch).synth.http
    assert (http.enabled, http.host, http.port) == (True, "0.0.0.0", 8123)
    service = one(objects, "Service", SYNTH)
    (port,) = [p for p in service["spec"]["ports"] if p["name"] == "http"]
    assert (port["port"], port["targetPort"]) == (8123, "http")


def test_switched_off_nothing_listens_or_is_exposed(render, monkeypatch) -> None:
    objects = render({"synthesizer": {"httpApi": {"enabled": False}}})
    deployment = one(objects, "Deployment", SYNTH)
    assert "http" not in {p["name"] for p in container(deployment)["ports"]}
    assert _settings(_env(deployment), monkeypatch).synth.http.enabled is False
    service = one(objects, "Service", SYNTH)
    assert "http" not in {p["name"] for p in service["spec"]["ports"]}


def test_network_policy_admits_the_http_port(render) -> None:
    objects = render({"networkPolicy": {"enabled": True}})
    policy = one(objects, "NetworkPolicy", SYNTH)
    ports = [p["port"] for rule in policy["spec"]["ingress"] for p in rule.get("ports", [])]
    assert "grpc" in ports and "http" in ports


def test_config_may_set_the_body_limit_but_not_the_chart_owned_address(chart) -> None:
    chart.validate_schema({"config": {"synth": {"http": {"max_body_bytes": 65536}}}})
    for owned in ({"port": 1}, {"enabled": False}, {"host": "::"}):
        with pytest.raises(helm_python.HelmValuesError) as info:
            chart.validate_schema({"config": {"synth": {"http": owned}}})
        assert next(iter(owned)) in str(info.value)
