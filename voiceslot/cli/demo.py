"""``voiceslot demo``: the main job end to end in one process.

Starts both services on the embedded default, registers a voice from a sample, waits for
the clone, and speaks a sentence into a WAV file through a streaming call — the same
gRPC calls any client makes.
"""

from __future__ import annotations

import asyncio
import time
from dataclasses import dataclass
from pathlib import Path

import grpc

from voiceslot.cli.client import register_requests
from voiceslot.cli.runtime import Runtime
from voiceslot.config import ProviderConfig, Settings
from voiceslot.credentials import read_local_key
from voiceslot.testing.samples import make_sample_wav
from voiceslot.v1 import allocator_pb2 as apb
from voiceslot.v1 import allocator_pb2_grpc, common_pb2, synthesizer_pb2_grpc
from voiceslot.v1 import synthesizer_pb2 as spb


class DemoFailed(Exception):
    pass


@dataclass(frozen=True)
class DemoResult:
    voice_id: str
    clone_s: float
    first_chunk_ms: float
    total_ms: float
    out: Path
    audio_bytes: int
    sample_rate_hz: int


def with_local_model(settings: Settings, model_dir: Path | None) -> Settings:
    """Point the local provider(s) at ``model_dir`` when one is given."""
    if model_dir is None:
        return settings
    providers = tuple(
        p.model_copy(update={"model_dir": model_dir}) if p.kind == "local" else p
        for p in settings.providers
    )
    if not any(p.kind == "local" for p in providers):
        providers = (*providers, ProviderConfig(name="local", kind="local", model_dir=model_dir))
    return settings.model_copy(update={"providers": providers, "default_provider": "local"})


async def run_demo(
    settings: Settings, *, sample: bytes, text: str, out: Path, progress: callable = print
) -> DemoResult:
    settings = settings.model_copy(update={"listen": "127.0.0.1:0"})
    runtime = await Runtime(settings).start()
    try:
        key = (
            read_local_key(settings.data_dir)
            if not settings.auth.api_keys
            else (settings.auth.api_keys[0].key.get_secret_value())
        )
        md = (("authorization", f"Bearer {key}"),)
        async with grpc.aio.insecure_channel(f"127.0.0.1:{runtime.port}") as channel:
            alloc = allocator_pb2_grpc.AllocatorServiceStub(channel)
            synth = synthesizer_pb2_grpc.SynthesizerServiceStub(channel)
            progress(
                f"services up on 127.0.0.1:{runtime.port}; registering the sample ({len(sample)} bytes)"
            )
            requests = register_requests(
                sample, apb.RegisterVoiceMetadata(display_name="demo voice")
            )
            voice = (await alloc.RegisterVoice(requests, metadata=md)).voice
            progress(f"voice {voice.voice_id} registered; cloning (the first run loads the model)")
            started = time.perf_counter()
            while True:
                ensure = await alloc.EnsureActiveVoice(
                    apb.EnsureActiveVoiceRequest(voice_id=voice.voice_id), metadata=md
                )
                if ensure.HasField("ready"):
                    await alloc.ReleaseLease(
                        apb.ReleaseLeaseRequest(lease_id=ensure.ready.lease.lease_id), metadata=md
                    )
                    break
                if ensure.voice.state == common_pb2.VOICE_STATE_FAILED:
                    raise DemoFailed(f"cloning failed: {ensure.voice.last_error}")
                async for update in alloc.WatchVoice(
                    apb.WatchVoiceRequest(voice_id=voice.voice_id), metadata=md
                ):
                    if update.voice.state == common_pb2.VOICE_STATE_FAILED:
                        # Asking again would re-queue it; the error will not change by itself.
                        raise DemoFailed(f"cloning failed: {update.voice.last_error}")
                    if update.voice.state == common_pb2.VOICE_STATE_READY:
                        break
            clone_s = time.perf_counter() - started
            progress(f"cloned in {clone_s:.1f} s; speaking: {text!r}")
            started = time.perf_counter()
            first_chunk_ms = 0.0
            rate = 0
            tmp = out.with_name(f".{out.name}.part")
            try:
                with open(tmp, "wb") as f:  # noqa: ASYNC230 - small sequential writes in a CLI
                    async for chunk in synth.SynthesizeStream(
                        spb.SynthesizeStreamRequest(voice_id=voice.voice_id, text=text), metadata=md
                    ):
                        if chunk.sequence == 0:
                            first_chunk_ms = (time.perf_counter() - started) * 1000
                            rate = chunk.format.sample_rate_hz
                        f.write(chunk.audio_chunk)
                tmp.replace(out)
            finally:
                tmp.unlink(missing_ok=True)
            return DemoResult(
                voice.voice_id,
                clone_s,
                first_chunk_ms,
                (time.perf_counter() - started) * 1000,
                out,
                out.stat().st_size,  # noqa: ASYNC240
                rate,
            )
    finally:
        await runtime.stop()


def demo_sample(path: Path | None) -> bytes:
    """The user's recording, or a synthetic voiced sample when none is given."""
    return path.read_bytes() if path else make_sample_wav(seconds=6.0)


def run(
    settings: Settings,
    *,
    sample: Path | None,
    text: str,
    out: Path,
    model_dir: Path | None,
    progress: callable = print,
) -> DemoResult:
    return asyncio.run(
        run_demo(
            with_local_model(settings, model_dir),
            sample=demo_sample(sample),
            text=text,
            out=out,
            progress=progress,
        )
    )
