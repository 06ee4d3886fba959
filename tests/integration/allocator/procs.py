"""Allocator replicas as separate OS processes (``python -m voiceslot serve --only
allocator``), and a provider emulator that records how many remote voices each account
ever held at once.

The emulator already remembers every remote voice ever created (so a label cloned twice
shows); ``PeakTrackingState`` adds, under the emulator's own lock, the most voices each
account held at one moment and the most live copies of any one of our voices.
"""

from __future__ import annotations

import os
import re
import signal
import subprocess
import sys
from collections import Counter
from collections.abc import Mapping
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import yaml

from allocator_svc.maintenance import parse_label
from tests.conftest import TEST_KEYS
from voiceslot.testing.emulator import Account, EmulatorState, VoiceRecord

LABEL_PREFIX = "vs-"


class PeakTrackingState(EmulatorState):
    """``EmulatorState`` that also records peaks: voices live per account, and live copies
    per voice of ours (parsed from the label the adapters put in the name)."""

    def __init__(self, **kwargs: Any) -> None:
        super().__init__(**kwargs)
        self.live: Counter[tuple[str, str]] = Counter()
        self.peak: Counter[tuple[str, str]] = Counter()
        self.copies: Counter[str] = Counter()
        self.max_copies = 0

    def create_voice(self, account: Account, **kwargs: Any) -> VoiceRecord:
        with self._changed:
            voice = super().create_voice(account, **kwargs)
            key = (account.provider, account.api_key)
            self.live[key] += 1
            self.peak[key] = max(self.peak[key], self.live[key])
            ours = parse_label(LABEL_PREFIX, voice.name)
            if ours is not None:
                self.copies[ours[0]] += 1
                self.max_copies = max(self.max_copies, self.copies[ours[0]])
            return voice

    def delete_voice(self, account: Account, voice_id: str) -> VoiceRecord:
        with self._changed:
            voice = super().delete_voice(account, voice_id)
            self.live[(account.provider, account.api_key)] -= 1
            ours = parse_label(LABEL_PREFIX, voice.name)
            if ours is not None:
                self.copies[ours[0]] -= 1
            return voice


def write_config(
    path: Path,
    *,
    data_dir: Path,
    providers: list[Mapping[str, Any]],
    allocator: Mapping[str, Any],
) -> Path:
    config = {
        "data_dir": str(data_dir),
        "listen": "127.0.0.1:0",
        "log_level": "WARNING",
        "log_format": "json",
        "shutdown_grace_s": 2,
        "default_provider": providers[0]["name"],
        "providers": list(providers),
        "auth": {
            "api_keys": [
                k.model_dump(mode="json") | {"key": k.key.get_secret_value()} for k in TEST_KEYS
            ],
            # Load tests: the clients are ours; per-caller rate limits are tested elsewhere.
            "rate_limit_per_second": 1_000_000,
            "rate_limit_burst": 1_000_000,
        },
        "allocator": {"label_prefix": LABEL_PREFIX, **allocator},
    }
    path.write_text(yaml.safe_dump(config))
    return path


@dataclass
class AllocatorProcess:
    config: Path
    log: Path
    env: dict[str, str] = field(default_factory=dict)
    process: subprocess.Popen[str] | None = None
    port: int = 0

    @property
    def target(self) -> str:
        return f"127.0.0.1:{self.port}"

    def start(self) -> AllocatorProcess:
        """Spawn the replica; ``wait_ready`` reads its port."""
        with open(self.log, "a") as log:
            self.process = subprocess.Popen(
                [
                    sys.executable,
                    "-m",
                    "voiceslot",
                    "--config",
                    str(self.config),
                    "serve",
                    "--only",
                    "allocator",
                ],
                stdout=subprocess.PIPE,
                stderr=log,
                text=True,
                # Faulthandler: a replica that will not stop is sent SIGABRT (below) and
                # leaves every thread's stack in its log.
                env={**os.environ, "PYTHONFAULTHANDLER": "1", **self.env},
            )
        return self

    def wait_ready(self) -> AllocatorProcess:
        assert self.process is not None and self.process.stdout is not None
        for line in self.process.stdout:
            if match := re.search(r"serving .* on port (\d+)", line):
                self.port = int(match.group(1))
                return self
        raise AssertionError(
            f"allocator exited before serving ({self.process.wait()}): {self.log.read_text()[-3000:]}"
        )

    def stop(self) -> int | None:
        """SIGTERM and wait for the graceful exit; its exit code (0 when graceful)."""
        if self.process is None:
            return None
        if self.process.poll() is None:
            self.process.terminate()
            try:
                self.process.wait(timeout=20)
            except subprocess.TimeoutExpired:
                self.process.send_signal(signal.SIGABRT)  # stacks to the log, then dies
                try:
                    self.process.wait(timeout=10)
                except subprocess.TimeoutExpired:
                    self.process.kill()
        code = self.process.wait(timeout=15)
        if self.process.stdout is not None:
            self.process.stdout.close()
        return code
