"""Fixtures for the Helm chart tests: the chart loaded through Helm v4's engine
(helm-python-sdk), rendering to parsed objects, the CRD and its schema, and a
Kubernetes-style validator for VoiceSlot objects."""

from __future__ import annotations

import copy
from collections.abc import Callable, Iterator
from typing import Any

import helm_python
import jsonschema
import pytest
import yaml

from tests.chart.chartkit import (
    CHART_DIR,
    CRD_PATH,
    NAMESPACE,
    RELEASE,
    Manifest,
    list_map_errors,
    parse,
    strict_schema,
)


@pytest.fixture(scope="session")
def chart() -> Iterator[helm_python.Chart]:
    loaded = helm_python.Chart.load(CHART_DIR)
    try:
        yield loaded
    finally:
        loaded.close()


@pytest.fixture(scope="session")
def render_raw(chart: helm_python.Chart) -> Callable[..., dict[str, str]]:
    def _render(
        values: dict[str, Any] | None = None, *, namespace: str = NAMESPACE, name: str = RELEASE
    ) -> dict[str, str]:
        return chart.render(
            copy.deepcopy(values) if values else None, name=name, namespace=namespace
        )

    return _render


@pytest.fixture(scope="session")
def render(render_raw: Callable[..., dict[str, str]]) -> Callable[..., list[Manifest]]:
    """Render the chart and return the manifests as parsed objects."""

    def _render(values: dict[str, Any] | None = None, **kwargs: Any) -> list[Manifest]:
        return parse(render_raw(values, **kwargs))

    return _render


@pytest.fixture(scope="session")
def crd() -> Manifest:
    docs = [d for d in yaml.safe_load_all(CRD_PATH.read_text()) if d]
    assert len(docs) == 1, "the CRD file holds exactly one object"
    return docs[0]


@pytest.fixture(scope="session")
def crd_schema(crd: Manifest) -> dict[str, Any]:
    (version,) = crd["spec"]["versions"]
    return version["schema"]["openAPIV3Schema"]


@pytest.fixture(scope="session")
def voiceslot_errors(crd: Manifest, crd_schema: dict[str, Any]) -> Callable[[Manifest], list[str]]:
    """Validation errors of a VoiceSlot object against the CRD (empty when valid)."""
    strict = strict_schema(crd_schema)
    # OpenAPI 3.0 schema objects follow JSON Schema draft 4's semantics.
    validator = jsonschema.Draft4Validator(strict, format_checker=jsonschema.FormatChecker())
    group = crd["spec"]["group"]
    version = crd["spec"]["versions"][0]["name"]

    def _errors(obj: Manifest) -> list[str]:
        errors = [
            f"{'.'.join(map(str, e.absolute_path)) or '<root>'}: {e.message}"
            for e in validator.iter_errors(obj)
        ]
        if obj.get("apiVersion") != f"{group}/{version}":
            errors.append(f"apiVersion {obj.get('apiVersion')!r} is not {group}/{version}")
        if obj.get("kind") != crd["spec"]["names"]["kind"]:
            errors.append(f"kind {obj.get('kind')!r} is not {crd['spec']['names']['kind']}")
        errors += list_map_errors(crd_schema, obj)
        return errors

    return _errors
