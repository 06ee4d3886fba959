"""gRPC clients of a simulated cluster: calls that meet a dead replica go to another live
one, as a client configured with every replica's address would."""

from __future__ import annotations

import asyncio
import time
from collections import Counter
from typing import Any

import grpc

from tests.conftest import ADMIN_KEY, auth
from tests.simulation.cluster import Cluster
from voiceslot.v1 import allocator_pb2_grpc

MD = auth(ADMIN_KEY)
CALL_TIMEOUT_S = 10.0
"""One RPC on a loaded machine; a replica that does not answer in this long is treated as
gone and the call goes to another."""
CALL_DEADLINE_S = 60.0
"""All tries of one logical call (a replica being restarted takes ~15 s here)."""
_RETRY_ELSEWHERE = (grpc.StatusCode.UNAVAILABLE, grpc.StatusCode.DEADLINE_EXCEEDED)


class Clients:
    """gRPC stubs for the cluster's live replicas; a call meeting a dead replica tries
    the next live one, as a client configured with every replica's address would."""

    def __init__(self, cluster: Cluster) -> None:
        self.cluster = cluster
        self._channels: dict[str, grpc.aio.Channel] = {}
        self.errors: Counter[str] = Counter()

    def stub(self, target: str) -> allocator_pb2_grpc.AllocatorServiceStub:
        if target not in self._channels:
            self._channels[target] = grpc.aio.insecure_channel(target)
        return allocator_pb2_grpc.AllocatorServiceStub(self._channels[target])

    async def call(
        self, method: str, request: Any, *, replica: int = 0, deadline_s: float = CALL_DEADLINE_S
    ) -> Any:
        """``method`` on replica ``replica`` (or the next live one); raises the last
        RpcError once ``deadline_s`` has passed, or at once for answers that are final."""
        deadline = time.monotonic() + deadline_s
        attempt = 0
        while True:
            targets = self._targets_from(replica + attempt)
            attempt += 1
            if targets:
                try:
                    rpc = getattr(self.stub(targets[0]), method)
                    if callable(request):  # streaming requests are made fresh per try
                        return await rpc(request(), metadata=MD, timeout=CALL_TIMEOUT_S)
                    return await rpc(request, metadata=MD, timeout=CALL_TIMEOUT_S)
                except grpc.aio.AioRpcError as exc:
                    self.errors[f"{method}:{exc.code().name}"] += 1
                    if exc.code() not in _RETRY_ELSEWHERE or time.monotonic() > deadline:
                        raise
            elif time.monotonic() > deadline:
                raise TimeoutError(f"{method}: no live replica within {deadline_s:.0f}s")
            await asyncio.sleep(min(0.2 * attempt, 1.0))

    def _targets_from(self, start: int) -> list[str]:
        replicas = self.cluster.replicas
        order = [replicas[(start + i) % len(replicas)] for i in range(len(replicas))]
        return [r.target for r in order if r.alive]

    async def close(self) -> None:
        for channel in self._channels.values():
            await channel.close()
        self._channels.clear()
