"""Serving the emulated providers over real HTTP on loopback.

One Starlette app serves both providers under their own prefix, with the providers' real
paths below it: ``<url>/elevenlabs/v1/voices/add``, ``<url>/cartesia/tts/sse``, and the
streaming-input WebSockets (``ws://<host>/elevenlabs/v1/text-to-speech/<id>/stream-input``
and ``…/multi-stream-input``, ``ws://<host>/cartesia/tts/websocket``). Point a
``ProviderConfig.base_url`` at ``emulator.elevenlabs_url`` or ``emulator.cartesia_url``.

``ProviderEmulator`` runs uvicorn in a background thread (its own event loop) on
127.0.0.1 with an ephemeral port, so any test, sync or async, can talk to it with a real
HTTP client; ``run_forever`` serves in the foreground for a demo command.
"""

from __future__ import annotations

import socket
import threading
from collections.abc import Iterable
from types import TracebackType
from typing import Any

import uvicorn
from pydantic import SecretStr
from starlette.applications import Starlette
from starlette.requests import Request
from starlette.responses import JSONResponse
from starlette.routing import Mount, Route

from voiceslot.config import ProviderConfig
from voiceslot.testing.emulator._common import quiet_dropped_responses
from voiceslot.testing.emulator.cartesia_api import CartesiaApi
from voiceslot.testing.emulator.cartesia_ws import CartesiaLive
from voiceslot.testing.emulator.debug_api import DEBUG_PREFIX, DebugApi
from voiceslot.testing.emulator.elevenlabs_api import ElevenLabsApi
from voiceslot.testing.emulator.elevenlabs_multi_ws import ElevenLabsMultiLive
from voiceslot.testing.emulator.elevenlabs_ws import ElevenLabsLive
from voiceslot.testing.emulator.state import (
    CARTESIA,
    DEFAULT_CARTESIA_KEY,
    DEFAULT_ELEVENLABS_KEY,
    ELEVENLABS,
    Account,
    EmulatorState,
    ProviderKind,
)

ELEVENLABS_PREFIX = "/elevenlabs"
CARTESIA_PREFIX = "/cartesia"
_DEFAULT_KEYS = {ELEVENLABS: DEFAULT_ELEVENLABS_KEY, CARTESIA: DEFAULT_CARTESIA_KEY}
_PREFIXES = {ELEVENLABS: ELEVENLABS_PREFIX, CARTESIA: CARTESIA_PREFIX}


class _Server(uvicorn.Server):
    """uvicorn's server with a thread-safe "ready" event (it only has a flag)."""

    def __init__(self, config: uvicorn.Config) -> None:
        super().__init__(config)
        self.ready = threading.Event()

    async def startup(self, sockets: list[socket.socket] | None = None) -> None:
        await super().startup(sockets=sockets)
        self.ready.set()

    def run_in_thread(self, sockets: list[socket.socket]) -> None:
        try:
            self.run(sockets=sockets)
        finally:
            self.ready.set()  # a failed start must not leave start() waiting


def create_app(state: EmulatorState) -> Starlette:
    """Both providers' APIs over one ``EmulatorState``, and the emulator's own debug API
    (ground truth and fault scripting, see ``debug_api``) under ``/_emulator``."""

    async def index(request: Request) -> JSONResponse:
        base = str(request.base_url).rstrip("/")
        return JSONResponse(
            {
                "elevenlabs": {
                    "base_url": base + ELEVENLABS_PREFIX,
                    "api_key_header": "xi-api-key",
                },
                "cartesia": {"base_url": base + CARTESIA_PREFIX, "api_key_header": "Authorization"},
                "debug": {"truth": base + DEBUG_PREFIX + "/truth"},
            }
        )

    return Starlette(
        routes=[
            Route("/", index, methods=["GET"]),
            # WebSocket routes first; the REST app's router takes everything else.
            Mount(
                ELEVENLABS_PREFIX,
                routes=[
                    *ElevenLabsLive(state).routes(),
                    *ElevenLabsMultiLive(state).routes(),
                    Mount("", app=ElevenLabsApi(state).app()),
                ],
            ),
            Mount(
                CARTESIA_PREFIX,
                routes=[*CartesiaLive(state).routes(), Mount("", app=CartesiaApi(state).app())],
            ),
            Mount(DEBUG_PREFIX, app=DebugApi(state).app()),
        ]
    )


class ProviderEmulator:
    """ElevenLabs and Cartesia on loopback, for tests and demos::

        with ProviderEmulator() as emulator:
            provider = ElevenLabsProvider(emulator.provider_config("elevenlabs"))
            emulator.state.faults.inject(Fault(FaultKind.LOST_RESPONSE, op=Op.CLONE))

    ``state`` is thread-safe: script faults and inspect voices from the test's thread
    while the server runs in its own. ``reset`` between tests; requests still in flight
    from before it (a hanging clone) are fenced out of the new state.
    """

    def __init__(
        self,
        *,
        accounts: Iterable[Account] | None = None,
        seed: int = 0,
        host: str = "127.0.0.1",
        port: int = 0,
        state: EmulatorState | None = None,
    ) -> None:
        self.state = state or EmulatorState(accounts=accounts, seed=seed)
        self._host = host
        self._port = port
        self._server: _Server | None = None
        self._thread: threading.Thread | None = None
        self._socket: socket.socket | None = None

    # -- lifecycle ----------------------------------------------------------------------

    def start(self, *, timeout_s: float = 10.0) -> ProviderEmulator:
        if self._server is not None:
            raise RuntimeError("emulator already started")
        quiet_dropped_responses()
        self.state.closed.clear()
        # Bind first, so the port is known before the server thread runs. proto must be
        # IPPROTO_TCP: asyncio only sets TCP_NODELAY on accepted sockets that say so, and
        # without it every response waits ~40 ms on delayed ACKs.
        sock = socket.socket(socket.AF_INET, socket.SOCK_STREAM, socket.IPPROTO_TCP)
        sock.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
        sock.setsockopt(socket.IPPROTO_TCP, socket.TCP_NODELAY, 1)
        sock.bind((self._host, self._port))
        self._socket = sock
        config = uvicorn.Config(
            create_app(self.state),
            log_level="warning",
            access_log=False,
            lifespan="off",
            timeout_graceful_shutdown=1,
            timeout_keep_alive=5,
        )
        server = _Server(config)
        thread = threading.Thread(
            target=server.run_in_thread, args=([sock],), name="provider-emulator", daemon=True
        )
        self._server, self._thread = server, thread
        thread.start()
        if not server.ready.wait(timeout_s) or not server.started:
            self.stop()
            raise RuntimeError("provider emulator failed to start")
        return self

    def stop(self, *, timeout_s: float = 10.0) -> None:
        """Stop serving; hanging requests and held streams end at once."""
        self.state.closed.set()
        self.state.release_streams()
        if self._server is not None:
            self._server.should_exit = True
        if self._thread is not None:
            self._thread.join(timeout_s)
        if self._socket is not None:
            self._socket.close()
        self._server = self._thread = self._socket = None

    def __enter__(self) -> ProviderEmulator:
        return self.start()

    def __exit__(
        self,
        exc_type: type[BaseException] | None,
        exc: BaseException | None,
        tb: TracebackType | None,
    ) -> None:
        self.stop()

    def reset(self) -> None:
        """Forget voices, faults and account changes (between tests)."""
        self.state.reset()

    # -- addresses ----------------------------------------------------------------------

    @property
    def port(self) -> int:
        if self._socket is None:
            raise RuntimeError("emulator not started")
        return int(self._socket.getsockname()[1])

    @property
    def url(self) -> str:
        return f"http://{self._host}:{self.port}"

    @property
    def debug_url(self) -> str:
        """Base of the debug API (``/truth``, ``/faults``, ...)."""
        return self.url + DEBUG_PREFIX

    @property
    def elevenlabs_url(self) -> str:
        return self.url + ELEVENLABS_PREFIX

    @property
    def cartesia_url(self) -> str:
        return self.url + CARTESIA_PREFIX

    def base_url(self, provider: ProviderKind) -> str:
        return self.url + _PREFIXES[provider]

    def provider_config(
        self,
        kind: ProviderKind,
        *,
        name: str | None = None,
        api_key: str | None = None,
        **overrides: Any,
    ) -> ProviderConfig:
        """A ``ProviderConfig`` for an account of this emulator (default: the default
        account of ``kind``)."""
        values: dict[str, Any] = {"base_url": self.base_url(kind), **overrides}
        return ProviderConfig(
            name=name or f"{kind}-emu",
            kind=kind,
            api_key=SecretStr(api_key or _DEFAULT_KEYS[kind]),
            **values,
        )


def run_forever(
    host: str = "127.0.0.1",
    port: int = 8765,
    *,
    accounts: Iterable[Account] | None = None,
    seed: int = 0,
    log_level: str = "info",
) -> None:
    """Serve both emulated providers in the foreground until interrupted (Ctrl-C).

    Default accounts: ElevenLabs key ``el-emulator-key`` (Creator: 30 slots, 5 concurrent
    requests) and Cartesia key ``ca-emulator-key``.
    """
    quiet_dropped_responses()
    state = EmulatorState(accounts=accounts, seed=seed)
    uvicorn.run(create_app(state), host=host, port=port, log_level=log_level, lifespan="off")
