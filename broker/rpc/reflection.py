"""gRPC server reflection under both names: ``grpc.reflection.v1`` and ``v1alpha``.

grpcio-reflection implements only ``grpc.reflection.v1alpha``; current tools
(grpcurl, Postman, grpc-js clients) ask ``grpc.reflection.v1`` first, and some
ask nothing else. v1 is the same protocol under another package name (every
message, field number and the method are identical), so the one servicer
answers both: registered a second time under the v1 service name with the
(wire-identical) v1alpha codecs. The v1 file descriptor, derived from
v1alpha's with the package renamed, joins the default pool so that reflection
describes the v1 service too.
"""

from __future__ import annotations

from collections.abc import Iterable

import grpc
from google.protobuf import descriptor_pb2, descriptor_pool
from grpc_reflection.v1alpha import reflection as alpha
from grpc_reflection.v1alpha import reflection_pb2 as alpha_pb2

V1_PACKAGE = "grpc.reflection.v1"
V1_FILE = "grpc/reflection/v1/reflection.proto"
V1_SERVICE_NAME = f"{V1_PACKAGE}.ServerReflection"
V1ALPHA_SERVICE_NAME: str = alpha.SERVICE_NAME
METHOD = "ServerReflectionInfo"


def _renamed(type_name: str, old: str) -> str:
    prefix = f".{old}."
    if type_name.startswith(prefix):
        return f".{V1_PACKAGE}.{type_name[len(prefix) :]}"
    return type_name


def _rename_messages(messages: Iterable[descriptor_pb2.DescriptorProto], old: str) -> None:
    for message in messages:
        for fld in message.field:
            if fld.type_name:
                fld.type_name = _renamed(fld.type_name, old)
        _rename_messages(message.nested_type, old)


def v1_file_descriptor() -> descriptor_pb2.FileDescriptorProto:
    """``grpc/reflection/v1/reflection.proto``: v1alpha's descriptor, package renamed."""
    proto = descriptor_pb2.FileDescriptorProto()
    alpha_pb2.DESCRIPTOR.CopyToProto(proto)
    old = proto.package
    proto.name = V1_FILE
    proto.package = V1_PACKAGE
    _rename_messages(proto.message_type, old)
    for service in proto.service:
        for method in service.method:
            method.input_type = _renamed(method.input_type, old)
            method.output_type = _renamed(method.output_type, old)
    proto.ClearField("options")  # v1alpha's are marked deprecated and name v1alpha packages
    proto.options.java_multiple_files = True
    proto.options.java_package = "io.grpc.reflection.v1"
    proto.options.java_outer_classname = "ServerReflectionProto"
    proto.options.go_package = "google.golang.org/grpc/reflection/grpc_reflection_v1"
    return proto


def _add_v1_file(pool: descriptor_pool.DescriptorPool) -> None:
    try:
        pool.FindFileByName(V1_FILE)
    except KeyError:
        pool.Add(v1_file_descriptor())


def enable_server_reflection(server: grpc.aio.Server, service_names: Iterable[str]) -> None:
    """Serve reflection for ``service_names`` (and for itself) under v1 and v1alpha."""
    _add_v1_file(descriptor_pool.Default())
    names = (*service_names, V1_SERVICE_NAME, V1ALPHA_SERVICE_NAME)
    alpha.enable_server_reflection(names, server)
    servicer = alpha.aio.ReflectionServicer(names)  # type: ignore[attr-defined]
    handler = grpc.stream_stream_rpc_method_handler(
        servicer.ServerReflectionInfo,
        request_deserializer=alpha_pb2.ServerReflectionRequest.FromString,
        response_serializer=alpha_pb2.ServerReflectionResponse.SerializeToString,
    )
    server.add_generic_rpc_handlers(
        (grpc.method_handlers_generic_handler(V1_SERVICE_NAME, {METHOD: handler}),)
    )
