"""File outputs: time from a renewal to the file written and to on_change started.

The real daemon (subprocess) keeps one ``[[outputs]]`` json file for a
``bench-fake`` resource whose fake upstream mints 1.2-second tokens, so the
cache renews every ~0.2 s; ``on_change`` is ``touch MARKER``. Over
``BENCH_OUTPUT_RENEWALS`` (100) renewals:

* renewal: the moment the fake upstream answered the mint (recorded in its
  thread of this process, per token);
* file written: inotify ``IN_MOVED_TO`` of the output file (the rename), read
  by a thread of this process blocked on the inotify descriptor;
* on_change started: inotify ``IN_ATTRIB`` of the marker ``touch`` updates.

Baseline in the same run, paired: after each renewal's hook, this process does
one bare atomic write (temp file, write, fsync, rename, fsync dir) of the same
size into a sibling directory and spawns the same ``touch`` with
``subprocess.Popen``, timed by the same kind of inotify reader, so both see the
same load.
What the daemon adds is the hub hand-over, rendering, a worker thread for the
blocking writes, owner/mode calls and its asyncio process spawn.
"""

from __future__ import annotations

import ctypes
import json
import os
import select
import struct
import subprocess
import tempfile
import threading
import time
from pathlib import Path
from typing import Any

from common import percentile, table
from fakeprovider import plugin_env
from fakeprovider.upstream import FakeUpstream

from tests.daemon import running_daemon

RENEWALS = int(os.environ.get("BENCH_OUTPUT_RENEWALS", "100"))
LIFETIME = 1.2
RESOURCE = "out-bench"

IN_ATTRIB, IN_MOVED_TO, IN_CREATE = 0x4, 0x80, 0x100
_EVENT = struct.Struct("iIII")


class TimedUpstream(FakeUpstream):
    """The fake upstream, noting when it answered each token."""

    def __init__(self, **kw: Any) -> None:
        super().__init__(**kw)
        self.answered: dict[str, float] = {}

    async def _mint(self, request: Any) -> Any:
        response = await super()._mint(request)
        body = json.loads(response.body)
        if "token" in body:
            self.answered[body["token"]] = time.time()
        return response


class Inotify(threading.Thread):
    """Times renames of ``target`` (with the token it then holds) and touches of ``marker``."""

    def __init__(self, directory: Path, target: str, marker: str) -> None:
        super().__init__(daemon=True)
        libc = ctypes.CDLL("libc.so.6", use_errno=True)
        self.fd = libc.inotify_init1(os.O_CLOEXEC)
        if (
            self.fd < 0
            or libc.inotify_add_watch(
                self.fd, str(directory).encode(), IN_ATTRIB | IN_MOVED_TO | IN_CREATE
            )
            < 0
        ):
            raise OSError(ctypes.get_errno(), "inotify")
        self.directory, self.target, self.marker = directory, target, marker
        self.written: dict[str, float] = {}
        self.hooked: dict[str, float] = {}
        self.current: str | None = None
        self.stop = threading.Event()

    def run(self) -> None:
        while not self.stop.is_set():
            ready, _, _ = select.select([self.fd], [], [], 0.1)
            if not ready:
                continue
            data = os.read(self.fd, 65536)
            now = time.time()
            offset = 0
            while offset < len(data):
                _wd, mask, _cookie, length = _EVENT.unpack_from(data, offset)
                name = data[offset + 16 : offset + 16 + length].rstrip(b"\0").decode()
                offset += 16 + length
                if name == self.target and mask & IN_MOVED_TO:
                    token = self._token()
                    if token is not None and token not in self.written:
                        self.written[token] = now
                        self.current = token
                elif (
                    name == self.marker
                    and mask & (IN_ATTRIB | IN_CREATE)
                    and self.current is not None
                    and self.current not in self.hooked
                ):
                    self.hooked[self.current] = now

    def _token(self) -> str | None:
        try:
            token: str = json.loads((self.directory / self.target).read_bytes())["config"]["token"]
        except (OSError, ValueError, KeyError):
            return None
        return token

    def close(self) -> None:
        self.stop.set()
        self.join(5)
        os.close(self.fd)


def bare_write(path: Path, data: bytes) -> None:
    fd, temp = tempfile.mkstemp(dir=path.parent, prefix=f".{path.name}.")
    try:
        os.write(fd, data)
        os.fsync(fd)
    finally:
        os.close(fd)
    os.replace(temp, path)
    dfd = os.open(path.parent, os.O_RDONLY | os.O_DIRECTORY)
    try:
        os.fsync(dfd)
    finally:
        os.close(dfd)


class Baseline:
    """The same work done bare, one sample at a time, between the daemon's renewals."""

    def __init__(self, tmp: Path) -> None:
        self.out = tmp / "base"
        self.out.mkdir()
        self.marker = self.out / "hook-marker"
        self.marker.touch()
        self.watcher = Inotify(self.out, "cred.json", self.marker.name)
        self.watcher.start()
        self.started: dict[str, float] = {}

    def sample(self) -> None:
        token = f"tok-base-{len(self.started)}"
        data = json.dumps({"config": {"token": token}, "pad": "x" * 400}, indent=2).encode()
        self.started[token] = time.time()
        bare_write(self.out / "cred.json", data)
        subprocess.Popen(["touch", str(self.marker)]).wait()

    def results(self) -> tuple[list[float], list[float]]:
        time.sleep(0.3)
        self.watcher.close()
        w, h = self.watcher.written, self.watcher.hooked
        written = [(w[t] - s) * 1000 for t, s in self.started.items() if t in w]
        hooked = [(h[t] - s) * 1000 for t, s in self.started.items() if t in h]
        return written, hooked


def paired_run(tmp: Path) -> tuple[list[float], list[float], int, Baseline]:
    """The daemon's renewals, each followed (once its hook ran, well before the next
    renewal) by one baseline sample: both see the same load."""
    out = tmp / "out"
    out.mkdir()
    marker = out / "hook-marker"
    marker.touch()
    config = tmp / "broker.toml"
    config.write_text(
        "[[outputs]]\nconnector = 'fake'\n"
        f"resource_id = '{RESOURCE}'\nformat = 'json'\npath = '{out / 'cred.json'}'\n"
        f"on_change = ['touch', '{marker}']\n"
    )
    watcher = Inotify(out, "cred.json", marker.name)
    watcher.start()
    baseline = Baseline(tmp)
    lifetime = {RESOURCE: LIFETIME}
    with (
        TimedUpstream(lifetime=lifetime.get) as upstream,
        running_daemon(tmp / "data", "--config", str(config), env=plugin_env()) as daemon,
    ):
        daemon.cli(
            "connector", "register", "fake", "--type", "bench-fake",
            f"url={upstream.url}", f"token={upstream.token}",
            "--resource-type", "bench-resource", "--no-verify",
        )  # fmt: skip
        deadline = time.monotonic() + RENEWALS * LIFETIME + 60
        seen = 0
        while len(watcher.hooked) < RENEWALS + 2 and time.monotonic() < deadline:
            if len(watcher.hooked) > seen:
                seen = len(watcher.hooked)
                time.sleep(0.02)  # let the daemon settle after its hook
                baseline.sample()
            time.sleep(0.005)
        listed = daemon.cli_json("outputs", "list")
    watcher.close()
    tokens = [t for t in watcher.written if t in upstream.answered][1 : RENEWALS + 1]
    written = [(watcher.written[t] - upstream.answered[t]) * 1000 for t in tokens]
    hooked = [
        (watcher.hooked[t] - upstream.answered[t]) * 1000 for t in tokens if t in watcher.hooked
    ]
    assert listed[0]["last_error"] is None, listed
    return written, hooked, len(tokens), baseline


def main() -> None:
    with tempfile.TemporaryDirectory() as d:
        tmp = Path(d)
        written, hooked, renewals, baseline = paired_run(tmp)
        base_written, base_hooked = baseline.results()
    rows = []
    for name, ours, base in (
        ("renewal -> file written", written, base_written),
        ("renewal -> on_change started", hooked, base_hooked),
    ):
        p50, p99 = percentile(ours, 50), percentile(ours, 99)
        b50, b99 = percentile(base, 50), percentile(base, 99)
        rows.append(
            (
                name,
                len(ours),
                f"{p50:.1f}",
                f"{p99:.1f}",
                f"{b50:.1f}",
                f"{b99:.1f}",
                f"{p50 / b50:.1f}x",
            )
        )
    print(f"File outputs: {renewals} renewals of a 1.2 s credential, json output, on_change touch")
    print(
        table(
            ["", "n", "p50 ms", "p99 ms", "baseline p50", "baseline p99", "p50 / baseline"],
            rows,
        )
    )
    print(
        "baseline: bare temp+write+fsync+rename+fsync dir, then Popen(touch), one sample "
        "after each renewal's hook (same load)"
    )


if __name__ == "__main__":
    main()
