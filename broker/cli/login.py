"""`broker login|logout docker|kubernetes|aws`: point local clients at the broker.

No secret is written anywhere: docker gets a ``credHelpers`` entry, kubectl
an exec plugin user, the AWS SDKs a ``credential_process`` profile. Files are
edited in place keeping every other entry, written atomically with mode 0600.
"""

from __future__ import annotations

import configparser
import io
import json
import os
import shlex
from pathlib import Path
from typing import Annotated, Any

import typer
import yaml

from broker.api.v1 import broker_pb2 as pb
from broker.cli import docker_helper, helper_entries, render
from broker.cli.client import checked_socket, connect
from broker.cli.files import write_private
from broker.cli.options import Output, OutputOpt, ResourceIdOpt, SocketOpt
from broker.errors import FailedPrecondition, InvalidArgument
from broker.pointers import GRPC_POINTER, HELPER_POINTER, write_pointer

login_app = typer.Typer(no_args_is_help=True, help="Configure docker, kubectl or AWS SDKs.")
logout_app = typer.Typer(no_args_is_help=True, help="Undo `broker login`.")


def _client_credential(
    socket: Path | None, name: str, resource_type: str, resource_id: str | None
) -> tuple[pb.Credential, str]:
    with connect(socket) as stub:
        cred = stub.GetCredentials(
            pb.GetCredentialsRequest(
                connector=name,
                resource_type=resource_type,
                resource_id=resource_id or "",
                hide_secrets=True,
            )
        )
        helper_socket = stub.GetStatus(pb.GetStatusRequest()).helper_socket
    return cred, helper_socket


def _write_pointers(socket: Path | None, helper_socket: str) -> None:
    """Point helpers docker starts with no arguments (and later CLI calls) at this daemon."""
    try:
        write_pointer(GRPC_POINTER, str(checked_socket(socket).resolve()))
        if helper_socket:
            write_pointer(HELPER_POINTER, helper_socket)
    except OSError as exc:
        raise FailedPrecondition(f"cannot write the pointer file: {exc}") from None


def _load_json(path: Path) -> dict[str, Any]:
    if not path.exists():
        return {}
    try:
        data = json.loads(path.read_text() or "{}")
    except ValueError:
        raise InvalidArgument(
            f"{path} is not valid JSON; fix or move it first", field="config"
        ) from None
    if not isinstance(data, dict):
        raise InvalidArgument(f"{path} must hold a JSON object", field="config")
    return data


def _docker_config(config_dir: Path | None) -> Path:
    base = config_dir or Path(os.environ.get("DOCKER_CONFIG") or Path.home() / ".docker")
    return base / "config.json"


def _helper_keys(host: str) -> list[str]:
    """The credHelpers keys docker looks up for a host (Docker Hub has legacy spellings)."""
    if host == "docker.io":
        return [host, "index.docker.io", "https://index.docker.io/v1/"]
    return [host]


def _registry_host(resource_id: str) -> str:
    return resource_id.split("/", 1)[0]


@login_app.command("docker")
def login_docker(
    name: str,
    resource_id: ResourceIdOpt = None,
    config: Annotated[Path | None, typer.Option("--config", help="docker config dir")] = None,
    install_helper: Annotated[
        Path | None,
        typer.Option(
            "--install-helper",
            help="Link docker-credential-broker into DIR (a directory on PATH, e.g. "
            "~/.local/bin) first: docker and skopeo find credential helpers on PATH only",
            metavar="DIR",
        ),
    ] = None,
    socket: SocketOpt = None,
    output: OutputOpt = Output.table,
) -> None:
    """Make docker ask the broker for this connector's registry.

    docker's credHelpers entry names a helper by suffix ("broker"), never by path: docker
    and skopeo run `docker-credential-broker` from PATH. Nothing is written unless it is
    found there (or --install-helper links it into a directory that is).
    """
    ours = helper_entries.helper_path(docker_helper.HELPER)
    installed = docker_helper.install(install_helper, ours) if install_helper else None
    docker_helper.check_on_path(ours, installed)
    cred, helper_socket = _client_credential(socket, name, "docker-registry", resource_id)
    host = _registry_host(cred.resource_id)
    with connect(socket) as stub:
        stub.SetPreferredConnector(
            pb.SetPreferredConnectorRequest(
                resource_type="docker-registry", resource_id=host, connector=name
            )
        )
    path = _docker_config(config)
    data = _load_json(path)
    helpers = data.setdefault("credHelpers", {})
    if not isinstance(helpers, dict):
        raise InvalidArgument(f"'credHelpers' in {path} is not an object", field="config")
    keys = (
        [host, "index.docker.io", "https://index.docker.io/v1/"] if host == "docker.io" else [host]
    )
    for key in keys:
        helpers[key] = "broker"
    write_private(path, json.dumps(data, indent=2) + "\n")
    _write_pointers(socket, helper_socket)
    _done(
        output,
        f"docker now asks credential-broker ('{name}') for {host} ({path}).",
        {"connector": name, "registry": host, "config": str(path), "cred_helpers": keys},
    )


@logout_app.command("docker")
def logout_docker(
    name: str,
    resource_id: ResourceIdOpt = None,
    config: Annotated[Path | None, typer.Option("--config", help="docker config dir")] = None,
    socket: SocketOpt = None,
    output: OutputOpt = Output.table,
) -> None:
    """Remove the credHelpers entry and the preference for this connector's registry."""
    cred, _ = _client_credential(socket, name, "docker-registry", resource_id)
    host = _registry_host(cred.resource_id)
    with connect(socket) as stub:
        stub.SetPreferredConnector(
            pb.SetPreferredConnectorRequest(resource_type="docker-registry", resource_id=host)
        )
    path = _docker_config(config)
    data = _load_json(path)
    helpers = data.get("credHelpers")
    if isinstance(helpers, dict):
        for key in [
            k
            for k, v in helpers.items()
            if v == "broker"
            and _registry_host(k.split("://", 1)[-1])
            in (host, "index.docker.io" if host == "docker.io" else host)
        ]:
            del helpers[key]
        if not helpers:
            del data["credHelpers"]
        write_private(path, json.dumps(data, indent=2) + "\n")
    _done(
        output,
        f"docker no longer asks credential-broker for {host}.",
        {"connector": name, "registry": host, "config": str(path)},
    )


def _kubeconfig_path(explicit: Path | None) -> Path:
    if explicit:
        return explicit
    env = os.environ.get("KUBECONFIG")
    if env:
        return Path(env.split(os.pathsep)[0])
    return Path.home() / ".kube" / "config"


def _upsert(entries: list[dict[str, Any]], name: str, key: str, value: dict[str, Any]) -> None:
    for entry in entries:
        if entry.get("name") == name:
            entry[key] = value
            return
    entries.append({"name": name, key: value})


@login_app.command("kubernetes")
def login_kubernetes(
    name: str,
    resource_id: ResourceIdOpt = None,
    kubeconfig: Annotated[Path | None, typer.Option("--kubeconfig")] = None,
    context: Annotated[str | None, typer.Option("--context", help="context name")] = None,
    set_current: Annotated[
        bool,
        typer.Option(
            "--set-current/--no-set-current",
            help="make it kubectl's current-context (the command says when it switches)",
        ),
    ] = True,
    socket: SocketOpt = None,
    output: OutputOpt = Output.table,
) -> None:
    """Write cluster, exec-plugin user and context entries for this connector's cluster."""
    cred, helper_socket = _client_credential(socket, name, "kubernetes-cluster", resource_id)
    if cred.connector_type != "kubernetes":
        raise InvalidArgument(f"connector '{name}' does not yield Kubernetes credentials")
    path = _kubeconfig_path(kubeconfig)
    try:
        doc = yaml.safe_load(path.read_text()) if path.exists() else None
    except yaml.YAMLError:
        raise InvalidArgument(
            f"{path} is not valid YAML; fix or move it first", field="kubeconfig"
        ) from None
    doc = doc or {"apiVersion": "v1", "kind": "Config"}
    if not isinstance(doc, dict):
        raise InvalidArgument(f"{path} is not a kubeconfig", field="kubeconfig")
    entry = context or f"broker-{name}-{cred.resource_id}".replace("/", "-").replace(":", "-")
    cluster, user = helper_entries.plugin_entries(
        cred.config, name, cred.resource_id, helper_socket
    )
    for key in ("clusters", "users", "contexts"):
        if not isinstance(doc.get(key), list):
            doc[key] = []
    _upsert(doc["clusters"], entry, "cluster", cluster)
    _upsert(doc["users"], entry, "user", user)
    _upsert(doc["contexts"], entry, "context", {"cluster": entry, "user": entry})
    previous = doc.get("current-context") or None
    if set_current:
        doc["current-context"] = entry
    write_private(path, yaml.safe_dump(doc, sort_keys=False))
    _done(
        output,
        f"kubeconfig {path}: context '{entry}' uses credential-broker ('{name}').\n"
        + _context_note(entry, previous, set_current),
        {
            "connector": name,
            "kubeconfig": str(path),
            "context": entry,
            "current_context": doc.get("current-context"),
            "previous_context": previous,
        },
    )


def _context_note(entry: str, previous: str | None, set_current: bool) -> str:
    """kubectl's target changes with current-context: say so, and how to keep the old one."""
    if not set_current:
        kept = f"stays '{previous}'" if previous else "is unset"
        return f"current-context {kept}: use `kubectl --context {entry}`."
    if previous == entry:
        return f"current-context is '{entry}' (unchanged)."
    if previous is None:
        return f"current-context set to '{entry}' (it was unset; --no-set-current leaves it)."
    return (
        f"current-context switched from '{previous}' to '{entry}': kubectl now talks to "
        f"this cluster (back: `kubectl config use-context {previous}`; --no-set-current "
        "leaves it alone)."
    )


def _aws_config_path() -> Path:
    env = os.environ.get("AWS_CONFIG_FILE")
    return Path(env) if env else Path.home() / ".aws" / "config"


@login_app.command("aws")
def login_aws(
    name: str,
    resource_type: Annotated[str, typer.Option("--resource-type", "-r")] = "aws-generic",
    resource_id: ResourceIdOpt = None,
    profile: Annotated[str | None, typer.Option("--profile")] = None,
    socket: SocketOpt = None,
    output: OutputOpt = Output.table,
) -> None:
    """Write a credential_process profile into the AWS config file."""
    cred, helper_socket = _client_credential(socket, name, resource_type, resource_id)
    if cred.connector_type != "aws":
        raise InvalidArgument(f"{resource_type} of connector '{name}' does not yield AWS keys")
    path = _aws_config_path()
    parser = configparser.RawConfigParser()
    try:
        parser.read_string(path.read_text() if path.exists() else "")
    except configparser.Error as exc:
        raise InvalidArgument(f"{path} cannot be parsed: {exc.message}", field="config") from None
    section = "default" if profile == "default" else f"profile {profile or name}"
    if not parser.has_section(section):
        parser.add_section(section)
    command = [
        helper_entries.helper_path("broker-aws-credential"),
        name,
        "--resource-type",
        resource_type,
        "--resource-id",
        cred.resource_id,
    ]
    if helper_socket:
        command += ["--socket", helper_socket]
    parser.set(section, "credential_process", shlex.join(command))
    if cred.config.get("region"):
        parser.set(section, "region", cred.config["region"])
    if cred.config.get("endpoint_url"):
        parser.set(section, "endpoint_url", cred.config["endpoint_url"])
    buffer = io.StringIO()
    parser.write(buffer)
    write_private(path, buffer.getvalue())
    _done(
        output,
        f"AWS profile '{profile or name}' in {path} uses credential-broker.",
        {"connector": name, "profile": profile or name, "config": str(path)},
    )


def _done(output: Output, message: str, data: dict[str, Any]) -> None:
    """What was written: a sentence, or (--output json / yaml) the same as data."""
    if output is Output.table:
        print(message)
    else:
        render.print_data(output, data)
