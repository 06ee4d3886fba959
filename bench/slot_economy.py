"""Slot economy: how many clones each reclaim policy spends, as a multiple of Belady's optimum.

    python bench/slot_economy.py                     # every built-in trace (minutes)
    python bench/slot_economy.py --scale 0.1         # everything a tenth the size
    python bench/slot_economy.py --trace FILE --slots N

Replays request traces (built-in, generated from a seed; or a file of
``timestamp voice_id [user_id] [lease_seconds]`` lines) against LRU, ARC, SIEVE, S3-FIFO,
W-TinyLFU and the allocator's own policies — its default (``adaptive``, the very object
``allocator_svc`` runs) and its selectable ``lru`` —; prints a table per trace and, last,
one JSON line.
Writes bench/results/slot_economy.json. The code is the package ``bench/slot_economy/``.
"""

from __future__ import annotations

import sys
from pathlib import Path

# This file shares its name with the package beside it; the package wins the import.
sys.path.insert(0, str(Path(__file__).resolve().parent))

from slot_economy.cli import main  # noqa: E402

if __name__ == "__main__":
    raise SystemExit(main())
