"""Server reflection answers on v1 (what buf curl and recent grpcurl ask for) as well as
v1alpha, and health's List names the same services."""

from __future__ import annotations

import asyncio
import shutil
import subprocess
import sys
from pathlib import Path
from typing import Any

import grpc
from google.protobuf import descriptor_pb2, descriptor_pool, message_factory
from grpc_health.v1 import health_pb2, health_pb2_grpc

from voiceslot.rpc.reflection import register_v1_descriptor

SERVICES = {
    "voiceslot.v1.AllocatorService",
    "voiceslot.v1.SynthesizerService",
    "grpc.health.v1.Health",
    "grpc.reflection.v1.ServerReflection",
    "grpc.reflection.v1alpha.ServerReflection",
}


def v1_message(name: str) -> Any:
    """A v1 message class built from the descriptor, as a v1-only client has it."""
    register_v1_descriptor()
    pool = descriptor_pool.Default()
    return message_factory.GetMessageClass(pool.FindMessageTypeByName(f"grpc.reflection.v1.{name}"))


async def ask_v1(channel: grpc.aio.Channel, **request: Any) -> Any:
    request_cls, response_cls = (
        v1_message("ServerReflectionRequest"),
        v1_message("ServerReflectionResponse"),
    )
    call = channel.stream_stream(
        "/grpc.reflection.v1.ServerReflection/ServerReflectionInfo",
        request_serializer=request_cls.SerializeToString,
        response_deserializer=response_cls.FromString,
    )
    responses = [r async for r in call(iter([request_cls(**request)]), timeout=10)]
    assert len(responses) == 1
    return responses[0]


async def test_v1_lists_every_service(channel):
    response = await ask_v1(channel, list_services="")
    names = {s.name for s in response.list_services_response.service}
    assert names == SERVICES


async def test_v1_describes_services_including_itself(channel):
    for symbol in ("voiceslot.v1.AllocatorService", "grpc.reflection.v1.ServerReflection"):
        response = await ask_v1(channel, file_containing_symbol=symbol)
        files = [
            descriptor_pb2.FileDescriptorProto.FromString(raw)
            for raw in response.file_descriptor_response.file_descriptor_proto
        ]
        package = symbol.rsplit(".", 1)[0]
        assert any(
            f.package == package and any(s.name == symbol.rsplit(".", 1)[1] for s in f.service)
            for f in files
        ), files


async def test_health_list_names_the_services(channel):
    response = await health_pb2_grpc.HealthStub(channel).List(health_pb2.HealthListRequest())
    assert set(response.statuses) == {
        "",
        "voiceslot.v1.AllocatorService",
        "voiceslot.v1.SynthesizerService",
    }
    assert all(
        s.status == health_pb2.HealthCheckResponse.SERVING for s in response.statuses.values()
    )


# The dev extra installs buf (buf-bin) into the venv: required, never skipped.
BUF = shutil.which("buf") or str(Path(sys.executable).parent / "buf")


async def test_buf_curl_lists_services_over_reflection_v1(runtime):
    proc = await asyncio.create_subprocess_exec(
        BUF,
        "curl",
        "--list-services",
        "--reflect-protocol",
        "grpc-v1",
        "--protocol",
        "grpc",
        "--http2-prior-knowledge",
        f"http://127.0.0.1:{runtime.port}",
        stdout=subprocess.PIPE,
        stderr=subprocess.PIPE,
    )
    out, err = await asyncio.wait_for(proc.communicate(), 60)
    assert proc.returncode == 0, err.decode()
    assert set(out.decode().split()) == SERVICES
