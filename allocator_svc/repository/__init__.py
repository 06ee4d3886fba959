"""All of the allocator's SQL, one transaction per method, split by concept:

- ``voices``: registration, reading, pinning, events, deletion;
- ``leases``: the lease grant (the hot path) and renew/release/expire;
- ``queue``: enqueue with per-user caps, fair claim, complete/fail, what is stuck;
- ``slots``: reclaim and reconciliation reads;
- ``providers``: configuration, stats, breaker, token bucket, add/edit budget;
- ``_base``: engines, records, events, the fenced transition, the active-lease count.

``AllocatorRepository`` puts them together; callers use it as one object.
"""

from __future__ import annotations

from allocator_svc.repository.claims import ClaimResult, ClaimsRepository
from allocator_svc.repository.leases import EnsureParams
from allocator_svc.repository.providers import ProvidersRepository
from allocator_svc.repository.queue import owner_lock_key
from allocator_svc.repository.voices import NewVoice, VoicesRepository


class AllocatorRepository(ClaimsRepository, VoicesRepository, ProvidersRepository):
    """The allocator's repository: every table, through one object."""


__all__ = [
    "AllocatorRepository",
    "ClaimResult",
    "EnsureParams",
    "NewVoice",
    "owner_lock_key",
]
