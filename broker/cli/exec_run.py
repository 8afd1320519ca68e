"""`broker exec NAME [options] -- CMD ARGS...`: run CMD with credentials, then clean up.

The child gets what :mod:`broker.cli.exec_env` prepares; stdin, stdout and stderr
are its own (inherited, never piped). This process only waits:

- every signal it passes on is blocked and taken with ``sigwaitinfo``, so no
  handler races the child's exit. A signal another process sent (``kill``) is
  forwarded to the child; one the terminal sent (Ctrl-C: ``si_code`` SI_KERNEL)
  already reached the child, which shares our process group, and is not sent twice;
- when the child exits, the grant is revoked and the temp files removed, and its
  exit status is ours (128+N for death by signal N, as a shell reports it), also
  when it was SIGKILLed or when we were asked to stop (SIGTERM/SIGINT are forwarded,
  then we wait for it);
- ``--env-only --restart-on-change``: a thread watches the credential
  (WatchCredentials); a renewal is delivered at the daemon's renew point, before the
  old credential enters its margin, and the child is stopped (``--stop-signal``,
  SIGKILL after ``--stop-grace`` seconds) and started again with the new variables,
  as Vault Agent's supervisor mode does.

Parsed here rather than by click: everything after NAME's options is the child's,
and the fast path (no typer, no grpcio unless watching) keeps the start-up cost low.
"""

from __future__ import annotations

import contextlib
import os
import signal
import sys
import threading
from pathlib import Path
from typing import Any

from broker.cli import exec_env
from broker.errors import BrokerError, InvalidArgument

USAGE = (
    "Usage: broker exec NAME [--resource-type R] [--resource-id ID] [--env-only] "
    "[--restart-on-change [--stop-signal SIG] [--stop-grace SECONDS]] [--ttl TTL] "
    "[--socket PATH] -- CMD [ARGS]..."
)
#: Signals forwarded to the child when another process sends them to us.
FORWARDED = (
    signal.SIGINT,
    signal.SIGTERM,
    signal.SIGHUP,
    signal.SIGQUIT,
    signal.SIGUSR1,
    signal.SIGUSR2,
    signal.SIGWINCH,
)
#: The watch thread's wake-up call to the main thread (never forwarded).
WAKE = signal.SIGRTMIN + 1
WAITED = (*FORWARDED, signal.SIGCHLD, WAKE)
#: si_code of a signal the kernel sent (a terminal's Ctrl-C / Ctrl-\\ / resize).
SI_KERNEL = 0x80
DEFAULT_STOP_GRACE = 10.0

_VALUE_OPTIONS = {
    "--resource-type": "resource_type",
    "-r": "resource_type",
    "--resource-id": "resource_id",
    "-i": "resource_id",
    "--stop-signal": "stop_signal",
    "--stop-grace": "stop_grace",
    "--ttl": "ttl",
    "--socket": "socket",
}
_FLAGS = {"--env-only": "env_only", "--restart-on-change": "restart_on_change"}


class Options:
    """What `broker exec` was asked for (checked by :func:`build`)."""

    def __init__(
        self,
        name: str,
        command: list[str],
        *,
        resource_type: str | None = None,
        resource_id: str | None = None,
        env_only: bool = False,
        restart_on_change: bool = False,
        stop_signal: signal.Signals = signal.SIGTERM,
        stop_grace: float = DEFAULT_STOP_GRACE,
        ttl: str | None = None,
        socket: Path | None = None,
    ) -> None:
        self.name = name
        self.command = command
        self.resource_type = resource_type
        self.resource_id = resource_id
        self.env_only = env_only
        self.restart_on_change = restart_on_change
        self.stop_signal = stop_signal
        self.stop_grace = stop_grace
        self.ttl = ttl
        self.socket = socket


def parse_signal(text: str) -> signal.Signals:
    """SIGTERM, TERM, term or 15."""
    value = text.strip().upper()
    try:
        if value.isdigit():
            return signal.Signals(int(value))
        return signal.Signals[value if value.startswith("SIG") else "SIG" + value]
    except (KeyError, ValueError):
        raise InvalidArgument(
            f"--stop-signal '{text}' is not a signal name or number (e.g. SIGTERM, INT, 1)",
            field="stop_signal",
        ) from None


def parse(argv: list[str]) -> Options | None:
    """The options, or None when help was asked for (typer prints it)."""
    values: dict[str, Any] = {}
    args = iter(argv)
    name: str | None = None
    command: list[str] = []
    for item in args:
        if item == "--":
            command = list(args)
            break
        if item in ("--help", "-h"):
            return None
        if item.startswith("-") and item != "-":
            flag, eq, attached = item.partition("=")
            if flag in _FLAGS and not eq:
                values[_FLAGS[flag]] = True
                continue
            if flag not in _VALUE_OPTIONS:
                raise InvalidArgument(f"broker exec: no such option {flag}\n{USAGE}", field=flag)
            value = attached if eq else next(args, None)
            if value is None:
                raise InvalidArgument(f"broker exec: option {flag} needs a value", field=flag)
            values[_VALUE_OPTIONS[flag]] = value
            continue
        if name is None:
            name = item
            continue
        command = [item, *args]  # the command starts at the first word after NAME
        break
    if name is None or not command:
        raise InvalidArgument(
            f"broker exec: {'NAME' if name is None else 'CMD'} is missing\n{USAGE}",
            field="command" if name else "name",
        )
    return build(name, command, **values)


def build(
    name: str,
    command: list[str],
    *,
    resource_type: str | None = None,
    resource_id: str | None = None,
    env_only: bool = False,
    restart_on_change: bool = False,
    stop_signal: str | None = None,
    stop_grace: str | float | None = None,
    ttl: str | None = None,
    socket: str | Path | None = None,
) -> Options:
    """Options checked: each problem names its option."""
    if not command:
        raise InvalidArgument(f"broker exec: CMD is missing\n{USAGE}", field="command")
    if restart_on_change and not env_only:
        raise InvalidArgument(
            "--restart-on-change needs --env-only: the default endpoints hand each "
            "renewal to the SDK themselves, nothing needs restarting",
            field="restart_on_change",
        )
    if (stop_signal is not None or stop_grace is not None) and not restart_on_change:
        raise InvalidArgument(
            "--stop-signal / --stop-grace apply with --restart-on-change only",
            field="stop_signal",
        )
    grace = DEFAULT_STOP_GRACE
    if stop_grace is not None:
        try:
            grace = float(stop_grace)
        except ValueError:
            grace = -1.0
        if not 0 <= grace <= 3600:
            raise InvalidArgument(
                f"--stop-grace '{stop_grace}' must be seconds between 0 and 3600",
                field="stop_grace",
            )
    if ttl is not None and not env_only:
        from broker.cli.env import parse_ttl  # only then: it loads typer

        parse_ttl(ttl)
    elif ttl is not None:
        raise InvalidArgument("--ttl applies to the default endpoints only", field="ttl")
    return Options(
        name=name,
        command=command,
        resource_type=resource_type,
        resource_id=resource_id,
        env_only=env_only,
        restart_on_change=restart_on_change,
        stop_signal=parse_signal(stop_signal) if stop_signal else signal.SIGTERM,
        stop_grace=grace,
        ttl=ttl,
        socket=Path(socket) if socket is not None else None,
    )


# -- set-up and tear-down on the daemon ------------------------------------------------


def prepare(opts: Options) -> exec_env.Prepared:
    """One connection: find the connector, then grant / fetch what the child needs."""
    from broker.cli.fast import call

    temp: list[Path] = []
    granted: list[exec_env.Prepared] = []

    def temp_dir() -> Path:
        if not temp:  # once: a retry over grpcio reuses it
            temp.append(exec_env.make_temp_dir())
        return temp[0]

    def work(stub: Any, _health: Any) -> exec_env.Prepared:
        connector = exec_env.connector_of(stub, opts.name)
        resource_type = exec_env.choose_resource_type(connector, opts.resource_type)
        if opts.env_only:
            return exec_env.static(stub, opts.name, resource_type, opts.resource_id, temp_dir())
        if resource_type == exec_env.KUBERNETES:
            return exec_env.kubeconfig_exec(stub, opts.name, opts.resource_id, temp_dir())
        if resource_type == exec_env.DOCKER:
            return exec_env.docker_helper_config(stub, opts.name, opts.resource_id, temp_dir())
        if connector.connector_type in ("aws", "gcp"):
            ttl = 0 if opts.ttl is None else _ttl_seconds(opts.ttl)
            made = exec_env.grant(
                stub, connector.connector_type, opts.name, resource_type, opts.resource_id, ttl
            )
            granted.append(made)
            return made
        raise InvalidArgument(
            f"connector '{opts.name}' ({connector.connector_type}, {resource_type}) has no "
            "auto-refreshing endpoint: use --env-only for its credential as variables",
            field="connector",
        )

    try:
        return call(opts.socket, work)
    except BaseException:  # stopped (SIGTERM, Ctrl-C) or failed after a grant was made
        for path in temp:
            exec_env.remove_temp_dir(exec_env.Prepared("", "", "", temp_dir=path))
        for made in granted:
            cleanup(opts, made)
        raise


def _ttl_seconds(text: str) -> int:
    from broker.cli.env import parse_ttl

    return parse_ttl(text)


def cleanup(opts: Options, prepared: exec_env.Prepared) -> None:
    """Revoke the grant and remove the temp files; a failure is said, never raised
    (the child's exit status is what we report)."""
    exec_env.remove_temp_dir(prepared)
    if prepared.grant_id is None:
        return
    from broker.cli.fast import call

    grant_id = prepared.grant_id
    try:
        call(opts.socket, lambda stub, _h: exec_env.revoke(stub, grant_id))
    except BrokerError as exc:
        print(
            f"broker exec: could not revoke grant {grant_id}: {exc.message} "
            f"(revoke it with `broker env revoke {grant_id}`)",
            file=sys.stderr,
        )


# -- the child ------------------------------------------------------------------------


def spawn(command: list[str], env: dict[str, str]) -> int:
    """The child, with our stdio and an empty signal mask. Dispositions as we inherited
    them, as a shell's ``exec`` leaves them: exec resets the handlers we installed, keeps
    what was ignored (``nohup``, a background job's SIGINT); only the two Python itself
    ignores go back to default (as subprocess's restore_signals does)."""
    try:
        return os.posix_spawnp(
            command[0],
            command,
            env,
            setsigmask=(),
            setsigdef=(signal.SIGPIPE, signal.SIGXFSZ),
        )
    except FileNotFoundError:
        raise CommandFailed(127, f"broker exec: {command[0]}: command not found") from None
    except PermissionError:
        raise CommandFailed(126, f"broker exec: {command[0]}: permission denied") from None
    except OSError as exc:
        raise CommandFailed(126, f"broker exec: {command[0]}: {exc.strerror}") from None


class CommandFailed(Exception):
    """The command could not be started: the shell's 127 (not found) / 126."""

    def __init__(self, code: int, message: str) -> None:
        super().__init__(message)
        self.code = code
        self.message = message


def exit_code(status: int) -> int:
    code = os.waitstatus_to_exitcode(status)
    return 128 - code if code < 0 else code


def reap(pid: int) -> int | None:
    """The child's exit code if it has exited (other children are not ours to reap)."""
    try:
        done, status = os.waitpid(pid, os.WNOHANG)
    except ChildProcessError:
        return 0
    return exit_code(status) if done == pid else None


def _forward(pid: int, info: Any) -> None:
    if info.si_code == SI_KERNEL:
        return  # from the terminal: the child, in our process group, has it already
    with contextlib.suppress(ProcessLookupError):
        os.kill(pid, info.si_signo)


def supervise(opts: Options, prepared: exec_env.Prepared, watcher: Any) -> int:
    """Wait for the child, forwarding signals and restarting on a changed credential."""
    if watcher is not None:
        watcher.start(threading.get_ident())
    env = prepared.environment(dict(os.environ))
    pid = spawn(opts.command, env)
    stopping = False
    while True:
        info = signal.sigwaitinfo(WAITED)
        if info.si_signo == signal.SIGCHLD:
            code = reap(pid)
            if code is not None:
                return code
        elif info.si_signo == WAKE:
            fresh = watcher.take() if watcher is not None else None
            if fresh is None or stopping:
                continue
            code = stop(pid, opts.stop_signal, opts.stop_grace)
            if code is None:  # asked to stop meanwhile: the child's status is ours
                return reap_blocking(pid)
            prepared = exec_env.static_from(opts.name, fresh, prepared.temp_dir or Path())
            env = prepared.environment(dict(os.environ))
            pid = spawn(opts.command, env)
        else:
            if info.si_signo in (signal.SIGTERM, signal.SIGINT):
                stopping = True
            _forward(pid, info)


def reap_blocking(pid: int) -> int:
    try:
        _, status = os.waitpid(pid, 0)
    except ChildProcessError:
        return 0
    return exit_code(status)


def stop(pid: int, sig: signal.Signals, grace: float) -> int | None:
    """Stop the child for a restart: ``sig``, then SIGKILL after ``grace`` seconds.

    Returns its code, or None if we were told to stop meanwhile (the signal was
    forwarded; the caller waits for the child and exits)."""
    import time

    with contextlib.suppress(ProcessLookupError):
        os.kill(pid, sig)
    deadline = time.monotonic() + grace
    killed = False
    while True:
        code = reap(pid)
        if code is not None:
            return code
        left = deadline - time.monotonic()
        if left <= 0 and not killed:
            os.kill(pid, signal.SIGKILL)
            killed = True
        info = signal.sigtimedwait(WAITED, max(left, 0.05) if not killed else 1.0)
        if info is None or info.si_signo in (signal.SIGCHLD, WAKE):
            continue
        _forward(pid, info)
        if info.si_signo in (signal.SIGTERM, signal.SIGINT):
            return None


def _stopped(signum: int, _frame: Any) -> None:
    raise SystemExit(128 + signum)


def run(opts: Options) -> int:
    """Prepare, run the child to its end, clean up; the child's exit code."""
    # Until the child runs, SIGTERM stops us as Ctrl-C does: what was made is undone.
    previous = signal.signal(signal.SIGTERM, _stopped)
    try:
        prepared = prepare(opts)
    finally:
        signal.pthread_sigmask(signal.SIG_BLOCK, WAITED)  # from here on: sigwaitinfo
        signal.signal(signal.SIGTERM, previous)
    try:
        watcher = None
        if opts.restart_on_change and prepared.credential is not None:
            from broker.cli.exec_watch import Watcher

            watcher = Watcher(opts, prepared.credential)
        try:
            return supervise(opts, prepared, watcher)
        finally:
            if watcher is not None:
                watcher.close()
    except CommandFailed as exc:
        print(exc.message, file=sys.stderr)
        return exc.code
    finally:
        cleanup(opts, prepared)


def main(argv: list[str]) -> bool:
    """``broker exec ...`` from the fast path; False: let typer answer (``--help``)."""
    try:
        opts = parse(argv)
        if opts is None:
            return False
        code = run(opts)
    except BrokerError as exc:
        print(f"error: {exc.message}", file=sys.stderr)
        code = 1
    except KeyboardInterrupt:
        code = 130
    sys.stdout.flush()
    os._exit(code) if _threads_left() else sys.exit(code)
    return True


def _threads_left() -> bool:
    """grpcio's threads (the watch) can hold up a normal exit; the child is gone and
    everything is cleaned up by now, so leave at once then."""
    return threading.active_count() > 1
