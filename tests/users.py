"""Real unprivileged users and groups, and a way to run commands as them.

CI runs as root, so the tests that check *who* may do what create real users
with ``groupadd`` / ``useradd`` and run the real CLI and helpers as them with
``setpriv``. The kernel then reports those uids through ``SO_PEERCRED``.

Users (names unique per run: ``cbt-<key>-<4 hex>``, home under a temp dir):

    alice    consumer            member of brokerclients
    bob      viewer              member of brokerclients
    carol    admin via a rule    member of brokerclients
    mallory  no rules            member of brokerclients
    eve      outsider            NOT in brokerclients

``brokerclients`` is the group to use as the daemon's ``socket_group``.

The interpreter problem: the suite's own python is a pyenv build under
``/root`` (0700), so no other user can read it, nor anything in a venv made
from it (this kernel still lets them exec the binary, which then runs with
Debian's libpython: nothing to rely on). The session builds a tiny venv in
a world-traversable temp dir whose ``bin/python`` is an interpreter every
user can run (normally Debian's ``/usr/bin/python3.11``, same cp311 ABI),
and whose one ``.pth`` file adds the repository and the suite's venv
site-packages (``site.addsitedir``, so their ``.pth`` files apply too). It
also holds the project's console scripts (``broker``,
``docker-credential-broker``, ...). Cost: ~0.1 s. When the checkout or the
venv cannot be read by other users (a clone under ``/root``), the session
copies ``broker/`` (~0.1 s) and hard-links (copies across filesystems) the
files of the project's run-time dependency closure plus boto3 / google-auth
into that venv (~8k files: ~1.5 s, and ~0.6 s to delete).

Use it from a test module (the imported names are pytest fixtures; the
fixtures are called ``users`` and ``shared_dir``)::

    from tests.users import Users, fixture_shared_dir, fixture_users, run_as  # noqa: F401

    def test_denied(users: Users, shared_dir: Path) -> None:
        result = run_as(users.mallory, ["broker", "connector", "list"],
                        env={"BROKER_SOCKET": str(sock)})

Directories the users must traverse (socket dirs, data dirs) must come from
``shared_tmp(tmp_path)`` / ``shared_dir``: pytest's ``tmp_path`` lives under
``/tmp/pytest-of-root`` which pytest keeps at 0700.
"""

from __future__ import annotations

import atexit
import contextlib
import dataclasses
import grp
import importlib.metadata
import json
import os
import pwd
import re
import secrets
import shutil
import signal
import subprocess
import sys
import sysconfig
import tempfile
import threading
import time
from collections.abc import Iterator, Mapping, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import IO, Any, Protocol

import pytest

ROOT = Path(__file__).resolve().parents[1]
PREFIX = "cbt-"
USER_KEYS = ("alice", "bob", "carol", "mallory", "eve")
SOCKET_GROUP_MEMBERS = ("alice", "bob", "carol", "mallory")
DIST = "credential-broker"
DEFAULT_PATH = "/usr/local/bin:/usr/bin:/bin"
#: Written as the GECOS field of every user made here; teardown deletes only users carrying it.
MARKER = "credential-broker test user"
STATE_FILE = "owner.json"
#: What the users' venv holds when the suite's venv cannot be read in place: the project's
#: run-time closure plus the SDKs that tests may run as a user.
LINKED_DISTS = (DIST, "boto3", "google-auth", "requests")
SETPRIV = shutil.which("setpriv") or "/usr/bin/setpriv"
_EXIT_LOCKED = (1, 10)  # useradd/groupadd: could not lock or update /etc/passwd or /etc/group


# --------------------------------------------------------------------------- data


@dataclass(frozen=True)
class Group:
    key: str
    name: str
    gid: int


@dataclass(frozen=True)
class UserRuntime:
    """How the test users start Python: a venv every uid can read."""

    #: ``bin/`` of that venv: ``python``, ``python3`` and the project's console scripts.
    bin_dir: Path
    #: ``bin_dir / "python"`` (a symlink to ``base_python``).
    python: Path
    #: The interpreter behind it, e.g. ``/usr/bin/python3.11``.
    base_python: str
    #: ``"direct"``: checkout and venv read in place; otherwise what was copied / hard-linked.
    route: str
    #: Seconds spent building it.
    build_seconds: float


@dataclass(frozen=True)
class User:
    key: str  # "alice"
    name: str  # "cbt-alice-1a2b"
    uid: int
    gid: int  # primary (the user's own group)
    groups: tuple[int, ...]  # supplementary gids (brokerclients or none)
    home: Path  # owned by the user, 0755, under the session's shared dir
    runtime: UserRuntime = field(repr=False, compare=False)

    def env(self, extra: Mapping[str, str] | None = None) -> dict[str, str]:
        """A minimal environment (``env -i`` semantics) plus ``extra``."""
        env = {
            "HOME": str(self.home),
            "PATH": f"{self.runtime.bin_dir}:{DEFAULT_PATH}",
            "LANG": "C.UTF-8",
            "USER": self.name,
            "LOGNAME": self.name,
        }
        env.update(extra or {})
        return env

    def argv(self, argv: Sequence[str]) -> list[str]:
        """``argv`` prefixed with the ``setpriv`` call that becomes this user."""
        return [
            SETPRIV,
            f"--reuid={self.uid}",
            f"--regid={self.gid}",
            "--init-groups",
            "--",
            *argv,
        ]


@dataclass(frozen=True)
class Users:
    alice: User
    bob: User
    carol: User
    mallory: User
    eve: User
    brokerclients: Group
    runtime: UserRuntime
    #: This session's world-traversable (0711) temp dir: the homes and the user venv.
    shared_root: Path
    suffix: str

    def __getitem__(self, key: str) -> User:
        if key not in USER_KEYS:
            raise KeyError(key)
        user: User = getattr(self, key)
        return user

    def all(self) -> tuple[User, ...]:
        return tuple(self[key] for key in USER_KEYS)


class _HasLog(Protocol):
    log_path: Path


# --------------------------------------------------------------------------- running as a user


def command_as(
    user: User, argv: Sequence[str], env: Mapping[str, str] | None = None
) -> tuple[list[str], dict[str, str]]:
    """(argv, env) to start ``argv`` as ``user``: for anyio.run_process / asyncio subprocesses."""
    return user.argv(argv), user.env(env)


def run_as(
    user: User,
    argv: Sequence[str],
    *,
    env: Mapping[str, str] | None = None,
    input: str | None = None,
    timeout: float = 60.0,
    cwd: Path | str | None = None,
    check: bool = False,
) -> subprocess.CompletedProcess[str]:
    """Run ``argv`` as ``user`` (real uid/gid, supplementary groups from /etc/group).

    The environment is only HOME, PATH (the user venv's ``bin`` first, so ``python``,
    ``broker`` and ``docker-credential-broker`` resolve), LANG, USER, LOGNAME and ``env``.
    The working directory defaults to the user's home. Output is captured as text.
    """
    result = subprocess.run(
        user.argv(argv),
        env=user.env(env),
        input=input,
        capture_output=True,
        text=True,
        timeout=timeout,
        cwd=str(cwd or user.home),
        stdin=subprocess.DEVNULL if input is None else None,
    )
    if check and result.returncode != 0:
        raise AssertionError(
            f"as {user.key}: {' '.join(argv)} exited {result.returncode}\n"
            f"stdout: {result.stdout}\nstderr: {result.stderr}"
        )
    return result


def popen_as(
    user: User,
    argv: Sequence[str],
    *,
    env: Mapping[str, str] | None = None,
    cwd: Path | str | None = None,
    stdin: int | IO[Any] | None = subprocess.DEVNULL,
    stdout: int | IO[Any] | None = subprocess.PIPE,
    stderr: int | IO[Any] | None = subprocess.PIPE,
) -> subprocess.Popen[str]:
    """Start ``argv`` as ``user`` and return at once (long-running clients, watches).

    Any process still running as a test user is killed at session teardown.
    """
    return subprocess.Popen(
        user.argv(argv),
        env=user.env(env),
        cwd=str(cwd or user.home),
        stdin=stdin,
        stdout=stdout,
        stderr=stderr,
        text=True,
    )


# --------------------------------------------------------------------------- shared dirs

_SHARED_LOCK = threading.Lock()
_shared_root: Path | None = None


def _temp_parents() -> list[Path]:
    """World-traversable places for the session dir, best first."""
    out: list[Path] = []
    for candidate in (tempfile.gettempdir(), "/tmp", "/var/tmp"):
        path = Path(candidate)
        with contextlib.suppress(OSError):
            if path.is_dir() and path.stat().st_mode & 0o001 and path not in out:
                out.append(path)
    return out


def _venv_site_dirs() -> list[Path]:
    paths = sysconfig.get_paths()
    dirs: list[Path] = []
    for key in ("purelib", "platlib"):
        path = Path(paths[key])
        if path.is_dir() and path not in dirs:
            dirs.append(path)
    return dirs


def _new_root() -> Path:
    """A fresh 0711 dir on the venv's filesystem (so the fallback route can hard-link)."""
    parents = _temp_parents()
    if not parents:
        raise RuntimeError("no world-traversable temp directory (/tmp, /var/tmp)")
    venv_dev = _venv_site_dirs()[0].stat().st_dev
    parent = next((p for p in parents if p.stat().st_dev == venv_dev), parents[0])
    root = Path(tempfile.mkdtemp(prefix=f"{PREFIX}{os.getpid()}-", dir=parent))
    root.chmod(0o711)
    _write_state(root, users=[], groups=[])
    atexit.register(_remove_tree, root)
    return root


def _session_root() -> Path:
    """This process's root for ``shared_tmp`` dirs, created on first use, removed at exit."""
    global _shared_root
    with _SHARED_LOCK:
        if _shared_root is None or not _shared_root.is_dir():
            _shared_root = _new_root()
        return _shared_root


def shared_tmp(
    tmp_path: Path, *, mode: int = 0o711, owner: User | None = None, name: str | None = None
) -> Path:
    """A fresh directory every test user can traverse (0711 by default; 0755 to list).

    It lives under the session's shared root (pytest's ``tmp_path`` sits below a 0700
    directory), named after ``tmp_path``; ``owner`` chowns it to a test user. It is
    removed when the session ends (``shared_dir`` removes its own at test teardown).
    """
    root = _session_root()
    base = name or tmp_path.name
    path = Path(tempfile.mkdtemp(prefix=f"{base}-", dir=root))
    if owner is not None:
        os.chown(path, owner.uid, owner.gid)
    path.chmod(mode)
    return path


@pytest.fixture(name="shared_dir")
def fixture_shared_dir(tmp_path: Path) -> Iterator[Path]:
    """A 0711 root-owned directory all test users can traverse, removed after the test."""
    path = shared_tmp(tmp_path)
    yield path
    _remove_tree(path)


# --------------------------------------------------------------------------- audit lines


def audit_events(
    daemon: _HasLog | Path, event: str | None = None, **fields: object
) -> list[dict[str, Any]]:
    """The daemon's audit lines (``"logger": "broker.audit"``) from its log file, oldest first.

    ``daemon`` is a ``tests.daemon.Daemon`` (its ``log_path``) or a log file path.
    Non-JSON lines (tracebacks, a line being written) are skipped. ``event`` and
    ``fields`` keep only lines whose keys equal those values, e.g.
    ``audit_events(d, "denied", uid=users.mallory.uid)``.
    """
    path = daemon if isinstance(daemon, Path) else daemon.log_path
    try:
        text = path.read_text(errors="replace")
    except FileNotFoundError:
        return []
    wanted: dict[str, object] = dict(fields)
    if event is not None:
        wanted["event"] = event
    out: list[dict[str, Any]] = []
    for line in text.splitlines():
        line = line.strip()
        if not line.startswith("{"):
            continue
        try:
            record = json.loads(line)
        except ValueError:
            continue
        if not isinstance(record, dict) or record.get("logger") != "broker.audit":
            continue
        if all(record.get(key) == value for key, value in wanted.items()):
            out.append(record)
    return out


def wait_for_audit(
    daemon: _HasLog | Path,
    event: str | None = None,
    *,
    count: int = 1,
    timeout: float = 5.0,
    **fields: object,
) -> list[dict[str, Any]]:
    """``audit_events`` once at least ``count`` lines match; AssertionError after ``timeout``."""
    deadline = time.monotonic() + timeout
    while True:
        found = audit_events(daemon, event, **fields)
        if len(found) >= count or time.monotonic() > deadline:
            break
        time.sleep(0.02)
    if len(found) < count:
        every = audit_events(daemon)
        raise AssertionError(
            f"expected {count} audit line(s) {event=} {fields}, found {len(found)}; "
            f"all audit lines:\n" + "\n".join(json.dumps(e) for e in every)
        )
    return found


# --------------------------------------------------------------------------- the user venv


def _check_as(user: User, argv: Sequence[str], timeout: float = 30.0) -> bool:
    try:
        result = subprocess.run(
            user.argv(argv),
            env={"PATH": DEFAULT_PATH, "LANG": "C.UTF-8", "HOME": "/"},
            cwd="/",
            capture_output=True,
            timeout=timeout,
            stdin=subprocess.DEVNULL,
        )
    except OSError:
        return False
    return result.returncode == 0


def _interpreter_for(user: User) -> str:
    """An interpreter of this Python's major.minor (same ABI) that ``user`` can start."""
    version = f"{sys.version_info.major}.{sys.version_info.minor}"
    candidates: list[str] = []
    base = getattr(sys, "_base_executable", sys.executable)
    for candidate in (
        os.path.realpath(base),
        f"/usr/bin/python{version}",
        f"/usr/local/bin/python{version}",
    ):
        if candidate not in candidates and os.path.isfile(candidate):
            candidates.append(candidate)
    # Readable, not just executable: this kernel lets a user exec a binary under the 0700
    # /root, which then runs with whatever libpython the loader finds.
    probe = (
        "import os, sys; sys.exit(not ("
        f"sys.version_info[:2] == ({version.replace('.', ', ')}) "
        "and os.access(os.path.realpath(sys.executable), os.R_OK) "
        "and os.access(os.__file__, os.R_OK)))"
    )
    for candidate in candidates:
        if _check_as(user, [candidate, "-I", "-c", probe]):
            return candidate
    raise RuntimeError(
        f"no Python {version} that an unprivileged user can run (tried {candidates}); "
        f"install Debian python{version} (/usr/bin/python{version})"
    )


def _readable_by(user: User, paths: Sequence[Path]) -> bool:
    argv = ["test"]
    for index, path in enumerate(paths):
        if index:
            argv.append("-a")
        argv += ["-r", str(path)]
    return _check_as(user, argv)


def _link_or_copy(source: str, target: str) -> None:
    try:
        os.link(source, target)
    except FileExistsError:
        pass  # listed by two distributions (a shared namespace file)
    except OSError:
        shutil.copy2(source, target)  # another filesystem


def _write_scripts(bin_dir: Path, python: Path) -> None:
    """The project's console scripts, as pip writes them, with the user venv's python."""
    for entry in importlib.metadata.distribution(DIST).entry_points:
        if entry.group != "console_scripts":
            continue
        module, _, attr = entry.value.partition(":")
        head = attr.split(".")[0]
        script = bin_dir / entry.name
        script.write_text(
            f"#!{python}\n"
            "import sys\n"
            f"from {module} import {head}\n"
            "if __name__ == '__main__':\n"
            "    sys.argv[0] = sys.argv[0].removesuffix('.exe')\n"
            f"    sys.exit({attr}())\n"
        )
        script.chmod(0o755)


def _dist_closure(
    roots: Sequence[str], sites: Sequence[Path]
) -> list[importlib.metadata.Distribution]:
    """The distributions in ``sites`` that ``roots`` need at run time (extras left out)."""
    seen: dict[str, importlib.metadata.Distribution] = {}
    todo = list(roots)
    paths = [str(p) for p in sites]
    while todo:
        name = re.sub(r"[-_.]+", "-", todo.pop()).lower()
        if name in seen:
            continue
        dist = next(iter(importlib.metadata.distributions(name=name, path=paths)), None)
        if dist is None:
            continue
        seen[name] = dist
        for requirement in dist.requires or []:
            spec, _, marker = requirement.partition(";")
            if "extra" not in marker:  # other markers: include; one package too many is harmless
                match = re.match(r"\s*([A-Za-z0-9][A-Za-z0-9._-]*)", spec)
                if match:
                    todo.append(match.group(1))
    return list(seen.values())


def _link_dists(sites: Sequence[Path], site_dir: Path) -> int:
    """Hard-link (copy across filesystems) the files of LINKED_DISTS' closure into site_dir.

    Only what those distributions' RECORD lists: the whole dev venv is ~45k files (~1-3 s to
    link and ~5 s to delete), the closure ~8k.
    """
    count = 0
    made: set[str] = set()
    for dist in _dist_closure(LINKED_DISTS, sites):
        base = Path(str(dist.locate_file(""))).resolve()
        for entry in dist.files or []:
            source = Path(str(dist.locate_file(entry)))
            relative = os.path.normpath(os.path.relpath(source, base))
            if relative.startswith("..") or os.path.basename(relative).startswith("__editable__"):
                continue  # scripts outside site-packages; pointers back at the hidden checkout
            target = os.path.join(site_dir, relative)
            parent = os.path.dirname(target)
            if parent not in made:
                os.makedirs(parent, exist_ok=True)
                made.add(parent)
            with contextlib.suppress(FileNotFoundError):  # RECORD lists a file since removed
                _link_or_copy(str(source), target)
                count += 1
    return count


def build_runtime(root: Path, probe_user: User) -> UserRuntime:
    """Make ``root/py``: a venv every user can run with the checkout and the suite's packages.

    ``probe_user`` (the least privileged one) decides what other users can read.
    """
    started = time.perf_counter()
    base_python = _interpreter_for(probe_user)
    venv = root / "py"
    version = f"python{sys.version_info.major}.{sys.version_info.minor}"
    bin_dir = venv / "bin"
    site_dir = venv / "lib" / version / "site-packages"
    bin_dir.mkdir(parents=True)
    site_dir.mkdir(parents=True)
    for name in ("python", "python3", version):
        (bin_dir / name).symlink_to(base_python)
    (venv / "pyvenv.cfg").write_text(
        f"home = {os.path.dirname(base_python)}\n"
        "include-system-site-packages = false\n"
        f"version = {sys.version_info.major}.{sys.version_info.minor}.{sys.version_info.micro}\n"
    )
    venv_sites = _venv_site_dirs()
    lines: list[str] = []
    routes: list[str] = []
    if _readable_by(probe_user, [ROOT / "broker" / "__init__.py"]):
        lines.append(str(ROOT))
    else:
        # The checkout is behind a 0700 directory (a clone under /root): snapshot broker/.
        routes.append("copied broker/")
        src = venv / "src"
        shutil.copytree(ROOT / "broker", src / "broker", symlinks=True)
        lines.append(str(src))
    if _readable_by(probe_user, venv_sites):
        lines += [f"import site; site.addsitedir({str(p)!r})" for p in venv_sites]
    else:
        routes.append(f"linked {_link_dists(venv_sites, site_dir)} files")
    route = "; ".join(routes) or "direct"
    (site_dir / "_cbt_test_users.pth").write_text("\n".join(lines) + "\n")
    python = bin_dir / "python"
    _write_scripts(bin_dir, python)
    for path in (venv, bin_dir, *site_dir.parents[:2], site_dir):
        path.chmod(0o755)
    if routes:
        # Copied directory modes follow the source; every user must list and traverse them.
        for top, dirs, _ in os.walk(venv):
            for name in dirs:
                sub = os.path.join(top, name)
                mode = os.lstat(sub).st_mode
                if mode & 0o005 != 0o005 and not os.path.islink(sub):
                    os.chmod(sub, mode | 0o555)
    runtime = UserRuntime(
        bin_dir=bin_dir,
        python=python,
        base_python=base_python,
        route=route,
        build_seconds=time.perf_counter() - started,
    )
    probe = dataclasses.replace(probe_user, runtime=runtime)
    check = run_as(probe, ["python", "-I", "-c", "import broker.helpers.client, grpc"], cwd="/")
    if check.returncode != 0:
        raise RuntimeError(f"the test users' python cannot import the project:\n{check.stderr}")
    return runtime


# --------------------------------------------------------------------------- users and groups


def _run_admin(argv: Sequence[str], ok: Sequence[int] = ()) -> subprocess.CompletedProcess[str]:
    """useradd & co., retried while another process holds the /etc/passwd lock."""
    deadline = time.monotonic() + 30
    while True:
        result = subprocess.run(list(argv), capture_output=True, text=True, timeout=60)
        if result.returncode == 0 or result.returncode in ok:
            return result
        if result.returncode not in _EXIT_LOCKED or time.monotonic() > deadline:
            raise RuntimeError(
                f"{' '.join(argv)} exited {result.returncode}: {result.stderr.strip()}"
            )
        time.sleep(0.1 + secrets.randbelow(100) / 1000)


def _process_start(pid: int) -> str | None:
    try:
        stat = Path(f"/proc/{pid}/stat").read_text()
    except OSError:
        return None
    return stat.rsplit(")", 1)[1].split()[19]  # field 22: start time in clock ticks


def _write_state(root: Path, users: Sequence[str], groups: Sequence[str]) -> None:
    state = {
        "pid": os.getpid(),
        "start": _process_start(os.getpid()),
        "users": list(users),
        "groups": list(groups),
    }
    tmp = root / f".{STATE_FILE}.tmp"
    tmp.write_text(json.dumps(state))
    tmp.replace(root / STATE_FILE)


def _user_exists(name: str) -> pwd.struct_passwd | None:
    try:
        return pwd.getpwnam(name)
    except KeyError:
        return None


def _group_exists(name: str) -> bool:
    return subprocess.run(["getent", "group", name], capture_output=True).returncode == 0


def _kill_processes_of(uids: set[int]) -> None:
    """SIGKILL every process still running as one of our test uids (started by these tests)."""
    if not uids:
        return
    deadline = time.monotonic() + 5
    while True:
        alive = []
        for entry in Path("/proc").iterdir():
            if not entry.name.isdigit():
                continue
            try:
                status = (entry / "status").read_text()
            except OSError:
                continue
            if "\nState:\tZ" in status:
                continue  # a zombie its parent has not reaped: nothing left to kill
            for line in status.splitlines():
                if line.startswith("Uid:"):
                    if any(int(value) in uids for value in line.split()[1:]):
                        alive.append(int(entry.name))
                    break
        if not alive or time.monotonic() > deadline:
            return
        for pid in alive:
            with contextlib.suppress(ProcessLookupError, PermissionError):
                os.kill(pid, signal.SIGKILL)
        time.sleep(0.05)


def _delete(users: Sequence[str], groups: Sequence[str]) -> list[str]:
    """Delete our users (only those carrying MARKER) and groups; return what is left."""
    ours = []
    for name in users:
        entry = _user_exists(name)
        if name.startswith(PREFIX) and entry is not None and entry.pw_gecos.startswith(MARKER):
            ours.append(entry)
    _kill_processes_of({entry.pw_uid for entry in ours})
    errors = []
    for entry in ours:
        try:
            # 6: no such user; -f: even if a process slipped through the kill above.
            _run_admin(["userdel", "-f", entry.pw_name], ok=(6,))
        except RuntimeError as exc:
            errors.append(str(exc))
    # userdel removes a user's own group; these are the shared ones and any leftovers.
    for name in [*users, *groups]:
        if name.startswith(PREFIX) and _group_exists(name):
            try:
                _run_admin(["groupdel", name], ok=(6,))
            except RuntimeError as exc:
                errors.append(str(exc))
    left = [n for n in users if _user_exists(n) is not None]
    left += [n for n in [*users, *groups] if n.startswith(PREFIX) and _group_exists(n)]
    return left + errors


def _remove_tree(path: Path) -> None:
    shutil.rmtree(path, ignore_errors=True)


def sweep_stale() -> list[str]:
    """Remove users, groups and dirs left by test sessions that died (kill -9) mid-run."""
    removed: list[str] = []
    for parent in _temp_parents():
        for state_path in parent.glob(f"{PREFIX}*/{STATE_FILE}"):
            try:
                if state_path.stat().st_uid != 0 or state_path.parent.stat().st_uid != 0:
                    continue
                state = json.loads(state_path.read_text())
                pid = int(state["pid"])
            except (OSError, ValueError, KeyError, TypeError):
                continue
            if _process_start(pid) == state.get("start"):
                continue  # that session is still running
            users = [u for u in state.get("users", []) if str(u).startswith(PREFIX)]
            groups = [g for g in state.get("groups", []) if str(g).startswith(PREFIX)]
            _delete(users, groups)
            _remove_tree(state_path.parent)
            removed += [*users, *groups, str(state_path.parent)]
    return removed


@contextlib.contextmanager
def user_session() -> Iterator[Users]:
    """Create the groups, users, homes and user venv; delete all of it on exit.

    The ``users`` fixture wraps this once per session; use it directly only to
    test the machinery itself.
    """
    if os.geteuid() != 0:
        pytest.fail("real-user tests need root (CI runs as root): useradd/groupadd/setpriv")
    sweep_stale()
    root = _new_root()
    suffix = secrets.token_hex(2)
    group_name = f"{PREFIX}brokerclients-{suffix}"
    names = {key: f"{PREFIX}{key}-{suffix}" for key in USER_KEYS}
    # Recorded before anything is created, so a killed session is swept next time.
    _write_state(root, users=list(names.values()), groups=[group_name])
    shell = "/usr/sbin/nologin" if os.path.exists("/usr/sbin/nologin") else "/bin/false"
    try:
        _run_admin(["groupadd", "--system", group_name])
        group = Group("brokerclients", group_name, grp.getgrnam(group_name).gr_gid)
        homes = root / "home"
        homes.mkdir(mode=0o711)
        homes.chmod(0o711)
        made: dict[str, User] = {}
        placeholder = UserRuntime(Path("/nonexistent"), Path("/nonexistent"), "", "", 0.0)
        for key, name in names.items():
            home = homes / key
            argv = [
                "useradd",
                "--system",
                "--no-create-home",
                "--home-dir",
                str(home),
                "--shell",
                shell,
                "--user-group",
                "--comment",
                f"{MARKER} (pid {os.getpid()})",
            ]
            if key in SOCKET_GROUP_MEMBERS:
                argv += ["--groups", group_name]
            _run_admin([*argv, name])
            entry = pwd.getpwnam(name)
            home.mkdir()
            os.chown(home, entry.pw_uid, entry.pw_gid)
            home.chmod(0o755)
            supplementary = (group.gid,) if key in SOCKET_GROUP_MEMBERS else ()
            made[key] = User(
                key, name, entry.pw_uid, entry.pw_gid, supplementary, home, placeholder
            )
        runtime = build_runtime(root, made["eve"])
        final = {key: dataclasses.replace(user, runtime=runtime) for key, user in made.items()}
        yield Users(
            alice=final["alice"],
            bob=final["bob"],
            carol=final["carol"],
            mallory=final["mallory"],
            eve=final["eve"],
            brokerclients=group,
            runtime=runtime,
            shared_root=root,
            suffix=suffix,
        )
    finally:
        left = _delete(list(names.values()), [group_name])
        _remove_tree(root)
        if left:
            raise RuntimeError(f"test users/groups left behind: {left}")


# One session per process even when several test modules import the fixture (each
# import is its own FixtureDef, so pytest would otherwise build it once per module).
_ACTIVE: list[Any] = []  # [contextmanager, Users, refcount]


@pytest.fixture(scope="session", name="users")
def fixture_users() -> Iterator[Users]:
    """The five test users and the brokerclients group, deleted at session end."""
    if _ACTIVE:
        _ACTIVE[2] += 1
    else:
        manager = user_session()
        value = manager.__enter__()
        _ACTIVE[:] = [manager, value, 1]
    try:
        yield _ACTIVE[1]
    finally:
        _ACTIVE[2] -= 1
        if _ACTIVE[2] == 0:
            manager = _ACTIVE[0]
            _ACTIVE.clear()
            manager.__exit__(None, None, None)


def _exit_cleanup() -> None:
    """Last resort if pytest exits without tearing the session fixture down."""
    if _ACTIVE:
        manager = _ACTIVE[0]
        _ACTIVE.clear()
        with contextlib.suppress(Exception):
            manager.__exit__(None, None, None)


atexit.register(_exit_cleanup)
