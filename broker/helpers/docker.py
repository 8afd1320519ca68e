"""``docker-credential-broker``: the docker credential helper protocol.

docker runs ``docker-credential-broker get|store|erase|list|version`` with the
request on stdin and reads the answer (or the error line) on stdout, as
docker-credential-helpers does; its messages are used where one exists.

- ``get``: the credential for a registry host; for a host no connector serves,
  ``credentials not found in native keychain`` with exit 1, so docker falls
  back to anonymous access.
- ``list``: every registry host ``get`` serves the caller, with its user name.
- ``store`` / ``erase``: the broker manages these credentials itself (connectors),
  like helpers for registries that mint their own logins. Nothing is written or
  removed: both exit 1 with one line saying so and how to change them, so
  ``docker login`` does not report a login that would never be used.
"""

from __future__ import annotations

import sys

from broker.helpers.client import HelperError, call, emit, json_object, locate

NAME = "docker-credential-broker"
#: docker-credential-helpers' texts (credentials/error.go, credentials/credentials.go).
NOT_FOUND = "credentials not found in native keychain"
MISSING_SERVER_URL = "no credentials server URL"
MISSING_USERNAME = "no credentials username"
USAGE = f"Usage: {NAME} <store|get|erase|list|version>"


def _out(text: str, code: int = 0) -> int:
    sys.stdout.write(text + "\n")
    return code


def _store_server_url(stdin: str) -> tuple[str, str | None]:
    """``store``'s JSON (``{"ServerURL", "Username", "Secret"}``) checked: its server
    URL, or what is wrong. ``json`` is imported here only (``get`` would pay ~12 ms)."""
    import json

    expected = "store expects a JSON object with ServerURL, Username and Secret"
    try:
        creds = json.loads(stdin)
    except ValueError as exc:
        return "", f"{expected}: {exc}"
    if not isinstance(creds, dict):
        return "", expected
    for key in ("ServerURL", "Username", "Secret"):
        if not isinstance(creds.get(key, ""), str):
            return "", f"{expected}: {key} is not a string"
    server_url = creds.get("ServerURL", "").strip()
    if not server_url:
        return "", MISSING_SERVER_URL
    if not creds.get("Username", "").strip():
        return "", MISSING_USERNAME
    return server_url, None


def _managed(action: str, server_url: str) -> int:
    """``store`` / ``erase``: say the broker manages this registry's credentials (the
    daemon names the connector and how to change it), exit 1."""
    request = json_object({"server_url": server_url, "action": action})
    try:
        line = call(*locate(), "POST", "/v1/docker/managed", request).decode().strip()
    except HelperError:
        line = (
            f"credentials for {server_url} are managed by credential-broker, not by docker: "
            "change them with `broker connector update NAME ...`"
        )
    return _out(line, 1)


def run(argv: list[str], stdin: str) -> int:
    if len(argv) != 1:
        return _out(USAGE, 1)
    action = argv[0]
    if action == "get":
        server_url = stdin.strip()
        if not server_url:
            return _out(MISSING_SERVER_URL, 1)
        request = json_object({"server_url": server_url})
        try:
            emit(call(*locate(), "POST", "/v1/docker/get", request))
        except HelperError as exc:
            if exc.code == "not_found":
                return _out(NOT_FOUND, 1)
            return _out(f"credential-broker: {exc.message}", 1)
        return 0
    if action == "list":
        try:
            emit(call(*locate(), "GET", "/v1/docker/list"))
        except HelperError as exc:
            return _out(f"credential-broker: {exc.message}", 1)
        return 0
    if action == "store":
        server_url, problem = _store_server_url(stdin)
        if problem is not None:
            return _out(problem, 1)
        return _managed("store", server_url)
    if action == "erase":
        server_url = stdin.strip()
        if not server_url:
            return _out(MISSING_SERVER_URL, 1)
        return _managed("erase", server_url)
    if action == "version":
        from broker import __version__  # the package's own __init__: a constant, no imports

        return _out(f"{NAME} (credential-broker) {__version__}")
    return _out(f"Unknown credential action `{action}`", 1)


def main() -> None:
    stdin = "" if sys.stdin is None or sys.stdin.isatty() else sys.stdin.read(64 * 1024)
    sys.exit(run(sys.argv[1:], stdin))


if __name__ == "__main__":
    main()
