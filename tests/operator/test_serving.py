"""The operator serves its Prometheus metrics and kopf's liveness endpoint."""

from __future__ import annotations

import socket

import aiohttp

from tests.operator.conftest import eventually


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return int(s.getsockname()[1])


async def test_metrics_and_liveness_are_served(start_stack) -> None:
    metrics_port, liveness_port = free_port(), free_port()
    stack = await start_stack(
        capacity=1,
        metrics_port=metrics_port,
        liveness_endpoint=f"http://127.0.0.1:{liveness_port}/healthz",
    )
    await stack.counted("slot_listings_total", more=1)

    async with aiohttp.ClientSession() as session:

        async def get(url: str) -> tuple[int, str] | None:
            try:
                async with session.get(url) as response:
                    return response.status, await response.text()
            except aiohttp.ClientConnectionError:
                return None  # not listening yet

        status, text = await eventually(
            lambda: get(f"http://127.0.0.1:{metrics_port}/metrics"), what="metrics served"
        )
        assert status == 200
        assert "voiceslot_operator_slot_listings_total" in text
        assert "voiceslot_operator_allocator_up 1.0" in text
        status, _ = await eventually(
            lambda: get(f"http://127.0.0.1:{liveness_port}/healthz"), what="liveness served"
        )
        assert status == 200
