"""Fault-schedule simulation: seeded schedules of user traffic, admin operations and faults
(at the provider emulator and in the processes) run against real allocator replicas, then
checked against the promise: no duplicate remote voice, never over capacity, database and
provider agree, nothing reclaimed under a lease, no request lost or stuck.

- ``schedule``: the pure, seeded generator (same seed, same schedule);
- ``invariants``: pure checkers over what was observed;
- ``cluster``: the processes (allocator replicas, PostgreSQL or SQLite, the emulator);
- ``runner``: a thin adapter that plays a schedule on a cluster and gathers observations.
"""
