"""The secret key as a systemd credential: a clear error when systemd did not pass it.

The unit keeps the key apart from the DB:
``LoadCredential=secret.key:/etc/credential-broker/secret.key`` copies it
into the service's private credentials directory, and
``BROKER_SECRET_KEY_FILE=%d/secret.key`` points the daemon there. If the key
is not there, the generic "key file does not exist; generate one > PATH"
advice would be wrong (that directory is read-only and rebuilt at each start,
and a new key cannot open the secrets already stored), so this says what to
do instead.
"""

from __future__ import annotations

from collections.abc import Mapping
from pathlib import Path

from broker.config import Settings
from broker.store.crypto import DEFAULT_KEY_FILE_NAME, ENV_KEY, ENV_KEY_FILE, SecretKeyError

#: The source the shipped unit loads the credential from.
UNIT_KEY_SOURCE = "/etc/credential-broker/secret.key"


def check_key_credential(settings: Settings, env: Mapping[str, str]) -> None:
    """Raise SecretKeyError if the key file is a systemd credential that is missing."""
    if env.get(ENV_KEY, "").strip():
        return
    named = settings.secret_key_file or (
        Path(env[ENV_KEY_FILE]) if env.get(ENV_KEY_FILE, "").strip() else None
    )
    if named is None or named.exists():
        return
    creds = env.get("CREDENTIALS_DIRECTORY", "")
    in_creds = bool(creds) and named.parent == Path(creds)
    if not in_creds and not str(named).startswith("/run/credentials/"):
        return
    old = settings.data_dir / DEFAULT_KEY_FILE_NAME
    moved = (
        f" A key from before is in {old}: move it there (it seals the stored secrets)."
        if old.exists()
        else ""
    )
    raise SecretKeyError(
        f"secret key file {named} does not exist: systemd did not pass the credential "
        f"'{named.name}' (the unit loads it with LoadCredential={named.name}:{UNIT_KEY_SOURCE}). "
        f"Create {UNIT_KEY_SOURCE} as root, mode 0600 "
        f"(umask 077; head -c 32 /dev/urandom | base64 > {UNIT_KEY_SOURCE}), "
        f"then restart the service.{moved}"
    )
