"""Batch jobs ("briefs") over real gRPC with the local engine: progress is exact and
monotonic, audio is stored and downloadable, bad input stores nothing."""

from __future__ import annotations

import io

import grpc
import pytest
import soundfile as sf

from tests.acceptance.test_errors_and_auth import expect, field_violations
from tests.conftest import ADMIN_KEY, ALICE_KEY, auth
from tests.support import ensure_ready, register
from voiceslot.v1 import common_pb2, synthesizer_pb2_grpc
from voiceslot.v1 import synthesizer_pb2 as spb


@pytest.fixture
async def ready_voice(channel, sample_wav):
    voice = await register(channel, auth(ADMIN_KEY), sample_wav, name="brief voice")
    await ensure_ready(channel, auth(ADMIN_KEY), voice.voice_id)
    return voice


async def test_a_brief_is_rendered_with_exact_progress(channel, ready_voice):
    synth = synthesizer_pb2_grpc.SynthesizerServiceStub(channel)
    md = auth(ADMIN_KEY)
    items = [
        spb.BatchItemInput(name=f"item-{i:02d}.intro", text=f"Item number {i}. It is short.")
        for i in range(5)
    ]
    job = (
        await synth.CreateBatchJob(
            spb.CreateBatchJobRequest(
                voice_id=ready_voice.voice_id,
                items=items,
                format=common_pb2.AudioFormat(
                    encoding=common_pb2.AUDIO_ENCODING_WAV, sample_rate_hz=16000
                ),
            ),
            metadata=md,
        )
    ).job
    assert job.total_items == 5 and job.progress == 0.0

    seen = [
        u.job
        async for u in synth.WatchBatchJob(spb.WatchBatchJobRequest(job_id=job.job_id), metadata=md)
    ]
    progress = [j.progress for j in seen]
    assert progress == sorted(progress), f"progress went backwards: {progress}"
    assert seen[-1].progress == 1.0 and all(p <= 1.0 for p in progress)
    assert seen[-1].state == spb.BATCH_JOB_STATE_COMPLETED
    assert (seen[-1].succeeded_items, seen[-1].failed_items) == (5, 0)

    full = await synth.GetBatchJob(
        spb.GetBatchJobRequest(job_id=job.job_id, include_items=True), metadata=md
    )
    assert [i.name for i in full.items] == [i.name for i in items]
    for item in full.items:
        assert item.state == spb.BATCH_ITEM_STATE_SUCCEEDED and item.attempts == 1
        chunks = [
            c.chunk
            async for c in synth.DownloadBatchItemAudio(
                spb.DownloadBatchItemAudioRequest(job_id=job.job_id, item_id=item.item_id),
                metadata=md,
            )
        ]
        audio, rate = sf.read(io.BytesIO(b"".join(chunks)))
        assert rate == 16000 and audio.size > 0
        assert abs(audio.size / rate - item.audio_duration.ToNanoseconds() / 1e9) < 0.01


async def test_bad_briefs_are_rejected_and_store_nothing(channel, ready_voice):
    synth = synthesizer_pb2_grpc.SynthesizerServiceStub(channel)
    md = auth(ADMIN_KEY)

    async def create(items, voice_id=ready_voice.voice_id, key=md):
        return await synth.CreateBatchJob(
            spb.CreateBatchJobRequest(voice_id=voice_id, items=items), metadata=key
        )

    exc = await expect(grpc.StatusCode.INVALID_ARGUMENT, create([]))
    assert field_violations(exc) == ["items"]
    for hostile in ["../etc/passwd", "a/b", "", ".hidden", "nul\x00byte", "x" * 129]:
        exc = await expect(
            grpc.StatusCode.INVALID_ARGUMENT,
            create(
                [
                    spb.BatchItemInput(name="ok", text="fine"),
                    spb.BatchItemInput(name=hostile, text="hi"),
                ]
            ),
        )
        assert field_violations(exc) == ["items[1].name"], hostile
    exc = await expect(
        grpc.StatusCode.INVALID_ARGUMENT,
        create(
            [spb.BatchItemInput(name="same", text="a"), spb.BatchItemInput(name="same", text="b")]
        ),
    )
    assert field_violations(exc) == ["items[1].name"]
    exc = await expect(
        grpc.StatusCode.INVALID_ARGUMENT, create([spb.BatchItemInput(name="blank", text="  ")])
    )
    assert field_violations(exc) == ["items[0].text"]
    await expect(
        grpc.StatusCode.NOT_FOUND,
        create([spb.BatchItemInput(name="a", text="b")], voice_id="v_" + "0" * 32),
    )
    # Another user's voice is not Alice's to render with: as if it did not exist.
    await expect(
        grpc.StatusCode.NOT_FOUND,
        create([spb.BatchItemInput(name="a", text="b")], key=auth(ALICE_KEY)),
    )
    assert list((await synth.ListBatchJobs(spb.ListBatchJobsRequest(), metadata=md)).jobs) == []


async def test_cancel_stops_pending_items(channel, ready_voice, runtime):
    synth = synthesizer_pb2_grpc.SynthesizerServiceStub(channel)
    md = auth(ADMIN_KEY)
    items = [spb.BatchItemInput(name=f"n{i}", text=f"Sentence {i}.") for i in range(30)]
    job = (
        await synth.CreateBatchJob(
            spb.CreateBatchJobRequest(voice_id=ready_voice.voice_id, items=items), metadata=md
        )
    ).job
    cancelled = (
        await synth.CancelBatchJob(spb.CancelBatchJobRequest(job_id=job.job_id), metadata=md)
    ).job
    assert cancelled.state == spb.BATCH_JOB_STATE_CANCELLED
    final = [
        u.job
        async for u in synth.WatchBatchJob(spb.WatchBatchJobRequest(job_id=job.job_id), metadata=md)
    ][-1]
    assert final.state == spb.BATCH_JOB_STATE_CANCELLED
    assert final.succeeded_items < 30
    again = (
        await synth.CancelBatchJob(spb.CancelBatchJobRequest(job_id=job.job_id), metadata=md)
    ).job
    assert again.state == spb.BATCH_JOB_STATE_CANCELLED  # no-op


async def test_a_user_renders_briefs_with_their_own_voice_within_a_quota(make_settings, sample_wav):
    """Batch jobs are open to every user, for their own voices, with at most
    ``max_unfinished_jobs_per_user`` pending or running at once (admins are not capped)."""
    from voiceslot.cli.runtime import Runtime
    from voiceslot.config import SynthConfig

    settings = make_settings(synth=SynthConfig(max_unfinished_jobs_per_user=1, batch_workers=0))
    rt = await Runtime(settings).start()
    try:
        async with grpc.aio.insecure_channel(f"127.0.0.1:{rt.port}") as channel:
            synth = synthesizer_pb2_grpc.SynthesizerServiceStub(channel)
            alice = auth(ALICE_KEY)
            voice = await register(channel, alice, sample_wav, name="alice's voice")
            items = [spb.BatchItemInput(name="one", text="Hello there.")]

            def create(md=alice):
                return synth.CreateBatchJob(
                    spb.CreateBatchJobRequest(voice_id=voice.voice_id, items=items), metadata=md
                )

            job = (await create()).job
            assert job.owner == "alice" and job.state == spb.BATCH_JOB_STATE_PENDING
            # No worker runs here (batch_workers=0): the first job stays unfinished.
            exc = await expect(grpc.StatusCode.RESOURCE_EXHAUSTED, create())
            assert "1" in exc.details() and "cancel" in exc.details()
            await create(auth(ADMIN_KEY))  # admins are not capped
            await synth.CancelBatchJob(spb.CancelBatchJobRequest(job_id=job.job_id), metadata=alice)
            assert (await create()).job.job_id != job.job_id  # room again
            listed = (await synth.ListBatchJobs(spb.ListBatchJobsRequest(), metadata=alice)).jobs
            assert {j.owner for j in listed} == {"alice"} and len(listed) == 2
    finally:
        await rt.stop()
