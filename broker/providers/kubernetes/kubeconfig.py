"""Auto-configuration: turn one kubeconfig context into a kubernetes connector configuration.

Files are found and merged the way kubectl does it: the ``kubeconfig``
option, else every file of the ``KUBECONFIG`` list (missing files skipped,
the first definition of a name wins, the first ``current-context`` wins),
else ``$HOME/.kube/config``. Relative paths inside a file are relative to
that file. Only static credentials can be stored: a user entry that runs an
``exec`` plugin or an ``auth-provider`` mints its credentials on the fly,
and impersonation (``as``) has no attribute to hold it, so both are refused
with the context named. YAML errors never quote the file (it holds secrets).
Asked for auth method ``service-account-token``, the context's token or client
certificate becomes the bootstrap credential; ``service_account`` (and
``audiences``) come from the caller's attributes.
"""

from __future__ import annotations

import base64
import binascii
import os
from collections.abc import Mapping
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import yaml

from broker.attributes import normalize_pem
from broker.errors import FailedPrecondition, InvalidArgument, NotFound
from broker.model import AutoConfigured, AutoConfigureOptions, Value
from broker.providers.kubernetes.spec import (
    AUTH_PASSWORD,
    AUTH_SERVICE_ACCOUNT_TOKEN,
    AUTH_TOKEN,
    RESOURCE_TYPE,
)

#: User keys that delegate to something the broker cannot store.
_DYNAMIC_USER_KEYS = ("exec", "auth-provider")
_IMPERSONATION_KEYS = ("as", "as-uid", "as-groups", "as-user-extra")
_UNSUPPORTED_CLUSTER_KEYS = ("proxy-url", "tls-server-name")


@dataclass
class _Named:
    """One named entry (context, cluster or user) and the directory of its file."""

    body: dict[str, Any]
    base: Path


@dataclass
class Kubeconfig:
    """Several kubeconfig files merged kubectl-style."""

    files: list[Path] = field(default_factory=list)
    current_context: str | None = None
    contexts: dict[str, _Named] = field(default_factory=dict)
    clusters: dict[str, _Named] = field(default_factory=dict)
    users: dict[str, _Named] = field(default_factory=dict)

    @property
    def where(self) -> str:
        return ", ".join(str(f) for f in self.files)


def kubeconfig_paths(env: Mapping[str, str], explicit: str | None = None) -> list[Path]:
    """The kubeconfig files to read, in priority order."""
    if explicit:
        return [Path(explicit)]
    listed = env.get("KUBECONFIG", "")
    if listed.strip():
        return [Path(p) for p in listed.split(os.pathsep) if p.strip()]
    home = env.get("HOME")
    return [Path(home, ".kube", "config")] if home else []


def _read_document(path: Path) -> dict[str, Any]:
    try:
        text = path.read_text()
    except OSError as exc:
        raise FailedPrecondition(
            f"cannot read kubeconfig {path}: {exc.strerror or type(exc).__name__}"
        ) from None
    try:
        document = yaml.safe_load(text)
    except yaml.YAMLError as exc:
        mark = getattr(exc, "problem_mark", None)
        line = f" (line {mark.line + 1})" if mark is not None else ""
        raise FailedPrecondition(f"kubeconfig {path} is not valid YAML{line}") from None
    if document is None:
        return {}
    if not isinstance(document, dict):
        raise FailedPrecondition(f"kubeconfig {path} is not a YAML mapping")
    return document


def load_kubeconfig(paths: list[Path]) -> Kubeconfig:
    """Read and merge the files that exist; FailedPrecondition when none does."""
    merged = Kubeconfig()
    for path in paths:
        if not path.is_file():
            continue
        document = _read_document(path)
        merged.files.append(path)
        base = path.resolve().parent
        current = document.get("current-context")
        if merged.current_context is None and isinstance(current, str) and current:
            merged.current_context = current
        for section, target, inner in (
            ("contexts", merged.contexts, "context"),
            ("clusters", merged.clusters, "cluster"),
            ("users", merged.users, "user"),
        ):
            for item in document.get(section) or []:
                if not isinstance(item, dict) or not isinstance(item.get("name"), str):
                    continue
                body = item.get(inner) or {}
                if isinstance(body, dict):
                    target.setdefault(item["name"], _Named(body, base))
    if not merged.files:
        looked = ", ".join(str(p) for p in paths) or "nothing: neither KUBECONFIG nor HOME is set"
        raise FailedPrecondition(f"no kubeconfig file found (looked at {looked})")
    return merged


def _path_text(entry: _Named, key: str, what: str) -> str:
    path = Path(os.path.expanduser(str(entry.body[key])))
    if not path.is_absolute():
        path = entry.base / path
    try:
        return path.read_text()
    except OSError as exc:
        raise FailedPrecondition(
            f"{what}: cannot read {key} file {path}: {exc.strerror or type(exc).__name__}"
        ) from None


def _pem(entry: _Named, data_key: str, path_key: str, attribute: str, what: str) -> str | None:
    """PEM from ``X-data`` (base64 PEM) or from the file ``X`` names; None if neither."""
    if entry.body.get(data_key):
        raw = str(entry.body[data_key])
        try:
            base64.b64decode(raw, validate=True)
        except (binascii.Error, ValueError):
            raise FailedPrecondition(f"{what}: {data_key} is not base64") from None
        source = data_key
    elif entry.body.get(path_key):
        raw = _path_text(entry, path_key, what)
        source = f"the file {path_key} names"
    else:
        return None
    try:
        return normalize_pem(attribute, raw)
    except InvalidArgument:
        raise FailedPrecondition(f"{what}: {source} does not hold PEM") from None


def _cluster_config(name: str, entry: _Named, context: str) -> dict[str, Value]:
    what = f"cluster '{name}' of context '{context}'"
    for key in _UNSUPPORTED_CLUSTER_KEYS:
        if entry.body.get(key):
            raise FailedPrecondition(
                f"{what} sets '{key}', which a kubernetes connector cannot store"
            )
    server = entry.body.get("server")
    if not isinstance(server, str) or not server.strip():
        raise FailedPrecondition(f"{what} has no server URL")
    config: dict[str, Value] = {"server": server.strip(), "cluster_name": name}
    ca = _pem(
        entry, "certificate-authority-data", "certificate-authority", "certificate_authority", what
    )
    if ca:
        config["certificate_authority"] = ca
    config["insecure"] = entry.body.get("insecure-skip-tls-verify") is True
    return config


def _user_config(name: str, entry: _Named, context: str, requested: str | None) -> dict[str, Value]:
    what = f"user '{name}' of context '{context}'"
    for key in _DYNAMIC_USER_KEYS:
        if entry.body.get(key):
            kind = "an exec credential plugin" if key == "exec" else "an auth-provider"
            raise FailedPrecondition(
                f"context '{context}' gets its credentials from {kind} ({what}): that is a "
                "dynamic credential the broker cannot store; use a context with a token, a "
                "client certificate or a password, or the aws/gcp connector types"
            )
    for key in _IMPERSONATION_KEYS:
        if entry.body.get(key):
            raise FailedPrecondition(
                f"{what} impersonates another user ('{key}'), which a kubernetes connector "
                "cannot store"
            )
    body = entry.body
    token = str(body.get("token") or "").strip()
    token_file = body.get("tokenFile") or body.get("token-file")
    if not token and token_file:
        key = "tokenFile" if body.get("tokenFile") else "token-file"
        token = _path_text(entry, key, what).strip()
    cert = _pem(entry, "client-certificate-data", "client-certificate", "client_certificate", what)
    key_pem = _pem(entry, "client-key-data", "client-key", "client_key", what)
    if bool(cert) != bool(key_pem):
        missing = "client-key" if cert else "client-certificate"
        raise FailedPrecondition(f"{what} has a client certificate or key without its {missing}")
    username, password = body.get("username"), body.get("password")
    has_token = bool(token or cert)
    has_basic = isinstance(username, str) and bool(username) and password is not None
    method = requested or (AUTH_TOKEN if has_token else AUTH_PASSWORD if has_basic else None)
    # service-account-token: the context's token or certificate becomes the bootstrap.
    if method in (AUTH_TOKEN, AUTH_SERVICE_ACCOUNT_TOKEN) and has_token:
        config: dict[str, Value] = {}
        if token:
            config["token"] = token
        if cert and key_pem:
            config["client_certificate"] = cert
            config["client_key"] = key_pem
        return config
    if method == AUTH_PASSWORD and has_basic:
        return {"username": str(username), "password": str(password)}
    if method not in (None, AUTH_TOKEN, AUTH_PASSWORD, AUTH_SERVICE_ACCOUNT_TOKEN):
        raise InvalidArgument(
            f"auth method '{method}' is not offered by connector type 'kubernetes' "
            f"(one of: {AUTH_PASSWORD}, {AUTH_TOKEN}, {AUTH_SERVICE_ACCOUNT_TOKEN})",
            field="auth_method",
        )
    wanted = {
        AUTH_TOKEN: "a token or a client certificate and key",
        AUTH_SERVICE_ACCOUNT_TOKEN: "a token or a client certificate and key (to mint with)",
        AUTH_PASSWORD: "a username and password",
        None: "a token, a client certificate and key, or a username and password",
    }[method]
    raise FailedPrecondition(f"{what} holds no {wanted}")


def auto_configure(options: AutoConfigureOptions, env: Mapping[str, str]) -> AutoConfigured:
    """A kubernetes connector configuration from the chosen (or current) kubeconfig context."""
    if options.resource_type and options.resource_type != RESOURCE_TYPE:
        raise InvalidArgument(
            f"connector type 'kubernetes' serves only resource type '{RESOURCE_TYPE}', "
            f"not '{options.resource_type}'",
            field="resource_type",
        )
    kubeconfig = load_kubeconfig(kubeconfig_paths(env, options.options.get("kubeconfig")))
    context = options.options.get("context") or kubeconfig.current_context
    if not context:
        raise FailedPrecondition(
            f"kubeconfig {kubeconfig.where} sets no current-context: pick one with the "
            f"'context' option (contexts: {', '.join(kubeconfig.contexts) or 'none'})"
        )
    entry = kubeconfig.contexts.get(context)
    if entry is None:
        raise NotFound(
            f"context '{context}' is not in kubeconfig {kubeconfig.where} "
            f"(contexts: {', '.join(kubeconfig.contexts) or 'none'})",
            field="context",
        )
    cluster_name, user_name = entry.body.get("cluster"), entry.body.get("user")
    cluster = kubeconfig.clusters.get(str(cluster_name))
    if not cluster_name or cluster is None:
        raise NotFound(
            f"context '{context}' names cluster '{cluster_name or ''}', which is not in "
            f"kubeconfig {kubeconfig.where}",
            field="context",
        )
    user = kubeconfig.users.get(str(user_name))
    if not user_name or user is None:
        raise NotFound(
            f"context '{context}' names user '{user_name or ''}', which is not in "
            f"kubeconfig {kubeconfig.where}",
            field="context",
        )
    config = _cluster_config(str(cluster_name), cluster, context)
    credentials = _user_config(str(user_name), user, context, options.auth_method)
    if options.auth_method == AUTH_SERVICE_ACCOUNT_TOKEN:
        method = AUTH_SERVICE_ACCOUNT_TOKEN  # service_account comes from the caller
    else:
        method = AUTH_PASSWORD if "username" in credentials else AUTH_TOKEN
    config.update(credentials)
    return AutoConfigured(
        auth_method=method,
        config=config,
        resource_type=RESOURCE_TYPE,
        resource_id=str(cluster_name),
    )
