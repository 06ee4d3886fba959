"""Every install comes from one lock: checks on the files that say how to install.

The venv the suite runs in is compared with the lock before any test (tests/conftest.py);
these check the lock itself and the installs that no test runs here (the image: no Docker
engine on these machines).
"""

from __future__ import annotations

import os
import re
import subprocess
import sys
import tomllib
from pathlib import Path

from tests.conftest import ROOT

UV = Path(sys.prefix, ".uv", "bin", "uv")


def required_uv_version() -> str:
    pyproject = tomllib.loads((ROOT / "pyproject.toml").read_text())
    required = pyproject["tool"]["uv"]["required-version"]
    assert required.startswith("=="), "uv is pinned exactly, like everything else"
    return required.removeprefix("==")


def test_the_lock_matches_pyproject() -> None:
    proc = subprocess.run(
        [str(UV), "lock", "--check", "--offline"],
        cwd=ROOT,
        env={**os.environ, "UV_PYTHON_DOWNLOADS": "never"},
        capture_output=True,
        text=True,
        timeout=120,
    )
    assert proc.returncode == 0, f"uv.lock is stale; run scripts/upgrade-deps:\n{proc.stderr}"


def test_the_scripts_use_the_pinned_uv() -> None:
    version = subprocess.run(
        [str(UV), "--version"], capture_output=True, text=True, check=True
    ).stdout.split()[1]
    assert version == required_uv_version()


def test_the_image_installs_from_the_same_lock_with_the_same_uv() -> None:
    dockerfile = (ROOT / "Dockerfile").read_text()
    installs = re.findall(r"^\s*(?:RUN\s+)?.*\b(pip|uv) (install|sync)\b.*$", dockerfile, re.M)
    assert ("uv", "sync") in installs
    assert re.search(r"uv sync --locked\b", dockerfile), "the image must refuse a stale lock"
    # The only pip install is uv itself, at the version pyproject.toml pins.
    assert installs.count(("pip", "install")) == 1
    assert "required-version" in dockerfile and "pyproject.toml" in dockerfile
    assert "uv.lock" not in (ROOT / ".dockerignore").read_text()
