"""XTTS cuts audio short past a per-language character limit (its tokenizer only warns):
the local engine speaks long sentences in pieces within their language's limit, by the
tokenizer's own table. Over the real tiny XTTS, loaded by the real loader; a spy on the
Coqui model records the text each generation was given."""

from __future__ import annotations

from pathlib import Path
from typing import Any

import numpy as np
import pytest

from voiceslot.providers.local.latents import VoiceLatents
from voiceslot.providers.local.loading import load_model_dir
from voiceslot.providers.local.models import XttsModel

# One sentence (no full stop inside) per language, a little past its limit.
SENTENCES = {
    "en": "this sentence goes on and on, " * 9 + "until it ends.",
    "es": "esta frase sigue y sigue sin parar, " * 7 + "hasta que termina.",
    "pt-BR": "esta frase continua e continua, " * 7 + "até que termina.",
    "hi": "यह वाक्य चलता ही रहता है, " * 7 + "जब तक खत्म नहीं होता।",
}


@pytest.fixture(scope="module")
def xtts(tiny_xtts_dir: Path) -> XttsModel:
    model = load_model_dir(tiny_xtts_dir, device="cpu")
    assert isinstance(model, XttsModel)
    # The tiny model's config names English only; its tokenizer (XTTS's own) knows them all.
    model.languages = ["en", "es", "pt", "hi"]
    return model


@pytest.fixture
def spoken(xtts: XttsModel, monkeypatch: pytest.MonkeyPatch) -> list[str]:
    """The texts the Coqui model was asked to speak, in order (both generation paths)."""
    texts: list[str] = []
    inference, inference_stream = xtts.model.inference, xtts.model.inference_stream

    def spy(real: Any) -> Any:
        def call(text: str, *args: Any, **kwargs: Any) -> Any:
            texts.append(text)
            return real(text, *args, **kwargs)

        return call

    monkeypatch.setattr(xtts.model, "inference", spy(inference))
    monkeypatch.setattr(xtts.model, "inference_stream", spy(inference_stream))
    return texts


def limit_of(xtts: XttsModel, language: str) -> int:
    primary = language.split("-")[0].lower()
    return int(xtts.model.tokenizer.char_limits[primary])


@pytest.fixture(scope="module")
def latents(xtts: XttsModel) -> VoiceLatents:
    t = np.linspace(0, 1.5, 24000, dtype=np.float32)
    return xtts.clone((0.3 * np.sin(2 * np.pi * 180 * t)).astype(np.float32), 16000)


@pytest.mark.parametrize("language", list(SENTENCES))
def test_a_sentence_past_its_languages_limit_is_spoken_in_pieces_within_it(
    xtts: XttsModel, latents: VoiceLatents, spoken: list[str], language: str
) -> None:
    text = SENTENCES[language]
    limit = limit_of(xtts, language)
    assert len(text) > limit  # the case under test

    wav = xtts.synthesize(text, language=language, voice=latents)

    assert len(spoken) >= 2
    assert all(len(piece) <= limit for piece in spoken), [len(p) for p in spoken]
    assert " ".join(spoken).split() == text.split()  # every word, once, in order
    assert wav.size > 0 and np.isfinite(wav).all()


def test_streaming_speaks_the_same_pieces_in_order(
    xtts: XttsModel, latents: VoiceLatents, spoken: list[str]
) -> None:
    text = SENTENCES["es"]
    chunks = list(xtts.stream(text, language="es", voice=latents, chunk_tokens=8))

    assert len(spoken) >= 2 and all(len(p) <= limit_of(xtts, "es") for p in spoken)
    assert " ".join(spoken).split() == text.split()
    assert chunks and all(np.isfinite(c).all() for c in chunks)


def test_a_sentence_within_its_limit_is_spoken_whole(
    xtts: XttsModel, latents: VoiceLatents, spoken: list[str]
) -> None:
    xtts.synthesize("Hola, ¿qué tal?", language="es", voice=latents)
    assert spoken == ["Hola, ¿qué tal?"]
