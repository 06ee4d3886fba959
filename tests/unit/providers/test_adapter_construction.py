"""Both HTTP adapters satisfy ``base.Provider``, refuse a config of another kind, and
close only the HTTP client they own. No network: construction does no I/O."""

from __future__ import annotations

import httpx
import pytest
from pydantic import SecretStr

from voiceslot.config import ProviderConfig
from voiceslot.providers.base import Provider
from voiceslot.providers.cartesia import CartesiaProvider
from voiceslot.providers.elevenlabs import ElevenLabsProvider

ADAPTERS: list[tuple[str, type[ElevenLabsProvider] | type[CartesiaProvider]]] = [
    ("elevenlabs", ElevenLabsProvider),
    ("cartesia", CartesiaProvider),
]


def config(kind: str, **overrides: object) -> ProviderConfig:
    return ProviderConfig(name=f"{kind}-a", kind=kind, api_key=SecretStr("k"), **overrides)  # type: ignore[arg-type]


@pytest.mark.parametrize(("kind", "adapter"), ADAPTERS)
async def test_adapter_is_a_provider(kind: str, adapter: type[ElevenLabsProvider]) -> None:
    provider = adapter(config(kind))
    try:
        assert isinstance(provider, Provider)
        assert (provider.name, provider.kind) == (f"{kind}-a", kind)
    finally:
        await provider.aclose()


@pytest.mark.parametrize(("kind", "adapter"), ADAPTERS)
def test_adapter_refuses_a_config_of_another_kind(
    kind: str, adapter: type[ElevenLabsProvider]
) -> None:
    other = "cartesia" if kind == "elevenlabs" else "elevenlabs"
    with pytest.raises(ValueError, match="not"):
        adapter(config(other))


@pytest.mark.parametrize(("kind", "adapter"), ADAPTERS)
async def test_injected_client_is_left_open_own_client_is_closed(
    kind: str, adapter: type[ElevenLabsProvider]
) -> None:
    shared = httpx.AsyncClient()
    injected = adapter(config(kind), client=shared)
    owning = adapter(config(kind))

    await injected.aclose()
    await owning.aclose()

    assert not shared.is_closed
    assert owning._client.is_closed
    await shared.aclose()
