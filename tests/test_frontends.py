"""Unmodified clients through the helpers: skopeo and docker via docker-credential-broker,
kubectl via the exec plugin, the login commands' file edits."""

from __future__ import annotations

import json
import os
import stat
import subprocess
import sys
from collections.abc import Iterator
from pathlib import Path

import pytest
import yaml

from tests.daemon import Daemon, running_daemon
from tests.servers.google import GoogleServer
from tests.servers.kube_api import KubeApiServer
from tests.servers.moto import ACCOUNT, REGION, MotoServer, moto_for_test
from tests.servers.registry import RegistryServer, start_registry

BIN = Path(sys.executable).parent
SECRET = "helper-Secret-771"


@pytest.fixture(scope="module")
def registry(tmp_path_factory: pytest.TempPathFactory) -> Iterator[RegistryServer]:
    with start_registry(tmp_path_factory.mktemp("reg"), users={"carol": SECRET}) as r:
        yield r


@pytest.fixture(scope="module")
def kube(tmp_path_factory: pytest.TempPathFactory) -> Iterator[KubeApiServer]:
    with KubeApiServer(tokens={"kube-Token-42": "dave"}) as api:
        yield api


@pytest.fixture(scope="module")
def daemon(
    tmp_path_factory: pytest.TempPathFactory, registry: RegistryServer, kube: KubeApiServer
) -> Iterator[Daemon]:
    home = tmp_path_factory.mktemp("home")
    with running_daemon(home / "data", env={"HOME": str(home)}) as d:
        ca = home / "kube-ca.pem"
        ca.write_text(kube.ca_pem)
        d.cli(
            "connector",
            "register",
            "reg",
            "--type",
            "docker",
            "username=carol",
            f"password={SECRET}",
            f"registry={registry.address}",
        )
        d.cli(
            "connector",
            "register",
            "kube",
            "--type",
            "kubernetes",
            "--auth-method",
            "token",
            f"server={kube.url}",
            "token=kube-Token-42",
            f"certificate_authority=@{ca}",
            "cluster_name=dev",
        )
        yield d


def _helper_env(daemon: Daemon, **extra: str) -> dict[str, str]:
    env = {**daemon.env, "BROKER_HELPER_SOCKET": str(daemon.data_dir / "helper.sock")}
    env.update(extra)
    return env


def _docker_helper(daemon: Daemon, action: str, stdin: str) -> subprocess.CompletedProcess[str]:
    return subprocess.run(
        [str(BIN / "docker-credential-broker"), action],
        input=stdin,
        capture_output=True,
        text=True,
        env=_helper_env(daemon),
        timeout=30,
    )


def test_docker_helper_protocol(daemon: Daemon, registry: RegistryServer) -> None:
    got = _docker_helper(daemon, "get", f"http://{registry.address}\n")
    assert got.returncode == 0, got.stdout + got.stderr
    assert json.loads(got.stdout) == {
        "ServerURL": f"http://{registry.address}",
        "Username": "carol",
        "Secret": SECRET,
    }
    unknown = _docker_helper(daemon, "get", "unknown.example:5000")
    assert unknown.returncode == 1
    assert unknown.stdout.strip() == "credentials not found in native keychain"
    listed = _docker_helper(daemon, "list", "")
    assert json.loads(listed.stdout) == {registry.address: "carol"}

    # store / erase: the broker manages these credentials; nothing is stored or erased,
    # and docker is told so (exit 1, one line naming the connector and the way to change it).
    login = {"ServerURL": registry.address, "Username": "carol", "Secret": "typed-Secret-1"}
    store = _docker_helper(daemon, "store", json.dumps(login))
    assert store.returncode == 1
    assert store.stdout.count("\n") == 1 and store.stderr == ""
    assert store.stdout.strip() == (
        f"credentials for {registry.address} are managed by credential-broker (connector "
        "'reg'), not by docker: change them with "
        "`broker connector update reg username=USER password=SECRET`"
    )
    assert "typed-Secret-1" not in daemon.log()
    erase = _docker_helper(daemon, "erase", registry.address)
    assert erase.returncode == 1
    assert erase.stdout.strip().endswith(
        "`broker connector update reg username=USER password=SECRET`, or stop docker using "
        "the broker for it with `broker logout docker reg`"
    )
    assert _docker_helper(daemon, "get", registry.address).returncode == 0  # still served
    other = _docker_helper(daemon, "store", json.dumps({**login, "ServerURL": "new.example"}))
    assert other.returncode == 1
    assert "no connector serves new.example" in other.stdout
    assert "broker connector register NAME --type docker registry=new.example" in other.stdout

    # Input checked as docker-credential-helpers does, with its messages.
    cases = {
        "not json": "store expects a JSON object with ServerURL, Username and Secret: ",
        '["ServerURL"]': "store expects a JSON object with ServerURL, Username and Secret",
        '{"ServerURL": 5, "Username": "u", "Secret": "s"}': "ServerURL is not a string",
        '{"Username": "u", "Secret": "s"}': "no credentials server URL",
        '{"ServerURL": "r.example", "Secret": "s"}': "no credentials username",
    }
    for stdin, message in cases.items():
        bad = _docker_helper(daemon, "store", stdin)
        assert bad.returncode == 1, stdin
        assert message in bad.stdout and bad.stdout.count("\n") == 1, (stdin, bad.stdout)
    for action in ("get", "erase"):
        empty = _docker_helper(daemon, action, "\n")
        assert (empty.returncode, empty.stdout) == (1, "no credentials server URL\n")
    unknown_action = _docker_helper(daemon, "frobnicate", "")
    assert (unknown_action.returncode, unknown_action.stdout) == (
        1,
        "Unknown credential action `frobnicate`\n",
    )
    usage = subprocess.run(
        [str(BIN / "docker-credential-broker")], capture_output=True, text=True, timeout=30
    )
    assert usage.returncode == 1
    assert usage.stdout == "Usage: docker-credential-broker <store|get|erase|list|version>\n"


def test_docker_helper_when_daemon_down(tmp_path: Path) -> None:
    result = subprocess.run(
        [str(BIN / "docker-credential-broker"), "get"],
        input="r.example",
        capture_output=True,
        text=True,
        env={**os.environ, "BROKER_HELPER_SOCKET": str(tmp_path / "none.sock")},
        timeout=30,
    )
    assert result.returncode == 1
    assert "not running" in result.stdout


def test_skopeo_reads_through_the_helper(
    daemon: Daemon, registry: RegistryServer, tmp_path: Path
) -> None:
    # Push an image with skopeo using explicit credentials, then read it back via the helper.
    src = tmp_path / "img"
    _make_oci_image(src)
    push = subprocess.run(
        [
            "skopeo",
            "copy",
            "--dest-tls-verify=false",
            f"--dest-creds=carol:{SECRET}",
            f"oci:{src}:v1",
            f"docker://{registry.address}/demo/app:v1",
        ],
        capture_output=True,
        text=True,
        timeout=60,
    )
    assert push.returncode == 0, push.stderr
    auth = tmp_path / "auth.json"
    auth.write_text(json.dumps({"credHelpers": {registry.address: "broker"}}))
    env = {**_helper_env(daemon), "PATH": f"{BIN}:{os.environ['PATH']}"}
    inspect = subprocess.run(
        [
            "skopeo",
            "inspect",
            "--authfile",
            str(auth),
            "--tls-verify=false",
            f"docker://{registry.address}/demo/app:v1",
        ],
        capture_output=True,
        text=True,
        env=env,
        timeout=60,
    )
    assert inspect.returncode == 0, inspect.stderr
    assert json.loads(inspect.stdout)["Name"].endswith("demo/app")
    # Without the helper the registry refuses.
    anon = subprocess.run(
        [
            "skopeo",
            "inspect",
            "--tls-verify=false",
            "--authfile",
            str(tmp_path / "empty.json"),
            f"docker://{registry.address}/demo/app:v1",
        ],
        capture_output=True,
        text=True,
        env={**env, "REGISTRY_AUTH_FILE": str(tmp_path / "empty.json")},
        timeout=60,
    )
    assert anon.returncode != 0


def _make_oci_image(path: Path) -> None:
    """A minimal OCI layout with one empty layer, built by hand (no network)."""
    import gzip
    import hashlib
    import io
    import tarfile

    blobs = path / "blobs" / "sha256"
    blobs.mkdir(parents=True)

    def put(data: bytes) -> str:
        digest = hashlib.sha256(data).hexdigest()
        (blobs / digest).write_bytes(data)
        return digest

    raw = io.BytesIO()
    with tarfile.open(fileobj=raw, mode="w") as tar:
        info = tarfile.TarInfo("hello.txt")
        body = b"hello\n"
        info.size = len(body)
        tar.addfile(info, io.BytesIO(body))
    layer = gzip.compress(raw.getvalue(), mtime=0)
    layer_digest = put(layer)
    config = json.dumps(
        {
            "architecture": "amd64",
            "os": "linux",
            "rootfs": {
                "type": "layers",
                "diff_ids": ["sha256:" + hashlib.sha256(raw.getvalue()).hexdigest()],
            },
        }
    ).encode()
    config_digest = put(config)
    manifest = json.dumps(
        {
            "schemaVersion": 2,
            "mediaType": "application/vnd.oci.image.manifest.v1+json",
            "config": {
                "mediaType": "application/vnd.oci.image.config.v1+json",
                "digest": "sha256:" + config_digest,
                "size": len(config),
            },
            "layers": [
                {
                    "mediaType": "application/vnd.oci.image.layer.v1.tar+gzip",
                    "digest": "sha256:" + layer_digest,
                    "size": len(layer),
                }
            ],
        }
    ).encode()
    manifest_digest = put(manifest)
    (path / "oci-layout").write_text(json.dumps({"imageLayoutVersion": "1.0.0"}))
    (path / "index.json").write_text(
        json.dumps(
            {
                "schemaVersion": 2,
                "manifests": [
                    {
                        "mediaType": "application/vnd.oci.image.manifest.v1+json",
                        "digest": "sha256:" + manifest_digest,
                        "size": len(manifest),
                        "annotations": {"org.opencontainers.image.ref.name": "v1"},
                    }
                ],
            }
        )
    )


def test_kubectl_through_the_exec_plugin(
    daemon: Daemon, kube: KubeApiServer, tmp_path: Path
) -> None:
    kubeconfig = tmp_path / "kubeconfig"
    kubeconfig.write_text(
        yaml.safe_dump(
            {
                "apiVersion": "v1",
                "kind": "Config",
                "clusters": [{"name": "other", "cluster": {"server": "https://other.example"}}],
                "users": [],
                "contexts": [],
                "current-context": "",
                "preferences": {"colors": True},
            }
        )
    )
    daemon.cli("login", "kubernetes", "kube", "--kubeconfig", str(kubeconfig), "--context", "dev")
    doc = yaml.safe_load(kubeconfig.read_text())
    assert stat.S_IMODE(kubeconfig.stat().st_mode) == 0o600
    assert doc["preferences"] == {"colors": True}
    assert {c["name"] for c in doc["clusters"]} == {"other", "dev"}
    assert doc["current-context"] == "dev"
    assert "kube-Token-42" not in kubeconfig.read_text()
    daemon.cli("login", "kubernetes", "kube", "--kubeconfig", str(kubeconfig), "--context", "dev")
    assert yaml.safe_load(kubeconfig.read_text()) == doc  # idempotent

    before = kube.count(200)
    result = subprocess.run(
        ["kubectl", "--kubeconfig", str(kubeconfig), "get", "--raw", "/version"],
        capture_output=True,
        text=True,
        timeout=60,
        env={**daemon.env, "HOME": str(tmp_path)},
    )
    assert result.returncode == 0, result.stderr
    assert json.loads(result.stdout)["gitVersion"].startswith("v1.30")
    assert kube.count(200) > before


def test_exec_plugin_formats_and_errors(daemon: Daemon) -> None:
    plugin = str(BIN / "broker-kubectl-credential")
    out = subprocess.run(
        [plugin, "kube"], capture_output=True, text=True, env=_helper_env(daemon), timeout=30
    )
    cred = json.loads(out.stdout)
    # No KUBERNETES_EXEC_INFO: v1beta1, as the reference plugins answer; spec always echoed.
    assert cred["apiVersion"] == "client.authentication.k8s.io/v1beta1"
    assert cred["kind"] == "ExecCredential"
    assert cred["spec"] == {"interactive": False}
    assert cred["status"]["token"] == "kube-Token-42"
    for version in ("v1", "v1beta1"):
        info = json.dumps(
            {
                "apiVersion": f"client.authentication.k8s.io/{version}",
                "kind": "ExecCredential",
                "spec": {"interactive": False},
            }
        )
        asked = subprocess.run(
            [plugin, "kube"],
            capture_output=True,
            text=True,
            env=_helper_env(daemon, KUBERNETES_EXEC_INFO=info),
            timeout=30,
        )
        answer = json.loads(asked.stdout)
        assert answer["apiVersion"] == f"client.authentication.k8s.io/{version}"
        assert answer["spec"] == {"interactive": False}
    missing = subprocess.run(
        [plugin, "ghost"], capture_output=True, text=True, env=_helper_env(daemon), timeout=30
    )
    assert missing.returncode == 1
    assert "connector 'ghost' not found" in missing.stderr
    wrong = subprocess.run(
        [plugin, "reg"], capture_output=True, text=True, env=_helper_env(daemon), timeout=30
    )
    assert wrong.returncode == 1
    assert "does not serve resource type 'kubernetes-cluster'" in wrong.stderr


def test_login_docker_edits_config_and_records_preference(
    daemon: Daemon, registry: RegistryServer, tmp_path: Path
) -> None:
    config_dir = tmp_path / "docker"
    config_dir.mkdir()
    (config_dir / "config.json").write_text(
        json.dumps({"auths": {"x.example": {}}, "credsStore": "desktop"})
    )
    daemon.cli("login", "docker", "reg", "--config", str(config_dir))
    data = json.loads((config_dir / "config.json").read_text())
    assert data["credHelpers"] == {registry.address: "broker"}
    assert data["auths"] == {"x.example": {}} and data["credsStore"] == "desktop"
    assert stat.S_IMODE((config_dir / "config.json").stat().st_mode) == 0o600
    daemon.cli("login", "docker", "reg", "--config", str(config_dir))
    assert json.loads((config_dir / "config.json").read_text()) == data
    # A second connector for the same host: the preference recorded by login decides.
    daemon.cli(
        "connector",
        "register",
        "reg2",
        "--type",
        "docker",
        "username=carol",
        f"password={SECRET}",
        f"registry={registry.address}",
    )
    got = _docker_helper(daemon, "get", registry.address)
    assert got.returncode == 0, got.stdout
    daemon.cli("logout", "docker", "reg", "--config", str(config_dir))
    assert "credHelpers" not in json.loads((config_dir / "config.json").read_text())
    ambiguous = _docker_helper(daemon, "get", registry.address)
    assert ambiguous.returncode == 1
    assert "several connectors" in ambiguous.stdout
    daemon.cli("connector", "delete", "reg2")


def test_docker_cli_login_and_logout_give_the_documented_errors(
    daemon: Daemon, registry: RegistryServer, tmp_path: Path
) -> None:
    config_dir = tmp_path / "dockercfg"
    daemon.cli("login", "docker", "reg", "--config", str(config_dir))
    config_before = (config_dir / "config.json").read_text()
    env = {
        **_helper_env(daemon),
        "PATH": f"{BIN}:{os.environ['PATH']}",
        "DOCKER_CONFIG": str(config_dir),
    }
    login = subprocess.run(
        ["docker", "login", "--username", "carol", "--password-stdin", registry.address],
        input=SECRET,
        capture_output=True,
        text=True,
        env=env,
        timeout=60,
    )
    # docker checked the login with the registry, then the helper refused to store it.
    assert login.returncode != 0
    assert "Login Succeeded" not in login.stdout
    output = login.stdout + login.stderr
    assert "error storing credentials" in output, output
    assert (
        f"credentials for {registry.address} are managed by credential-broker (connector "
        "'reg'), not by docker: change them with "
        "`broker connector update reg username=USER password=SECRET`"
    ) in output
    assert (config_dir / "config.json").read_text() == config_before

    # logout asks the helper to erase each spelling of the address (URL, host, http://,
    # https://) and warns only if every erase failed. docker 28 counts failures per
    # distinct spelling, so for a bare host (two identical spellings) it never warns:
    # the refusal shows when the broker is the credsStore and the address is a URL.
    plain = subprocess.run(
        ["docker", "logout", registry.address], capture_output=True, text=True, env=env, timeout=60
    )
    assert plain.returncode == 0 and "Removing login credentials" in plain.stdout
    assert (config_dir / "config.json").read_text() == config_before
    config = json.loads(config_before)
    config["credsStore"] = "broker"
    (config_dir / "config.json").write_text(json.dumps(config))
    url = f"https://{registry.address}/v2/"
    logout = subprocess.run(
        ["docker", "logout", url], capture_output=True, text=True, env=env, timeout=60
    )
    output = logout.stdout + logout.stderr
    assert "WARNING: could not erase credentials:" in logout.stderr, output
    managed = (
        f"credentials for {registry.address} are managed by credential-broker (connector "
        "'reg'), not by docker: change them with "
        "`broker connector update reg username=USER password=SECRET`, or stop docker using "
        "the broker for it with `broker logout docker reg`"
    )
    for spelling in (url, registry.address, f"http://{registry.address}"):
        assert (
            f"{spelling}: error erasing credentials - err: exit status 1, out: `{managed}`"
        ) in logout.stderr, output
    # Nothing was erased: the broker still serves docker for that registry.
    assert _docker_helper(daemon, "get", registry.address).returncode == 0


@pytest.fixture
def moto(monkeypatch: pytest.MonkeyPatch) -> Iterator[MotoServer]:
    yield from moto_for_test(monkeypatch)


def test_docker_list_covers_every_host_get_serves(
    registry: RegistryServer, moto: MotoServer, tmp_path: Path
) -> None:
    """ECR (aws), gcr.io / Artifact Registry (gcp) and plain registries (docker) alike."""
    key, secret = moto.create_user("lister")
    with (
        GoogleServer() as google,
        running_daemon(tmp_path / "data", env={"HOME": str(tmp_path), **google.env()}) as d,
    ):
        sa = google.service_account("lister", "list-project").write(tmp_path / "sa.json")
        common = ["connector", "register"]
        d.cli(*common, "reg", "--type", "docker", "username=carol", f"password={SECRET}",
              f"registry={registry.address}")  # fmt: skip
        d.cli(*common, "ecr", "--type", "aws", "--auth-method", "session-token",
              "--resource-type", "docker-registry", f"region={REGION}",
              f"endpoint_url={moto.url}", f"aws_access_key_id={key}",
              f"aws_secret_access_key={secret}", "--no-verify")  # fmt: skip
        d.cli(*common, "gcr", "--type", "gcp", "--auth-method", "service-account",
              "--resource-type", "docker-registry", f"service_account_json=@{sa}",
              "--no-verify")  # fmt: skip
        d.cli(*common, "ar", "--type", "gcp", "--auth-method", "service-account",
              "--resource-type", "docker-registry",
              "--resource-id", "europe-docker.pkg.dev/list-project/images",
              f"service_account_json=@{sa}", "--no-verify")  # fmt: skip
        d.cli(*common, "k8s", "--type", "kubernetes", "--auth-method", "token",
              "server=https://k8s.example", "token=t", "--no-verify")  # fmt: skip

        listed = _docker_helper(d, "list", "")
        assert listed.returncode == 0, listed.stdout + listed.stderr
        ecr = f"{ACCOUNT}.dkr.ecr.{REGION}.amazonaws.com"
        gcr = {host: "oauth2accesstoken" for host in ("gcr.io", "us.gcr.io", "eu.gcr.io")}
        assert json.loads(listed.stdout) == {
            registry.address: "carol",
            ecr: "AWS",
            **gcr,
            "asia.gcr.io": "oauth2accesstoken",
            "europe-docker.pkg.dev": "oauth2accesstoken",
        }
        # get serves every host list names, with the user name list gave.
        for host, user in json.loads(listed.stdout).items():
            got = _docker_helper(d, "get", host)
            assert got.returncode == 0, (host, got.stdout)
            assert json.loads(got.stdout)["Username"] == user, host
