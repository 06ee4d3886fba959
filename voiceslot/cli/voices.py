"""``voiceslot voices``: register (with a progress bar), list, show and delete voices."""

from __future__ import annotations

import time
from pathlib import Path
from typing import Any

import click
from rich.table import Column, Table

from voiceslot.cli.client import register_requests, stubs
from voiceslot.cli.output import Ctx, console, emit_json, err_console, state_name, to_dict
from voiceslot.v1 import allocator_pb2 as apb
from voiceslot.v1 import common_pb2


@click.group()
def voices() -> None:
    """Register, list, show and delete voices."""


def _voice_rows(items: list[apb.Voice]) -> Table:
    # Ids are copied by people: they never wrap; the name column gives way instead.
    table = Table(
        Column("voice id", no_wrap=True),
        Column("name", overflow="ellipsis", max_width=24),
        "provider",
        "state",
        "leases",
        "owner",
    )
    for v in items:
        table.add_row(
            v.voice_id,
            v.display_name,
            v.provider,
            state_name(v.state),
            str(v.active_leases),
            v.owner,
        )
    return table


@voices.command("add")
@click.argument("sample", type=click.Path(path_type=Path, exists=True, dir_okay=False))
@click.option("--name", required=True, help="Display name.")
@click.option("--provider", default="", help="Provider account (default: the server's).")
@click.option("--language", default="en", show_default=True)
@click.option(
    "--idempotency-key", default="", help="Re-running with the same key returns the same voice."
)
@click.option(
    "--wait/--no-wait", default=True, show_default=True, help="Wait until the voice is cloned."
)
@click.option("--timeout", default=600.0, show_default=True, help="Seconds to wait with --wait.")
@click.pass_obj
def voices_add(
    obj: Ctx,
    sample: Path,
    name: str,
    provider: str,
    language: str,
    idempotency_key: str,
    wait: bool,
    timeout: float,
) -> None:
    """Register a voice from a SAMPLE recording (WAV/FLAC/OGG) and clone it."""
    data = sample.read_bytes()

    metadata = apb.RegisterVoiceMetadata(
        display_name=name, provider=provider, language=language, idempotency_key=idempotency_key
    )
    with stubs(obj.connection()) as (alloc, _, md):
        voice = alloc.RegisterVoice(
            register_requests(data, metadata), metadata=md, timeout=120
        ).voice
        if wait:
            voice = _wait_ready(alloc, md, voice.voice_id, timeout=timeout, quiet=obj.json)
    if obj.json:
        emit_json(to_dict(voice))
    else:
        console.print(
            f"voice [bold]{voice.voice_id}[/bold] ({voice.display_name}) is {state_name(voice.state)}"
        )


def _wait_ready(alloc: Any, md: Any, voice_id: str, *, timeout: float, quiet: bool) -> apb.Voice:
    """Ask for the voice to be made active and follow it until it is (lease released)."""
    deadline = time.monotonic() + timeout
    with err_console.status("cloning…", spinner="dots") if not quiet else _nothing():
        while True:
            resp = alloc.EnsureActiveVoice(
                apb.EnsureActiveVoiceRequest(voice_id=voice_id, lease_holder="cli"),
                metadata=md,
                timeout=30,
            )
            if resp.HasField("ready"):
                alloc.ReleaseLease(
                    apb.ReleaseLeaseRequest(lease_id=resp.ready.lease.lease_id), metadata=md
                )
                return alloc.GetVoice(apb.GetVoiceRequest(voice_id=voice_id), metadata=md).voice
            if resp.voice.state == common_pb2.VOICE_STATE_FAILED:
                raise click.ClickException(f"cloning failed: {resp.voice.last_error}")
            remaining = deadline - time.monotonic()
            if remaining <= 0:
                raise click.ClickException(
                    f"voice {voice_id} is still {state_name(resp.voice.state)}"
                )
            try:
                for update in alloc.WatchVoice(
                    apb.WatchVoiceRequest(voice_id=voice_id),
                    metadata=md,
                    timeout=min(remaining, 30),
                ):
                    if update.voice.state == common_pb2.VOICE_STATE_FAILED:
                        # Asking again would re-queue it; the error will not change by itself.
                        raise click.ClickException(f"cloning failed: {update.voice.last_error}")
                    if update.voice.state == common_pb2.VOICE_STATE_READY:
                        break
            except Exception as exc:  # a watch deadline just means: ask again
                if "DEADLINE_EXCEEDED" not in str(exc):
                    raise


class _nothing:
    def __enter__(self) -> None:
        return None

    def __exit__(self, *exc: object) -> None:
        return None


@voices.command("list")
@click.option("--page-size", default=100, show_default=True)
@click.pass_obj
def voices_list(obj: Ctx, page_size: int) -> None:
    """List voices (yours; all of them for admins)."""
    items: list[apb.Voice] = []
    with stubs(obj.connection()) as (alloc, _, md):
        token = ""
        while True:
            resp = alloc.ListVoices(
                apb.ListVoicesRequest(page_size=page_size, page_token=token), metadata=md
            )
            items.extend(resp.voices)
            token = resp.next_page_token
            if not token:
                break
    if obj.json:
        emit_json([to_dict(v) for v in items])
    elif items:
        console.print(_voice_rows(items))
    else:
        console.print("no voices yet: voiceslot voices add SAMPLE.wav --name NAME")


@voices.command("show")
@click.argument("voice_id")
@click.pass_obj
def voices_show(obj: Ctx, voice_id: str) -> None:
    """Show one voice and its recent events."""
    with stubs(obj.connection()) as (alloc, _, md):
        voice = alloc.GetVoice(apb.GetVoiceRequest(voice_id=voice_id), metadata=md).voice
        events = alloc.ListVoiceEvents(
            apb.ListVoiceEventsRequest(voice_id=voice_id, page_size=10), metadata=md
        ).events
    if obj.json:
        emit_json({"voice": to_dict(voice), "events": [to_dict(e) for e in events]})
        return
    console.print(_voice_rows([voice]))
    if voice.last_error:
        console.print(f"last error: {voice.last_error}")
    for e in events:
        reason = common_pb2.EventReason.Name(e.reason).removeprefix("EVENT_REASON_").lower()
        console.print(f"  {e.occurred_at.ToDatetime():%Y-%m-%d %H:%M:%S}  {reason:<22} {e.message}")


@voices.command("rm")
@click.argument("voice_id")
@click.option("--force", is_flag=True, help="Delete even while leased.")
@click.pass_obj
def voices_rm(obj: Ctx, voice_id: str, force: bool) -> None:
    """Delete a voice: its remote copy, its sample and its record."""
    with stubs(obj.connection()) as (alloc, _, md):
        alloc.DeleteVoice(apb.DeleteVoiceRequest(voice_id=voice_id, force=force), metadata=md)
    if obj.json:
        emit_json({"deleted": voice_id})
    else:
        console.print(f"deleted {voice_id}")
