"""``broker-kubectl-credential``: a kubectl exec credential plugin.

kubeconfig ``users[].user.exec`` runs it per kubectl command; it prints an
``ExecCredential`` whose ``expirationTimestamp`` sits a minute before the
real expiry (kubectl keeps no margin of its own). ``KUBERNETES_EXEC_INFO``
is handed to the daemon as is, which picks the apiVersion kubectl asked for.
"""

from __future__ import annotations

import os
import sys

from broker.helpers.client import (
    HelperError,
    call,
    emit,
    fail,
    json_object,
    locate,
    parse_args,
)


def main(argv: list[str] | None = None) -> None:
    connector, opts = parse_args(
        sys.argv[1:] if argv is None else argv,
        "broker-kubectl-credential",
        ("--resource-id", "--socket"),
    )
    request = json_object(
        {
            "connector": connector,
            "resource_id": opts.get("resource_id"),
            "exec_info": os.environ.get("KUBERNETES_EXEC_INFO"),
        }
    )
    path, source = locate(opts.get("socket"))
    try:
        emit(call(path, source, "POST", "/v1/exec-credential", request))
    except HelperError as exc:
        fail(exc.message)


if __name__ == "__main__":
    main()
