"""``voiceslot jobs``: batch jobs ("briefs") from the command line — create one from a
text file, list, show, watch with a live progress bar, cancel, download the audio.

A brief file holds one item a line: ``name<TAB>text``, or just the text (such an item is
named by its place among the items: ``item-0002`` for the second); blank lines and lines starting with ``#`` are
skipped. ``-`` reads standard input. With ``--json`` every command prints JSON instead of
tables and bars; ``watch --json`` prints one JSON object a line per progress update.
"""

from __future__ import annotations

import json
import sys
from collections.abc import Iterator
from pathlib import Path
from typing import Any, TextIO

import click
from rich.progress import (
    BarColumn,
    MofNCompleteColumn,
    Progress,
    ProgressColumn,
    Task,
    TaskProgressColumn,
    TextColumn,
    TimeElapsedColumn,
    TimeRemainingColumn,
)
from rich.table import Column, Table
from rich.text import Text

from voiceslot.audio import FILE_EXTENSIONS
from voiceslot.cli.client import stubs
from voiceslot.cli.output import (
    ENCODINGS_PB,
    Ctx,
    audio_format,
    audio_format_options,
    console,
    emit_json,
    err_console,
    to_dict,
)
from voiceslot.v1 import synthesizer_pb2 as spb

_ENCODING_NAMES = {v: k for k, v in ENCODINGS_PB.items()}
_FINISHED = (spb.BATCH_JOB_STATE_COMPLETED, spb.BATCH_JOB_STATE_CANCELLED)


class ItemsPerSecond(ProgressColumn):
    """Items done per second (rich's own speed columns count bytes)."""

    def render(self, task: Task) -> Text:
        return Text(f"{task.speed:.1f} items/s" if task.speed else "", style="progress.data.speed")


def job_state(value: int) -> str:
    return spb.BatchJobState.Name(value).removeprefix("BATCH_JOB_STATE_").lower()


def item_state(value: int) -> str:
    return spb.BatchItemState.Name(value).removeprefix("BATCH_ITEM_STATE_").lower()


def read_brief(lines: Iterator[str] | TextIO) -> list[tuple[str, str]]:
    """(name, text) per item of a brief file (see the module docstring)."""
    items: list[tuple[str, str]] = []
    for raw in lines:
        line = raw.rstrip("\r\n")
        if not line.strip() or line.lstrip().startswith("#"):
            continue
        name, sep, text = line.partition("\t")
        if not sep:
            name, text = f"item-{len(items) + 1:04d}", line
        items.append((name.strip(), text.strip()))
    return items


def progress_record(job: spb.BatchJob) -> dict[str, Any]:
    """One progress update as scripts read it (``watch --json``)."""
    return {
        "job_id": job.job_id,
        "state": job_state(job.state),
        "total": job.total_items,
        "succeeded": job.succeeded_items,
        "failed": job.failed_items,
        "progress": round(job.progress, 4),
    }


def _jobs_table(jobs: list[spb.BatchJob]) -> Table:
    table = Table(
        Column("job", no_wrap=True),
        "voice",
        "state",
        Column("done", justify="right"),
        Column("failed", justify="right"),
        "created",
    )
    for job in jobs:
        done = job.succeeded_items + job.failed_items
        table.add_row(
            job.job_id,
            job.voice_id,
            job_state(job.state),
            f"{done}/{job.total_items}",
            str(job.failed_items),
            f"{job.created_at.ToDatetime():%Y-%m-%d %H:%M:%S}",
        )
    return table


@click.group()
def jobs() -> None:
    """Batch jobs ("briefs"): many texts rendered to audio files in one voice."""


@jobs.command("create")
@click.option("--voice", "voice_id", required=True, help="Voice id (one of yours).")
@audio_format_options
@click.option("--idempotency-key", default="", help="Sending it again returns the same job.")
@click.option("--watch", "then_watch", is_flag=True, help="Follow its progress once created.")
@click.argument("brief", type=click.File("r", encoding="utf-8"))
@click.pass_obj
def jobs_create(
    obj: Ctx,
    voice_id: str,
    encoding: str,
    rate: int,
    idempotency_key: str,
    then_watch: bool,
    brief: TextIO,
) -> None:
    """Create a job from BRIEF (a file, or - for standard input)."""
    items = read_brief(brief)
    if not items:
        raise click.UsageError("the brief has no items (one text a line)")
    request = spb.CreateBatchJobRequest(
        voice_id=voice_id,
        items=[spb.BatchItemInput(name=name, text=text) for name, text in items],
        format=audio_format(encoding, rate),
        idempotency_key=idempotency_key,
    )
    with stubs(obj.connection()) as (_, synth, md):
        job = synth.CreateBatchJob(request, metadata=md, timeout=60).job
    if then_watch:
        _watch(obj, job.job_id)
    elif obj.json:
        emit_json(to_dict(job))
    else:
        console.print(
            f"job [bold]{job.job_id}[/bold]: {job.total_items} items, {job_state(job.state)}"
        )


@jobs.command("list")
@click.option("--page-size", default=100, show_default=True)
@click.pass_obj
def jobs_list(obj: Ctx, page_size: int) -> None:
    """Your jobs (everyone's for admins), newest first."""
    found: list[spb.BatchJob] = []
    with stubs(obj.connection()) as (_, synth, md):
        token = ""
        while True:
            page = synth.ListBatchJobs(
                spb.ListBatchJobsRequest(page_size=page_size, page_token=token), metadata=md
            )
            found += page.jobs
            token = page.next_page_token
            if not token:
                break
    if obj.json:
        emit_json([to_dict(j) for j in found])
    elif found:
        console.print(_jobs_table(found))
    else:
        console.print("no jobs yet")


@jobs.command("show")
@click.argument("job_id")
@click.pass_obj
def jobs_show(obj: Ctx, job_id: str) -> None:
    """A job and its items."""
    with stubs(obj.connection()) as (_, synth, md):
        answer = synth.GetBatchJob(
            spb.GetBatchJobRequest(job_id=job_id, include_items=True), metadata=md
        )
    if obj.json:
        emit_json({"job": to_dict(answer.job), "items": [to_dict(i) for i in answer.items]})
        return
    console.print(_jobs_table([answer.job]))
    table = Table("item", "state", Column("attempts", justify="right"), "audio", "error")
    for item in answer.items:
        seconds = item.audio_duration.ToNanoseconds() / 1e9
        table.add_row(
            item.name,
            item_state(item.state),
            str(item.attempts),
            f"{seconds:.1f} s" if seconds else "",
            item.error,
        )
    console.print(table)


@jobs.command("watch")
@click.argument("job_id")
@click.pass_obj
def jobs_watch(obj: Ctx, job_id: str) -> None:
    """Follow a job until it ends: a progress bar (items, failures, rate, time left)."""
    _watch(obj, job_id)


def _watch(obj: Ctx, job_id: str) -> None:
    last: spb.BatchJob | None = None
    with stubs(obj.connection()) as (_, synth, md):
        updates = synth.WatchBatchJob(spb.WatchBatchJobRequest(job_id=job_id), metadata=md)
        if obj.json:
            for update in updates:
                last = update.job
                click.echo(json.dumps(progress_record(last)), nl=True)
                sys.stdout.flush()
        else:
            progress = Progress(
                TextColumn("[bold]{task.description}"),
                BarColumn(),
                MofNCompleteColumn(),
                TaskProgressColumn(),
                TextColumn("{task.fields[failed]} failed"),
                ItemsPerSecond(),
                TimeElapsedColumn(),
                TimeRemainingColumn(),
                console=err_console,
            )
            with progress:
                task = progress.add_task(job_id, total=None, failed=0)
                for update in updates:
                    last = update.job
                    progress.update(
                        task,
                        total=last.total_items,
                        completed=last.succeeded_items + last.failed_items,
                        failed=last.failed_items,
                    )
    if last is None:
        raise click.ClickException(f"no progress arrived for {job_id}")
    if not obj.json:
        console.print(
            f"job {last.job_id} {job_state(last.state)}: {last.succeeded_items} succeeded, "
            f"{last.failed_items} failed of {last.total_items}"
        )
    if last.state not in _FINISHED:
        raise click.ClickException(f"the watch ended while the job was {job_state(last.state)}")


@jobs.command("cancel")
@click.argument("job_id")
@click.pass_obj
def jobs_cancel(obj: Ctx, job_id: str) -> None:
    """Cancel a job: items not yet rendered are not rendered."""
    with stubs(obj.connection()) as (_, synth, md):
        job = synth.CancelBatchJob(spb.CancelBatchJobRequest(job_id=job_id), metadata=md).job
    if obj.json:
        emit_json(to_dict(job))
    else:
        console.print(f"job {job.job_id} {job_state(job.state)}")


@jobs.command("download")
@click.argument("job_id")
@click.option(
    "-o",
    "--out",
    "out_dir",
    type=click.Path(path_type=Path, file_okay=False),
    default=Path("."),
    show_default=True,
    help="Directory for the files (<item name>.<extension>).",
)
@click.pass_obj
def jobs_download(obj: Ctx, job_id: str, out_dir: Path) -> None:
    """Download every rendered item of a job."""
    out_dir.mkdir(parents=True, exist_ok=True)
    written: list[dict[str, Any]] = []
    with stubs(obj.connection()) as (_, synth, md):
        answer = synth.GetBatchJob(
            spb.GetBatchJobRequest(job_id=job_id, include_items=True), metadata=md
        )
        extension = FILE_EXTENSIONS[_ENCODING_NAMES.get(answer.job.format.encoding, "wav")]
        done = [i for i in answer.items if i.state == spb.BATCH_ITEM_STATE_SUCCEEDED]
        progress = Progress(
            TextColumn("[bold]downloading"),
            BarColumn(),
            MofNCompleteColumn(),
            TimeElapsedColumn(),
            console=err_console,
            disable=obj.json,
        )
        with progress:
            task = progress.add_task("items", total=len(done))
            for item in done:
                # Item names are checked by the server ([A-Za-z0-9._-], no leading dot),
                # so they are safe as file names.
                path = out_dir / f"{item.name}.{extension}"
                tmp = path.with_name(f".{path.name}.part")
                size = 0
                with open(tmp, "wb") as f:
                    for chunk in synth.DownloadBatchItemAudio(
                        spb.DownloadBatchItemAudioRequest(job_id=job_id, item_id=item.item_id),
                        metadata=md,
                    ):
                        f.write(chunk.chunk)
                        size += len(chunk.chunk)
                tmp.replace(path)
                written.append({"item": item.name, "file": str(path), "bytes": size})
                progress.advance(task)
    if obj.json:
        emit_json(written)
    else:
        console.print(f"{len(written)} files in {out_dir}")
