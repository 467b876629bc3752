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
    batch.command("script")(script)
    app.add_typer(batch, name="batch")


def run(
    ctx: typer.Context,
    spec: Annotated[Path, typer.Argument(help="Batch spec (YAML).", show_default=False)],
    scheduler: Annotated[
        str | None,
        typer.Option(help="Run on an existing Dask cluster: its scheduler, tcp://HOST:PORT."),
    ] = None,
    cluster: Annotated[
        str | None,
        typer.Option(
            help="Run on workers started as jobs of a cluster profile ([clusters.NAME] "
            "in sciserve.toml): Slurm, HTCondor, PBS or Kubernetes."
        ),
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

    Workers load the models from the registry (--home): with --scheduler or
    --cluster, every worker must be able to read it (e.g. a shared file system).
    """
    from ..batch.executor import cluster_client, dask_client
    from ..batch.job import BatchJob
    from ..errors import InvalidInput
    from ..streams.spec import load_batch_spec

    if scheduler is not None and cluster is not None:
        raise InvalidInput("--scheduler and --cluster exclude each other: give one")
    if workers is not None and (scheduler is not None or cluster is not None):
        raise InvalidInput("--workers sizes the local cluster only (a profile has min/max_jobs)")
    st = state(ctx)
    if home is not None:
        st.home = str(home)
    settings = st.settings
    profile = settings.cluster(cluster) if cluster is not None else None
    job = BatchJob(load_batch_spec(spec), settings, out or settings.home / "batch", job_id=job_id)
    job.plan()  # every check before a cluster starts
    if profile is not None and not profile.send_token:
        # Planned with the token (models pinned on servers); the tasks go
        # without it, and workers use the one their site sets.
        job.settings = settings.model_copy(update={"token": None})
    executor = (
        cluster_client(cluster, profile, settings)
        if cluster is not None and profile is not None
        else dask_client(scheduler, workers or os.cpu_count() or 1)
    )
    with (
        executor as client,
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


def script(
    ctx: typer.Context,
    cluster: Annotated[
        str, typer.Option(help="The cluster profile ([clusters.NAME] in sciserve.toml).")
    ],
) -> None:
    """Print the job script a cluster profile submits for each of its jobs
    (Slurm or PBS script, HTCondor submit description, Kubernetes resource),
    to check with the site before a run.  The scheduler's port in it is the
    default one; a run picks a free port."""
    from ..batch.executor import job_script

    settings = state(ctx).settings
    text = job_script(cluster, settings.cluster(cluster), settings)
    typer.echo(text, nl=not text.endswith("\n"))


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
