"""Daemon settings: defaults, then a TOML file, then ``BROKER_*`` env, then CLI flags.

Every setting is declared once below with its default and meaning; the
README table and ``broker config show`` are generated from these
declarations. Unknown keys and bad values are refused with the key named.
"""

from __future__ import annotations

import os
import tomllib
from collections.abc import Mapping
from dataclasses import MISSING, dataclass, field, fields, replace
from pathlib import Path
from typing import Any

from broker.errors import InvalidArgument
from broker.hosts import is_loopback
from broker.identity.attestors.settings import AttestorSettings, parse_attestors
from broker.outputs.settings import OutputSpec, parse_outputs
from broker.policy import Rule, parse_policy
from broker.store.postgres_dsn import is_postgres_url, redact

ENV_PREFIX = "BROKER_"


def _doc(text: str, default: Any = MISSING, secret: bool = False, redact: bool = False) -> Any:
    """``redact``: shown with any password it holds masked (a database URL)."""
    meta = {"doc": text, "secret": secret, "redact": redact}
    if default is MISSING:
        return field(metadata=meta)
    return field(default=default, metadata=meta)


@dataclass(frozen=True)
class Settings:
    """The daemon's effective configuration."""

    data_dir: Path = _doc("Directory for the store, the secret key and the socket", Path(".broker"))
    socket: Path | None = _doc("gRPC Unix socket (default: DATA_DIR/broker.sock)", None)
    socket_group: str | None = _doc("Group owning the sockets (mode 0660)", None)
    local_socket: Path | None = _doc(
        "Unix socket of the helper endpoint for docker/kubectl/aws helpers "
        "(default: DATA_DIR/helper.sock)",
        None,
    )
    tcp: str | None = _doc("Also serve gRPC on HOST:PORT (TLS required unless insecure)", None)
    tls_cert: Path | None = _doc("PEM certificate for the TCP listener", None)
    tls_key: Path | None = _doc("PEM private key for the TCP listener", None)
    tls_client_ca: Path | None = _doc("PEM CA bundle: require client certificates (mTLS)", None)
    insecure: bool = _doc("Allow TCP without TLS, only on a loopback address", False)
    database: str | None = _doc(
        "Where connectors are kept: an SQLite file (default: DATA_DIR/broker.db), or a "
        "postgresql:// URL one fleet of daemons shares (TLS: ?sslmode=verify-full&sslrootcert=CA; "
        "the password is never shown, better given as PGPASSWORD)",
        None,
        redact=True,
    )
    database_pool_size: int = _doc("PostgreSQL: connections this daemon opens at most", 5)
    change_retention_seconds: float = _doc(
        "PostgreSQL: how long changes stay in the change table for a daemon that lost its "
        "connection to catch up from; one that was away longer reloads every connector",
        86400.0,
    )
    secret_key_file: Path | None = _doc(
        "File with the base64 key encrypting secrets (default: DATA_DIR/secret.key)", None
    )
    enable_implicit_auth_methods: bool = _doc(
        "Allow auth methods that use the daemon's own cloud identity", False
    )
    log_level: str = _doc("debug, info, warning or error", "info")
    log_format: str = _doc("auto (JSON unless a TTY), json or console", "auto")
    event_loop: str = _doc(
        "asyncio (the standard library's loop) or uvloop (libuv: cache-hit calls at "
        "concurrency 1 5-20 % faster, at 32 unchanged; see the README's benchmarks)",
        "asyncio",
    )
    metrics: str | None = _doc("Serve Prometheus metrics on HOST:PORT", None)
    shutdown_grace_seconds: float = _doc("Time in-flight calls get to finish on shutdown", 10.0)
    request_timeout_seconds: float = _doc("Bound on one upstream call", 10.0)
    cache_max_entries: int = _doc("Credentials kept in the cache at most", 10_000)
    cache_idle_seconds: float = _doc(
        "Unwatched credentials unused this long are dropped and not renewed", 900.0
    )
    persist_cache: bool = _doc(
        "Keep minted credentials in the store (sealed, per daemon: DATA_DIR/daemon-id) so a "
        "restart serves them without minting again",
        True,
    )
    discovery_timeout_seconds: float = _doc("Per-connector discovery timeout", 5.0)
    discovery_concurrency: int = _doc("Discovery calls in flight at once, in all", 128)
    discovery_per_provider: int = _doc("Discovery calls in flight at once per connector type", 64)
    discovery_cache_ttl_seconds: float = _doc("How long a resource listing is reused", 60.0)
    discovery_failure_ttl_seconds: float = _doc(
        "How long a failed resource listing is reused (shown with its age; --refresh asks "
        "again; 0: failures are asked again every time)",
        10.0,
    )
    grpc_max_pending_calls: int = _doc(
        "New gRPC calls held until the daemon takes them (gRPC's own defaults, 1,000 then "
        "random refusals up to 3,000, cancelled hundreds of watch streams opened at once on "
        "one connection with a bare CANCELLED)",
        100_000,
    )
    grpc_keepalive_seconds: float = _doc(
        "Ping each gRPC connection after this long without traffic (a dead watcher's streams "
        "are then ended); clients may ping as often as every grpc_min_ping_interval_seconds",
        60.0,
    )
    grpc_min_ping_interval_seconds: float = _doc(
        "Shortest interval between keepalive pings a gRPC client may use; more often ends "
        "its connection (GOAWAY too_many_pings), so keep clients' keepalive_time above it",
        10.0,
    )
    watch_max_streams: int = _doc(
        "Watch streams open at once, in all; more are refused with RESOURCE_EXHAUSTED naming "
        "this setting",
        50_000,
    )
    watch_stall_timeout_seconds: float = _doc(
        "A watch stream whose client leaves an event unread this long (its HTTP/2 window "
        "full) is ended with RESOURCE_EXHAUSTED; until then it keeps only the newest event",
        60.0,
    )
    helper_max_connections: int = _doc(
        "Open connections to the helper socket at most; more are refused at once with 503 "
        "(lowered at start-up to fit the open-file limit: see fd_reserve)",
        1024,
    )
    sdk_max_connections: int = _doc(
        "Open connections to all SDK endpoints together at most (as helper_max_connections)",
        1024,
    )
    http_header_timeout_seconds: float = _doc(
        "Helper and SDK endpoints: time a client has to send a request's headers (from "
        "connecting, or from its first byte after a keep-alive pause); then 408 and closed",
        10.0,
    )
    http_body_timeout_seconds: float = _doc(
        "Helper and SDK endpoints: time a client has to send a request's body; then 408",
        10.0,
    )
    http_max_header_bytes: int = _doc(
        "Helper and SDK endpoints: size of a request's headers at most; more is refused (431)",
        16384,
    )
    http_max_body_bytes: int = _doc(
        "Helper and SDK endpoints: size of a request's body at most; more is refused (413)",
        65536,
    )
    fd_reserve: int = _doc(
        "Open files kept free for gRPC, the store and upstream calls (at most half the "
        "limit): the connection caps are lowered until they leave this many. The daemon "
        "raises its soft RLIMIT_NOFILE to the hard limit first",
        256,
    )
    #: ``[[policy.rules]]`` from the config file (not a flat setting: no env, no flag).
    policy_rules: tuple[Rule, ...] = field(default=(), metadata={"internal": True})
    #: ``[attestors]`` from the config file: workload attestation, off when None.
    attestors: AttestorSettings | None = field(default=None, metadata={"internal": True})
    #: ``[[outputs]]`` from the config file: credentials kept written to files.
    outputs: tuple[OutputSpec, ...] = field(default=(), metadata={"internal": True})
    #: The TOML file these settings came from: SIGHUP re-reads its policy.
    config_file: Path | None = field(default=None, metadata={"internal": True})

    @property
    def socket_path(self) -> Path:
        return self.socket or self.data_dir / "broker.sock"

    @property
    def local_socket_path(self) -> Path:
        return self.local_socket or self.data_dir / "helper.sock"

    @property
    def database_url(self) -> str | None:
        """The PostgreSQL URL, if the store is PostgreSQL (else None: SQLite)."""
        return self.database if self.database and is_postgres_url(self.database) else None

    @property
    def database_path(self) -> Path:
        """The SQLite file (meaningless when :attr:`database_url` is set)."""
        if self.database and not is_postgres_url(self.database):
            return Path(self.database).expanduser()
        return self.data_dir / "broker.db"


def setting_fields() -> list[Any]:
    """The flat settings (TOML key, env variable, flag); not the policy section."""
    return [f for f in fields(Settings) if not f.metadata.get("internal")]


def _coerce(name: str, annotation: str, value: Any) -> Any:
    """Turn TOML/env/CLI input into the declared type, naming the key on error."""
    optional = "None" in annotation
    if value is None or (optional and value == ""):
        if optional:
            return None
        raise InvalidArgument(f"setting '{name}' must not be empty", field=name)
    base = annotation.replace(" | None", "")
    try:
        if base == "bool":
            if isinstance(value, bool):
                return value
            text = str(value).strip().lower()
            if text in ("true", "1", "yes", "on"):
                return True
            if text in ("false", "0", "no", "off"):
                return False
            raise ValueError
        if base == "int":
            if isinstance(value, bool):
                raise ValueError
            number = int(value)
            if number <= 0:
                raise ValueError
            return number
        if base == "float":
            if isinstance(value, bool):
                raise ValueError
            seconds = float(value)
            if seconds < 0:
                raise ValueError
            return seconds
        if base == "Path":
            if not isinstance(value, str | Path):
                raise ValueError
            return Path(value).expanduser()
        if not isinstance(value, str):
            raise ValueError
        return value
    except (TypeError, ValueError):
        raise InvalidArgument(
            f"setting '{name}' must be {_kind_words(base)}, got {value!r}", field=name
        ) from None


def _kind_words(base: str) -> str:
    return {
        "bool": "true or false",
        "int": "a positive whole number",
        "float": "a non-negative number",
        "Path": "a path",
    }.get(base, "text")


def _validate(settings: Settings) -> Settings:
    if settings.log_level not in ("debug", "info", "warning", "error"):
        raise InvalidArgument(
            "setting 'log_level' must be debug, info, warning or error, "
            f"got '{settings.log_level}'",
            field="log_level",
        )
    if settings.log_format not in ("auto", "json", "console"):
        raise InvalidArgument(
            f"setting 'log_format' must be auto, json or console, got '{settings.log_format}'",
            field="log_format",
        )
    if settings.event_loop not in ("uvloop", "asyncio"):
        raise InvalidArgument(
            f"setting 'event_loop' must be uvloop or asyncio, got '{settings.event_loop}'",
            field="event_loop",
        )
    for key in (
        "http_header_timeout_seconds",
        "http_body_timeout_seconds",
        "grpc_keepalive_seconds",
        "grpc_min_ping_interval_seconds",
        "watch_stall_timeout_seconds",
    ):
        if getattr(settings, key) <= 0:
            raise InvalidArgument(f"setting '{key}' must be more than 0 seconds", field=key)
    for key in ("tcp", "metrics"):
        value = getattr(settings, key)
        if value is not None:
            parse_host_port(key, value)
    if settings.database and "://" in settings.database and not settings.database_url:
        raise InvalidArgument(
            "setting 'database' must be an SQLite file path or a postgresql:// URL, got "
            f"'{redact(settings.database)}'",
            field="database",
        )
    if settings.tcp:
        has_tls = settings.tls_cert is not None and settings.tls_key is not None
        if (settings.tls_cert is None) != (settings.tls_key is None):
            raise InvalidArgument("settings 'tls_cert' and 'tls_key' go together", field="tls_cert")
        if not has_tls:
            host, _ = parse_host_port("tcp", settings.tcp)
            if not settings.insecure:
                raise InvalidArgument(
                    "setting 'tcp' needs TLS (tls_cert and tls_key); plain TCP is only allowed "
                    "on loopback with 'insecure' set",
                    field="tcp",
                )
            if not is_loopback(host):
                raise InvalidArgument(
                    f"setting 'tcp': plain TCP is refused on non-loopback address '{host}'; "
                    "configure tls_cert and tls_key",
                    field="tcp",
                )
    if settings.tls_client_ca and not settings.tls_cert:
        raise InvalidArgument(
            "setting 'tls_client_ca' needs tls_cert/tls_key", field="tls_client_ca"
        )
    if settings.tcp and settings.tls_cert and not settings.tls_client_ca:
        host, _ = parse_host_port("tcp", settings.tcp)
        if not is_loopback(host):
            raise InvalidArgument(
                f"setting 'tcp': TLS on non-loopback address '{host}' needs client certificates "
                "(set tls_client_ca); without them any network peer could call the daemon",
                field="tls_client_ca",
            )
    return settings


def parse_host_port(key: str, value: str) -> tuple[str, int]:
    host, sep, port = value.rpartition(":")
    host = host.strip("[]")
    if not sep or not host or not port.isdigit() or not 0 <= int(port) < 65536:
        raise InvalidArgument(f"setting '{key}' must be HOST:PORT, got '{value}'", field=key)
    return host, int(port)


def _apply(settings: Settings, values: Mapping[str, Any], source: str) -> Settings:
    known = {f.name: f for f in setting_fields()}
    changes: dict[str, Any] = {}
    for key, value in values.items():
        name = key.replace("-", "_")
        if name not in known:
            raise InvalidArgument(f"unknown setting '{key}' in {source}", field=key)
        changes[name] = _coerce(name, str(known[name].type), value)
    return replace(settings, **changes)


def load_settings(
    config_file: Path | None = None,
    env: Mapping[str, str] | None = None,
    overrides: Mapping[str, Any] | None = None,
) -> Settings:
    """Defaults < TOML file < BROKER_* env < explicit overrides (CLI flags)."""
    env = os.environ if env is None else env
    settings = Settings()
    path = config_file or (Path(env["BROKER_CONFIG"]) if env.get("BROKER_CONFIG") else None)
    if path is not None:
        data = _read_toml(path)
        settings = replace(
            settings,
            policy_rules=tuple(parse_policy(data.pop("policy", None), str(path))),
            attestors=parse_attestors(data.pop("attestors", None), str(path), env),
            outputs=parse_outputs(data.pop("outputs", None), str(path)),
            config_file=path,
        )
        nested = [k for k, v in data.items() if isinstance(v, dict)]
        if nested:
            raise InvalidArgument(
                f"unknown section '[{nested[0]}]' in {path}: settings are top-level keys "
                "(the only sections are [policy], [attestors] and [[outputs]])",
                field=nested[0],
            )
        settings = _apply(settings, data, str(path))
    known = {f.name for f in setting_fields()}
    from_env = {
        key[len(ENV_PREFIX) :].lower(): value
        for key, value in env.items()
        if key.startswith(ENV_PREFIX) and key[len(ENV_PREFIX) :].lower() in known
    }
    settings = _apply(settings, from_env, "environment")
    settings = _apply(
        settings, {k: v for k, v in (overrides or {}).items() if v is not None}, "flags"
    )
    return _validate(settings)


def describe(settings: Settings, *, show_secrets: bool = False) -> dict[str, Any]:
    """The effective settings as plain data (for ``broker config show``)."""
    out: dict[str, Any] = {}
    for f in setting_fields():
        value = getattr(settings, f.name)
        if f.metadata.get("secret") and value is not None and not show_secrets:
            value = "[HIDDEN]"
        elif f.metadata.get("redact") and isinstance(value, str) and not show_secrets:
            value = redact(value)
        out[f.name] = str(value) if isinstance(value, Path) else value
    return out


def _read_toml(path: Path) -> dict[str, Any]:
    """The config file parsed (at start and on SIGHUP); errors name the file."""
    try:
        return tomllib.loads(path.read_text())
    except FileNotFoundError:
        raise InvalidArgument(f"config file {path} does not exist", field="config") from None
    except OSError as exc:
        raise InvalidArgument(f"config file {path}: {exc.strerror}", field="config") from None
    except tomllib.TOMLDecodeError as exc:
        raise InvalidArgument(
            f"config file {path} is not valid TOML: {exc}", field="config"
        ) from None


def reload_policy(settings: Settings) -> tuple[Rule, ...]:
    """The ``[policy]`` section re-read from the config file (SIGHUP); errors name the key."""
    if settings.config_file is None:
        return settings.policy_rules
    path = settings.config_file
    return tuple(parse_policy(_read_toml(path).get("policy"), str(path)))


def reload_outputs(settings: Settings) -> tuple[OutputSpec, ...]:
    """The ``[[outputs]]`` tables re-read from the config file (SIGHUP); errors name
    ``outputs[N].key``."""
    if settings.config_file is None:
        return settings.outputs
    path = settings.config_file
    return parse_outputs(_read_toml(path).get("outputs"), str(path))


def loop_options(event_loop: str) -> dict[str, bool]:
    """anyio's backend options for the ``event_loop`` setting."""
    return {"use_uvloop": event_loop == "uvloop"}
