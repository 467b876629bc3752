"""``sciserve stream``: run models on alert streams, and watch or stop the workers."""

from __future__ import annotations

import asyncio
import csv
import json
import signal
import sys
from pathlib import Path
from typing import Annotated, Any

import typer
from rich.table import Table
from rich.text import Text

from ..errors import InvalidInput, NotFound
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
    stream.command("results")(results)
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


#: Annotations shown as a table unless ``--limit`` says otherwise; CSV and
#: JSON give every one.
_TABLE_ROWS = 50
#: The CSV columns, in order; ``outputs`` and ``library_versions`` as JSON.
RESULT_COLUMNS = (
    "alert_id",
    "model",
    "model_version",
    "label",
    "score",
    "published",
    "filter_error",
    "pipeline",
    "model_digest",
    "runtime",
    "broker_timestamp_ms",
    "processed_at",
    "outputs",
    "library_versions",
)


def results(
    ctx: typer.Context,
    name: Annotated[str, typer.Argument(help="The pipeline.", show_default=False)],
    alert: Annotated[
        int | None, typer.Option("--alert", help="Only this alert id.", show_default=False)
    ] = None,
    model: Annotated[
        str | None, typer.Option(help="Only this model (namespace/name).", show_default=False)
    ] = None,
    csv_output: Annotated[bool, typer.Option("--csv", help="CSV on stdout, every row.")] = False,
    limit: Annotated[
        int | None,
        typer.Option(
            min=1,
            help=f"At most this many (default: all; {_TABLE_ROWS} in the table).",
            show_default=False,
        ),
    ] = None,
) -> None:
    """The annotations a pipeline stored in the result store, by alert id."""
    from ..streams.results import ResultStore

    st = state(ctx)
    settings = st.settings
    if settings.server_url:
        raise InvalidInput(
            "the result store is read from the registry database; run this where it is "
            "(or point --database-url at it), without --server / SCISERVE_URL"
        )
    table = not (csv_output or st.json)
    rows = limit if limit is not None else (_TABLE_ROWS if table else None)
    with ResultStore.open(settings, create=False) as store:
        found = store.read(pipeline=name, model=model, alert_id=alert, limit=rows)
        if csv_output:
            if not _write_csv(_result_rows(found)):
                raise NotFound(_nothing(name, alert, model))
            return
        items = [a.to_dict() | {"published": a.published, "filter_error": a.filter_error}
                 for a in found]  # fmt: skip
        total = store.count(pipeline=name, model=model) if table and alert is None else None
    if not items:
        raise NotFound(_nothing(name, alert, model))

    def human() -> None:
        grid = Table("alert", "model", "version", "label", "score", "published", "processed")
        for item in items:
            grid.add_row(
                str(item["alert_id"]),
                item["model"],
                item["model_version"],
                Text(item["label"] or "-"),
                _number(item["score"]),
                "yes" if item["published"] else "no",
                str(item["processed_at"])[:19],
            )
        st.console.print(grid)
        if total is not None and total > len(items):
            st.console.print(f"{len(items)} of {total}; all of them with --csv or --limit")

    st.emit(items, human)


def _nothing(name: str, alert: int | None, model: str | None) -> str:
    what = f"alert {alert}" if alert is not None else "any alert"
    by = f" by {model}" if model else ""
    return f"no annotations of {what}{by} from pipeline {name!r} in the result store"


def _result_rows(found: Any) -> Any:
    for annotation in found:
        row = annotation.to_dict()
        row["published"] = annotation.published
        row["filter_error"] = annotation.filter_error
        for key in ("outputs", "library_versions"):
            row[key] = json.dumps(row[key], separators=(",", ":"), sort_keys=True)
        yield row


def _write_csv(rows: Any) -> int:
    """Write ``rows`` as CSV to stdout, as they come; how many there were."""
    writer = csv.DictWriter(sys.stdout, RESULT_COLUMNS, extrasaction="ignore", lineterminator="\n")
    written = 0
    for row in rows:
        if not written:
            writer.writeheader()
        writer.writerow(row)
        written += 1
    return written
