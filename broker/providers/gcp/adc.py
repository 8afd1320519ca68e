"""Application Default Credentials, looked up in a given environment (not ``os.environ``).

The same lookup serves two processes: the daemon (implicit auth, its own
environment from ProviderContext.env) and the CLI (auto-configuration, the
user's environment). Order, as Google's libraries do it:
``GOOGLE_APPLICATION_CREDENTIALS``, then the gcloud ADC file under
``CLOUDSDK_CONFIG`` or ``$HOME/.config/gcloud``; with neither, the caller
falls back to the GCE metadata server (implicit) or gives up (auto-configure).
"""

from __future__ import annotations

import configparser
from collections.abc import Mapping
from pathlib import Path

from broker.errors import FailedPrecondition
from broker.providers.gcp.keys import KeyFile, parse_key

ADC_FILE = "application_default_credentials.json"
_MAX_FILE = 256 * 1024


def gcloud_dir(env: Mapping[str, str]) -> Path | None:
    """gcloud's configuration directory in ``env``, if one can be named."""
    if env.get("CLOUDSDK_CONFIG"):
        return Path(env["CLOUDSDK_CONFIG"])
    if env.get("HOME"):
        return Path(env["HOME"], ".config", "gcloud")
    return None


def adc_path(env: Mapping[str, str]) -> tuple[Path, str] | None:
    """The ADC file ``env`` points at and how it was found, or None.

    An explicit GOOGLE_APPLICATION_CREDENTIALS is returned even if missing (the
    reader then says so); the gcloud file only if it exists.
    """
    explicit = env.get("GOOGLE_APPLICATION_CREDENTIALS", "").strip()
    if explicit:
        return Path(explicit), "GOOGLE_APPLICATION_CREDENTIALS"
    directory = gcloud_dir(env)
    if directory is not None and (directory / ADC_FILE).is_file():
        return directory / ADC_FILE, "the gcloud ADC file"
    return None


def adc_signature(env: Mapping[str, str]) -> tuple[str, int, int, int] | None:
    """What identifies the ADC file ``env`` points at as it is now (path, inode, size,
    mtime), so settings read from it are read again once it changes; None: no file."""
    found = adc_path(env)
    if found is None:
        return None
    try:
        st = found[0].stat()
    except OSError:
        return (str(found[0]), -1, -1, -1)  # load_adc says what is wrong
    return (str(found[0]), st.st_ino, st.st_size, st.st_mtime_ns)


def load_adc(env: Mapping[str, str], field: str) -> KeyFile | None:
    """The checked ADC file of ``env`` (any supported type), or None when there is none."""
    found = adc_path(env)
    if found is None:
        return None
    path, how = found
    try:
        with path.open("rb") as handle:
            raw = handle.read(_MAX_FILE + 1)
    except OSError as exc:
        raise FailedPrecondition(
            f"cannot read Application Default Credentials {path} (from {how}): "
            f"{exc.strerror or type(exc).__name__}"
        ) from None
    if len(raw) > _MAX_FILE:
        raise FailedPrecondition(f"Application Default Credentials {path} is too large")
    label = f"Application Default Credentials file {path}"
    text = raw.decode("utf-8", errors="replace")
    return parse_key(text, field, None, label=label)


def gcloud_project(env: Mapping[str, str]) -> str | None:
    """The ``[core] project`` of gcloud's active configuration, if set."""
    directory = gcloud_dir(env)
    if directory is None:
        return None
    name = env.get("CLOUDSDK_ACTIVE_CONFIG_NAME", "").strip()
    if not name:
        try:
            name = (directory / "active_config").read_text().strip() or "default"
        except OSError:
            name = "default"
    parser = configparser.ConfigParser()
    try:
        parser.read(directory / "configurations" / f"config_{name}", encoding="utf-8")
    except (configparser.Error, UnicodeDecodeError):
        return None
    value = parser.get("core", "project", fallback="").strip()
    return value or None


def env_project(env: Mapping[str, str]) -> str | None:
    """A project named by the usual environment variables."""
    for var in ("GOOGLE_CLOUD_PROJECT", "CLOUDSDK_CORE_PROJECT", "GCLOUD_PROJECT"):
        value = env.get(var, "").strip()
        if value:
            return value
    return None
