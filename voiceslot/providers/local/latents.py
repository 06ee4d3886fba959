"""A cloned local voice: XTTS conditioning latents, how they are stored, and the hot cache.

For the local engine, "cloning" computes two tensors from the sample: the GPT conditioning
latent (``[1, 32, 1024]`` for XTTS v2) and the speaker embedding (``[1, 512, 1]``). Together
they are the voice. They are persisted through the storage port at
``local-voices/<label>.pth`` in the same layout Coqui's own voice cache writes
(``TTS.utils.voices``: ``gpt_conditioning_latents``, ``speaker_embedding``, ``metadata``), so
a restart, another replica or Coqui's own tools can use them without re-cloning.

The in-memory LRU (``LatentsCache``) is the local engine's "slots": the voices kept hot so
repeated synthesis does not go back to storage.
"""

from __future__ import annotations

import io
import pickle
from collections import OrderedDict
from dataclasses import dataclass
from datetime import UTC, datetime
from importlib import metadata as importlib_metadata

import torch

from voiceslot.errors import InvalidArgument
from voiceslot.providers.errors import Fatal, InvalidInput
from voiceslot.storage.base import validate_key

VOICE_PREFIX = "local-voices/"
VOICE_SUFFIX = ".pth"


@dataclass(frozen=True)
class VoiceLatents:
    """One cloned voice, as XTTS consumes it."""

    gpt_cond_latent: torch.Tensor
    """GPT conditioning latent, ``[1, prompt_len, gpt_dim]``."""
    speaker_embedding: torch.Tensor
    """Speaker embedding for the HiFi-GAN decoder, ``[1, 512, 1]``."""

    @property
    def gpt_dim(self) -> int:
        """Model width the voice was cloned with; a different model cannot use it."""
        return int(self.gpt_cond_latent.shape[-1])


def voice_key(label: str) -> str:
    """The storage key of the voice carrying ``label``.

    A label is one key segment: a slash would nest it, and an unsafe label must be the
    caller's error (``InvalidInput``), never a path outside the voices prefix.
    """
    if "/" in label:
        raise InvalidInput(f"voice label {label!r} must not contain '/'")
    key = f"{VOICE_PREFIX}{label}{VOICE_SUFFIX}"
    try:
        return validate_key(key)
    except InvalidArgument as exc:
        raise InvalidInput(
            f"voice label {label!r} is not usable as a key: {exc.description}"
        ) from None


def label_of_key(key: str) -> str | None:
    """The label stored at ``key``, or None for keys that do not hold a voice."""
    if not (key.startswith(VOICE_PREFIX) and key.endswith(VOICE_SUFFIX)):
        return None
    label = key[len(VOICE_PREFIX) : -len(VOICE_SUFFIX)]
    return label if label and "/" not in label else None


def latents_to_bytes(voice: VoiceLatents, *, label: str, model: str = "xtts") -> bytes:
    """Serialize a voice in Coqui's voice-file layout (``torch.save`` of a dict)."""
    payload = {
        "gpt_conditioning_latents": voice.gpt_cond_latent.detach().cpu().clone(),
        "speaker_embedding": voice.speaker_embedding.detach().cpu().clone(),
        "metadata": {
            "model": {"name": model},
            "speaker_id": label,
            "source_files": [],
            "created_at": datetime.now(UTC).isoformat(timespec="minutes"),
            "coqui_version": _coqui_version(),
        },
    }
    buffer = io.BytesIO()
    torch.save(payload, buffer)
    return buffer.getvalue()


def latents_from_bytes(data: bytes) -> VoiceLatents:
    """Read a stored voice. ``weights_only`` loading: a stored file can hold tensors and
    plain data, never code. A corrupt file is ``Fatal``: re-reading it will not help, the
    voice has to be cloned again."""
    try:
        payload = torch.load(io.BytesIO(data), map_location="cpu", weights_only=True)
        gpt = payload["gpt_conditioning_latents"]
        speaker = payload["speaker_embedding"]
    except (pickle.UnpicklingError, RuntimeError, EOFError, KeyError, TypeError) as exc:
        raise Fatal(f"stored local voice is unreadable: {exc}") from None
    if not (isinstance(gpt, torch.Tensor) and isinstance(speaker, torch.Tensor)):
        raise Fatal("stored local voice does not hold tensors")
    return VoiceLatents(gpt_cond_latent=gpt, speaker_embedding=speaker)


def _coqui_version() -> str | None:
    try:
        return importlib_metadata.version("coqui-tts")
    except importlib_metadata.PackageNotFoundError:
        return None


class LatentsCache:
    """Least-recently-used voices kept in memory, at most ``capacity`` of them.

    Used from the event loop only (no lock): every read and write happens between awaits.
    """

    def __init__(self, capacity: int) -> None:
        if capacity < 1:
            raise ValueError("capacity must be at least 1")
        self.capacity = capacity
        self._voices: OrderedDict[str, VoiceLatents] = OrderedDict()

    def get(self, label: str) -> VoiceLatents | None:
        voice = self._voices.get(label)
        if voice is not None:
            self._voices.move_to_end(label)
        return voice

    def put(self, label: str, voice: VoiceLatents) -> None:
        self._voices[label] = voice
        self._voices.move_to_end(label)
        while len(self._voices) > self.capacity:
            self._voices.popitem(last=False)

    def evict(self, label: str) -> None:
        self._voices.pop(label, None)

    def clear(self) -> None:
        self._voices.clear()

    def __contains__(self, label: object) -> bool:
        return label in self._voices

    def __len__(self) -> int:
        return len(self._voices)

    def labels(self) -> list[str]:
        """Labels from least to most recently used."""
        return list(self._voices)
