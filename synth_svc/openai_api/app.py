"""The OpenAI-compatible HTTP API as an ASGI app, and the uvicorn server that runs it
inside ``voiceslot serve``: same process, same event loop, same ``Synthesizer``.

The server listens on a socket bound here (with ``SO_REUSEPORT`` when ``serve
--workers`` shares the port between processes, as the gRPC port is shared) and leaves
the process's signals alone: ``voiceslot serve`` owns SIGTERM and stops this server with
the rest, in-flight responses given ``grace_s`` to finish.
"""

from __future__ import annotations

import asyncio
import contextlib
import socket
from collections.abc import Iterator

import uvicorn
from starlette.applications import Starlette
from starlette.requests import Request
from starlette.responses import Response
from starlette.routing import Route

from synth_svc.openai_api.errors import ApiError, error_response
from synth_svc.openai_api.routes import Routes
from synth_svc.service import Synthesizer
from voiceslot.config import HttpApiConfig
from voiceslot.logs import get_logger
from voiceslot.rpc.interceptors import Admission

log = get_logger("voiceslot.openai_api")


def build_app(synthesizer: Synthesizer, admission: Admission, *, max_body_bytes: int) -> Starlette:
    routes = Routes(synthesizer, admission, max_body_bytes=max_body_bytes)
    guarded = routes.guarded

    async def not_found(request: Request, exc: Exception) -> Response:
        return error_response(
            ApiError(404, f"Invalid URL ({request.method} {request.url.path})", code=None)
        )

    async def not_allowed(request: Request, exc: Exception) -> Response:
        return error_response(
            ApiError(405, f"Method {request.method} not allowed on {request.url.path}")
        )

    return Starlette(
        routes=[
            Route("/v1/audio/speech", guarded(routes.speech), methods=["POST"]),
            Route("/v1/models", guarded(routes.models), methods=["GET"]),
            Route("/v1/models/{model}", guarded(routes.model), methods=["GET"]),
            Route("/v1/audio/voices", guarded(routes.voices), methods=["GET"]),
        ],
        exception_handlers={404: not_found, 405: not_allowed},
    )


class _Embedded(uvicorn.Server):
    """uvicorn without its signal handlers: the runtime owns SIGTERM and SIGINT."""

    @contextlib.contextmanager
    def capture_signals(self) -> Iterator[None]:
        yield


def bind(host: str, port: int, *, reuse_port: bool) -> socket.socket:
    family, kind, proto, _, address = socket.getaddrinfo(
        host, port, type=socket.SOCK_STREAM, flags=socket.AI_PASSIVE
    )[0]
    sock = socket.socket(family, kind, proto)
    try:
        sock.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
        if reuse_port:
            sock.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEPORT, 1)
        sock.bind(address)
        sock.setblocking(False)
    except BaseException:
        sock.close()
        raise
    return sock


class HttpApiServer:
    """The API on ``config.host``:``config.port``; ``start`` returns once it listens."""

    def __init__(self, app: Starlette, config: HttpApiConfig, *, reuse_port: bool = False) -> None:
        self._app = app
        self._config = config
        self._reuse_port = reuse_port
        self._server: _Embedded | None = None
        self._task: asyncio.Task[None] | None = None
        self.port = 0

    async def start(self) -> HttpApiServer:
        sock = bind(self._config.host, self._config.port, reuse_port=self._reuse_port)
        self.port = sock.getsockname()[1]
        server = _Embedded(
            uvicorn.Config(
                self._app, lifespan="off", log_config=None, access_log=False, server_header=False
            )
        )
        self._server = server
        self._task = asyncio.create_task(server.serve(sockets=[sock]), name="openai-api")
        while not server.started:
            if self._task.done():
                await self._task  # its error, if it failed to start
                raise RuntimeError("the HTTP API stopped while starting")
            await asyncio.sleep(0.01)
        log.info("listening", api="openai", address=self._config.host, port=self.port)
        return self

    async def stop(self, grace_s: float) -> None:
        """Stop accepting, give responses in flight ``grace_s`` to finish, then cancel
        what is left."""
        if self._server is None or self._task is None:
            return
        self._server.config.timeout_graceful_shutdown = max(0.1, grace_s)
        self._server.should_exit = True
        await self._task
