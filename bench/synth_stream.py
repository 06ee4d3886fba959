"""SynthesizeStream over gRPC beside the same engine called in-process, in one run.

    python bench/synth_stream.py                       # local engine (tiny XTTS, built here)
    python bench/synth_stream.py --model-dir DIR       # local engine, a real Coqui model
    python bench/synth_stream.py --engine emulator     # ElevenLabs emulator, fixed latency
    python bench/synth_stream.py --runs 5 --streams 4

The server is ``voiceslot serve`` (both services, embedded SQLite, as a user runs it) in
its own process; the in-process side is the same provider adapter with the same settings,
built in this process, driven the way the synthesizer drives it (one sentence at a time,
``synthesize_stream``). Both clone the same sample and speak the same text with the same
seed and the same number of torch threads (``--torch-threads``, default 1: on a small
shared machine, two processes each starting a thread per core measure the scheduler, not
voiceslot). Each run measures ``--streams`` streams per side, alternating between the
sides stream by stream so that load from elsewhere on the machine falls on both alike;
the figures are medians over runs.

- throughput: seconds of audio delivered per second of wall time (streams back to back);
  ``ratio`` = over gRPC / in-process (goal >= 0.9).
- first chunk: from the call to the first audio; ``first_chunk_delta_ms`` = over gRPC
  minus in-process (goal <= +20 ms). Over gRPC this includes the voice's lease from the
  allocator (EnsureActiveVoice), which the bare engine does not need.

Writes bench/results/synth_stream.json.
"""

from __future__ import annotations

import argparse
import asyncio
import os
import statistics
import sys
import tempfile
import time
from collections.abc import AsyncIterator, Callable
from contextlib import asynccontextmanager
from dataclasses import dataclass
from pathlib import Path
from typing import Any

sys.path.insert(0, str(Path(__file__).resolve().parent))

from _common import ROOT, spawn, stop, write_result  # noqa: E402

sys.path.insert(0, str(ROOT))

KEY = "bench-admin-key"
TEXT = (
    "Benchmarks measure what users wait for. The first sound should come quickly. "
    "The rest should keep pace with the listener."
)
SEED = 42
WAV_HEADER = 44


@dataclass
class Stream:
    first_chunk_s: float
    total_s: float
    audio_s: float


@dataclass
class Side:
    streams: list[Stream]

    @property
    def throughput(self) -> float:
        return sum(s.audio_s for s in self.streams) / sum(s.total_s for s in self.streams)

    @property
    def first_chunk_ms(self) -> float:
        return 1000 * statistics.median(s.first_chunk_s for s in self.streams)


async def timed(chunks: AsyncIterator[Any], audio_s: Callable[[list[Any]], float]) -> Stream:
    began = time.perf_counter()
    first = None
    got: list[Any] = []
    async for chunk in chunks:
        if first is None:
            first = time.perf_counter() - began
        got.append(chunk)
    assert first is not None, "no audio"
    return Stream(first, time.perf_counter() - began, audio_s(got))


def provider_config(args: argparse.Namespace, model_dir: Path | None, emu: Any) -> Any:
    from voiceslot.config import ProviderConfig

    if args.engine == "emulator":
        return emu.provider_config("elevenlabs", name="engine", capacity=5)
    return ProviderConfig(name="engine", kind="local", model_dir=model_dir, workers=1, preload=True)


def server_config(work: Path, provider: Any) -> Path:
    import yaml

    values = {
        "data_dir": str(work / "server"),
        "listen": "127.0.0.1:0",
        "log_level": "WARNING",
        "default_provider": provider.name,
        "providers": [
            provider.model_dump(mode="json", exclude_none=True)
            | ({"api_key": provider.api_key.get_secret_value()} if provider.api_key else {})
        ],
        "auth": {"api_keys": [{"key": KEY, "user": "bench", "role": "admin"}]},
        "allocator": {"maintenance_interval_s": None},
    }
    path = work / "server.yaml"
    path.write_text(yaml.safe_dump(values))
    return path


@dataclass
class Served:
    """The engine both ways, with the same sample cloned on each side."""

    engine: Any
    """The engine in this process."""
    remote: Any
    """Its clone of the sample (``RemoteVoice``)."""
    channel: Any
    """A gRPC channel to ``voiceslot serve`` running the same engine."""
    voice_id: str
    """The served voice, READY."""
    metadata: tuple[tuple[str, str], ...]


@asynccontextmanager
async def served_voice(args: argparse.Namespace, work: Path) -> AsyncIterator[Served]:
    """Start ``voiceslot serve`` (its own process) and the same engine in this process,
    register the sample there and clone it here; stop both after."""
    import grpc

    from voiceslot.providers.base import CloneRequest
    from voiceslot.providers.registry import build_provider
    from voiceslot.storage.local import LocalStorage
    from voiceslot.testing.emulator import ProviderEmulator
    from voiceslot.testing.samples import make_sample_wav
    from voiceslot.v1 import allocator_pb2 as apb
    from voiceslot.v1 import allocator_pb2_grpc

    emu = None
    model_dir = args.model_dir
    if args.engine == "emulator":
        emu = ProviderEmulator().start()
        emu.state.faults.set_latency(args.latency_ms / 1000)
        emu.state.configure_account("elevenlabs", "el-emulator-key", max_concurrency=None)
    elif model_dir is None:
        from voiceslot.testing.tiny_models import build_tiny_xtts

        model_dir = build_tiny_xtts(work / "tiny-xtts")
    config = provider_config(args, model_dir, emu)
    sample = make_sample_wav(seconds=3.0)
    proc, port = spawn(
        [sys.executable, "-m", "voiceslot", "--config", str(server_config(work, config)), "serve"],
        log=work / "server.log",
        env={"OMP_NUM_THREADS": str(args.torch_threads)},
    )
    engine = build_provider(config, storage=LocalStorage(work / "inproc"))
    md = (("authorization", f"Bearer {KEY}"),)
    try:
        async with grpc.aio.insecure_channel(f"127.0.0.1:{port}") as channel:
            alloc = allocator_pb2_grpc.AllocatorServiceStub(channel)
            requests = [
                apb.RegisterVoiceRequest(metadata=apb.RegisterVoiceMetadata(display_name="b")),
                apb.RegisterVoiceRequest(sample_chunk=sample),
            ]
            voice = (await alloc.RegisterVoice(iter(requests), metadata=md)).voice
            while True:
                ready = await alloc.EnsureActiveVoice(
                    apb.EnsureActiveVoiceRequest(voice_id=voice.voice_id), metadata=md
                )
                if ready.HasField("ready"):
                    break
                await asyncio.sleep(0.05)
            await alloc.ReleaseLease(
                apb.ReleaseLeaseRequest(lease_id=ready.ready.lease.lease_id), metadata=md
            )
            remote = await engine.clone(CloneRequest(label="vs-bench-g1", sample=sample))
            yield Served(engine, remote, channel, voice.voice_id, md)
    finally:
        await engine.aclose()
        stop(proc)
        if emu is not None:
            emu.stop()


async def bench(args: argparse.Namespace, work: Path) -> dict[str, Any]:

    from voiceslot.providers.base import SynthesisRequest
    from voiceslot.text import split_sentences
    from voiceslot.v1 import synthesizer_pb2 as spb
    from voiceslot.v1 import synthesizer_pb2_grpc

    async with served_voice(args, work) as served:
        engine, remote, md = served.engine, served.remote, served.metadata
        synth = synthesizer_pb2_grpc.SynthesizerServiceStub(served.channel)
        sentences = split_sentences(TEXT, max_chars=240)

        def grpc_audio_s(messages: list[Any]) -> float:
            rate = messages[0].format.sample_rate_hz
            return (sum(len(m.audio_chunk) for m in messages) - WAV_HEADER) / 2 / rate

        def pcm_audio_s(pieces: list[Any]) -> float:
            return sum(p.duration_s for p in pieces)

        async def over_grpc() -> Stream:
            call = synth.SynthesizeStream(
                spb.SynthesizeStreamRequest(voice_id=served.voice_id, text=TEXT, seed=SEED),
                metadata=md,
            )
            return await timed(call, grpc_audio_s)

        async def in_process() -> Stream:
            async def pcm() -> AsyncIterator[Any]:
                for sentence in sentences:
                    async for piece in engine.synthesize_stream(
                        SynthesisRequest(
                            remote.provider_voice_id, sentence, language="en", seed=SEED
                        )
                    ):
                        yield piece

            return await timed(pcm(), pcm_audio_s)

        await over_grpc(), await in_process()  # warm both (models, caches, connections)
        runs = []
        for run in range(args.runs):
            # Interleaved stream by stream (alternating which side goes first), so a
            # burst of load from elsewhere on the machine hits both sides alike.
            g, p = Side([]), Side([])
            for i in range(args.streams):
                pair = [(g, over_grpc), (p, in_process)]
                for side, fn in pair if (run + i) % 2 == 0 else reversed(pair):
                    side.streams.append(await fn())
            runs.append(
                {
                    "grpc_audio_s_per_s": round(g.throughput, 3),
                    "inproc_audio_s_per_s": round(p.throughput, 3),
                    "ratio": round(g.throughput / p.throughput, 3),
                    "grpc_first_chunk_ms": round(g.first_chunk_ms, 1),
                    "inproc_first_chunk_ms": round(p.first_chunk_ms, 1),
                    "first_chunk_delta_ms": round(g.first_chunk_ms - p.first_chunk_ms, 1),
                }
            )
            print(runs[-1], flush=True)

    def median(key: str) -> float:
        return round(statistics.median(r[key] for r in runs), 3)

    return {
        "benchmark": "synth_stream",
        "engine": "emulator"
        if args.engine == "emulator"
        else f"local ({'tiny XTTS' if args.model_dir is None else args.model_dir})",
        "provider_latency_ms": args.latency_ms if args.engine == "emulator" else None,
        "text_chars": len(TEXT),
        "sentences": len(sentences),
        "encoding": "wav",
        "torch_threads": args.torch_threads if args.engine == "local" else None,
        "streams_per_run": args.streams,
        "runs": runs,
        "median": {
            "grpc_audio_s_per_s": median("grpc_audio_s_per_s"),
            "inproc_audio_s_per_s": median("inproc_audio_s_per_s"),
            "ratio": median("ratio"),
            "grpc_first_chunk_ms": median("grpc_first_chunk_ms"),
            "inproc_first_chunk_ms": median("inproc_first_chunk_ms"),
            "first_chunk_delta_ms": median("first_chunk_delta_ms"),
        },
        "goal": {"ratio_at_least": 0.9, "first_chunk_delta_ms_at_most": 20},
    }


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--engine", choices=["local", "emulator"], default="local")
    parser.add_argument("--model-dir", type=Path, help="a Coqui model directory (local engine)")
    parser.add_argument("--latency-ms", type=float, default=50.0, help="emulator latency")
    parser.add_argument("--runs", type=int, default=5)
    parser.add_argument("--streams", type=int, default=4, help="streams per side per run")
    parser.add_argument(
        "--torch-threads",
        type=int,
        default=1,
        help="intra-op threads of the local engine, the same on both sides (OMP_NUM_THREADS)",
    )
    parser.add_argument("--out", default="synth_stream", help="result name under results/")
    args = parser.parse_args()
    # Before torch is imported here; the server process gets it through its environment.
    os.environ["OMP_NUM_THREADS"] = str(args.torch_threads)
    with tempfile.TemporaryDirectory(prefix="vs-bench-stream-") as tmp:
        result = asyncio.run(bench(args, Path(tmp)))
    print(write_result(args.out, result).read_text())


if __name__ == "__main__":
    main()
