"""The handlers: admission, then the same ``Synthesizer`` (and allocator client) the gRPC
servicer uses; no second synthesis path.

Every request is admitted exactly as a gRPC call is (``voiceslot.rpc.interceptors.
Admission``: the same keys, the same per-caller token bucket) and runs as that caller,
so the allocator applies the caller's rights (another user's voice is 404 here as it is
NOT_FOUND there).

The speech body streams as the synthesizer makes it. Errors that come before the first
audio (a bad request, an unknown voice, no slot free in time) are answered with their
status; once audio has begun the status is sent, and a later failure can only cut the
body short (the client sees an incomplete chunked body, never a corrupt "success").
"""

from __future__ import annotations

import asyncio
import io
import json
import time
from collections.abc import AsyncGenerator, AsyncIterator, Awaitable, Callable
from typing import Any

import numpy as np
import soundfile as sf
from starlette.requests import Request
from starlette.responses import JSONResponse, Response, StreamingResponse

from synth_svc.domain.timing import wait_budget_s
from synth_svc.openai_api.errors import ApiError, error_response, from_exception
from synth_svc.openai_api.speech import MODELS, SpeechCall, parse_speech
from synth_svc.service import AudioChunk, Synthesizer
from voiceslot.rpc.interceptors import Admission, bind_caller, credential_from, request_id_from
from voiceslot.v1 import common_pb2

DEFAULT_WAIT_S = 30.0
"""How long a request waits for its voice to get a slot (HTTP clients send no deadline)."""
MAX_VOICES_PAGE = 500
CREATED = 1_700_000_000
"""``created`` of the listed models (a fixed epoch second: they have no history)."""

Handler = Callable[[Request], Awaitable[Response]]


class Routes:
    """The API's handlers over one synthesizer and the process's admission."""

    def __init__(
        self, synthesizer: Synthesizer, admission: Admission, *, max_body_bytes: int
    ) -> None:
        self.synthesizer = synthesizer
        self.admission = admission
        self.max_body_bytes = max_body_bytes

    def guarded(self, handler: Handler) -> Handler:
        """``handler`` behind admission, with every error in OpenAI's shape."""

        async def run(request: Request) -> Response:
            headers = list(request.headers.items())
            request_id, _ = request_id_from(headers)  # every HTTP answer carries it
            try:
                credential = credential_from(headers)
                principal = self.admission.authenticate(credential)
                assert credential is not None
                self.admission.take_token(principal.user)
                bind_caller(principal, credential, request_id)
                response = await handler(request)
            except Exception as exc:
                return error_response(from_exception(exc), request_id=request_id)
            response.headers["x-request-id"] = request_id
            return response

        return run

    # -- speech -------------------------------------------------------------------------

    async def speech(self, request: Request) -> Response:
        call = parse_speech(await self._json(request))
        deadline = time.monotonic() + wait_budget_s(None, default_s=DEFAULT_WAIT_S)
        if not call.response.streamed:
            return await self._whole(call, deadline)
        chunks = self.synthesizer.stream(call.request, deadline=deadline)
        try:
            # Wait for the first audio: everything that can go wrong before it (the voice,
            # the lease, the engine's first answer) still gets its own status.
            first = await anext(chunks)
        except BaseException:
            await chunks.aclose()
            raise
        return StreamingResponse(
            _body(first, chunks), media_type=call.response.media_type, headers=_no_store()
        )

    async def _whole(self, call: SpeechCall, deadline: float) -> Response:
        pcm, fmt, _ = await self.synthesizer.synthesize(call.request, deadline=deadline)
        data = await asyncio.to_thread(_flac, pcm, fmt.sample_rate)
        return Response(data, media_type=call.response.media_type, headers=_no_store())

    async def _json(self, request: Request) -> Any:
        """The body as JSON, read no further than ``max_body_bytes``."""
        limit = self.max_body_bytes
        declared = request.headers.get("content-length")
        if declared is not None and declared.isdigit() and int(declared) > limit:
            raise _too_large(limit)
        data = bytearray()
        async for piece in request.stream():
            data += piece
            if len(data) > limit:
                raise _too_large(limit)
        try:
            return json.loads(data)
        except (ValueError, UnicodeDecodeError) as exc:
            raise ApiError(400, f"the body is not valid JSON: {exc}", code="invalid_json") from None

    # -- listings -----------------------------------------------------------------------

    async def models(self, request: Request) -> Response:
        return JSONResponse({"object": "list", "data": [_model(m) for m in MODELS]})

    async def model(self, request: Request) -> Response:
        name = request.path_params["model"]
        if name not in MODELS:
            raise ApiError(404, "The model does not exist", param="model", code="model_not_found")
        return JSONResponse(_model(name))

    async def voices(self, request: Request) -> Response:
        """The caller's voices, a page at a time (``limit`` 1..500, ``after``: the
        previous page's ``next_page``)."""
        raw_limit = request.query_params.get("limit", "100")
        if not raw_limit.isdigit() or not 1 <= int(raw_limit) <= MAX_VOICES_PAGE:
            raise ApiError(
                400, f"limit: must be 1..{MAX_VOICES_PAGE}", param="limit", code="invalid_value"
            )
        voices, token = await self.synthesizer.allocator.list_voices(
            page_size=int(raw_limit), page_token=request.query_params.get("after", "")
        )
        return JSONResponse(
            {
                "object": "list",
                "data": [_voice(v) for v in voices],
                "has_more": bool(token),
                "next_page": token or None,
            }
        )


async def _body(first: AudioChunk, rest: AsyncGenerator[AudioChunk]) -> AsyncIterator[bytes]:
    """The audio, chunk by chunk; the synthesis (lease, encoder) is closed on every way
    out, including the client going away mid-body."""
    try:
        yield first.data
        async for chunk in rest:
            yield chunk.data
    finally:
        await rest.aclose()


def _flac(pcm16: bytes, rate: int) -> bytes:
    buf = io.BytesIO()
    sf.write(buf, np.frombuffer(pcm16, dtype="<i2"), rate, format="FLAC", subtype="PCM_16")
    return buf.getvalue()


def _too_large(limit: int) -> ApiError:
    return ApiError(413, f"the request body is larger than {limit} bytes", code="request_too_large")


def _no_store() -> dict[str, str]:
    return {"cache-control": "no-store"}


def _model(name: str) -> dict[str, Any]:
    return {"id": name, "object": "model", "created": CREATED, "owned_by": "voiceslot"}


def _voice(voice: Any) -> dict[str, Any]:
    state = common_pb2.VoiceState.Name(voice.state).removeprefix("VOICE_STATE_").lower()
    return {
        "id": voice.voice_id,
        "object": "voice",
        "name": voice.display_name,
        "language": voice.language,
        "provider": voice.provider,
        "state": state,
    }
