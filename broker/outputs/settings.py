"""The ``[[outputs]]`` tables of the config file: credentials written to files for programs
that speak no protocol (a Java service reading ``~/.aws/credentials``, nginx reading a
registry password).

::

    [[outputs]]
    connector = "prod-aws"
    resource_type = "s3-bucket"        # optional: the connector's default
    resource_id = "data"               # optional
    format = "aws-credentials"         # json, env, aws-credentials, docker-config,
                                       # kubeconfig, gcp-access-token, template
    path = "/etc/app/aws-credentials"  # absolute
    mode = "0640"                      # default 0600
    owner = "app"                      # user name or uid; default: the daemon's
    group = "app"
    profile = "default"                # aws-credentials only
    on_change = ["systemctl", "reload", "app"]   # argv, no shell
    on_change_timeout_seconds = 30
    signal = "SIGHUP"                  # sent to the pid in pid_file
    pid_file = "/run/app.pid"

Parsed apart from the flat settings (like ``[policy]``): no environment variables
or flags, unknown keys refused, every error naming ``outputs[N].key``. Owners and
groups are resolved and templates compiled here, so a typo stops the start (or is
refused by SIGHUP, which keeps the previous outputs) instead of failing at the
first renewal.
"""

from __future__ import annotations

import grp
import pwd
import signal as signals
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from broker.errors import InvalidArgument

FORMATS = (
    "json",
    "env",
    "aws-credentials",
    "docker-config",
    "kubeconfig",
    "gcp-access-token",
    "template",
)

#: A program run on change that takes longer than this (default) is killed and counted failed.
ON_CHANGE_TIMEOUT_SECONDS = 30.0
#: Template files are read once at load; bigger is surely a mistake.
MAX_TEMPLATE_BYTES = 64 * 1024

_KEYS = {
    "connector",
    "resource_type",
    "resource_id",
    "format",
    "path",
    "mode",
    "owner",
    "group",
    "profile",
    "template",
    "template_file",
    "on_change",
    "on_change_timeout_seconds",
    "signal",
    "pid_file",
}


@dataclass(frozen=True)
class OutputSpec:
    """One configured output; ``index`` is its position in the file (``outputs[N]``)."""

    index: int
    connector: str
    format: str
    path: Path
    resource_type: str | None = None
    resource_id: str | None = None
    mode: int = 0o600
    #: Resolved uid / gid (None: the daemon's own).
    uid: int | None = None
    gid: int | None = None
    profile: str = "default"
    template: str | None = None
    on_change: tuple[str, ...] = ()
    on_change_timeout_seconds: float = ON_CHANGE_TIMEOUT_SECONDS
    signal: signals.Signals | None = None
    pid_file: Path | None = None

    @property
    def where(self) -> str:
        return f"outputs[{self.index}]"


def _text(data: dict[str, Any], key: str, where: str, *, required: bool = False) -> str | None:
    value = data.get(key)
    if value is None:
        if required:
            raise InvalidArgument(f"{where}.{key} is required", field=f"{where}.{key}")
        return None
    if not isinstance(value, str) or not value.strip():
        raise InvalidArgument(f"{where}.{key} must be non-empty text", field=f"{where}.{key}")
    return value.strip()


def _path(data: dict[str, Any], key: str, where: str, *, required: bool = False) -> Path | None:
    text = _text(data, key, where, required=required)
    if text is None:
        return None
    path = Path(text).expanduser()
    if not path.is_absolute():
        raise InvalidArgument(
            f"{where}.{key} must be an absolute path, got '{text}'", field=f"{where}.{key}"
        )
    return path


def _mode(value: object, where: str) -> int:
    name = f"{where}.mode"
    if isinstance(value, bool):
        raise InvalidArgument(f'{name} must be an octal mode such as "0640"', field=name)
    if isinstance(value, int):
        mode = value
    elif isinstance(value, str):
        try:
            mode = int(value.strip().removeprefix("0o"), 8)
        except ValueError:
            raise InvalidArgument(
                f"{name} must be an octal mode such as \"0640\", got '{value}'", field=name
            ) from None
    else:
        raise InvalidArgument(f'{name} must be an octal mode such as "0640"', field=name)
    if not 0 <= mode <= 0o777:
        raise InvalidArgument(f"{name} must be between 0000 and 0777, got {oct(mode)}", field=name)
    if mode & 0o002:
        raise InvalidArgument(f"{name}: a credential file must not be world-writable", field=name)
    if not mode & 0o400:
        raise InvalidArgument(f"{name}: the owner must be able to read the file", field=name)
    return mode


def _uid(value: object, where: str) -> int:
    name = f"{where}.owner"
    if isinstance(value, int) and not isinstance(value, bool) and value >= 0:
        return value
    if isinstance(value, str) and value.strip():
        text = value.strip()
        if text.isdigit():
            return int(text)
        try:
            return pwd.getpwnam(text).pw_uid
        except KeyError:
            raise InvalidArgument(f"{name}: no local user '{text}'", field=name) from None
    raise InvalidArgument(f"{name} must be a user name or uid", field=name)


def _gid(value: object, where: str) -> int:
    name = f"{where}.group"
    if isinstance(value, int) and not isinstance(value, bool) and value >= 0:
        return value
    if isinstance(value, str) and value.strip():
        text = value.strip()
        if text.isdigit():
            return int(text)
        try:
            return grp.getgrnam(text).gr_gid
        except KeyError:
            raise InvalidArgument(f"{name}: no local group '{text}'", field=name) from None
    raise InvalidArgument(f"{name} must be a group name or gid", field=name)


def _signal(value: object, where: str) -> signals.Signals:
    name = f"{where}.signal"
    if isinstance(value, str) and value.strip():
        text = value.strip().upper()
        text = text if text.startswith("SIG") else f"SIG{text}"
        try:
            return signals.Signals[text]
        except KeyError:
            pass
    raise InvalidArgument(
        f'{name} must be a signal name such as "SIGHUP", got {value!r}', field=name
    )


def _argv(value: object, where: str) -> tuple[str, ...]:
    name = f"{where}.on_change"
    if not isinstance(value, list) or not value or not all(isinstance(a, str) and a for a in value):
        raise InvalidArgument(
            f"{name} must be a non-empty list of strings (argv; no shell runs it)", field=name
        )
    return tuple(value)


def _template(data: dict[str, Any], where: str, fmt: str) -> str | None:
    inline = data.get("template")
    file = _path(data, "template_file", where)
    if fmt != "template":
        for key in ("template", "template_file"):
            if key in data:
                raise InvalidArgument(
                    f"{where}.{key} is only for format 'template'", field=f"{where}.{key}"
                )
        return None
    if (inline is None) == (file is None):
        raise InvalidArgument(
            f"{where}.template: format 'template' needs exactly one of template or template_file",
            field=f"{where}.template",
        )
    if file is not None:
        try:
            if file.stat().st_size > MAX_TEMPLATE_BYTES:
                raise InvalidArgument(
                    f"{where}.template_file is larger than {MAX_TEMPLATE_BYTES} bytes",
                    field=f"{where}.template_file",
                )
            text = file.read_text()
        except OSError as exc:
            raise InvalidArgument(
                f"{where}.template_file: cannot read {file}: {exc.strerror}",
                field=f"{where}.template_file",
            ) from None
        except UnicodeDecodeError:
            raise InvalidArgument(
                f"{where}.template_file: {file} is not text", field=f"{where}.template_file"
            ) from None
    else:
        if not isinstance(inline, str) or not inline:
            raise InvalidArgument(f"{where}.template must be text", field=f"{where}.template")
        text = inline
    from broker.outputs.formats import compile_template  # jinja2, only when templates are used

    compile_template(text, f"{where}.template")
    return text


def parse_output(data: object, index: int, source: str) -> OutputSpec:
    where = f"outputs[{index}]"
    if not isinstance(data, dict):
        raise InvalidArgument(f"{where} in {source} must be a table", field=where)
    unknown = sorted(set(data) - _KEYS)
    if unknown:
        raise InvalidArgument(
            f"unknown key '{where}.{unknown[0]}' in {source}", field=f"{where}.{unknown[0]}"
        )
    fmt = _text(data, "format", where, required=True)
    if fmt not in FORMATS:
        raise InvalidArgument(
            f"{where}.format must be one of {', '.join(FORMATS)}, got '{fmt}'",
            field=f"{where}.format",
        )
    path = _path(data, "path", where, required=True)
    assert path is not None and fmt is not None
    if path.name in ("", ".", ".."):
        raise InvalidArgument(f"{where}.path must name a file", field=f"{where}.path")
    profile = _text(data, "profile", where)
    if profile is not None and fmt != "aws-credentials":
        raise InvalidArgument(
            f"{where}.profile is only for format 'aws-credentials'", field=f"{where}.profile"
        )
    if profile is not None and any(c in profile for c in "[]\n\r"):
        raise InvalidArgument(f"{where}.profile is not a profile name", field=f"{where}.profile")
    timeout = data.get("on_change_timeout_seconds", ON_CHANGE_TIMEOUT_SECONDS)
    if isinstance(timeout, bool) or not isinstance(timeout, int | float) or timeout <= 0:
        raise InvalidArgument(
            f"{where}.on_change_timeout_seconds must be a number of seconds above 0",
            field=f"{where}.on_change_timeout_seconds",
        )
    sig = _signal(data["signal"], where) if "signal" in data else None
    pid_file = _path(data, "pid_file", where)
    if (sig is None) != (pid_file is None):
        raise InvalidArgument(
            f"{where}.pid_file and {where}.signal go together", field=f"{where}.pid_file"
        )
    connector = _text(data, "connector", where, required=True)
    assert connector is not None
    return OutputSpec(
        index=index,
        connector=connector,
        format=fmt,
        path=path,
        resource_type=_text(data, "resource_type", where),
        resource_id=_text(data, "resource_id", where),
        mode=_mode(data["mode"], where) if "mode" in data else 0o600,
        uid=_uid(data["owner"], where) if "owner" in data else None,
        gid=_gid(data["group"], where) if "group" in data else None,
        profile=profile or "default",
        template=_template(data, where, fmt),
        on_change=_argv(data["on_change"], where) if "on_change" in data else (),
        on_change_timeout_seconds=float(timeout),
        signal=sig,
        pid_file=pid_file,
    )


def parse_outputs(section: object, source: str) -> tuple[OutputSpec, ...]:
    """Every ``[[outputs]]`` table; two outputs writing one path are refused."""
    if section is None:
        return ()
    if not isinstance(section, list):
        raise InvalidArgument(f"outputs in {source} must be [[outputs]] tables", field="outputs")
    specs = tuple(parse_output(item, i, source) for i, item in enumerate(section))
    seen: dict[Path, int] = {}
    for spec in specs:
        if spec.path in seen:
            raise InvalidArgument(
                f"{spec.where}.path is also outputs[{seen[spec.path]}].path: '{spec.path}'",
                field=f"{spec.where}.path",
            )
        seen[spec.path] = spec.index
    return specs
