"""What an output file holds: one credential rendered in the format its reader expects.

Every renderer is a pure function of the connector name and the credential, so
the same credential always gives the same bytes: the manager compares bytes to
tell a change (write, run on_change) from a repeat (do nothing).
"""

from __future__ import annotations

import base64
import json
import re
from collections.abc import Callable
from datetime import UTC, datetime
from functools import lru_cache
from typing import TYPE_CHECKING, Any

from broker.attributes import render_value
from broker.errors import FailedPrecondition, InvalidArgument
from broker.kubeconfig import single_context
from broker.model import ClientCredential

if TYPE_CHECKING:
    from jinja2 import Template

#: Docker's own key for Docker Hub in ``auths`` (``docker login`` writes this one).
DOCKER_HUB_KEY = "https://index.docker.io/v1/"
_DOCKER_HUB_HOSTS = {"docker.io", "index.docker.io", "registry-1.docker.io"}

#: Characters a value may hold and be written bare in an env file (systemd
#: EnvironmentFile=, docker --env-file and a shell's ``.`` all read it the same).
_BARE = re.compile(r"^[A-Za-z0-9_@%+=:,./-]*$")


class RenderError(FailedPrecondition):
    """The credential cannot be written in this format (wrong kind, refused template)."""


def _stamp(when: datetime | None) -> str | None:
    return None if when is None else when.astimezone(UTC).strftime("%Y-%m-%dT%H:%M:%SZ")


def _config(credential: ClientCredential) -> dict[str, str]:
    """Every attribute as text, secrets included (the file is the point)."""
    return {k: render_value(v) for k, v in sorted(credential.config.items())}


def _need(credential: ClientCredential, kind: str, fmt: str, connector: str) -> None:
    if credential.connector_type != kind:
        raise RenderError(
            f"format '{fmt}' needs a {kind} credential; connector '{connector}' gives a "
            f"credential of type {credential.connector_type} for {credential.resource_type}"
        )


def render_json(connector: str, credential: ClientCredential) -> str:
    """As ``broker credentials get --output json`` prints it."""
    policy = credential.session_policy
    data = {
        "connector": connector,
        "connector_type": credential.connector_type,
        "auth_method": credential.auth_method,
        "resource_type": credential.resource_type,
        "resource_id": credential.resource_id,
        "expires_at": _stamp(credential.expires_at),
        "config": _config(credential),
        "session_policy": json.loads(policy) if policy else None,
    }
    return json.dumps(data, indent=2, sort_keys=False) + "\n"


def _env_value(key: str, value: str) -> str:
    if "\n" in value or "\r" in value or "\0" in value:
        raise RenderError(f"format 'env' cannot hold the multi-line value of {key}")
    if _BARE.match(value):
        return value
    if "'" in value:
        raise RenderError(f"format 'env' cannot quote the value of {key}")
    return f"'{value}'"


def env_variables(credential: ClientCredential) -> dict[str, str]:
    """The variables the credential's SDKs read (others: BROKER_<ATTRIBUTE>)."""
    config = _config(credential)
    expires = _stamp(credential.expires_at)
    out: dict[str, str] = {}
    if credential.connector_type == "aws" and "aws_access_key_id" in config:
        out["AWS_ACCESS_KEY_ID"] = config["aws_access_key_id"]
        out["AWS_SECRET_ACCESS_KEY"] = config.get("aws_secret_access_key", "")
        if "aws_session_token" in config:
            out["AWS_SESSION_TOKEN"] = config["aws_session_token"]
        if config.get("region"):
            out["AWS_REGION"] = out["AWS_DEFAULT_REGION"] = config["region"]
        if config.get("endpoint_url"):
            out["AWS_ENDPOINT_URL"] = config["endpoint_url"]
        if expires:
            out["AWS_CREDENTIAL_EXPIRATION"] = expires
        return out
    if credential.connector_type == "gcp" and "token" in config:
        out["GOOGLE_OAUTH_ACCESS_TOKEN"] = out["CLOUDSDK_AUTH_ACCESS_TOKEN"] = config["token"]
        if config.get("project_id"):
            out["GOOGLE_CLOUD_PROJECT"] = out["CLOUDSDK_CORE_PROJECT"] = config["project_id"]
        return out
    for key, value in config.items():
        if "\n" not in value:  # a PEM belongs in a file format (kubeconfig), not here
            out["BROKER_" + re.sub(r"[^A-Z0-9]", "_", key.upper())] = value
    if expires:
        out["BROKER_EXPIRES_AT"] = expires
    return out


def render_env(connector: str, credential: ClientCredential) -> str:
    variables = env_variables(credential)
    return "".join(f"{k}={_env_value(k, v)}\n" for k, v in variables.items())


def _ini_value(key: str, value: str) -> str:
    if "\n" in value or "\r" in value:
        raise RenderError(f"format 'aws-credentials' cannot hold a multi-line {key}")
    return value


def render_aws(connector: str, credential: ClientCredential, profile: str) -> str:
    """One INI profile, as ``~/.aws/credentials`` holds it (region too: botocore merges it)."""
    _need(credential, "aws", "aws-credentials", connector)
    config = _config(credential)
    if "aws_access_key_id" not in config:
        raise RenderError(
            f"format 'aws-credentials': connector '{connector}' gives no AWS keys for "
            f"{credential.resource_type}"
        )
    lines = [f"[{profile}]"]
    for key in (
        "aws_access_key_id",
        "aws_secret_access_key",
        "aws_session_token",
        "region",
        "endpoint_url",
    ):
        if config.get(key):
            lines.append(f"{key} = {_ini_value(key, config[key])}")
    expires = _stamp(credential.expires_at)
    if expires:
        lines.append(f"# expires {expires}")
    return "\n".join(lines) + "\n"


def render_docker(connector: str, credential: ClientCredential) -> str:
    """A ``config.json`` with ``auths`` (docker, skopeo, podman, containerd read it)."""
    _need(credential, "docker", "docker-config", connector)
    config = _config(credential)
    registry = config.get("registry") or credential.resource_id
    key = DOCKER_HUB_KEY if registry in _DOCKER_HUB_HOSTS else registry
    pair = f"{config.get('username', '')}:{config.get('password', '')}"
    auth = base64.b64encode(pair.encode()).decode()
    return json.dumps({"auths": {key: {"auth": auth}}}, indent=2) + "\n"


def render_kubeconfig(connector: str, credential: ClientCredential) -> str:
    """Cluster (server, CA) and user (token, or client certificate / basic) for kubectl.

    JSON is YAML: kubectl and every client library read it as a kubeconfig."""
    _need(credential, "kubernetes", "kubeconfig", connector)
    config = _config(credential)
    name = connector
    cluster: dict[str, Any] = {"server": config.get("server", "")}
    if config.get("certificate_authority"):
        ca = config["certificate_authority"].encode()
        cluster["certificate-authority-data"] = base64.b64encode(ca).decode()
    if config.get("insecure") == "true":
        cluster["insecure-skip-tls-verify"] = True
    user: dict[str, Any] = {}
    if config.get("token"):
        user["token"] = config["token"]
    if config.get("client_certificate") and config.get("client_key"):
        user["client-certificate-data"] = base64.b64encode(
            config["client_certificate"].encode()
        ).decode()
        user["client-key-data"] = base64.b64encode(config["client_key"].encode()).decode()
    if config.get("username") and config.get("password"):
        user["username"], user["password"] = config["username"], config["password"]
    return json.dumps(single_context(name, cluster, user), indent=2) + "\n"


def render_gcp_token(connector: str, credential: ClientCredential) -> str:
    """The bare access token, no newline (read verbatim into an Authorization header)."""
    _need(credential, "gcp", "gcp-access-token", connector)
    token = _config(credential).get("token")
    if not token:
        raise RenderError(
            f"format 'gcp-access-token': connector '{connector}' gives no access token for "
            f"{credential.resource_type}"
        )
    return token


# -- templates -----------------------------------------------------------------------


def _b64encode(value: object) -> str:
    return base64.b64encode(str(value).encode()).decode()


@lru_cache(maxsize=64)
def compile_template(text: str, where: str = "template") -> Template:
    """A sandboxed template: no globals (range, dict, lipsum, ...), strict undefined names,
    attribute access to internals refused at render time (jinja2's SandboxedEnvironment)."""
    from jinja2 import StrictUndefined, TemplateSyntaxError
    from jinja2.sandbox import ImmutableSandboxedEnvironment

    env = ImmutableSandboxedEnvironment(
        undefined=StrictUndefined, autoescape=False, keep_trailing_newline=True
    )
    env.globals.clear()
    env.filters["b64encode"] = _b64encode
    try:
        return env.from_string(text)
    except TemplateSyntaxError as exc:
        raise InvalidArgument(
            f"{where} is not a valid template (line {exc.lineno}): {exc.message}", field=where
        ) from None


def template_context(connector: str, credential: ClientCredential) -> dict[str, Any]:
    """The credential's fields and nothing else."""
    return {
        "connector": connector,
        "connector_type": credential.connector_type,
        "auth_method": credential.auth_method,
        "resource_type": credential.resource_type,
        "resource_id": credential.resource_id,
        "expires_at": _stamp(credential.expires_at),
        "issued_at": _stamp(credential.issued_at),
        "config": _config(credential),
    }


def render_template(connector: str, credential: ClientCredential, text: str) -> str:
    from jinja2 import TemplateError
    from jinja2.exceptions import SecurityError

    template = compile_template(text)
    try:
        return template.render(template_context(connector, credential))
    except SecurityError as exc:
        raise RenderError(f"template refused: {exc}") from None
    except TemplateError as exc:  # names and types only, never a value
        raise RenderError(f"template failed: {exc}") from None
    except Exception as exc:  # e.g. int('...') on a secret: its message could hold the value
        raise RenderError(f"template failed: {type(exc).__name__}") from None


Renderer = Callable[[str, ClientCredential], str]

RENDERERS: dict[str, Renderer] = {
    "json": render_json,
    "env": render_env,
    "docker-config": render_docker,
    "kubeconfig": render_kubeconfig,
    "gcp-access-token": render_gcp_token,
}


def render(
    fmt: str,
    connector: str,
    credential: ClientCredential,
    *,
    profile: str = "default",
    template: str | None = None,
) -> bytes:
    """The file's bytes; RenderError if the credential cannot take this format."""
    if fmt == "aws-credentials":
        text = render_aws(connector, credential, profile)
    elif fmt == "template":
        assert template is not None
        text = render_template(connector, credential, template)
    else:
        text = RENDERERS[fmt](connector, credential)
    return text.encode()
