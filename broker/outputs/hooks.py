"""The hooks run after an output file changed: ``on_change`` (an argv, no shell, bounded
by a timeout) and ``signal`` (to the pid in ``pid_file``). Each returns None on success,
else why not, naming only the program and its status (never its output or a secret)."""

from __future__ import annotations

import os
import signal as signals
from pathlib import Path

import anyio

from broker.outputs.settings import OutputSpec

#: What on_change programs inherit from the daemon's environment: nothing that may hold a
#: secret (the store key, PGPASSWORD, the daemon's own cloud identity), only the basics.
HOOK_ENV_NAMES = frozenset({"PATH", "HOME", "LANG", "LANGUAGE", "TZ", "USER", "LOGNAME", "TMPDIR"})


def hook_environment(env: dict[str, str]) -> dict[str, str]:
    return {k: v for k, v in env.items() if k in HOOK_ENV_NAMES or k.startswith("LC_")}


async def run_on_change(spec: OutputSpec, base_env: dict[str, str]) -> str | None:
    """None when it exited 0 in time; else why not (argv[0] and status only)."""
    env = {
        **base_env,
        "BROKER_OUTPUT_PATH": str(spec.path),
        "BROKER_OUTPUT_INDEX": str(spec.index),
        "BROKER_OUTPUT_FORMAT": spec.format,
    }
    try:
        process = await anyio.open_process(
            list(spec.on_change), stdin=None, stdout=None, stderr=None, env=env
        )
    except OSError as exc:
        return f"'{spec.on_change[0]}' could not start: {exc.strerror or exc}"
    async with process:
        with anyio.move_on_after(spec.on_change_timeout_seconds):
            code = await process.wait()
            return None if code == 0 else f"'{spec.on_change[0]}' exited with {code}"
        process.kill()
        with anyio.CancelScope(shield=True):
            await process.wait()
        return f"'{spec.on_change[0]}' timed out after {spec.on_change_timeout_seconds:g}s"


def send_signal(pid_file: Path, sig: signals.Signals) -> str | None:
    try:
        text = pid_file.read_text().strip()
    except OSError as exc:
        return f"cannot read pid_file {pid_file}: {exc.strerror}"
    if not text.isdigit() or int(text) <= 1:
        return f"pid_file {pid_file} holds no process id"
    try:
        os.kill(int(text), sig)
    except OSError as exc:
        return f"cannot send {sig.name} to pid {text}: {exc.strerror}"
    return None
