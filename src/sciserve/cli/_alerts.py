"""``sciserve alerts``: the simulated Rubin alert stream and the shipped schemas."""

from __future__ import annotations

import asyncio
import contextlib
import csv
import time
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import TYPE_CHECKING, Annotated, Any, TextIO

import typer
from rich.progress import BarColumn, MofNCompleteColumn, Progress, TextColumn, TimeElapsedColumn
from rich.table import Table

from ..errors import InvalidInput
from ._context import State, state

if TYPE_CHECKING:
    from ..streams.base import Sink
    from ..streams.simulate import AlertSimulator, SimulatedAlert

# A record waits at most this long (s) for others to share its write.
_LINGER = 0.05


def register(app: typer.Typer) -> None:
    alerts = typer.Typer(
        help="Alert streams: simulate Rubin alerts, list alert schemas.",
        no_args_is_help=True,
    )
    alerts.command("simulate")(simulate)
    alerts.command("schemas")(schemas)
    app.add_typer(alerts, name="alerts")


def _rate(value: str) -> float:
    """``100``, ``100/s`` or ``2.5/s``: alerts per second; 0 means unlimited."""
    number = value.strip().removesuffix("/s")
    try:
        rate = float(number)
    except ValueError:
        raise typer.BadParameter(f"{value!r} is not a rate such as 100/s") from None
    if not rate >= 0 or rate == float("inf"):
        raise typer.BadParameter(f"{value!r}: the rate must be a finite number >= 0")
    return rate


def simulate(
    ctx: typer.Context,
    to: Annotated[
        str,
        typer.Option(
            "--to",
            help="Where to send the alerts: kafka://host:port/topic, "
            "nats://host:port/subject or file:///path.avro|.parquet "
            "(Avro alerts are binary: a .jsonl file cannot hold them).",
        ),
    ],
    count: Annotated[
        int, typer.Option(min=0, help="Alerts to send; 0 sends until interrupted.")
    ] = 1000,
    rate: Annotated[
        str, typer.Option(help="Alerts per second, e.g. 200/s; 0 is as fast as possible.")
    ] = "0",
    schema: Annotated[str, typer.Option(help="Schema version: lsst (newest), lsst:M.m.")] = "lsst",
    seed: Annotated[
        int, typer.Option(help="Random seed; the same seed gives the same alerts.")
    ] = 0,
    n_detections: Annotated[
        int, typer.Option(min=0, help="Earlier detections (prvDiaSources) per alert.")
    ] = 30,
    truth: Annotated[
        Path | None,
        typer.Option(help="Write alert_id, object_id and label of every sent alert to this CSV."),
    ] = None,
    batch: Annotated[int, typer.Option(min=1, help="Most alerts per write to the sink.")] = 100,
) -> None:
    """Send schema-valid Rubin alerts with labelled light curves to a stream."""
    from ..streams.base import open_sink
    from ..streams.simulate import AlertSimulator

    st = state(ctx)
    per_second = _rate(rate)
    simulator = AlertSimulator(schema, seed=seed, n_detections=n_detections)
    sink = open_sink(to)
    started = time.monotonic()
    with _truth_file(truth) as truth_rows, _progress(st, count) as advance:
        sent = asyncio.run(
            _produce(
                simulator,
                sink,
                count=count,
                bucket=_TokenBucket(per_second) if per_second > 0 else None,
                batch=batch,
                on_sent=lambda alerts: _record(alerts, truth_rows, advance),
            )
        )
    elapsed = time.monotonic() - started
    summary = {
        "sent": sent,
        "to": to,
        "schema": simulator.schema.name,
        "seconds": round(elapsed, 3),
        "rate": round(sent / elapsed, 1) if elapsed > 0 else None,
        "truth": str(truth) if truth else None,
    }
    st.emit(
        summary,
        lambda: st.err.print(
            f"sent {sent} {simulator.schema.name} alerts to {to} in {elapsed:.1f} s "
            f"({summary['rate']} alerts/s)",
            soft_wrap=True,
        ),
    )


def schemas(ctx: typer.Context) -> None:
    """List the Rubin alert schema versions this installation can read and write."""
    from ..streams.schemas import RubinSchemas

    st = state(ctx)
    registry = RubinSchemas()
    latest = registry.latest()
    rows: list[dict[str, Any]] = []
    for version in registry.versions():
        loaded = registry.get(version)
        rows.append(
            {
                "name": loaded.name,
                "version": version,
                "schema_id": loaded.schema_id,
                "id_field": loaded.id_field,
                "latest": version == latest,
            }
        )

    def human() -> None:
        table = Table("name", "schema id", "alert id", "", box=None, pad_edge=False)
        for row in rows:
            table.add_row(
                row["name"],
                str(row["schema_id"]),
                row["id_field"],
                "latest" if row["latest"] else "",
            )
        st.console.print(table)

    st.emit(rows, human)


# -- producing ----------------------------------------------------------------


class _TokenBucket:
    """Paces events to ``rate`` per second on average.

    Tokens accrue continuously up to ``burst``; taking one when none is left
    runs into debt, and :meth:`take` returns how long to wait until the debt
    is paid.  A producer slower than the rate never waits.
    """

    def __init__(
        self, rate: float, *, burst: float = 1.0, clock: Callable[[], float] = time.monotonic
    ) -> None:
        self.rate = rate
        self.burst = burst
        self._clock = clock
        self._tokens = burst
        self._last = clock()

    def take(self) -> float:
        """Take one token; return the seconds to wait before using it."""
        now = self._clock()
        self._tokens = min(self.burst, self._tokens + (now - self._last) * self.rate)
        self._last = now
        self._tokens -= 1.0
        return 0.0 if self._tokens >= 0 else -self._tokens / self.rate


async def _produce(
    simulator: AlertSimulator,
    sink: Sink,
    *,
    count: int,
    bucket: _TokenBucket | None,
    batch: int,
    on_sent: Callable[[list[SimulatedAlert]], None],
) -> int:
    """Write ``count`` alerts (all, for 0) to ``sink`` at the bucket's pace."""
    from ..streams.base import OutRecord

    sent = 0
    pending: list[SimulatedAlert] = []
    oldest = 0.0

    async def flush() -> None:
        nonlocal sent
        if pending:
            await sink.write(
                # Keyed by object, so a partitioned broker keeps each
                # object's alerts in order.
                [OutRecord(value=a.payload, key=str(a.object_id).encode()) for a in pending]
            )
            sent += len(pending)
            on_sent(list(pending))
            pending.clear()

    async with sink:
        for alert in simulator.alerts(count or None):
            if not pending:
                oldest = time.monotonic()
            pending.append(alert)
            wait = bucket.take() if bucket is not None else 0.0
            age = time.monotonic() - oldest
            # Write when the batch is full, or before a wait that would hold
            # the pending alerts back longer than the linger time.
            if len(pending) >= batch or age + wait >= _LINGER:
                await flush()
            if wait > 0:
                await asyncio.sleep(wait)
        await flush()
    return sent


def _record(
    alerts: list[SimulatedAlert], truth: csv.DictWriter[str] | None, advance: Callable[[int], None]
) -> None:
    if truth is not None:
        truth.writerows(alert.truth() for alert in alerts)
    advance(len(alerts))


@contextlib.contextmanager
def _truth_file(path: Path | None) -> Iterator[csv.DictWriter[str] | None]:
    if path is None:
        yield None
        return
    from ..streams.simulate import TRUTH_COLUMNS

    try:
        fh: TextIO = path.open("w", newline="", encoding="utf-8")
    except OSError as exc:
        raise InvalidInput(f"cannot write the truth table {path}: {exc}") from exc
    with fh:
        writer = csv.DictWriter(fh, fieldnames=TRUTH_COLUMNS)
        writer.writeheader()
        yield writer


@contextlib.contextmanager
def _progress(st: State, count: int) -> Iterator[Callable[[int], None]]:
    """A progress bar on stderr, for terminals only and never with --json."""
    if st.json or not st.err.is_terminal:
        yield lambda n: None
        return
    columns: list[Any] = [TextColumn("alerts"), BarColumn(), MofNCompleteColumn()]
    with Progress(*columns, TimeElapsedColumn(), console=st.err) as bar:
        task = bar.add_task("alerts", total=count or None)
        yield lambda n: bar.advance(task, n)
