"""``run_forever`` (the demo command's entry point) serves both providers in the
foreground of its own process and stops cleanly on SIGTERM."""

from __future__ import annotations

import asyncio
import re
import signal
import sys

import httpx

from voiceslot.testing.emulator import DEFAULT_CARTESIA_KEY, DEFAULT_ELEVENLABS_KEY

SCRIPT = "from voiceslot.testing.emulator import run_forever; run_forever('127.0.0.1', 0)"


async def started_url(stream: asyncio.StreamReader, *, timeout: float) -> str:
    """The URL uvicorn announces once it listens (port 0 is resolved in the message)."""
    async with asyncio.timeout(timeout):
        while line := await stream.readline():
            match = re.search(rb"running on (http://\S+)", line)
            if match:
                return match.group(1).decode()
    raise AssertionError("the emulator exited before it listened")


async def test_run_forever_serves_both_providers_until_terminated() -> None:
    process = await asyncio.create_subprocess_exec(
        sys.executable, "-c", SCRIPT, stderr=asyncio.subprocess.PIPE
    )
    try:
        assert process.stderr is not None
        url = await started_url(process.stderr, timeout=20)
        async with httpx.AsyncClient(base_url=url) as client:
            index = (await client.get("/")).json()
            el = await client.get(
                "/elevenlabs/v1/user/subscription", headers={"xi-api-key": DEFAULT_ELEVENLABS_KEY}
            )
            ca = await client.get(
                "/cartesia/voices",
                headers={
                    "Authorization": f"Bearer {DEFAULT_CARTESIA_KEY}",
                    "Cartesia-Version": "2025-04-16",
                },
            )
    finally:
        process.send_signal(signal.SIGTERM)
        code = await asyncio.wait_for(process.wait(), timeout=10)
    assert process.stderr is not None
    rest = (await process.stderr.read()).decode()

    assert index["elevenlabs"]["base_url"] == f"{url}/elevenlabs"
    assert el.status_code == 200 and el.json()["voice_limit"] == 30
    assert ca.status_code == 200 and ca.json()["data"]
    # A graceful shutdown; uvicorn then re-raises the signal, hence -SIGTERM as the code.
    assert "Finished server process" in rest
    assert code in (0, -signal.SIGTERM)
