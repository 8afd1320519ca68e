"""``broker-kubectl-credential``: a kubectl exec credential plugin.

kubeconfig ``users[].user.exec`` runs it per kubectl command; it prints an
``ExecCredential`` whose ``expirationTimestamp`` sits a minute before the
real expiry (kubectl keeps no margin of its own). The apiVersion follows
``KUBERNETES_EXEC_INFO`` when kubectl sends it.
"""

from __future__ import annotations

import json
import os
import sys

from broker.helpers.client import HelperError, call, fail, parse_args, socket_path

DEFAULT_API_VERSION = "client.authentication.k8s.io/v1"


def requested_api_version() -> str:
    info = os.environ.get("KUBERNETES_EXEC_INFO")
    if not info:
        return DEFAULT_API_VERSION
    try:
        version = json.loads(info).get("apiVersion")
    except (ValueError, AttributeError):
        fail("KUBERNETES_EXEC_INFO is not valid JSON")
    return str(version or DEFAULT_API_VERSION)


def main(argv: list[str] | None = None) -> None:
    connector, opts = parse_args(
        sys.argv[1:] if argv is None else argv,
        "broker-kubectl-credential",
        ("--resource-id", "--socket"),
    )
    request = {
        "connector": connector,
        "resource_id": opts.get("resource_id"),
        "api_version": requested_api_version(),
    }
    try:
        answer = call(socket_path(opts.get("socket")), "POST", "/v1/exec-credential", request)
    except HelperError as exc:
        fail(exc.message)
    sys.stdout.write(json.dumps(answer) + "\n")


if __name__ == "__main__":
    main()
