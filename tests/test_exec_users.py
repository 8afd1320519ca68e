"""`broker exec` as real unprivileged users (``setpriv``): a consumer rule is enough,
no rule is not.

alice is a consumer of ``app-*``; mallory is in the socket group with no rule. The
child is boto3 from the users' venv, reaching moto through the container endpoint
the grant opened for alice.
"""

from __future__ import annotations

import json
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path

import pytest

from tests.daemon import Daemon, running_daemon
from tests.servers.moto import REGION, shared_moto
from tests.users import (  # noqa: F401  (pytest fixtures)
    Users,
    fixture_shared_dir,
    fixture_users,
    run_as,
    shared_tmp,
)

BOTO_CHILD = """
import json, os, boto3
session = boto3.Session()
arn = session.client("sts").get_caller_identity()["Arn"]
print(json.dumps({"arn": arn, "method": session.get_credentials().method,
                  "uri": os.environ.get("AWS_CONTAINER_CREDENTIALS_FULL_URI"),
                  "token": os.environ.get("AWS_CONTAINER_AUTHORIZATION_TOKEN"),
                  "key": os.environ.get("AWS_ACCESS_KEY_ID")}))
"""


@dataclass
class Setup:
    daemon: Daemon
    users: Users
    socket: Path

    def env(self) -> dict[str, str]:
        return {"BROKER_SOCKET": str(self.socket)}


@pytest.fixture(scope="module")
def setup(users: Users, tmp_path_factory: pytest.TempPathFactory) -> Iterator[Setup]:
    tmp = tmp_path_factory.mktemp("exec-users")
    run_dir = shared_tmp(tmp, name="exec-run")
    config = tmp / "broker.toml"
    config.write_text(
        f"""
socket = "{run_dir / "broker.sock"}"
local_socket = "{run_dir / "helper.sock"}"
socket_group = "{users.brokerclients.name}"

[[policy.rules]]
selector = "user:{users.alice.name}"
role = "consumer"
connectors = ["app-*"]
"""
    )
    moto = shared_moto()
    with running_daemon(
        tmp / "data", "--config", str(config), socket=run_dir / "broker.sock"
    ) as daemon:
        for name in ("app-aws", "ops-aws"):
            daemon.cli(
                "connector", "register", name, "--type", "aws", "--auth-method",
                "session-token", f"region={REGION}", f"endpoint_url={moto.url}",
                "aws_access_key_id=AKIAEXECUSERSTEST000",
                "aws_secret_access_key=exec-users-secret",
                "--resource-type", "aws-generic", "--no-verify",
            )  # fmt: skip
        yield Setup(daemon, users, run_dir / "broker.sock")


def test_a_consumer_runs_boto3_through_its_own_grant(setup: Setup) -> None:
    alice = setup.users.alice
    result = run_as(
        alice, ["broker", "exec", "app-aws", "--", "python", "-c", BOTO_CHILD], env=setup.env()
    )
    assert result.returncode == 0, result.stderr
    got = json.loads(result.stdout)
    assert got["method"] == "container-role" and got["arn"].startswith("arn:aws:")
    assert got["key"] is None  # no static key in the environment
    # Owned by alice while it ran (audited with her uid), revoked after.
    log = setup.daemon.log()
    assert "sdk_endpoint_granted" in log and f"uid={alice.uid}" in log
    listed = run_as(alice, ["broker", "env", "list", "-o", "json"], env=setup.env())
    assert listed.returncode == 0 and json.loads(listed.stdout) == [], listed


def test_a_consumer_gets_static_variables(setup: Setup) -> None:
    child = "import os; print(os.environ['AWS_SESSION_TOKEN'] != '', os.environ['AWS_REGION'])"
    result = run_as(
        setup.users.alice,
        ["broker", "exec", "app-aws", "--env-only", "--", "python", "-c", child],
        env=setup.env(),
    )
    assert (result.returncode, result.stdout) == (0, f"True {REGION}\n"), result.stderr


@pytest.mark.parametrize(
    ("who", "connector"), [("mallory", "app-aws"), ("alice", "ops-aws")], ids=["no-rule", "other"]
)
def test_no_rule_no_child(setup: Setup, shared_dir: Path, who: str, connector: str) -> None:
    user = setup.users[who]
    marker = shared_dir / f"{who}-ran"
    shared_dir.chmod(0o777)
    for extra in ([], ["--env-only"]):
        result = run_as(
            user,
            ["broker", "exec", connector, *extra, "--", "touch", str(marker)],
            env=setup.env(),
        )
        assert result.returncode == 1, result
        assert "Traceback" not in result.stderr
        expected = (
            f"permission denied: uid={user.uid}({user.name})"
            if who == "mallory"
            else f"no connector '{connector}' (or none you may use)"  # existence not revealed
        )
        assert expected in result.stderr, result.stderr
        assert not marker.exists()
