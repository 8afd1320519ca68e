"""Real programs reading file outputs: the ``aws`` CLI an aws-credentials file (against
moto, signatures checked), ``skopeo`` a docker-config file (a real docker-registry
with htpasswd), ``kubectl`` a kubeconfig (the test API server checks the token).

The daemon starts with an empty config; the connectors are registered, then the
[[outputs]] are written to the config and a SIGHUP applies them (reload adds outputs).
"""

from __future__ import annotations

import json
import os
import shutil
import signal
import stat
import subprocess
import time
from collections.abc import Iterator
from pathlib import Path

import pytest

from broker.api.v1 import broker_pb2 as pb
from tests.daemon import running_daemon
from tests.servers.kube_api import KubeApiServer
from tests.servers.moto import ACCOUNT, REGION, MotoServer, moto_for_test
from tests.servers.registry import RegistryServer, start_registry
from tests.test_frontends import _make_oci_image

KUBE_TOKEN = "kube-output-token-0123456789"
REGISTRY_PASSWORD = "registry-output-pass"


@pytest.fixture
def moto(monkeypatch: pytest.MonkeyPatch) -> Iterator[MotoServer]:
    yield from moto_for_test(monkeypatch)


@pytest.fixture
def registry(tmp_path: Path) -> Iterator[RegistryServer]:
    (tmp_path / "registry").mkdir()
    with start_registry(tmp_path / "registry", users={"olga": REGISTRY_PASSWORD}) as r:
        yield r


def _clean_env(tmp_path: Path, **extra: str) -> dict[str, str]:
    env = {
        k: v
        for k, v in os.environ.items()
        if not k.startswith(("AWS_", "BROKER_", "PYTHON", "KUBE", "DOCKER", "REGISTRY_"))
    }
    env.update(HOME=str(tmp_path), AWS_EC2_METADATA_DISABLED="true", **extra)
    return env


def _wait_for(path: Path, timeout: float = 20.0) -> None:
    deadline = time.monotonic() + timeout
    while not path.exists():
        assert time.monotonic() < deadline, f"{path} was never written"
        time.sleep(0.05)


def test_aws_cli_skopeo_and_kubectl_read_their_outputs(
    moto: MotoServer, registry: RegistryServer, tmp_path: Path
) -> None:
    key, secret = moto.create_user("outputs-user")
    role = moto.create_role("app-role")
    moto.enable_auth()
    out = tmp_path / "out"
    out.mkdir()
    config = tmp_path / "broker.toml"
    config.write_text("log_level = 'debug'\n")
    home = tmp_path / "daemon-home"
    home.mkdir()
    env = {
        "HOME": str(home),
        "AWS_CONFIG_FILE": str(home / "none"),
        "AWS_SHARED_CREDENTIALS_FILE": str(home / "none"),
    }
    with (
        KubeApiServer(tokens={KUBE_TOKEN: "output-user"}) as kube,
        running_daemon(tmp_path / "data", "--config", str(config), env=env) as daemon,
    ):
        connectors = [
            pb.RegisterConnectorRequest(
                name="aws-app", connector_type="aws", auth_method="iam-role",
                resource_type="aws-generic",
                config={"region": REGION, "endpoint_url": moto.url, "aws_access_key_id": key,
                        "aws_secret_access_key": secret, "role_arn": role},
            ),
            pb.RegisterConnectorRequest(
                name="reg", connector_type="docker", no_verify=True,
                config={"username": "olga", "password": REGISTRY_PASSWORD,
                        "registry": registry.address},
            ),
            pb.RegisterConnectorRequest(
                name="k8s", connector_type="kubernetes", auth_method="token",
                config={"server": kube.url, "certificate_authority": kube.ca_pem,
                        "token": KUBE_TOKEN},
            ),
        ]  # fmt: skip
        with daemon.stub() as stub:
            for request in connectors:  # aws and kubernetes verified against their servers
                stub.RegisterConnector(request, timeout=30)
        config.write_text(
            "log_level = 'debug'\n"
            f"[[outputs]]\nconnector = 'aws-app'\nformat = 'aws-credentials'\n"
            f"profile = 'app'\npath = '{out / 'aws-credentials'}'\n"
            f"[[outputs]]\nconnector = 'reg'\nformat = 'docker-config'\n"
            f"path = '{out / 'docker' / 'config.json'}'\n"
            f"[[outputs]]\nconnector = 'k8s'\nformat = 'kubeconfig'\n"
            f"path = '{out / 'kubeconfig'}'\n"
        )
        (out / "docker").mkdir()
        assert daemon.proc is not None
        daemon.proc.send_signal(signal.SIGHUP)
        for name in ("aws-credentials", "docker/config.json", "kubeconfig"):
            _wait_for(out / name)
            assert stat.S_IMODE((out / name).stat().st_mode) == 0o600

        # The aws CLI signs with the session in the file; moto checks the signature.
        aws = shutil.which("aws")
        assert aws is not None
        who = subprocess.run(
            [aws, "--profile", "app", "--endpoint-url", moto.url, "sts", "get-caller-identity"],
            capture_output=True,
            text=True,
            env=_clean_env(
                tmp_path,
                AWS_SHARED_CREDENTIALS_FILE=str(out / "aws-credentials"),
                AWS_CONFIG_FILE=str(tmp_path / "no-config"),
            ),
            timeout=60,
        )
        assert who.returncode == 0, who.stderr
        arn = json.loads(who.stdout)["Arn"]
        assert arn.startswith(f"arn:aws:sts::{ACCOUNT}:assumed-role/app-role/"), arn

        # skopeo pushes and inspects with the docker config as its auth file.
        src = tmp_path / "img"
        _make_oci_image(src)
        authfile = str(out / "docker" / "config.json")
        image = f"docker://{registry.address}/outputs/app:v1"
        skopeo_env = _clean_env(tmp_path)
        push = subprocess.run(
            ["skopeo", "copy", "--dest-tls-verify=false", "--dest-authfile", authfile,
             f"oci:{src}:v1", image],
            capture_output=True, text=True, timeout=60, env=skopeo_env,
        )  # fmt: skip
        assert push.returncode == 0, push.stderr
        inspect = subprocess.run(
            ["skopeo", "inspect", "--tls-verify=false", "--authfile", authfile, image],
            capture_output=True, text=True, timeout=60, env=skopeo_env,
        )  # fmt: skip
        assert inspect.returncode == 0, inspect.stderr
        assert json.loads(inspect.stdout)["Name"].endswith("/outputs/app")
        refused = subprocess.run(
            ["skopeo", "inspect", "--tls-verify=false", "--no-creds", image],
            capture_output=True, text=True, timeout=60, env=skopeo_env,
        )  # fmt: skip
        assert refused.returncode != 0  # the registry really requires the credential

        # kubectl trusts the CA and sends the token the API server checks.
        before = kube.count(200)
        version = subprocess.run(
            ["kubectl", "--kubeconfig", str(out / "kubeconfig"), "get", "--raw", "/version"],
            capture_output=True,
            text=True,
            timeout=60,
            env=_clean_env(tmp_path),
        )
        assert version.returncode == 0, version.stderr
        assert "gitVersion" in version.stdout
        assert kube.count(200) > before and kube.users[-1] == "output-user"

        listed = daemon.cli_json("outputs", "list")
        assert [o["format"] for o in listed] == ["aws-credentials", "docker-config", "kubeconfig"]
        assert all(o["last_error"] is None and o["writes"] == 1 for o in listed)
        aws_out = listed[0]
        assert aws_out["expires_at"] is not None and aws_out["next_renewal"] is not None
        log = daemon.log()
        assert REGISTRY_PASSWORD not in log and KUBE_TOKEN not in log and secret not in log
