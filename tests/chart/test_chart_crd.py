"""The VoiceSlot CRD: names, versions, subresources, printer columns, a structural and
documented schema, and the example manifests validate against it while broken ones do
not."""

from __future__ import annotations

import copy
import re
from collections.abc import Iterator
from typing import Any

import pytest
import yaml

from tests.chart.chartkit import EXAMPLES_DIR
from voiceslot.v1 import common_pb2
from voiceslot_operator.conditions import CONDITION_TYPES as OPERATOR_CONDITION_TYPES
from voiceslot_operator.conditions import UNKNOWN_PHASE

# One phase per state of the wire contract, in its order: the CRD follows the proto. Then
# the operator's own: Unknown, while it cannot ask the allocator.
PHASES = [
    value.name.removeprefix("VOICE_STATE_").capitalize()
    for value in common_pb2.VoiceState.DESCRIPTOR.values
    if value.number != 0
] + [UNKNOWN_PHASE]
# The condition types the operator writes, in its order.
CONDITION_TYPES = list(OPERATOR_CONDITION_TYPES)


def _examples() -> list[tuple[str, dict[str, Any]]]:
    found = []
    for path in sorted(EXAMPLES_DIR.glob("*.yaml")):
        for i, doc in enumerate(d for d in yaml.safe_load_all(path.read_text()) if d):
            found.append((f"{path.name}#{i}", doc))
    return found


EXAMPLES = _examples()


def _walk(schema: dict[str, Any], path: str = "") -> Iterator[tuple[str, dict[str, Any]]]:
    yield path or "<root>", schema
    for name, sub in schema.get("properties", {}).items():
        yield from _walk(sub, f"{path}.{name}")
    if "items" in schema:
        yield from _walk(schema["items"], f"{path}[]")


def test_names_and_scope(crd) -> None:
    spec = crd["spec"]
    assert crd["metadata"]["name"] == "voiceslots.voiceslot.io"
    assert spec["group"] == "voiceslot.io"
    assert spec["scope"] == "Namespaced"
    assert spec["names"] == {
        "kind": "VoiceSlot",
        "listKind": "VoiceSlotList",
        "plural": "voiceslots",
        "singular": "voiceslot",
        "shortNames": ["vslot"],
        "categories": ["voiceslot"],
    }
    (version,) = spec["versions"]
    assert (version["name"], version["served"], version["storage"]) == ("v1alpha1", True, True)
    assert version["subresources"] == {"status": {}}


def test_schema_is_structural_and_documented(crd_schema) -> None:
    """Every node has a type (structural schema, or the API server refuses the CRD) and a
    description (so `kubectl explain voiceslot.spec.pinned` helps)."""
    for path, node in _walk(crd_schema):
        assert "type" in node, f"{path} has no type"
        if path != ".metadata":
            assert node.get("description", "").strip(), f"{path} has no description"
        assert not node.get("x-kubernetes-preserve-unknown-fields"), path
    assert crd_schema["properties"]["metadata"] == {"type": "object"}


def test_spec_fields(crd_schema) -> None:
    spec = crd_schema["properties"]["spec"]
    assert crd_schema["required"] == ["spec"]
    assert spec["required"] == ["voiceId"]
    assert set(spec["properties"]) == {"voiceId", "pinned", "provider"}
    assert spec["properties"]["pinned"] == {
        **spec["properties"]["pinned"],
        "type": "boolean",
        "default": False,
    }
    rules = spec["properties"]["voiceId"]["x-kubernetes-validations"]
    assert {"rule": "self == oldSelf", "message": "voiceId is immutable"} in rules
    # CEL cost estimation needs bounded strings.
    assert spec["properties"]["voiceId"]["maxLength"] <= 256


def test_status_fields(crd_schema) -> None:
    status = crd_schema["properties"]["status"]["properties"]
    assert set(status) == {
        "phase",
        "provider",
        "voiceId",
        "owner",
        "remoteId",
        "lastUsedAt",
        "leaseHolder",
        "activeLeases",
        "observedGeneration",
        "conditions",
    }
    assert status["phase"]["enum"] == PHASES
    assert status["lastUsedAt"]["format"] == "date-time"
    conditions = status["conditions"]
    assert conditions["x-kubernetes-list-type"] == "map"
    assert conditions["x-kubernetes-list-map-keys"] == ["type"]
    item = conditions["items"]
    assert set(item["properties"]) == {
        "type",
        "status",
        "reason",
        "message",
        "lastTransitionTime",
        "observedGeneration",
    }
    assert "type" in item["required"], "list-map keys must be required"
    assert item["properties"]["type"]["enum"] == CONDITION_TYPES
    assert item["properties"]["status"]["enum"] == ["True", "False", "Unknown"]


def test_phases_match_the_wire_contract(crd_schema) -> None:
    """The phases are the allocator's VoiceState values (proto), CamelCased, then the
    operator's Unknown (the allocator could not be asked)."""
    from voiceslot.v1 import common_pb2

    names = [value.name for value in common_pb2.DESCRIPTOR.enum_types_by_name["VoiceState"].values]
    wire = [
        n.removeprefix("VOICE_STATE_").capitalize() for n in names if n != "VOICE_STATE_UNSPECIFIED"
    ]
    assert crd_schema["properties"]["status"]["properties"]["phase"]["enum"] == [
        *wire,
        UNKNOWN_PHASE,
    ]


def _json_path(obj: Any, path: str) -> Any:
    """Evaluate the JSONPath subset printer columns use: .a.b and [?(@.k=="v")].k2"""
    for step in re.findall(r'\.[A-Za-z]+|\[\?\(@\.\w+=="[^"]*"\)\]', path):
        if step.startswith("["):
            key, value = re.fullmatch(r'\[\?\(@\.(\w+)=="([^"]*)"\)\]', step).groups()
            obj = next((x for x in obj or [] if x.get(key) == value), None)
        else:
            obj = (obj or {}).get(step[1:])
    return obj


def test_printer_columns(crd) -> None:
    columns = {c["name"]: c for c in crd["spec"]["versions"][0]["additionalPrinterColumns"]}
    default_view = [name for name, c in columns.items() if not c.get("priority")]
    assert default_view == ["Provider", "Voice", "Phase", "Ready", "Idle", "Age"]
    assert columns["Idle"]["type"] == "date" and columns["Age"]["type"] == "date"

    example = dict(EXAMPLES)["voiceslot-with-status.yaml#0"]
    example = {
        **example,
        "metadata": {**example["metadata"], "creationTimestamp": "2025-05-01T00:00:00Z"},
    }
    shown = {name: _json_path(example, c["jsonPath"]) for name, c in columns.items()}
    assert shown["Provider"] == "elevenlabs"
    assert shown["Voice"] == example["spec"]["voiceId"]
    assert shown["Phase"] == "Ready"
    assert shown["Ready"] == "True"
    assert shown["Idle"] == "2025-05-01T12:34:56Z"
    assert shown["Pinned"] is True
    assert shown["Leases"] == 1


def test_examples_exist() -> None:
    names = {name.split("#")[0] for name, _ in EXAMPLES}
    assert {
        "voiceslot-minimal.yaml",
        "voiceslot-pinned.yaml",
        "voiceslot-with-status.yaml",
    } <= names


@pytest.mark.parametrize(("name", "obj"), EXAMPLES, ids=[n for n, _ in EXAMPLES])
def test_examples_are_valid(voiceslot_errors, name: str, obj: dict[str, Any]) -> None:
    assert voiceslot_errors(obj) == []


def _broken(mutate) -> dict[str, Any]:
    obj = copy.deepcopy(dict(EXAMPLES)["voiceslot-with-status.yaml#0"])
    mutate(obj)
    return obj


INVALID = {  # case: (mutation, where the error must point)
    "missing-spec": (lambda o: o.pop("spec"), "'spec' is a required property"),
    "missing-voiceId": (lambda o: o["spec"].pop("voiceId"), "'voiceId' is a required property"),
    "empty-voiceId": (lambda o: o["spec"].update(voiceId=""), "spec.voiceId"),
    "voiceId-with-spaces": (lambda o: o["spec"].update(voiceId="alice voice"), "spec.voiceId"),
    "pinned-as-string": (lambda o: o["spec"].update(pinned="yes"), "spec.pinned"),
    "provider-uppercase": (lambda o: o["spec"].update(provider="ElevenLabs"), "spec.provider"),
    "unknown-spec-field": (lambda o: o["spec"].update(voiceID="x"), "'voiceID' was unexpected"),
    "unknown-phase": (lambda o: o["status"].update(phase="Running"), "status.phase"),
    "negative-leases": (lambda o: o["status"].update(activeLeases=-1), "status.activeLeases"),
    "leases-as-string": (lambda o: o["status"].update(activeLeases="1"), "status.activeLeases"),
    "lastUsedAt-not-a-time": (
        lambda o: o["status"].update(lastUsedAt="yesterday"),
        "status.lastUsedAt",
    ),
    "condition-status": (
        lambda o: o["status"]["conditions"][0].update(status="Maybe"),
        "status.conditions.0.status",
    ),
    "condition-type": (
        lambda o: o["status"]["conditions"][0].update(type="Healthy"),
        "status.conditions.0.type",
    ),
    "condition-without-reason": (
        lambda o: o["status"]["conditions"][0].pop("reason"),
        "'reason' is a required property",
    ),
    "condition-reason-format": (
        lambda o: o["status"]["conditions"][0].update(reason="not ok!"),
        "status.conditions.0.reason",
    ),
    "duplicate-condition-type": (
        lambda o: o["status"]["conditions"].append(copy.deepcopy(o["status"]["conditions"][0])),
        "duplicate entries for {'type': 'Ready'}",
    ),
    "unknown-status-field": (lambda o: o["status"].update(slots=3), "'slots' was unexpected"),
    "wrong-group": (lambda o: o.update(apiVersion="voiceslot.dev/v1alpha1"), "apiVersion"),
}


@pytest.mark.parametrize("case", sorted(INVALID))
def test_invalid_voiceslots_are_rejected(voiceslot_errors, case: str) -> None:
    mutate, where = INVALID[case]
    errors = voiceslot_errors(_broken(mutate))
    assert errors, case
    assert all(where in e for e in errors), errors
