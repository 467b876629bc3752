"""``sciserve jobs runner``: execute the batch jobs queued in the registry database."""

from __future__ import annotations

import contextlib
import logging
import signal
import threading
from collections.abc import Iterator
from typing import Annotated

import typer

from ._context import log_to_stderr, state

__all__ = ["register", "runner"]


def register(app: typer.Typer) -> None:
    """Add ``runner`` to the ``jobs`` group of ``app``, creating the group if
    no module has registered it yet (register this one after the others)."""
    for group in app.registered_groups:
        if group.name == "jobs" and group.typer_instance is not None:
            group.typer_instance.command("runner")(runner)
            return
    jobs = typer.Typer(name="jobs", help="Batch jobs run by runners.", no_args_is_help=True)
    jobs.command("runner")(runner)
    app.add_typer(jobs, name="jobs")


def runner(
    ctx: typer.Context,
    workers: Annotated[
        int | None,
        typer.Option(
            help="Worker processes of the local Dask cluster each job gets "
            "[default: [jobs] workers, else the cores]."
        ),
    ] = None,
    once: Annotated[
        bool, typer.Option("--once", help="Run one queued job (if any) and exit.")
    ] = False,
    name: Annotated[
        str | None,
        typer.Option(help="This runner's name in the job records [default: host:pid:random]."),
    ] = None,
    exit_with_parent: Annotated[
        int | None,
        typer.Option(
            "--exit-with-parent",
            hidden=True,
            metavar="PID",
            help="Exit when process PID, the parent, does (a runner started by a server).",
        ),
    ] = None,
) -> None:
    """Run the batch jobs queued in the registry database, one at a time, each
    on a local Dask cluster of its own (or its cluster profile).

    SIGTERM or Ctrl-C stops the runner: a job it is running is cancelled on
    its cluster and queued again, for a runner to resume (its finished
    shards are kept and skipped).
    """
    from .._parent import exit_with_parent as watch_parent
    from ..batch.runner import JobRunner

    st = state(ctx)
    if exit_with_parent is not None:
        # No orphaned runner if the server is killed: its job goes stale and
        # another runner takes it over.  The server names itself: a server
        # killed while this process was still starting would otherwise leave
        # it reparented, taking the new parent for the one to watch.
        watch_parent(exit_with_parent, kernel=False)
    settings = st.settings
    with JobRunner(settings, name=name, workers=workers) as job_runner, _signals() as stop:
        if once:
            record = job_runner.run_once(stop)
            if record is None:
                st.emit(None, lambda: st.console.print("no job queued"))
                return
            done = record
            st.emit(
                done.to_dict(spec=False),
                lambda: st.console.print(
                    f"job {done.id}: {done.state.value}"
                    + (f": {done.error}" if done.error else "")
                    + f" ({done.shards_done}/{done.shards_total or 0} shards, "
                    f"{done.rows_in} rows in, {done.rows_out} output rows, "
                    f"{done.dead_letters} dead letters)"
                ),
            )
            return
        log_to_stderr()
        # Dask narrates its clusters' starts and stops at INFO (with the
        # tracebacks of connections it closes itself); its warnings suffice.
        # (Imported first: importing it sets its loggers' levels.)
        with contextlib.suppress(ImportError):
            import distributed  # noqa: F401
        logging.getLogger("distributed").setLevel(logging.WARNING)
        job_runner.serve_forever(stop)


@contextlib.contextmanager
def _signals() -> Iterator[threading.Event]:
    """An event SIGTERM and SIGINT set (instead of ending the process mid-job)."""
    stop = threading.Event()

    def on_signal(signum: int, frame: object) -> None:
        stop.set()

    previous = {sig: signal.signal(sig, on_signal) for sig in (signal.SIGTERM, signal.SIGINT)}
    try:
        yield stop
    finally:
        for sig, handler in previous.items():
            signal.signal(sig, handler)
