"""``sciserve stream``: run models on alert streams, and watch or stop the workers."""

from __future__ import annotations

import asyncio
import signal
from pathlib import Path
from typing import Annotated, Any

import typer
from rich.table import Table

from ..errors import NotFound
from ._context import log_to_stderr, state

__all__ = ["register"]


def register(app: typer.Typer) -> None:
    stream = typer.Typer(
        name="stream",
        help="Run models on alert streams (Kafka, NATS JetStream, files).",
        no_args_is_help=True,
    )
    stream.command("run")(run)
    stream.command("status")(status)
    stream.command("stop")(stop)
    app.add_typer(stream, name="stream")


def run(
    ctx: typer.Context,
    spec: Annotated[Path, typer.Argument(help="Pipeline spec (YAML).", show_default=False)],
    metrics_port: Annotated[
        int | None,
        typer.Option(help="Serve Prometheus metrics on 127.0.0.1:PORT (0: a free port)."),
    ] = None,
) -> None:
    """Run a pipeline until its source runs dry or SIGTERM / SIGINT drains it.

    Several workers started with the same spec share the stream (same Kafka
    consumer group or JetStream durable consumer).
    """
    from ..streams.pipeline import run_pipeline
    from ..streams.spec import load_spec

    st = state(ctx)
    pipeline = load_spec(spec)
    log_to_stderr()
    summary = asyncio.run(run_pipeline(pipeline, st.settings, metrics_port=metrics_port))
    st.emit(
        {"name": pipeline.name, **summary},
        lambda: st.console.print(
            f"{pipeline.name}: {summary['consumed']} consumed, {summary['annotated']} annotated, "
            f"{summary['published']} published, {summary['dead_lettered']} dead-lettered"
        ),
    )


def status(
    ctx: typer.Context,
    name: Annotated[
        str | None, typer.Argument(help="Only this pipeline.", show_default=False)
    ] = None,
) -> None:
    """Show the workers of every pipeline (or one) from their status files.

    A worker that died without stopping (e.g. killed) is shown as stale.
    """
    from ..streams.metrics import read_statuses

    st = state(ctx)
    workers = read_statuses(st.settings.home, name)
    if name is not None and not workers:
        raise NotFound(f"no status of pipeline {name!r} under {st.settings.home}")
    rows = [{**w.data, "state": "stale" if w.stale else w.state, "stale": w.stale} for w in workers]

    def human() -> None:
        if not rows:
            st.console.print("no pipelines have run here")
            return
        table = Table(box=None, pad_edge=False)
        for column in (
            "pipeline",
            "pid",
            "host",
            "state",
            "consumed",
            "annotated",
            "stored",
            "already",
            "dead",
            "lag",
            "p50 s",
            "p99 s",
            "updated",
        ):
            table.add_column(column, justify="right" if column in _NUMERIC else "left")
        for row in rows:
            table.add_row(
                row["name"],
                str(row["pid"]),
                str(row.get("host", "")),
                row["state"],
                _number(row.get("consumed")),
                _number(row.get("annotated")),
                _number(row.get("stored")),
                _number(row.get("already_stored")),
                _number(row.get("dead_lettered")),
                _number(row.get("lag")),
                _number(row.get("latency_p50")),
                _number(row.get("latency_p99")),
                str(row.get("updated_at", ""))[:19],
            )
        st.console.print(table)
        shared = sum(int(row.get("conflicting") or 0) for row in rows)
        if shared:
            st.console.print(
                f"warning: {shared} annotation(s) were of alerts whose id an earlier, different "
                "alert already had; the earlier annotations are kept (see the pipeline log)"
            )

    st.emit(rows, human)


_NUMERIC = frozenset(
    {"pid", "consumed", "annotated", "stored", "already", "dead", "lag", "p50 s", "p99 s"}
)


def _number(value: Any) -> str:
    if value is None:
        return "-"
    if isinstance(value, float):
        return f"{value:.3f}"
    return str(value)


def stop(
    ctx: typer.Context,
    name: Annotated[str, typer.Argument(help="The pipeline to stop.", show_default=False)],
) -> None:
    """Ask the live workers of a pipeline on this host to drain and exit (SIGTERM)."""
    from ..streams.metrics import signal_workers

    st = state(ctx)
    signalled = signal_workers(st.settings.home, name, signal.SIGTERM)
    if not signalled:
        raise NotFound(f"no live worker of pipeline {name!r} on this host")
    pids = [w.pid for w in signalled]
    st.emit(
        {"name": name, "signalled": pids},
        lambda: st.console.print(
            f"asked {len(pids)} worker(s) of {name} to stop: pid {', '.join(map(str, pids))}"
        ),
    )
