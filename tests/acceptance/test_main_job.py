"""The README's first command, run as a user runs it: `./scripts/demo --tiny-model`.

It goes through the script (venv check against the lock included), starts both services,
clones a voice and speaks into a WAV file. If it breaks, CI is red. The file is judged as
audio a person would get: a real WAV at the engine's rate, long enough to hold the
sentence, and not silence. (The tiny model has random weights, so it is noise, not speech.)
"""

from __future__ import annotations

import os
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest
import soundfile

from tests.conftest import ROOT

pytestmark = pytest.mark.slow

# Building the tiny model, starting two services and cloning: seconds on an idle machine,
# sized here for a loaded 2-core one.
DEMO_DEADLINE_S = 240
TEXT = "Hello! This sentence was spoken in a cloned voice."


def test_the_demo_command_writes_audible_audio_at_the_engines_rate(tmp_path: Path) -> None:
    out = tmp_path / "demo.wav"
    env = {
        **os.environ,
        "VOICESLOT_VENV": sys.prefix,  # the suite's venv, already synced with the lock
        "VOICESLOT_DATA_DIR": str(tmp_path / "data"),
        "HOME": str(tmp_path / "home"),
    }
    proc = subprocess.run(
        [str(ROOT / "scripts" / "demo"), "--tiny-model", "--text", TEXT, "--out", str(out)],
        cwd=tmp_path,
        env=env,
        capture_output=True,
        text=True,
        timeout=DEMO_DEADLINE_S,
        stdin=subprocess.DEVNULL,
    )
    assert proc.returncode == 0, f"demo failed:\n{proc.stdout}\n{proc.stderr}"
    assert f"wrote {out}" in " ".join(proc.stdout.split()), proc.stdout

    audio, rate = soundfile.read(out, dtype="float32", always_2d=True)
    info = soundfile.info(out)
    assert info.format == "WAV"
    assert rate == 24_000, "XTTS speaks at 24 kHz; the demo writes what the engine made"
    seconds = len(audio) / rate
    assert 0.5 <= seconds <= 60, f"{seconds:.2f} s of audio for a {len(TEXT)}-character sentence"
    assert np.isfinite(audio).all()
    rms = float(np.sqrt(np.mean(np.square(audio))))
    assert rms > 1e-3, f"the audio is silent (RMS {rms:.2e})"
