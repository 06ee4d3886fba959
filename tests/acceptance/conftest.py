"""Fixtures that run ``voiceslot`` as a separate process, as users do."""

from __future__ import annotations

import json
import os
import re
import subprocess
import sys
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path

import pytest
import yaml

from tests.conftest import TEST_KEYS


@dataclass
class ServerProcess:
    process: subprocess.Popen[str]
    port: int
    config: Path
    data_dir: Path
    log: Path

    @property
    def target(self) -> str:
        return f"127.0.0.1:{self.port}"

    def cli_env(self, key: str | None = None) -> dict[str, str]:
        """The environment the CLI runs with against this server."""
        env = {**os.environ, "VOICESLOT_CONFIG": str(self.config)}
        if key:
            env["VOICESLOT_API_KEY"] = key
        return env

    def add_voice(self, sample: bytes, directory: Path, *, key: str) -> str:
        """``voiceslot voices add`` (which waits until READY); the new voice's id."""
        path = directory / "me.wav"
        path.write_bytes(sample)
        added = self.cli("--json", "voices", "add", str(path), "--name", "Me", key=key)
        assert added.returncode == 0, added.stderr
        return json.loads(added.stdout)["voice_id"]

    def cli(
        self, *args: str, key: str | None = None, timeout: float = 120
    ) -> subprocess.CompletedProcess[str]:
        env = self.cli_env(key)
        return subprocess.run(
            [sys.executable, "-m", "voiceslot", "--target", self.target, *args],
            capture_output=True,
            text=True,
            env=env,
            timeout=timeout,
            check=False,
        )


def write_config(tmp_path: Path, model_dir: Path) -> Path:
    config = {
        "data_dir": str(tmp_path / "data"),
        "listen": "127.0.0.1:0",
        "shutdown_grace_s": 30,
        "providers": [
            {"name": "local", "kind": "local", "model_dir": str(model_dir), "capacity": 4}
        ],
        "auth": {
            "api_keys": [
                k.model_dump(mode="json") | {"key": k.key.get_secret_value()} for k in TEST_KEYS
            ]
        },
        "allocator": {"maintenance_interval_s": None, "dispatch_interval_s": 0.1},
    }
    path = tmp_path / "voiceslot.yaml"
    path.write_text(yaml.safe_dump(config))
    return path


def read_port(process: subprocess.Popen[str]) -> int:
    """Block until the server's ready line ("... on port N") or its exit."""
    assert process.stdout is not None
    for line in process.stdout:
        match = re.search(r"serving .* on port (\d+)", line)
        if match:
            return int(match.group(1))
    raise AssertionError(f"server exited before serving (exit code {process.wait()})")


@pytest.fixture
def server_process(tmp_path: Path, tiny_xtts_dir: Path) -> Iterator[ServerProcess]:
    config = write_config(tmp_path, tiny_xtts_dir)
    log = open(tmp_path / "server.log", "w")  # noqa: SIM115 - closed below
    process = subprocess.Popen(
        [sys.executable, "-m", "voiceslot", "--config", str(config), "serve"],
        stdout=subprocess.PIPE,
        stderr=log,
        text=True,
    )
    try:
        yield ServerProcess(
            process, read_port(process), config, tmp_path / "data", tmp_path / "server.log"
        )
    finally:
        if process.poll() is None:
            process.kill()
        process.wait(timeout=30)
        log.close()
