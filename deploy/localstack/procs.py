"""One supervised child process: start, wait ready, stop, kill, restart.

:class:`ManagedProcess` wraps :func:`asyncio.create_subprocess_exec`. Every child

* appends its stdout and stderr to one log file (``<rundir>/logs/<name>.log``);
* gets a parent-death signal (``prctl(PR_SET_PDEATHSIG)``), so that no child outlives a
  supervisor that crashed or was ``kill -9``'d;
* runs in a session of its own, so that a Ctrl-C in the terminal reaches the supervisor
  alone (which then stops the parts in order, front to back) and :meth:`ManagedProcess.kill`
  can take a whole process tree down at once (nginx workers, PostgreSQL backends);
* may run as another user (PostgreSQL refuses to run as root).

Subclasses say what "ready" means by overriding :meth:`ManagedProcess.wait_ready` and may
prepare their data folder in :meth:`ManagedProcess.prepare`.
"""

from __future__ import annotations

import asyncio
import contextlib
import ctypes
import logging
import os
import signal
from collections.abc import Awaitable, Callable, Mapping, Sequence
from dataclasses import dataclass
from pathlib import Path

log = logging.getLogger("localstack")

_PR_SET_PDEATHSIG = 1


class ProcessError(RuntimeError):
    """A managed process failed to start, exited early, or never became ready."""


@dataclass(frozen=True)
class RunAs:
    """The account a child runs as (used when the supervisor is root)."""

    name: str
    uid: int
    gid: int


def tail(path: Path, lines: int = 20) -> str:
    """Return the last ``lines`` lines of the text file at ``path`` ('' when absent)."""
    try:
        with path.open("rb") as f:
            f.seek(0, os.SEEK_END)
            f.seek(max(0, f.tell() - 16384))
            data = f.read().decode("utf-8", "replace")
    except OSError:
        return ""
    return "\n".join(data.splitlines()[-lines:])


def child_setup(death_signal: int, run_as: RunAs | None) -> Callable[[], None]:
    """Return a ``preexec_fn``: drop to ``run_as``, then arm the parent-death signal.

    The order matters: the kernel clears the parent-death signal whenever the process's
    credentials change, so it is armed after ``setuid``. Dropping privileges here (rather
    than with ``Popen(user=...)``) also works on event loops that lack those arguments.
    """
    libc = ctypes.CDLL(None, use_errno=True)

    def setup() -> None:
        if run_as is not None:
            os.setgroups([])
            os.setgid(run_as.gid)
            os.setuid(run_as.uid)
        libc.prctl(_PR_SET_PDEATHSIG, death_signal, 0, 0, 0)

    return setup


class ManagedProcess:
    """A child process with a log file, a ready check and an orderly stop.

    ``stop_signal`` is what :meth:`stop` sends first (SIGTERM for most servers; PostgreSQL
    wants SIGINT for a fast shutdown). ``death_signal`` is what the kernel sends the child if
    the supervisor dies: SIGKILL, except for processes that must take their own children
    down (nginx's master only stops its workers on a catchable signal).
    """

    def __init__(
        self,
        name: str,
        argv: Sequence[str],
        log_path: Path,
        *,
        env: Mapping[str, str] | None = None,
        cwd: Path | None = None,
        run_as: RunAs | None = None,
        stop_signal: int = signal.SIGTERM,
        death_signal: int = signal.SIGKILL,
        stop_timeout: float = 10.0,
    ) -> None:
        self.name = name
        self.argv = list(argv)
        self.log_path = log_path
        self.env = dict(env) if env is not None else None
        self.cwd = cwd
        self.run_as = run_as
        self.stop_signal = stop_signal
        self.death_signal = death_signal
        self.stop_timeout = stop_timeout
        self._proc: asyncio.subprocess.Process | None = None
        self._watcher: asyncio.Task[None] | None = None
        # True while a stop or kill we asked for is under way: an exit then is expected.
        self._stopping = False

    def __repr__(self) -> str:
        return f"<{type(self).__name__} {self.name} pid={self.pid} running={self.running}>"

    @property
    def pid(self) -> int | None:
        """The child's pid while it runs, else ``None``."""
        return self._proc.pid if self.running and self._proc is not None else None

    @property
    def running(self) -> bool:
        """Whether the child has been started and has not exited (as far as we reaped)."""
        return self._proc is not None and self._proc.returncode is None

    @property
    def returncode(self) -> int | None:
        """The exit status of the last run (negative: killed by that signal)."""
        return self._proc.returncode if self._proc is not None else None

    async def prepare(self) -> None:
        """Make the child's files ready before the first start (e.g. ``initdb``)."""

    async def wait_ready(self) -> None:
        """Return once the child serves; raise :class:`ProcessError` if it cannot."""

    async def start(self) -> None:
        """Start the child (if not running) and wait until it is ready."""
        if self.running:
            return
        await self.prepare()
        self.log_path.parent.mkdir(parents=True, exist_ok=True)
        with self.log_path.open("ab") as logf:
            logf.write(f"--- {self.name}: {' '.join(self.argv)}\n".encode())
            logf.flush()
            try:
                self._proc = await asyncio.create_subprocess_exec(
                    *self.argv,
                    stdin=asyncio.subprocess.DEVNULL,
                    stdout=logf,
                    stderr=logf,
                    env=self.env,
                    cwd=self.cwd,
                    start_new_session=True,
                    preexec_fn=child_setup(self.death_signal, self.run_as),
                )
            except OSError as exc:
                raise ProcessError(f"{self.name}: cannot execute {self.argv[0]}: {exc}") from exc
        self._stopping = False
        log.info("started %s (pid %d), log %s", self.name, self._proc.pid, self.log_path)
        self._watcher = asyncio.get_running_loop().create_task(self._watch(self._proc))
        try:
            await self.wait_ready()
        except BaseException:
            await self.kill()
            raise

    async def _watch(self, proc: asyncio.subprocess.Process) -> None:
        code = await proc.wait()
        if self._stopping or proc is not self._proc:
            return
        log.warning(
            "%s (pid %d) exited unexpectedly with %d; log %s",
            self.name,
            proc.pid,
            code,
            self.log_path,
        )

    def check_alive(self) -> None:
        """Raise :class:`ProcessError` (with the log's tail) if the child has exited."""
        if self._proc is not None and self._proc.returncode is not None:
            raise ProcessError(
                f"{self.name} exited with {self._proc.returncode} before it was ready; "
                f"last lines of {self.log_path}:\n{tail(self.log_path)}"
            )

    async def wait(self) -> int:
        """Wait for the child to exit and return its status."""
        if self._proc is None:
            raise ProcessError(f"{self.name} was never started")
        return await self._proc.wait()

    def signal(self, sig: int) -> None:
        """Send ``sig`` to the child alone (not its process group)."""
        if self.running and self._proc is not None:
            with contextlib.suppress(ProcessLookupError):
                self._proc.send_signal(sig)

    async def stop(self, timeout: float | None = None) -> None:
        """Ask the child to stop (``stop_signal``); SIGKILL it if it lingers past ``timeout``."""
        if not self.running or self._proc is None:
            return
        self._stopping = True
        proc = self._proc
        timeout = self.stop_timeout if timeout is None else timeout
        self.signal(self.stop_signal)
        try:
            await asyncio.wait_for(proc.wait(), timeout)
        except TimeoutError:
            log.warning("%s did not stop within %.0fs; killing it", self.name, timeout)
            await self.kill()
            return
        # Anything the child left behind in its session (e.g. a worker) goes too.
        self._kill_group(proc.pid)
        log.info("stopped %s (exit %s)", self.name, proc.returncode)

    async def kill(self) -> None:
        """SIGKILL the child and everything in its process group; wait until it is reaped."""
        if self._proc is None:
            return
        self._stopping = True
        self._kill_group(self._proc.pid)
        await self._proc.wait()

    @staticmethod
    def _kill_group(pgid: int) -> None:
        with contextlib.suppress(ProcessLookupError, PermissionError):
            os.killpg(pgid, signal.SIGKILL)

    async def restart(self) -> None:
        """Stop the child (if running) and start it again, waiting until it is ready."""
        await self.stop()
        await self.start()


async def poll(
    what: str,
    probe: Callable[[], Awaitable[bool]],
    *,
    proc: ManagedProcess | None = None,
    timeout: float = 30.0,
    interval: float = 0.1,
) -> None:
    """Call ``probe`` until it returns True; fail after ``timeout`` or if ``proc`` exits."""
    loop = asyncio.get_running_loop()
    deadline = loop.time() + timeout
    last: BaseException | None = None
    while True:
        if proc is not None:
            proc.check_alive()
        try:
            if await probe():
                return
        except Exception as exc:  # noqa: BLE001 - any failure means "not yet"
            last = exc
        if loop.time() > deadline:
            detail = f" (last error: {type(last).__name__}: {last})" if last else ""
            where = f"; log {proc.log_path}:\n{tail(proc.log_path)}" if proc else ""
            raise ProcessError(f"{what} not ready after {timeout:.0f}s{detail}{where}")
        await asyncio.sleep(interval)
