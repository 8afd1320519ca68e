"""Who may list the daemon's file outputs: a viewer may (paths, formats and times, as in
``status``: nothing secret); a local user no rule covers may not. Real users, the real
CLI run as them (setpriv), the kernel's peer credentials."""

from __future__ import annotations

from collections.abc import Iterator
from pathlib import Path

import pytest

from tests.daemon import Daemon, running_daemon
from tests.users import (  # noqa: F401 - fixtures
    Users,
    fixture_shared_dir,
    fixture_users,
    run_as,
    shared_tmp,
)


@pytest.fixture
def daemon(users: Users, tmp_path: Path) -> Iterator[tuple[Daemon, Path]]:
    run_dir = shared_tmp(tmp_path, name="outputs-policy-run")
    config = tmp_path / "broker.toml"
    config.write_text(
        f'socket = "{run_dir / "broker.sock"}"\n'
        f'local_socket = "{run_dir / "helper.sock"}"\n'
        f'socket_group = "{users.brokerclients.name}"\n'
        f'[[policy.rules]]\nselector = "user:{users.bob.name}"\nrole = "viewer"\n'
        f'[[outputs]]\nconnector = "reg"\nformat = "docker-config"\n'
        f'path = "{tmp_path / "out" / "config.json"}"\n'
    )
    (tmp_path / "out").mkdir()
    with running_daemon(
        tmp_path / "data", "--config", str(config), socket=run_dir / "broker.sock"
    ) as d:
        yield d, run_dir / "broker.sock"


def test_a_viewer_may_list_outputs_a_stranger_may_not(
    users: Users, daemon: tuple[Daemon, Path]
) -> None:
    _daemon, socket = daemon
    env = {"BROKER_SOCKET": str(socket)}
    bob = run_as(users.bob, ["broker", "outputs", "list", "--output", "json"], env=env)
    assert bob.returncode == 0, bob.stderr
    assert '"format": "docker-config"' in bob.stdout and "config.json" in bob.stdout
    mallory = run_as(users.mallory, ["broker", "outputs", "list"], env=env)
    assert mallory.returncode == 1
    assert "permission denied" in mallory.stderr and "'view'" in mallory.stderr
    assert f"uid={users.mallory.uid}" in mallory.stderr
