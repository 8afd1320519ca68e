"""gRPC server reflection v1, from a client that asks nothing else: grpc-js with the
official grpc.reflection.v1 proto (as @grpc/reflection ships it), no v1alpha fallback.
(v1alpha is checked in test_daemon_e2e.)"""

from __future__ import annotations

import json
import subprocess
from collections.abc import Iterator
from pathlib import Path

import pytest

from broker.rpc.reflection import V1_FILE, v1_file_descriptor
from tests.daemon import Daemon, running_daemon

NODE_CLIENT = Path(__file__).parent / "node" / "reflection_v1.js"


@pytest.fixture
def daemon(tmp_path: Path) -> Iterator[Daemon]:
    with running_daemon(tmp_path / "data") as d:
        yield d


def test_a_v1_only_client_lists_and_describes_the_services(daemon: Daemon) -> None:
    symbols = [
        "broker.v1.BrokerService",
        "broker.v1.GetCredentialsRequest",
        "grpc.health.v1.Health",
        "grpc.reflection.v1.ServerReflection",
        "no.such.Symbol",
    ]
    result = subprocess.run(
        ["node", str(NODE_CLIENT), str(daemon.socket), *symbols],
        capture_output=True,
        text=True,
        timeout=60,
    )
    assert result.returncode == 0, result.stderr
    got = json.loads(result.stdout)
    assert got["services"] == [
        "broker.v1.BrokerService",
        "grpc.health.v1.Health",
        "grpc.reflection.v1.ServerReflection",
        "grpc.reflection.v1alpha.ServerReflection",
    ]
    files = got["files"]
    assert files["broker.v1.BrokerService"] == [
        "broker/v1/broker.proto",
        "google/protobuf/timestamp.proto",
    ]
    assert files["broker.v1.GetCredentialsRequest"][0] == "broker/v1/broker.proto"
    assert files["grpc.health.v1.Health"] == ["grpc_health/v1/health.proto"]
    assert files["grpc.reflection.v1.ServerReflection"] == [V1_FILE]
    assert files["no.such.Symbol"].startswith("error: 5 ")  # NOT_FOUND, as a reflection error


def test_the_v1_descriptor_is_v1alpha_renamed_and_matches_the_official_shape() -> None:
    proto = v1_file_descriptor()
    assert (proto.name, proto.package) == (V1_FILE, "grpc.reflection.v1")
    (service,) = proto.service
    (method,) = service.method
    assert (service.name, method.name) == ("ServerReflection", "ServerReflectionInfo")
    assert method.client_streaming and method.server_streaming
    assert method.input_type == ".grpc.reflection.v1.ServerReflectionRequest"
    assert method.output_type == ".grpc.reflection.v1.ServerReflectionResponse"
    references = [f.type_name for m in proto.message_type for f in m.field if f.type_name]
    assert references and all(r.startswith(".grpc.reflection.v1.") for r in references)
    assert proto.options.java_package == "io.grpc.reflection.v1"
    assert not proto.options.deprecated
