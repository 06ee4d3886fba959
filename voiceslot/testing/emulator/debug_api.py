"""The emulator's own debug API under ``/_emulator``: ground truth out, faults in.

A test that runs the emulator as a separate process (``voiceslot emulator``) has no
in-process ``EmulatorState`` to read, so the same accessors are served over HTTP:

- ``GET  /_emulator/truth[?events=0]``: ``EmulatorState.truth_snapshot()`` (high-water
  marks per voice id and per account, over-capacity instants, create/delete history);
- ``GET  /_emulator/live[?provider=]``: every streaming-input session (``EmulatorState.live``:
  text received, audio frames sent, and how it ended: finished, cancelled, dropped, …);
- ``POST /_emulator/faults``: inject one ``Fault`` (JSON with its field names);
- ``POST /_emulator/settings``: standing ``latency_s``, ``list_lag_s``, ``error_rate``
  (+ ``seed``, ``error_status``), ``label_prefix``;
- ``POST /_emulator/capacity``: ``{"provider", "api_key", "capacity"}`` to watch;
- ``POST /_emulator/clear-faults`` and ``POST /_emulator/reset``.

Loopback test tooling: no authentication, never part of a provider's API.
"""

from __future__ import annotations

from typing import Any

from starlette.applications import Starlette
from starlette.requests import Request
from starlette.responses import JSONResponse, Response
from starlette.routing import Route

from voiceslot.testing.emulator.faults import Fault, FaultKind, Op
from voiceslot.testing.emulator.state import EmulatorState

DEBUG_PREFIX = "/_emulator"


def fault_from_json(body: dict[str, Any]) -> Fault:
    """A ``Fault`` from its JSON form; ValueError (→ 400) on unknown kinds or fields."""
    known = {"kind", "op", "provider", "times", "status", "retry_after", "hang_s"}
    unknown = set(body) - known
    if unknown:
        raise ValueError(f"unknown fault fields: {sorted(unknown)}")
    values = dict(body)
    values["kind"] = FaultKind(values["kind"])
    if values.get("op") is not None:
        values["op"] = Op(values["op"])
    return Fault(**values)


class DebugApi:
    """Routes bound to one ``EmulatorState``."""

    def __init__(self, state: EmulatorState) -> None:
        self.state = state

    def app(self) -> Starlette:
        return Starlette(
            routes=[
                Route("/truth", self.truth, methods=["GET"]),
                Route("/live", self.live, methods=["GET"]),
                Route("/faults", self.inject, methods=["POST"]),
                Route("/settings", self.settings, methods=["POST"]),
                Route("/capacity", self.capacity, methods=["POST"]),
                Route("/clear-faults", self.clear_faults, methods=["POST"]),
                Route("/reset", self.reset, methods=["POST"]),
            ],
            exception_handlers={ValueError: self.bad_request, KeyError: self.bad_request},
        )

    async def bad_request(self, request: Request, exc: Exception) -> Response:
        return JSONResponse({"error": str(exc)}, status_code=400)

    async def truth(self, request: Request) -> Response:
        with_events = request.query_params.get("events", "1") not in ("0", "false")
        return JSONResponse(self.state.truth_snapshot(with_events=with_events))

    async def live(self, request: Request) -> Response:
        provider = request.query_params.get("provider")
        return JSONResponse(self.state.live.snapshot(provider))

    async def inject(self, request: Request) -> Response:
        body = await request.json()
        if not isinstance(body, dict):
            raise ValueError("a fault is a JSON object")
        self.state.faults.inject(fault_from_json(body))
        return JSONResponse({"pending": len(self.state.faults.pending)})

    async def settings(self, request: Request) -> Response:
        body = await request.json()
        faults = self.state.faults
        if "latency_s" in body:
            faults.set_latency(float(body["latency_s"]))
        if "list_lag_s" in body:
            faults.set_list_lag(float(body["list_lag_s"]))
        if "error_rate" in body:
            faults.set_error_rate(
                float(body["error_rate"]),
                seed=body.get("seed"),
                status=int(body.get("error_status", 503)),
            )
        if "label_prefix" in body:
            self.state.set_label_prefix(str(body["label_prefix"]))
        return JSONResponse({"ok": True})

    async def capacity(self, request: Request) -> Response:
        body = await request.json()
        capacity = body.get("capacity")
        self.state.watch_capacity(
            body["provider"], body["api_key"], None if capacity is None else int(capacity)
        )
        return JSONResponse({"ok": True})

    async def clear_faults(self, request: Request) -> Response:
        self.state.faults.clear()
        return JSONResponse({"ok": True})

    async def reset(self, request: Request) -> Response:
        self.state.reset()
        return JSONResponse({"ok": True})
