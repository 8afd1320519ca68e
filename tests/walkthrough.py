"""The README's "First ten minutes" as a test: its marked blocks, the servers they talk to.

``blocks()`` takes every fenced block right after a ``<!-- walkthrough -->`` line, in
order; ``run()`` runs them in one bash (``set -euo pipefail``), so what one block
exports the next one sees, exactly as a reader typing them into one terminal.
``local_world()`` starts what the reader brings (a docker registry with an image,
moto, the Google and Kubernetes test servers) and says where it is in the variables
the README names. Used by tests/test_readme_walkthrough.py (the checkout) and
tests/test_newcomer.py (a fresh clone after ``make run``).
"""

from __future__ import annotations

import os
import re
import signal
import subprocess
import sys
from collections.abc import Iterator, Mapping
from contextlib import ExitStack, contextmanager
from dataclasses import dataclass
from pathlib import Path

from tests.servers.google import GoogleServer
from tests.servers.kube_api import KubeApiServer
from tests.servers.moto import MotoServer
from tests.servers.registry import start_registry

README = Path(__file__).resolve().parent.parent / "README.md"
MARK = "<!-- walkthrough -->"
_BLOCK = re.compile(r"^" + re.escape(MARK) + r"\n```(?:sh|bash|console)\n(.*?)^```$", re.M | re.S)
REGISTRY_USER = "walker"
REGISTRY_PASSWORD = "Registry-Secret-8812"
KUBE_TOKEN = "kube-Walk-Token-5"
PROJECT = "walk-project"


def blocks(text: str | None = None) -> list[str]:
    """The marked blocks of the README, in order."""
    found = _BLOCK.findall(README.read_text() if text is None else text)
    assert found, f"no {MARK} blocks in the README"
    return list(found)


@dataclass
class World:
    """Where the reader's registry, AWS, Google and cluster are: the README's variables."""

    env: dict[str, str]
    #: What the daemon needs to reach the Google test server's APIs (no real Google here).
    daemon_env: dict[str, str]
    image: str


def _push_image(registry: str, workdir: Path) -> str:
    """An image in the registry (pushed with explicit credentials, as its owner did)."""
    from tests.test_frontends import _make_oci_image

    src = workdir / "oci-image"
    _make_oci_image(src)
    image = f"{registry}/team/app:1.0"
    push = subprocess.run(
        [
            "skopeo",
            "copy",
            "--dest-tls-verify=false",
            f"--dest-creds={REGISTRY_USER}:{REGISTRY_PASSWORD}",
            f"oci:{src}:v1",
            f"docker://{image}",
        ],
        capture_output=True,
        text=True,
        timeout=60,
    )
    assert push.returncode == 0, push.stderr
    return image


def _secret_file(directory: Path, name: str, value: str) -> str:
    path = directory / name
    path.write_text(value + "\n")
    path.chmod(0o600)
    return str(path)


@contextmanager
def local_world(workdir: Path, moto: MotoServer) -> Iterator[World]:
    """Start the servers; the secrets go to files in ``workdir`` (outside the tree)."""
    secrets = workdir / "secrets"
    secrets.mkdir(mode=0o700, parents=True)
    (workdir / "registry").mkdir()
    with ExitStack() as stack:
        registry = stack.enter_context(
            start_registry(workdir / "registry", users={REGISTRY_USER: REGISTRY_PASSWORD})
        )
        google = stack.enter_context(GoogleServer())
        google.add_project(PROJECT, "424242")
        kube = stack.enter_context(KubeApiServer(tokens={KUBE_TOKEN: "walker"}))
        key_id, secret = moto.create_user("walker")
        key = google.service_account("walker", PROJECT)
        image = _push_image(registry.address, workdir)
        ca = secrets / "kube-ca.pem"
        ca.write_text(kube.ca_pem)
        env = {
            "REGISTRY": registry.address,
            "REGISTRY_USER": REGISTRY_USER,
            "REGISTRY_PASSWORD_FILE": _secret_file(secrets, "registry", REGISTRY_PASSWORD),
            "IMAGE": image,
            "AWS_ENDPOINT": moto.url,
            "AWS_KEY_ID": key_id,
            "AWS_SECRET_FILE": _secret_file(secrets, "aws", secret),
            "GCP_KEY_FILE": str(key.write(secrets / "gcp-key.json")),
            "KUBE_SERVER": kube.url,
            "KUBE_CA_FILE": str(ca),
            "KUBE_TOKEN_FILE": _secret_file(secrets, "kube", KUBE_TOKEN),
        }
        yield World(env=env, daemon_env=google.env(), image=image)


def user_env(home: Path, world: World, extra: Mapping[str, str] | None = None) -> dict[str, str]:
    """A reader's shell: their own HOME and runtime dir, nothing of the test run's cloud
    settings, the system PATH (the walk-through activates the venv itself)."""
    env = {
        k: v
        for k, v in os.environ.items()
        if not k.startswith(
            ("BROKER_", "AWS_", "GOOGLE_", "GCE_", "CLOUDSDK_", "KUBECONFIG", "DOCKER_", "VIRTUAL_")
        )
        and k not in ("PYTHONPATH", "XDG_RUNTIME_DIR", "XDG_CONFIG_HOME")
    }
    venv_bin = str(Path(sys.executable).parent)
    env["PATH"] = os.pathsep.join(p for p in env["PATH"].split(os.pathsep) if p != venv_bin)
    runtime = home / "run"
    runtime.mkdir(mode=0o700, exist_ok=True)
    env.update(HOME=str(home), XDG_RUNTIME_DIR=str(runtime), **world.env, **(extra or {}))
    return env


def _ignore_sigint() -> None:
    """As in a backgrounded non-interactive shell (and CI): SIGINT ignored, inherited."""
    signal.signal(signal.SIGINT, signal.SIG_IGN)


def run(
    steps: list[str], cwd: Path, env: Mapping[str, str], timeout: float = 120
) -> subprocess.CompletedProcess[str]:
    """The blocks in one ``bash -euo pipefail``; each announces itself on stderr."""
    script = "\n".join(
        f"echo '--- walkthrough block {i + 1}' >&2\n{step}" for i, step in enumerate(steps)
    )
    return subprocess.run(
        ["bash", "-euo", "pipefail", "-c", script],
        cwd=cwd,
        env=dict(env),
        capture_output=True,
        text=True,
        timeout=timeout,
        preexec_fn=_ignore_sigint,
    )


def check(result: subprocess.CompletedProcess[str], world: World) -> None:
    """What the reader sees when every block worked."""
    out, err = result.stdout, result.stderr
    assert result.returncode == 0, f"exit {result.returncode}\nstdout:\n{out}\nstderr:\n{err}"
    assert "SERVING" in out
    assert '"Digest": "sha256:' in out  # skopeo, through docker-credential-broker
    assert "none found" in out  # verify: no EKS cluster in the account, and exit 0
    assert "walkthrough-bucket" in out  # aws s3 ls, through the endpoint, at moto
    assert f"walker@{PROJECT}.iam.gserviceaccount.com" in out  # the GCE metadata server
    assert "current-context set to" in out  # login kubernetes says so
    assert '"gitVersion"' in out  # kubectl, through broker-kubectl-credential
    assert "warning: secret attribute" not in err  # every secret came from stdin or a file
    assert REGISTRY_PASSWORD not in out + err and KUBE_TOKEN not in out + err
