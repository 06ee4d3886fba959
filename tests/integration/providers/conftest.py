"""Fixtures for the provider contract tests: one loopback emulator for the session (reset
before every test), adapters pointed at it over real HTTP, and the providers' OpenAPI
schemas for validating what goes over the wire."""

from __future__ import annotations

import asyncio
import json
from collections.abc import AsyncIterator, Awaitable, Callable, Iterator
from pathlib import Path
from typing import Any

import jsonschema
import pytest
import yaml
from referencing import Registry, Resource
from referencing.jsonschema import DRAFT202012

from voiceslot.providers.base import Provider
from voiceslot.providers.cartesia import CartesiaProvider
from voiceslot.providers.elevenlabs import ElevenLabsProvider
from voiceslot.testing.emulator import ProviderEmulator
from voiceslot.testing.emulator.state import EmulatorState
from voiceslot.testing.samples import make_sample_wav

OPENAPI_DIR = Path(__file__).resolve().parents[2] / "contracts" / "openapi"
TIMEOUT_S = 5.0
"""Client timeout for ordinary calls; the hang tests use much shorter ones."""


def oas30_to_jsonschema(node: Any) -> Any:
    """OpenAPI 3.0 schemas are not quite JSON Schema: ``nullable: true`` means "or null".
    Rewrite it so a 2020-12 validator reads the Cartesia file as OpenAPI intends.
    (``openapi-schema-validator`` does this, but it is not a declared dependency.)"""
    if isinstance(node, list):
        return [oas30_to_jsonschema(item) for item in node]
    if not isinstance(node, dict):
        return node
    out = {key: oas30_to_jsonschema(value) for key, value in node.items()}
    if out.get("nullable") is not True:
        return out
    del out["nullable"]
    if "$ref" in out:
        ref = out.pop("$ref")
        return {**out, "anyOf": [{"$ref": ref}, {"type": "null"}]}
    if isinstance(out.get("type"), str):
        out["type"] = [out["type"], "null"]
        if "enum" in out:
            out["enum"] = [*out["enum"], None]
        return out
    return {"anyOf": [out, {"type": "null"}]}


class OpenApi:
    """Validates instances against ``components/schemas`` of either provider's file,
    with every ``$ref`` resolved inside that file."""

    def __init__(self) -> None:
        elevenlabs = json.loads((OPENAPI_DIR / "elevenlabs-openapi.json").read_text())
        cartesia = oas30_to_jsonschema(
            yaml.safe_load((OPENAPI_DIR / "cartesia-openapi.yaml").read_text())
        )
        self.documents = {"elevenlabs": elevenlabs, "cartesia": cartesia}
        self._registry: Registry = Registry().with_resources(
            (f"urn:{name}", Resource.from_contents(doc, default_specification=DRAFT202012))
            for name, doc in self.documents.items()
        )

    def validate(self, provider: str, schema_name: str, instance: Any) -> None:
        self.validate_fragment(provider, f"/components/schemas/{schema_name}", instance)

    def validate_fragment(self, provider: str, pointer: str, instance: Any) -> None:
        validator = jsonschema.Draft202012Validator(
            {"$ref": f"urn:{provider}#{pointer}"},
            registry=self._registry,
            format_checker=jsonschema.Draft202012Validator.FORMAT_CHECKER,
        )
        validator.validate(instance)

    def operation(self, provider: str, path: str, method: str) -> dict[str, Any]:
        return self.documents[provider]["paths"][path][method]


@pytest.fixture(scope="session")
def openapi() -> OpenApi:
    return OpenApi()


@pytest.fixture(scope="session")
def emulator() -> Iterator[ProviderEmulator]:
    with ProviderEmulator(seed=20240601) as running:
        yield running


@pytest.fixture
def emu(emulator: ProviderEmulator) -> ProviderEmulator:
    """The session's emulator, reset to default accounts, no voices and no faults."""
    emulator.reset()
    return emulator


@pytest.fixture
async def make_provider(
    emu: ProviderEmulator,
) -> AsyncIterator[Callable[..., Provider]]:
    """Build an adapter for the emulator: ``make_provider("elevenlabs", timeout_s=0.3)``."""
    made: list[Provider] = []

    def factory(kind: str, **overrides: Any) -> Provider:
        overrides.setdefault("timeout_s", TIMEOUT_S)
        config = emu.provider_config(kind, **overrides)  # type: ignore[arg-type]
        adapter: Provider = (
            ElevenLabsProvider(config) if kind == "elevenlabs" else CartesiaProvider(config)
        )
        made.append(adapter)
        return adapter

    yield factory
    for adapter in made:
        await adapter.aclose()


@pytest.fixture
async def eleven(make_provider: Callable[..., Provider]) -> Provider:
    return make_provider("elevenlabs")


@pytest.fixture
async def cartesia(make_provider: Callable[..., Provider]) -> Provider:
    return make_provider("cartesia")


@pytest.fixture
def wait_until(emu: ProviderEmulator) -> Callable[..., Awaitable[None]]:
    """``await wait_until(lambda state: ...)``: block (off the event loop) until the
    emulator's state satisfies the predicate; fail after ``timeout`` seconds."""

    async def wait(predicate: Callable[[EmulatorState], bool], timeout: float = 5.0) -> None:
        ok = await asyncio.to_thread(emu.state.wait_for, predicate, timeout)
        assert ok, "condition not reached before the deadline"

    return wait


@pytest.fixture(scope="session")
def sample() -> Callable[[int], bytes]:
    """``sample(n)``: a 1 s synthetic voice sample, distinct for each ``n``."""
    cache: dict[int, bytes] = {}

    def make(seed: int = 0) -> bytes:
        if seed not in cache:
            cache[seed] = make_sample_wav(seconds=1.0, seed=seed, pitch_hz=110.0 + seed)
        return cache[seed]

    return make
