"""The `broker` command: the daemon (`serve`) and its client."""

from __future__ import annotations

import sys
from pathlib import Path
from typing import Annotated

import grpc
import typer

import broker.cli.config_show as config_show_cli
from broker import __version__
from broker.cli import connector, credentials, env, login, outputs, policy
from broker.cli import store as store_cli
from broker.cli.client import rpc_error
from broker.cli.options import Output, OutputOpt, SocketOpt
from broker.errors import BrokerError, NotFound

app = typer.Typer(
    no_args_is_help=True,
    add_completion=False,
    pretty_exceptions_enable=False,
    help="credential-broker: short-lived, least-privilege credentials for one resource at a time.",
)
app.add_typer(connector.app, name="connector")
app.add_typer(credentials.app, name="credentials")
app.add_typer(login.login_app, name="login")
app.add_typer(env.app, name="env")
app.add_typer(login.logout_app, name="logout")
app.add_typer(policy.app, name="policy")
app.add_typer(store_cli.app, name="store")
app.add_typer(outputs.app, name="outputs")
app.command("whoami")(policy.whoami)
config_app = typer.Typer(no_args_is_help=True, help="Inspect the daemon configuration.")
app.add_typer(config_app, name="config")


@app.command()
def serve(
    config: Annotated[Path | None, typer.Option("--config", "-c", help="TOML config file")] = None,
    data_dir: Annotated[Path | None, typer.Option("--data-dir")] = None,
    socket: Annotated[Path | None, typer.Option("--socket")] = None,
    tcp: Annotated[str | None, typer.Option("--tcp", help="HOST:PORT")] = None,
    tls_cert: Annotated[Path | None, typer.Option("--tls-cert")] = None,
    tls_key: Annotated[Path | None, typer.Option("--tls-key")] = None,
    tls_client_ca: Annotated[Path | None, typer.Option("--tls-client-ca")] = None,
    insecure: Annotated[
        bool | None, typer.Option("--insecure", help="Plain TCP, loopback only")
    ] = None,
    metrics: Annotated[str | None, typer.Option("--metrics", help="HOST:PORT")] = None,
    log_level: Annotated[str | None, typer.Option("--log-level")] = None,
) -> None:
    """Run the daemon in the foreground until SIGTERM / SIGINT."""
    import anyio

    from broker.config import load_settings
    from broker.daemon import run_daemon

    settings = load_settings(
        config,
        overrides={
            "data_dir": data_dir,
            "socket": socket,
            "tcp": tcp,
            "tls_cert": tls_cert,
            "tls_key": tls_key,
            "tls_client_ca": tls_client_ca,
            "insecure": insecure,
            "metrics": metrics,
            "log_level": log_level,
        },
    )
    anyio.run(run_daemon, settings)


def _health(socket: Path | None, timeout: float, service: str = "") -> str:
    """The gRPC health service's answer for the whole server (or one of its services),
    e.g. SERVING or NOT_SERVING."""
    from grpc_health.v1 import health_pb2, health_pb2_grpc

    from broker.cli.client import connection

    with connection(socket, timeout) as conn:
        reply = health_pb2_grpc.HealthStub(conn.channel).Check(
            health_pb2.HealthCheckRequest(service=service), timeout=timeout
        )
    return str(health_pb2.HealthCheckResponse.ServingStatus.Name(reply.status))


@app.command()
def health(
    socket: SocketOpt = None,
    timeout: Annotated[float, typer.Option("--timeout", help="Seconds to wait")] = 5.0,
    strict: Annotated[
        bool, typer.Option("--strict", help="Exit 1 when DEGRADED too (a readiness probe)")
    ] = False,
) -> None:
    """Exit 0 if the daemon answers SERVING on gRPC health (for HEALTHCHECK and probes).

    A daemon on a shared database whose change feed is behind prints DEGRADED: it
    still serves, from the connectors it knows, so only --strict makes that exit 1.
    """
    try:
        state = _health(socket, timeout)
    except grpc.RpcError as exc:
        print(f"unhealthy: {rpc_error(exc).message}", file=sys.stderr)
        raise typer.Exit(1) from None
    except BrokerError as exc:
        print(f"unhealthy: {exc.message}", file=sys.stderr)
        raise typer.Exit(1) from None
    if state == "SERVING" and _feed_behind(socket, timeout):
        state = "DEGRADED"
    print(state)
    if state != "SERVING" and (strict or state != "DEGRADED"):
        raise typer.Exit(1)


def _feed_behind(socket: Path | None, timeout: float) -> bool:
    """Whether the daemon's change feed (shared database only) says it is behind."""
    from broker.store.base import CHANGE_FEED_HEALTH

    try:
        return _health(socket, timeout, CHANGE_FEED_HEALTH) != "SERVING"
    except NotFound:  # a daemon on SQLite has no change feed (connection() typed the error)
        return False


@app.command()
def status(socket: SocketOpt = None, output: OutputOpt = Output.table) -> None:
    """The daemon's health, uptime, version, connectors, cache and subscribers."""
    from broker.cli import fast

    fast.status(socket, output)


config_app.command("show")(config_show_cli.show)


@app.command()
def version() -> None:
    """Print the version."""
    print(__version__)


def main() -> None:
    """Entry point: one clear line on stderr and a non-zero exit for every error."""
    try:
        app()
    except BrokerError as exc:
        print(f"error: {exc.message}", file=sys.stderr)
        sys.exit(1)
    except BaseExceptionGroup as group:  # the daemon's task group wraps startup errors
        first = _first_broker_error(group)
        if first is None:
            raise
        print(f"error: {first.message}", file=sys.stderr)
        sys.exit(1)
    except grpc.RpcError as exc:  # a call made outside broker.cli.client.connect
        err = rpc_error(exc)
        print(f"error: {err.message}", file=sys.stderr)
        sys.exit(1)
    except KeyboardInterrupt:
        sys.exit(130)


def _first_broker_error(group: BaseExceptionGroup[BaseException]) -> BrokerError | None:
    for exc in group.exceptions:
        if isinstance(exc, BrokerError):
            return exc
        if isinstance(exc, BaseExceptionGroup):
            found = _first_broker_error(exc)
            if found is not None:
                return found
    return None


if __name__ == "__main__":  # as the `broker` script runs: the fast path first
    from broker.cli import fast

    fast.main(full=main)
