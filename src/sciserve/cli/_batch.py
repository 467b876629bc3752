"""``sciserve batch``: re-run models over an archive on Dask."""

from __future__ import annotations

import os
import time
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from pathlib import Path
from typing import TYPE_CHECKING, Annotated

import typer
from rich.progress import BarColumn, MofNCompleteColumn, Progress, TextColumn, TimeRemainingColumn

from ._context import State, state

if TYPE_CHECKING:
    from ..batch.worker import ShardResult

__all__ = ["register"]


def register(app: typer.Typer) -> None:
    batch = typer.Typer(
        name="batch",
        help="Re-run models over archives (Parquet, Avro, JSON Lines) on Dask.",
        no_args_is_help=True,
    )
    batch.command("run")(run)
    app.add_typer(batch, name="batch")


def run(
    ctx: typer.Context,
    spec: Annotated[Path, typer.Argument(help="Batch spec (YAML).", show_default=False)],
    scheduler: Annotated[
        str | None,
        typer.Option(help="Run on an existing Dask cluster: its scheduler, tcp://HOST:PORT."),
    ] = None,
    workers: Annotated[
        int | None,
        typer.Option(help="Worker processes of the local cluster [default: the cores]."),
    ] = None,
    out: Annotated[
        Path | None,
        typer.Option(help="Output directory; the job writes to OUT/JOB_ID [default: HOME/batch]."),
    ] = None,
    job_id: Annotated[
        str | None,
        typer.Option(help="Job id [default: derived from the spec, the models and the input]."),
    ] = None,
    home: Annotated[
        Path | None,
        typer.Option(
            "--home",
            help="The registry the workers load models from [default: the global --home].",
            show_default=False,
        ),
    ] = None,
) -> None:
    """Run a batch job: every input row gives one output row per model, or a
    dead letter; re-running the same job redoes only unfinished shards.

    Workers load the models from the registry (--home): with --scheduler,
    every worker must be able to read it (e.g. a shared file system).
    """
    from ..batch.executor import dask_client
    from ..batch.job import BatchJob
    from ..streams.spec import load_batch_spec

    st = state(ctx)
    if home is not None:
        st.home = str(home)
    settings = st.settings
    job = BatchJob(load_batch_spec(spec), settings, out or settings.home / "batch", job_id=job_id)
    job.plan()  # every check before a cluster starts
    with (
        dask_client(scheduler, workers or os.cpu_count() or 1) as client,
        _progress(st, len(job.pending())) as on_shard,
    ):
        report = job.run(client, on_shard)
    st.emit(
        report.to_dict(),
        lambda: st.console.print(
            f"job {report.job_id}: {report.shards} shards ({len(report.ran)} run, "
            f"{len(report.skipped)} already done); {report.rows} rows in, "
            f"{report.outputs} output rows, {report.dead_letters} dead letters\n"
            f"verified: every shard's output accounts for each of its input rows exactly "
            f"once\noutput: {report.out_dir}"
        ),
    )


@contextmanager
def _progress(st: State, total: int) -> Iterator[Callable[[ShardResult], None]]:
    """Shards done / total, rows/s and ETA on stderr (silent for --json or non-terminals)."""
    if st.json or not st.err.is_terminal:
        yield lambda result: None
        return
    started = time.perf_counter()
    rows = 0
    with Progress(
        TextColumn("shards"),
        BarColumn(),
        MofNCompleteColumn(),
        TextColumn("{task.fields[rate]}"),
        TimeRemainingColumn(),
        console=st.err,
    ) as bar:
        task = bar.add_task("shards", total=total, rate="")

        def advance(result: ShardResult) -> None:
            nonlocal rows
            rows += result.rows
            rate = rows / max(time.perf_counter() - started, 1e-9)
            bar.update(task, advance=1, rate=f"{rate:,.0f} rows/s")

        yield advance
