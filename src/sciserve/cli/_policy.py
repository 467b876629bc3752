"""``sciserve policy set|show|clear``, ``evaluations`` and ``leaderboard``: evaluation records
and what they decide."""

from __future__ import annotations

import enum
import sys
from pathlib import Path
from typing import Annotated

import typer
from rich.table import Table

from ..registry.leaderboard import Direction
from ..registry.promotion import DEFAULT_SPLIT, Policy
from ._context import State, local_actor, state

app = typer.Typer(
    help="Promotion policies: the evaluations a version needs before it takes an alias.",
    no_args_is_help=True,
)


def register(root: typer.Typer) -> None:
    root.add_typer(app, name="policy")
    root.command("evaluations")(evaluations)
    root.command("leaderboard")(leaderboard)


def _show(st: State, policies: list[Policy]) -> None:
    def human() -> None:
        if not policies:
            st.console.print("no promotion policy")
        for p in policies:
            st.console.print(f"{p.namespace}/{p.name}@{p.alias} requires:")
            for r in p.requirements:
                st.console.print(f"  {r}")

    st.emit({"policies": [p.to_dict() for p in policies]}, human)


@app.command("set")
def set_(
    ctx: typer.Context,
    model: Annotated[str, typer.Argument(help="NAME (a model, not a version)")],
    require: Annotated[
        list[str],
        typer.Option(
            "--require",
            help="DATASET[:VERSION]:METRIC OP VALUE, e.g. 'lightcurves:weighted_log_loss <= 0.9'; "
            "repeat for more.",
        ),
    ],
    alias: Annotated[str, typer.Option(help="The alias it guards.")] = "production",
    split: Annotated[str, typer.Option(help="The dataset split the records must be on.")] = (
        DEFAULT_SPLIT
    ),
) -> None:
    """Require passing evaluation records before a version takes ALIAS (replaces the old policy)."""
    st = state(ctx)
    with st.registry() as reg:
        policy = reg.set_policy(model, require, alias=alias, split=split, actor=local_actor())
    _show(st, [policy])


@app.command("show")
def show(ctx: typer.Context, model: Annotated[str, typer.Argument(help="NAME")]) -> None:
    """The promotion policies of a model."""
    st = state(ctx)
    with st.registry(create=False) as reg:
        _show(st, reg.policies(model))


@app.command("clear")
def clear(
    ctx: typer.Context,
    model: Annotated[str, typer.Argument(help="NAME")],
    alias: Annotated[str, typer.Option(help="The alias it guards.")] = "production",
) -> None:
    """Remove the policy guarding ALIAS."""
    st = state(ctx)
    with st.registry() as reg:
        reg.clear_policy(model, alias=alias, actor=local_actor())
    st.emit({"cleared": alias}, lambda: st.console.print(f"cleared the policy on {alias}"))


def evaluations(
    ctx: typer.Context,
    model: Annotated[str, typer.Argument(help="NAME or NAME:VERSION")],
    dataset: Annotated[str | None, typer.Option(help="Only records on this dataset.")] = None,
    limit: Annotated[int, typer.Option(min=1, max=10_000)] = 100,
) -> None:
    """Evaluation records of a model, newest first."""
    st = state(ctx)
    with st.registry(create=False) as reg:
        found = reg.evaluations(model, dataset=dataset, limit=limit)

    def human() -> None:
        table = Table("record", "version", "dataset", "split", "metrics", "at")
        for e in found:
            shown = ", ".join(f"{k}={v:.4g}" for k, v in sorted(e.metrics.items())[:6])
            at = e.created_at.isoformat(timespec="seconds") if e.created_at else ""
            table.add_row(
                e.record_id, e.version, f"{e.dataset}:{e.dataset_version}", e.split, shown, at
            )
        st.console.print(table)

    st.emit({"evaluations": [e.to_dict() for e in found]}, human)


class Format(enum.StrEnum):
    table = "table"
    csv = "csv"
    json = "json"


def leaderboard(
    ctx: typer.Context,
    dataset: Annotated[str, typer.Argument(help="[NAMESPACE/]DATASET")],
    metric: Annotated[str, typer.Option(help="The metric to rank by, e.g. weighted_log_loss.")],
    split: Annotated[str, typer.Option(help="The dataset split.")] = DEFAULT_SPLIT,
    direction: Annotated[
        Direction | None,
        typer.Option(
            help="Which values are better (default: the metric's own: scores higher, "
            "losses and errors lower, a bias nearer zero)."
        ),
    ] = None,
    format_: Annotated[Format, typer.Option("--format")] = Format.table,
    output: Annotated[Path | None, typer.Option(help="Write the CSV or JSON here.")] = None,
) -> None:
    """Model versions ranked by their newest evaluation on DATASET."""
    st = state(ctx)
    with st.registry(create=False) as reg:
        board = reg.leaderboard(dataset, metric, split=split, direction=direction)
    if format_ is not Format.table or output is not None:
        text = board.to_csv() if format_ is Format.csv else board.to_json()
        if output is not None:
            output.write_text(text)
            st.emit(
                {"written": str(output), "entries": len(board.entries)},
                lambda: st.console.print(f"wrote {len(board.entries)} entries to {output}"),
            )
        else:
            sys.stdout.write(text)
        return

    def human() -> None:
        order = {"higher": "higher is better", "lower": "lower is better"}.get(
            board.direction, "nearer zero is better"
        )
        table = Table(
            "rank",
            "model",
            board.metric,
            "record",
            "dataset version",
            title=f"{board.dataset} ({board.split}), {board.metric}: {order}",
        )
        for e in board.entries:
            table.add_row(str(e.rank), e.model, f"{e.value:.6g}", e.record_id, e.dataset_version)
        st.console.print(table)
        if board.unranked:
            st.console.print(f"without {board.metric}: {', '.join(board.unranked)}")

    st.emit(board.to_dict(), human)
