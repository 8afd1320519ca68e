"""gRPC load for the cache benchmarks, run as separate processes.

``python grpcload.py echo --socket PATH --response FILE [--delay S]``
    An "empty" grpc.aio server with the broker's proto: GetCredentials
    deserialises the request and answers a fixed ``Credential`` (the bytes in
    FILE, e.g. what the daemon itself answered), after ``--delay`` seconds.
    Same server options as the daemon. Prints ``ready`` once listening.

``python grpcload.py client`` (a JSON plan on stdin, JSON results on stdout)
    Phases run one after another on one grpc.aio channel per target:
    ``closed`` (``concurrency`` workers calling back to back for ``seconds``
    after ``warmup``), ``burst`` (``n`` calls started at once), ``soak``
    (getters at a fixed rate plus watch streams, every credential received
    checked against its expiry and safety margin at the moment it arrived),
    ``many`` (a list of requests, each once) or ``watchers`` (a watch per
    request held open, the server's RSS read before and after).

The benchmarks drive both through :class:`EchoServer` and :func:`run_client`.
"""

from __future__ import annotations

import argparse
import asyncio
import json
import os
import signal
import subprocess
import sys
import time
from collections.abc import Iterator
from contextlib import contextmanager, suppress
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

HERE = Path(__file__).resolve()
PYTHON = sys.executable


# -- driving the processes from a benchmark ----------------------------------------


def cpu_seconds(pid: int) -> float:
    """User + system CPU time of a process, all its threads (Linux ``/proc``)."""
    fields = Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()
    return (int(fields[11]) + int(fields[12])) / os.sysconf("SC_CLK_TCK")


@contextmanager
def EchoServer(
    socket: Path, response: bytes, delay: float = 0.0, relay: str = "none"
) -> Iterator[tuple[str, int]]:
    """Start the echo server process; yields its target (``unix://...``) and PID.

    ``relay``: behind the daemon's peer-credential acceptor, copying with that design
    (``asyncio``, ``thread``, ``splice``: see ``fakeprovider/relays.py``); ``none``: gRPC
    listens on the socket itself."""
    response_file = socket.with_suffix(".response")
    response_file.write_bytes(response)
    proc = subprocess.Popen(
        [
            PYTHON,
            str(HERE),
            "echo",
            "--socket",
            str(socket),
            "--response",
            str(response_file),
            "--delay",
            str(delay),
            "--relay",
            relay,
        ],
        stdout=subprocess.PIPE,
        text=True,
    )
    try:
        assert proc.stdout is not None
        line = proc.stdout.readline()
        if line.strip() != "ready":
            raise RuntimeError(f"echo server did not start (exit {proc.poll()})")
        yield f"unix://{socket}", proc.pid
    finally:
        proc.terminate()
        try:
            proc.wait(10)
        except subprocess.TimeoutExpired:
            proc.kill()
            proc.wait()


def run_client(plan: dict[str, Any], timeout: float = 600) -> list[dict[str, Any]]:
    """Run a client process on ``plan``; one result dict per phase."""
    result = subprocess.run(
        [PYTHON, str(HERE), "client"],
        input=json.dumps(plan),
        capture_output=True,
        text=True,
        timeout=timeout,
    )
    if result.returncode != 0:
        raise RuntimeError(f"client failed ({result.returncode}):\n{result.stderr}")
    out: list[dict[str, Any]] = json.loads(result.stdout)
    return out


# -- the echo server -----------------------------------------------------------------


async def _echo(socket: str, response_file: str, delay: float, relay: str = "none") -> None:
    import grpc

    from broker.api.v1 import broker_pb2 as pb
    from broker.api.v1 import broker_pb2_grpc as pb_grpc
    from broker.rpc.server import MAX_MESSAGE_BYTES, MAX_PENDING_CALLS

    answer = pb.Credential.FromString(Path(response_file).read_bytes())

    # Watch: the answer (its "token" set to tok-r1-N) now, then again each SIGUSR1 (a
    # renewal: N + 1), latest value only, as the daemon does; the floor of
    # bench/bench_watch_transport.py.
    class Renewal:
        n = 1
        changed = asyncio.Event()

        @classmethod
        def renew(cls) -> None:
            changed, cls.changed = cls.changed, asyncio.Event()
            cls.n += 1
            changed.set()

    asyncio.get_running_loop().add_signal_handler(signal.SIGUSR1, Renewal.renew)

    class Echo(pb_grpc.BrokerServiceServicer):
        async def GetCredentials(self, request: Any, context: Any) -> Any:
            if delay:
                await asyncio.sleep(delay)
            return answer

        async def WatchCredentials(self, request: Any, context: Any) -> None:
            sent = 0
            while True:
                n = Renewal.n
                if n == sent:
                    await Renewal.changed.wait()
                    continue
                credential = pb.Credential()
                credential.CopyFrom(answer)
                credential.config["token"] = f"tok-r1-{n}"
                kind = pb.CredentialEvent.ISSUED if not sent else pb.CredentialEvent.RENEWED
                await context.write(pb.CredentialEvent(kind=kind, credential=credential))
                sent = n

    server = grpc.aio.server(
        options=[
            ("grpc.max_receive_message_length", MAX_MESSAGE_BYTES),
            ("grpc.max_send_message_length", MAX_MESSAGE_BYTES),
            ("grpc.so_reuseport", 0),
            ("grpc.server.max_pending_requests", MAX_PENDING_CALLS),
            ("grpc.server.max_pending_requests_hard_limit", MAX_PENDING_CALLS),
        ]
    )
    pb_grpc.add_BrokerServiceServicer_to_server(Echo(), server)  # type: ignore[no-untyped-call]
    if os.path.exists(socket):
        os.unlink(socket)
    acceptor = None
    if relay == "none":
        server.add_insecure_port(f"unix://{socket}")
    else:  # the daemon's peer-credential acceptor in front, with one relay design or another
        sys.path.insert(0, str(HERE.parent.parent))  # run as a script: bench/ for fakeprovider
        from broker.rpc.acceptor import PeerAcceptor
        from broker.sockets import listen_unix
        from fakeprovider.relays import DESIGNS

        acceptor = PeerAcceptor(relay=DESIGNS[relay])
        server.add_insecure_port(acceptor.grpc_target)
    await server.start()
    if acceptor is not None:
        await acceptor.start(listen_unix(Path(socket), None))
    print("ready", flush=True)
    try:
        await server.wait_for_termination()
    finally:
        if acceptor is not None:
            await acceptor.close()


# -- the client ----------------------------------------------------------------------


def _request(spec: dict[str, Any]) -> Any:
    from broker.api.v1 import broker_pb2 as pb

    return pb.GetCredentialsRequest(
        connector=spec.get("connector", ""),
        resource_type=spec.get("resource_type", ""),
        resource_id=spec.get("resource_id", ""),
    )


async def _closed(stub: Any, phase: dict[str, Any]) -> dict[str, Any]:
    request = _request(phase["request"])
    loop = time.perf_counter
    latencies: list[float] = []
    measuring = False
    stop = False

    async def worker() -> None:
        while not stop:
            start = loop()
            await stub.GetCredentials(request)
            if measuring:
                latencies.append((loop() - start) * 1000)

    pid = phase.get("server_pid")
    workers = [asyncio.create_task(worker()) for _ in range(phase["concurrency"])]
    await asyncio.sleep(phase.get("warmup", 0.5))
    measuring = True
    begin = loop()
    cpu_begin = cpu_seconds(pid) if pid else 0.0
    await asyncio.sleep(phase["seconds"])
    measuring = False
    elapsed = loop() - begin
    server_cpu = cpu_seconds(pid) - cpu_begin if pid else None
    stop = True
    await asyncio.gather(*workers)
    return {
        "calls": len(latencies),
        "elapsed": elapsed,
        "latencies_ms": latencies,
        "server_cpu": server_cpu,
    }


async def _burst(stub: Any, phase: dict[str, Any]) -> dict[str, Any]:
    import grpc

    request = _request(phase["request"])
    latencies: list[float] = []
    errors: list[str] = []
    gate = asyncio.Event()

    async def one() -> None:
        await gate.wait()
        start = time.perf_counter()
        try:
            await stub.GetCredentials(request)
        except grpc.aio.AioRpcError as exc:
            errors.append(f"{exc.code().name}: {exc.details()}")
            return
        latencies.append((time.perf_counter() - start) * 1000)

    tasks = [asyncio.create_task(one()) for _ in range(phase["n"])]
    await asyncio.sleep(0.05)  # every task parked on the gate
    begin = time.perf_counter()
    gate.set()
    await asyncio.gather(*tasks)
    return {
        "latencies_ms": latencies,
        "errors": errors,
        "wall_ms": (time.perf_counter() - begin) * 1000,
    }


class _Checks:
    """Every credential received, judged at the moment it arrived."""

    def __init__(self) -> None:
        self.received = 0
        self.expired = 0
        self.inside_margin = 0
        #: Smallest (invalid_at - received_at) seen, in ms: how close a serve came.
        self.min_headroom_ms = float("inf")
        self.unavailable = 0
        self.other_errors: dict[str, int] = {}

    def check(self, message: Any) -> datetime | None:
        """Judge one Credential message; returns where its margin starts (None: long-lived)."""
        from broker.cache import policy
        from broker.model import ClientCredential

        received = datetime.now(UTC)
        self.received += 1
        if not message.HasField("expires_at"):
            return None
        expires = message.expires_at.ToDatetime(tzinfo=UTC)
        issued = message.issued_at.ToDatetime(tzinfo=UTC) if message.HasField("issued_at") else None
        credential = ClientCredential(
            connector_type=message.connector_type,
            auth_method=message.auth_method,
            resource_type=message.resource_type,
            resource_id=message.resource_id,
            config={},
            expires_at=expires,
            issued_at=issued,
        )
        limit = policy.invalid_at(credential)
        assert limit is not None
        if received >= expires:
            self.expired += 1
        if received >= limit:
            self.inside_margin += 1
        self.min_headroom_ms = min(self.min_headroom_ms, (limit - received).total_seconds() * 1000)
        return limit

    def error(self, exc: Any) -> None:
        import grpc

        if exc.code() == grpc.StatusCode.UNAVAILABLE:
            self.unavailable += 1
        else:
            key = f"{exc.code().name}: {exc.details()}"
            self.other_errors[key] = self.other_errors.get(key, 0) + 1


async def _soak(stub: Any, phase: dict[str, Any]) -> dict[str, Any]:
    """Getters at ``rate`` calls/s each, round-robin over the keys, plus watchers.

    A watcher holds the newest credential it got. When the next event arrives
    (a renewal, or an error once nothing valid is left), it notes whether the
    credential it held had already entered its margin, and by how much.
    """
    import grpc

    from broker.api.v1 import broker_pb2 as pb

    connector = phase["connector"]
    resources: list[str] = phase["resources"]
    gets = _Checks()
    events = _Checks()
    deadline = time.monotonic() + phase["seconds"]
    #: Watcher -> where the margin of the credential it holds starts.
    held: dict[int, datetime | None] = {}
    late_renewals: list[float] = []
    late_errors: list[float] = []
    leads: list[float] = []
    watch_kinds: dict[str, int] = {}

    async def getter(index: int) -> None:
        period = 1.0 / phase["rate"]
        next_at = time.monotonic() + period * index / max(1, phase["getters"])
        i = index
        while time.monotonic() < deadline:
            resource = resources[i % len(resources)]
            i += 1
            request = pb.GetCredentialsRequest(
                connector=connector, resource_type=phase["resource_type"], resource_id=resource
            )
            try:
                gets.check(await stub.GetCredentials(request))
            except grpc.aio.AioRpcError as exc:
                gets.error(exc)
            next_at += period
            await asyncio.sleep(max(0.0, next_at - time.monotonic()))

    async def watcher(index: int) -> None:
        request = pb.WatchCredentialsRequest(
            connector=connector,
            resource_type=phase["resource_type"],
            resource_id=resources[index % len(resources)],
        )
        try:
            async for event in stub.WatchCredentials(request):
                kind = pb.CredentialEvent.Kind.Name(event.kind)
                watch_kinds[kind] = watch_kinds.get(kind, 0) + 1
                before = held.get(index)
                if before is not None:
                    lead = (before - datetime.now(UTC)).total_seconds()
                    if lead <= 0:
                        late = late_renewals if event.HasField("credential") else late_errors
                        late.append(-lead * 1000)
                    elif event.HasField("credential"):
                        leads.append(lead)
                if event.HasField("credential"):
                    held[index] = events.check(event.credential)
                else:
                    held[index] = None  # an error: the watcher drops what it held
        except grpc.aio.AioRpcError as exc:
            if exc.code() != grpc.StatusCode.CANCELLED:
                events.error(exc)

    watch_tasks = [asyncio.create_task(watcher(i)) for i in range(phase["watchers"])]
    await asyncio.gather(*(getter(i) for i in range(phase["getters"])))
    now = datetime.now(UTC)
    still_late = [
        (now - limit).total_seconds() * 1000
        for limit in held.values()
        if limit is not None and now >= limit
    ]
    for task in watch_tasks:
        task.cancel()
    await asyncio.gather(*watch_tasks, return_exceptions=True)

    def summary(c: _Checks) -> dict[str, Any]:
        return {
            "received": c.received,
            "expired": c.expired,
            "inside_margin": c.inside_margin,
            "min_headroom_ms": None if c.min_headroom_ms == float("inf") else c.min_headroom_ms,
            "unavailable": c.unavailable,
            "other_errors": c.other_errors,
        }

    return {
        "gets": summary(gets),
        "watch": summary(events)
        | {
            "kinds": watch_kinds,
            "late_renewals": late_renewals,
            "late_errors": late_errors,
            "held_past_margin_at_end": still_late,
            "min_renewal_lead_s": min(leads, default=None),
        },
    }


def rss_kib(pid: int) -> int:
    """Resident set size of a process, KiB (Linux ``/proc``)."""
    for line in Path(f"/proc/{pid}/status").read_text().splitlines():
        if line.startswith("VmRSS:"):
            return int(line.split()[1])
    raise RuntimeError(f"no VmRSS for pid {pid}")


async def _many(stub: Any, phase: dict[str, Any]) -> dict[str, Any]:
    """Every request of ``requests`` ([connector, resource_type, resource_id]) once,
    ``concurrency`` at a time (e.g. to fill the cache)."""
    import grpc

    from broker.api.v1 import broker_pb2 as pb

    pending = iter(phase["requests"])
    errors: dict[str, int] = {}
    done = 0

    async def worker() -> None:
        nonlocal done
        for connector, resource_type, resource_id in pending:
            request = pb.GetCredentialsRequest(
                connector=connector, resource_type=resource_type, resource_id=resource_id
            )
            try:
                await stub.GetCredentials(request)
                done += 1
            except grpc.aio.AioRpcError as exc:
                name = exc.code().name
                errors[name] = errors.get(name, 0) + 1

    begin = time.perf_counter()
    await asyncio.gather(*(worker() for _ in range(phase["concurrency"])))
    return {"calls": done, "errors": errors, "elapsed": time.perf_counter() - begin}


async def _watchers(stub: Any, phase: dict[str, Any]) -> dict[str, Any]:
    """One watch per request of ``requests``, ``per_channel`` on each channel (a connection
    of its own, as separate watching processes would have); once every watch holds its
    first credential (and ``settle`` seconds more), the server's RSS (``server_pid``) next
    to the one before."""
    import grpc

    from broker.api.v1 import broker_pb2 as pb
    from broker.api.v1 import broker_pb2_grpc as pb_grpc

    per_channel = phase.get("per_channel", 100)
    channels = [  # a local subchannel pool each: else all share one connection
        grpc.aio.insecure_channel(phase["target"], options=[("grpc.use_local_subchannel_pool", 1)])
        for _ in range(0, len(phase["requests"]), per_channel)
    ]
    stubs = [pb_grpc.BrokerServiceStub(channel) for channel in channels]

    pid = phase["server_pid"]
    rss_before = rss_kib(pid)
    first = 0
    errors: dict[str, int] = {}
    everyone = asyncio.Event()
    n = len(phase["requests"])

    async def watcher(stub: Any, connector: str, resource_type: str, resource_id: str) -> None:
        nonlocal first
        request = pb.WatchCredentialsRequest(
            connector=connector, resource_type=resource_type, resource_id=resource_id
        )
        try:
            async for event in stub.WatchCredentials(request):
                if event.HasField("credential"):
                    first += 1
                    if first + sum(errors.values()) == n:
                        everyone.set()
                    await asyncio.Event().wait()  # hold the stream open
        except grpc.aio.AioRpcError as exc:
            if exc.code() != grpc.StatusCode.CANCELLED:
                errors[exc.code().name] = errors.get(exc.code().name, 0) + 1
                if first + sum(errors.values()) == n:
                    everyone.set()

    begin = time.perf_counter()
    tasks = [
        asyncio.create_task(watcher(stubs[i // per_channel], *spec))
        for i, spec in enumerate(phase["requests"])
    ]
    try:
        await asyncio.wait_for(everyone.wait(), phase.get("timeout", 300))
        opened = time.perf_counter() - begin
        await asyncio.sleep(phase.get("settle", 1.0))
        rss_after = rss_kib(pid)
    finally:
        for task in tasks:
            task.cancel()
        await asyncio.gather(*tasks, return_exceptions=True)
        for channel in channels:
            await channel.close()
    return {
        "connections": len(channels),
        "watchers": first,
        "errors": errors,
        "open_seconds": opened,
        "rss_before_kib": rss_before,
        "rss_after_kib": rss_after,
    }


async def _client(plan: dict[str, Any]) -> list[dict[str, Any]]:
    import grpc

    from broker.api.v1 import broker_pb2_grpc as pb_grpc

    channels = {target: grpc.aio.insecure_channel(target) for target in plan["targets"]}
    try:
        for channel in channels.values():
            await asyncio.wait_for(channel.channel_ready(), 10)
        results = []
        for phase in plan["phases"]:
            stub = pb_grpc.BrokerServiceStub(channels[phase["target"]])
            runner = {
                "closed": _closed,
                "burst": _burst,
                "soak": _soak,
                "many": _many,
                "watchers": _watchers,
            }[phase["mode"]]
            results.append(await runner(stub, phase))
        return results
    finally:
        for channel in channels.values():
            await channel.close()


def main() -> None:
    parser = argparse.ArgumentParser()
    sub = parser.add_subparsers(dest="command", required=True)
    echo = sub.add_parser("echo")
    echo.add_argument("--socket", required=True)
    echo.add_argument("--response", required=True)
    echo.add_argument("--delay", type=float, default=0.0)
    echo.add_argument(
        "--relay",
        choices=("none", "loop", "asyncio", "thread", "splice", "heldgil", "blocking"),
        default="none",
    )
    sub.add_parser("client")
    args = parser.parse_args()
    if args.command == "echo":
        with suppress(KeyboardInterrupt):
            serve = _echo(args.socket, args.response, args.delay, args.relay)
            if os.environ.get("BROKER_EVENT_LOOP", "asyncio") == "uvloop":  # as the daemon
                import uvloop

                uvloop.run(serve)
            else:
                asyncio.run(serve)
    else:
        results = asyncio.run(_client(json.load(sys.stdin)))
        json.dump(results, sys.stdout)


if __name__ == "__main__":
    main()
