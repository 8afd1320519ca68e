"""Writes deploy/broker.toml, the documented config file, from the Settings declarations.

Run ``python deploy/broker_toml.py`` after adding or changing a setting;
tests/test_config.py fails while the file is out of date.
"""

from __future__ import annotations

import json
from dataclasses import MISSING
from pathlib import Path

from broker.config import setting_fields

TARGET = Path(__file__).resolve().parent / "broker.toml"
HEADER = """\
# credential-broker daemon configuration: `broker serve --config FILE`
# (or BROKER_CONFIG=FILE). Under systemd: /etc/credential-broker/broker.toml.
# Generated from broker/config.py by deploy/broker_toml.py.
#
# Precedence, lowest first: built-in defaults < this file < BROKER_<KEY>
# environment variables (e.g. BROKER_LOG_LEVEL=debug) < command-line flags.
# Every setting is listed below with its default; uncomment a line to change
# it. Keys are top-level except [policy] (at the end); an unknown key or a bad value stops
# the daemon with an error that names the key. An empty string ("") means
# "unset" for settings whose default is computed. `broker config show` prints
# the effective configuration. The key that encrypts stored secrets is never
# written here: give it as BROKER_SECRET_KEY (base64 of 32 bytes) in the
# environment, or name a 0600 file with secret_key_file.
"""

POLICY = """\
# Access policy: who may do what (reloaded on SIGHUP; a bad file keeps the old
# policy and logs why). Built in: root and the daemon's own user are admin.
# Everyone else, socket_group members included, gets nothing until a rule
# names them. Roles: viewer (list/describe, no secrets), consumer (+ get and
# watch short-lived credentials, list-resources, verify, helpers, SDK
# endpoints), admin (+ register/update/delete, show secrets, policy, all SDK
# grants). Selectors (all must match): uid:N, gid:N, user:NAME, group:NAME,
# cert:ID (glob), tcp:anonymous. Scope (optional): connectors (globs or
# "re:REGEX"), labels, resource_types, resource_ids (globs or "re:").
# With long_lived_secrets = true a consumer may get credentials that are a stored
# secret itself (secret-key, password, static token methods). An example
# (remove the "#>" to use it):
#
#> [[policy.rules]]
#> selector = "group:ci"
#> role = "consumer"
#> connectors = ["ci-*"]
#> resource_types = ["s3-bucket", "docker-registry"]
#> resource_ids = ["s3://ci-*", "registry.example:5000"]
#>
#> [[policy.rules]]
#> selector = "cert:spiffe://example.org/ops/*"
#> role = "admin"
"""


def toml_value(value: object) -> str:
    if value is None:
        return '""'
    if isinstance(value, bool):
        return "true" if value else "false"
    if isinstance(value, int | float):
        return repr(value)
    return json.dumps(str(value))


def render() -> str:
    blocks = [HEADER]
    for f in setting_fields():
        default = None if f.default is MISSING else f.default
        blocks.append(f"# {f.metadata['doc']}\n# {f.name} = {toml_value(default)}\n")
    blocks.append(POLICY)
    return "\n".join(blocks)


if __name__ == "__main__":
    TARGET.write_text(render())
    print(f"wrote {TARGET}")
