"""The whole `broker` command tree, walked: every command answers ``--output json``
(a real `broker` process against a real daemon, stdout parsed) and ``--output yaml``
(in process, for speed); every option has help, every command an example; usage
errors are one line; Ctrl-C in `credentials watch` exits 130.

A command added without a case here fails ``test_every_command_has_a_case``.
"""

from __future__ import annotations

import io
import json
import os
import signal
import subprocess
import sys
from collections.abc import Iterator
from contextlib import redirect_stdout
from datetime import UTC, datetime, timedelta
from pathlib import Path

import pytest
import yaml
from google.protobuf.timestamp_pb2 import Timestamp

from broker.api.v1 import broker_pb2 as pb
from broker.cli import main as cli_main
from broker.cli.helptext import commands
from tests.daemon import BROKER, Daemon, running_daemon
from tests.servers.moto import shared_moto

#: Commands whose output is not a document: `serve` (its log, --log-format json) and
#: `exec` (the output of the command it runs).
EXEMPT = {"serve", "exec"}


def _ca_pem() -> str:
    from cryptography import x509
    from cryptography.hazmat.primitives import hashes, serialization
    from cryptography.hazmat.primitives.asymmetric import ec
    from cryptography.x509.oid import NameOID

    key = ec.generate_private_key(ec.SECP256R1())
    name = x509.Name([x509.NameAttribute(NameOID.COMMON_NAME, "tree-test-ca")])
    now = datetime.now(UTC)
    cert = (
        x509.CertificateBuilder()
        .subject_name(name)
        .issuer_name(name)
        .public_key(key.public_key())
        .serial_number(1)
        .not_valid_before(now - timedelta(minutes=1))
        .not_valid_after(now + timedelta(days=1))
        .sign(key, hashes.SHA256())
    )
    return cert.public_bytes(serialization.Encoding.PEM).decode()


CA = _ca_pem()


@pytest.fixture(scope="module")
def daemon(tmp_path_factory: pytest.TempPathFactory) -> Iterator[Daemon]:
    moto = shared_moto()
    root = tmp_path_factory.mktemp("tree")
    secret = "p"
    expiry = Timestamp()
    expiry.FromDatetime(datetime.now(UTC) + timedelta(hours=1))
    aws = {"aws_access_key_id": "AKIAIOSFODNN7EXAMPLE", "region": "us-east-1"}
    registrations = [
        ("reg", "docker", "password", {"registry": "127.0.0.1:1", "username": "u"}, "password"),
        ("kube", "kubernetes", "token", {"server": "https://127.0.0.1:1"}, "token"),
        ("cloud", "aws", "secret-key", {**aws, "endpoint_url": moto.url}, "aws_secret_access_key"),
        ("gc", "gcp", "oauth2-token", {"project_id": "proj-123"}, "token"),
    ]
    registrations[1][3]["certificate_authority"] = CA
    with running_daemon(root / "data") as d, d.stub() as stub:
        for name, kind, method, config, secret_key in registrations:
            stub.RegisterConnector(
                pb.RegisterConnectorRequest(
                    name=name,
                    connector_type=kind,
                    auth_method=method,
                    config={**config, secret_key: secret},
                    no_verify=True,
                    expires_at=expiry if kind == "gcp" else None,
                )
            )
        yield d


def cases(tmp: Path, data_dir: Path) -> dict[str, list[str]]:
    """command path -> the arguments of one successful call (before --output)."""
    return {
        "completion": ["completion", "bash"],
        "config show": ["config", "show"],
        "connector delete": ["connector", "delete", "spare"],
        "connector describe": ["connector", "describe", "kube"],
        "connector describe-type": ["connector", "describe-type", "docker"],
        "connector list": ["connector", "list"],
        "connector list-resources": ["connector", "list-resources", "-t", "docker"],
        "connector list-types": ["connector", "list-types"],
        "connector register": [
            "connector",
            "register",
            "spare",
            "--type",
            "docker",
            "--no-verify",
            "registry=127.0.0.1:2",
            "username=u",
            "password=-",
        ],
        "connector update": ["connector", "update", "reg", "--description", "d", "--no-verify"],
        "connector verify": ["connector", "verify", "kube"],
        "credentials get": ["credentials", "get", "kube"],
        "credentials rotate": ["credentials", "rotate", "kube"],
        "env aws": ["env", "aws", "cloud"],
        "env gcp": ["env", "gcp", "gc"],
        "env list": ["env", "list"],
        "env revoke": ["env", "revoke", "GRANT"],
        "health": ["health"],
        "login aws": ["login", "aws", "cloud", "--profile", "tree"],
        "login docker": ["login", "docker", "reg", "--config", str(tmp / "docker")],
        "login kubernetes": ["login", "kubernetes", "kube", "--kubeconfig", str(tmp / "kc")],
        "logout docker": ["logout", "docker", "reg", "--config", str(tmp / "docker")],
        "outputs list": ["outputs", "list"],
        "policy check": ["policy", "check", "view", "kube", "--uid", str(os.getuid())],
        "policy show": ["policy", "show"],
        "status": ["status"],
        "store migrate": [
            "store",
            "migrate",
            "--from",
            f"sqlite:{data_dir / 'broker.db'}",
            "--to",
            f"sqlite:{tmp / 'copy.db'}",
        ],
        "version": ["version"],
        "whoami": ["whoami"],
        # streams until Ctrl-C: test_ctrl_c_in_watch_exits_130
        "credentials watch": [],
    }


def leaves() -> list[str]:
    return sorted(
        " ".join(path)
        for path, command in commands(cli_main.command())
        if path and not getattr(command, "commands", None) and path[0] not in EXEMPT
    )


def test_every_command_has_a_case(tmp_path: Path) -> None:
    assert sorted(cases(tmp_path, tmp_path)) == leaves()


#: Commands run in the order they depend on each other (register before delete ...).
ORDER = [
    "connector register", "connector delete", "env aws", "env revoke", "login docker",
    "logout docker",
]  # fmt: skip


def _ordered(names: list[str]) -> list[str]:
    return [*[n for n in ORDER if n in names], *[n for n in names if n not in ORDER]]


def _env(tmp: Path, daemon: Daemon) -> dict[str, str]:
    """login/logout write pointer files and client configs under HOME / XDG_RUNTIME_DIR:
    the test's own, never the real user's."""
    for d in ("home", "run"):
        (tmp / d).mkdir(mode=0o700, exist_ok=True)
    return {
        "AWS_CONFIG_FILE": str(tmp / "aws-config"),
        "BROKER_DATA_DIR": str(daemon.data_dir),
        "HOME": str(tmp / "home"),
        "XDG_RUNTIME_DIR": str(tmp / "run"),
    }


@pytest.mark.parametrize("fmt", ["json", "yaml"])
def test_every_command_prints_a_document(
    daemon: Daemon, tmp_path: Path, monkeypatch: pytest.MonkeyPatch, fmt: str
) -> None:
    """Each command of the tree with --output json / yaml, through broker.cli.main.main in
    this process (a `broker` process costs ~1-2 s of imports on a loaded machine; the
    fast path's own processes are test_fast_path_prints_documents)."""
    for key, value in {**_env(tmp_path, daemon), "BROKER_SOCKET": str(daemon.socket)}.items():
        monkeypatch.setenv(key, value)
    monkeypatch.setenv("PATH", f"{Path(sys.executable).parent}{os.pathsep}{os.environ['PATH']}")
    table = cases(tmp_path, daemon.data_dir)
    table["connector register"][2] = table["connector delete"][2] = f"spare-{fmt}"
    grant = ""
    for name in _ordered([n for n in table if table[n]]):
        args = [a.replace("GRANT", grant) for a in table[name]]
        if name == "store migrate":
            (tmp_path / "copy.db").unlink(missing_ok=True)
        monkeypatch.setattr(sys, "stdin", io.StringIO("p\n"))
        monkeypatch.setattr(sys, "argv", ["broker", *args, "--output", fmt])
        out = io.StringIO()
        code = 0
        with redirect_stdout(out):
            try:
                cli_main.main()
            except SystemExit as exc:
                code = int(exc.code or 0)
        assert code == 0 or (name == "connector verify" and code == 1), (name, code)
        text = out.getvalue()
        data = json.loads(text) if fmt == "json" else yaml.safe_load(text)
        assert isinstance(data, dict | list), (name, text)
        if name == "env aws":
            assert isinstance(data, dict)
            grant = data["id"]


def test_fast_path_prints_documents(daemon: Daemon) -> None:
    """`broker` processes: the fast path's three commands, in JSON and YAML."""
    status = yaml.safe_load(daemon.cli("status", "-o", "yaml").stdout)
    assert status["health"] == "SERVING"
    listed = json.loads(daemon.cli("connector", "list", "-o", "json").stdout)
    assert {c["name"] for c in listed} >= {"reg", "kube", "cloud", "gc"}
    cred = yaml.safe_load(daemon.cli("credentials", "get", "kube", "-o", "yaml").stdout)
    assert cred["config"]["certificate_authority"] == CA  # data: whole, never summarized


def test_ctrl_c_in_watch_exits_130(daemon: Daemon) -> None:
    """json: a line per event, then SIGINT: exit 130 (as list-resources and the rest)."""
    with subprocess.Popen(
        [*BROKER, "credentials", "watch", "kube", "-o", "json"],
        stdout=subprocess.PIPE,
        stderr=subprocess.PIPE,
        text=True,
        env={**daemon.env, "BROKER_SOCKET": str(daemon.socket)},
        preexec_fn=lambda: signal.signal(signal.SIGINT, signal.SIG_DFL),
    ) as proc:
        assert proc.stdout is not None
        first = json.loads(proc.stdout.readline())
        assert set(first) == {"event", "credential", "error"} and first["event"] == "issued"
        proc.send_signal(signal.SIGINT)
        assert proc.wait(timeout=20) == 130, proc.communicate()


def test_table_watch_line_has_a_time_and_a_real_expiry() -> None:
    from google.protobuf.timestamp_pb2 import Timestamp

    from broker.api.v1 import broker_pb2 as pb
    from broker.cli.credentials import watch_line

    stamp = Timestamp()
    stamp.FromDatetime(datetime.now(UTC) + timedelta(minutes=30))
    cred = pb.Credential(resource_type="aws-generic", resource_id="123", expires_at=stamp)
    line = watch_line("2030-01-01T00:00:00Z", "renewed", cred, "")
    assert line.startswith("2030-01-01T00:00:00Z  renewed  aws-generic:123 expires 20")
    assert "(in 29m5" in line or "(in 30m00s)" in line
    forever = pb.Credential(resource_type="docker-registry", resource_id="h")
    assert "no expiry (long-lived)" in watch_line("t", "issued", forever, "")


def test_help_is_man_quality() -> None:
    """Every option has help; every command shows an example; no typer placeholders."""
    root = cli_main.command()
    for path, command in commands(root):
        for param in command.params:
            if param.param_type_name == "option":
                assert param.help, (path, param.opts)
            assert "_" not in (param.metavar or ""), (path, param.opts, param.metavar)
        ctx = command.make_context(" ".join(["broker", *path]), [], resilient_parsing=True)
        text = command.get_help(ctx)
        examples = text.split("Examples:\n", 1)[1:]
        assert examples and "broker " in examples[0].splitlines()[0], (path, text)
        for odd in ("{", "<bool>", "<str>", "<list", "<path>", "<int>"):
            assert odd not in text.split("Examples:")[0], (path, odd, text)
    register = root.commands["connector"].commands["register"]
    assert next(p for p in register.params if p.name == "connector_type").required


def test_usage_errors_are_one_line() -> None:
    result = subprocess.run(
        [*BROKER, "connector", "register", "x"], capture_output=True, text=True, timeout=60
    )
    assert result.returncode == 2
    assert result.stderr.splitlines() == [
        "error: Missing option '--type' / '-t'. (see `broker connector register --help`)"
    ]
    assert result.stdout == ""


def test_version_flag_and_docker_helper_version() -> None:
    from broker import __version__

    result = subprocess.run([*BROKER, "--version"], capture_output=True, text=True, timeout=60)
    assert result.stdout == f"{__version__}\n"
    helper = Path(sys.executable).parent / "docker-credential-broker"
    result = subprocess.run([str(helper), "version"], capture_output=True, text=True, timeout=60)
    assert result.returncode == 0 and __version__ in result.stdout


def _in_process(monkeypatch: pytest.MonkeyPatch, daemon: Daemon, *args: str) -> str:
    monkeypatch.setenv("BROKER_SOCKET", str(daemon.socket))
    monkeypatch.setenv("COLUMNS", "80")
    monkeypatch.setattr(sys, "argv", ["broker", *args])
    out = io.StringIO()
    with redirect_stdout(out):
        try:
            cli_main.main()
        except SystemExit as exc:
            assert not exc.code, (args, exc.code)
    return out.getvalue()


def test_a_pem_shows_as_fingerprint_and_subject(
    daemon: Daemon, monkeypatch: pytest.MonkeyPatch
) -> None:
    from cryptography import x509
    from cryptography.hazmat.primitives import hashes

    cert = x509.load_pem_x509_certificate(CA.encode())
    colons = cert.fingerprint(hashes.SHA256()).hex(":").upper()
    grouped = " ".join(colons[i : i + 23] for i in range(0, len(colons), 24))
    for args in (["connector", "describe", "kube"], ["credentials", "get", "kube"]):
        text = _in_process(monkeypatch, daemon, *args)
        assert "BEGIN CERTIFICATE" not in text, text
        flat = " ".join(line.strip("│ ") for line in text.splitlines())
        assert grouped in " ".join(flat.split()) and "subject CN=tree-test-ca" in flat, text
        full = _in_process(monkeypatch, daemon, *args, "--full")
        assert "-----BEGIN CERTIFICATE-----" in full, full


def test_lists_join_with_commas_and_docker_shows_its_registry(
    daemon: Daemon, monkeypatch: pytest.MonkeyPatch
) -> None:
    text = _in_process(monkeypatch, daemon, "connector", "describe", "cloud")
    assert "['" not in text and "aws-generic, s3-bucket" in " ".join(text.split())
    listed = _in_process(monkeypatch, daemon, "connector", "list", "--name", "reg")
    assert "127.0.0.1:1" in listed and "<multiple>" not in listed


def test_the_only_resource_type_is_inferred(daemon: Daemon) -> None:
    """--type docker --resource-id HOST: docker has one resource type, so that is it."""
    with daemon.stub() as stub:
        reply = stub.RegisterConnector(
            pb.RegisterConnectorRequest(
                name="pinned",
                connector_type="docker",
                resource_id="127.0.0.1:3",
                config={"username": "u", "password": "p", "registry": "127.0.0.1:3"},
                no_verify=True,
            )
        )
        c = reply.connector
        assert (list(c.resource_types), c.resource_id) == (
            ["docker-registry"],
            "127.0.0.1:3",
        ), c
        stub.DeleteConnector(pb.DeleteConnectorRequest(name="pinned"))
