"""Child processes that always go away: servers, wrk and h2load.

Every child starts a session of its own, so it and everything it spawns
(Triton's server and backend stubs, MLServer's workers) form one process
group, and stopping it means signalling that group by the child's own PID.
Stopping happens in ``finally`` blocks, so Ctrl-C, a failed check or an
exception in the harness leave no process behind.  Children also get
``PR_SET_PDEATHSIG`` so that they are told to stop even if the harness
itself is killed with SIGKILL.
"""

from __future__ import annotations

import contextlib
import ctypes
import os
import re
import signal
import socket
import subprocess
import time
from collections.abc import Mapping, Sequence
from pathlib import Path
from types import TracebackType

__all__ = ["ChildFailed", "Service", "free_port", "run_command"]

_PR_SET_PDEATHSIG = 1


class ChildFailed(RuntimeError):
    """A child process exited early, timed out or did not become ready."""


def free_port(host: str = "127.0.0.1") -> int:
    """A TCP port that is free on ``host`` right now."""
    with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as sock:
        sock.bind((host, 0))
        return int(sock.getsockname()[1])


def _die_with_parent() -> None:
    # Runs in the child between fork and exec.
    with contextlib.suppress(OSError, AttributeError):
        libc = ctypes.CDLL(None, use_errno=True)
        libc.prctl(_PR_SET_PDEATHSIG, signal.SIGTERM)


def _group_alive(pgid: int) -> bool:
    """Whether a process other than a zombie is left in group ``pgid``."""
    for stat in Path("/proc").glob("[0-9]*/stat"):
        try:
            text = stat.read_text()
        except OSError:
            continue
        # The command name is in parentheses and may contain spaces.
        fields = text[text.rfind(")") + 2 :].split()
        if len(fields) > 2 and int(fields[2]) == pgid and fields[0] != "Z":
            return True
    return False


def _signal_group(pgid: int, sig: int) -> None:
    with contextlib.suppress(ProcessLookupError, PermissionError):
        os.killpg(pgid, sig)


def _stop_group(proc: subprocess.Popen[bytes], grace: float) -> None:
    """SIGTERM the leader, then the group, then SIGKILL whatever is left."""
    pgid = proc.pid
    if proc.poll() is None:
        with contextlib.suppress(ProcessLookupError):
            proc.send_signal(signal.SIGTERM)
        with contextlib.suppress(subprocess.TimeoutExpired):
            proc.wait(grace)
    for sig, wait in ((signal.SIGTERM, 3.0), (signal.SIGKILL, 3.0)):
        if proc.poll() is not None and not _group_alive(pgid):
            break
        _signal_group(pgid, sig)
        deadline = time.monotonic() + wait
        while time.monotonic() < deadline and (proc.poll() is None or _group_alive(pgid)):
            time.sleep(0.05)
    with contextlib.suppress(subprocess.TimeoutExpired):
        proc.wait(1.0)


def _popen(
    argv: Sequence[str],
    stdout: int | object,
    stderr: int | object,
    cwd: Path | None,
    env: Mapping[str, str] | None,
) -> subprocess.Popen[bytes]:
    return subprocess.Popen(
        list(argv),
        stdin=subprocess.DEVNULL,
        stdout=stdout,  # type: ignore[arg-type]
        stderr=stderr,  # type: ignore[arg-type]
        cwd=cwd,
        env=dict(env) if env is not None else None,
        start_new_session=True,
        # Only calls prctl; the harness forks from its main thread.
        preexec_fn=_die_with_parent,
    )


class Service:
    """A long-running child (a server) whose output goes to ``log``.

    Use it as a context manager: leaving the block stops the whole group.
    """

    def __init__(
        self,
        name: str,
        argv: Sequence[str],
        log: Path,
        *,
        cwd: Path | None = None,
        env: Mapping[str, str] | None = None,
    ) -> None:
        self.name = name
        self.argv = list(argv)
        self.log = log
        self.cwd = cwd
        self.env = env
        self._proc: subprocess.Popen[bytes] | None = None

    @property
    def pid(self) -> int:
        if self._proc is None:
            raise ChildFailed(f"{self.name} is not running")
        return self._proc.pid

    def start(self) -> Service:
        self.log.parent.mkdir(parents=True, exist_ok=True)
        with self.log.open("wb") as out:
            # The child keeps its own copy of the descriptor.
            self._proc = _popen(self.argv, out, subprocess.STDOUT, self.cwd, self.env)
        return self

    def stop(self, grace: float = 15.0) -> None:
        """Stop the child and every process of its group."""
        if self._proc is not None:
            _stop_group(self._proc, grace)

    def __enter__(self) -> Service:
        return self.start()

    def __exit__(
        self,
        exc_type: type[BaseException] | None,
        exc: BaseException | None,
        tb: TracebackType | None,
    ) -> None:
        self.stop()

    def log_tail(self, lines: int = 25) -> str:
        try:
            text = self.log.read_text(errors="replace")
        except OSError:
            return ""
        return "\n".join(text.splitlines()[-lines:])

    def check_running(self) -> None:
        """Raise :class:`ChildFailed`, with the end of the log, if the child has exited."""
        if self._proc is None or self._proc.poll() is not None:
            code = None if self._proc is None else self._proc.returncode
            raise ChildFailed(f"{self.name} exited (code {code}):\n{self.log_tail()}")

    def wait_for_output(self, pattern: str, timeout: float) -> re.Match[str]:
        """Wait until the log contains ``pattern`` (a regex) and return the match."""
        regex = re.compile(pattern)
        deadline = time.monotonic() + timeout
        while True:
            match = regex.search(self.log.read_text(errors="replace"))
            if match:
                return match
            self.check_running()
            if time.monotonic() > deadline:
                raise ChildFailed(
                    f"{self.name} did not print /{pattern}/ within {timeout:.0f} s:\n"
                    f"{self.log_tail()}"
                )
            time.sleep(0.1)


def run_command(
    argv: Sequence[str],
    timeout: float,
    *,
    cwd: Path | None = None,
    env: Mapping[str, str] | None = None,
) -> str:
    """Run a short-lived child to completion and return its stdout.

    Raises :class:`ChildFailed` on a non-zero exit or after ``timeout`` s; on
    any error (Ctrl-C included) the child's group is stopped first.
    """
    # Leaving the `with` closes the pipes, whichever way it is left.
    with _popen(argv, subprocess.PIPE, subprocess.PIPE, cwd, env) as proc:
        try:
            out, err = proc.communicate(timeout=timeout)
        except subprocess.TimeoutExpired as exc:
            raise ChildFailed(f"{argv[0]} did not finish within {timeout:g} s") from exc
        finally:
            _stop_group(proc, grace=2.0)
    if proc.returncode != 0:
        raise ChildFailed(
            f"{' '.join(argv[:3])} … exited with {proc.returncode}:\n"
            f"{err.decode(errors='replace')[-2000:]}"
        )
    return out.decode(errors="replace")
