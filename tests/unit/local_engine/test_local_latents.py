"""Stored voices (conditioning latents): keys, serialization, and the hot LRU."""

from __future__ import annotations

import io

import pytest
import torch

from voiceslot.providers.errors import Fatal, InvalidInput
from voiceslot.providers.local.latents import (
    LatentsCache,
    VoiceLatents,
    label_of_key,
    latents_from_bytes,
    latents_to_bytes,
    voice_key,
)


def make_voice(seed: int = 0, *, dim: int = 64) -> VoiceLatents:
    generator = torch.Generator().manual_seed(seed)
    return VoiceLatents(
        gpt_cond_latent=torch.randn(1, 32, dim, generator=generator),
        speaker_embedding=torch.randn(1, 512, 1, generator=generator),
    )


def test_voice_keys_live_under_one_prefix_and_map_back_to_labels() -> None:
    key = voice_key("vs-abc-g2")
    assert key == "local-voices/vs-abc-g2.pth"
    assert label_of_key(key) == "vs-abc-g2"
    assert label_of_key("samples/vs-abc-g2.pth") is None
    assert label_of_key("local-voices/vs-abc-g2.wav") is None
    assert label_of_key("local-voices/nested/x.pth") is None


@pytest.mark.parametrize("label", ["", "a/b", "..", "has space", "-leading-dash", "x" * 300])
def test_unusable_labels_are_invalid_input(label: str) -> None:
    with pytest.raises(InvalidInput):
        voice_key(label)


def test_serialized_voice_round_trips_in_coquis_voice_file_layout() -> None:
    voice = make_voice(1)
    data = latents_to_bytes(voice, label="vs-v-g1")

    restored = latents_from_bytes(data)
    assert torch.equal(restored.gpt_cond_latent, voice.gpt_cond_latent)
    assert torch.equal(restored.speaker_embedding, voice.speaker_embedding)
    assert restored.gpt_dim == 64

    # The layout TTS.utils.voices writes, so Coqui's own tools can read it.
    raw = torch.load(io.BytesIO(data), weights_only=True)
    assert set(raw) == {"gpt_conditioning_latents", "speaker_embedding", "metadata"}
    assert raw["metadata"]["speaker_id"] == "vs-v-g1"
    assert raw["metadata"]["model"] == {"name": "xtts"}


def test_an_unreadable_stored_voice_is_fatal() -> None:
    with pytest.raises(Fatal, match="unreadable"):
        latents_from_bytes(b"definitely not a torch file")
    buffer = io.BytesIO()
    torch.save({"something": "else"}, buffer)
    with pytest.raises(Fatal):
        latents_from_bytes(buffer.getvalue())


def test_lru_keeps_the_most_recently_used_voices() -> None:
    cache = LatentsCache(2)
    a, b, c = make_voice(1), make_voice(2), make_voice(3)
    cache.put("a", a)
    cache.put("b", b)
    assert cache.get("a") is a  # "a" is now the most recent
    cache.put("c", c)
    assert "b" not in cache
    assert cache.labels() == ["a", "c"]
    cache.evict("a")
    assert cache.get("a") is None
    assert len(cache) == 1
    with pytest.raises(ValueError):
        LatentsCache(0)
