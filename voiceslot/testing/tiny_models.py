"""Tiny random-weight Coqui models, built on the spot, for tests and demos.

No weights can be downloaded on the machines this project is tested on, yet the local
engine's loading code must run for real. So the tests build models with the real
architectures but tiny sizes, save them in exactly the layout a downloaded Coqui model has
(``config.json`` + ``model.pth`` [+ ``vocab.json``]) and load them back through the same
code path that loads a real checkpoint.

Random weights give noise, not speech: tests may assert sample rate, length, non-silence,
chunk order and timing, never intelligibility.

- ``build_tiny_xtts``: XTTS v2 with a one-layer, 64-channel GPT and at most 24 audio
  tokens (21 generated, about 1.1 s of audio per sentence). The HiFi-GAN decoder and the speaker encoder
  do not shrink, so the checkpoint is about 92 MB; it builds in a few seconds and loads in
  about a third of one. Never commit it.
- ``build_tiny_vits``: a VITS of about 1 MB, a model that cannot clone from a sample.

Both are deterministic: the same call builds the same weights.
"""

from __future__ import annotations

import json
import string
from pathlib import Path

import torch

TINY_XTTS_SEED = 1234
TINY_VITS_SEED = 4321

# The special tokens XTTS's tokenizer and GPT look up by name, then plain characters.
_SPECIAL_TOKENS = ("[STOP]", "[UNK]", "[SPACE]", "[START]", "[en]")
_CHARACTERS = string.ascii_lowercase + string.digits + ".,!?'\"-:;()"


def tiny_xtts_vocab() -> dict[str, object]:
    """A Hugging Face ``tokenizers`` JSON for XTTS's ``VoiceBpeTokenizer``: the special
    tokens, then one token per character. No merges: each character is its own token,
    which is all a random-weight model needs."""
    tokens = list(_SPECIAL_TOKENS) + list(_CHARACTERS)
    vocab = {token: index for index, token in enumerate(tokens)}
    return {
        "version": "1.0",
        "truncation": None,
        "padding": None,
        "added_tokens": [
            {
                "id": vocab[token],
                "content": token,
                "single_word": False,
                "lstrip": False,
                "rstrip": False,
                "normalized": False,
                "special": True,
            }
            for token in _SPECIAL_TOKENS
        ],
        "normalizer": None,
        "pre_tokenizer": {"type": "Whitespace"},
        "post_processor": None,
        "decoder": None,
        "model": {
            "type": "BPE",
            "dropout": None,
            "unk_token": "[UNK]",
            "continuing_subword_prefix": None,
            "end_of_word_suffix": None,
            "fuse_unk": False,
            "vocab": vocab,
            "merges": [],
        },
    }


def build_tiny_xtts(directory: Path, *, max_audio_tokens: int = 24) -> Path:
    """Build a tiny random-weight XTTS v2 model in ``directory`` and return it.

    ``max_audio_tokens`` bounds every generation (XTTS generates at most that minus 3
    tokens, about 46 ms of audio each). The full-size HiFi-GAN decoder dominates the
    cost, which grows with the tokens generated.

    Loadable like a real checkpoint directory::

        cfg = XttsConfig(); cfg.load_json(directory / "config.json")
        model = Xtts(cfg); model.load_checkpoint(cfg, checkpoint_dir=directory, eval=True)
    """
    from TTS.tts.configs.xtts_config import XttsArgs, XttsConfig
    from TTS.tts.layers.xtts.tokenizer import VoiceBpeTokenizer
    from TTS.tts.models.xtts import Xtts

    directory.mkdir(parents=True, exist_ok=True)
    vocab_path = directory / "vocab.json"
    vocab_path.write_text(json.dumps(tiny_xtts_vocab()), encoding="utf-8")

    channels = 64
    config = XttsConfig(
        model_args=XttsArgs(
            gpt_layers=1,
            gpt_n_model_channels=channels,
            decoder_input_dim=channels,  # the decoder reads the GPT's latents
            gpt_n_heads=2,
            gpt_max_audio_tokens=max_audio_tokens,
            # As in the released XTTS v2: the perceiver gives [1, 32, dim] latents.
            gpt_use_perceiver_resampler=True,
            gpt_use_masking_gt_prompt_approach=True,
        ),
        languages=["en"],
    )
    # A fixed seed makes the random weights (and so every test's audio) reproducible.
    with torch.random.fork_rng(devices=[]):
        torch.manual_seed(TINY_XTTS_SEED)
        model = Xtts(config)
        # The GPT exists only once a tokenizer does (it sizes the text embedding).
        model.tokenizer = VoiceBpeTokenizer(vocab_file=str(vocab_path))
        model.init_models()
    # init_models wrote the token counts and ids into model.args: save them with the config.
    config.model_args = model.args
    config.save_json(str(directory / "config.json"))
    torch.save({"model": model.state_dict()}, directory / "model.pth")
    return directory


def build_tiny_vits(directory: Path) -> Path:
    """Build a tiny random-weight VITS (about 1 MB) in ``directory`` and return it: a
    Coqui model that synthesizes but cannot clone a voice from a sample."""
    from TTS.tts.configs.vits_config import VitsConfig
    from TTS.tts.models.vits import Vits, VitsArgs

    directory.mkdir(parents=True, exist_ok=True)
    config = VitsConfig(
        model_args=VitsArgs(
            hidden_channels=16,
            hidden_channels_ffn_text_encoder=32,
            num_heads_text_encoder=2,
            num_layers_text_encoder=1,
            num_layers_flow=1,
            num_layers_posterior_encoder=1,
            upsample_initial_channel_decoder=32,
            # The product of the upsample rates must equal the hop length (256).
            upsample_rates_decoder=[8, 8, 2, 2],
            use_sdp=False,
            init_discriminator=False,
        ),
        use_phonemes=False,  # espeak is neither installed nor thread-safe
        text_cleaner="basic_cleaners",
    )
    with torch.random.fork_rng(devices=[]):
        torch.manual_seed(TINY_VITS_SEED)
        model = Vits(config)
    config.save_json(str(directory / "config.json"))
    torch.save({"model": model.state_dict()}, directory / "model.pth")
    return directory
