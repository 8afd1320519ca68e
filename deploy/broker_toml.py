"""Writes deploy/broker.toml, the documented config file, from the Settings declarations.

Run ``python deploy/broker_toml.py`` after adding or changing a setting;
tests/test_config.py fails while the file is out of date.
"""

from __future__ import annotations

import json
from dataclasses import MISSING, fields
from pathlib import Path

from broker.config import setting_fields
from broker.identity.attestors.settings import AttestorSettings, DockerSettings, KubernetesSettings

TARGET = Path(__file__).resolve().parent / "broker.toml"
HEADER = """\
# credential-broker daemon configuration: `broker serve --config FILE`
# (or BROKER_CONFIG=FILE). Under systemd: /etc/credential-broker/broker.toml.
# Generated from broker/config.py by deploy/broker_toml.py.
#
# Precedence, lowest first: built-in defaults < this file < BROKER_<KEY>
# environment variables (e.g. BROKER_LOG_LEVEL=debug) < command-line flags.
# Every setting is listed below with its default; uncomment a line to change
# it. Keys are top-level except [attestors] and [policy] (at the end); an
# unknown key or a bad value stops the daemon with an error that names the
# key. An empty string ("") means "unset" for settings whose default is
# computed. `broker config show` prints the effective configuration. The key
# that encrypts stored secrets is never written here: give it as
# BROKER_SECRET_KEY (base64 of 32 bytes) in the environment, or name a 0600
# file with secret_key_file.
"""

POLICY = """\
# Access policy: who may do what (reloaded on SIGHUP; a bad file keeps the old
# policy and logs why). Built in: root and the daemon's own user are admin.
# Everyone else, socket_group members included, gets nothing until a rule
# names them. Roles: viewer (list/describe, no secrets), consumer (+ get and
# watch short-lived credentials, list-resources, verify, helpers, SDK
# endpoints), admin (+ register/update/delete, show secrets, policy, all SDK
# grants). Selectors (all must match): uid:N, gid:N, user:NAME, group:NAME,
# cert:ID (glob), tcp:anonymous, and attested ones: k8s:ns:NS, k8s:sa:NAME,
# k8s:pod-label:K:V, docker:label:K:V, ... (globs). Scope (optional): connectors (globs or
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


ATTESTORS = """\
# Workload attestation (README: "Workload attestation"): which container, and
# which Kubernetes pod, a caller on a Unix socket is; its Docker labels, image and
# env names, or its pod's namespace, service account and labels become selectors
# (container:ID, docker:..., k8s:...) that rules can name. Off unless [attestors]
# names an attestor; read at start only. Every key with its default (remove the
# "#>" to use it; node_name defaults to $NODE_NAME):
#
"""


def attestors_example() -> str:
    """``#>`` lines: [attestors] and both attestors, every key with its default."""
    lines: list[str] = []
    node = {"node_name": "node-1"}
    # Keys without a default, shown commented out with a value they could take.
    examples = {
        "kubeconfig": "/etc/credential-broker/kubeconfig",
        "kubelet_url": "https://127.0.0.1:10250",
        "kubelet_ca": "/etc/credential-broker/kubelet-ca.pem",
        "kubelet_token_file": "/var/run/secrets/kubernetes.io/serviceaccount/token",
    }
    for table, cls in (
        ("attestors", AttestorSettings),
        ("attestors.docker", DockerSettings),
        ("attestors.kubernetes", KubernetesSettings),
    ):
        lines.append(f"[{table}]")
        for f in fields(cls):
            if "doc" not in f.metadata:
                continue  # the nested tables
            lines.append(f"# {f.metadata['doc']}")
            value = node.get(f.name, f.default)
            if value is None:
                lines.append(f"# {f.name} = {toml_value(examples[f.name])}")
            else:
                lines.append(f"{f.name} = {toml_value(value)}")
        lines.append("")
    return "".join(f"#> {line}".rstrip() + "\n" for line in lines)


def render() -> str:
    blocks = [HEADER]
    for f in setting_fields():
        default = None if f.default is MISSING else f.default
        blocks.append(f"# {f.metadata['doc']}\n# {f.name} = {toml_value(default)}\n")
    blocks.append(ATTESTORS + attestors_example())
    blocks.append(POLICY)
    return "\n".join(blocks)


if __name__ == "__main__":
    TARGET.write_text(render())
    print(f"wrote {TARGET}")
