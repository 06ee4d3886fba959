"""gRPC server reflection, both versions: ``grpc.reflection.v1alpha`` and
``grpc.reflection.v1``.

grpcio-reflection (1.85) ships only v1alpha, while current clients ask for v1 first and
some only for v1 (``buf curl --reflect-protocol grpc-v1``, recent grpcurl). The v1 proto
is the v1alpha one moved to package ``grpc.reflection.v1``: the same messages, fields and
numbers, so the same bytes on the wire. Hence no generated v1 code here: v1 is served by
grpcio-reflection's own servicer under the v1 method name, with the v1alpha message
classes doing the (identical) encoding. So that v1 can be described like any other
service, its descriptor, derived from v1alpha's by renaming the file and package, is
added to the default descriptor pool that reflection answers from.
"""

from __future__ import annotations

from collections.abc import Iterable

import grpc
from google.protobuf import descriptor_pb2, descriptor_pool
from grpc_reflection.v1alpha import reflection_pb2 as v1alpha
from grpc_reflection.v1alpha._async import ReflectionServicer

V1ALPHA_SERVICE = "grpc.reflection.v1alpha.ServerReflection"
V1_PACKAGE = "grpc.reflection.v1"
V1_SERVICE = f"{V1_PACKAGE}.ServerReflection"
V1_FILE = "grpc/reflection/v1/reflection.proto"


def register_v1_descriptor(pool: descriptor_pool.DescriptorPool | None = None) -> None:
    """Add ``grpc/reflection/v1/reflection.proto`` to ``pool`` (default: the default
    pool) unless it is there already."""
    pool = pool or descriptor_pool.Default()
    try:
        pool.FindFileByName(V1_FILE)
        return
    except KeyError:
        pass
    proto = descriptor_pb2.FileDescriptorProto()
    v1alpha.DESCRIPTOR.CopyToProto(proto)
    old_package = proto.package
    proto.name = V1_FILE
    proto.package = V1_PACKAGE
    proto.options.java_package = "io.grpc.reflection.v1"
    proto.options.java_outer_classname = "ServerReflectionProto"
    # Fully-qualified type references name the package: move them with it.
    for message in proto.message_type:
        for f in message.field:
            if f.type_name.startswith(f".{old_package}."):
                f.type_name = f".{V1_PACKAGE}." + f.type_name[len(old_package) + 2 :]
    for service in proto.service:
        for method in service.method:
            method.input_type = method.input_type.replace(old_package, V1_PACKAGE, 1)
            method.output_type = method.output_type.replace(old_package, V1_PACKAGE, 1)
    pool.Add(proto)


def enable_reflection(service_names: Iterable[str], server: grpc.aio.Server) -> None:
    """Serve reflection v1 and v1alpha for ``service_names`` (and for themselves)."""
    register_v1_descriptor()
    names = [*service_names, V1_SERVICE, V1ALPHA_SERVICE]
    servicer = ReflectionServicer(names)
    handler = grpc.stream_stream_rpc_method_handler(
        servicer.ServerReflectionInfo,
        request_deserializer=v1alpha.ServerReflectionRequest.FromString,
        response_serializer=v1alpha.ServerReflectionResponse.SerializeToString,
    )
    server.add_generic_rpc_handlers(
        [
            grpc.method_handlers_generic_handler(service, {"ServerReflectionInfo": handler})
            for service in (V1_SERVICE, V1ALPHA_SERVICE)
        ]
    )
