"""A voice agent's wait: from a sentence's final fragment to its first audio byte, over
gRPC (SynthesizeLive) beside the same engine called in-process, in one run.

    python bench/agent_stream.py                       # local engine (tiny XTTS, built here)
    python bench/agent_stream.py --model-dir DIR       # local engine, a real Coqui model
    python bench/agent_stream.py --engine emulator     # ElevenLabs emulator (WebSocket input)
    python bench/agent_stream.py --runs 5 --turns 4

The server is ``voiceslot serve`` (both services, embedded SQLite, as a user runs it) in
its own process. Each turn is what an agent sends: ``start``, a pause for the LLM's first
token (``--ttft-ms``; the voice's lease is taken meanwhile, as the product does), the
first sentence word by word (``--gap-ms`` apart), its last word ("…purple.") and at once
the next sentence's first word (" And", which makes the period's sentence end certain),
the rest, ``end``. Measured: from sending the final fragment ("…purple.") to the first
audio byte of that sentence.

The in-process side is the same provider adapter with the same settings, built in this
process and driven through the same live-session port the synthesizer uses
(``voiceslot.providers.live.open_live``: the provider's WebSocket session where it has
one, else sentence by sentence): from ``say(sentence)`` to its first audio. Both sides
speak the same sentences with the same number of torch threads (``--torch-threads``),
turn by turn alternating which side goes first, so that load from elsewhere on the machine
falls on both alike; figures are medians per run, then the median over runs.

``first_audio_delta_ms``: over gRPC minus in-process, turn by turn (the same sentence, back to
back), the median per run; goal: at most +20 ms.

Writes bench/results/agent_stream.json.
"""

from __future__ import annotations

import argparse
import asyncio
import os
import random
import statistics
import sys
import tempfile
import time
from pathlib import Path
from typing import Any

sys.path.insert(0, str(Path(__file__).resolve().parent))

from _common import ROOT, write_result  # noqa: E402
from synth_stream import served_voice  # noqa: E402

sys.path.insert(0, str(ROOT))

SEED = 42
FIRST_SENTENCES = [
    "The meeting moved to Thursday afternoon, right after lunch in the purple room.",
    "Your order left the warehouse this morning and should arrive by Friday.",
    "I found three flights that match, and the earliest one leaves at seven.",
    "The weather tomorrow looks dry and mild, with a light breeze from the west.",
    "Your balance is enough for the transfer, and it will clear within a day.",
    "The report is ready, and I have shared it with the whole team just now.",
]
NEXT_SENTENCE = " And that is all for now."


def fragments(sentence: str) -> list[str]:
    """The sentence as an LLM streams it: word by word, each word with its leading space."""
    words = sentence.split(" ")
    return [words[0]] + [f" {w}" for w in words[1:]]


async def bench(args: argparse.Namespace, work: Path) -> dict[str, Any]:
    import grpc

    from voiceslot.providers.base import LiveRequest
    from voiceslot.providers.live import open_live
    from voiceslot.v1 import synthesizer_pb2 as spb
    from voiceslot.v1 import synthesizer_pb2_grpc

    async with served_voice(args, work) as served:
        engine, remote, md = served.engine, served.remote, served.metadata
        synth = synthesizer_pb2_grpc.SynthesizerServiceStub(served.channel)
        rng = random.Random(SEED)

        async def over_grpc(sentence: str) -> float:
            """Seconds from sending the sentence's final fragment to its first audio."""
            call = synth.SynthesizeLive(metadata=md)
            await call.write(
                spb.SynthesizeLiveRequest(start=spb.LiveStart(voice_id=served.voice_id))
            )
            await asyncio.sleep(args.ttft_ms / 1000)
            *words, last = fragments(sentence)
            for word in words:
                await call.write(spb.SynthesizeLiveRequest(text=word))
                await asyncio.sleep(args.gap_ms / 1000)
            sent = time.perf_counter()
            await call.write(spb.SynthesizeLiveRequest(text=last))
            await call.write(spb.SynthesizeLiveRequest(text=NEXT_SENTENCE))
            await call.write(spb.SynthesizeLiveRequest(end=spb.LiveEnd()))
            await call.done_writing()
            first = await call.read()
            waited = time.perf_counter() - sent
            assert first is not grpc.aio.EOF and first.span.text == sentence, first
            while await call.read() is not grpc.aio.EOF:
                pass
            return waited

        async def in_process(sentence: str) -> float:
            """Seconds from saying the sentence to its first audio, same engine."""
            session = open_live(engine, LiveRequest(remote.provider_voice_id, language="en"))
            try:
                audio = aiter(session.audio())
                sent = time.perf_counter()
                await session.say(sentence)
                await anext(audio)
                waited = time.perf_counter() - sent
                await session.say(NEXT_SENTENCE.strip())
                await session.end()
                async for _ in audio:
                    pass
                return waited
            finally:
                await session.aclose()

        await over_grpc(FIRST_SENTENCES[0]), await in_process(FIRST_SENTENCES[0])  # warm
        runs = []
        for run in range(args.runs):
            grpc_s: list[float] = []
            inproc_s: list[float] = []
            for turn in range(args.turns):
                sentence = rng.choice(FIRST_SENTENCES)
                pair = [(grpc_s, over_grpc), (inproc_s, in_process)]
                for side, fn in pair if (run + turn) % 2 == 0 else reversed(pair):
                    side.append(await fn(sentence))
            # The delta of each pair (same sentence, back to back), then the median:
            # steadier on a shared machine than the difference of two medians.
            deltas = [1000 * (g - p) for g, p in zip(grpc_s, inproc_s, strict=True)]
            runs.append(
                {
                    "grpc_first_audio_ms": round(1000 * statistics.median(grpc_s), 1),
                    "inproc_first_audio_ms": round(1000 * statistics.median(inproc_s), 1),
                    "first_audio_delta_ms": round(statistics.median(deltas), 1),
                }
            )
            print(runs[-1], flush=True)

    def median(key: str) -> float:
        return round(statistics.median(r[key] for r in runs), 1)

    return {
        "benchmark": "agent_stream",
        "engine": "emulator (ElevenLabs)"
        if args.engine == "emulator"
        else f"local ({'tiny XTTS' if args.model_dir is None else args.model_dir})",
        "live_path": "provider WebSocket"
        if hasattr(engine, "open_live")
        else "sentence by sentence (synthesize_stream)",
        "provider_latency_ms": args.latency_ms if args.engine == "emulator" else None,
        "fragment_gap_ms": args.gap_ms,
        "ttft_ms": args.ttft_ms,
        "encoding": "wav",
        "torch_threads": args.torch_threads if args.engine == "local" else None,
        "turns_per_run": args.turns,
        "seed": SEED,
        "runs": runs,
        "median": {
            "grpc_first_audio_ms": median("grpc_first_audio_ms"),
            "inproc_first_audio_ms": median("inproc_first_audio_ms"),
            "first_audio_delta_ms": median("first_audio_delta_ms"),
        },
        "goal": {"first_audio_delta_ms_at_most": 20},
    }


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--engine", choices=["local", "emulator"], default="local")
    parser.add_argument("--model-dir", type=Path, help="a Coqui model directory (local engine)")
    parser.add_argument("--latency-ms", type=float, default=50.0, help="emulator latency")
    parser.add_argument("--runs", type=int, default=5)
    parser.add_argument("--turns", type=int, default=4, help="turns per side per run")
    parser.add_argument("--gap-ms", type=float, default=10.0, help="between fragments")
    parser.add_argument(
        "--ttft-ms", type=float, default=200.0, help="from start to the first fragment"
    )
    parser.add_argument(
        "--torch-threads",
        type=int,
        default=1,
        help="intra-op threads of the local engine, the same on both sides (OMP_NUM_THREADS)",
    )
    parser.add_argument("--out", default="agent_stream", help="result name under results/")
    args = parser.parse_args()
    # Before torch is imported here; the server process gets it through its environment.
    os.environ["OMP_NUM_THREADS"] = str(args.torch_threads)
    with tempfile.TemporaryDirectory(prefix="vs-bench-agent-") as tmp:
        result = asyncio.run(bench(args, Path(tmp)))
    print(write_result(args.out, result).read_text())


if __name__ == "__main__":
    main()
