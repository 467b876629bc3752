"""``sciserve namespace create|list|trust|distrust``."""

from __future__ import annotations

from typing import Annotated

import typer
from rich.table import Table

from ..registry.registry import NamespaceInfo
from ._context import State, local_actor, state

app = typer.Typer(
    help="Namespaces own models; only trusted ones may publish code.", no_args_is_help=True
)


def _show(st: State, ns: NamespaceInfo) -> None:
    st.emit(
        {
            "name": ns.name,
            "trusted": ns.trusted,
            "description": ns.description,
            "created_at": ns.created_at.isoformat(),
        },
        lambda: st.console.print(f"{ns.name} (trusted={str(ns.trusted).lower()})"),
    )


@app.command("create")
def create(
    ctx: typer.Context,
    name: str,
    trusted: Annotated[bool, typer.Option(help="Allow code-executing runtimes.")] = False,
    description: Annotated[str | None, typer.Option()] = None,
) -> None:
    """Create a namespace."""
    st = state(ctx)
    with st.local_registry() as reg:
        _show(
            st,
            reg.create_namespace(
                name, trusted=trusted, description=description, actor=local_actor()
            ),
        )


@app.command("list")
def list_(ctx: typer.Context) -> None:
    """List namespaces."""
    st = state(ctx)
    with st.local_registry(create=False) as reg:
        items = reg.namespaces()

    def human() -> None:
        table = Table("namespace", "trusted", "description")
        for ns in items:
            table.add_row(ns.name, "yes" if ns.trusted else "no", ns.description or "")
        st.console.print(table)

    st.emit(
        [{"name": n.name, "trusted": n.trusted, "description": n.description} for n in items], human
    )


@app.command("trust")
def trust(ctx: typer.Context, name: str) -> None:
    """Allow a namespace to publish and load code-executing runtimes (pickle, Python)."""
    st = state(ctx)
    with st.local_registry() as reg:
        _show(st, reg.set_trusted(name, True, actor=local_actor()))


@app.command("distrust")
def distrust(ctx: typer.Context, name: str) -> None:
    """Withdraw trust: its code-executing packages no longer load."""
    st = state(ctx)
    with st.local_registry() as reg:
        _show(st, reg.set_trusted(name, False, actor=local_actor()))
