"""``voiceslot jobs`` as a user runs it, against a server process: a brief from a file,
its progress watched in a terminal (a pseudo-terminal, so rich draws its bar) and as
JSON lines, the audio downloaded, the job listed and shown."""

from __future__ import annotations

import json
import os
import pty
import re
import select
import subprocess
import sys
import time
from pathlib import Path

from tests.acceptance.conftest import ServerProcess
from tests.conftest import ALICE_KEY

DEADLINE_S = 180.0  # a loaded 2-core machine renders a few tiny-model items in seconds


def in_a_terminal(server: ServerProcess, *args: str, key: str) -> tuple[int, str]:
    """Run the CLI with a pseudo-terminal as its stdout and stderr; (exit code, output)."""
    env = {**server.cli_env(key), "TERM": "xterm-256color", "COLUMNS": "120"}
    env.pop("NO_COLOR", None)
    master, slave = pty.openpty()
    process = subprocess.Popen(
        [sys.executable, "-m", "voiceslot", "--target", server.target, *args],
        stdin=slave,
        stdout=slave,
        stderr=slave,
        env=env,
        close_fds=True,
    )
    os.close(slave)
    output = b""
    deadline = time.monotonic() + DEADLINE_S
    try:
        while time.monotonic() < deadline:
            ready, _, _ = select.select([master], [], [], 1.0)
            if not ready:
                if process.poll() is not None:
                    break
                continue
            try:
                data = os.read(master, 65536)
            except OSError:  # EIO: the child closed the terminal
                break
            if not data:
                break
            output += data
        code = process.wait(timeout=30)
    finally:
        if process.poll() is None:
            process.kill()
        os.close(master)
    # What a person reads: without the colour and cursor escapes.
    return code, re.sub(r"\x1b\[[0-9;?]*[A-Za-z]", "", output.decode("utf-8", "replace"))


def test_a_brief_is_created_watched_to_100_percent_and_downloaded(
    server_process: ServerProcess, sample_wav: bytes, tmp_path: Path
) -> None:
    voice_id = server_process.add_voice(sample_wav, tmp_path, key=ALICE_KEY)

    brief = tmp_path / "brief.txt"
    brief.write_text(
        "# the morning brief\n"
        "intro\tGood morning. Here is the news.\n"
        "\n"
        "Markets were calm today.\n"
        "The weather will be mild.\n",
        encoding="utf-8",
    )
    created = server_process.cli(
        "--json", "jobs", "create", "--voice", voice_id, str(brief), key=ALICE_KEY
    )
    assert created.returncode == 0, created.stderr
    job = json.loads(created.stdout)
    assert job["total_items"] == 3

    code, screen = in_a_terminal(server_process, "jobs", "watch", job["job_id"], key=ALICE_KEY)
    assert code == 0, screen
    assert "100%" in screen and "3/3" in screen, screen
    assert "completed: 3 succeeded, 0 failed of 3" in screen

    watched = server_process.cli("--json", "jobs", "watch", job["job_id"], key=ALICE_KEY)
    assert watched.returncode == 0, watched.stderr
    updates = [json.loads(line) for line in watched.stdout.splitlines() if line.strip()]
    assert updates[-1] == {
        "job_id": job["job_id"],
        "state": "completed",
        "total": 3,
        "succeeded": 3,
        "failed": 0,
        "progress": 1.0,
    }

    out = tmp_path / "audio"
    downloaded = server_process.cli(
        "--json", "jobs", "download", job["job_id"], "-o", str(out), key=ALICE_KEY
    )
    assert downloaded.returncode == 0, downloaded.stderr
    files = {Path(f["file"]).name for f in json.loads(downloaded.stdout)}
    # Unnamed items are named by their place among the items.
    assert files == {"intro.wav", "item-0002.wav", "item-0003.wav"}
    assert all((out / name).read_bytes()[:4] == b"RIFF" for name in files)

    listed = server_process.cli("--json", "jobs", "list", key=ALICE_KEY)
    assert [j["job_id"] for j in json.loads(listed.stdout)] == [job["job_id"]]
    shown = server_process.cli("--json", "jobs", "show", job["job_id"], key=ALICE_KEY)
    assert [i["name"] for i in json.loads(shown.stdout)["items"]] == [
        "intro",
        "item-0002",
        "item-0003",
    ]


def test_a_brief_with_no_items_is_refused_before_any_call(
    server_process: ServerProcess, tmp_path: Path
) -> None:
    brief = tmp_path / "empty.txt"
    brief.write_text("# nothing here\n\n", encoding="utf-8")
    result = server_process.cli(
        "jobs", "create", "--voice", "v_" + "0" * 32, str(brief), key=ALICE_KEY
    )
    assert result.returncode == 2
    assert "no items" in result.stderr
