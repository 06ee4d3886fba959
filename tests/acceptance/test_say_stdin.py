"""``voiceslot say --stdin``, as a user pipes an LLM into it: text read as it arrives (not
at EOF) and spoken through SynthesizeLive, audio written to standard output as it comes."""

from __future__ import annotations

import io
import queue
import subprocess
import sys
import threading
from pathlib import Path

import soundfile as sf
from click.testing import CliRunner

from tests.conftest import ALICE_KEY
from voiceslot.cli.main import cli

WAIT_S = 120.0
"""Generous, for a loaded 2-core machine."""


def test_say_stdin_speaks_what_arrives_before_eof(server_process, sample_wav, tmp_path: Path):
    voice_id = server_process.add_voice(sample_wav, tmp_path, key=ALICE_KEY)
    process = subprocess.Popen(
        [sys.executable, "-m", "voiceslot", "--target", server_process.target]
        + ["say", "--voice", voice_id, "--stdin", "-o", "-"],
        stdin=subprocess.PIPE,
        stdout=subprocess.PIPE,
        stderr=subprocess.PIPE,
        env=server_process.cli_env(ALICE_KEY),
    )
    assert process.stdin and process.stdout and process.stderr
    chunks: queue.Queue[bytes] = queue.Queue()

    def drain() -> None:
        assert process.stdout
        while data := process.stdout.read1(65536):
            chunks.put(data)
        chunks.put(b"")

    reader = threading.Thread(target=drain, daemon=True)
    reader.start()
    try:
        # The first sentence, and the next word that makes its end certain; stdin stays open.
        for fragment in (b"The first ", b"sentence is here.", b" And"):
            process.stdin.write(fragment)
            process.stdin.flush()
        first = chunks.get(timeout=WAIT_S)  # audio while the pipe is still open
        assert first.startswith(b"RIFF")
        process.stdin.write(" the second one ends it — ünïcode too.\n".encode())
        process.stdin.close()  # EOF: the turn ends
        assert process.wait(timeout=WAIT_S) == 0, process.stderr.read().decode()
        reader.join(timeout=WAIT_S)
    finally:
        if process.poll() is None:
            process.kill()
    rest = []
    while data := chunks.get(timeout=WAIT_S):
        rest.append(data)
    audio, rate = sf.read(io.BytesIO(first + b"".join(rest)), dtype="int16")
    assert rate > 0 and audio.size > rate // 10
    assert "wrote" in process.stderr.read().decode()


def test_say_wants_text_or_stdin() -> None:
    for args in ([], ["--stdin", "some text"]):
        result = CliRunner().invoke(cli, ["say", "--voice", "v_x", "-o", "x.wav", *args])
        assert result.exit_code == 2 and "TEXT or --stdin" in result.output
    result = CliRunner().invoke(cli, ["say", "--voice", "v_x", "-o", "-", "--stdin", "--seed", "3"])
    assert result.exit_code == 2 and "--seed" in result.output
