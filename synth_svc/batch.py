"""Batch job use cases ("briefs"): create, read, list, watch, cancel, download.

Creation validates everything up front (voice, every item name and text) and stores the
job and its items in one transaction: a job is never half created. Workers
(``synth_svc.worker``) do the rendering.
"""

from __future__ import annotations

import asyncio
from collections.abc import AsyncIterator, Callable
from datetime import datetime

from synth_svc.allocator_client import AllocatorClient
from synth_svc.domain.batch import FINISHED_JOB_STATES
from synth_svc.domain.formats import OutputFormat
from synth_svc.repository import Item, Job, JobRepository
from voiceslot import validation
from voiceslot.auth import Principal
from voiceslot.clock import Clock
from voiceslot.config import SynthConfig
from voiceslot.errors import InvalidArgument, NotFound
from voiceslot.ids import require_id
from voiceslot.pagination import decode_token, encode_token, page_size
from voiceslot.storage.base import Storage
from voiceslot.text import validate_item_name, validate_text
from voiceslot.waiting import wait_at_most


def validate_items(
    items: list[tuple[str, str]], *, max_items: int, max_chars: int
) -> list[tuple[str, str]]:
    """Every item's name and text checked, names unique; the first problem is reported with
    its index, e.g. ``items[3].name``."""
    if not items:
        raise InvalidArgument("items", "a batch job needs at least one item")
    if len(items) > max_items:
        raise InvalidArgument("items", f"at most {max_items} items per job")
    seen: set[str] = set()
    clean = []
    for i, (name, text) in enumerate(items):
        name = validate_item_name(name, field=f"items[{i}].name")
        if name in seen:
            raise InvalidArgument(f"items[{i}].name", f"{name!r} is used by an earlier item")
        seen.add(name)
        clean.append((name, validate_text(text, max_chars=max_chars, field=f"items[{i}].text")))
    return clean


class BatchJobs:
    def __init__(
        self,
        *,
        jobs: JobRepository,
        storage: Storage,
        config: SynthConfig,
        clock: Clock,
        allocator: Callable[[], AllocatorClient],
        presign_ttl_s: int,
    ) -> None:
        self.jobs = jobs
        self.storage = storage
        self.config = config
        self.clock = clock
        self._allocator = allocator
        self.presign_ttl_s = presign_ttl_s
        self.changed = asyncio.Condition()
        self.on_created: Callable[[], None] | None = None
        """Called after a job is stored: this replica's worker starts on it at once
        instead of at its next poll (``synth_svc.app`` wires it)."""

    @property
    def allocator(self) -> AllocatorClient:
        return self._allocator()

    async def notify(self) -> None:
        async with self.changed:
            self.changed.notify_all()

    async def create(
        self,
        who: Principal,
        *,
        voice_id: str,
        items: list[tuple[str, str]],
        fmt: OutputFormat,
        idempotency_key: str,
    ) -> Job:
        require_id("voice_id", voice_id, "v")
        key = validation.idempotency_key("idempotency_key", idempotency_key)
        if key and (existing := await self.jobs.find_by_idempotency_key(who.user, key)):
            return existing
        clean = validate_items(
            items, max_items=self.config.max_batch_items, max_chars=self.config.max_text_chars
        )
        # NOT_FOUND / INVALID_ARGUMENT before anything is stored. Asked with the caller's
        # own credential, so the allocator already hides other users' voices; checked
        # here too, as the job later runs with the synthesizer's own credential.
        voice = await self.allocator.get_voice(voice_id)
        if who.owner_filter() not in (None, voice.owner):
            raise NotFound(f"voice {voice_id} not found")
        job, _ = await self.jobs.create_job(
            owner=who.user,
            voice_id=voice_id,
            items=clean,
            encoding=fmt.encoding,
            sample_rate=fmt.sample_rate,
            idempotency_key=key,
            now=self.clock.now(),
            max_unfinished=None if who.is_admin else self.config.max_unfinished_jobs_per_user,
        )
        if self.on_created is not None:
            self.on_created()
        return job

    async def get(self, who: Principal, job_id: str) -> Job:
        require_id("job_id", job_id, "job")
        return await self.jobs.get_job(job_id, owner=who.owner_filter())

    async def items(self, who: Principal, job_id: str) -> list[tuple[Item, str]]:
        """Items with a download URL where the storage can make one."""
        await self.get(who, job_id)
        result = []
        for item in await self.jobs.list_items(job_id):
            url = ""
            if item.audio_key:
                url = (
                    await self.storage.download_url(item.audio_key, ttl_s=self.presign_ttl_s) or ""
                )
            result.append((item, url))
        return result

    async def list(self, who: Principal, *, size: int, token: str) -> tuple[list[Job], str]:
        limit = page_size(size)
        key = decode_token(token, arity=2)
        after = (datetime.fromisoformat(str(key[0])), str(key[1])) if key else None
        jobs = await self.jobs.list_jobs(owner=who.owner_filter(), after=after, limit=limit)
        next_token = (
            encode_token(jobs[-1].created_at.isoformat(), jobs[-1].id) if len(jobs) == limit else ""
        )
        return jobs, next_token

    async def cancel(self, who: Principal, job_id: str) -> Job:
        require_id("job_id", job_id, "job")
        job = await self.jobs.cancel_job(job_id, owner=who.owner_filter(), now=self.clock.now())
        await self.notify()
        return job

    async def watch(
        self, who: Principal, job_id: str, *, poll_s: float = 0.5
    ) -> AsyncIterator[Job]:
        """The job now, then at every change, until it finishes. Progress never goes
        backwards: it is derived from counters that only grow."""
        job = await self.get(who, job_id)
        yield job
        while job.state not in FINISHED_JOB_STATES:
            async with self.changed:
                await wait_at_most(poll_s, self.changed.wait())
            latest = await self.get(who, job_id)
            if (latest.state, latest.counts) != (job.state, job.counts):
                job = latest
                yield job

    async def download(self, who: Principal, job_id: str, item_id: str) -> AsyncIterator[bytes]:
        await self.get(who, job_id)
        require_id("item_id", item_id, "it")
        item = await self.jobs.get_item(job_id, item_id)
        if not item.audio_key:
            raise NotFound("audio of item", item_id)
        async for chunk in self.storage.stream(item.audio_key):
            yield chunk
