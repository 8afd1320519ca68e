"""service-account-token end to end: the real daemon and `broker` CLI, kubectl through the
exec plugin, and `credentials watch`, against the TLS test API server whose TokenAuthority
RBAC-checks TokenRequests, signs the tokens and accepts only live ones it signed."""

from __future__ import annotations

import json
import subprocess
import sys
import time
from collections.abc import Iterator
from datetime import UTC, datetime
from pathlib import Path

import pytest

from tests.daemon import Daemon, running_daemon
from tests.servers.kube_api import KubeApiServer, kubectl_version
from tests.servers.kube_tokens import TokenAuthority
from tests.watching import renewed_token, stamp, watch_events

BIN = Path(sys.executable).parent
BOOTSTRAP = "e2e-bootstrap-token-never-handed-out-0001"
OUTSIDER = "e2e-token-without-any-rbac-0002"
SA_USER = "system:serviceaccount:ci:deployer"


@pytest.fixture(scope="module")
def authority() -> TokenAuthority:
    return TokenAuthority(service_accounts=["ci/deployer"], creators={"minter": ["ci/deployer"]})


@pytest.fixture(scope="module")
def api(authority: TokenAuthority) -> Iterator[KubeApiServer]:
    with KubeApiServer(
        tokens={BOOTSTRAP: "minter", OUTSIDER: "outsider"}, authority=authority
    ) as s:
        yield s


@pytest.fixture(scope="module")
def daemon(tmp_path_factory: pytest.TempPathFactory, api: KubeApiServer) -> Iterator[Daemon]:
    home = tmp_path_factory.mktemp("k8s-sa-home")
    (home / "ca.pem").write_text(api.ca_pem)
    with running_daemon(home / "data", env={"HOME": str(home)}) as d:
        yield d


def _register(daemon: Daemon, api: KubeApiServer, name: str, *extra: str, token: str = BOOTSTRAP):
    return daemon.cli(
        "connector",
        "register",
        name,
        "--type",
        "kubernetes",
        "--auth-method",
        "service-account-token",
        f"server={api.url}",
        f"token={token}",
        "service_account=ci/deployer",
        f"certificate_authority=@{Path(daemon.env['HOME']) / 'ca.pem'}",
        "cluster_name=dev",
        *extra,
        "--output",
        "json",
        check=False,
    )


def test_register_get_kubectl_and_login_with_minted_tokens(
    daemon: Daemon, api: KubeApiServer, authority: TokenAuthority, tmp_path: Path
) -> None:
    described = daemon.cli_json("connector", "describe-type", "kubernetes")
    (method,) = [
        m for m in described["auth_methods"] if m["auth_method"] == "service-account-token"
    ]
    assert (method["min_expiration_seconds"], method["max_expiration_seconds"]) == (600, 86400)

    registered = _register(daemon, api, "sa", "--expiration-seconds", "900")
    assert registered.returncode == 0, registered.stderr
    assert json.loads(registered.stdout)["resources"][0]["resource_ids"] == ["dev"]
    shown = daemon.cli("connector", "describe", "sa", "--output", "json").stdout
    assert BOOTSTRAP not in shown and json.loads(shown)["config"]["token"] == "[HIDDEN]"

    cred = daemon.cli_json("credentials", "get", "sa")
    token = cred["config"]["token"]
    assert token != BOOTSTRAP and BOOTSTRAP not in json.dumps(cred)
    assert set(cred["config"]) == {
        "server",
        "cluster_name",
        "insecure",
        "token",
        "certificate_authority",
    }
    lifetime = (stamp(cred["expires_at"]) - datetime.now(UTC)).total_seconds()
    assert 880 < lifetime <= 900
    assert authority.verify(token) == SA_USER

    # broker login kubernetes: a kubeconfig whose user is the exec plugin; kubectl then
    # reaches the API server as the service account, with a minted token.
    kubeconfig = tmp_path / "kubeconfig"
    daemon.cli("login", "kubernetes", "sa", "--kubeconfig", str(kubeconfig))
    assert BOOTSTRAP not in kubeconfig.read_text()
    before = len(api.requests)
    kubectl = kubectl_version(kubeconfig, {**daemon.env, "HOME": str(tmp_path)})
    assert kubectl.returncode == 0, kubectl.stderr
    assert json.loads(kubectl.stdout)["gitVersion"].startswith("v1.30")
    seen = api.requests[before:]
    # Served from the cache (no new TokenRequest), every request as the service account.
    assert seen and {(r.path, r.user, r.via, r.status) for r in seen} == {
        ("/version", SA_USER, "serviceaccount", 200)
    }

    # The plugin's answer is the minted token with the TokenRequest's expiry ...
    plugin = subprocess.run(
        [str(BIN / "broker-kubectl-credential"), "sa", "--resource-id", "dev"],
        capture_output=True,
        text=True,
        timeout=30,
        env={**daemon.env, "BROKER_HELPER_SOCKET": str(daemon.data_dir / "helper.sock")},
    )
    status = json.loads(plugin.stdout)["status"]
    assert status["token"] == token
    # ... reported 60 s early: kubectl keeps no margin of its own.
    early = stamp(cred["expires_at"]) - stamp(status["expirationTimestamp"])
    assert early.total_seconds() == 60

    # After its expiry (the server's clock moved on) the same token no longer works.
    authority.clock = lambda: time.time() + 901
    try:
        late = subprocess.run(
            [
                "kubectl",
                "--kubeconfig",
                str(api.write_kubeconfig(tmp_path / "k2", token=token)),
                "get",
                "--raw",
                "/version",
            ],
            capture_output=True,
            text=True,
            timeout=60,
        )
    finally:
        authority.clock = time.time
    assert late.returncode != 0 and "Unauthorized" in late.stderr
    assert authority.rejections[-1] == "expired"
    assert BOOTSTRAP not in daemon.log()


def test_a_bootstrap_without_rbac_is_told_which_permission_it_lacks(
    daemon: Daemon, api: KubeApiServer
) -> None:
    refused = _register(daemon, api, "no-rbac", token=OUTSIDER)
    assert refused.returncode != 0
    assert "'create' on 'serviceaccounts/token' for ci/deployer" in refused.stderr
    assert OUTSIDER not in refused.stderr
    stored = _register(daemon, api, "no-rbac", "--no-verify", token=OUTSIDER)
    assert stored.returncode == 0, stored.stderr
    get = daemon.cli("credentials", "get", "no-rbac", check=False)
    assert get.returncode != 0
    assert "lacks the RBAC permission 'create' on 'serviceaccounts/token'" in get.stderr
    assert "resourceNames: [deployer]" in get.stderr
    bad = _register(daemon, api, "short", "--expiration-seconds", "599")
    assert bad.returncode != 0 and "expiration_seconds 599 is outside 600..86400" in bad.stderr
    assert OUTSIDER not in daemon.log()


def test_watch_sees_the_minted_token_renewed_before_it_expires(
    daemon: Daemon, api: KubeApiServer, authority: TokenAuthority
) -> None:
    # The cluster caps tokens at 6 s (like --service-account-max-token-expiration): the
    # expiry handed out, and so the renewal, follow the TokenRequest status.
    authority.max_seconds = 6
    try:
        registered = _register(daemon, api, "sa-short", "--no-verify")
        assert registered.returncode == 0, registered.stderr
        events = watch_events(daemon, "sa-short", 2, 30)
    finally:
        authority.max_seconds = None
    assert authority.verify(renewed_token(events)) == SA_USER


def test_auto_configure_bootstraps_from_the_kubeconfig_context(
    daemon: Daemon, api: KubeApiServer, authority: TokenAuthority, tmp_path: Path
) -> None:
    kubeconfig = api.write_kubeconfig(tmp_path / "kubeconfig", token=BOOTSTRAP)
    registered = daemon.cli_json(
        "connector",
        "register",
        "sa-auto",
        "--type",
        "kubernetes",
        "--auto-configure",
        "--auth-method",
        "service-account-token",
        "service_account=ci/deployer",
        env={"KUBECONFIG": str(kubeconfig), "HOME": str(tmp_path)},
    )
    assert registered["connector"]["auth_method"] == "service-account-token"
    assert registered["connector"]["config"]["token"] == "[HIDDEN]"
    assert registered["resources"][0]["error"] is None
    cred = daemon.cli_json("credentials", "get", "sa-auto")
    assert cred["config"]["token"] != BOOTSTRAP
    assert authority.verify(cred["config"]["token"]) == SA_USER
