"""Fixtures for the local engine over real (tiny, random-weight) Coqui models.

The tiny XTTS comes from the suite-wide session fixture ``tiny_xtts_dir`` (built once per
session by ``voiceslot.testing.tiny_models.build_tiny_xtts``); the tiny VITS is built here,
also once per session.
"""

from __future__ import annotations

import threading
import time
from collections.abc import AsyncIterator, Callable, Iterator
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np
import pytest

from voiceslot.config import ProviderConfig
from voiceslot.providers.local import LocalProvider
from voiceslot.providers.local.latents import VoiceLatents
from voiceslot.providers.local.loading import ModelLoader, load_model_dir
from voiceslot.providers.local.models import EngineModel
from voiceslot.storage.local import LocalStorage

STREAM_CHUNK_TOKENS = 8
"""Small chunks so one tiny-model sentence (at most 21 tokens) streams as several."""


@pytest.fixture(scope="session")
def tiny_vits_dir(tmp_path_factory: pytest.TempPathFactory) -> Path:
    from voiceslot.testing.tiny_models import build_tiny_vits

    return build_tiny_vits(tmp_path_factory.mktemp("tiny-vits"))


@pytest.fixture
def storage(tmp_path: Path) -> LocalStorage:
    return LocalStorage(tmp_path / "storage")


@dataclass
class Span:
    text: str
    started: float
    ended: float
    thread: str


@dataclass
class SpyModel:
    """A real engine model that records when each synthesis ran, on which thread, and
    counts clones."""

    inner: EngineModel
    spans: list[Span] = field(default_factory=list)
    clones: int = 0

    @property
    def kind(self) -> str:
        return self.inner.kind

    @property
    def sample_rate(self) -> int:
        return self.inner.sample_rate

    def clone(self, audio: np.ndarray, sample_rate: int) -> VoiceLatents:
        self.clones += 1
        return self.inner.clone(audio, sample_rate)

    def synthesize(self, text: str, *, language: str, voice: VoiceLatents) -> np.ndarray:
        started = time.perf_counter()
        try:
            return self.inner.synthesize(text, language=language, voice=voice)
        finally:
            self.spans.append(
                Span(text, started, time.perf_counter(), threading.current_thread().name)
            )

    def stream(
        self, text: str, *, language: str, voice: VoiceLatents, chunk_tokens: int
    ) -> Iterator[np.ndarray]:
        yield from self.inner.stream(
            text, language=language, voice=voice, chunk_tokens=chunk_tokens
        )


@pytest.fixture
async def make_provider(
    storage: LocalStorage, tiny_xtts_dir: Path
) -> AsyncIterator[Callable[..., LocalProvider]]:
    """Build LocalProviders over the tiny XTTS (closed after the test). Keyword overrides
    go to ``ProviderConfig``; ``storage`` and ``loader`` to the provider."""
    made: list[LocalProvider] = []

    def make(
        *,
        storage: LocalStorage = storage,
        loader: ModelLoader | None = None,
        **overrides: Any,
    ) -> LocalProvider:
        settings: dict[str, Any] = {"name": "local", "kind": "local", "model_dir": tiny_xtts_dir}
        settings.update(overrides)
        provider = LocalProvider(
            ProviderConfig(**settings),
            storage=storage,
            loader=loader,
            stream_chunk_tokens=STREAM_CHUNK_TOKENS,
        )
        made.append(provider)
        return provider

    yield make
    for provider in made:
        await provider.aclose()


@pytest.fixture
def spy_loader(tiny_xtts_dir: Path) -> tuple[ModelLoader, list[SpyModel]]:
    """A loader of real tiny-XTTS models wrapped in ``SpyModel``s (one per worker)."""
    spies: list[SpyModel] = []

    def load() -> EngineModel:
        spy = SpyModel(load_model_dir(tiny_xtts_dir, device="cpu"))
        spies.append(spy)
        return spy

    return load, spies
