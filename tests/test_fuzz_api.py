"""Property-based fuzzing of every broker.v1 method and every helper route, against one
real daemon (as root: an admin, so calls get past the policy into the service).

Requests are generated from the message descriptors (strings with NUL, control
characters and sizes around every limit, any ints and floats, maps, timestamps
out of range), plus raw garbage frames. After every call: no INTERNAL or UNKNOWN
status, the daemon is still running, no traceback in its log, and a write that
failed left the store as it was. Helper routes: no 5xx, an answer every time, no
traceback.

Bounded: a fixed number of examples, derandomized (the same ones every run), a
per-example deadline; the whole module takes well under a minute.
"""

from __future__ import annotations

import json
import socket
from collections.abc import Iterator
from datetime import timedelta
from pathlib import Path
from typing import Any

import grpc
import pytest
from google.protobuf.descriptor import FieldDescriptor
from google.protobuf.timestamp_pb2 import Timestamp
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from broker.api.v1 import broker_pb2 as pb
from broker.api.v1 import broker_pb2_grpc as pb_grpc
from broker.rpc import limits
from tests.daemon import Daemon, running_daemon

BAD = {grpc.StatusCode.INTERNAL, grpc.StatusCode.UNKNOWN}
WRITES = {"RegisterConnector", "UpdateConnector", "DeleteConnector"}
STREAMS = {m.name for m in limits.SERVICE.methods if m.server_streaming}
METHODS = [m.name for m in limits.SERVICE.methods]

SEEDS = [
    pb.RegisterConnectorRequest(
        name="hub",
        connector_type="docker",
        auth_method="password",
        config={"username": "u", "password": "pw", "registry": "127.0.0.1:1"},
        labels={"team": "a"},
        description="the registry",
        no_verify=True,
    ),
    pb.RegisterConnectorRequest(
        name="kube",
        connector_type="kubernetes",
        auth_method="token",
        config={"server": "https://127.0.0.1:1", "token": "t0k", "insecure": "true"},
        no_verify=True,
    ),
]

#: Words the daemon knows, so that generated requests also get past the first checks.
WORDS = [
    "",
    "hub",
    "kube",
    "docker",
    "kubernetes",
    "aws",
    "gcp",
    "password",
    "token",
    "session-token",
    "docker-registry",
    "kubernetes-cluster",
    "aws-generic",
    "127.0.0.1:1",
    "https://127.0.0.1:1",
    "username",
    "registry",
    "server",
    "insecure",
    "true",
    "team",
    "get",
    "view",
    "manage",
    "admin",
    "root",
    "spiffe://x/y",
    "user:root",
]
SIZES = [63, 64, 65, 255, 256, 257, 1024, 1025, 65536, 65537, 300_000]

words = st.sampled_from(WORDS)
texts = st.one_of(
    # Known words three times in six: enough requests get past the first checks.
    words,
    words,
    words,
    st.text(max_size=24),
    st.text(alphabet=st.characters(max_codepoint=0x9F, categories=["Cc"]), max_size=8),
    st.builds(
        lambda c, n: c * n,
        st.sampled_from(["x", "é", "\x00", "\n", "🔑"]),
        st.sampled_from(SIZES),
    ),
)
timestamps = st.builds(
    Timestamp,
    seconds=st.one_of(
        st.integers(0, 253402300799), st.integers(-(2**63), 2**63 - 1), st.sampled_from([-1, 0])
    ),
    nanos=st.one_of(st.integers(0, 999_999_999), st.integers(-(2**31), 2**31 - 1)),
)


def _value(field: FieldDescriptor) -> st.SearchStrategy[Any]:
    entry = field.message_type
    if entry is not None and entry.GetOptions().map_entry:
        return st.dictionaries(texts, texts, max_size=4) | st.just(
            {f"k{i}": "v" for i in range(70)}
        )
    if entry is not None:
        assert entry.full_name == "google.protobuf.Timestamp", entry.full_name
        return timestamps
    if field.name == "no_verify":
        return st.just(True)  # verifying would reach out to the (fuzzed) upstream
    kinds: dict[int, st.SearchStrategy[Any]] = {
        FieldDescriptor.TYPE_STRING: texts,
        FieldDescriptor.TYPE_BOOL: st.booleans(),
        FieldDescriptor.TYPE_INT32: st.integers(-(2**31), 2**31 - 1)
        | st.sampled_from([0, 1, 500, 501]),
        FieldDescriptor.TYPE_INT64: st.integers(-(2**63), 2**63 - 1)
        | st.sampled_from([0, 1, 60, 3600]),
        FieldDescriptor.TYPE_DOUBLE: st.floats(allow_nan=True, allow_infinity=True),
    }
    one = kinds[field.type]
    if getattr(field, "is_repeated", False) or getattr(field, "label", 0) == 3:
        return st.lists(one, max_size=4) | st.just(["x"] * 70)
    return one


#: Valid requests that reach deep into the service; examples change one or two fields.
TEMPLATES: dict[str, dict[str, Any]] = {
    "DescribeConnectorType": {"connector_type": "docker"},
    "RegisterConnector": {
        "name": "new",
        "connector_type": "docker",
        "config": {"username": "u", "password": "p", "registry": "127.0.0.1:1"},
        "no_verify": True,
    },
    "UpdateConnector": {"name": "hub", "labels": {"team": "b"}, "no_verify": True},
    "DeleteConnector": {"name": "hub"},
    "GetConnector": {"name": "hub", "show_secrets": True},
    "VerifyConnector": {"name": "kube"},
    "GetCredentials": {"connector": "hub"},
    "WatchCredentials": {"connector": "hub"},
    "ListResources": {"name": "hub", "timeout_seconds": 1.0},
    "SetPreferredConnector": {
        "resource_type": "docker-registry",
        "resource_id": "127.0.0.1:1",
        "connector": "hub",
    },
    "CreateSdkEndpoint": {"kind": "aws", "connector": "hub"},
    "CheckPolicy": {"user": "root", "action": "get", "connector": "hub"},
}


def _request(method: str) -> st.SearchStrategy[Any]:
    cls = limits.request_types()[method]
    fields = {f.name: _value(f) for f in cls.DESCRIPTOR.fields}
    anything = st.fixed_dictionaries({}, optional=fields).map(lambda kw: cls(**kw))
    template = TEMPLATES.get(method)
    if template is None:
        return anything
    names = sorted(fields)
    mutated = st.lists(st.sampled_from(names), min_size=1, max_size=2, unique=True).flatmap(
        lambda chosen: st.fixed_dictionaries({n: fields[n] for n in chosen})
    )
    near = mutated.map(lambda kw: cls(**{**template, **kw}))
    return st.one_of(anything, near)


calls = st.sampled_from(METHODS).flatmap(lambda m: st.tuples(st.just(m), _request(m)))


class Target:
    """The daemon, its stub, and the log offset already checked."""

    def __init__(self, daemon: Daemon, channel: grpc.Channel) -> None:
        self.daemon = daemon
        self.channel = channel
        self.stub = pb_grpc.BrokerServiceStub(channel)  # type: ignore[no-untyped-call]
        self.seen = 0
        self.baseline = self.listing()

    def listing(self) -> list[bytes]:
        out, token = [], ""
        while True:
            reply = self.stub.ListConnectors(pb.ListConnectorsRequest(page_token=token), timeout=10)
            out += [c.SerializeToString(deterministic=True) for c in reply.connectors]
            token = reply.next_page_token
            if not token:
                return out

    def healthy(self) -> None:
        assert self.daemon.proc is not None and self.daemon.proc.poll() is None, "daemon exited"
        log = self.daemon.log()
        fresh, self.seen = log[self.seen :], len(log)
        assert "Traceback" not in fresh, fresh

    def restore(self) -> None:
        """Back to the two seed connectors (a fuzzed write may have succeeded)."""
        for c in self.stub.ListConnectors(pb.ListConnectorsRequest(page_size=500)).connectors:
            if c.SerializeToString(deterministic=True) not in self.baseline:
                self.stub.DeleteConnector(pb.DeleteConnectorRequest(name=c.name))
        names = {c.name for c in self.stub.ListConnectors(pb.ListConnectorsRequest()).connectors}
        for seed in SEEDS:
            if seed.name not in names:
                self.stub.RegisterConnector(seed)
        self.baseline = self.listing()


@pytest.fixture(scope="module")
def target(tmp_path_factory: pytest.TempPathFactory) -> Iterator[Target]:
    with (
        running_daemon(tmp_path_factory.mktemp("fuzz") / "data") as daemon,
        grpc.insecure_channel(f"unix://{daemon.socket}") as channel,
    ):
        stub = pb_grpc.BrokerServiceStub(channel)  # type: ignore[no-untyped-call]
        for seed in SEEDS:
            stub.RegisterConnector(seed)
        yield Target(daemon, channel)


def _invoke(target: Target, method: str, request: Any) -> grpc.StatusCode:
    try:
        if method in STREAMS:
            stream = getattr(target.stub, method)(request, timeout=5)
            try:
                for _ in stream:  # the first message is enough (a watch never ends)
                    break
            finally:
                stream.cancel()
        else:
            getattr(target.stub, method)(request, timeout=10)
    except grpc.RpcError as exc:
        return exc.code()
    return grpc.StatusCode.OK


FUZZ = settings(
    max_examples=600,
    deadline=timedelta(seconds=10),
    derandomize=True,
    database=None,
    suppress_health_check=[HealthCheck.too_slow, HealthCheck.data_too_large],
)


@FUZZ
@given(call=calls)
def test_generated_requests(target: Target, call: tuple[str, Any]) -> None:
    method, request = call
    code = _invoke(target, method, request)
    assert code not in BAD, (method, request, code)
    target.healthy()
    if method in WRITES:
        if code in (grpc.StatusCode.OK, grpc.StatusCode.CANCELLED):
            target.restore()
        else:
            assert target.listing() == target.baseline, (method, code)


@settings(FUZZ, max_examples=200)
@given(method=st.sampled_from(METHODS), raw=st.binary(max_size=512))
def test_garbage_frames(target: Target, method: str, raw: bytes) -> None:
    path = f"/{limits.SERVICE.full_name}/{method}"
    try:
        if method in STREAMS:
            for _ in target.channel.unary_stream(path)(raw, timeout=5):
                break
        else:
            target.channel.unary_unary(path)(raw, timeout=10)
    except grpc.RpcError as exc:
        assert exc.code() not in BAD, (method, raw, exc.code(), exc.details())
    target.healthy()
    if method in WRITES:
        listing = target.listing()
        if listing != target.baseline:
            target.restore()


# -- the helper socket ------------------------------------------------------------------

HELPER_ROUTES = [
    ("GET", "/v1/health"),
    ("POST", "/v1/credentials"),
    ("POST", "/v1/exec-credential"),
    ("POST", "/v1/credential-process"),
    ("POST", "/v1/docker/get"),
    ("GET", "/v1/docker/list"),
    ("POST", "/v1/docker/managed"),
]
HELPER_KEYS = [
    "connector",
    "resource_type",
    "resource_id",
    "server_url",
    "api_version",
    "exec_info",
    "action",
]

json_values = st.recursive(
    st.none() | st.booleans() | st.integers() | st.floats(allow_nan=False) | texts,
    lambda inner: st.lists(inner, max_size=3) | st.dictionaries(texts, inner, max_size=3),
    max_leaves=8,
)
json_bodies = st.one_of(
    st.dictionaries(st.sampled_from(HELPER_KEYS), json_values, max_size=4),
    json_values,
    st.builds(lambda n: "[" * n + "]" * n, st.integers(1, 5000)),
).map(lambda v: v if isinstance(v, str) and v.startswith("[") else json.dumps(v))
bodies = st.one_of(json_bodies.map(str.encode), st.binary(max_size=256))
header_text = st.text(
    alphabet=st.characters(min_codepoint=0x20, max_codepoint=0x7E), max_size=40
) | st.sampled_from(["application/json", "chunked", "-1", "99999999999"])


def _http(path: Path, raw: bytes) -> bytes:
    """One exchange, as the helpers make it (no half-close: aiohttp drops the answer then)."""
    sock = socket.socket(socket.AF_UNIX, socket.SOCK_STREAM)
    sock.settimeout(15)
    try:
        sock.connect(str(path))
        sock.sendall(raw)
        chunks = []
        while chunk := sock.recv(65536):
            chunks.append(chunk)
        return b"".join(chunks)
    finally:
        sock.close()


@settings(FUZZ, max_examples=300)
@given(
    route=st.sampled_from(HELPER_ROUTES),
    method=st.sampled_from(["GET", "POST", "PUT", "DELETE", None]),
    route_noise=st.sampled_from(["", "/", "/x", "?a=b", "%00", "/../v1/health"]),
    headers=st.dictionaries(st.sampled_from(["Content-Type", "X-Junk"]), header_text, max_size=2),
    chunked=st.booleans(),
    body=bodies,
)
def test_helper_routes(
    target: Target,
    route: tuple[str, str],
    method: str | None,
    route_noise: str,
    headers: dict[str, str],
    chunked: bool,
    body: bytes,
) -> None:
    verb = method or route[0]
    lines = [f"{verb} {route[1]}{route_noise} HTTP/1.1", "Host: localhost", "Connection: close"]
    lines += [f"{k}: {v}" for k, v in headers.items()]
    if chunked:  # well-formed framing, so that the daemon never waits for more of the body
        lines.append("Transfer-Encoding: chunked")
        body = (f"{len(body):x}\r\n".encode() + body + b"\r\n0\r\n\r\n") if body else b"0\r\n\r\n"
    else:
        lines.append(f"Content-Length: {len(body)}")
    raw = ("\r\n".join(lines) + "\r\n\r\n").encode() + body
    answer = _http(target.daemon.data_dir / "helper.sock", raw)
    status_line = answer.split(b"\r\n", 1)[0]
    assert status_line.startswith((b"HTTP/1.1 ", b"HTTP/1.0 ")), (raw[:200], answer[:200])
    status = int(status_line.split()[1])
    assert status < 500, (raw[:200], answer[:300])
    target.healthy()


def test_the_fuzzed_daemon_still_answers_and_kept_its_store(target: Target) -> None:
    target.restore()
    names = {c.name for c in target.stub.ListConnectors(pb.ListConnectorsRequest()).connectors}
    assert names == {"hub", "kube"}
    reply = target.stub.GetCredentials(pb.GetCredentialsRequest(connector="hub"), timeout=10)
    assert reply.config["password"] == "pw"
