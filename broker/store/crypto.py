"""Secrets at rest: AES-256-GCM blobs and the key that seals them.

Authenticated encryption means a tampered or mis-keyed blob fails loudly
instead of decrypting to garbage. Each blob is ``version || nonce ||
ciphertext+tag`` so the algorithm or key can rotate later without guessing
what old rows hold, and the caller's associated data (the connector id) binds
a blob to its row: copying it to another row makes it undecryptable.

The key comes from ``BROKER_SECRET_KEY`` (base64), else a key file named by
the caller or ``BROKER_SECRET_KEY_FILE``, else ``<data_dir>/secret.key``,
created on first start with mode 0600. Key material never appears in errors.
"""

from __future__ import annotations

import base64
import binascii
import hashlib
import hmac
import os
import stat
from collections.abc import Mapping
from pathlib import Path

from cryptography.exceptions import InvalidTag
from cryptography.hazmat.primitives.ciphers.aead import AESGCM

from broker.errors import FailedPrecondition

#: AES-256: the key is 32 bytes.
KEY_BYTES = 32
#: 96-bit nonces are what GCM is designed for; random per blob.
NONCE_BYTES = 12
#: First byte of every blob; bump when the format or algorithm changes.
BLOB_VERSION_AES256_GCM = 1
#: Bits that must be clear on a key file: no access at all for group or others.
_PRIVATE_MODE_MASK = 0o077

ENV_KEY = "BROKER_SECRET_KEY"
ENV_KEY_FILE = "BROKER_SECRET_KEY_FILE"
DEFAULT_KEY_FILE_NAME = "secret.key"

_HOW_TO_GENERATE = "generate one with: head -c 32 /dev/urandom | base64"

#: HMAC label of the key fingerprint: a commitment to the key that reveals nothing of it.
_FINGERPRINT_LABEL = b"credential-broker:secret-key-fingerprint:v1"


def key_fingerprint(key: bytes) -> str:
    """A short public name of a key (HMAC-SHA256 of a fixed label, 16 hex digits).

    A shared store keeps the fingerprint of the key its secrets are sealed with,
    so a daemon started with another key is refused at start, naming both
    fingerprints, instead of failing later on some secret. The fingerprint is
    safe to log and to show: it cannot be turned back into the key.
    """
    return hmac.new(key, _FINGERPRINT_LABEL, hashlib.sha256).hexdigest()[:16]


class SecretKeyError(FailedPrecondition):
    """The secret key cannot be loaded: missing, malformed or exposed."""


class SecretKeyMismatch(FailedPrecondition):
    """A blob does not decrypt: the key differs from the one that wrote the store."""


class SecretBox:
    """Seals and opens byte strings with one AES-256-GCM key."""

    def __init__(self, key: bytes) -> None:
        if len(key) != KEY_BYTES:
            raise SecretKeyError(f"the secret key must be {KEY_BYTES} bytes, got {len(key)}")
        self._aead = AESGCM(key)
        #: :func:`key_fingerprint` of the key: safe to store, log and compare.
        self.fingerprint = key_fingerprint(key)

    def __repr__(self) -> str:  # never show the key, even in a debugger
        return "SecretBox(<hidden>)"

    def encrypt(self, plaintext: bytes, associated_data: bytes) -> bytes:
        """Seal ``plaintext``; it only opens again with the same ``associated_data``."""
        nonce = os.urandom(NONCE_BYTES)
        sealed = self._aead.encrypt(nonce, plaintext, associated_data)
        return bytes([BLOB_VERSION_AES256_GCM]) + nonce + sealed

    def decrypt(self, blob: bytes, associated_data: bytes) -> bytes:
        """Open a blob from :meth:`encrypt`; raise SecretKeyMismatch if it does not open."""
        if not blob:
            raise SecretKeyMismatch("the encrypted secrets are empty")
        version = blob[0]
        if version != BLOB_VERSION_AES256_GCM:
            raise SecretKeyMismatch(
                f"the encrypted secrets use format version {version}, which this broker "
                "does not know (was the store written by a newer broker?)"
            )
        nonce, sealed = blob[1 : 1 + NONCE_BYTES], blob[1 + NONCE_BYTES :]
        if len(nonce) != NONCE_BYTES or not sealed:
            raise SecretKeyMismatch("the encrypted secrets are truncated")
        try:
            return self._aead.decrypt(nonce, sealed, associated_data)
        except InvalidTag:
            raise SecretKeyMismatch(
                "the encrypted secrets do not decrypt: the secret key does not match the "
                f"store (check {ENV_KEY} / {ENV_KEY_FILE}) or the data was altered"
            ) from None


def load_secret_key(
    data_dir: Path, env: Mapping[str, str], *, key_file: Path | None = None
) -> bytes:
    """Return the 32-byte key: env value, else a key file, else ``data_dir/secret.key``.

    ``key_file`` (from the daemon settings) takes the place of
    ``BROKER_SECRET_KEY_FILE`` when given. Only the default file is created;
    a file the user named must already exist.
    """
    raw = env.get(ENV_KEY, "")
    if raw.strip():
        return _decode_key(raw, f"environment variable {ENV_KEY}")
    named = key_file or (Path(env[ENV_KEY_FILE]) if env.get(ENV_KEY_FILE, "").strip() else None)
    if named is not None:
        return _read_key_file(named)
    path = data_dir / DEFAULT_KEY_FILE_NAME
    if not path.exists():
        _create_key_file(path)
    return _read_key_file(path)


def generate_key() -> bytes:
    return os.urandom(KEY_BYTES)


def _decode_key(text: str, source: str) -> bytes:
    try:
        key = base64.b64decode("".join(text.split()), validate=True)
    except (binascii.Error, ValueError):
        raise SecretKeyError(
            f"{source} is not valid base64 of {KEY_BYTES} bytes; {_HOW_TO_GENERATE}"
        ) from None
    if len(key) != KEY_BYTES:
        raise SecretKeyError(
            f"{source} must hold base64 of {KEY_BYTES} bytes, it decodes to {len(key)} bytes; "
            f"{_HOW_TO_GENERATE}"
        )
    return key


def _read_key_file(path: Path) -> bytes:
    source = f"secret key file {path}"
    try:
        st = path.stat()
    except FileNotFoundError:
        raise SecretKeyError(f"{source} does not exist; {_HOW_TO_GENERATE} > {path}") from None
    except OSError as exc:
        raise SecretKeyError(f"{source} cannot be read: {exc.strerror}") from None
    if not stat.S_ISREG(st.st_mode):
        raise SecretKeyError(f"{source} is not a regular file")
    mode = stat.S_IMODE(st.st_mode)
    if mode & _PRIVATE_MODE_MASK:
        raise SecretKeyError(
            f"{source} is accessible by group or others (mode {mode:04o}); "
            f"restrict it with: chmod 600 {path}"
        )
    try:
        text = path.read_text(encoding="ascii")
    except UnicodeDecodeError:
        raise SecretKeyError(
            f"{source} is not base64 text of {KEY_BYTES} bytes; {_HOW_TO_GENERATE}"
        ) from None
    except OSError as exc:
        raise SecretKeyError(f"{source} cannot be read: {exc.strerror}") from None
    if not text.strip():
        raise SecretKeyError(f"{source} is empty; {_HOW_TO_GENERATE} > {path}")
    return _decode_key(text, source)


def _create_key_file(path: Path) -> None:
    """Write a fresh key so it is never visible half-written or with loose permissions.

    The key goes to a private temporary file first (O_EXCL, 0600 from the
    start), then is hard-linked into place: ``link`` never replaces an
    existing file, so of two daemons starting at once the first one wins and
    the other reads its key.
    """
    path.parent.mkdir(mode=0o700, parents=True, exist_ok=True)
    tmp = path.with_name(f".{path.name}.{os.getpid()}.{os.urandom(4).hex()}.tmp")
    flags = os.O_WRONLY | os.O_CREAT | os.O_EXCL | getattr(os, "O_NOFOLLOW", 0)
    try:
        fd = os.open(tmp, flags, 0o600)
    except OSError as exc:
        raise SecretKeyError(f"cannot create secret key file {path}: {exc.strerror}") from None
    try:
        try:
            os.write(fd, base64.b64encode(generate_key()) + b"\n")
            os.fsync(fd)
        finally:
            os.close(fd)
        try:
            os.link(tmp, path)
        except FileExistsError:
            pass  # another process created it first: use theirs
        except OSError as exc:
            raise SecretKeyError(f"cannot create secret key file {path}: {exc.strerror}") from None
    finally:
        tmp.unlink(missing_ok=True)
    _fsync_dir(path.parent)


def _fsync_dir(directory: Path) -> None:
    """Make the new directory entry durable, so a crash cannot lose the key."""
    try:
        fd = os.open(directory, os.O_RDONLY)
    except OSError:
        return
    try:
        os.fsync(fd)
    except OSError:
        pass
    finally:
        os.close(fd)
