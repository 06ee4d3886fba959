"""Shared helpers of the chart tests (imported by conftest.py and the test modules)."""

from __future__ import annotations

import functools
from pathlib import Path
from typing import Any

import kubernetes_validate
import kubernetes_validate.utils
import yaml

REPO = Path(__file__).resolve().parents[2]
CHART_DIR = REPO / "charts" / "voiceslot"
CRD_PATH = CHART_DIR / "crds" / "voiceslots.voiceslot.io.yaml"
EXAMPLES_DIR = CHART_DIR / "examples"
PRODUCTION_VALUES = CHART_DIR / "ci" / "production-values.yaml"

RELEASE = "voiceslot"
NAMESPACE = "voiceslot"

# A current Kubernetes release and the newest one kubernetes-validate bundles.
KUBE_VERSIONS = ("1.30.0", kubernetes_validate.utils.latest_version())

Manifest = dict[str, Any]


def parse(rendered: dict[str, str]) -> list[Manifest]:
    objects: list[Manifest] = []
    for path, text in sorted(rendered.items()):
        if not path.endswith((".yaml", ".yml")):
            continue  # NOTES.txt
        for doc in yaml.safe_load_all(text):
            if doc:
                objects.append(doc)
    return objects


def find(objects: list[Manifest], kind: str, name: str | None = None) -> list[Manifest]:
    return [
        o for o in objects if o["kind"] == kind and (name is None or o["metadata"]["name"] == name)
    ]


def one(objects: list[Manifest], kind: str, name: str) -> Manifest:
    found = find(objects, kind, name)
    assert len(found) == 1, f"expected one {kind}/{name}, found {len(found)}"
    return found[0]


def container(deployment: Manifest) -> Manifest:
    containers = deployment["spec"]["template"]["spec"]["containers"]
    assert len(containers) == 1
    return containers[0]


def strict_schema(schema: Any, *, top: bool = True) -> Any:
    """The openAPIV3Schema as the API server applies it with strict field validation
    (kubectl's default --validate=strict): unknown fields are errors. `metadata` is left
    to ObjectMeta's own rules."""
    if isinstance(schema, list):
        return [strict_schema(s, top=False) for s in schema]
    if not isinstance(schema, dict):
        return schema
    out = {k: strict_schema(v, top=False) for k, v in schema.items() if k != "properties"}
    if "properties" in schema:
        out["properties"] = {
            k: (v if (top and k == "metadata") else strict_schema(v, top=False))
            for k, v in schema["properties"].items()
        }
        if not schema.get("x-kubernetes-preserve-unknown-fields"):
            out.setdefault("additionalProperties", False)
    return out


def list_map_errors(schema: dict[str, Any], instance: Any, path: str = "") -> list[str]:
    """What jsonschema does not check: x-kubernetes-list-type map keys are unique."""
    errors: list[str] = []
    if isinstance(instance, dict):
        for key, sub in schema.get("properties", {}).items():
            if key in instance:
                errors += list_map_errors(sub, instance[key], f"{path}.{key}")
    elif isinstance(instance, list):
        if schema.get("x-kubernetes-list-type") == "map":
            keys = schema["x-kubernetes-list-map-keys"]
            seen: set[tuple[Any, ...]] = set()
            for item in instance:
                k = tuple(item.get(name) for name in keys)
                if k in seen:
                    errors.append(
                        f"{path}: duplicate entries for {dict(zip(keys, k, strict=True))}"
                    )
                seen.add(k)
        for i, item in enumerate(instance):
            errors += list_map_errors(schema.get("items", {}), item, f"{path}[{i}]")
    return errors


@functools.cache
def _kube_validate(manifest_yaml: str, version: str) -> str:
    return kubernetes_validate.validate(yaml.safe_load(manifest_yaml), version, strict=True)


def kube_validate(obj: Manifest, version: str) -> str:
    """Validate against the bundled OpenAPI schemas of `version` (strict: unknown fields
    are errors). Returns the schema version used; raises on any problem."""
    return _kube_validate(yaml.safe_dump(obj, sort_keys=True), version)


def production_values() -> dict[str, Any]:
    return yaml.safe_load(PRODUCTION_VALUES.read_text())


def postgres_inline_values() -> dict[str, Any]:
    """Everything given inline (no existingSecret): PostgreSQL, S3 with static keys,
    remote providers, client keys and the services' own keys."""
    return {
        "config": {
            "storage": {
                "kind": "s3",
                "bucket": "voices",
                "region": "us-east-1",
                "endpoint_url": "https://minio.example.com",
            }
        },
        "database": {
            "kind": "postgresql",
            "allocatorUrl": "postgresql+asyncpg://alloc:pw@db:5432/voiceslot_allocator",
            "synthUrl": "postgresql+asyncpg://synth:pw@db:5432/voiceslot_synth",
        },
        "s3": {"accessKeyId": "AKIAEXAMPLE", "secretAccessKey": "s3cr3t"},
        "defaultProvider": "elevenlabs",
        "providers": [
            {"name": "elevenlabs", "kind": "elevenlabs", "api_key": "xi-test-key", "capacity": 30},
            {"name": "cartesia", "kind": "cartesia", "api_key": "sk_car_test"},
            {"name": "local", "kind": "local", "workers": 2, "device": "cuda"},
        ],
        "auth": {
            "apiKeys": [
                {"key": "k" * 32, "user": "alice@example.com"},
                {"key": "a" * 32, "user": "ops", "role": "admin"},
            ]
        },
        "synthesizer": {
            "allocatorApiKey": "s" * 32,
            "autoscaling": {
                "enabled": True,
                "minReplicas": 2,
                "maxReplicas": 4,
                "targetMemoryUtilizationPercentage": 80,
            },
        },
        "allocator": {"replicaCount": 2},
        "operator": {"apiKey": "o" * 32},
    }


def cluster_wide_values() -> dict[str, Any]:
    return {"operator": {"watch": {"clusterWide": True}, "peering": {"enabled": True}}}


def shared_local_storage_values() -> dict[str, Any]:
    """Local storage shared through a ReadWriteMany claim, several replicas."""
    return {
        "database": {
            "kind": "postgresql",
            "allocatorUrl": "postgresql+asyncpg://a@db/a",
            "synthUrl": "postgresql+asyncpg://s@db/s",
        },
        "persistence": {
            "enabled": True,
            "accessModes": ["ReadWriteMany"],
            "size": "50Gi",
            "storageClass": "nfs",
        },
        "allocator": {"replicaCount": 2},
        "synthesizer": {"replicaCount": 2},
    }


def no_operator_values() -> dict[str, Any]:
    return {"operator": {"enabled": False}, "serviceMonitor": {"enabled": True}}


VALUE_SETS = {
    "default": lambda: None,
    "production": production_values,
    "postgres-inline": postgres_inline_values,
    "cluster-wide": cluster_wide_values,
    "shared-local-storage": shared_local_storage_values,
    "no-operator": no_operator_values,
}
