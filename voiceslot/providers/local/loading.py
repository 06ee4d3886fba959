"""Where the local engine's model comes from, and how it is loaded onto a device.

Two sources, chosen by ``ProviderConfig``:

- ``model_dir``: a local Coqui model directory (``config.json`` + ``model.pth``, and
  ``vocab.json`` for XTTS), loaded through Coqui's own loaders exactly as a downloaded
  checkpoint is: ``XttsConfig.load_json`` → ``Xtts(config)`` (what the deprecated
  ``Xtts.init_from_config`` does) → ``load_checkpoint(config, checkpoint_dir=...,
  eval=True)``. Other model families go through ``TTS.config.load_config`` and
  ``TTS.tts.models.setup_model``, as Coqui's ``Synthesizer`` does.
- otherwise ``model_name``, fetched once with Coqui's ``ModelManager`` (with a progress
  bar) into Coqui's usual cache. XTTS v2's weights are under the Coqui Public Model
  License (CPML), which is non-commercial: the fetch is refused, with a message saying
  so, unless ``COQUI_TOS_AGREED=1`` is set (or the licence was agreed in that cache
  before). Coqui's own fallback would prompt on stdin, which would hang a server.

The device is CUDA when available, else the CPU, unless ``config.device`` names one.
Coqui (``TTS``) is imported only when a model is actually loaded: it is slow to import.
"""

from __future__ import annotations

import json
import logging
import os
import threading
from collections.abc import Callable, Mapping
from pathlib import Path
from typing import Any

import torch

from voiceslot.config import ProviderConfig
from voiceslot.providers.errors import Fatal
from voiceslot.providers.local.models import EngineModel, UncloneableModel, XttsModel

logger = logging.getLogger(__name__)

TOS_ENV = "COQUI_TOS_AGREED"
CPML_URL = "https://tts-hub.github.io/cpml"
CHECKPOINT_NAMES = ("model.pth", "model_file.pth", "checkpoint.pth", "model_file.pth.tar")

ModelLoader = Callable[[], EngineModel]
"""Builds one ready model; the model cache calls it once per worker slot."""


def choose_device(
    requested: str, *, cuda_available: Callable[[], bool] = torch.cuda.is_available
) -> str:
    """The torch device to load onto: ``requested`` unless it is "auto", in which case
    CUDA when present, else the CPU. Raises ``ValueError`` for a name torch rejects."""
    if requested.strip().lower() == "auto":
        return "cuda" if cuda_available() else "cpu"
    try:
        return str(torch.device(requested))
    except RuntimeError as exc:
        raise ValueError(f"device {requested!r} is not a torch device: {exc}") from None


def find_checkpoint(directory: Path) -> Path:
    """The checkpoint file of a Coqui model directory, by Coqui's own naming rules."""
    for name in CHECKPOINT_NAMES:
        if (directory / name).is_file():
            return directory / name
    candidates = sorted(directory.glob("*.pth"))
    if len(candidates) == 1:
        return candidates[0]
    raise Fatal(f"no model checkpoint (model.pth) in {directory}")


def model_family(directory: Path) -> str:
    """The ``model`` field of a Coqui ``config.json`` ("xtts", "vits", ...)."""
    config_path = directory / "config.json"
    try:
        raw = json.loads(config_path.read_text(encoding="utf-8"))
    except FileNotFoundError:
        raise Fatal(f"{config_path} does not exist: not a Coqui model directory") from None
    except (OSError, ValueError) as exc:
        raise Fatal(f"{config_path} is unreadable: {exc}") from None
    family = raw.get("model") if isinstance(raw, dict) else None
    if not isinstance(family, str) or not family:
        raise Fatal(f"{config_path} names no model")
    return family.lower()


def load_model_dir(directory: Path, *, device: str) -> EngineModel:
    """Load the Coqui model in ``directory`` onto ``device``, ready for inference."""
    family = model_family(directory)
    find_checkpoint(directory)  # fail with our message before Coqui's
    if family == "xtts":
        return XttsModel(_load_xtts(directory, device=device))
    return UncloneableModel(_load_other(directory, device=device), kind=family)


def _load_xtts(directory: Path, *, device: str) -> Any:
    from TTS.tts.configs.xtts_config import XttsConfig
    from TTS.tts.models.xtts import Xtts

    config = XttsConfig()
    config.load_json(str(directory / "config.json"))
    model = Xtts(config)  # Xtts.init_from_config(config) is a deprecated alias of this
    model.load_checkpoint(config, checkpoint_dir=str(directory), eval=True)
    return model.to(device)


def _load_other(directory: Path, *, device: str) -> Any:
    from TTS.config import load_config
    from TTS.tts.models import setup_model

    config = load_config(str(directory / "config.json"))
    model = setup_model(config)
    model.load_checkpoint(config, str(find_checkpoint(directory)), eval=True)
    return model.to(device)


def licence_refusal(model_name: str, licence: str) -> str:
    return (
        f"refusing to download {model_name}: its weights are under the {licence} licence "
        f"(Coqui Public Model License, non-commercial: {CPML_URL}). Set {TOS_ENV}=1 to agree "
        "to its terms, or point model_dir at a local Coqui model directory instead"
    )


def fetch_model(
    model_name: str,
    *,
    output_prefix: Path | None = None,
    progress_bar: bool = True,
) -> Path:
    """Download ``model_name`` with Coqui's ``ModelManager`` (if not cached yet) and return
    its directory. Refuses licence-gated models unless agreed (see module docstring)."""
    from TTS.utils.manage import ModelManager

    manager = ModelManager(output_prefix=output_prefix, progress_bar=progress_bar)
    item = _model_item(manager.models_dict, model_name)
    cached_at = Path(manager.output_prefix) / model_name.replace("/", "--")
    # The same test ModelManager.tos_agreed makes; checked here first because its
    # fallback is an input() prompt, which would hang a server.
    agreed = os.environ.get(TOS_ENV) == "1" or (cached_at / "tos_agreed.txt").is_file()
    if item.get("tos_required") and not agreed:
        raise Fatal(licence_refusal(model_name, str(item.get("license", "CPML"))))
    logger.info("fetching %s with Coqui's model manager", model_name)
    try:
        _model_path, config_path, _item = manager.download_model(model_name)
    except Exception as exc:
        raise Fatal(f"could not fetch {model_name}: {type(exc).__name__}: {exc}") from exc
    return Path(config_path).parent


def _model_item(models: Mapping[str, Any], model_name: str) -> Mapping[str, Any]:
    parts = model_name.split("/")
    node: Any = models
    try:
        if len(parts) != 4:
            raise KeyError(model_name)
        for part in parts:
            node = node[part]
    except (KeyError, TypeError):
        raise Fatal(
            f"unknown Coqui model {model_name!r}: expected type/language/dataset/model, "
            "e.g. tts_models/multilingual/multi-dataset/xtts_v2"
        ) from None
    return node


class ModelSource:
    """Resolves the model directory once for all slots: a download must happen once, not
    once per worker, so resolution is memoized under a lock."""

    def __init__(
        self, config: ProviderConfig, *, fetch: Callable[[str], Path] = fetch_model
    ) -> None:
        self._config = config
        self._fetch = fetch
        self._lock = threading.Lock()
        self._directory: Path | None = None

    def directory(self) -> Path:
        with self._lock:
            if self._directory is None:
                if self._config.model_dir is not None:
                    directory = Path(self._config.model_dir).expanduser()
                    if not directory.is_dir():
                        raise Fatal(f"model_dir {directory} is not a directory")
                else:
                    directory = self._fetch(self._config.model_name)
                self._directory = directory
            return self._directory


def coqui_loader(config: ProviderConfig, *, device: str) -> ModelLoader:
    """The default loader: resolve (and, once, fetch) the model, then load a copy of it on
    ``device`` each time it is called."""
    source = ModelSource(config)

    def load() -> EngineModel:
        return load_model_dir(source.directory(), device=device)

    return load
