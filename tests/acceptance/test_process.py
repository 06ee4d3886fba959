"""``voiceslot`` as separate processes: graceful SIGTERM, the CLI, and buf curl through
server reflection."""

from __future__ import annotations

import json
import shutil
import signal
import subprocess
import sys
from pathlib import Path

import grpc
import numpy as np
import pytest
import soundfile as sf

from tests.acceptance.conftest import ServerProcess
from tests.conftest import ALICE_KEY, auth
from tests.support import ensure_ready, register
from voiceslot.v1 import allocator_pb2 as apb
from voiceslot.v1 import allocator_pb2_grpc, synthesizer_pb2_grpc
from voiceslot.v1 import synthesizer_pb2 as spb


async def test_sigterm_lets_a_stream_finish_then_exits_zero(
    server_process: ServerProcess, sample_wav
):
    md = auth(ALICE_KEY)
    async with grpc.aio.insecure_channel(server_process.target) as channel:
        voice = await register(channel, md, sample_wav)
        await ensure_ready(channel, md, voice.voice_id)
        synth = synthesizer_pb2_grpc.SynthesizerServiceStub(channel)
        sentences = [f"This is sentence number {i}." for i in range(6)]
        call = synth.SynthesizeStream(
            spb.SynthesizeStreamRequest(voice_id=voice.voice_id, text=" ".join(sentences)),
            metadata=md,
        )
        chunks = [await call.read()]
        server_process.process.send_signal(signal.SIGTERM)
        # New calls are refused once shutdown has begun; the stream in flight goes on.
        async with grpc.aio.insecure_channel(server_process.target) as fresh:
            stub = allocator_pb2_grpc.AllocatorServiceStub(fresh)
            with pytest.raises(grpc.aio.AioRpcError) as refused:
                await stub.ListVoices(apb.ListVoicesRequest(), metadata=md, timeout=5)
            assert refused.value.code() == grpc.StatusCode.UNAVAILABLE
        while (chunk := await call.read()) is not grpc.aio.EOF:
            chunks.append(chunk)
        assert await call.code() == grpc.StatusCode.OK
    assert {c.sentence_index for c in chunks} == set(range(len(sentences)))
    assert server_process.process.wait(timeout=60) == 0


def test_cli_adds_a_voice_and_says_a_sentence(
    server_process: ServerProcess, sample_wav, tmp_path: Path
):
    sample = tmp_path / "me.wav"
    sample.write_bytes(sample_wav)
    added = server_process.cli(
        "--json", "voices", "add", str(sample), "--name", "Me", key=ALICE_KEY
    )
    assert added.returncode == 0, added.stderr
    voice = json.loads(added.stdout)
    assert voice["state"] == "VOICE_STATE_READY"

    out = tmp_path / "hello.wav"
    said = server_process.cli(
        "--json",
        "say",
        "--voice",
        voice["voice_id"],
        "-o",
        str(out),
        "Hello from the command line.",
        key=ALICE_KEY,
    )
    assert said.returncode == 0, said.stderr
    result = json.loads(said.stdout)
    audio, rate = sf.read(out)
    assert rate == result["sample_rate_hz"] == 24000
    assert audio.size > 0 and float(np.abs(audio).max()) > 1e-3

    listed = server_process.cli("voices", "list", key=ALICE_KEY)
    assert (
        listed.returncode == 0 and voice["voice_id"] in listed.stdout and "ready" in listed.stdout
    )
    shown = server_process.cli("voices", "show", voice["voice_id"], key=ALICE_KEY)
    assert shown.returncode == 0 and "cloned" in shown.stdout

    bad = server_process.cli("voices", "show", "not-an-id", key=ALICE_KEY)
    assert bad.returncode == 2 and "INVALID_ARGUMENT" in bad.stderr
    removed = server_process.cli("voices", "rm", voice["voice_id"], key=ALICE_KEY)
    assert removed.returncode == 0, removed.stderr
    gone = server_process.cli("voices", "show", voice["voice_id"], key=ALICE_KEY)
    assert gone.returncode == 1 and "NOT_FOUND" in gone.stderr


def buf() -> str:
    path = shutil.which("buf") or str(Path(sys.executable).parent / "buf")
    assert Path(path).exists(), "buf is installed by the dev extra (buf-bin)"
    return path


def test_buf_curl_lists_services_and_checks_health(server_process: ServerProcess):
    base = f"http://{server_process.target}"
    listed = subprocess.run(
        [buf(), "curl", "--protocol", "grpc", "--http2-prior-knowledge", "--list-services", base],
        capture_output=True,
        text=True,
        timeout=60,
        check=False,
    )
    assert listed.returncode == 0, listed.stderr
    services = set(listed.stdout.split())
    assert {
        "voiceslot.v1.AllocatorService",
        "voiceslot.v1.SynthesizerService",
        "grpc.health.v1.Health",
    } <= services

    health = subprocess.run(
        [
            buf(),
            "curl",
            "--protocol",
            "grpc",
            "--http2-prior-knowledge",
            f"{base}/grpc.health.v1.Health/Check",
        ],
        capture_output=True,
        text=True,
        timeout=60,
        check=False,
    )
    assert health.returncode == 0, health.stderr
    assert json.loads(health.stdout) == {"status": "SERVING"}
