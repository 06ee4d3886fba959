"""What CLI commands need to talk to a server: target, credential, stubs, errors."""

from __future__ import annotations

import codecs
import os
import sys
from collections.abc import Iterable, Iterator
from contextlib import contextmanager
from dataclasses import dataclass

import click
import grpc

from voiceslot.config import Settings
from voiceslot.credentials import read_local_key
from voiceslot.v1 import allocator_pb2 as apb
from voiceslot.v1 import allocator_pb2_grpc, synthesizer_pb2_grpc
from voiceslot.v1 import synthesizer_pb2 as spb

UPLOAD_CHUNK = 256 * 1024
"""Bytes of sample per RegisterVoice message (well under gRPC's 4 MiB message cap)."""


def register_requests(
    sample: bytes, metadata: apb.RegisterVoiceMetadata, *, chunk: int = UPLOAD_CHUNK
) -> Iterator[apb.RegisterVoiceRequest]:
    """The RegisterVoice client stream: the metadata first, then the sample in chunks."""
    yield apb.RegisterVoiceRequest(metadata=metadata)
    for i in range(0, len(sample), chunk):
        yield apb.RegisterVoiceRequest(sample_chunk=sample[i : i + chunk])


def live_requests(
    start: spb.LiveStart, fragments: Iterable[str]
) -> Iterator[spb.SynthesizeLiveRequest]:
    """The SynthesizeLive client stream: ``start``, each fragment as it comes, ``end``."""
    yield spb.SynthesizeLiveRequest(start=start)
    for fragment in fragments:
        if fragment:
            yield spb.SynthesizeLiveRequest(text=fragment)
    yield spb.SynthesizeLiveRequest(end=spb.LiveEnd())


READ_CHUNK = 4096


def arriving_text(fd: int, *, chunk: int = READ_CHUNK) -> Iterator[str]:
    """Text from ``fd`` as it arrives: each read returns what is there now (a line from a
    terminal, whatever a pipe holds), not waiting for the end; ends at EOF. UTF-8 split
    across reads is joined; invalid bytes become U+FFFD."""
    decoder = codecs.getincrementaldecoder("utf-8")(errors="replace")
    while data := os.read(fd, chunk):
        if text := decoder.decode(data):
            yield text
    if rest := decoder.decode(b"", final=True):
        yield rest


@dataclass(frozen=True)
class Connection:
    target: str
    api_key: str


def connection_for(settings: Settings, *, target: str | None, api_key: str | None) -> Connection:
    key = api_key or os.environ.get("VOICESLOT_API_KEY") or read_local_key(settings.data_dir)
    if not key:
        raise click.UsageError(
            "no API key: pass --api-key, set VOICESLOT_API_KEY, or run 'voiceslot serve' once on "
            f"this machine (it writes {settings.data_dir / 'credentials.json'})"
        )
    host_port = target or settings.listen
    if host_port.startswith("0.0.0.0:"):
        host_port = "127.0.0.1:" + host_port.split(":", 1)[1]
    return Connection(host_port, key)


@contextmanager
def stubs(
    conn: Connection,
) -> Iterator[
    tuple[
        allocator_pb2_grpc.AllocatorServiceStub,
        synthesizer_pb2_grpc.SynthesizerServiceStub,
        tuple[tuple[str, str], ...],
    ]
]:
    channel = grpc.insecure_channel(
        conn.target, options=[("grpc.max_receive_message_length", 64 * 1024 * 1024)]
    )
    try:
        yield (
            allocator_pb2_grpc.AllocatorServiceStub(channel),
            synthesizer_pb2_grpc.SynthesizerServiceStub(channel),
            (("authorization", f"Bearer {conn.api_key}"),),
        )
    except grpc.RpcError as exc:
        code = exc.code() if hasattr(exc, "code") else None
        message = exc.details() if hasattr(exc, "details") else str(exc)
        click.echo(f"error: {code.name if code else 'RPC'}: {message}", err=True)
        sys.exit(2 if code == grpc.StatusCode.INVALID_ARGUMENT else 1)
    finally:
        channel.close()
