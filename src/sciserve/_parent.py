"""Child processes that never outlive their parent.

A server's model processes and a pipeline's preparing workers hold memory
(and models) on behalf of their parent; if the parent is killed with
SIGKILL it cannot stop them, and they would run forever, reparented to
PID 1.  On Linux the kernel kills them when the parent exits
(``PR_SET_PDEATHSIG``); everywhere a thread exits them once their parent
changed.
"""

from __future__ import annotations

import contextlib
import ctypes
import os
import signal
import sys
import threading
import time

__all__ = ["exit_with_parent"]

#: ``prctl`` option: the signal the kernel sends when the parent exits (Linux).
_PR_SET_PDEATHSIG = 1


def exit_with_parent(parent: int | None = None, *, poll: float = 0.5, kernel: bool = True) -> None:
    """Make this process exit when ``parent`` (by default, the current
    parent) does: within ``poll`` seconds, and at once on Linux if
    ``kernel``.

    The kernel's signal comes when the parent *thread* that started this
    process exits, not only the parent process, so ``kernel`` is only for
    children started from a thread that lives as long as its process (the
    main thread); children started from worker threads rely on the poll.
    """
    if parent is None:
        parent = os.getppid()
    if kernel and sys.platform.startswith("linux"):
        with contextlib.suppress(OSError, AttributeError):
            libc = ctypes.CDLL(None, use_errno=True)
            libc.prctl(_PR_SET_PDEATHSIG, signal.SIGKILL, 0, 0, 0)
    if os.getppid() != parent:  # it died before the line above took effect
        os._exit(1)

    def watch() -> None:
        while True:
            time.sleep(poll)
            if os.getppid() != parent:
                os._exit(1)

    threading.Thread(target=watch, name="sciserve-parent-watch", daemon=True).start()
