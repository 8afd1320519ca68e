"""``docker-credential-broker``: the docker credential helper protocol.

docker runs ``docker-credential-broker get|store|erase|list`` with the
request on stdin. For a registry no connector serves, ``get`` prints the
exact "credentials not found" message with exit 1 so docker falls back to
anonymous access.
"""

from __future__ import annotations

import sys

from broker.helpers.client import HelperError, call, emit, json_object, locate

NOT_FOUND = "credentials not found in native keychain"
USAGE = "usage: docker-credential-broker get|store|erase|list|version"


def _out(text: str, code: int = 0) -> int:
    sys.stdout.write(text + "\n")
    return code


def run(argv: list[str], stdin: str) -> int:
    if len(argv) != 1:
        return _out(USAGE, 1)
    action = argv[0]
    if action == "get":
        server_url = stdin.strip()
        if not server_url:
            return _out("no server URL given on stdin", 1)
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
        # `docker login` hands over what the user typed; the broker keeps its own
        # credentials (register a connector instead), so nothing is written.
        if '"ServerURL"' not in stdin:
            return _out("store expects a JSON object with ServerURL on stdin", 1)
        sys.stderr.write(
            "credential-broker: credentials are managed by the broker; nothing was stored\n"
        )
        return 0
    if action == "erase":
        return 0
    if action == "version":
        return _out("docker-credential-broker (credential-broker)")
    return _out(USAGE, 1)


def main() -> None:
    stdin = "" if sys.stdin is None or sys.stdin.isatty() else sys.stdin.read(64 * 1024)
    sys.exit(run(sys.argv[1:], stdin))


if __name__ == "__main__":
    main()
