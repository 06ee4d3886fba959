"""What the providers' streaming-input WebSocket sessions share (``base.LiveSession``).

A session is one socket: ``say`` sends a sentence, a reader task turns the provider's
frames into ``LiveAudio`` in a bounded queue, ``audio()`` drains it, ``aclose`` stops at
once. The protocols differ (``elevenlabs_live``, ``cartesia_live``); this module holds the
lifecycle, the bounds and the error mapping:

- connecting takes at most ``LiveLimits.connect_timeout_s``; a refused handshake is mapped
  by the provider's own HTTP error classifier (401 → ``AuthError``, 429 →
  ``RateLimited`` with ``Retry-After``), a refused or dropped connection is ``Transient``;
- frames are at most ``max_frame_bytes``; at most ``max_buffered`` pieces of audio wait
  for the consumer (the reader then stops reading, and TCP pushes back on the provider);
- while audio is owed (text said, its audio not complete) the provider must send something
  every ``idle_timeout_s`` or the session fails with ``Transient``: never a hang;
- a close before the provider said it was finished is ``Transient`` (or what the close
  code says: 1008 with an authentication reason is ``AuthError``, 1013 ``RateLimited``).
"""

from __future__ import annotations

import asyncio
import contextlib
import json
from abc import ABC, abstractmethod
from collections.abc import AsyncIterator, Awaitable, Callable
from dataclasses import dataclass
from typing import Any, TypeVar

from websockets.asyncio.client import ClientConnection, connect
from websockets.exceptions import (
    ConnectionClosed,
    InvalidHandshake,
    InvalidStatus,
    InvalidURI,
)

from voiceslot.providers import http
from voiceslot.providers.base import LiveAudio
from voiceslot.providers.errors import (
    AuthError,
    Fatal,
    InvalidInput,
    ProviderError,
    RateLimited,
    Transient,
)
from voiceslot.waiting import cancel_and_wait

T = TypeVar("T")
HandshakeClassifier = Callable[[int, bytes, float | None], ProviderError]
"""(status, body, retry_after) of a refused upgrade → the taxonomy error."""
_AUTH_WORDS = ("api key", "api_key", "auth", "unauthori", "permission", "forbidden")


@dataclass(frozen=True)
class LiveLimits:
    """Bounds of one live session."""

    connect_timeout_s: float = 10.0
    """Opening handshake, TCP and TLS included."""
    idle_timeout_s: float = 30.0
    """Longest silence from the provider while audio is owed."""
    max_frame_bytes: int = 4 * 1024 * 1024
    """Largest frame accepted from the provider."""
    max_buffered: int = 64
    """Pieces of audio waiting for the consumer before reading pauses."""
    close_timeout_s: float = 1.0
    """How long ``aclose`` waits for the closing handshake."""


class _End:
    """The queue's end marker."""


_END = _End()


def http_to_ws(base_url: str) -> str:
    """``https://host/x`` → ``wss://host/x`` (the providers serve both on one host)."""
    if base_url.startswith("https://"):
        return "wss://" + base_url[len("https://") :]
    if base_url.startswith("http://"):
        return "ws://" + base_url[len("http://") :]
    return base_url


def close_error(code: int | None, reason: str, *, provider: str) -> ProviderError:
    """The taxonomy error for a socket the provider closed before finishing."""
    text = f"connection closed ({code}{': ' + reason if reason else ''})"
    lowered = reason.lower()
    if code == 1008 and any(word in lowered for word in _AUTH_WORDS):
        return AuthError(text, provider=provider, status_code=401)
    if code == 1013:
        return RateLimited(text, provider=provider, status_code=429)
    if code == 1009:
        return InvalidInput(text, provider=provider)
    if code == 1008 and "timeout" not in lowered:
        return InvalidInput(text, provider=provider)
    return Transient(text, provider=provider)


def handshake_error(
    exc: Exception, *, provider: str, classify: HandshakeClassifier
) -> ProviderError:
    """The taxonomy error for a failed connect."""
    if isinstance(exc, InvalidStatus):
        response = exc.response
        retry_after = http.parse_retry_after(response.headers.get("Retry-After"))
        return classify(response.status_code, bytes(response.body or b""), retry_after)
    if isinstance(exc, InvalidURI):
        return Fatal(f"connect: {exc}", provider=provider)
    if isinstance(exc, TimeoutError):
        return Transient("connect: timed out", provider=provider)
    return Transient(f"connect: {type(exc).__name__}: {exc}", provider=provider)


class WsLiveSession(ABC):
    """One streaming-input socket (``base.LiveSession``); subclasses speak the protocol."""

    def __init__(
        self,
        *,
        provider: str,
        url: str,
        headers: dict[str, str],
        classify: HandshakeClassifier,
        limits: LiveLimits,
    ) -> None:
        self.provider = provider
        self._url = url
        self._headers = headers
        self._classify = classify
        self.limits = limits
        self._ws: ClientConnection | None = None
        self._reader: asyncio.Task[None] | None = None
        self._queue: asyncio.Queue[LiveAudio | ProviderError | _End] = asyncio.Queue(
            limits.max_buffered
        )
        self._connect_lock = asyncio.Lock()
        self._said = 0
        self._ended = False
        self._closed = False
        self._failure: ProviderError | None = None
        self._connecting: asyncio.Task[None] | None = None
        self._connect_error: ProviderError | None = None

    # -- protocol, per provider ---------------------------------------------------------

    @abstractmethod
    async def _on_open(self) -> None:
        """Send what the protocol sends first (ElevenLabs' initial message)."""

    @abstractmethod
    async def _send_sentence(self, index: int, text: str) -> None: ...

    @abstractmethod
    async def _send_end(self) -> bool:
        """Tell the provider no more text comes; False when nothing is owed and the
        session can end without waiting for the provider."""

    @abstractmethod
    async def _send_cancel(self) -> None:
        """Ask the provider to stop generating (best effort, before the socket closes)."""

    @abstractmethod
    async def _on_message(self, message: dict[str, Any]) -> tuple[list[LiveAudio], bool]:
        """Audio carried by one JSON frame, and whether the session is finished (may send,
        e.g. to recover a context)."""

    @abstractmethod
    def _owed(self) -> bool:
        """Whether audio is still owed for what was said (or the end is awaited)."""

    def preconnect(self) -> None:
        """Start connecting now, in the background, so the handshake (TCP, TLS, upgrade)
        is done by the time the first sentence is ready; a failure is raised by the first
        ``say``. Without a running event loop the session connects on first use."""
        try:
            loop = asyncio.get_running_loop()
        except RuntimeError:
            return
        self._connecting = loop.create_task(self._preconnect())

    async def _preconnect(self) -> None:
        try:
            await self._ensure_open()
        except ProviderError as exc:
            self._connect_error = exc

    # -- base.LiveSession ---------------------------------------------------------------

    async def say(self, text: str) -> int:
        self._check_usable("say")
        if self._ended:
            raise Fatal("say after end", provider=self.provider)
        if self._connecting is not None:
            await self._connecting
            if self._connect_error is not None:
                raise self._connect_error
        await self._ensure_open()
        index = self._said
        self._said += 1
        await self._guard(self._send_sentence(index, text))
        return index

    async def end(self) -> None:
        if self._ended or self._closed:
            return
        self._ended = True
        if self._connecting is not None:
            await self._connecting
        if self._ws is None:
            self._finish(_END)
            return
        if not await self._guard(self._send_end()):
            self._finish(_END)

    async def audio(self) -> AsyncIterator[LiveAudio]:
        while True:
            item = await self._queue.get()
            if isinstance(item, _End):
                return
            if isinstance(item, ProviderError):
                raise item
            yield item

    async def aclose(self) -> None:
        if self._closed:
            return
        self._closed = True
        if self._connecting is not None and not self._connecting.done():
            await cancel_and_wait(self._connecting)
        ws = self._ws
        if ws is not None:
            if not self._finished_reading():
                with contextlib.suppress(Exception):
                    async with asyncio.timeout(self.limits.close_timeout_s):
                        await self._send_cancel()
            with contextlib.suppress(Exception):
                async with asyncio.timeout(self.limits.close_timeout_s):
                    await ws.close()
        try:
            if self._reader is not None:
                await cancel_and_wait(self._reader)
        finally:
            # Whoever iterates ``audio()`` stops now, whatever was still queued (also
            # when this close is itself cancelled).
            while not self._queue.empty():
                self._queue.get_nowait()
            self._queue.put_nowait(_END)

    # -- plumbing -----------------------------------------------------------------------

    async def _send_json(self, payload: dict[str, Any]) -> None:
        if self._ws is None:
            raise Fatal("session not connected", provider=self.provider)
        await self._ws.send(json.dumps(payload))

    def _check_usable(self, what: str) -> None:
        if self._closed:
            raise Fatal(f"{what} after aclose", provider=self.provider)
        if self._failure is not None:
            raise self._failure

    async def _ensure_open(self) -> None:
        async with self._connect_lock:
            if self._ws is not None:
                return
            try:
                self._ws = await connect(
                    self._url,
                    additional_headers=self._headers,
                    open_timeout=self.limits.connect_timeout_s,
                    close_timeout=self.limits.close_timeout_s,
                    max_size=self.limits.max_frame_bytes,
                )
            except (InvalidHandshake, InvalidURI, OSError, TimeoutError) as exc:
                raise handshake_error(exc, provider=self.provider, classify=self._classify) from exc
            await self._guard(self._on_open())
            self._reader = asyncio.create_task(self._read(self._ws))

    async def _guard(self, sending: Awaitable[T]) -> T:
        """Await a send; a socket that is gone becomes the reader's error (or
        ``Transient``)."""
        try:
            return await sending
        except ConnectionClosed as exc:
            if self._failure is not None:
                raise self._failure from exc
            raise close_error(
                exc.rcvd.code if exc.rcvd else None,
                exc.rcvd.reason if exc.rcvd else "",
                provider=self.provider,
            ) from exc

    def _finished_reading(self) -> bool:
        return self._reader is not None and self._reader.done()

    def _finish(self, item: ProviderError | _End) -> None:
        """Queue the end (or the failure) even when the consumer has fallen behind."""
        if isinstance(item, ProviderError):
            self._failure = item
        if self._queue.full():
            asyncio.get_running_loop().create_task(self._queue.put(item))
        else:
            self._queue.put_nowait(item)

    async def _read(self, ws: ClientConnection) -> None:
        finished = False
        try:
            while not finished:
                try:
                    async with asyncio.timeout(self.limits.idle_timeout_s):
                        raw = await ws.recv()
                except TimeoutError:
                    if self._owed():
                        raise Transient(
                            f"no answer for {self.limits.idle_timeout_s:g} s",
                            provider=self.provider,
                        ) from None
                    continue
                message = http.json_or_none(raw.encode() if isinstance(raw, str) else raw)
                if not isinstance(message, dict):
                    raise Fatal("frame is not a JSON object", provider=self.provider)
                pieces, finished = await self._on_message(message)
                for piece in pieces:
                    await self._queue.put(piece)
        except ProviderError as exc:
            self._finish(exc)
            return
        except ConnectionClosed as exc:
            if self._closed:  # our own aclose: the end, not a failure
                self._finish(_END)
                return
            code = exc.rcvd.code if exc.rcvd else None
            reason = exc.rcvd.reason if exc.rcvd else ""
            self._finish(close_error(code, reason, provider=self.provider))
            return
        self._finish(_END)
