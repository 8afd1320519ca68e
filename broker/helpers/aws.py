"""``broker-aws-credential``: an AWS ``credential_process`` (Version 1 JSON)."""

from __future__ import annotations

import argparse
import json
import sys

from broker.helpers.client import HelperError, call, fail, socket_path


def main(argv: list[str] | None = None) -> None:
    parser = argparse.ArgumentParser(
        prog="broker-aws-credential", description="AWS credential_process helper"
    )
    parser.add_argument("connector")
    parser.add_argument("--resource-type", default=None)
    parser.add_argument("--resource-id", default=None)
    parser.add_argument("--socket", default=None, help="the daemon's helper socket")
    args = parser.parse_args(argv)
    request = {
        "connector": args.connector,
        "resource_type": args.resource_type,
        "resource_id": args.resource_id,
    }
    try:
        answer = call(socket_path(args.socket), "POST", "/v1/credential-process", request)
    except HelperError as exc:
        fail(exc.message)
    sys.stdout.write(json.dumps(answer) + "\n")


if __name__ == "__main__":
    main()
