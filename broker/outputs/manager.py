"""Outputs: each configured file kept current with its credential, for programs that only
read files.

One :class:`OutputRunner` per ``[[outputs]]`` table watches its credential the
way a ``WatchCredentials`` client does (the cache's hub: the first credential,
every renewal however caused, connector updates), as the daemon's own user, so
the admin's config is the access decision and each issue is audited like any
other. Two tasks per output keep watching and writing apart: the watcher only
stores the newest credential (a latest-value slot, like a subscription), the
writer renders, compares, writes atomically and runs the hooks, and on failure
retries with backoff, sooner if a newer credential arrives. A failure is
logged without secrets, counted, shown by ``broker outputs list`` and ``broker
status``; it never touches another output or the renewal of anything.
"""

from __future__ import annotations

import contextlib
import os
import random
from collections.abc import AsyncIterator, Callable, Sequence
from dataclasses import dataclass, field
from datetime import datetime
from typing import Any, Protocol

import anyio
import structlog
from anyio.abc import TaskStatus

from broker.app.values import Issued, IssuedEvent
from broker.cache import policy
from broker.clock import Clock
from broker.errors import BrokerError
from broker.identity.principal import Principal, unix_principal
from broker.model import ClientCredential
from broker.outputs.formats import render
from broker.outputs.hooks import hook_environment, run_on_change, send_signal
from broker.outputs.settings import OutputSpec
from broker.outputs.writer import current_digest, digest, fix_ownership, write_atomic

log = structlog.get_logger(__name__)

#: First wait after a failed write or hook; doubles up to the cap (with +-20 % jitter).
RETRY_BASE_SECONDS = 1.0
#: Never wait longer between retries: a fixed path is noticed within a minute.
RETRY_CAP_SECONDS = 60.0
#: After the watch itself fails (connector deleted, access refused), wait this long at least.
REWATCH_BASE_SECONDS = 1.0


class Watch(Protocol):
    def __call__(
        self,
        name: str,
        resource_type: str | None = None,
        resource_id: str | None = None,
        *,
        principal: Principal,
    ) -> AsyncIterator[IssuedEvent]: ...


@dataclass
class OutputState:
    """What ``broker outputs list`` shows about one output (never a secret)."""

    spec: OutputSpec
    last_write: datetime | None = None
    #: When the file's credential will be renewed, about (the cache jitters it +-10 %).
    next_renewal: datetime | None = None
    #: When the file's credential enters its margin: the next file must be there before.
    margin_at: datetime | None = None
    expires_at: datetime | None = None
    last_error: str | None = None
    last_error_at: datetime | None = None
    writes: int = 0
    write_failures: int = 0
    hook_runs: int = 0
    hook_failures: int = 0
    #: Seconds the last rewrite happened before the previous credential's margin (<0: late).
    last_lead_seconds: float | None = None


@dataclass
class _Counters:
    writes: int = 0
    write_failures: int = 0
    hook_runs: int = 0
    hook_failures: int = 0
    late_writes: int = 0
    unchanged: int = 0


class OutputRunner:
    """Keeps one file current; :meth:`run` until cancelled."""

    def __init__(
        self,
        spec: OutputSpec,
        watch: Watch,
        clock: Clock,
        counters: _Counters,
        env: dict[str, str],
    ) -> None:
        self.spec = spec
        self.state = OutputState(spec)
        self._watch = watch
        self._clock = clock
        self._counters = counters
        self._env = env
        self._latest: Issued | None = None
        self._fresh = anyio.Event()
        #: Digest of the bytes in the file / of the bytes the hooks last ran for.
        self._written: str | None = None
        self._hooked: str | None = None
        self._previous: ClientCredential | None = None
        #: When the newest credential reached this output (from the cache's hub).
        self._arrived: datetime | None = None
        self._rng = random.Random()  # noqa: S311 - retry jitter, not a secret
        self.principal = unix_principal(
            os.getuid(), os.getgid(), os.getpid(), via=f"output {spec.where}"
        )

    async def run(self, *, task_status: TaskStatus[None] = anyio.TASK_STATUS_IGNORED) -> None:
        # A restart finding the very file it would write: no write and no hook.
        self._written = self._hooked = await anyio.to_thread.run_sync(self._adopt)
        async with anyio.create_task_group() as tg:
            tg.start_soon(self._watching)
            task_status.started()
            await self._writing()

    def _adopt(self) -> str | None:
        """The digest of the file already there, with owner and mode made as configured
        (None: missing, a symlink, or not fixable: it gets written afresh)."""
        spec = self.spec
        existing = current_digest(spec.path)
        if existing is not None:
            try:
                fix_ownership(spec.path, mode=spec.mode, uid=spec.uid, gid=spec.gid)
            except OSError:
                return None
        return existing

    # -- watching -------------------------------------------------------------------
    async def _watching(self) -> None:
        spec, attempt = self.spec, 0
        while True:
            try:
                stream = self._watch(
                    spec.connector, spec.resource_type, spec.resource_id, principal=self.principal
                )
                async with contextlib.aclosing(stream):  # type: ignore[type-var]
                    async for event in stream:
                        if event.issued is not None:
                            attempt = 0
                            self._offer(event.issued)
                        elif event.kind == "error":
                            self._failed(f"renewal failed: {event.error}")
                        elif event.kind == "deleted":
                            self._failed(f"connector '{spec.connector}' was deleted")
                            break
            except BrokerError as exc:
                self._failed(exc.message)
            except Exception as exc:  # never the daemon's end: this output waits and retries
                self._failed(f"watch failed unexpectedly ({type(exc).__name__})")
            attempt += 1
            await self._clock.sleep(self._delay(attempt, REWATCH_BASE_SECONDS))

    def _offer(self, issued: Issued) -> None:
        self._latest = issued
        self._arrived = self._clock.now()
        self._fresh.set()

    # -- writing --------------------------------------------------------------------
    async def _writing(self) -> None:
        attempt = 0
        while True:
            await self._fresh.wait()
            self._fresh = anyio.Event()
            issued = self._latest
            assert issued is not None
            if await self._apply_guarded(issued):
                attempt = 0
                continue
            attempt += 1
            await self._wait_or_fresh(self._delay(attempt, RETRY_BASE_SECONDS))
            if not self._fresh.is_set():  # nothing newer: try the same credential again
                self._fresh.set()

    async def _wait_or_fresh(self, seconds: float) -> None:
        async with anyio.create_task_group() as tg:

            async def sleeper() -> None:
                await self._clock.sleep(seconds)
                tg.cancel_scope.cancel()

            async def waiter() -> None:
                await self._fresh.wait()
                tg.cancel_scope.cancel()

            tg.start_soon(sleeper)
            tg.start_soon(waiter)

    def _delay(self, attempt: int, base: float) -> float:
        ceiling = min(RETRY_CAP_SECONDS, base * 2.0 ** min(attempt - 1, 16))
        return ceiling * self._rng.uniform(0.8, 1.2)

    async def _apply_guarded(self, issued: Issued) -> bool:
        try:
            return await self._apply(issued)
        except Exception as exc:  # a bug must not end the daemon or other outputs
            self._failed(f"unexpected {type(exc).__name__}", write=True)
            return False

    async def _apply(self, issued: Issued) -> bool:
        """Write the file if its bytes change, then the hooks if they have not run for
        these bytes. False: something failed (recorded); the caller retries."""
        spec, credential = self.spec, issued.credential
        try:
            data = render(
                spec.format,
                issued.connector.name,
                credential,
                profile=spec.profile,
                template=spec.template,
            )
        except BrokerError as exc:
            self._failed(exc.message, write=True)
            return False
        new = digest(data)
        if new != self._written:
            try:
                await anyio.to_thread.run_sync(self._write, data)
            except OSError as exc:
                self._failed(f"cannot write {spec.path}: {exc.strerror or exc}", write=True)
                return False
            self._written = new
            self._wrote(credential)
        elif self._hooked == new:
            self._counters.unchanged += 1
            self._track(credential)
            self._clear_error()
            return True
        if new != self._hooked:
            if not await self._hooks():
                return False
            self._hooked = new
        self._track(credential)
        self._clear_error()
        return True

    def _write(self, data: bytes) -> None:
        spec = self.spec
        try:
            write_atomic(spec.path, data, mode=spec.mode, uid=spec.uid, gid=spec.gid)
        except FileExistsError:  # a temp name taken (1 in 2^32): once more with another
            write_atomic(spec.path, data, mode=spec.mode, uid=spec.uid, gid=spec.gid)

    def _wrote(self, credential: ClientCredential) -> None:
        now = self._clock.now()
        state = self.state
        state.last_write = now
        state.writes += 1
        self._counters.writes += 1
        previous = self._previous
        limit = policy.invalid_at(previous) if previous is not None else None
        lead = None if limit is None else (limit - now).total_seconds()
        if lead is not None:
            state.last_lead_seconds = lead
            arrived_in_time = (
                self._arrived is not None and limit is not None and (self._arrived < limit)
            )
            if lead < 0 and arrived_in_time:  # late through this output's own doing
                self._counters.late_writes += 1
        log.info(
            "output_written",
            output=self.spec.where,
            path=str(self.spec.path),
            format=self.spec.format,
            connector=self.spec.connector,
            expires_at=credential.expires_at.isoformat() if credential.expires_at else None,
            before_margin_ms=None if lead is None else round(lead * 1000, 1),
            after_arrival_ms=(
                None
                if self._arrived is None
                else round((now - self._arrived).total_seconds() * 1000, 1)
            ),
        )

    def _track(self, credential: ClientCredential) -> None:
        state = self.state
        self._previous = credential
        state.expires_at = credential.expires_at
        state.margin_at = policy.invalid_at(credential)
        state.next_renewal = None
        if state.margin_at is not None:
            start = credential.issued_at or state.last_write
            if start is not None and start < state.margin_at:
                servable = state.margin_at - start
                state.next_renewal = state.margin_at - servable * policy.RENEW_REMAINING_FRACTION
            else:
                state.next_renewal = state.margin_at

    async def _hooks(self) -> bool:
        spec = self.spec
        if spec.on_change:
            self.state.hook_runs += 1
            self._counters.hook_runs += 1
            error = await self._run_on_change()
            if error is not None:
                self.state.hook_failures += 1
                self._counters.hook_failures += 1
                self._failed(f"on_change {error}")
                return False
        if spec.signal is not None and spec.pid_file is not None:
            error = send_signal(spec.pid_file, spec.signal)
            if error is not None:
                self.state.hook_failures += 1
                self._counters.hook_failures += 1
                self._failed(error)
                return False
        return True

    async def _run_on_change(self) -> str | None:
        return await run_on_change(self.spec, self._env)

    # -- errors ---------------------------------------------------------------------
    def _failed(self, message: str, *, write: bool = False) -> None:
        state = self.state
        state.last_error = message
        state.last_error_at = self._clock.now()
        if write:
            state.write_failures += 1
            self._counters.write_failures += 1
        log.warning(
            "output_failed",
            output=self.spec.where,
            path=str(self.spec.path),
            connector=self.spec.connector,
            error=message,
        )

    def _clear_error(self) -> None:
        if self.state.last_error is not None:
            log.info("output_recovered", output=self.spec.where, path=str(self.spec.path))
        self.state.last_error = None
        self.state.last_error_at = None


@dataclass
class _Slot:
    runner: OutputRunner
    scope: anyio.CancelScope = field(default_factory=anyio.CancelScope)


class OutputManager:
    """Every configured output; :meth:`replace` applies a reloaded config (SIGHUP)."""

    def __init__(
        self,
        specs: Sequence[OutputSpec],
        watch: Watch,
        clock: Clock,
        env: dict[str, str] | None = None,
    ) -> None:
        self._specs = tuple(specs)
        self._watch = watch
        self._clock = clock
        self._env = hook_environment(dict(os.environ if env is None else env))
        self._counters = _Counters()
        self._slots: dict[OutputSpec, _Slot] = {}
        self._tg: anyio.abc.TaskGroup | None = None

    async def run(self, *, task_status: TaskStatus[None] = anyio.TASK_STATUS_IGNORED) -> None:
        async with anyio.create_task_group() as tg:
            self._tg = tg
            for spec in self._specs:
                await self._start(spec)
            task_status.started()
            await anyio.sleep_forever()

    async def _start(self, spec: OutputSpec) -> None:
        assert self._tg is not None
        slot = _Slot(OutputRunner(spec, self._watch, self._clock, self._counters, self._env))
        self._slots[spec] = slot

        async def guarded(*, task_status: TaskStatus[None] = anyio.TASK_STATUS_IGNORED) -> None:
            with slot.scope:
                await slot.runner.run(task_status=task_status)

        await self._tg.start(guarded)

    async def replace(self, specs: Sequence[OutputSpec]) -> None:
        """Stop outputs no longer configured (their files stay), start new or changed ones;
        unchanged ones go on untouched (no rewrite, no hook)."""
        wanted = tuple(specs)
        for spec in [s for s in self._slots if s not in wanted]:
            self._slots.pop(spec).scope.cancel()
        self._specs = wanted
        if self._tg is not None:
            for spec in wanted:
                if spec not in self._slots:
                    await self._start(spec)
        log.info("outputs_reloaded", outputs=len(wanted))

    def states(self) -> list[OutputState]:
        order = {s: i for i, s in enumerate(self._specs)}
        slots = sorted(self._slots.items(), key=lambda item: order.get(item[0], 0))
        return [slot.runner.state for _, slot in slots]

    def failing(self) -> list[OutputState]:
        return [s for s in self.states() if s.last_error is not None]

    def degraded_reason(self) -> str | None:
        """For ``broker status``: None while every output is current."""
        failing = self.failing()
        if not failing:
            return None
        first = failing[0]
        more = f" (and {len(failing) - 1} more)" if len(failing) > 1 else ""
        return f"output {first.spec.where} ({first.spec.path}): {first.last_error}{more}"

    def stats(self) -> dict[str, Any]:
        c = self._counters
        return {
            "outputs": len(self._slots),
            "outputs_failing": len(self.failing()),
            "output_writes": c.writes,
            "output_write_failures": c.write_failures,
            "output_hook_runs": c.hook_runs,
            "output_hook_failures": c.hook_failures,
            "output_late_writes": c.late_writes,
        }


OutputsView = Callable[[], list[OutputState]]
