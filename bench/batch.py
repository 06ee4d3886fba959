"""Batch throughput: items per second rendered by K concurrent batch workers against a
provider answering after a fixed latency L, beside the ideal K / L.

    python bench/batch.py                              # K = 4 and 8, L = 200 ms, PostgreSQL
    python bench/batch.py --workers 2 4 8 --latency-ms 100 --items 300 --runs 3
    python bench/batch.py --storage s3                 # rendered audio to moto's S3 server

Deployed as in production, each part its own process: ``voiceslot serve --only
allocator`` and ``--replicas`` synthesizer processes (``serve --only synth``) splitting the
K worker slots between them, one PostgreSQL database (VOICESLOT_BENCH_PG), rendered audio
to local files (or S3). The provider is the ElevenLabs emulator in this process with a
standing latency of L on every text-to-speech call and no concurrency cap, so the ideal is
exactly K / L items per second: what the workers add on top of the provider's time (claims,
the voice's lease from the allocator, encoding, storage, recording the outcome) is what
the ratio measures (goal >= 0.8).

Each run is a fresh job of ``--items`` one-sentence items; its rate is items divided by
the job's own lifetime as the server recorded it (created_at to finished_at), so process
start-up and polling are not timed. Figures are medians over ``--runs``.

Writes bench/results/batch.json.
"""

from __future__ import annotations

import argparse
import asyncio
import os
import statistics
import sys
import tempfile
import time
from pathlib import Path
from typing import Any

sys.path.insert(0, str(Path(__file__).resolve().parent))

from _common import ROOT, scratch_database, spawn, stop, write_result  # noqa: E402

sys.path.insert(0, str(ROOT))

KEY = "bench-admin-key"
S3_ENV = {
    "AWS_ACCESS_KEY_ID": "bench",
    "AWS_SECRET_ACCESS_KEY": "bench",
    "AWS_DEFAULT_REGION": "us-east-1",
}


def write_config(work: Path, name: str, values: dict[str, Any]) -> Path:
    import yaml

    path = work / f"{name}.yaml"
    path.write_text(yaml.safe_dump(values))
    return path


def base_config(work: Path, name: str, *, db: str, emu: Any, storage: dict[str, Any]) -> dict:
    return {
        "data_dir": str(work / name),
        "listen": "127.0.0.1:0",
        "log_level": "WARNING",
        "shutdown_grace_s": 5,
        "default_provider": "eleven",
        "providers": [
            {
                "name": "eleven",
                "kind": "elevenlabs",
                "api_key": "el-emulator-key",
                "base_url": emu.elevenlabs_url,
            }
        ],
        "storage": storage,
        "auth": {"api_keys": [{"key": KEY, "user": "bench", "role": "admin"}]},
        "allocator": {
            "database_url": db,
            "maintenance_interval_s": None,
            "dispatch_interval_s": 0.1,
        },
        "synth": {"database_url": db},
    }


async def run_job(synth: Any, voice_id: str, items: int, tag: str, md: Any) -> dict[str, Any]:
    from voiceslot.v1 import synthesizer_pb2 as spb

    job = (
        await synth.CreateBatchJob(
            spb.CreateBatchJobRequest(
                voice_id=voice_id,
                items=[
                    spb.BatchItemInput(name=f"{tag}-{i:04d}", text=f"Item {i} of run {tag}.")
                    for i in range(items)
                ],
            ),
            metadata=md,
        )
    ).job
    while True:
        job = (await synth.GetBatchJob(spb.GetBatchJobRequest(job_id=job.job_id), metadata=md)).job
        if job.state == spb.BATCH_JOB_STATE_COMPLETED:
            break
        await asyncio.sleep(0.25)  # the rate comes from the server's timestamps, not this
    seconds = (job.finished_at.ToNanoseconds() - job.created_at.ToNanoseconds()) / 1e9
    return {
        "items": items,
        "succeeded": job.succeeded_items,
        "seconds": round(seconds, 3),
        "items_per_s": round(job.succeeded_items / seconds, 2),
    }


async def one_setting(
    args: argparse.Namespace, work: Path, db: str, emu: Any, storage: dict, k: int
) -> dict[str, Any]:
    import grpc

    from voiceslot.testing.samples import make_sample_wav
    from voiceslot.v1 import allocator_pb2 as apb
    from voiceslot.v1 import allocator_pb2_grpc, synthesizer_pb2_grpc

    replicas = min(args.replicas, k)
    slots = [k // replicas + (1 if i < k % replicas else 0) for i in range(replicas)]
    env = S3_ENV if storage["kind"] == "s3" else {}
    emu.state.faults.clear()
    alloc_cfg = write_config(
        work, f"allocator-{k}", base_config(work, f"allocator-{k}", db=db, emu=emu, storage=storage)
    )
    procs = []
    try:
        proc, alloc_port = spawn(
            [sys.executable, "-m", "voiceslot", "--config", str(alloc_cfg), "serve"]
            + ["--only", "allocator"],
            log=work / f"allocator-{k}.log",
            env=env,
        )
        procs.append(proc)
        md = (("authorization", f"Bearer {KEY}"),)
        async with grpc.aio.insecure_channel(f"127.0.0.1:{alloc_port}") as channel:
            alloc = allocator_pb2_grpc.AllocatorServiceStub(channel)
            requests = [
                apb.RegisterVoiceRequest(metadata=apb.RegisterVoiceMetadata(display_name="bench")),
                apb.RegisterVoiceRequest(sample_chunk=make_sample_wav(seconds=3.0)),
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
        ports = []
        for i, n in enumerate(slots):
            values = base_config(work, f"synth-{k}-{i}", db=db, emu=emu, storage=storage)
            values["synth"] |= {
                "allocator_target": f"127.0.0.1:{alloc_port}",
                "allocator_api_key": KEY,
                "batch_workers": n,
            }
            cfg = write_config(work, f"synth-{k}-{i}", values)
            proc, port = spawn(
                [sys.executable, "-m", "voiceslot", "--config", str(cfg), "serve"]
                + ["--only", "synth"],
                log=work / f"synth-{k}-{i}.log",
                env=env,
            )
            procs.append(proc)
            ports.append(port)
        emu.state.faults.set_latency(args.latency_ms / 1000)
        async with grpc.aio.insecure_channel(f"127.0.0.1:{ports[0]}") as channel:
            synth = synthesizer_pb2_grpc.SynthesizerServiceStub(channel)
            await run_job(synth, voice.voice_id, max(k, 20), f"warm{k}", md)
            runs = []
            for run in range(args.runs):
                result = await run_job(synth, voice.voice_id, args.items, f"k{k}r{run}", md)
                print({"workers": k, **result}, flush=True)
                runs.append(result)
    finally:
        for proc in reversed(procs):
            stop(proc)
    ideal = k / (args.latency_ms / 1000)
    rate = statistics.median(r["items_per_s"] for r in runs)
    return {
        "workers": k,
        "replicas": replicas,
        "slots_per_replica": slots,
        "ideal_items_per_s": round(ideal, 2),
        "median_items_per_s": round(rate, 2),
        "ratio": round(rate / ideal, 3),
        "runs": runs,
    }


async def bench(args: argparse.Namespace, work: Path) -> dict[str, Any]:
    from voiceslot.testing.emulator import ProviderEmulator

    emu = ProviderEmulator().start()
    emu.state.configure_account("elevenlabs", "el-emulator-key", max_concurrency=None)
    moto = None
    try:
        if args.storage == "s3":
            import boto3
            from moto.server import ThreadedMotoServer

            moto = ThreadedMotoServer(ip_address="127.0.0.1", port=0, verbose=False)
            moto.start()
            host, port = moto.get_host_and_port()
            endpoint = f"http://{host}:{port}"
            os.environ.update(S3_ENV)
            boto3.client("s3", endpoint_url=endpoint).create_bucket(Bucket="bench")
            storage = {"kind": "s3", "bucket": "bench", "endpoint_url": endpoint}
        else:
            storage = {"kind": "local", "root": str(work / "storage")}
        settings = []
        with scratch_database("postgres", work) as db:
            for k in args.workers:
                settings.append(await one_setting(args, work, db, emu, storage, k))
    finally:
        emu.stop()
        if moto is not None:
            moto.stop()
    return {
        "benchmark": "batch",
        "provider": "ElevenLabs emulator",
        "provider_latency_ms": args.latency_ms,
        "database": "postgres",
        "storage": args.storage,
        "items_per_job": args.items,
        "settings": settings,
        "goal": {"ratio_at_least": 0.8},
    }


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--workers", type=int, nargs="+", default=[4, 8], help="K values")
    parser.add_argument("--replicas", type=int, default=2, help="synth processes sharing K")
    parser.add_argument("--latency-ms", type=float, default=200.0, help="L")
    parser.add_argument("--items", type=int, default=300, help="items per job")
    parser.add_argument("--runs", type=int, default=3)
    parser.add_argument("--storage", choices=["local", "s3"], default="local")
    parser.add_argument("--out", default="batch", help="result name under results/")
    args = parser.parse_args()
    began = time.monotonic()
    with tempfile.TemporaryDirectory(prefix="vs-bench-batch-") as tmp:
        result = asyncio.run(bench(args, Path(tmp)))
    result["wall_s"] = round(time.monotonic() - began, 1)
    print(write_result(args.out, result).read_text())


if __name__ == "__main__":
    main()
