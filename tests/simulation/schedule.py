"""Seeded fault schedules: user traffic, admin operations and faults on one timeline.

``generate(seed, database)`` is a pure function: the same seed and database give the same
``Schedule`` on every machine (it draws only from ``random.Random(seed)``), so a failing
seed replays the same steps. What a replay cannot promise is the same interleaving inside
the real processes: the steps fire at the same offsets, but who wins a race in the
allocator is up to the OS scheduler. Failures found by a seed usually recur on replay;
``--repeat`` in the long mode runs one seed several times when they do not.

A schedule has a topology (database, allocator replicas, provider accounts with small
capacities, so slots are reclaimed and re-cloned all the time) and steps at offsets from
its start. Step kinds:

- user traffic: ``register`` a new voice, ``ensure`` (EnsureActiveVoice until ready, hold
  the lease a while, maybe ``renew`` it, then ``release`` it or let it expire), ``delete``,
  ``pin``/unpin;
- admin operations: ``reset_stuck``, ``reclaim`` (never forced: a forced reclaim may take a
  leased voice by definition), ``maintenance`` (some subset of the tasks);
- faults at the emulator (``FAULT_KINDS``) and in the processes (``kill``: SIGKILL of one
  replica at that moment, restarted ``restart_after_s`` later; ``pg_drop``:
  ``pg_terminate_backend`` on every connection to the schedule's database).
"""

from __future__ import annotations

import random
from collections import Counter
from dataclasses import dataclass, field, fields
from typing import Literal

Database = Literal["postgres", "sqlite"]

# Faults at the provider emulator, by the name the summary counts them under.
EMULATOR_FAULTS = (
    "hang_late_success",  # the clone hangs past the client's timeout, then succeeds
    "lost_response",  # the clone succeeds, the connection drops mid-answer
    "error_after_work",  # the clone succeeds, the answer is a 5xx
    "server_error",  # a 5xx, nothing done (clone, list or get)
    "rate_limited",  # 429 with Retry-After, nothing done
    "delete_failed",  # the delete answers 5xx and deletes nothing
    "list_lag",  # list/search results lag behind creates for a window
)
PROCESS_FAULTS = ("kill", "pg_drop")
FAULT_KINDS = EMULATOR_FAULTS + PROCESS_FAULTS

USER_ACTIONS = ("register", "ensure", "delete", "pin")
ADMIN_ACTIONS = ("reset_stuck", "reclaim", "maintenance")
MAINTENANCE_TASKS = ("expire_leases", "reset_stuck", "reconcile", "reclaim_idle")


@dataclass(frozen=True)
class ProviderSpec:
    """One provider account voiceslot is given, and the slots it may use there."""

    name: str
    kind: Literal["elevenlabs", "cartesia"]
    api_key: str
    capacity: int


@dataclass(frozen=True)
class Step:
    """One thing that happens at ``at`` seconds after the schedule starts.

    ``voice`` indexes the schedule's voices (initial ones first, then those registered by
    ``register`` steps in order); ``replica`` indexes the replicas (the runner moves to a
    live one when that one is down, as a client with several addresses would).
    """

    at: float
    action: str
    voice: int = 0
    replica: int = 0
    # ensure: how long the lease is held, its TTL, renewed once midway, released at the end
    hold_s: float = 0.0
    ttl_s: float = 0.0
    renew: bool = False
    release: bool = True
    # pin
    pinned: bool = True
    # delete
    force: bool = False
    # maintenance
    tasks: tuple[str, ...] = ()
    # faults
    provider: str = ""
    op: str = ""
    times: int = 1
    status: int = 500
    retry_after_s: float = 0.0
    hang_s: float = 0.0
    lag_s: float = 0.0
    """list_lag: creates in the next ``LIST_LAG_SPAN_S`` show in lists this much later."""
    restart_after_s: float = 0.0

    def describe(self) -> str:
        """A one-line human form, for logs and failure reports."""
        extras = {
            f.name: getattr(self, f.name)
            for f in fields(self)
            if f.name not in ("at", "action") and getattr(self, f.name) != f.default
        }
        args = " ".join(f"{k}={v}" for k, v in extras.items())
        return f"t+{self.at:5.2f}s {self.action} {args}".rstrip()


@dataclass(frozen=True)
class Topology:
    """What a run's processes are: the database, how many allocator replicas, and the
    provider accounts with their capacities. Written ``postgres:r3:el2:ca3``."""

    database: Database
    replicas: int
    providers: tuple[ProviderSpec, ...]

    def __str__(self) -> str:
        caps = ":".join(f"{p.name}{p.capacity}" for p in self.providers)
        return f"{self.database}:r{self.replicas}:{caps}"

    @classmethod
    def parse(cls, text: str) -> Topology:
        """The inverse of ``str``: ``postgres:r3:el2:ca3``."""
        database, replicas, *caps = text.split(":")
        if database not in ("postgres", "sqlite") or not replicas.startswith("r"):
            raise ValueError(f"not a topology: {text!r} (e.g. postgres:r3:el2:ca3)")
        capacity = {c[:2]: int(c[2:]) for c in caps}
        providers = tuple(
            ProviderSpec(p.name, p.kind, p.api_key, capacity.get(p.name, p.capacity))
            for p in providers_for(random.Random(0))
        )
        return cls(database, int(replicas[1:]), providers)  # type: ignore[arg-type]


def topology_for(seed: int, database: Database, max_replicas: int = 4) -> Topology:
    """A topology drawn from ``seed``: 1..max_replicas replicas on PostgreSQL, one on
    SQLite (a file database is not shared by processes here), small capacities."""
    rng = random.Random(f"topology:{database}:{seed}")
    replicas = 1 if database == "sqlite" else rng.randint(1, max_replicas)
    return Topology(database, replicas, providers_for(rng))


@dataclass(frozen=True)
class Schedule:
    seed: int
    topology: Topology
    users: tuple[str, ...]
    initial_voices: tuple[tuple[str, str], ...]
    """(owner, provider name) of the voices registered before the clock starts."""
    steps: tuple[Step, ...]
    duration_s: float
    adapter_timeout_s: float
    """Provider HTTP timeout the replicas run with; hangs last longer than this."""
    lease_ttl_s: float

    @property
    def database(self) -> Database:
        return self.topology.database

    @property
    def replicas(self) -> int:
        return self.topology.replicas

    @property
    def providers(self) -> tuple[ProviderSpec, ...]:
        return self.topology.providers

    @property
    def voice_count(self) -> int:
        return len(self.initial_voices) + sum(s.action == "register" for s in self.steps)

    def fault_counts(self) -> Counter[str]:
        return Counter(s.action for s in self.steps if s.action in FAULT_KINDS)

    def describe(self) -> str:
        head = (
            f"seed {self.seed} on {self.topology}: {len(self.initial_voices)} voices "
            f"+ {self.voice_count - len(self.initial_voices)} registered during the run"
        )
        return "\n".join([head, *(f"  {s.describe()}" for s in self.steps)])


@dataclass(frozen=True)
class Profile:
    """How big schedules are. CI and the long mode use the same generator."""

    steps: tuple[int, int] = (26, 40)
    duration_s: float = 10.0
    initial_voices: tuple[int, int] = (5, 8)
    weights: dict[str, float] = field(
        default_factory=lambda: {
            "ensure": 10,
            "register": 1,
            "delete": 1,
            "pin": 1.2,
            "reset_stuck": 1.2,
            "reclaim": 1.2,
            "maintenance": 1.5,
            "hang_late_success": 1.6,
            "lost_response": 1.4,
            "error_after_work": 1.4,
            "server_error": 1.2,
            "rate_limited": 1.2,
            "delete_failed": 1.4,
            "list_lag": 1.0,
            "kill": 0.9,
            "pg_drop": 0.8,
        }
    )


DEFAULT_PROFILE = Profile()
ADAPTER_TIMEOUT_S = 1.0
"""Short, so hangs are cheap; long enough for loopback answers on a loaded machine."""
LEASE_TTL_S = 2.0
LIST_LAG_SPAN_S = 3.0


def providers_for(rng: random.Random) -> tuple[ProviderSpec, ...]:
    """Two accounts with few slots, so that voices compete for them."""
    return (
        ProviderSpec("el", "elevenlabs", "el-sim-key", capacity=rng.randint(1, 3)),
        ProviderSpec("ca", "cartesia", "ca-sim-key", capacity=rng.randint(2, 3)),
    )


def generate(seed: int, topology: Topology, profile: Profile = DEFAULT_PROFILE) -> Schedule:
    """The schedule for ``seed`` on ``topology`` (pure: same arguments, same schedule)."""
    rng = random.Random(f"schedule:{seed}")
    database, replicas, providers = topology.database, topology.replicas, topology.providers
    users = ("alice", "bob", "carol")
    initial = tuple(
        (rng.choice(users), rng.choice(providers).name)
        for _ in range(rng.randint(*profile.initial_voices))
    )
    actions = [a for a in profile.weights if not (a == "pg_drop" and database != "postgres")]
    weights = [profile.weights[a] for a in actions]
    count = rng.randint(*profile.steps)
    offsets = sorted(round(rng.uniform(0.0, profile.duration_s), 3) for _ in range(count))
    voices = len(initial)
    steps: list[Step] = []
    for at in offsets:
        action = rng.choices(actions, weights)[0]
        step = make_step(rng, action, at=at, voices=voices, replicas=replicas)
        if action == "register":
            voices += 1
        steps.append(step)
    return Schedule(
        seed=seed,
        topology=topology,
        users=users,
        initial_voices=initial,
        steps=tuple(steps),
        duration_s=profile.duration_s,
        adapter_timeout_s=ADAPTER_TIMEOUT_S,
        lease_ttl_s=LEASE_TTL_S,
    )


def make_step(rng: random.Random, action: str, *, at: float, voices: int, replicas: int) -> Step:
    """One step of kind ``action``; every random draw for it comes from ``rng``."""
    base = {"at": at, "action": action, "replica": rng.randrange(replicas)}
    voice = rng.randrange(voices)
    provider = rng.choice(("elevenlabs", "cartesia"))
    match action:
        case "register":
            return Step(**base, voice=voices)
        case "ensure":
            return Step(
                **base,
                voice=voice,
                hold_s=round(rng.uniform(0.0, 3.0), 2),
                ttl_s=LEASE_TTL_S,
                renew=rng.random() < 0.4,
                release=rng.random() < 0.85,
            )
        case "delete":
            return Step(**base, voice=voice, force=rng.random() < 0.3)
        case "reset_stuck" | "reclaim":
            return Step(**base, voice=voice)
        case "pin":
            return Step(**base, voice=voice, pinned=rng.random() < 0.6)
        case "maintenance":
            tasks = tuple(t for t in MAINTENANCE_TASKS if rng.random() < 0.5) or ("reconcile",)
            return Step(**base, tasks=tasks)
        case "hang_late_success":
            return Step(
                **base,
                provider=provider,
                op="clone",
                hang_s=round(rng.uniform(1.5, 3.0) * ADAPTER_TIMEOUT_S, 2),
            )
        case "lost_response" | "error_after_work":
            op = "clone" if rng.random() < 0.8 else "delete"
            return Step(**base, provider=provider, op=op, status=rng.choice((500, 502, 504)))
        case "server_error":
            return Step(
                **base,
                provider=provider,
                op=rng.choice(("clone", "list", "get")),
                status=rng.choice((500, 502, 503)),
                times=rng.randint(1, 2),
            )
        case "rate_limited":
            return Step(
                **base,
                provider=provider,
                op="clone",
                retry_after_s=round(rng.uniform(0.2, 1.0), 2),
                times=rng.randint(1, 2),
            )
        case "delete_failed":
            return Step(**base, provider=provider, op="delete", status=rng.choice((500, 503)))
        case "list_lag":
            return Step(**base, lag_s=round(rng.uniform(0.3, 1.5), 2))
        case "kill":
            return Step(**base, restart_after_s=round(rng.uniform(0.3, 3.0), 2))
        case "pg_drop":
            return Step(**base)
    raise ValueError(f"unknown action {action!r}")
