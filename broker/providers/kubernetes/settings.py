"""A kubernetes connector's configuration as typed settings, and the checks on it.

The schema only knows single attributes; the rules that span several live
here so ``validate`` (at register time) and ``discover``/``mint`` (later)
read the configuration the same way:

* ``server`` must be ``https://``. Plain ``http://`` is accepted only for
  loopback hosts (``kubectl proxy``, port-forwards): ``insecure`` relaxes
  certificate checks, it never allows a token to cross a network in clear
  text. User info, queries and fragments are refused.
* The cluster name (the resource ID) is ``cluster_name`` or, when empty,
  the server's ``host[:port]`` (port left out when it is 443).
* The token method needs a token, a client certificate and key, or both; so
  does the service-account-token method (its bootstrap credential), which also
  names ``service_account`` as ``NAMESPACE/NAME`` (a DNS-1123 label and a
  DNS-1123 subdomain, as Kubernetes names them) and optional ``audiences``.
"""

from __future__ import annotations

import re
import ssl
from collections.abc import Mapping
from dataclasses import dataclass, field, replace
from urllib.parse import urlsplit

from cryptography import x509
from cryptography.exceptions import UnsupportedAlgorithm
from cryptography.hazmat.primitives import serialization

from broker.errors import InvalidArgument
from broker.hosts import is_loopback
from broker.model import HIDDEN, Connector, Value
from broker.providers.kubernetes.spec import AUTH_PASSWORD, AUTH_SERVICE_ACCOUNT_TOKEN, AUTH_TOKEN

#: Kubernetes object names are at most 253 characters; cluster names in kubeconfigs
#: (ARNs, gke_project_zone_name) stay well below.
MAX_CLUSTER_NAME = 253

_DEFAULT_PORTS = {"https": 443, "http": 80}

#: Namespace names are DNS-1123 labels; service account names DNS-1123 subdomains.
_LABEL = r"[a-z0-9](?:[-a-z0-9]*[a-z0-9])?"
_NAMESPACE_RE = re.compile(_LABEL)
_SUBDOMAIN_RE = re.compile(rf"{_LABEL}(?:\.{_LABEL})*")
MAX_NAMESPACE = 63
MAX_SERVICE_ACCOUNT = 253
#: Bounds on audiences: a handful of short identifiers, not a document.
MAX_AUDIENCES = 16
MAX_AUDIENCE = 512


def _text(config: Mapping[str, Value], key: str, *, strip: bool = True) -> str | None:
    """A text attribute, or None when unset or blank (PEM and passwords kept verbatim)."""
    value = config.get(key)
    if isinstance(value, str) and value.strip():
        return value.strip() if strip else value
    return None


def _redacted(url: str) -> str:
    """The URL with any user info hidden, fit for an error message."""
    return re.sub(r"//[^/@]*@", f"//{HIDDEN}@", url)


def check_server(server: str) -> str:
    """The server URL without a trailing slash, or InvalidArgument naming 'server'."""
    raw = server.strip()
    shown = _redacted(raw)
    try:
        parts = urlsplit(raw)
        host = parts.hostname or ""
        _ = parts.port  # raises ValueError for a port that is not a number
    except ValueError:
        raise InvalidArgument(
            f"attribute 'server' is not a valid URL: '{shown}'", field="server"
        ) from None
    if parts.scheme not in ("https", "http") or not host:
        raise InvalidArgument(
            f"attribute 'server' must be an https:// URL, got '{shown}'", field="server"
        )
    if parts.username is not None or parts.password is not None:
        # Never echo it: the user info may hold a password.
        raise InvalidArgument(
            "attribute 'server' must not carry user info; use the username and password attributes",
            field="server",
        )
    if parts.query or parts.fragment:
        raise InvalidArgument(
            f"attribute 'server' must not have a query or fragment, got '{raw}'", field="server"
        )
    if parts.scheme == "http" and not is_loopback(host):
        raise InvalidArgument(
            f"attribute 'server' uses plain http:// for non-loopback host '{host}': "
            "credentials would cross the network in clear text; use https:// "
            "(insecure=true only skips certificate checks)",
            field="server",
        )
    return raw.rstrip("/")


def derive_cluster_name(server: str) -> str:
    """``host[:port]`` of the server URL; the port is left out when it is 443."""
    parts = urlsplit(server)
    host = parts.hostname or ""
    if ":" in host:  # IPv6 literal
        host = f"[{host}]"
    port = parts.port
    if port is None or port == 443:
        return host
    return f"{host}:{port}"


def check_cluster_name(name: str) -> str:
    if len(name) > MAX_CLUSTER_NAME or any(c.isspace() or not c.isprintable() for c in name):
        raise InvalidArgument(
            f"attribute 'cluster_name' must be at most {MAX_CLUSTER_NAME} printable "
            "characters without spaces",
            field="cluster_name",
        )
    return name


def check_certificate_authority(pem: str) -> None:
    try:
        ssl.create_default_context(cadata=pem)
    except (ssl.SSLError, ValueError):
        raise InvalidArgument(
            "attribute 'certificate_authority' holds no usable CA certificate",
            field="certificate_authority",
        ) from None


def check_client_pair(cert_pem: str, key_pem: str) -> None:
    """The certificate parses and the key is its unencrypted private key."""
    try:
        cert = x509.load_pem_x509_certificate(cert_pem.encode())
    except ValueError:
        raise InvalidArgument(
            "attribute 'client_certificate' is not a PEM X.509 certificate",
            field="client_certificate",
        ) from None
    try:
        key = serialization.load_pem_private_key(key_pem.encode(), password=None)
    except TypeError:
        raise InvalidArgument(
            "attribute 'client_key' is encrypted; store the unencrypted key", field="client_key"
        ) from None
    except (ValueError, UnsupportedAlgorithm):
        raise InvalidArgument(
            "attribute 'client_key' is not a PEM private key", field="client_key"
        ) from None
    spki = serialization.Encoding.DER, serialization.PublicFormat.SubjectPublicKeyInfo
    if cert.public_key().public_bytes(*spki) != key.public_key().public_bytes(*spki):
        raise InvalidArgument(
            "attributes 'client_certificate' and 'client_key' do not match: the key is not "
            "the certificate's private key",
            field="client_key",
        )


def check_service_account(raw: str) -> tuple[str, str]:
    """(namespace, name) of ``NAMESPACE/NAME``, or InvalidArgument naming 'service_account'."""
    namespace, sep, name = raw.strip().partition("/")
    shown = raw.strip()[:80]
    if not sep or "/" in name:
        raise InvalidArgument(
            f"attribute 'service_account' must be NAMESPACE/NAME (e.g. ci/deployer), got '{shown}'",
            field="service_account",
        )
    if len(namespace) > MAX_NAMESPACE or not _NAMESPACE_RE.fullmatch(namespace):
        raise InvalidArgument(
            f"attribute 'service_account': namespace '{namespace[:80]}' is not a valid "
            f"Kubernetes namespace (lower-case letters, digits and '-', at most {MAX_NAMESPACE})",
            field="service_account",
        )
    if len(name) > MAX_SERVICE_ACCOUNT or not _SUBDOMAIN_RE.fullmatch(name):
        raise InvalidArgument(
            f"attribute 'service_account': name '{name[:80]}' is not a valid service account "
            f"name (lower-case letters, digits, '-' and '.', at most {MAX_SERVICE_ACCOUNT})",
            field="service_account",
        )
    return namespace, name


def check_audiences(value: Value | None) -> tuple[str, ...]:
    """The audiences as a tuple (empty: the API server's own), or InvalidArgument naming
    'audiences'."""
    if value is None or value == "":
        return ()
    items = [value] if isinstance(value, str) else value
    if not isinstance(items, list) or not all(isinstance(a, str) for a in items):
        raise InvalidArgument("attribute 'audiences' must be a list of text", field="audiences")
    audiences = tuple(a.strip() for a in items)
    if len(audiences) > MAX_AUDIENCES:
        raise InvalidArgument(
            f"attribute 'audiences' lists {len(audiences)} audiences; at most {MAX_AUDIENCES}",
            field="audiences",
        )
    for audience in audiences:
        if (
            not audience
            or len(audience) > MAX_AUDIENCE
            or any(c.isspace() or not c.isprintable() for c in audience)
        ):
            raise InvalidArgument(
                f"attribute 'audiences' has an invalid audience '{audience[:80]}': each must be "
                f"1..{MAX_AUDIENCE} printable characters without spaces",
                field="audiences",
            )
    if len(set(audiences)) != len(audiences):
        raise InvalidArgument("attribute 'audiences' lists an audience twice", field="audiences")
    return audiences


def cluster_identity(config: Mapping[str, Value]) -> tuple[str, str]:
    """(server URL, cluster name) of a configuration, without the credential checks."""
    server = check_server(str(config.get("server", "")))
    name = _text(config, "cluster_name")
    return server, check_cluster_name(name) if name else derive_cluster_name(server)


def same_server(a: str, b: str) -> bool:
    """Whether two server URLs name the same endpoint (case of host, default port, slash)."""

    def key(url: str) -> tuple[str, str, int | None, str]:
        parts = urlsplit(url.strip())
        try:
            port = parts.port or _DEFAULT_PORTS.get(parts.scheme)
        except ValueError:
            port = None
        return (parts.scheme, (parts.hostname or "").lower(), port, parts.path.rstrip("/"))

    return key(a) == key(b)


@dataclass(frozen=True)
class ClusterSettings:
    """Everything needed to reach one cluster; secrets are left out of ``repr``."""

    server: str
    cluster_name: str
    auth_method: str
    certificate_authority: str | None = None
    insecure: bool = False
    token: str | None = field(default=None, repr=False)
    client_certificate: str | None = None
    client_key: str | None = field(default=None, repr=False)
    username: str | None = None
    password: str | None = field(default=None, repr=False)
    #: service-account-token only: whose tokens are minted, and for which audiences.
    service_account: tuple[str, str] | None = None
    audiences: tuple[str, ...] = ()

    @classmethod
    def from_connector(cls, connector: Connector) -> ClusterSettings:
        """Read and check a connector's configuration (raises InvalidArgument)."""
        config = connector.config
        server, cluster_name = cluster_identity(config)
        settings = cls(
            server=server,
            cluster_name=cluster_name,
            auth_method=connector.auth_method,
            certificate_authority=_text(config, "certificate_authority", strip=False),
            insecure=config.get("insecure") is True,
            token=_text(config, "token"),
            client_certificate=_text(config, "client_certificate", strip=False),
            client_key=_text(config, "client_key", strip=False),
            username=_text(config, "username"),
            password=_text(config, "password", strip=False),
        )
        if connector.auth_method == AUTH_SERVICE_ACCOUNT_TOKEN:
            account = _text(config, "service_account")
            if account is None:
                raise InvalidArgument(
                    "attribute 'service_account' is required for auth method "
                    f"'{AUTH_SERVICE_ACCOUNT_TOKEN}'",
                    field="service_account",
                )
            settings = replace(
                settings,
                service_account=check_service_account(account),
                audiences=check_audiences(config.get("audiences")),
            )
        settings.check()
        return settings

    def check(self) -> None:
        """Cross-attribute rules; raises InvalidArgument naming the attribute."""
        if self.auth_method in (AUTH_TOKEN, AUTH_SERVICE_ACCOUNT_TOKEN):
            if self.client_certificate and not self.client_key:
                raise InvalidArgument(
                    "attribute 'client_key' is required with client_certificate",
                    field="client_key",
                )
            if self.client_key and not self.client_certificate:
                raise InvalidArgument(
                    "attribute 'client_certificate' is required with client_key",
                    field="client_certificate",
                )
            if not self.token and not self.client_certificate:
                raise InvalidArgument(
                    f"auth method '{self.auth_method}' needs attribute 'token', or "
                    "'client_certificate' and 'client_key', or both",
                    field="token",
                )
            if self.client_certificate and self.client_key:
                check_client_pair(self.client_certificate, self.client_key)
        elif self.auth_method == AUTH_PASSWORD:
            if not self.username:
                raise InvalidArgument(
                    "attribute 'username' is required for auth method 'password'",
                    field="username",
                )
            if not self.password:
                raise InvalidArgument(
                    "attribute 'password' is required for auth method 'password'",
                    field="password",
                )
        if self.certificate_authority:
            check_certificate_authority(self.certificate_authority)

    def client_config(self) -> dict[str, Value]:
        """The configuration handed to consumers: where the cluster is, how to trust it,
        and the credential of this auth method (nothing else)."""
        config: dict[str, Value] = {
            "server": self.server,
            "cluster_name": self.cluster_name,
            "insecure": self.insecure,
        }
        optional = {
            "certificate_authority": self.certificate_authority,
            "token": self.token,
            "client_certificate": self.client_certificate,
            "client_key": self.client_key,
            "username": self.username,
            "password": self.password,
        }
        config.update({k: v for k, v in optional.items() if v})
        return config

    def minted_config(self, token: str) -> dict[str, Value]:
        """The configuration handed to consumers of a minted token: where the cluster is,
        how to trust it, and the minted token. The bootstrap credential is never in it."""
        config: dict[str, Value] = {
            "server": self.server,
            "cluster_name": self.cluster_name,
            "insecure": self.insecure,
            "token": token,
        }
        if self.certificate_authority:
            config["certificate_authority"] = self.certificate_authority
        return config
