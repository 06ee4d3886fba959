"""``voiceslot say`` with ``--speed`` and a provider's voice settings, as a user runs it
(a separate server process, the CLI as another): the speed is heard on the local engine,
and a setting the voice's engine lacks fails with the option named."""

from __future__ import annotations

import io

import soundfile as sf

from tests.conftest import ALICE_KEY

TEXT = "A sentence to say at two speeds."


def test_say_speed_is_heard_and_foreign_settings_are_refused(
    server_process, sample_wav, tmp_path
) -> None:
    voice = server_process.add_voice(sample_wav, tmp_path, key=ALICE_KEY)

    def say(out: str, *flags: str):
        return server_process.cli(
            "say",
            "--voice",
            voice,
            "-o",
            str(tmp_path / out),
            "--seed",
            "3",
            *flags,
            TEXT,
            key=ALICE_KEY,
        )

    normal = say("normal.wav")
    assert normal.returncode == 0, normal.stderr
    fast = say("fast.wav", "--speed", "2")
    assert fast.returncode == 0, fast.stderr
    frames = {
        name: sf.info(io.BytesIO((tmp_path / name).read_bytes())).frames
        for name in ("normal.wav", "fast.wav")
    }
    assert 0 < frames["fast.wav"] < 0.75 * frames["normal.wav"]

    refused = say("refused.wav", "--stability", "0.5")
    assert refused.returncode != 0
    assert "options.elevenlabs.stability" in refused.stderr
    assert not (tmp_path / "refused.wav").exists()
    too_fast = say("too_fast.wav", "--speed", "3")
    assert too_fast.returncode != 0 and "options.speed" in too_fast.stderr
