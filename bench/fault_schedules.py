"""Fault schedules, many of them: the long mode of ``tests/simulation``.

    python bench/fault_schedules.py --schedules 300          # hundreds, JSON summary
    python bench/fault_schedules.py --topology postgres:r3:el2:ca3 --seed 17   # replay one

Each schedule interleaves user traffic, admin operations and faults (at the provider
emulator: hangs that succeed late, lost responses, errors after the work, 5xx, 429 with
Retry-After, failing deletes, list lag; in the processes: SIGKILL of a replica then a
restart, PostgreSQL connections terminated) and is checked against the invariants in
``tests/simulation/invariants.py``. Schedules run in sessions of ``--per-cluster`` on one
set of processes (every fifth session on SQLite, the others on PostgreSQL with 1..4
replicas). A failing seed is printed with the command that replays it.

Writes bench/results/fault_schedules.json (after every schedule; ``complete`` once done):
schedules, process kills, injections and hits per fault kind, violations per invariant,
and the failing seeds with their replay commands and evidence (each broken voice's
history at the provider and in the allocator). Replica logs stay under ``--workdir``.

``VOICESLOT_SIM_CODE=<dir>`` runs the replicas from another source tree, e.g. a commit
under test: ``git archive <rev> | tar -x -C <dir>; echo <rev> > <dir>/.commit`` (see
``tests/simulation/cluster.py``); the JSON names it as ``code_under_test``. PostgreSQL:
``VOICESLOT_TEST_PG`` (default postgresql://postgres@127.0.0.1:5432).
"""

from __future__ import annotations

import argparse
import asyncio
import os
import signal
import sys
import tempfile
import time
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent))

from _common import ROOT, git_commit, write_result  # noqa: E402

sys.path.insert(0, str(ROOT))

from rich.console import Console  # noqa: E402
from rich.progress import (  # noqa: E402
    BarColumn,
    MofNCompleteColumn,
    Progress,
    TextColumn,
    TimeElapsedColumn,  # noqa: E402
)

from tests.simulation.cluster import CODE_DIR_ENV  # noqa: E402
from tests.simulation.schedule import Topology, generate  # noqa: E402
from tests.simulation.session import RunResult, run_session  # noqa: E402
from tests.simulation.summary import Session, Summary, plan, replay_command  # noqa: E402

PG_SERVER = os.environ.get("VOICESLOT_TEST_PG", "postgresql://postgres@127.0.0.1:5432")


def parse_args(argv: list[str] | None = None) -> argparse.Namespace:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--schedules", type=int, default=300)
    parser.add_argument("--first-seed", type=int, default=1)
    parser.add_argument("--per-cluster", type=int, default=10)
    parser.add_argument("--seed", type=int, help="replay one schedule (with --topology)")
    parser.add_argument("--topology", help="e.g. postgres:r3:el2:ca3 (printed with each failure)")
    parser.add_argument("--repeat", type=int, default=1, help="play a replayed seed this often")
    parser.add_argument("--show", action="store_true", help="print the schedule(s) first")
    parser.add_argument(
        "--evidence",
        action="store_true",
        help="print, for each voice in a violation, the provider's and the allocator's "
        "history of it (always on when replaying one --seed)",
    )
    parser.add_argument("--workdir", help="where sessions keep configs and replica logs")
    parser.add_argument("--out", default="fault_schedules", help="result name in bench/results")
    return parser.parse_args(argv)


def sessions_for(args: argparse.Namespace) -> list[Session]:
    if args.seed is not None:
        if not args.topology:
            raise SystemExit("--seed needs --topology (both are printed with a failure)")
        return [Session(Topology.parse(args.topology), (args.seed,) * args.repeat)]
    if args.topology:
        topology = Topology.parse(args.topology)
        seeds = tuple(range(args.first_seed, args.first_seed + args.schedules))
        return [Session(topology, seeds)]
    return plan(args.schedules, first_seed=args.first_seed, per_cluster=args.per_cluster)


async def main(args: argparse.Namespace) -> Summary:
    console = Console(stderr=True, soft_wrap=True)
    sessions = sessions_for(args)
    if args.show:
        for session in sessions:
            for seed in dict.fromkeys(session.seeds):
                console.print(generate(seed, session.topology).describe(), markup=False)
    summary = Summary()
    total = sum(len(s.seeds) for s in sessions)
    columns = (
        TextColumn("{task.description}"),
        BarColumn(),
        MofNCompleteColumn(),
        TimeElapsedColumn(),
        TextColumn("{task.fields[status]}"),
    )
    # Kept afterwards: the replicas' logs explain a failing seed that does not replay.
    tmp = args.workdir or tempfile.mkdtemp(prefix="fault-schedules-")
    console.print(f"replica logs under {tmp}", markup=False)
    with Progress(*columns, console=console) as progress:
        task = progress.add_task("schedules", total=total, status="")

        def on_result(result: RunResult) -> None:
            summary.add(result)
            schedule = result.schedule
            if result.violations:
                progress.console.print(
                    f"seed {schedule.seed} on {schedule.topology}: "
                    f"{len(result.violations)} violation(s)\n"
                    + "\n".join(f"  {v}" for v in result.violations[:8])
                    + f"\n  replay: {replay_command(schedule.seed, schedule.topology)}",
                    markup=False,
                )
                if args.evidence or args.seed is not None:
                    for voice, lines in sorted(result.evidence.items()):
                        progress.console.print(f"  history of {voice}:", markup=False)
                        for line in lines:
                            progress.console.print(f"    {line}", markup=False)
            if args.seed is None:  # a long run interrupted still leaves what it found
                write_result(
                    args.out,
                    summary.to_json() | {"complete": False, "code_under_test": code_under_test()},
                )
            broken = sum(summary.violations.values())
            progress.update(
                task,
                advance=1,
                status=f"kills {summary.process_kills}, violations {broken}",
            )

        for index, session in enumerate(sessions):
            progress.update(task, description=f"{session.topology}")
            workdir = Path(tmp) / f"session{index}"
            pg = PG_SERVER if session.topology.database == "postgres" else None
            try:
                await run_session(
                    session.topology, list(session.seeds), workdir, pg, on_result=on_result
                )
            except Exception as exc:  # a harness failure: say so, keep the other sessions
                progress.console.print(
                    f"[red]session {session.topology} seeds {session.seeds[0]}..: "
                    f"harness error {exc!r}[/red] (logs were in {workdir})"
                )
                summary.outcomes[f"harness error: {type(exc).__name__}"] += 1
    return summary


def code_under_test() -> str:
    """What the replicas ran: this checkout, or the tree ``VOICESLOT_SIM_CODE`` names (its
    ``.commit`` file, when the tree came from ``git archive``, says which commit)."""
    code = os.environ.get(CODE_DIR_ENV)
    if not code:
        return f"working tree at {git_commit()}"
    stamp = Path(code) / ".commit"
    return f"{code} ({stamp.read_text().strip()})" if stamp.exists() else code


def interrupt(signum: int, frame: object) -> None:
    """SIGTERM as Ctrl-C: the clusters' contexts then stop their replicas and drop their
    databases instead of leaving them behind."""
    raise KeyboardInterrupt


if __name__ == "__main__":
    signal.signal(signal.SIGTERM, interrupt)
    arguments = parse_args()
    started = time.monotonic()
    result = asyncio.run(main(arguments))
    body = result.to_json() | {"wall_seconds": round(time.monotonic() - started, 1)}
    if arguments.seed is None:
        path = write_result(
            arguments.out, body | {"complete": True, "code_under_test": code_under_test()}
        )
        print(f"wrote {path}")
    print({k: body[k] for k in ("schedules", "process_kills", "injections", "violations")})
    sys.exit(1 if result.failing else 0)
