"""`broker exec` as typer declares it: its help text and options for `broker exec --help`.

The command line itself is parsed by :mod:`broker.cli.exec_run` (from the fast path),
since everything after NAME's options belongs to the child; this declaration is what
click shows, and it runs the same code if called.
"""

from __future__ import annotations

import sys
from typing import Annotated

import typer

from broker.cli.options import ResourceIdOpt, SocketOpt

EXEC_CONTEXT = {"allow_extra_args": True, "ignore_unknown_options": True}
EXAMPLES = (
    "broker exec my-aws -- aws sts get-caller-identity",
    "broker exec my-gcp -- gcloud storage ls",
    "broker exec my-cluster -- kubectl get pods",
    "broker exec my-aws --env-only --restart-on-change --stop-signal HUP -- ./legacy-job",
)
#: ``app.command("exec", **EXEC_SETTINGS)``: click leaves the child's options alone.
EXEC_SETTINGS: dict[str, object] = {
    "context_settings": EXEC_CONTEXT,
    "epilog": "\b\nExamples:\n" + "\n".join(f"  {e}" for e in EXAMPLES),
}


def exec_command(
    name: Annotated[str, typer.Argument(help="The connector")],
    command: Annotated[
        list[str],
        typer.Argument(help="The command and its arguments", metavar="-- CMD [ARGS]"),
    ],
    resource_type: Annotated[
        str | None,
        typer.Option("--resource-type", "-r", help="[default: the connector type's usual one]"),
    ] = None,
    resource_id: ResourceIdOpt = None,
    env_only: Annotated[
        bool,
        typer.Option(
            "--env-only",
            help="The credential itself in variables (aws: AWS_ACCESS_KEY_ID ...; gcp: "
            "GOOGLE_OAUTH_ACCESS_TOKEN; kubernetes / docker: a temp KUBECONFIG / DOCKER_CONFIG "
            "holding it) instead of an auto-refreshing endpoint",
        ),
    ] = False,
    restart_on_change: Annotated[
        bool,
        typer.Option(
            "--restart-on-change",
            help="With --env-only: stop CMD and start it again with fresh variables at each "
            "renewal, before the old credential enters its margin",
        ),
    ] = False,
    stop_signal: Annotated[
        str | None,
        typer.Option(
            "--stop-signal", help="Signal that stops CMD for a restart [default: SIGTERM]"
        ),
    ] = None,
    stop_grace: Annotated[
        float | None,
        typer.Option(
            "--stop-grace", metavar="SECONDS", help="Seconds before SIGKILL after it [default: 10]"
        ),
    ] = None,
    ttl: Annotated[
        str | None,
        typer.Option(
            "--ttl", help="Lifetime of the endpoint grant (revoked when CMD exits) [default: 12h]"
        ),
    ] = None,
    socket: SocketOpt = None,
) -> None:
    """Run CMD with credentials of one connector; revoke them when it exits.

    aws: a container-credentials endpoint; gcp: a GCE metadata endpoint (both a grant
    for this connector and resource, yours, revoked when CMD exits); kubernetes: a temp
    kubeconfig using the exec plugin; docker: a temp DOCKER_CONFIG with credHelpers.
    CMD's exit code, stdin/stdout/stderr and signals pass through.
    """
    from broker.cli import exec_run

    opts = exec_run.build(
        name,
        list(command),
        resource_type=resource_type,
        resource_id=resource_id,
        env_only=env_only,
        restart_on_change=restart_on_change,
        stop_signal=stop_signal,
        stop_grace=stop_grace,
        ttl=ttl,
        socket=socket,
    )
    sys.exit(exec_run.run(opts))
