"""Build provider adapters from configuration: the one place that maps a ``kind`` to an
adapter class. Adapters are imported lazily so a deployment without the local engine's
extra (torch) never imports it."""

from __future__ import annotations

from voiceslot.config import ProviderConfig, Settings
from voiceslot.providers.base import Provider
from voiceslot.storage.base import Storage


def build_provider(config: ProviderConfig, *, storage: Storage) -> Provider:
    if config.kind == "elevenlabs":
        from voiceslot.providers.elevenlabs import ElevenLabsProvider

        return ElevenLabsProvider(config)
    if config.kind == "cartesia":
        from voiceslot.providers.cartesia import CartesiaProvider

        return CartesiaProvider(config)
    if config.kind == "local":
        try:
            from voiceslot.providers.local import LocalProvider
        except ImportError as exc:  # pragma: no cover - depends on the install
            raise RuntimeError(
                "the local engine needs the 'local' extra: pip install 'voiceslot[local]'"
            ) from exc
        return LocalProvider(config, storage=storage)
    raise ValueError(f"unknown provider kind {config.kind!r}")


def build_providers(settings: Settings, *, storage: Storage) -> dict[str, Provider]:
    return {p.name: build_provider(p, storage=storage) for p in settings.providers}
