"""``voiceslot``: serve the services, manage voices, speak text.

Every command prints for people by default and JSON with ``--json``.
"""

from __future__ import annotations

import asyncio
import json
import logging
import os
import sys
import time
from pathlib import Path

import click
from rich.progress import BarColumn, DownloadColumn, Progress, TextColumn, TimeElapsedColumn

from voiceslot import eventloop
from voiceslot.cli.client import arriving_text, live_requests, stubs
from voiceslot.cli.jobs import jobs
from voiceslot.cli.output import (
    Ctx,
    audio_format,
    audio_format_options,
    console,
    emit_json,
    err_console,
)
from voiceslot.cli.speech_flags import speech_option_flags
from voiceslot.cli.voices import voices
from voiceslot.config import load_settings
from voiceslot.logs import configure_logging
from voiceslot.v1 import allocator_pb2 as apb
from voiceslot.v1 import synthesizer_pb2 as spb


@click.group()
@click.option(
    "--config",
    "config_file",
    type=click.Path(path_type=Path, exists=True, dir_okay=False),
    help="YAML settings file (also VOICESLOT_CONFIG).",
)
@click.option("--target", help="Server address host:port (default: the configured listen address).")
@click.option(
    "--api-key", envvar="VOICESLOT_API_KEY", help="API key (default: the local admin key)."
)
@click.option("--json", "as_json", is_flag=True, help="Print machine-readable JSON.")
@click.pass_context
def cli(
    ctx: click.Context,
    config_file: Path | None,
    target: str | None,
    api_key: str | None,
    as_json: bool,
) -> None:
    """voiceslot: cloned-voice slots and synthesis."""
    try:
        settings = load_settings(config_file)
    except Exception as exc:  # pydantic's message names every bad field
        raise click.UsageError(f"invalid configuration: {exc}") from exc
    ctx.obj = Ctx(settings, target, api_key, as_json)


@cli.command()
@click.option(
    "--only",
    type=click.Choice(["allocator", "synth"]),
    multiple=True,
    help="Run only this service (repeatable). Default: both.",
)
@click.option("--listen", help="host:port to listen on (port 0: any free port).")
@click.option(
    "--port-file", type=click.Path(path_type=Path), help="Write the bound port here once serving."
)
@click.option(
    "--workers",
    type=click.IntRange(1, 64),
    help="Server processes sharing the port (SO_REUSEPORT; needs PostgreSQL). Default: workers.",
)
@click.option("--worker", "worker_index", type=int, hidden=True)  # set by the --workers parent
@click.pass_obj
def serve(
    obj: Ctx,
    only: tuple[str, ...],
    listen: str | None,
    port_file: Path | None,
    workers: int | None,
    worker_index: int | None,
) -> None:
    """Run the services until SIGTERM/SIGINT (in-flight calls finish first)."""
    from voiceslot.cli.runtime import SERVICES
    from voiceslot.cli.runtime import serve as run
    from voiceslot.rpc.server import install_stop_signals

    only = only or SERVICES
    settings = obj.settings.model_copy(update={"listen": listen}) if listen else obj.settings
    if worker_index is not None:
        # The parent serves the workers' merged metrics; each worker only records them.
        settings = settings.model_copy(update={"metrics_port": None})
    configure_logging(level=settings.log_level, fmt=settings.log_format)

    def ready(port: int) -> None:
        if port_file:
            tmp = port_file.with_suffix(".tmp")
            tmp.write_text(str(port))
            tmp.replace(port_file)
        if worker_index is not None:
            return
        # On stdout, flushed: scripts and tests wait for this line (logs go to stderr).
        count = workers or settings.workers
        processes = f" ({count} worker processes)" if count > 1 else ""
        click.echo(f"voiceslot serving {', '.join(only)} on port {port}{processes}")
        sys.stdout.flush()

    count = workers or settings.workers
    if count > 1 and worker_index is None:
        from voiceslot.cli.workers import WorkersRefused, run_workers

        try:
            code = run_workers(
                settings, count=count, only=only, on_ready=ready, log=err_console.print
            )
        except WorkersRefused as exc:
            raise click.UsageError(str(exc)) from None
        sys.exit(code)

    async def serve_until_stopped() -> None:
        stop = asyncio.Event()
        install_stop_signals(stop)
        await run(
            settings, only=only, stop=stop, on_ready=ready, reuse_port=worker_index is not None
        )
        # Shutdown has finished: calls drained, work committed or handed back. End the
        # process here, not through asyncio.run's clean-up (which waits without limit for
        # every leftover task to accept its cancellation) nor the interpreter's exit
        # (which joins every non-daemon thread; aiosqlite runs one per connection).
        leftovers = sorted(
            t.get_name() for t in asyncio.all_tasks() if t is not asyncio.current_task()
        )
        if leftovers:
            logging.getLogger("voiceslot.runtime").warning(
                "tasks still running at exit: %s", leftovers
            )
        logging.shutdown()
        sys.stdout.flush()
        os._exit(0)

    eventloop.run(serve_until_stopped(), choice=settings.event_loop)


@cli.command()
@click.option("--voice", "voice_id", required=True, help="Voice id.")
@click.option(
    "--out",
    "-o",
    type=click.Path(path_type=Path, dir_okay=False, allow_dash=True),
    required=True,
    help="Audio file to write (written whole at the end); '-': standard output, as it comes.",
)
@audio_format_options
@speech_option_flags
@click.option("--language", default="", help="Language (default: the voice's).")
@click.option("--seed", default=0, help="Seed for repeatable output (0: random).")
@click.option("--timeout", default=600.0, show_default=True)
@click.option(
    "--stdin",
    "from_stdin",
    is_flag=True,
    help="Speak standard input as it arrives (pipe an LLM into it), sentence by sentence "
    "through SynthesizeLive; EOF ends it.",
)
@click.argument("text", required=False)
@click.pass_obj
def say(
    obj: Ctx,
    voice_id: str,
    out: Path,
    encoding: str,
    rate: int,
    options: spb.SpeechOptions,
    language: str,
    seed: int,
    timeout: float,
    from_stdin: bool,
    text: str | None,
) -> None:
    """Speak TEXT (or, with --stdin, standard input as it arrives) in a voice, streamed
    into an audio file."""
    if from_stdin == (text is not None):
        raise click.UsageError("give TEXT or --stdin, one of them")
    if from_stdin and seed:
        raise click.UsageError("--seed does not apply to --stdin (a live turn has no seed)")
    to_stdout = str(out) == "-"
    started = time.perf_counter()
    first_chunk_s = None
    written = 0
    tmp = Path(os.devnull) if to_stdout else out.with_name(f".{out.name}.part")
    fmt = None
    progress = Progress(
        TextColumn("[bold]speaking"),
        BarColumn(),
        DownloadColumn(),
        TimeElapsedColumn(),
        console=err_console,
        disable=obj.json,
        transient=True,
    )
    try:
        with stubs(obj.connection()) as (_, synth, md), open(tmp, "wb") as f, progress:
            sink = sys.stdout.buffer if to_stdout else f
            task = progress.add_task("audio", total=None)
            chunks = (
                synth.SynthesizeLive(
                    live_requests(
                        spb.LiveStart(
                            voice_id=voice_id,
                            format=audio_format(encoding, rate),
                            language=language,
                            options=options,
                        ),
                        arriving_text(sys.stdin.fileno()),
                    ),
                    metadata=md,
                    timeout=timeout,
                )
                if from_stdin
                else synth.SynthesizeStream(
                    spb.SynthesizeStreamRequest(
                        voice_id=voice_id,
                        text=text,
                        language=language,
                        seed=seed,
                        format=audio_format(encoding, rate),
                        options=options,
                    ),
                    metadata=md,
                    timeout=timeout,
                )
            )
            for chunk in chunks:
                if first_chunk_s is None:
                    first_chunk_s = time.perf_counter() - started
                    fmt = chunk.format
                sink.write(chunk.audio_chunk)
                if to_stdout:
                    sink.flush()  # a player reading the pipe hears it now
                written += len(chunk.audio_chunk)
                progress.update(task, advance=len(chunk.audio_chunk))
        if not to_stdout:
            tmp.replace(out)
    finally:
        if not to_stdout:
            tmp.unlink(missing_ok=True)
    result = {
        "file": str(out),
        "bytes": written,
        "encoding": encoding,
        "sample_rate_hz": fmt.sample_rate_hz if fmt else rate,
        "first_chunk_ms": round((first_chunk_s or 0) * 1000, 1),
        "total_ms": round((time.perf_counter() - started) * 1000, 1),
    }
    if to_stdout and obj.json:  # standard output carries the audio: the summary goes to stderr
        click.echo(json.dumps(result, sort_keys=True), err=True)
    elif to_stdout:
        err_console.print(
            f"wrote {written} bytes ({result['sample_rate_hz']} Hz) — first audio after "
            f"{result['first_chunk_ms']:.0f} ms, done in {result['total_ms']:.0f} ms"
        )
    elif obj.json:
        emit_json(result)
    else:
        console.print(
            f"wrote {out} ({written} bytes, {result['sample_rate_hz']} Hz) — first audio after "
            f"{result['first_chunk_ms']:.0f} ms, done in {result['total_ms']:.0f} ms"
        )


@cli.command()
@click.option(
    "--sample",
    type=click.Path(path_type=Path, exists=True, dir_okay=False),
    help="Your recording (WAV/FLAC/OGG, 3-30 s). Default: a synthetic voiced sample.",
)
@click.option(
    "--text", default="Hello! This sentence was spoken in a cloned voice.", show_default=True
)
@click.option(
    "--out",
    "-o",
    type=click.Path(path_type=Path, dir_okay=False),
    default=Path("demo.wav"),
    show_default=True,
)
@click.option(
    "--model-dir",
    type=click.Path(path_type=Path, exists=True, file_okay=False),
    help="A local Coqui model directory instead of downloading XTTS v2.",
)
@click.option(
    "--tiny-model",
    is_flag=True,
    help="Build a tiny random-weight XTTS (offline smoke run: the audio is noise, not speech).",
)
@click.pass_obj
def demo(
    obj: Ctx, sample: Path | None, text: str, out: Path, model_dir: Path | None, tiny_model: bool
) -> None:
    """Run both services, clone a voice from a sample and speak TEXT into a WAV file."""
    from voiceslot.cli.demo import DemoFailed, run

    configure_logging(level="WARNING", fmt="console")
    if tiny_model and model_dir is None:
        from voiceslot.testing.tiny_models import build_tiny_xtts

        model_dir = obj.settings.data_dir / "tiny-xtts"
        if not (model_dir / "config.json").exists():
            with err_console.status("building a tiny XTTS model…"):
                build_tiny_xtts(model_dir)
    say_progress = (
        (lambda _m: None) if obj.json else (lambda m: err_console.print(f"[dim]•[/dim] {m}"))
    )
    try:
        result = run(
            obj.settings,
            sample=sample,
            text=text,
            out=out,
            model_dir=model_dir,
            progress=say_progress,
        )
    except DemoFailed as exc:
        raise click.ClickException(str(exc)) from None
    if obj.json:
        emit_json(
            {
                "voice_id": result.voice_id,
                "clone_s": round(result.clone_s, 3),
                "first_chunk_ms": round(result.first_chunk_ms, 1),
                "total_ms": round(result.total_ms, 1),
                "file": str(result.out),
                "bytes": result.audio_bytes,
                "sample_rate_hz": result.sample_rate_hz,
            }
        )
    else:
        console.print(
            f"wrote [bold]{result.out}[/bold] ({result.audio_bytes} bytes, {result.sample_rate_hz} Hz): "
            f"cloned in {result.clone_s:.1f} s, first audio after {result.first_chunk_ms:.0f} ms, "
            f"done in {result.total_ms:.0f} ms"
        )


@cli.command()
@click.option("--host", default="127.0.0.1", show_default=True)
@click.option("--port", default=8765, show_default=True)
@click.option("--seed", default=0, show_default=True, help="Seed for scripted random faults.")
def emulator(host: str, port: int, seed: int) -> None:
    """Serve the ElevenLabs and Cartesia APIs on loopback, for demos and tests.

    ElevenLabs lives under /elevenlabs (key el-emulator-key), Cartesia under /cartesia
    (key ca-emulator-key); point a provider's base_url there."""
    try:
        from voiceslot.testing.emulator import run_forever
    except ImportError as exc:
        raise click.ClickException("the emulator needs: pip install 'voiceslot[emulator]'") from exc
    click.echo(
        f"emulating ElevenLabs at http://{host}:{port}/elevenlabs and Cartesia at http://{host}:{port}/cartesia"
    )
    run_forever(host, port, seed=seed)


@cli.command("operator")
@click.pass_context
def operator(ctx: click.Context) -> None:
    """Run the VoiceSlot operator (kopf) until SIGTERM; configured by VOICESLOT_OPERATOR__*."""
    try:
        from voiceslot_operator.cli import operator_command
    except ImportError as exc:
        raise click.UsageError("the operator needs: pip install 'voiceslot[operator]'") from exc
    ctx.invoke(operator_command)


@cli.command("migrate")
@click.option(
    "--only",
    type=click.Choice(["allocator", "synth"]),
    multiple=True,
    help="Migrate only this service's database (repeatable). Default: both.",
)
@click.pass_obj
def migrate(obj: Ctx, only: tuple[str, ...]) -> None:
    """Bring the services' database schemas to head and exit (for a deployment step run
    before the servers, which then start with migrate_on_start off)."""
    from voiceslot.cli.migrate import SERVICES, run_migrations

    configure_logging(level=obj.settings.log_level, fmt=obj.settings.log_format)
    asyncio.run(run_migrations(obj.settings, only or SERVICES, echo=click.echo))


@cli.command()
@click.pass_obj
def providers(obj: Ctx) -> None:
    """Provider accounts: slots used of capacity, backlog, oldest wait, breaker and
    add/edit budget (admin)."""
    from voiceslot.cli.admin import print_table, provider_view, providers_table

    with stubs(obj.connection()) as (alloc, _, md):
        answer = alloc.ListProviders(apb.ListProvidersRequest(), metadata=md, timeout=30)
    views = [provider_view(p) for p in answer.providers]
    if obj.json:
        emit_json(views)
    else:
        print_table(console, providers_table(views))


@cli.command()
@click.option("--provider", default="", help="Only this provider account's slots.")
@click.pass_obj
def slots(obj: Ctx, provider: str) -> None:
    """Voices holding or acquiring a slot: who holds each, leases and idle time (admin)."""
    from datetime import UTC, datetime

    from voiceslot.cli.admin import list_slots, print_table, slot_view, slots_table

    with stubs(obj.connection()) as (alloc, _, md):
        items = list_slots(alloc, md, provider=provider)
    now = datetime.now(UTC)
    views = [slot_view(s, now) for s in items]
    if obj.json:
        emit_json(views)
    elif views:
        print_table(console, slots_table(views))
    else:
        console.print("no slot is held")


cli.add_command(voices)
cli.add_command(jobs)


def main() -> None:
    try:
        cli(standalone_mode=True)
    except KeyboardInterrupt:
        sys.exit(130)
