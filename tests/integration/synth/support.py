"""Helpers for the synthesizer's tests: an emulator that rejects chosen texts for good,
waiting on conditions with deadlines, and settings for a runtime on the emulator.

Why a wrapper around the emulator: its fault script is keyed on provider and operation,
not on text, and a batch test needs a few items that fail permanently (a 4xx) while the
others fail only transiently. ``RejectText`` answers ElevenLabs' own 400 shape for any
text-to-speech request whose text contains a marker, and passes everything else through.
"""

from __future__ import annotations

import asyncio
import inspect
import json
import threading
import time
from collections.abc import Awaitable, Callable
from typing import Any
from unittest import mock

from starlette.types import ASGIApp, Message, Receive, Scope, Send

from voiceslot.testing.emulator import ProviderEmulator
from voiceslot.testing.emulator import server as emulator_server

REJECT_MARKER = "unpronounceable"
"""Texts containing this word are refused by ``RejectingEmulator`` with a 400."""
ELEVEN = "eleven"
"""Provider account name the synth tests give the emulated ElevenLabs account."""


class RejectText:
    """ASGI middleware: a text-to-speech request whose text contains ``marker`` gets
    ElevenLabs' 400 error body, as a provider answers text it cannot speak."""

    def __init__(self, app: ASGIApp, marker: str) -> None:
        self.app = app
        self.marker = marker.lower()
        self._lock = threading.Lock()
        self.rejected = 0

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        if scope["type"] != "http" or "/text-to-speech/" not in scope.get("path", ""):
            await self.app(scope, receive, send)
            return
        messages: list[Message] = []
        body = b""
        while True:
            message = await receive()
            messages.append(message)
            body += message.get("body", b"")
            if not message.get("more_body"):
                break
        if self.marker in body.decode("utf-8", "replace").lower():
            with self._lock:
                self.rejected += 1
            payload = json.dumps(
                {"detail": {"status": "invalid_text", "message": "This text cannot be spoken."}}
            ).encode()
            await send(
                {
                    "type": "http.response.start",
                    "status": 400,
                    "headers": [(b"content-type", b"application/json")],
                }
            )
            await send({"type": "http.response.body", "body": payload})
            return

        async def replay() -> Message:
            return messages.pop(0) if messages else await receive()

        await self.app(scope, replay, send)


class RejectingEmulator(ProviderEmulator):
    """The provider emulator behind ``RejectText``."""

    def __init__(self, *, marker: str = REJECT_MARKER, **kwargs: Any) -> None:
        super().__init__(**kwargs)
        self.marker = marker
        self.rejecter: RejectText | None = None

    def start(self, *, timeout_s: float = 10.0) -> RejectingEmulator:
        original = emulator_server.create_app

        def create_app(state: Any) -> ASGIApp:
            self.rejecter = RejectText(original(state), self.marker)
            return self.rejecter

        with mock.patch.object(emulator_server, "create_app", create_app):
            super().start(timeout_s=timeout_s)
        return self

    @property
    def rejected(self) -> int:
        return self.rejecter.rejected if self.rejecter else 0


async def eventually(
    predicate: Callable[[], Any | Awaitable[Any]],
    *,
    timeout: float = 10.0,
    interval: float = 0.02,
    what: str = "condition",
) -> Any:
    """Poll ``predicate`` (sync or async) until it returns something truthy, and return
    that; fail the test after ``timeout`` seconds."""
    deadline = time.monotonic() + timeout
    while True:
        value = predicate()
        if inspect.isawaitable(value):
            value = await value
        if value:
            return value
        if time.monotonic() > deadline:
            raise AssertionError(f"{what} not reached within {timeout} s (last: {value!r})")
        await asyncio.sleep(interval)


class MotoS3:
    """moto's S3 server on loopback (a real S3 endpoint reached over HTTP), with the
    credentials boto3 needs in this process's environment and in any child's."""

    ENV = {
        "AWS_ACCESS_KEY_ID": "testing",
        "AWS_SECRET_ACCESS_KEY": "testing",
        "AWS_DEFAULT_REGION": "us-east-1",
    }

    def __init__(self) -> None:
        from moto.server import ThreadedMotoServer

        self._server = ThreadedMotoServer(ip_address="127.0.0.1", port=0, verbose=False)
        self.endpoint = ""

    def __enter__(self) -> MotoS3:
        self._server.start()
        host, port = self._server.get_host_and_port()
        self.endpoint = f"http://{host}:{port}"
        return self

    def __exit__(self, *exc: object) -> None:
        self._server.stop()

    def client(self) -> Any:
        import boto3
        from botocore.config import Config

        session = boto3.session.Session(
            aws_access_key_id="testing", aws_secret_access_key="testing", region_name="us-east-1"
        )
        return session.client(
            "s3",
            endpoint_url=self.endpoint,
            config=Config(s3={"addressing_style": "path"}, signature_version="s3v4"),
        )

    def new_bucket(self) -> str:
        import uuid

        name = f"synth-{uuid.uuid4().hex[:16]}"
        self.client().create_bucket(Bucket=name)
        return name

    def keys(self, bucket: str, prefix: str = "") -> list[str]:
        paginator = self.client().get_paginator("list_objects_v2")
        return [
            obj["Key"]
            for page in paginator.paginate(Bucket=bucket, Prefix=prefix)
            for obj in page.get("Contents", ())
        ]
