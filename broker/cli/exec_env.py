"""What `broker exec` gives its child: variables, temp files, and the grants behind them.

Default (auto-refreshing, nothing secret in the environment):

- aws: a container-credentials grant (``broker env aws``'s), scoped to one connector
  and resource, owned by the caller, revoked when the child exits;
- gcp: a GCE metadata grant (``broker env gcp``'s), the same;
- kubernetes: a temp kubeconfig whose user runs the exec plugin
  (``broker-kubectl-credential``, as ``broker login kubernetes`` writes it);
- docker: a temp ``DOCKER_CONFIG`` whose ``credHelpers`` name the broker's helper.

``--env-only``: the credential itself, as the file outputs' ``env`` format has it
(:func:`broker.outputs.formats.env_variables`); kubernetes and docker get a temp
kubeconfig / docker config holding the static credential (their clients read no
such variables).

Everything here is cheap to import: the fast path (:mod:`broker.cli.fast`) runs it
without grpcio or typer.
"""

from __future__ import annotations

import os
import sys
from datetime import UTC, datetime
from pathlib import Path
from typing import TYPE_CHECKING, Any

from broker.cli import helper_entries
from broker.errors import FailedPrecondition, InvalidArgument, NotFound
from broker.kubeconfig import single_context

if TYPE_CHECKING:
    from broker.api.v1 import broker_pb2 as pb
    from broker.model import ClientCredential

#: The resource type asked for when none is given, by connector type.
DEFAULT_RESOURCE_TYPE = {
    "aws": "aws-generic",
    "gcp": "gcp-generic",
    "kubernetes": "kubernetes-cluster",
    "docker": "docker-registry",
}
KUBERNETES = "kubernetes-cluster"
DOCKER = "docker-registry"
#: Inherited variables that would win over what the child is given (the SDKs' chains
#: read keys and profiles before the container endpoint; ADC reads its key file first).
_AWS_SHADOWING = (
    "AWS_ACCESS_KEY_ID",
    "AWS_SECRET_ACCESS_KEY",
    "AWS_SESSION_TOKEN",
    "AWS_SECURITY_TOKEN",
    "AWS_PROFILE",
    "AWS_DEFAULT_PROFILE",
    "AWS_CREDENTIAL_EXPIRATION",
    "AWS_CONTAINER_CREDENTIALS_FULL_URI",
    "AWS_CONTAINER_CREDENTIALS_RELATIVE_URI",
    "AWS_CONTAINER_AUTHORIZATION_TOKEN",
    "AWS_CONTAINER_AUTHORIZATION_TOKEN_FILE",
    "AWS_WEB_IDENTITY_TOKEN_FILE",
    "AWS_ROLE_ARN",
)
_GCP_SHADOWING = (
    "GOOGLE_APPLICATION_CREDENTIALS",
    "GOOGLE_OAUTH_ACCESS_TOKEN",
    "CLOUDSDK_AUTH_ACCESS_TOKEN",
)


class Prepared:
    """The child's additions and removals, and what to undo when it exits.

    (A plain class: ``dataclasses`` costs the fast path ~10 ms of imports.)"""

    def __init__(
        self,
        connector_type: str,
        resource_type: str,
        resource_id: str,
        *,
        set: dict[str, str] | None = None,
        unset: tuple[str, ...] = (),
        grant_id: str | None = None,
        temp_dir: Path | None = None,
        credential: pb.Credential | None = None,
    ) -> None:
        self.connector_type = connector_type
        self.resource_type = resource_type
        self.resource_id = resource_id
        self.set = set or {}
        self.unset = unset
        self.grant_id = grant_id
        self.temp_dir = temp_dir
        #: --env-only: the credential the variables came from (restarts compare against it).
        self.credential = credential

    def environment(self, base: dict[str, str]) -> dict[str, str]:
        env = {k: v for k, v in base.items() if k not in self.unset}
        env.update(self.set)
        return env


def connector_of(stub: Any, name: str) -> pb.Connector:
    """The connector named ``name`` as the caller may see it (a consumer sees its own)."""
    from broker.api.v1 import broker_pb2 as pb

    request = pb.ListConnectorsRequest(name=name)
    while True:
        reply = stub.ListConnectors(request)
        for connector in reply.connectors:
            if connector.name == name:
                found: pb.Connector = connector
                return found
        if not reply.next_page_token:
            break
        request.page_token = reply.next_page_token
    raise NotFound(f"no connector '{name}' (or none you may use)", field="connector")


def choose_resource_type(connector: pb.Connector, given: str | None) -> str:
    if given:
        return given
    default = DEFAULT_RESOURCE_TYPE.get(connector.connector_type)
    served = list(connector.resource_types)
    if default and (default in served or not served):
        return default
    if len(served) == 1:
        return served[0]
    raise InvalidArgument(
        f"connector '{connector.name}' serves {', '.join(served) or 'no resource type'}: "
        "choose one with --resource-type",
        field="resource_type",
    )


def make_temp_dir() -> Path:
    """A private directory for the child's files: under XDG_RUNTIME_DIR (tmpfs, the
    user's own) when there is one, else the temp dir."""
    runtime = os.environ.get("XDG_RUNTIME_DIR", "")
    base = runtime if runtime and os.path.isdir(runtime) else None
    import tempfile  # not on the default aws / gcp path

    return Path(tempfile.mkdtemp(prefix="broker-exec-", dir=base))


def remove_temp_dir(prepared: Prepared) -> None:
    if prepared.temp_dir is not None:
        import shutil

        shutil.rmtree(prepared.temp_dir, ignore_errors=True)


def _write_private(path: Path, text: str) -> None:
    """Mode 0600 from the first byte; replaced atomically (a restart rewrites it)."""
    path.parent.mkdir(mode=0o700, parents=True, exist_ok=True)
    temp = path.with_name(f".{path.name}.tmp")
    fd = os.open(temp, os.O_WRONLY | os.O_CREAT | os.O_TRUNC | os.O_NOFOLLOW, 0o600)
    with os.fdopen(fd, "w") as handle:
        handle.write(text)
    os.replace(temp, path)


# -- default: auto-refreshing endpoints ------------------------------------------------


def grant(
    stub: Any,
    kind: str,
    name: str,
    resource_type: str,
    resource_id: str | None,
    ttl_seconds: int,
) -> Prepared:
    """An SDK endpoint grant (``broker env aws|gcp``'s CreateSdkEndpoint), bound to the
    caller (gcp: to the caller's uid, the daemon's default) and to this process: the
    daemon revokes it when we exit, also when we are SIGKILLed and cannot revoke it."""
    from broker.api.v1 import broker_pb2 as pb

    endpoint = stub.CreateSdkEndpoint(
        pb.CreateSdkEndpointRequest(
            kind=kind,
            connector=name,
            resource_type=resource_type,
            resource_id=resource_id or "",
            ttl_seconds=ttl_seconds,
            bound_to_caller_process=True,
        )
    )
    if not endpoint.bound_pid:  # the daemon cannot see us (another pid namespace, TCP)
        print(
            f"broker exec: the daemon cannot watch this process, so if broker exec is killed "
            f"grant {endpoint.id} lives until its TTL (revoke it with `broker env revoke "
            f"{endpoint.id}`)",
            file=sys.stderr,
        )
    return Prepared(
        kind,
        endpoint.resource_type,
        endpoint.resource_id,
        set=dict(endpoint.env),
        unset=_AWS_SHADOWING if kind == "aws" else _GCP_SHADOWING,
        grant_id=endpoint.id,
    )


def revoke(stub: Any, grant_id: str) -> None:
    from broker.api.v1 import broker_pb2 as pb

    stub.RevokeSdkEndpoint(pb.RevokeSdkEndpointRequest(id=grant_id))


def _client_credential(
    stub: Any, name: str, resource_type: str, resource_id: str | None, *, hide: bool
) -> pb.Credential:
    from broker.api.v1 import broker_pb2 as pb

    credential: pb.Credential = stub.GetCredentials(
        pb.GetCredentialsRequest(
            connector=name,
            resource_type=resource_type,
            resource_id=resource_id or "",
            hide_secrets=hide,
        )
    )
    return credential


def kubeconfig_exec(stub: Any, name: str, resource_id: str | None, temp: Path) -> Prepared:
    """A kubeconfig for one cluster whose user is the exec plugin, as ``broker login
    kubernetes`` writes it: kubectl asks the broker at each call, nothing is stored."""
    import json

    from broker.api.v1 import broker_pb2 as pb

    cred = _client_credential(stub, name, KUBERNETES, resource_id, hide=True)
    helper_socket = stub.GetStatus(pb.GetStatusRequest()).helper_socket
    cluster, user = helper_entries.plugin_entries(
        cred.config, name, cred.resource_id, helper_socket
    )
    path = temp / "kubeconfig"
    _write_private(path, json.dumps(single_context(name, cluster, user), indent=2) + "\n")
    return Prepared(
        cred.connector_type,
        cred.resource_type,
        cred.resource_id,
        set={"KUBECONFIG": str(path)},
        temp_dir=temp,
    )


def docker_helper_config(stub: Any, name: str, resource_id: str | None, temp: Path) -> Prepared:
    """A DOCKER_CONFIG whose credHelpers send this registry to docker-credential-broker.

    docker and skopeo find helpers on PATH only, so the child's PATH starts with a
    directory of the temp dir holding a link to ours."""
    import json

    cred = _client_credential(stub, name, DOCKER, resource_id, hide=True)
    host = cred.resource_id.split("/", 1)[0]
    keys = (
        [host, "index.docker.io", "https://index.docker.io/v1/"] if host == "docker.io" else [host]
    )
    _write_private(
        temp / "docker" / "config.json",
        json.dumps({"credHelpers": dict.fromkeys(keys, "broker")}, indent=2) + "\n",
    )
    bindir = temp / "bin"
    bindir.mkdir(mode=0o700)
    helper = helper_entries.helper_path("docker-credential-broker")
    if not os.path.isabs(helper):
        raise FailedPrecondition(
            "docker-credential-broker was not found next to this interpreter or on PATH; "
            "reinstall credential-broker"
        )
    (bindir / "docker-credential-broker").symlink_to(helper)
    path = os.environ.get("PATH", "")
    return Prepared(
        cred.connector_type,
        cred.resource_type,
        cred.resource_id,
        set={
            "DOCKER_CONFIG": str(temp / "docker"),
            "PATH": f"{bindir}{os.pathsep}{path}" if path else str(bindir),
        },
        temp_dir=temp,
    )


# -- --env-only: the credential itself ---------------------------------------------------


def to_client_credential(cred: pb.Credential) -> ClientCredential:
    from broker.model import ClientCredential

    def when(name: str) -> datetime | None:
        if not cred.HasField(name):
            return None
        stamp = getattr(cred, name)
        return datetime.fromtimestamp(stamp.seconds + stamp.nanos / 1e9, UTC)

    return ClientCredential(
        connector_type=cred.connector_type,
        auth_method=cred.auth_method,
        resource_type=cred.resource_type,
        resource_id=cred.resource_id,
        config=dict(cred.config),
        secret_names=frozenset(cred.secret_attributes),
        expires_at=when("expires_at"),
        issued_at=when("issued_at"),
    )


def static(
    stub: Any, name: str, resource_type: str, resource_id: str | None, temp: Path
) -> Prepared:
    return static_from(
        name, _client_credential(stub, name, resource_type, resource_id, hide=False), temp
    )


def static_from(name: str, cred: pb.Credential, temp: Path) -> Prepared:
    """The variables (and for kubernetes / docker, the file) for one credential."""
    from broker.outputs import formats

    client = to_client_credential(cred)
    prepared = Prepared(
        cred.connector_type, cred.resource_type, cred.resource_id, temp_dir=temp, credential=cred
    )
    if cred.resource_type == KUBERNETES or cred.connector_type == "kubernetes":
        path = temp / "kubeconfig"
        text = formats.render_kubeconfig(name, _as_type(client, "kubernetes"))
        _write_private(path, text)
        prepared.set = {"KUBECONFIG": str(path)}
    elif cred.resource_type == DOCKER or cred.connector_type == "docker":
        _write_private(
            temp / "docker" / "config.json", formats.render_docker(name, _as_type(client, "docker"))
        )
        prepared.set = {"DOCKER_CONFIG": str(temp / "docker")}
    else:
        prepared.set = formats.env_variables(client)
        if client.connector_type == "aws":
            prepared.unset = _AWS_SHADOWING
        elif client.connector_type == "gcp":
            prepared.unset = _GCP_SHADOWING
    return prepared


def _as_type(client: ClientCredential, kind: str) -> ClientCredential:
    """An azure (AKS / ACR) credential written as the kubeconfig / docker config its
    resource type calls for."""
    if client.connector_type == kind:
        return client
    from dataclasses import replace

    return replace(client, connector_type=kind)
