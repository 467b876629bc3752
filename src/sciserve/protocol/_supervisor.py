"""Front-end processes of the serving process: started, watched, restarted, stopped.

Shared by the gRPC (:mod:`~sciserve.protocol.grpc_relay`) and HTTP
(:mod:`~sciserve.protocol.http_relay`) front ends.  Each front end is
``python -m <module> --relay SOCKET --port PORT ...``; on start-up it prints
``ready <port>`` on standard output, or exits with status
:data:`CANNOT_LISTEN` and the reason on standard error when it cannot
listen.  The first front end may pick the port (0); the others, and any
restarted one, share it (``SO_REUSEPORT``).
"""

from __future__ import annotations

import asyncio
import contextlib
import enum
import logging
import shutil
import signal
import sys
import tempfile
from collections.abc import Callable
from pathlib import Path

__all__ = ["CANNOT_LISTEN", "State", "Supervisor", "private_directory", "remove_directory"]

#: Exit status of a front end that could not listen.
CANNOT_LISTEN = 3
#: How long a front end may take to start listening (s).
_START_TIMEOUT = 60.0
#: Back-off before restarting a front end that died (s).
_RESTART_DELAY = 0.5


def private_directory(prefix: str) -> Path:
    """A new directory only this user may enter (``mkdtemp`` makes it 0700):
    the relay socket in it is reachable by nobody else."""
    return Path(tempfile.mkdtemp(prefix=prefix))


class State(enum.Enum):
    """Where a :class:`Supervisor` is in its life."""

    NEW = "new"
    RUNNING = "running"
    STOPPING = "stopping"


class Supervisor:
    """``processes`` front ends of ``module``, kept running until :meth:`stop`.

    ``argv(socket_path, port)`` gives a front end's arguments after the
    module's name; ``protocol`` names it in errors and logs ("gRPC").
    """

    def __init__(
        self,
        module: str,
        protocol: str,
        processes: int,
        argv: Callable[[Path, int], list[str]],
        log: logging.Logger,
    ) -> None:
        if processes < 1:
            raise ValueError("front ends need at least one process")
        self.module = module
        self.protocol = protocol
        self.processes = processes
        self._argv = argv
        self._log = log
        self.port = 0
        self.state = State.NEW
        self._children: list[asyncio.subprocess.Process] = []
        self._watchers: list[asyncio.Task[None]] = []
        self._loggers: list[asyncio.Task[None]] = []

    @property
    def pids(self) -> list[int]:
        return [child.pid for child in self._children]

    async def start(self, socket_path: Path, port: int) -> int:
        """Start every front end; the port they listen on.  Raises :class:`OSError`."""
        loop = asyncio.get_running_loop()
        self.state = State.RUNNING
        self.port = port
        for slot in range(self.processes):
            child, self.port = await self._spawn(socket_path, self.port)
            self._children.append(child)
            self._watchers.append(loop.create_task(self._watch(slot, socket_path)))
        return self.port

    async def _spawn(self, socket_path: Path, port: int) -> tuple[asyncio.subprocess.Process, int]:
        child = await asyncio.create_subprocess_exec(
            sys.executable,
            "-m",
            self.module,
            *self._argv(socket_path, port),
            stdout=asyncio.subprocess.PIPE,
            stderr=asyncio.subprocess.PIPE,
        )
        assert child.stdout is not None
        assert child.stderr is not None
        try:
            line = await asyncio.wait_for(child.stdout.readline(), _START_TIMEOUT)
        except TimeoutError:
            child.kill()
            await child.wait()
            raise OSError(
                f"the {self.protocol} front end did not start within {_START_TIMEOUT:.0f} s"
            ) from None
        if not line.startswith(b"ready "):
            error = (await child.stderr.read()).decode(errors="replace").strip()
            await child.wait()
            if child.returncode == CANNOT_LISTEN:
                last = error.splitlines()[-1] if error else f"cannot listen for {self.protocol}"
                raise OSError(last)
            raise OSError(f"the {self.protocol} front end failed to start: {error[-2000:]}")
        # From now on its errors go to this process's log.
        self._loggers.append(asyncio.get_running_loop().create_task(self._forward_log(child)))
        return child, int(line.split()[1])

    async def _watch(self, slot: int, socket_path: Path) -> None:
        while True:
            child = self._children[slot]
            code = await child.wait()
            if self.state is State.STOPPING:
                return
            self._log.error(
                "%s front end %d exited with status %s; restarting it",
                self.protocol, child.pid, code,
            )  # fmt: skip
            await asyncio.sleep(_RESTART_DELAY)
            try:
                self._children[slot], _ = await self._spawn(socket_path, self.port)
            except OSError as exc:
                self._log.error("could not restart the %s front end: %s", self.protocol, exc)
                return

    async def _forward_log(self, child: asyncio.subprocess.Process) -> None:
        assert child.stderr is not None
        while line := await child.stderr.readline():
            text = line.decode(errors="replace").rstrip()
            self._log.warning("%s front end: %s", self.protocol, text)

    async def stop(self, grace: float) -> None:
        """SIGTERM every front end (they finish what is in flight), then wait;
        SIGKILL one still there ``grace`` + 5 s later."""
        self.state = State.STOPPING
        for watcher in self._watchers:
            watcher.cancel()
        for child in self._children:
            if child.returncode is None:
                with contextlib.suppress(ProcessLookupError):
                    child.send_signal(signal.SIGTERM)
        for child in self._children:
            try:
                await asyncio.wait_for(child.wait(), grace + 5)
            except TimeoutError:
                with contextlib.suppress(ProcessLookupError):
                    child.kill()
                await child.wait()
        for logger in self._loggers:
            logger.cancel()


def remove_directory(directory: Path | None) -> None:
    if directory is not None:
        shutil.rmtree(directory, ignore_errors=True)
