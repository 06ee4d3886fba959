"""The batch worker against a real database (SQLite and PostgreSQL): claims never overlap
between replicas, a dead worker's items are taken over once their lease runs out (and its
late answer is fenced off), a stopping worker hands its items back at once, a failed item
keeps no audio, and a storage hiccup is retried without leaving temporary files.

The engine is a stand-in (``ScriptedSynthesizer``): what is under test here is claiming,
leasing, recording and storing, not speech."""

from __future__ import annotations

import asyncio
import os
import random
from collections import Counter
from collections.abc import AsyncIterator, Callable
from dataclasses import dataclass, field
from datetime import UTC, datetime, timedelta
from pathlib import Path

import pytest

from synth_svc.app import migrate
from synth_svc.batch import BatchJobs
from synth_svc.domain.batch import ItemState, JobState
from synth_svc.domain.formats import OutputFormat
from synth_svc.repository import JobRepository
from synth_svc.service import SpeechRequest
from synth_svc.worker import BatchWorker, audio_key
from voiceslot.clock import ManualClock, SystemClock
from voiceslot.config import StorageConfig, SynthConfig
from voiceslot.db import create_engine, session_factory
from voiceslot.providers.errors import InvalidInput
from voiceslot.storage.local import LocalStorage

from .support import eventually

LEASE = timedelta(seconds=30)


@pytest.fixture(params=["sqlite", pytest.param("postgres", marks=pytest.mark.postgres)])
def db_url(request: pytest.FixtureRequest, tmp_path: Path) -> str:
    if request.param == "sqlite":
        return f"sqlite+aiosqlite:///{tmp_path / 'synth.sqlite3'}"
    return request.getfixturevalue("postgres_url")


@pytest.fixture
async def make_repo(db_url: str) -> AsyncIterator[Callable[[], JobRepository]]:
    """Repositories on one migrated database, each with its own engine, as replicas."""
    await migrate(db_url)
    engines = []

    def factory() -> JobRepository:
        engine = create_engine(db_url)
        engines.append(engine)
        return JobRepository(session_factory(engine))

    yield factory
    for engine in engines:
        await engine.dispose()


@dataclass
class ScriptedSynthesizer:
    """Stands in for ``Synthesizer.synthesize``: WAV-ish bytes per text; texts in
    ``failing`` raise that error; while ``gate`` is clear every call waits on it."""

    calls: Counter[str] = field(default_factory=Counter)
    failing: dict[str, Exception] = field(default_factory=dict)
    gate: asyncio.Event = field(default_factory=asyncio.Event)

    def __post_init__(self) -> None:
        self.gate.set()

    async def synthesize(
        self, request: SpeechRequest, *, deadline: float
    ) -> tuple[bytes, OutputFormat, float]:
        self.calls[request.text] += 1
        await self.gate.wait()
        if error := self.failing.get(request.text):
            raise error
        return f"audio of {request.text}".encode(), request.format, 1.0


@pytest.fixture
def storage(tmp_path: Path) -> LocalStorage:
    return LocalStorage(tmp_path / "store")


@pytest.fixture
async def make_worker(storage: LocalStorage, make_repo):
    workers: list[BatchWorker] = []

    def factory(
        synthesizer: ScriptedSynthesizer,
        *,
        name: str,
        clock=None,
        slots: int = 2,
        repo: JobRepository | None = None,
        max_attempts: int = 4,
    ) -> BatchWorker:
        repo = repo or make_repo()
        config = SynthConfig(batch_workers=slots, item_max_attempts=max_attempts)
        clock = clock or SystemClock()
        batch = BatchJobs(
            jobs=repo,
            storage=storage,
            config=config,
            clock=clock,
            allocator=lambda: None,
            presign_ttl_s=3600,
        )
        worker = BatchWorker(
            jobs=repo,
            batch=batch,
            synthesizer=synthesizer,  # type: ignore[arg-type]
            storage=storage,
            config=config,
            storage_config=StorageConfig(),
            clock=clock,
            poll_s=0.05,
            rng=random.Random(0),
            item_lease=LEASE,
            holder=name,
        )
        workers.append(worker)
        return worker

    yield factory
    for worker in workers:
        await worker.stop(grace_s=1.0)


async def new_job(repo: JobRepository, texts: list[str], *, now: datetime | None = None):
    job, _ = await repo.create_job(
        owner="admin",
        voice_id="v_" + "1" * 32,
        items=[(f"item-{i}", t) for i, t in enumerate(texts)],
        encoding="wav",
        sample_rate=0,
        idempotency_key=None,
        now=now or datetime.now(UTC),
    )
    return job


async def finished(repo: JobRepository, job_id: str):
    job = await repo.get_job(job_id, owner=None)
    return job if job.state == JobState.COMPLETED else None


async def test_two_workers_share_a_job_without_rendering_anything_twice(make_repo, make_worker):
    texts = [f"Sentence {i}." for i in range(40)]
    repo = make_repo()
    job = await new_job(repo, texts)
    engine = ScriptedSynthesizer()
    engine.gate.clear()  # every render waits: one worker cannot finish before the other starts
    a, b = make_worker(engine, name="a", slots=3), make_worker(engine, name="b", slots=3)
    a.start(), b.start()
    try:
        await eventually(lambda: both_hold_items(repo, job.id), timeout=30, what="both busy")
        engine.gate.set()
        done = await eventually(lambda: finished(repo, job.id), timeout=30, what="job done")
    finally:
        await asyncio.gather(a.stop(), b.stop())
    assert (done.counts.succeeded, done.counts.failed, done.counts.progress) == (40, 0, 1.0)
    assert engine.calls == Counter({t: 1 for t in texts})
    items = await repo.list_items(job.id)
    assert all(i.state == ItemState.SUCCEEDED and i.attempts == 1 for i in items)
    holders = await claimed_by(repo, job.id)
    assert set(holders.values()) == {"a", "b"}, "both replicas took part"


async def test_a_worker_woken_as_it_is_stopped_stops(make_worker):
    """A wake-up (an item finishing, a job created) in the same turn as ``stop()``: the
    worker's loop ends instead of going round forever (``asyncio.wait_for`` on Python
    3.11 dropped that cancel, and ``stop()`` hung; ``voiceslot.waiting``)."""
    worker = make_worker(ScriptedSynthesizer(), name="w")
    worker.start()
    await asyncio.sleep(0.3)  # idle: parked between polls most of the time, as in production
    worker.wake()
    stopping = asyncio.create_task(worker.stop(grace_s=1.0))
    # asyncio.wait, not wait_for: the old stop() swallowed wait_for's cancel at the
    # deadline and then returned, which would have passed.
    done, _ = await asyncio.wait({stopping}, timeout=30)
    assert stopping in done, "stop() hung: the worker's loop went on after its cancel"


async def both_hold_items(repo: JobRepository, job_id: str) -> bool:
    return set((await claimed_by(repo, job_id)).values()) >= {"a", "b"}


async def claimed_by(repo: JobRepository, job_id: str) -> dict[str, str | None]:
    from sqlalchemy import select

    from synth_svc.models import BatchItemRow

    async with repo._sessions() as s:
        rows = await s.execute(
            select(BatchItemRow.id, BatchItemRow.claimed_by).where(BatchItemRow.job_id == job_id)
        )
        return dict(rows.all())


async def test_a_dead_workers_item_is_taken_over_after_its_lease_and_its_late_answer_fenced(
    make_repo, make_worker, storage
):
    clock = ManualClock(datetime.now(UTC))
    repo = make_repo()
    job = await new_job(repo, ["Only item."], now=clock.now())
    # Replica "dead" claims the item and is never heard of again (until too late).
    [lost] = await make_repo().claim(now=clock.now(), limit=5, lease=LEASE, holder="dead")
    engine = ScriptedSynthesizer()
    survivor = make_worker(engine, name="survivor", clock=clock)
    assert await survivor.run_once() == 0, "claimed while its lease runs"
    clock.advance(LEASE.total_seconds() + 1)
    assert await survivor.run_once() == 1
    done = await eventually(lambda: finished(repo, job.id), what="job done")
    [item] = await repo.list_items(job.id)
    assert (item.state, item.attempts) == (ItemState.SUCCEEDED, 2)
    assert (await claimed_by(repo, job.id))[item.id] == "survivor"
    recorded = await storage.get(audio_key(lost))
    # The dead replica wakes up and finishes its render: fenced off, counted nowhere, and
    # the file the survivor recorded is still there.
    late_engine = ScriptedSynthesizer()
    await make_worker(late_engine, name="dead", clock=clock).process(lost)
    assert late_engine.calls["Only item."] == 1
    again = await repo.get_job(job.id, owner=None)
    assert again.counts == done.counts and again.counts.succeeded == 1
    assert (await repo.list_items(job.id))[0].attempts == 2
    assert await storage.get(audio_key(lost)) == recorded
    assert not await repo.finish(
        lost, now=clock.now(), outcome=ItemState.FAILED, error="late", audio_seconds=0
    )


async def test_a_stopping_worker_hands_its_items_back_at_once(make_repo, make_worker):
    clock = ManualClock(datetime.now(UTC))
    repo = make_repo()
    job = await new_job(repo, ["First.", "Second."], now=clock.now())
    stuck = ScriptedSynthesizer()
    stuck.gate.clear()  # renders never finish
    leaving = make_worker(stuck, name="leaving", clock=clock)
    assert await leaving.run_once() == 2
    await eventually(lambda: sum(stuck.calls.values()) == 2, what="both rendering")
    await leaving.stop(grace_s=0.05)
    items = await repo.list_items(job.id)
    assert [(i.state, i.attempts) for i in items] == [(ItemState.PENDING, 0)] * 2
    # No lease to wait out: another replica takes them on the spot (same clock).
    fresh = make_worker(ScriptedSynthesizer(), name="fresh", clock=clock)
    assert await fresh.run_once() == 2
    done = await eventually(lambda: finished(repo, job.id), what="job done")
    assert done.counts.succeeded == 2
    assert [i.attempts for i in await repo.list_items(job.id)] == [1, 1]


async def test_a_finally_failed_item_keeps_no_audio(make_repo, make_worker, storage):
    repo = make_repo()
    job = await new_job(repo, ["Good.", "Bad."])
    engine = ScriptedSynthesizer(failing={"Bad.": InvalidInput("text refused", status_code=400)})
    # An earlier attempt at "Bad." stored its audio and died before recording it.
    [first, second] = await repo.list_items(job.id)
    orphan = f"audio/{job.id}/{second.id}.wav"
    await storage.put(orphan, b"left behind")
    worker = make_worker(engine, name="w")
    worker.start()
    try:
        done = await eventually(lambda: finished(repo, job.id), what="job done")
    finally:
        await worker.stop()
    assert (done.counts.succeeded, done.counts.failed, done.counts.progress) == (1, 1, 1.0)
    items = {i.name: i for i in await repo.list_items(job.id)}
    assert items["item-1"].state == ItemState.FAILED and items["item-1"].attempts == 1
    assert items["item-1"].error == "InvalidInput: text refused"
    assert not await storage.exists(orphan)
    assert [o.key async for o in storage.list("audio/")] == [f"audio/{job.id}/{first.id}.wav"]


async def test_a_storage_hiccup_is_retried_and_leaves_no_temporary_file(
    make_repo, make_worker, storage, monkeypatch
):
    repo = make_repo()
    job = await new_job(repo, ["Persist me."])
    real_fsync, failures = os.fsync, []

    def flaky_fsync(fd: int) -> None:
        if not failures:
            failures.append(fd)
            raise OSError(5, "Input/output error")
        real_fsync(fd)

    monkeypatch.setattr(os, "fsync", flaky_fsync)
    engine = ScriptedSynthesizer()
    worker = make_worker(engine, name="w")
    worker.start()
    try:
        done = await eventually(lambda: finished(repo, job.id), timeout=15, what="job done")
    finally:
        await worker.stop()
    assert failures, "the fault was not hit"
    assert done.counts.succeeded == 1
    [item] = await repo.list_items(job.id)
    assert item.attempts == 2 and engine.calls["Persist me."] == 2
    leftovers = [p.name for p in storage.root.rglob("*") if p.name.startswith(".tmp-")]
    assert leftovers == []


class GatedStorage(LocalStorage):
    """Local storage whose writes wait until ``gate`` is set."""

    def __init__(self, root: Path) -> None:
        super().__init__(root)
        self.gate = asyncio.Event()
        self.waiting = 0

    async def put(self, key: str, data: bytes):  # type: ignore[override]
        self.waiting += 1
        await self.gate.wait()
        self.waiting -= 1
        return await super().put(key, data)


async def test_a_slot_takes_the_next_item_while_the_last_one_is_being_stored(
    make_repo, make_worker, tmp_path, monkeypatch
):
    repo = make_repo()
    job = await new_job(repo, [f"Item {i}." for i in range(4)])
    storage = GatedStorage(tmp_path / "gated")
    engine = ScriptedSynthesizer()
    worker = make_worker(engine, name="w", slots=1, repo=repo)
    monkeypatch.setattr(worker, "storage", storage)
    assert await worker.run_once() == 1
    await eventually(lambda: storage.waiting == 1, what="first item storing")
    # One slot: the stored-but-unrecorded item no longer holds it...
    assert await worker.run_once() == 1
    await eventually(lambda: storage.waiting == 2, what="second item storing")
    # ...but no more than one slot's worth of items may be storing on top of it.
    assert await worker.run_once() == 0
    assert sum(engine.calls.values()) == 2
    storage.gate.set()
    worker.start()
    done = await eventually(lambda: finished(repo, job.id), what="job done")
    assert done.counts.succeeded == 4 and sum(engine.calls.values()) == 4
