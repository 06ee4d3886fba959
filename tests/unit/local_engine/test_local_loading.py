"""Where the model comes from: device choice, model directories, the licence gate."""

from __future__ import annotations

import json
import threading
from pathlib import Path

import pytest

from voiceslot.config import DEFAULT_XTTS_MODEL, ProviderConfig
from voiceslot.providers.errors import Fatal
from voiceslot.providers.local.loading import (
    TOS_ENV,
    ModelSource,
    choose_device,
    fetch_model,
    find_checkpoint,
    model_family,
)


def test_auto_device_prefers_cuda_and_an_explicit_one_wins() -> None:
    assert choose_device("auto", cuda_available=lambda: True) == "cuda"
    assert choose_device("auto", cuda_available=lambda: False) == "cpu"
    assert choose_device("cpu", cuda_available=lambda: True) == "cpu"
    assert choose_device("cuda:1", cuda_available=lambda: False) == "cuda:1"
    with pytest.raises(ValueError, match="not a torch device"):
        choose_device("toaster")


def test_model_directories_are_checked_before_coqui_sees_them(tmp_path: Path) -> None:
    with pytest.raises(Fatal, match="not a Coqui model directory"):
        model_family(tmp_path)
    (tmp_path / "config.json").write_text(json.dumps({"audio": {}}))
    with pytest.raises(Fatal, match="names no model"):
        model_family(tmp_path)
    (tmp_path / "config.json").write_text(json.dumps({"model": "XTTS"}))
    assert model_family(tmp_path) == "xtts"

    with pytest.raises(Fatal, match="no model checkpoint"):
        find_checkpoint(tmp_path)
    (tmp_path / "best_model_123.pth").write_bytes(b"")
    assert find_checkpoint(tmp_path).name == "best_model_123.pth"
    (tmp_path / "model.pth").write_bytes(b"")
    assert find_checkpoint(tmp_path).name == "model.pth"


def test_the_xtts_download_is_refused_until_its_licence_is_agreed(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.delenv(TOS_ENV, raising=False)
    with pytest.raises(Fatal) as refused:
        fetch_model(DEFAULT_XTTS_MODEL, output_prefix=tmp_path)
    message = refused.value.message
    assert f"{TOS_ENV}=1" in message
    assert "Coqui Public Model License" in message and "non-commercial" in message
    assert "model_dir" in message
    assert not refused.value.retryable
    assert not any(tmp_path.rglob("*"))  # nothing was downloaded or created


def test_an_unknown_model_name_is_fatal(tmp_path: Path) -> None:
    for name in ("tts_models/xx/nowhere/nothing", "not-a-model-name"):
        with pytest.raises(Fatal, match="unknown Coqui model"):
            fetch_model(name, output_prefix=tmp_path)


def test_the_model_is_fetched_once_for_all_workers(tmp_path: Path) -> None:
    fetched: list[str] = []
    lock = threading.Lock()

    def fetch(name: str) -> Path:
        with lock:
            fetched.append(name)
        return tmp_path

    source = ModelSource(ProviderConfig(name="local", kind="local"), fetch=fetch)
    threads = [threading.Thread(target=source.directory) for _ in range(4)]
    for thread in threads:
        thread.start()
    for thread in threads:
        thread.join(10)
    assert source.directory() == tmp_path
    assert fetched == [DEFAULT_XTTS_MODEL]


def test_a_missing_model_dir_is_fatal(tmp_path: Path) -> None:
    config = ProviderConfig(name="local", kind="local", model_dir=tmp_path / "absent")
    with pytest.raises(Fatal, match="is not a directory"):
        ModelSource(config).directory()
