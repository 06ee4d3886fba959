"""The allocator service: voices, provider slots, the durable fair allocation queue,
leases and the lifecycle (allocate, reclaim, reset stuck, reconcile).

Layers, lowest first: ``domain`` (pure policy: states, queue fairness, backoff,
reclaim choice), ``models`` + ``repository`` (SQL), ``service`` (use cases that call
the repository and providers, never inside a transaction), ``dispatcher`` and
``maintenance`` (background work), ``servicer`` (the gRPC adapter).
"""
