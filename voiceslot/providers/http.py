"""Small helpers shared by the HTTP provider adapters (ElevenLabs, Cartesia).

The adapters are thin: they build a request, send it, and turn the answer into the
``base`` dataclasses or into one error of the ``errors`` taxonomy. What is the same for
every HTTP provider lives here as small pure functions, each testable on its own:

- ``parse_retry_after``: the ``Retry-After`` header (delta-seconds or an HTTP date).
- ``error_for_status``: the provider-neutral part of the status-code → error mapping.
- ``transport_errors``: timeouts, refused or dropped connections → ``Transient``; the
  outcome of such a call is unknown, which is exactly what ``Transient`` says.
- ``SampleAligner``: keeps streamed 16-bit PCM chunks on whole-sample boundaries.
- ``nearest_rate``: picks the provider's supported sample rate closest to the one asked for.
- ``SseDecoder``: a minimal ``text/event-stream`` decoder (hand-written: ``httpx-sse`` is
  not a dependency, and the subset we need is a dozen lines of the WHATWG algorithm).
"""

from __future__ import annotations

import email.utils
import json
import math
from abc import ABC, abstractmethod
from collections.abc import Iterator, Sequence
from contextlib import contextmanager
from dataclasses import dataclass
from datetime import UTC, datetime
from typing import Any

import httpx

from voiceslot.providers.errors import (
    AuthError,
    Fatal,
    InvalidInput,
    ProviderError,
    RateLimited,
    Transient,
    VoiceNotFound,
)

# Statuses that mean "the request itself is wrong": retrying the same bytes cannot help.
_INVALID_INPUT_STATUSES = frozenset({400, 411, 413, 414, 415, 416, 422})
# 408 (request timeout) and 425 (too early) are the server asking us to try again later.
_TRANSIENT_4XX_STATUSES = frozenset({408, 425})
_SAMPLE_CONTENT_TYPES = {
    ".wav": "audio/wav",
    ".flac": "audio/flac",
    ".ogg": "audio/ogg",
    ".mp3": "audio/mpeg",
}


def parse_retry_after(value: str | None, *, now: datetime | None = None) -> float | None:
    """Seconds to wait from a ``Retry-After`` header value, or None when absent or unusable.

    RFC 9110 allows delta-seconds or an HTTP date. Decimal seconds are accepted too
    because some gateways send them. Dates in the past give 0.
    """
    if value is None or not value.strip():
        return None
    text = value.strip()
    try:
        seconds = float(text)
    except ValueError:
        try:
            when = email.utils.parsedate_to_datetime(text)
        except (TypeError, ValueError, IndexError):
            return None
        if when.tzinfo is None:
            when = when.replace(tzinfo=UTC)
        seconds = (when - (now or datetime.now(UTC))).total_seconds()
    if not math.isfinite(seconds):
        return None
    return max(0.0, seconds)


def error_for_status(
    status: int,
    message: str,
    *,
    provider: str,
    retry_after: float | None = None,
    voice_scoped: bool = False,
) -> ProviderError:
    """The provider-neutral mapping of an HTTP error status to the taxonomy.

    Adapters handle their provider-specific codes first (e.g. ElevenLabs'
    ``voice_limit_reached``) and fall back to this. ``voice_scoped`` says the request
    addressed one voice by id, so a 404 means that voice is gone; elsewhere a 404 means a
    wrong URL, which retrying will not fix.
    """
    kwargs: dict[str, Any] = {
        "provider": provider,
        "status_code": status,
        "retry_after": retry_after,
    }
    if status == 429:
        return RateLimited(message, **kwargs)
    if status >= 500 or status in _TRANSIENT_4XX_STATUSES:
        return Transient(message, **kwargs)
    if status in (401, 402, 403):
        # 402: credits used up; like a bad key, nothing changes until a person acts.
        return AuthError(message, **kwargs)
    if status == 404:
        return VoiceNotFound(message, **kwargs) if voice_scoped else Fatal(message, **kwargs)
    if status in _INVALID_INPUT_STATUSES:
        return InvalidInput(message, **kwargs)
    return Fatal(message, **kwargs)


@contextmanager
def transport_errors(provider: str, what: str) -> Iterator[None]:
    """Turn httpx transport failures inside the block into ``Transient``.

    A timeout or a dropped connection leaves the outcome unknown (the server may have done
    the work), so callers must treat the call as "maybe happened". A URL with an
    unsupported scheme is a configuration mistake, hence ``Fatal``.
    """
    try:
        yield
    except httpx.UnsupportedProtocol as exc:
        raise Fatal(f"{what}: {exc}", provider=provider) from exc
    except httpx.TimeoutException as exc:
        raise Transient(f"{what}: timed out ({type(exc).__name__})", provider=provider) from exc
    except httpx.TransportError as exc:
        raise Transient(f"{what}: {type(exc).__name__}: {exc}", provider=provider) from exc


def build_client(*, timeout_s: float) -> httpx.AsyncClient:
    """An async client for one provider account. No base URL or auth headers: adapters
    put those on each request, so an injected client (tests, a shared pool) works the
    same as this one. No transport retries: a retried POST can clone a voice twice."""
    return httpx.AsyncClient(
        timeout=httpx.Timeout(timeout_s),
        transport=httpx.AsyncHTTPTransport(retries=0),
        follow_redirects=False,
    )


def request_timeout(timeout_s: float) -> httpx.Timeout:
    """Per-request timeout, so an injected client still honours the account's setting."""
    return httpx.Timeout(timeout_s)


def sample_content_type(filename: str) -> str:
    """Content type of an uploaded voice sample, from the name we generated for it."""
    suffix = filename[filename.rfind(".") :].lower() if "." in filename else ""
    return _SAMPLE_CONTENT_TYPES.get(suffix, "application/octet-stream")


def nearest_rate(requested: int, supported: Sequence[int], *, default: int) -> int:
    """The supported sample rate closest to ``requested``; ``default`` for 0 ("native").

    Ties go to the higher rate: upsampling later loses nothing, downsampling does.
    """
    if requested <= 0:
        return default
    return min(supported, key=lambda rate: (abs(rate - requested), -rate))


def json_or_none(body: bytes) -> Any:
    """The parsed JSON body, or None when it is not JSON (plain-text errors)."""
    try:
        return json.loads(body)
    except (ValueError, UnicodeDecodeError):
        return None


def body_text(body: bytes, *, limit: int = 500) -> str:
    """A bounded, printable rendering of an error body for messages."""
    text = body.decode("utf-8", errors="replace").strip()
    return text if len(text) <= limit else text[: limit - 1] + "…"


class SampleAligner:
    """Cuts a byte stream of 16-bit PCM into chunks of whole samples.

    HTTP chunk boundaries fall anywhere; a chunk ending in half a sample would shift every
    later sample by one byte (loud noise). The odd byte is carried to the next chunk.
    """

    def __init__(self) -> None:
        self._carry = b""

    def feed(self, data: bytes) -> bytes:
        """The whole samples available after ``data``; possibly empty."""
        buf = self._carry + data
        cut = len(buf) - (len(buf) % 2)
        self._carry = buf[cut:]
        return buf[:cut]

    @property
    def pending(self) -> int:
        """Bytes held back (0 or 1)."""
        return len(self._carry)


@dataclass(frozen=True)
class SseEvent:
    event: str
    """The ``event:`` field; "message" when the server sent none."""
    data: str


class SseDecoder:
    """Decodes ``text/event-stream`` lines (already split, without line endings) into
    events, per the WHATWG algorithm minus ``id``/``retry`` (reconnection is not used)."""

    def __init__(self) -> None:
        self._event = ""
        self._data: list[str] = []

    def feed(self, line: str) -> SseEvent | None:
        """The event completed by ``line`` (a blank line), else None."""
        if not line:
            if not self._data:
                self._event = ""
                return None
            event = SseEvent(event=self._event or "message", data="\n".join(self._data))
            self._event, self._data = "", []
            return event
        if line.startswith(":"):
            return None  # comment / keep-alive
        field, _, value = line.partition(":")
        value = value.removeprefix(" ")
        if field == "event":
            self._event = value
        elif field == "data":
            self._data.append(value)
        return None

    def flush(self) -> SseEvent | None:
        """An event left unterminated when the stream ended (servers that omit the last
        blank line)."""
        return self.feed("")


class HttpAdapter(ABC):
    """What the HTTP adapters share: one request with the adapter's headers and timeout,
    transport failures and error statuses mapped to the taxonomy. Subclasses set the
    attributes below and say how their provider's error bodies read (``_error``)."""

    name: str
    _client: httpx.AsyncClient
    _base_url: str
    _headers: dict[str, str]
    _timeout: httpx.Timeout

    @abstractmethod
    def _error(self, response: httpx.Response, *, voice_scoped: bool) -> ProviderError:
        """The taxonomy error for an error response."""

    async def _send(
        self, method: str, path: str, *, what: str, voice_scoped: bool = False, **kwargs: Any
    ) -> httpx.Response:
        with transport_errors(self.name, what):
            response = await self._client.request(
                method,
                self._base_url + path,
                headers=self._headers,
                timeout=self._timeout,
                **kwargs,
            )
        if response.is_error:
            raise self._error(response, voice_scoped=voice_scoped)
        return response
