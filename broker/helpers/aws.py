"""``broker-aws-credential``: an AWS ``credential_process`` (Version 1 JSON)."""

from __future__ import annotations

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
        "broker-aws-credential",
        ("--resource-type", "--resource-id", "--socket"),
    )
    request = json_object(
        {
            "connector": connector,
            "resource_type": opts.get("resource_type"),
            "resource_id": opts.get("resource_id"),
        }
    )
    path, source = locate(opts.get("socket"))
    try:
        emit(call(path, source, "POST", "/v1/credential-process", request))
    except HelperError as exc:
        fail(exc.message)


if __name__ == "__main__":
    main()
