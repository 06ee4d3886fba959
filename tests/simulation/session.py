"""One schedule from start to verdict (play, observe, check, gather evidence, clean up),
and sessions of schedules on one cluster: what the CI test and the long mode call."""

from __future__ import annotations

import time
from collections import Counter
from collections.abc import Awaitable, Callable
from dataclasses import dataclass, field
from typing import Any

from tests.simulation.clients import Clients
from tests.simulation.cluster import Cluster
from tests.simulation.invariants import Violation, check
from tests.simulation.runner import EMULATOR_FAULTS, ScheduleRun
from tests.simulation.schedule import Schedule


@dataclass
class RunResult:
    """What one schedule did and what the checks found."""

    schedule: Schedule
    violations: list[Violation]
    injections: Counter[str] = field(default_factory=Counter)
    """Faults injected, by kind (kills count only when a live replica was killed)."""
    hits: Counter[str] = field(default_factory=Counter)
    """Faults that struck a request (an emulator fault no request matched before the
    schedule ended is injected but not hit); kills, pg drops and list lag always hit."""
    outcomes: Counter[str] = field(default_factory=Counter)
    rpc_errors: Counter[str] = field(default_factory=Counter)
    leftover_remote: int = 0
    """Remote voices the cleanup had to remove at the emulator itself."""
    elapsed_s: float = 0.0
    evidence: dict[str, list[str]] = field(default_factory=dict)
    """Per voice named in a violation: what the provider did to it and what the allocator
    recorded (its voice events), on one timeline relative to the schedule's start."""

    def __repr__(self) -> str:  # short: pytest prints it beside every failure
        return (
            f"RunResult(seed={self.schedule.seed}, topology={self.schedule.topology}, "
            f"violations={len(self.violations)})"
        )


async def run_schedule(schedule: Schedule, cluster: Cluster) -> RunResult:
    """Play ``schedule`` on ``cluster``, check it, clean up after it."""
    started = time.monotonic()
    clients = Clients(cluster)
    run = ScheduleRun(schedule, cluster, clients)
    try:
        await run.play()
        observations = await run.observe()
        violations = [*check(observations), *run.leased_missing]
        evidence = await run.evidence(violations)
        leftover = await run.cleanup()
    finally:
        await clients.close()
    return RunResult(
        schedule=schedule,
        violations=violations,
        injections=run.injections,
        # Kills, dropped connections and list lag strike whenever they are made; a kill
        # fired at the very end is counted once it is done, hence here.
        hits=run.hits
        + Counter({k: n for k, n in run.injections.items() if k not in EMULATOR_FAULTS}),
        outcomes=run.outcomes,
        rpc_errors=clients.errors,
        leftover_remote=leftover,
        elapsed_s=time.monotonic() - started,
        evidence=evidence,
    )


Runner = Callable[[Schedule, Cluster], Awaitable[RunResult]]


async def run_session(
    topology: Any,
    seeds: list[int],
    workdir: Any,
    pg_admin: str | None,
    *,
    on_result: Callable[[RunResult], None] | None = None,
) -> list[RunResult]:
    """Schedules ``seeds`` one after another on one cluster of ``topology`` (starting
    processes costs ~15 s each on a loaded machine, so a cluster serves several)."""
    from tests.simulation.cluster import running_cluster
    from tests.simulation.schedule import generate

    results: list[RunResult] = []
    first = generate(seeds[0], topology)
    with running_cluster(first, workdir, pg_admin) as cluster:
        for seed in seeds:
            schedule = generate(seed, topology)
            cluster.schedule = schedule
            result = await run_schedule(schedule, cluster)
            results.append(result)
            if on_result is not None:
                on_result(result)
    return results
