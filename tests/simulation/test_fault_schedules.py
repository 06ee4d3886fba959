"""The promise under faults, in CI: a bounded number of seeded fault schedules against real
processes (allocator replicas on PostgreSQL, one on SQLite, the provider emulator over
loopback HTTP), each invariant its own test so a report names what broke.

Each topology's schedules run once per module (a fixture); the tests then read what they
found. A failure names the seed, what broke and the command that replays that schedule
on a fresh cluster (``--show`` prints its steps). ``VOICESLOT_SIM_SEEDS=3,4`` runs other
seeds; the long mode is ``bench/fault_schedules.py``.

Budget: ~3 minutes on a loaded 2-core machine, most of it starting replicas (~15 s each).
"""

from __future__ import annotations

import os
from pathlib import Path

import pytest

from tests.simulation.invariants import INVARIANTS, Violation
from tests.simulation.schedule import Topology
from tests.simulation.session import RunResult, run_session
from tests.simulation.summary import replay_command

SEEDS = tuple(int(s) for s in os.environ.get("VOICESLOT_SIM_SEEDS", "1,2").split(","))
POSTGRES = Topology.parse("postgres:r3:el2:ca3")
SQLITE = Topology.parse("sqlite:r1:el2:ca3")


def report(results: list[RunResult], invariant: str) -> list[str]:
    """Each violation of ``invariant`` with its seed and the command that replays it."""
    lines = []
    for result in results:
        found: list[Violation] = [v for v in result.violations if v.invariant == invariant]
        if found:
            schedule = result.schedule
            lines.append(
                f"seed {schedule.seed} on {schedule.topology}: "
                f"replay with `{replay_command(schedule.seed, schedule.topology)} --show`"
            )
            lines += [f"    {v}" for v in found]
            # What the provider and the allocator did, since a race may not replay.
            for subject in dict.fromkeys(v.subject for v in found):
                history = result.evidence.get(subject, [])
                if history:
                    lines.append(f"    history of {subject}:")
                    lines += [f"      {line}" for line in history[:60]]
    return lines


def assert_holds(results: list[RunResult], invariant: str) -> None:
    assert results, "no schedule ran"
    lines = report(results, invariant)
    assert not lines, f"{invariant} broken:\n" + "\n".join(lines)


@pytest.fixture(scope="module")
async def postgres_results(
    pg_admin: str, tmp_path_factory: pytest.TempPathFactory
) -> list[RunResult]:
    workdir = Path(tmp_path_factory.mktemp("sim-postgres"))
    return await run_session(POSTGRES, list(SEEDS), workdir, pg_admin)


@pytest.fixture(scope="module")
async def sqlite_results(tmp_path_factory: pytest.TempPathFactory) -> list[RunResult]:
    workdir = Path(tmp_path_factory.mktemp("sim-sqlite"))
    return await run_session(SQLITE, list(SEEDS), workdir, None)


@pytest.mark.postgres
@pytest.mark.slow
@pytest.mark.parametrize("invariant", INVARIANTS)
def test_postgres_replicas_keep(postgres_results: list[RunResult], invariant: str) -> None:
    assert_holds(postgres_results, invariant)


@pytest.mark.slow
@pytest.mark.parametrize("invariant", INVARIANTS)
def test_sqlite_keeps(sqlite_results: list[RunResult], invariant: str) -> None:
    assert_holds(sqlite_results, invariant)


@pytest.mark.postgres
@pytest.mark.slow
def test_the_schedules_really_injected_faults(
    postgres_results: list[RunResult], sqlite_results: list[RunResult]
) -> None:
    """A run that injected nothing would prove nothing."""
    injected = sum(sum(r.injections.values()) for r in postgres_results + sqlite_results)
    requests = sum(
        n
        for r in postgres_results + sqlite_results
        for k, n in r.outcomes.items()
        if k.startswith("request ")
    )
    assert injected >= 10 * len(SEEDS), injected
    assert requests >= 10 * len(SEEDS), requests
