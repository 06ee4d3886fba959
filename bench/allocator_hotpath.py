"""EnsureActiveVoice on an already-READY voice (lease insert + touch), against a bare
grpc.aio unary echo measured in the same run on the same machine.

    python bench/allocator_hotpath.py                  # PostgreSQL (VOICESLOT_BENCH_PG)
    python bench/allocator_hotpath.py --database sqlite

The allocator runs as users run it (``voiceslot serve --only allocator``, its own
process, with the shared authentication/metrics interceptor) on a fresh database; its
provider is the loopback emulator, used only to make the voices READY beforehand. The
echo servers are separate processes too and answer every call with bytes the size of a
real EnsureActiveVoice response: one bare, one behind voiceslot's interceptor (a
diagnostic: the most any RPC of these services can do here before any database work).
One closed-loop client (this process) drives all three in turn, round after round, so
that machine noise hits them alike.

Then, as a product experiences the call: EnsureActiveVoice at a fixed arrival rate of half
the maximum just measured (open loop), with its p50/p99 (goal: p99 <= 5 ms); and, to
read that figure by, the bare echo at the same rate (the transport's own tail on this
machine) and how busy the machine's cores were meanwhile.

On PostgreSQL it all runs at two sizes: ``small`` (a fresh database holding only the
benchmark's voices) and ``large`` (beside other users' history: 100,000 registered
voices, 50,000 of them queued, the rest pinned in slots; ``_common.seed_backlog``). The
queued requests wait out a retry delay here: due, at a provider this full, they would
have reclaim evict the benchmark's own voices between calls (``bench/dispatch.py``
measures the fair order with them due).

Writes bench/results/allocator_hotpath[_sqlite].json: ensure_rps, echo_rps, ratio
(ensure/echo; goal >= 0.5 on PostgreSQL), p50_ms/p99_ms (ensure, closed loop),
half_load (rate, achieved, p50_ms, p99_ms, server/client CPU per call, machine_busy_cores,
echo_p50_ms/echo_p99_ms at the same rate), database, cores; and ``large`` with the same
figures at the large size, ``large_of_small`` its ensure_rps as a share of the small
run's (goal >= 0.8).
"""

from __future__ import annotations

import argparse
import asyncio
import sys
import tempfile
from pathlib import Path
from typing import Any

import grpc
import yaml

sys.path.insert(0, str(Path(__file__).resolve().parent))

from _common import (  # noqa: E402
    LARGE_QUEUED,
    LARGE_VOICES,
    LoadResult,
    OpenLoopResult,
    closed_loop,
    open_loop,
    scratch_database,
    seed_backlog,
    spawn,
    stop,
    write_result,
)

API_KEY = "bench-key"
MD = (("authorization", f"Bearer {API_KEY}"),)
ECHO_METHOD = "/bench.Echo/Echo"


def echo_server(payload_file: str, *, intercepted: bool) -> None:
    """A grpc.aio unary server with no database, answering every call with the bytes in
    ``payload_file``; ``intercepted``: behind voiceslot's ``ServerInterceptor``."""
    payload = Path(payload_file).read_bytes()

    async def echo(request: bytes, context: grpc.aio.ServicerContext) -> bytes:
        return payload

    async def main() -> None:
        interceptors = []
        if intercepted:
            from voiceslot.auth import KeyTable, Principal
            from voiceslot.rpc.interceptors import ServerInterceptor

            keys = KeyTable([(API_KEY, Principal("bench", "user"))])
            interceptors.append(
                ServerInterceptor(keys=keys, rate_per_second=1_000_000, burst=1_000_000)
            )
        server = grpc.aio.server(interceptors=interceptors)
        handler = grpc.unary_unary_rpc_method_handler(echo)
        server.add_generic_rpc_handlers(
            (grpc.method_handlers_generic_handler("bench.Echo", {"Echo": handler}),)
        )
        port = server.add_insecure_port("127.0.0.1:0")
        await server.start()
        print(f"echo serving on port {port}", flush=True)
        await server.wait_for_termination()

    asyncio.run(main())


def write_config(
    path: Path, *, data_dir: Path, database_url: str, emulator_url: str, voices: int
) -> None:
    config = {
        "data_dir": str(data_dir),
        "listen": "127.0.0.1:0",
        "log_level": "INFO",
        "log_format": "json",
        "default_provider": "el",
        "providers": [
            {
                "name": "el",
                "kind": "elevenlabs",
                "api_key": "el-bench-key",
                "base_url": emulator_url,
                "capacity": voices,
            }
        ],
        "auth": {
            "api_keys": [{"key": API_KEY, "user": "bench", "role": "user"}],
            "rate_limit_per_second": 1_000_000,
            "rate_limit_burst": 1_000_000,
        },
        "allocator": {"database_url": database_url, "maintenance_interval_s": None},
    }
    path.write_text(yaml.safe_dump(config))


async def prepare(target: str, voices: int) -> tuple[list[str], bytes]:
    """Register ``voices`` voices, wait until each is READY; also returns one real
    EnsureActiveVoice answer, for the echo servers to send back."""
    from voiceslot.testing.samples import make_sample_wav
    from voiceslot.v1 import allocator_pb2 as apb
    from voiceslot.v1 import allocator_pb2_grpc

    sample = make_sample_wav(seconds=1.5)
    ids = []
    answer = None
    async with grpc.aio.insecure_channel(target) as channel:
        stub = allocator_pb2_grpc.AllocatorServiceStub(channel)
        for i in range(voices):
            messages = [
                apb.RegisterVoiceRequest(metadata=apb.RegisterVoiceMetadata(display_name=f"b{i}")),
                apb.RegisterVoiceRequest(sample_chunk=sample),
            ]
            ids.append((await stub.RegisterVoice(iter(messages), metadata=MD)).voice.voice_id)
        for voice_id in ids:
            for _ in range(600):
                answer = await stub.EnsureActiveVoice(
                    apb.EnsureActiveVoiceRequest(voice_id=voice_id), metadata=MD
                )
                if answer.HasField("ready"):
                    break
                await asyncio.sleep(0.05)
            else:
                raise RuntimeError(f"{voice_id} never became ready")
    assert answer is not None
    return ids, answer.SerializeToString()


async def measure(
    args: argparse.Namespace, targets: dict[str, tuple[str, int]], ids: list[str]
) -> tuple[list[dict[str, LoadResult]], dict[str, OpenLoopResult]]:
    """``targets``: name -> (address, server pid)."""
    from voiceslot.v1 import allocator_pb2 as apb
    from voiceslot.v1 import allocator_pb2_grpc

    requests = []
    for voice_id in ids:
        request = apb.EnsureActiveVoiceRequest(voice_id=voice_id, lease_holder="bench")
        request.lease_ttl.FromSeconds(2)  # leases end on their own, as released ones would
        requests.append(request)
    payload = requests[0].SerializeToString()
    channels = {
        name: [grpc.aio.insecure_channel(address) for _ in range(args.channels)]
        for name, (address, _) in targets.items()
    }
    stubs = [allocator_pb2_grpc.AllocatorServiceStub(c) for c in channels["ensure"]]
    echoes = [c.unary_unary(ECHO_METHOD) for c in channels["echo"]]
    echoes_i = [c.unary_unary(ECHO_METHOD) for c in channels["echo_intercepted"]]

    async def ensure(i: int) -> None:
        request = requests[i % len(requests)]
        answer = await stubs[i % len(stubs)].EnsureActiveVoice(request, metadata=MD)
        if not answer.HasField("ready"):
            raise RuntimeError(f"not ready: {answer}")

    async def echo(i: int) -> None:
        await echoes[i % len(echoes)](payload, metadata=MD)

    async def echo_intercepted(i: int) -> None:
        await echoes_i[i % len(echoes_i)](payload, metadata=MD)

    calls = {"echo": echo, "ensure": ensure, "echo_intercepted": echo_intercepted}
    kw = {"concurrency": args.concurrency, "warmup_s": args.warmup, "measure_s": args.seconds}
    rounds = []
    try:
        for _ in range(args.rounds):
            rounds.append(
                {
                    name: await closed_loop(call, server_pid=targets[name][1], **kw)
                    for name, call in calls.items()
                }
            )
        # Latency as a product sees it: a fixed arrival rate at half the maximum just
        # measured, not a closed loop that slows down with the server.
        # The echo at the same rate is the floor: what the transport alone gives on
        # this machine at that rate.
        max_rps = sum(r["ensure"].rps for r in rounds) / len(rounds)
        half = {
            name: await open_loop(
                calls[name],
                rate=max_rps / 2,
                warmup_s=args.warmup,
                measure_s=args.seconds,
                server_pid=targets[name][1],
            )
            for name in ("ensure", "echo")
        }
    finally:
        for group in channels.values():
            for channel in group:
                await channel.close()
    return rounds, half


def run(
    args: argparse.Namespace, *, large: bool
) -> tuple[list[dict[str, LoadResult]], dict[str, OpenLoopResult]]:
    from voiceslot.testing.emulator import Account, ProviderEmulator

    account = Account.elevenlabs("el-bench-key", voice_limit=None)
    with (
        tempfile.TemporaryDirectory() as tmp,
        scratch_database(args.database, Path(tmp)) as url,
        ProviderEmulator(accounts=[account]) as emulator,
    ):
        work = Path(tmp)
        config = work / "voiceslot.yaml"
        write_config(
            config,
            data_dir=work / "data",
            database_url=url,
            emulator_url=emulator.elevenlabs_url,
            voices=args.voices + (LARGE_VOICES - LARGE_QUEUED if large else 0),
        )
        procs = []
        try:
            allocator, port = spawn(
                [sys.executable, "-m", "voiceslot", "--config", str(config), "serve"]
                + ["--only", "allocator"],
                log=work / "allocator.log",
            )
            procs.append(allocator)
            if large:  # the allocator has migrated the schema by now
                # Not due (waiting out a retry delay): with requests due at a full
                # provider, reclaim would evict the benchmark's own voices between calls.
                asyncio.run(seed_backlog(url, provider="el", due=False))
            ids, payload = asyncio.run(prepare(f"127.0.0.1:{port}", args.voices))
            (work / "payload.bin").write_bytes(payload)
            targets = {"ensure": (f"127.0.0.1:{port}", allocator.pid)}
            for name, extra in (("echo", []), ("echo_intercepted", ["--intercepted"])):
                proc, echo_port = spawn(
                    [sys.executable, __file__, "--echo-server", str(work / "payload.bin"), *extra],
                    log=work / f"{name}.log",
                )
                procs.append(proc)
                targets[name] = (f"127.0.0.1:{echo_port}", proc.pid)
            return asyncio.run(measure(args, targets, ids))
        finally:
            for proc in procs:
                stop(proc)


def summarize(
    rounds: list[dict[str, LoadResult]], halves: dict[str, OpenLoopResult]
) -> dict[str, Any]:
    def mean(name: str, field: str) -> float:
        return sum(getattr(r[name], field) for r in rounds) / len(rounds)

    half, echo = halves["ensure"], halves["echo"]
    return {
        "ensure_rps": round(mean("ensure", "rps"), 1),
        "echo_rps": round(mean("echo", "rps"), 1),
        "ratio": round(mean("ensure", "rps") / mean("echo", "rps"), 3),
        "p50_ms": round(mean("ensure", "p50_ms"), 2),
        "p99_ms": round(mean("ensure", "p99_ms"), 2),
        "echo_p50_ms": round(mean("echo", "p50_ms"), 2),
        "echo_p99_ms": round(mean("echo", "p99_ms"), 2),
        "echo_intercepted_rps": round(mean("echo_intercepted", "rps"), 1),
        # CPU per call of each server process (all threads), closed loop: what the
        # ratio comes down to once a server, not the client or the machine, is the limit.
        "server_cpu_us": {
            name: round(mean(name, "server_cpu_us"), 1)
            for name in ("ensure", "echo", "echo_intercepted")
        },
        "client_cpu_us": {
            name: round(mean(name, "client_cpu_us"), 1)
            for name in ("ensure", "echo", "echo_intercepted")
        },
        "half_load": {
            "rate": round(half.rate, 1),
            "achieved": round(half.achieved, 1),
            "p50_ms": round(half.p50_ms, 2),
            "p99_ms": round(half.p99_ms, 2),
            "late_starts": half.late_starts,
            "server_cpu_us": half.server_cpu_us,
            "client_cpu_us": half.client_cpu_us,
            "machine_busy_cores": half.machine_busy_cores,
            "echo_p50_ms": round(echo.p50_ms, 2),
            "echo_p99_ms": round(echo.p99_ms, 2),
            "echo_server_cpu_us": echo.server_cpu_us,
            "echo_machine_busy_cores": echo.machine_busy_cores,
        },
        "rounds": [{name: round(r.rps, 1) for name, r in rnd.items()} for rnd in rounds],
    }


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--database", choices=["postgres", "sqlite"], default="postgres")
    parser.add_argument("--concurrency", type=int, default=32, help="calls in flight")
    parser.add_argument("--channels", type=int, default=4)
    parser.add_argument("--voices", type=int, default=8, help="READY voices leased round robin")
    parser.add_argument("--seconds", type=float, default=8.0, help="per measured round")
    parser.add_argument("--warmup", type=float, default=2.0)
    parser.add_argument("--rounds", type=int, default=2, help="rounds of all three, averaged")
    parser.add_argument(
        "--sizes", nargs="+", choices=["small", "large"], help="default: both on PostgreSQL"
    )
    parser.add_argument("--echo-server", metavar="PAYLOAD", help=argparse.SUPPRESS)
    parser.add_argument("--intercepted", action="store_true", help=argparse.SUPPRESS)
    args = parser.parse_args()
    if args.echo_server:
        echo_server(args.echo_server, intercepted=args.intercepted)
        return

    sizes = ["small", "large"] if args.database == "postgres" else ["small"]
    result: dict[str, Any] = {"benchmark": "allocator_hotpath", "database": args.database}
    for size in args.sizes or sizes:
        figures = summarize(*run(args, large=size == "large"))
        if size == "small":
            result.update(figures)
        else:
            result["large"] = figures
    if "large" in result and "ensure_rps" in result:
        result["large_of_small"] = round(result["large"]["ensure_rps"] / result["ensure_rps"], 3)
    result.update(
        {
            "concurrency": args.concurrency,
            "channels": args.channels,
            "voices": args.voices,
            "seconds_per_round": args.seconds,
        }
    )
    name = "allocator_hotpath" if args.database == "postgres" else "allocator_hotpath_sqlite"
    print(write_result(name, result).read_text())


if __name__ == "__main__":
    main()
