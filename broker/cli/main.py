"""The `broker` command: the daemon (`serve`) and its client."""

from __future__ import annotations

import sys
from pathlib import Path
from typing import Annotated, Any, NoReturn

import grpc
import typer
from typer._click.exceptions import (
    ClickException,
    NoArgsIsHelpError,
    UsageError,
)  # typer vendors click
from typer.exceptions import Abort

import broker.cli.config_show as config_show_cli
from broker import __version__
from broker.cli import completion, connector, credentials, env, login, outputs, policy, render
from broker.cli import store as store_cli
from broker.cli.client import rpc_error
from broker.cli.exec_cmd import EXEC_SETTINGS, exec_command
from broker.cli.options import Output, OutputOpt, SocketOpt
from broker.errors import BrokerError, NotFound

app = typer.Typer(
    no_args_is_help=True,
    add_completion=False,
    pretty_exceptions_enable=False,
    rich_markup_mode=None,
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
app.command("exec", **EXEC_SETTINGS)(exec_command)  # type: ignore[arg-type]
config_app = typer.Typer(no_args_is_help=True, help="Inspect the daemon configuration.")
app.add_typer(config_app, name="config")


def _print_version(value: bool) -> None:
    if value:
        print(__version__)
        raise typer.Exit()


@app.callback()
def _root(
    version: Annotated[
        bool,
        typer.Option(
            "--version", is_eager=True, callback=_print_version, help="Print the version and exit"
        ),
    ] = False,
) -> None:
    """credential-broker: short-lived, least-privilege credentials for one resource at a time.

    Every command but `serve` and `exec` takes --output table|json|yaml; errors are one line on
    stderr ("error: ..."), exit 1 (2 for a usage error, 130 on Ctrl-C).
    """


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
    log_format: Annotated[
        str | None,
        typer.Option("--log-format", help="auto (JSON unless a TTY), json or console"),
    ] = None,
) -> None:
    """Run the daemon in the foreground until SIGTERM / SIGINT.

    Its output is its log, on stderr (--log-format json for JSON lines), so it alone
    takes no --output.
    """
    import anyio

    from broker.config import load_settings, loop_options
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
            "log_format": log_format,
        },
    )
    anyio.run(run_daemon, settings, backend_options=loop_options(settings.event_loop))


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
    output: OutputOpt = Output.table,
) -> None:
    """Exit 0 if the daemon answers SERVING on gRPC health (for HEALTHCHECK and probes).

    A daemon on a shared database whose change feed is behind prints DEGRADED: it
    still serves, from the connectors it knows, so only --strict makes that exit 1.
    """
    try:
        state = _health(socket, timeout)
    except grpc.RpcError as exc:
        _unhealthy(rpc_error(exc).message, output)
    except BrokerError as exc:
        _unhealthy(exc.message, output)
    if state == "SERVING" and _feed_behind(socket, timeout):
        state = "DEGRADED"
    if output is Output.table:
        print(state)
    else:
        render.print_data(output, {"health": state, "error": None})
    if state != "SERVING" and (strict or state != "DEGRADED"):
        raise typer.Exit(1)


def _unhealthy(message: str, output: Output) -> NoReturn:
    """No answer: the reason on stderr (and as JSON / YAML on stdout), exit 1."""
    print(f"unhealthy: {message}", file=sys.stderr)
    if output is not Output.table:
        render.print_data(output, {"health": "UNREACHABLE", "error": message})
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
def version(output: OutputOpt = Output.table) -> None:
    """Print the version (of this CLI; `broker status` shows the daemon's)."""
    if output is Output.table:
        print(__version__)
    else:
        render.print_data(output, {"version": __version__})


def command() -> Any:
    """The click command tree typer builds, with broker.cli.helptext's placeholders,
    option help and examples."""
    from broker.cli.helptext import polish

    return polish(typer.main.get_command(app))


def _usage_error(exc: UsageError) -> NoReturn:
    """A usage error as one line, naming the command's --help (click draws several)."""
    if isinstance(exc, NoArgsIsHelpError):  # `broker connector`: its help, as --help shows
        print(exc.format_message(), file=sys.stderr)
        sys.exit(2)
    where = f" (see `{exc.ctx.command_path} --help`)" if exc.ctx is not None else ""
    message = " ".join(exc.format_message().split())
    print(f"error: {message}{where}", file=sys.stderr)
    sys.exit(exc.exit_code)


@app.command("completion")
def completion_script(
    shell: Annotated[completion.Shell, typer.Argument(help="bash, zsh or fish")],
    output: OutputOpt = Output.table,
) -> None:
    """Print the shell completion script for SHELL.

    Commands and options complete from a table built in, connector names from the
    running daemon (found as every command finds it; --socket on the line is used).
    """
    completion.print_script(shell, output)


def main() -> None:
    """Entry point: one clear line on stderr and a non-zero exit for every error."""
    try:
        code = command().main(prog_name="broker", standalone_mode=False)
        if isinstance(code, int) and code:
            sys.exit(code)
    except UsageError as exc:
        _usage_error(exc)
    except ClickException as exc:
        print(f"error: {' '.join(exc.format_message().split())}", file=sys.stderr)
        sys.exit(exc.exit_code)
    except Abort:  # click's EOF at a prompt (Ctrl-C is KeyboardInterrupt: 130, below)
        print("error: aborted", file=sys.stderr)
        sys.exit(1)
    except BrokenPipeError:
        sys.stderr.close()
        sys.exit(1)
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
