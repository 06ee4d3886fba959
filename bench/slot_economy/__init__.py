"""Slot economy: replay request traces against reclaim policies and count clones against
Belady's optimum. See ``bench/slot_economy.py`` for the command and ``cli.py`` for its
options; the modules, in reading order: traces, policies (the seam and the five reference
policies), belady, replay (the engine), adapters (the allocator's own policies —
``allocator_svc.domain.adaptive`` and ``reclaim`` — behind the seam)."""
