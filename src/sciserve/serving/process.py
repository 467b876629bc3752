"""Run a runtime in a child process, so that a crashing model cannot take the server down.

Runtimes that execute package code (``python``) may segfault, call
``os._exit`` or hold the GIL for seconds.  :class:`ProcessRuntime` wraps such
a runtime: it loads the real runtime in a child process started with the
``spawn`` method (never ``fork``: the server has threads and an event loop
whose locks a forked child would inherit in whatever state they were in) and
forwards every :meth:`~ProcessRuntime.infer` call over a socket pair.

* A child that dies during a call fails that call with
  :class:`ModelExecutionError` naming the exit code and signal; the next call
  starts a fresh child first.
* ``call_timeout`` bounds one call; a child that does not answer in time is
  killed, and restarted before the next call.
* Errors raised inside the child keep their class from :mod:`sciserve.errors`
  (bad inputs stay :class:`InvalidInput`); any other exception becomes
  :class:`ModelExecutionError`.  The child keeps running either way.

Wire format: each message is one pickle (protocol 5) whose large contiguous
buffers, i.e. the numpy arrays, travel out of band, written straight from the
array's memory and read straight into the buffer the receiving array then
uses.  Measured on a 64 MiB array, a round trip is three to four times
faster than pickling through :func:`multiprocessing.Pipe` and a little
faster than copying through a fresh shared-memory segment per call, without
segments to track and unlink.  BYTES (object) arrays are pickled in band.
"""

from __future__ import annotations

import contextlib
import logging
import multiprocessing
import pickle
import signal
import socket
import struct
import threading
import time
import traceback
import weakref
from collections.abc import Mapping
from dataclasses import dataclass
from multiprocessing.process import BaseProcess
from typing import Any, NoReturn

import numpy as np

from .. import errors
from .._parent import exit_with_parent
from ..errors import ManifestError, ModelExecutionError, ModelNotReady, Problem, SciserveError
from ..package.manifest import Manifest
from ..runtimes import ModelSource, Runtime, get_runtime

__all__ = ["ProcessRuntime"]

log = logging.getLogger("sciserve.serving")

#: Message header: pickle length and number of out-of-band buffers, followed
#: by one length per buffer.
_HEADER = struct.Struct("!QI")
_LENGTH = struct.Struct("!Q")
#: How long to wait for a killed child to be reaped.
_REAP_TIMEOUT = 5.0
#: How often a child checks that its parent is still alive.
_PARENT_POLL = 1.0


# -- wire --------------------------------------------------------------------


class _PeerGone(Exception):
    """The other end of the socket closed: its process has exited."""


class _Channel:
    """Framed pickle messages over a stream socket, with an optional deadline."""

    def __init__(self, sock: socket.socket) -> None:
        self.sock = sock

    def send(self, message: Any, deadline: float | None = None) -> None:
        """Send ``message``; arrays go out of band, without an intermediate copy."""
        buffers: list[pickle.PickleBuffer] = []
        # Pickling completes before the first byte is written, so a message
        # that cannot be pickled leaves the stream intact.
        head = pickle.dumps(message, protocol=5, buffer_callback=buffers.append)
        raws = [buffer.raw() for buffer in buffers]
        header = _HEADER.pack(len(head), len(raws)) + b"".join(
            _LENGTH.pack(raw.nbytes) for raw in raws
        )
        parts: list[bytes | memoryview] = [header, head, *raws]
        for part in parts:
            self._set_timeout(deadline)
            try:
                self.sock.sendall(part)
            except ConnectionError as exc:  # broken pipe, reset: the peer exited
                raise _PeerGone from exc

    def receive(self, deadline: float | None = None) -> Any:
        """Receive one message; raise :class:`_PeerGone` on end of stream."""
        head_size, count = _HEADER.unpack(self._read(_HEADER.size, deadline))
        lengths = struct.unpack(f"!{count}Q", self._read(_LENGTH.size * count, deadline))
        head = self._read(head_size, deadline)
        buffers = [self._read(length, deadline) for length in lengths]
        # Only the two ends of this private socket pair ever write to it, and
        # the child runs code the namespace's owners are trusted with anyway.
        return pickle.loads(head, buffers=buffers)  # noqa: S301

    def _read(self, size: int, deadline: float | None) -> bytearray:
        data = bytearray(size)
        view = memoryview(data)
        while view:
            self._set_timeout(deadline)
            try:
                count = self.sock.recv_into(view)
            except ConnectionError as exc:
                raise _PeerGone from exc
            if count == 0:
                raise _PeerGone
            view = view[count:]
        return data

    def _set_timeout(self, deadline: float | None) -> None:
        if deadline is None:
            self.sock.settimeout(None)
            return
        remaining = deadline - time.monotonic()
        if remaining <= 0:
            raise TimeoutError
        self.sock.settimeout(remaining)


# -- errors across the process boundary -------------------------------------


class _RemoteTraceback(Exception):
    """The traceback of an error raised in the model process (set as ``__cause__``)."""

    def __str__(self) -> str:
        return str(self.args[0]) if self.args else ""


@dataclass(frozen=True)
class _Failure:
    """An exception raised in the child, in a form that always pickles."""

    #: Class names of the exception, most specific first (empty if not a SciserveError).
    classes: tuple[str, ...]
    message: str
    traceback: str
    #: A :class:`ManifestError`'s findings, which its message alone cannot rebuild.
    problems: tuple[Problem, ...] = ()
    source: str = ""

    @classmethod
    def capture(cls, exc: BaseException) -> _Failure:
        text = "".join(traceback.format_exception(exc))
        if not isinstance(exc, SciserveError):
            return cls((), f"{type(exc).__name__}: {exc}", text)
        classes = tuple(
            klass.__name__ for klass in type(exc).__mro__ if issubclass(klass, SciserveError)
        )
        if isinstance(exc, ManifestError):
            return cls(classes, str(exc), text, tuple(exc.problems), exc.source)
        return cls(classes, str(exc), text)

    def exception(self, ref: str) -> SciserveError:
        """The same error class from :mod:`sciserve.errors`, else ModelExecutionError."""
        if "ManifestError" in self.classes:
            return ManifestError(list(self.problems), self.source)
        for name in self.classes:
            # A plugin's own subclass is not importable here by name; its
            # nearest ancestor in sciserve.errors keeps the meaning.
            klass = getattr(errors, name, None)
            if isinstance(klass, type) and issubclass(klass, SciserveError):
                try:
                    return klass(self.message)
                except TypeError:  # a constructor that needs more than a message
                    continue
        return ModelExecutionError(f"{ref} failed: {self.message}")

    def raise_(self, ref: str) -> NoReturn:
        raise self.exception(ref) from _RemoteTraceback(self.traceback)


def _describe_exit(code: int | None) -> str:
    if code is None:
        return "stopped responding"
    if code < 0:
        try:
            name = signal.Signals(-code).name
        except ValueError:
            name = f"signal {-code}"
        return f"exited with code {code} ({name})"
    return f"exited with code {code}"


# -- the child process ------------------------------------------------------


def _serve(sock: socket.socket, source: ModelSource) -> None:
    """Entry point of the child: load the runtime, then answer calls until told to stop."""
    # Ctrl-C in a terminal signals the whole process group; the parent
    # decides when its children stop, so that it can drain first.
    signal.signal(signal.SIGINT, signal.SIG_IGN)
    # A child blocked on the socket sees the parent's exit as end of stream;
    # one busy inside a model (or holding the GIL in a loop) is stopped here.
    # Model processes start from whichever thread loads the model, so the
    # kernel's parent-death signal (which follows the thread) is not used.
    exit_with_parent(poll=_PARENT_POLL, kernel=False)
    with sock:
        channel = _Channel(sock)
        try:
            runtime = get_runtime(source.manifest.runtime)(source)
            runtime.load()
        except Exception as exc:
            with contextlib.suppress(_PeerGone):
                channel.send(("error", _Failure.capture(exc)))
            return
        try:
            channel.send(("ready", None))
            while True:
                kind, payload = channel.receive()
                if kind == "stop":
                    break
                _answer(channel, runtime, payload)
        except _PeerGone:
            pass  # the parent went away: nobody is left to answer
        finally:
            runtime.unload()


def _answer(channel: _Channel, runtime: Runtime, inputs: Mapping[str, np.ndarray]) -> None:
    try:
        reply: tuple[str, Any] = ("ok", runtime.infer(inputs))
    except Exception as exc:  # reported to the caller; this process keeps serving
        reply = ("error", _Failure.capture(exc))
    try:
        channel.send(reply)
    except (pickle.PicklingError, TypeError, AttributeError) as exc:
        # Nothing was written yet (see _Channel.send), so report it instead.
        ref = runtime.source.manifest.ref
        failure = ModelExecutionError(f"{ref} returned outputs that cannot be sent: {exc}")
        channel.send(("error", _Failure.capture(failure)))


# -- the parent's handle on one child ---------------------------------------


def _terminate(process: BaseProcess, sock: socket.socket) -> int | None:
    """Close the socket, kill the process if it still runs, reap it; its exit code."""
    sock.close()
    if process.is_alive():
        process.kill()
    process.join(_REAP_TIMEOUT)
    code = process.exitcode
    if code is not None:
        process.close()
    return code


class _Child:
    """One model process and the socket to it."""

    def __init__(self, process: BaseProcess, sock: socket.socket) -> None:
        self.pid = process.pid
        self._process = process
        self._channel = _Channel(sock)
        # Serialises process management (kill, reap, close), which unload()
        # may do while another thread waits for this child's answer.
        self._lock = threading.Lock()
        self._exitcode: int | None = None
        # Holds no reference to self: a child whose handle is garbage
        # collected is killed rather than orphaned (also at interpreter exit).
        self._finalizer = weakref.finalize(self, _terminate, process, sock)

    @classmethod
    def start(cls, source: ModelSource, timeout: float) -> _Child:
        """Start a model process and wait until its runtime has loaded."""
        ref = source.manifest.ref
        context = multiprocessing.get_context("spawn")
        ours, theirs = socket.socketpair()
        process = context.Process(
            target=_serve, args=(theirs, source), name=f"sciserve-model {ref}", daemon=True
        )
        try:
            process.start()
        except (pickle.PicklingError, TypeError, AttributeError) as exc:
            ours.close()
            raise ModelExecutionError(
                f"cannot start the model process for {ref}: its source does not pickle ({exc})"
            ) from exc
        finally:
            # Only the child holds its end now, so its exit reads as end of stream here.
            theirs.close()
        child = cls(process, ours)
        try:
            kind, payload = child._channel.receive(time.monotonic() + timeout)
        except TimeoutError:
            child.kill()
            raise ModelExecutionError(
                f"model process for {ref} did not load within {timeout:g} s and was killed"
            ) from None
        except _PeerGone:
            code = child.kill()
            raise ModelExecutionError(
                f"model process for {ref} {_describe_exit(code)} while loading"
            ) from None
        if kind == "error":
            child.kill()
            payload.raise_(ref)
        return child

    @property
    def alive(self) -> bool:
        with self._lock:
            return self._finalizer.alive and self._process.is_alive()

    def call(self, message: Any, deadline: float | None) -> tuple[str, Any]:
        """Send one request and wait for its answer."""
        self._channel.send(message, deadline)
        reply: tuple[str, Any] = self._channel.receive(deadline)
        return reply

    def stop(self, timeout: float) -> None:
        """Ask the child to unload and exit; kill it if it has not within ``timeout``."""
        try:
            self._channel.send(("stop", None), time.monotonic() + timeout)
        except (_PeerGone, TimeoutError):
            pass  # it is dead or stuck: kill() below deals with either
        else:
            with self._lock:
                if self._finalizer.alive:
                    self._process.join(timeout)
        self.kill()

    def interrupt(self) -> None:
        """Kill the process but leave reaping to the thread waiting for its answer."""
        with self._lock:
            if self._finalizer.alive:
                self._process.kill()

    def kill(self) -> int | None:
        """Kill and reap the process (idempotent); return its exit code."""
        with self._lock:
            if self._finalizer.alive:
                self._exitcode = self._finalizer()
            return self._exitcode


# -- the runtime -------------------------------------------------------------


class ProcessRuntime(Runtime):
    """Runs the runtime ``source.manifest.runtime`` names in a child process.

    ``start_timeout`` bounds starting the process and loading the model.
    ``call_timeout`` (``None``: no limit) bounds each :meth:`infer`; a child
    that exceeds it is killed.  With ``restart`` a child that died is
    started again before the next call; without, calls then raise
    :class:`ModelNotReady`.  ``stop_timeout`` is how long :meth:`unload`
    waits for the child to finish before it kills it.

    Calls from several threads are served one at a time, in turn.  The
    child is a daemon process, so models cannot start processes of their own
    with :mod:`multiprocessing`.
    """

    name = "process"

    def __init__(
        self,
        source: ModelSource,
        *,
        start_timeout: float = 60.0,
        call_timeout: float | None = None,
        restart: bool = True,
        stop_timeout: float = 5.0,
    ) -> None:
        super().__init__(source)
        self.start_timeout = start_timeout
        self.call_timeout = call_timeout
        self.restart = restart
        self.stop_timeout = stop_timeout
        # Held for a whole request/answer exchange, so concurrent calls never
        # interleave their messages on the socket.
        self._lock = threading.Lock()
        self._child: _Child | None = None
        # Between load() and unload(): only then is a dead child restarted.
        self._loaded = False

    @classmethod
    def executes_code(cls, manifest: Manifest) -> bool:
        return get_runtime(manifest.runtime).executes_code(manifest)

    @property
    def pid(self) -> int | None:
        """The model process's PID, or ``None`` while none is running."""
        child = self._child
        return child.pid if child is not None else None

    def load(self) -> None:
        """Start the model process and load the model in it.

        Load errors are re-raised here with their class from
        :mod:`sciserve.errors`; a process that dies while loading raises
        :class:`ModelExecutionError`.  A second load() replaces the process.
        """
        with self._lock:
            self._stop_child()
            self._loaded = True
            try:
                self._start_child()
            except BaseException:
                self._loaded = False
                raise

    def infer(self, inputs: Mapping[str, np.ndarray]) -> dict[str, np.ndarray]:
        """Compute the outputs in the model process."""
        ref = self.source.manifest.ref
        with self._lock:
            child = self._running_child()
            deadline = None if self.call_timeout is None else time.monotonic() + self.call_timeout
            try:
                kind, payload = child.call(("infer", dict(inputs)), deadline)
            except TimeoutError:
                self._child = None
                child.kill()
                message = (
                    f"{ref} did not answer within {self.call_timeout:g} s; "
                    "its model process was killed"
                )
                log.warning("%s", message)
                raise ModelExecutionError(message) from None
            except _PeerGone:
                self._child = None
                code = child.kill()
                message = f"model process for {ref} {_describe_exit(code)} while computing a result"
                log.warning("%s", message)
                raise ModelExecutionError(message) from None
        if kind == "error":
            payload.raise_(ref)
        outputs: dict[str, np.ndarray] = payload
        return outputs

    def unload(self) -> None:
        """Stop the model process: ask it to exit, and kill it if it does not."""
        self._loaded = False
        # A call in flight holds the lock.  Give it stop_timeout to finish;
        # then kill the child under it, and the call fails with the exit.
        if self._lock.acquire(timeout=self.stop_timeout):
            try:
                self._stop_child()
            finally:
                self._lock.release()
            return
        child = self._child
        if child is not None:
            child.interrupt()

    def _running_child(self) -> _Child:
        ref = self.source.manifest.ref
        if not self._loaded:
            raise ModelNotReady(f"{ref} is not loaded")
        child = self._child
        if child is not None and child.alive:
            return child
        if child is not None:  # died between calls, e.g. killed from outside
            code = child.kill()
            self._child = None
            log.warning("model process for %s %s between requests", ref, _describe_exit(code))
        if not self.restart:
            raise ModelNotReady(f"the model process for {ref} exited and restarting is off")
        log.warning("restarting the model process for %s", ref)
        return self._start_child()

    def _start_child(self) -> _Child:
        child = _Child.start(self.source, self.start_timeout)
        if not self._loaded:
            # unload() ran meanwhile and, unable to wait for the start to
            # finish, left it to us not to keep the new process running.
            child.stop(self.stop_timeout)
            raise ModelNotReady(f"{self.source.manifest.ref} was unloaded while it started")
        self._child = child
        return child

    def _stop_child(self) -> None:
        child, self._child = self._child, None
        if child is not None:
            child.stop(self.stop_timeout)
