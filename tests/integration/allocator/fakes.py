"""An in-test ``Provider`` that counts remote voices, for the allocator tests that need
exact control of each call's outcome (scripted errors, gates) rather than HTTP.

The tests whose bar is "checked at the provider emulator" (concurrency, crash) use the
real ElevenLabs/Cartesia adapters against ``voiceslot.testing.emulator`` instead.
"""

from __future__ import annotations

import asyncio
from collections import Counter
from collections.abc import AsyncIterator

from voiceslot.providers.base import (
    Capacity,
    CloneRequest,
    PcmAudio,
    RemoteVoice,
    SpeechOptions,
    SynthesisRequest,
)
from voiceslot.providers.errors import ProviderError, VoiceNotFound
from voiceslot.providers.options import OptionRules, check_against

FAKE_OPTIONS = OptionRules("fake", ranges={"speed": (0.5, 2.0)})
"""The fake speaks at any speed a real engine would; it has no voice settings."""


class FakeProvider:
    """Remote voices in a dict. Records every clone per label and the most voices ever
    live at once; ``clone_errors`` (``delete_errors``) are raised by the next clones
    (deletes), in order; while ``gate`` (``delete_gate``) is given and clear, clones
    (deletes) wait on it; while ``answer_gate`` is given and clear, a clone that has made
    its voice waits before answering (the provider did the work; the caller hangs)."""

    kind = "cartesia"

    def __init__(self, name: str = "fake", *, capacity: int | None = None) -> None:
        self.name = name
        self._capacity = capacity
        self.live: dict[str, RemoteVoice] = {}
        self.created: Counter[str] = Counter()
        self.peak = 0
        self.clones = 0
        self.deletes = 0
        self.clone_errors: list[ProviderError] = []
        self.gate: asyncio.Event | None = None
        self.delete_gate: asyncio.Event | None = None
        self.answer_gate: asyncio.Event | None = None
        self.delete_errors: list[ProviderError] = []
        self.unlisted: set[str] = set()
        """Remote ids that exist but that listings do not show yet (a lagging index)."""
        self.delete_started = asyncio.Event()

    async def clone(self, request: CloneRequest) -> RemoteVoice:
        self.clones += 1
        if self.gate is not None:
            await self.gate.wait()
        if self.clone_errors:
            raise self.clone_errors.pop(0)
        voice = RemoteVoice(f"r{sum(self.created.values()) + 1}", request.label, request.label)
        self.created[request.label] += 1
        self.live[voice.provider_voice_id] = voice
        self.peak = max(self.peak, len(self.live))
        if self.answer_gate is not None:
            await self.answer_gate.wait()
        return voice

    async def find_by_label(self, label: str) -> RemoteVoice | None:
        return next((v for v in self.live.values() if v.label == label), None)

    async def exists(self, provider_voice_id: str) -> bool:
        return provider_voice_id in self.live

    async def delete(self, provider_voice_id: str) -> None:
        self.deletes += 1
        self.delete_started.set()
        if self.delete_gate is not None:
            await self.delete_gate.wait()
        if self.delete_errors:
            raise self.delete_errors.pop(0)
        if self.live.pop(provider_voice_id, None) is None:
            raise VoiceNotFound(f"{provider_voice_id} not found", provider=self.name)

    async def list_voices(self, *, label_prefix: str = "") -> AsyncIterator[RemoteVoice]:
        for voice in list(self.live.values()):
            if voice.provider_voice_id in self.unlisted:
                continue
            if (voice.label or "").startswith(label_prefix):
                yield voice

    async def capacity(self) -> Capacity:
        return Capacity(limit=self._capacity, used=len(self.live))

    async def synthesize(self, request: SynthesisRequest) -> PcmAudio:
        return PcmAudio(b"\x00\x00" * 240, 24000)

    async def synthesize_stream(self, request: SynthesisRequest) -> AsyncIterator[PcmAudio]:
        yield await self.synthesize(request)

    def check_options(self, options: SpeechOptions) -> None:
        check_against(options, FAKE_OPTIONS)

    async def aclose(self) -> None:
        return None
