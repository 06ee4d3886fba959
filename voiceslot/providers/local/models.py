"""Thin adapters from Coqui models to what an engine worker needs.

``EngineModel`` is the small surface a worker uses: clone a voice from decoded audio,
synthesize a sentence whole, or stream it in chunks. All methods block and run on the
worker's own thread; none is safe to call concurrently on one instance.

- ``XttsModel`` wraps ``TTS.tts.models.xtts.Xtts``. Cloning mirrors
  ``Xtts.get_conditioning_latents`` but takes the decoded sample as a tensor: that method
  only accepts file paths and reads them with torchaudio, which needs FFmpeg libraries,
  so working in memory avoids both the temporary file and the system dependency.
  Output is 24 kHz (``config.audio.output_sample_rate``).
- ``UncloneableModel`` wraps any other Coqui TTS model (VITS, Tacotron, ...). Such models
  speak with their own trained speakers and cannot clone a voice from a sample, so every
  voice operation fails with ``InvalidInput`` naming the model: an account configured with
  one can hold no voices.

Text arrives already split into sentences. XTTS has two limits of its own: its assert (a
sentence must be under ``gpt_max_text_tokens`` text tokens), which becomes ``InvalidInput``
before generation starts, as does an unsupported language; and a character limit per
language (en 250, es 239, hi 150, ko 95, zh 82, ja 71, ...) past which its tokenizer only
warns and the audio comes out cut short. ``XttsModel`` cuts each sentence below its
language's limit (by the tokenizer's own table) and speaks the pieces in order.
"""

from __future__ import annotations

from collections.abc import Iterator
from typing import Any, Protocol

import numpy as np
import torch

from voiceslot.providers.errors import InvalidInput
from voiceslot.providers.local.latents import VoiceLatents
from voiceslot.text import pieces_to_speak

XTTS_LOAD_RATE = 22050
"""XTTS resamples reference audio to this rate before computing latents."""
XTTS_DEFAULT_CHAR_LIMIT = 250
"""The limit XTTS's tokenizer applies to a language missing from its table."""


class EngineModel(Protocol):
    """What one engine worker owns and drives."""

    kind: str
    """Coqui model family, e.g. "xtts" or "vits"."""
    sample_rate: int
    """Rate of the audio ``synthesize`` and ``stream`` return."""

    def clone(self, audio: np.ndarray, sample_rate: int) -> VoiceLatents: ...

    def synthesize(
        self, text: str, *, language: str, voice: VoiceLatents, speed: float = 1.0
    ) -> np.ndarray: ...

    def stream(
        self,
        text: str,
        *,
        language: str,
        voice: VoiceLatents,
        chunk_tokens: int,
        speed: float = 1.0,
    ) -> Iterator[np.ndarray]: ...


def xtts_language(language: str, supported: list[str]) -> str:
    """Map a BCP 47 tag to the XTTS language code, or raise ``InvalidInput``.

    XTTS names its languages by primary subtag ("en", "pt"), except Chinese ("zh-cn").
    """
    primary = language.strip().lower().replace("_", "-").split("-")[0]
    code = "zh-cn" if primary == "zh" else primary
    if code not in supported:
        raise InvalidInput(
            f"language {language!r} is not supported; supported: {', '.join(supported)}"
        )
    return code


def seed_generation(seed: int | None) -> None:
    """Seed torch's generators for one generation, on the worker thread that runs it.

    torch's default generator is process-wide: with more than one worker generating at
    once, another generation's sampling can interleave and the same seed is no longer a
    guarantee of the same audio. With one worker (or no concurrent generations) it is.
    """
    if seed is not None:
        torch.manual_seed(seed)


class XttsModel:
    """An XTTS model behind the ``EngineModel`` surface."""

    kind = "xtts"

    def __init__(self, model: Any) -> None:
        self.model = model
        self.config = model.config
        self.sample_rate = int(self.config.audio.output_sample_rate)
        self.languages = list(self.config.languages)

    @property
    def gpt_dim(self) -> int:
        return int(self.model.args.gpt_n_model_channels)

    def clone(self, audio: np.ndarray, sample_rate: int) -> VoiceLatents:
        import torchaudio

        # The same steps as Xtts.get_conditioning_latents after it has read the file.
        wav = torch.from_numpy(np.asarray(audio, dtype=np.float32)).unsqueeze(0)
        if sample_rate != XTTS_LOAD_RATE:
            wav = torchaudio.functional.resample(wav, sample_rate, XTTS_LOAD_RATE)
        wav = wav.clamp(-1.0, 1.0)[:, : XTTS_LOAD_RATE * int(self.config.max_ref_len)]
        if self.config.sound_norm_refs:
            wav = wav / wav.abs().max() * 0.75
        wav = wav.to(self.model.device)
        with torch.inference_mode():
            speaker = self.model.get_speaker_embedding(wav, XTTS_LOAD_RATE)
            gpt = self.model.get_gpt_cond_latents(
                wav,
                XTTS_LOAD_RATE,
                length=int(self.config.gpt_cond_len),
                chunk_length=int(self.config.gpt_cond_chunk_len),
            )
        return VoiceLatents(gpt_cond_latent=gpt.cpu(), speaker_embedding=speaker.cpu())

    def check_text(self, text: str, language: str) -> str:
        """The XTTS language code for ``language`` after checking ``text`` fits, else
        ``InvalidInput``. Tokenizes exactly as ``inference`` will."""
        code = xtts_language(language, self.languages)
        sentence = text.strip().lower()
        if not sentence:
            raise InvalidInput("text is empty")
        try:
            tokens = len(self.model.tokenizer.encode(sentence, lang=code))
        except NotImplementedError as exc:
            raise InvalidInput(str(exc)) from None
        limit = int(self.model.args.gpt_max_text_tokens)
        if tokens >= limit:
            raise InvalidInput(
                f"text is {tokens} tokens long; the engine takes fewer than {limit} per request: "
                "split it into sentences"
            )
        return code

    def check_voice(self, voice: VoiceLatents) -> None:
        if voice.gpt_dim != self.gpt_dim:
            raise InvalidInput(
                f"the voice was cloned with a model of width {voice.gpt_dim}, this engine's is "
                f"{self.gpt_dim}: clone it again"
            )

    def _inference_settings(self) -> dict[str, Any]:
        # The tuning XTTS's own synthesize() uses: the checkpoint's config, not the
        # inference() defaults.
        return {
            "temperature": self.config.temperature,
            "length_penalty": self.config.length_penalty,
            "repetition_penalty": self.config.repetition_penalty,
            "top_k": self.config.top_k,
            "top_p": self.config.top_p,
            "enable_text_splitting": False,  # callers split; splitting again hides errors
        }

    def pieces(self, text: str, language: str) -> tuple[str, list[str]]:
        """(the XTTS language code, ``text`` in pieces within that language's character
        limit), every piece checked by ``check_text`` before any is spoken."""
        code = xtts_language(language, self.languages)
        limits = getattr(self.model.tokenizer, "char_limits", {})
        # The tokenizer looks its table up by primary subtag ("zh-cn" -> "zh").
        limit = int(limits.get(code.split("-")[0], XTTS_DEFAULT_CHAR_LIMIT))
        pieces = pieces_to_speak(text, max_chars=limit) or [text]
        for piece in pieces:
            self.check_text(piece, language)
        return code, pieces

    def synthesize(
        self, text: str, *, language: str, voice: VoiceLatents, speed: float = 1.0
    ) -> np.ndarray:
        code, pieces = self.pieces(text, language)
        self.check_voice(voice)
        wavs = [
            np.asarray(
                self.model.inference(
                    piece,
                    code,
                    voice.gpt_cond_latent,
                    voice.speaker_embedding,
                    speed=speed,
                    **self._inference_settings(),
                )["wav"],
                dtype=np.float32,
            )
            for piece in pieces
        ]
        return wavs[0] if len(wavs) == 1 else np.concatenate(wavs)

    def stream(
        self,
        text: str,
        *,
        language: str,
        voice: VoiceLatents,
        chunk_tokens: int,
        speed: float = 1.0,
    ) -> Iterator[np.ndarray]:
        code, pieces = self.pieces(text, language)
        self.check_voice(voice)
        for piece in pieces:
            chunks = self.model.inference_stream(
                piece,
                code,
                voice.gpt_cond_latent,
                voice.speaker_embedding,
                stream_chunk_size=chunk_tokens,
                speed=speed,
                **self._inference_settings(),
            )
            try:
                for chunk in chunks:
                    yield chunk.detach().cpu().numpy().astype(np.float32, copy=False)
            finally:
                chunks.close()  # a consumer that left: release the GPT generator now


class UncloneableModel:
    """Any non-XTTS Coqui model: it loads and reports its rate, but holds no voices."""

    def __init__(self, model: Any, *, kind: str) -> None:
        self.model = model
        self.kind = kind
        audio = model.config.audio
        self.sample_rate = int(getattr(audio, "output_sample_rate", None) or audio.sample_rate)

    def _refuse(self) -> InvalidInput:
        return InvalidInput(
            f"the local engine's model ({self.kind}) cannot clone a voice from a sample; "
            "configure an XTTS model (model_name or model_dir) for cloned voices"
        )

    def clone(self, audio: np.ndarray, sample_rate: int) -> VoiceLatents:
        raise self._refuse()

    def synthesize(
        self, text: str, *, language: str, voice: VoiceLatents, speed: float = 1.0
    ) -> np.ndarray:
        raise self._refuse()

    def stream(
        self,
        text: str,
        *,
        language: str,
        voice: VoiceLatents,
        chunk_tokens: int,
        speed: float = 1.0,
    ) -> Iterator[np.ndarray]:
        raise self._refuse()
