"""Planning many schedules onto clusters, and adding up what they found (pure).

The long mode and CI both run *sessions*: one cluster (a topology's processes) plays
several schedules in turn, since starting a replica costs ~15 s on a loaded machine.
``plan`` spreads seeds over sessions (every ``sqlite_every``-th session on SQLite, the rest
on PostgreSQL with 1..4 replicas); ``Summary`` adds up injections, kills and violations
into the JSON the long mode writes.
"""

from __future__ import annotations

from collections import Counter
from dataclasses import dataclass, field
from typing import TYPE_CHECKING, Any

from tests.simulation.invariants import INVARIANTS
from tests.simulation.schedule import FAULT_KINDS, Topology, topology_for

if TYPE_CHECKING:
    from tests.simulation.session import RunResult


@dataclass(frozen=True)
class Session:
    topology: Topology
    seeds: tuple[int, ...]


def plan(
    schedules: int, *, first_seed: int = 1, per_cluster: int = 10, sqlite_every: int = 5
) -> list[Session]:
    """``schedules`` seeds from ``first_seed`` in sessions of ``per_cluster``."""
    sessions = []
    seeds = list(range(first_seed, first_seed + schedules))
    for index, start in enumerate(range(0, schedules, per_cluster)):
        database = (
            "sqlite" if sqlite_every and index % sqlite_every == sqlite_every - 1 else "postgres"
        )
        topology = topology_for(first_seed + index, database)  # type: ignore[arg-type]
        sessions.append(Session(topology, tuple(seeds[start : start + per_cluster])))
    return sessions


def replay_command(seed: int, topology: Topology) -> str:
    """The command that plays this one schedule again on a fresh cluster."""
    return f"python bench/fault_schedules.py --topology {topology} --seed {seed}"


@dataclass
class Summary:
    schedules: int = 0
    process_kills: int = 0
    injections: Counter[str] = field(default_factory=Counter)
    hits: Counter[str] = field(default_factory=Counter)
    violations: Counter[str] = field(default_factory=Counter)
    outcomes: Counter[str] = field(default_factory=Counter)
    rpc_errors: Counter[str] = field(default_factory=Counter)
    failing: list[dict[str, Any]] = field(default_factory=list)
    leftover_remote: int = 0
    elapsed_s: float = 0.0

    def add(self, result: RunResult) -> None:
        self.schedules += 1
        self.process_kills += result.injections.get("kill", 0)
        self.injections.update(result.injections)
        self.hits.update(result.hits)
        self.violations.update(v.invariant for v in result.violations)
        self.outcomes.update(result.outcomes)
        self.rpc_errors.update(result.rpc_errors)
        self.leftover_remote += result.leftover_remote
        self.elapsed_s += result.elapsed_s
        if result.violations:
            schedule = result.schedule
            self.failing.append(
                {
                    "seed": schedule.seed,
                    "topology": str(schedule.topology),
                    "replay": replay_command(schedule.seed, schedule.topology),
                    "violations": [str(v) for v in result.violations],
                    "evidence": {k: lines[:80] for k, lines in result.evidence.items()},
                }
            )

    def to_json(self) -> dict[str, Any]:
        return {
            "schedules": self.schedules,
            "process_kills": self.process_kills,
            "injections": {kind: self.injections.get(kind, 0) for kind in FAULT_KINDS},
            "faults_hit": {kind: self.hits.get(kind, 0) for kind in FAULT_KINDS},
            "violations": {name: self.violations.get(name, 0) for name in INVARIANTS},
            "failing_schedules": len(self.failing),
            "failing": self.failing,
            "request_outcomes": {
                k.removeprefix("request "): n
                for k, n in sorted(self.outcomes.items())
                if k.startswith("request ")
            },
            "rpc_errors": dict(self.rpc_errors.most_common()),
            "leftover_remote_voices_removed_by_cleanup": self.leftover_remote,
            "schedule_seconds": round(self.elapsed_s, 1),
        }
