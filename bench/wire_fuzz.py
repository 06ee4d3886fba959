"""The wire fuzzer's long mode (issue 15): many hostile requests over every RPC of both
services, a JSON summary in bench/results/wire_fuzz.json.

    python bench/wire_fuzz.py                      # 20,000 requests, services started here
    python bench/wire_fuzz.py --requests 2000 --seed 7
    python bench/wire_fuzz.py --target host:50051 --admin-key … --user-key …
    python bench/wire_fuzz.py --replay 15:246      # one request again (seed:index), verbose

Without ``--target`` both services run in this process on SQLite with a tiny random-weight
XTTS (the suite's own), and the rate limit raised out of the way. The bars: 0 INTERNAL or
UNKNOWN, 0 answers over the deadline, 0 errors over 64 KiB, healthy afterwards; the exit
status is 1 when any is missed. Not a benchmark of speed: the rate is reported only so a
run's length can be planned.
"""

from __future__ import annotations

import argparse
import asyncio
import contextlib
import sys
import tempfile
import time
from collections.abc import AsyncIterator
from pathlib import Path
from typing import Any

import grpc

sys.path.insert(0, str(Path(__file__).resolve().parent))

from _common import ROOT, write_result  # noqa: E402

sys.path.insert(0, str(ROOT))

from voiceslot.testing import wire_fuzz  # noqa: E402
from voiceslot.testing.samples import make_sample_wav  # noqa: E402
from voiceslot.v1 import allocator_pb2 as apb  # noqa: E402
from voiceslot.v1 import allocator_pb2_grpc  # noqa: E402

ADMIN_KEY = "fuzz-admin-key"
USER_KEY = "fuzz-user-key"
MAX_MESSAGE = 32 * 1024 * 1024


@contextlib.asynccontextmanager
async def local_services(workdir: Path) -> AsyncIterator[str]:
    """Both services in this process; yields their address."""
    from voiceslot.cli.runtime import Runtime
    from voiceslot.config import (
        AllocatorConfig,
        ApiKeyConfig,
        AuthConfig,
        ProviderConfig,
        Settings,
    )
    from voiceslot.logs import configure_logging
    from voiceslot.testing.tiny_models import build_tiny_xtts

    model = build_tiny_xtts(workdir / "tiny-xtts")
    settings = Settings(
        data_dir=workdir / "data",
        listen="127.0.0.1:0",
        providers=(ProviderConfig(name="local", kind="local", model_dir=model, capacity=4),),
        auth=AuthConfig(
            api_keys=(
                ApiKeyConfig(key=ADMIN_KEY, user="admin", role="admin"),
                ApiKeyConfig(key=USER_KEY, user="alice", role="user"),
            ),
            rate_limit_per_second=1e6,
            rate_limit_burst=1_000_000,
        ),
        allocator=AllocatorConfig(maintenance_interval_s=None, dispatch_interval_s=0.1),
    )
    configure_logging(level="WARNING", fmt="console")  # a log line per rejected request otherwise
    runtime = await Runtime(settings).start()
    try:
        yield f"127.0.0.1:{runtime.port}"
    finally:
        await runtime.stop()


async def seed_voice(channel: grpc.aio.Channel, key: str, sample: bytes) -> str:
    """A registered voice, so some requests name something that exists."""
    stub = allocator_pb2_grpc.AllocatorServiceStub(channel)
    messages = [apb.RegisterVoiceRequest(metadata=apb.RegisterVoiceMetadata(display_name="fuzz"))]
    messages.append(apb.RegisterVoiceRequest(sample_chunk=sample))
    answer = await stub.RegisterVoice(
        iter(messages), metadata=(("authorization", f"Bearer {key}"),), timeout=30
    )
    return answer.voice.voice_id


async def run(args: argparse.Namespace, target: str) -> dict[str, Any]:
    options = [("grpc.max_receive_message_length", MAX_MESSAGE)]
    async with grpc.aio.insecure_channel(target, options=options) as channel:
        sample = make_sample_wav(seconds=2.0)
        voice = await seed_voice(channel, args.user_key, sample)
        methods = await wire_fuzz.discover(channel)
        creds = wire_fuzz.Credentials(admin=args.admin_key, user=args.user_key)
        if args.replay:
            seed, index = (int(x) for x in args.replay.split(":"))
            return await replay(channel, methods, creds, seed, index, (voice,), (sample,))
        started = time.monotonic()

        def progress(summary: wire_fuzz.Summary) -> None:
            print(f"{summary.requests} requests, {len(summary.findings)} findings", file=sys.stderr)

        summary = await wire_fuzz.fuzz(
            channel,
            methods,
            creds,
            requests=args.requests,
            seed=args.seed,
            deadline_s=args.deadline,
            concurrency=args.concurrency,
            known=(voice,),
            samples=(sample,),
            progress=progress,
        )
        elapsed = time.monotonic() - started
        return {
            **summary.as_json(),
            "rpcs": len(methods),
            "deadline_s": args.deadline,
            "concurrency": args.concurrency,
            "seconds": round(elapsed, 1),
            "requests_per_s": round(summary.requests / elapsed, 1),
        }


async def replay(
    channel: grpc.aio.Channel,
    methods: list[wire_fuzz.Method],
    creds: wire_fuzz.Credentials,
    seed: int,
    index: int,
    known: tuple[str, ...],
    samples: tuple[bytes, ...],
) -> dict[str, Any]:
    """One request exactly as the fuzzer built it, and its answer."""
    method, payloads, metadata = wire_fuzz.build_request(
        methods, creds, seed=seed, index=index, known=known, samples=samples
    )
    outcome = await wire_fuzz.call(channel, method, payloads, metadata, deadline_s=10.0)
    return {
        "method": method.path,
        "metadata": [(k, v[:80]) for k, v in metadata],
        "payload_bytes": [len(p) for p in payloads],
        "payload_heads": [p[:200].hex() for p in payloads[:3]],
        "code": outcome.code.name,
        "details": outcome.details[:2000],
        "error_bytes": outcome.error_bytes,
        "seconds": round(outcome.seconds, 3),
    }


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--requests", type=int, default=20_000)
    parser.add_argument("--seed", type=int, default=15)
    parser.add_argument("--deadline", type=float, default=10.0, help="seconds per answer")
    parser.add_argument("--concurrency", type=int, default=8)
    parser.add_argument("--target", help="host:port of running services (default: start them)")
    parser.add_argument("--admin-key", default=ADMIN_KEY)
    parser.add_argument("--user-key", default=USER_KEY)
    parser.add_argument("--replay", help="seed:index of one request to send again")
    args = parser.parse_args()

    async def go() -> dict[str, Any]:
        if args.target:
            return await run(args, args.target)
        with tempfile.TemporaryDirectory(prefix="wire-fuzz-") as tmp:
            async with local_services(Path(tmp)) as target:
                return await run(args, target)

    result = asyncio.run(go())
    if args.replay:
        import json

        print(json.dumps(result, indent=2))
        return 0
    path = write_result("wire_fuzz", result)
    bars = (
        result["internal_or_unknown"] == 0
        and result["over_deadline"] == 0
        and result["errors_over_64kib"] == 0
        and result["healthy_after"]
    )
    print(
        f"{result['requests']} requests over {result['rpcs']} RPCs in {result['seconds']} s: "
        f"{result['internal_or_unknown']} INTERNAL/UNKNOWN, {result['over_deadline']} over "
        f"the deadline, {result['errors_over_64kib']} errors over 64 KiB, largest error "
        f"{result['largest_error_bytes']} B, healthy after: {result['healthy_after']} → {path}"
    )
    return 0 if bars else 1


if __name__ == "__main__":
    sys.exit(main())
