"""Command line: replay traces against every policy, print a table and one JSON line.

    python bench/slot_economy.py                     # every built-in trace, full size
    python bench/slot_economy.py --scale 0.1         # a tenth of everything: quick
    python bench/slot_economy.py --only zipf-1.0 sessions-overload
    python bench/slot_economy.py --trace recorded.txt --slots 30

The last line printed is JSON: for ``--trace``, ``{"trace", "slots", "belady",
"default_clones", "policies": {name: clones}}``; for built-in traces ``{"traces": [...]}``
holding one such object per trace. The same figures, with multiples of Belady, clones per
1,000 requests and waits, go to ``bench/results/slot_economy.json`` (``--out`` to change).
"""

from __future__ import annotations

import argparse
import json
import sys
from collections.abc import Callable, Sequence
from pathlib import Path
from typing import Any

from rich.console import Console
from rich.progress import BarColumn, MofNCompleteColumn, Progress, TextColumn, TimeRemainingColumn
from rich.table import Table

from .adapters import ProductDefault, ProductLRU
from .belady import Belady
from .policies import REFERENCE_POLICIES, ReplayPolicy
from .replay import ReplayResult, replay
from .traces import DEFAULT_SEED, Trace, TraceError, builtin_traces, read_trace

BENCH = Path(__file__).resolve().parents[1]
RESULTS = BENCH / "results" / "slot_economy.json"

PolicyFactory = Callable[[Trace], ReplayPolicy]


def policy_factories() -> dict[str, PolicyFactory]:
    """Belady first (the yardstick), then the references, the product's default and its
    selectable LRU."""
    out: dict[str, PolicyFactory] = {"Belady": lambda tr: Belady(tr.slots, tr.requests)}
    for name, cls in REFERENCE_POLICIES.items():
        out[name] = lambda tr, cls=cls: cls(tr.slots)
    out["default"] = lambda tr: ProductDefault(tr.slots)
    out["product-lru"] = lambda tr: ProductLRU(tr.slots)
    return out


def run_trace(
    trace: Trace, names: Sequence[str], progress: Progress | None
) -> dict[str, ReplayResult]:
    factories = policy_factories()
    results: dict[str, ReplayResult] = {}
    for name in ["Belady", *[n for n in names if n != "Belady"]]:
        task = None
        if progress is not None:
            task = progress.add_task(f"{trace.name}: {name}", total=len(trace.requests))
        step = (lambda n, task=task: progress.advance(task, n)) if progress is not None else None
        results[name] = replay(trace, factories[name](trace), progress=step)
        if progress is not None and task is not None:
            progress.remove_task(task)
    return results


def summary(trace: Trace, results: dict[str, ReplayResult]) -> dict[str, Any]:
    belady = results["Belady"].clones
    return {
        "trace": trace.name,
        "slots": trace.slots,
        "belady": belady,
        "default_clones": results["default"].clones if "default" in results else None,
        "policies": {n: r.clones for n, r in results.items() if n not in ("Belady", "default")},
    }


def details(trace: Trace, results: dict[str, ReplayResult]) -> dict[str, Any]:
    belady = max(1, results["Belady"].clones)
    return {
        **summary(trace, results),
        "description": trace.description,
        "requests": len(trace.requests),
        "voices": len({r.voice for r in trace.requests}),
        "by_policy": {
            n: {
                "clones": r.clones,
                "x_belady": round(r.clones / belady, 4),
                "per_1000": round(r.per_1000, 2),
                "waited": r.waited,
                "wait_p50_s": round(r.wait_p50, 3),
                "wait_p95_s": round(r.wait_p95, 3),
                "wait_max_s": round(r.wait_max, 3),
            }
            for n, r in results.items()
        },
    }


def table(trace: Trace, results: dict[str, ReplayResult]) -> Table:
    belady = max(1, results["Belady"].clones)
    refs = [r.clones for n, r in results.items() if n in REFERENCE_POLICIES]
    best_ref = min(refs) if refs else None
    t = Table(
        title=f"{trace.name} — {trace.description} — {len(trace.requests):,} requests, {trace.slots} slots"
    )
    for col in ("policy", "clones", "× Belady", "per 1k req", "waited", "wait p50 s", "wait p95 s"):
        t.add_column(col, justify="left" if col == "policy" else "right")
    for name, r in results.items():
        mark = (
            " *"
            if best_ref is not None and name in REFERENCE_POLICIES and r.clones == best_ref
            else ""
        )
        t.add_row(
            name + mark,
            f"{r.clones:,}",
            f"{r.clones / belady:.3f}",
            f"{r.per_1000:.1f}",
            f"{r.waited:,}",
            f"{r.wait_p50:.2f}",
            f"{r.wait_p95:.2f}",
        )
    t.caption = "* best of the five reference policies; waits are in trace seconds"
    return t


def main(argv: Sequence[str] | None = None) -> int:
    ap = argparse.ArgumentParser(
        description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter
    )
    ap.add_argument(
        "--trace", type=Path, help="replay this trace file instead of the built-in ones"
    )
    ap.add_argument("--slots", type=int, default=100, help="slots for --trace (default 100)")
    ap.add_argument(
        "--scale", type=float, default=1.0, help="shrink built-in traces (requests, voices, slots)"
    )
    ap.add_argument("--seed", type=int, default=DEFAULT_SEED)
    ap.add_argument("--only", nargs="+", metavar="TRACE", help="built-in traces to run (by name)")
    ap.add_argument(
        "--policies", nargs="+", metavar="NAME", help="policies besides Belady (default: all)"
    )
    ap.add_argument("--out", type=Path, default=RESULTS, help=f"JSON results (default {RESULTS})")
    ap.add_argument("--no-progress", action="store_true")
    args = ap.parse_args(argv)

    console = Console(stderr=False)
    err = Console(stderr=True)
    names = args.policies or [n for n in policy_factories() if n != "Belady"]
    unknown = sorted(set(names) - set(policy_factories()))
    if unknown:
        err.print(f"unknown policies: {', '.join(unknown)}; known: {', '.join(policy_factories())}")
        return 2
    try:
        if args.trace is not None:
            traces = [read_trace(args.trace, slots=args.slots)]
        else:
            if not 0 < args.scale <= 1:
                err.print("--scale must be in (0, 1]")
                return 2
            traces = builtin_traces(args.scale, args.seed)
            if args.only:
                known = {t.name for t in traces}
                missing = sorted(set(args.only) - known)
                if missing:
                    err.print(
                        f"unknown traces: {', '.join(missing)}; known: {', '.join(sorted(known))}"
                    )
                    return 2
                traces = [t for t in traces if t.name in args.only]
    except (OSError, TraceError) as e:
        err.print(f"[red]cannot read trace:[/red] {e}")
        return 2

    all_details: list[dict[str, Any]] = []
    progress = (
        None
        if args.no_progress or not err.is_terminal
        else Progress(
            TextColumn("{task.description}"),
            BarColumn(),
            MofNCompleteColumn(),
            TimeRemainingColumn(),
            console=err,
            transient=True,
        )
    )
    if progress is not None:
        progress.start()
    try:
        for trace in traces:
            results = run_trace(trace, names, progress)
            console.print(table(trace, results))
            all_details.append(details(trace, results))
    finally:
        if progress is not None:
            progress.stop()

    sys.path.insert(0, str(BENCH))
    from _common import write_result  # the shared writer stamps commit, cores, time

    payload = {
        "scale": args.scale if args.trace is None else None,
        "seed": args.seed,
        "traces": all_details,
    }
    if args.out == RESULTS:
        write_result("slot_economy", payload)
    else:
        args.out.write_text(json.dumps(payload, indent=2) + "\n")
    keys = ("trace", "slots", "belady", "default_clones", "policies")
    if args.trace is not None:
        last: dict[str, Any] = {k: all_details[0][k] for k in keys}
    else:
        last = {"traces": [{k: d[k] for k in keys} for d in all_details]}
    print(json.dumps(last), flush=True)
    return 0
