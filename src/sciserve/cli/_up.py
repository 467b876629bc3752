"""``sciserve up``: the main job on the embedded default registry.

On first start it builds the example models (no network needed), publishes
them and points ``production`` at them; then it shows what the registry
holds and runs one in-process prediction through the SDK, so a newcomer sees
real, working content.
"""

from __future__ import annotations

import shlex
import shutil
import sys
import tempfile
from pathlib import Path
from typing import TYPE_CHECKING, Annotated, Any

import numpy as np
import platformdirs
import typer
from rich.table import Column, Table
from rich.text import Text

from ..config import ServingConfig
from ..errors import NotFound
from ..model import load
from ..package.reference import served_name
from ..registry.registry import Registry, VersionInfo
from ._context import State, local_actor, state

if TYPE_CHECKING:
    from ..server import Addresses

EXAMPLES = ("examples/lc-classifier", "examples/lc-classifier-gbm")


def register(app: typer.Typer) -> None:
    app.command("up")(up)


def ensure_examples(reg: Registry) -> list[str]:
    """Publish the example models unless they are there; return what was added."""
    from ..examples import build_examples

    missing = []
    for ref in EXAMPLES:
        try:
            reg.resolve(ref)
        except NotFound:
            missing.append(ref)
    if not missing:
        return []
    with tempfile.TemporaryDirectory(prefix="examples-", dir=reg.settings.home) as tmp:
        added = []
        for package in build_examples(Path(tmp)):
            result = reg.publish(package, actor=local_actor())
            info = result.version
            if info.ref.rsplit(":", 1)[0] in missing:
                reg.tag(info.ref, "production", actor=local_actor())
                added.append(info.ref)
    return added


def up(
    ctx: typer.Context,
    serve: Annotated[bool, typer.Option(help="Serve the models afterwards (Ctrl-C stops).")] = True,
    http_port: Annotated[int, typer.Option(help="HTTP port (0: pick a free one).")] = 8000,
    grpc_port: Annotated[int, typer.Option(help="gRPC port (0: pick a free one).")] = 8001,
    metrics_port: Annotated[int, typer.Option(help="Metrics port (0: free one).")] = 8002,
) -> None:
    """Publish the example models (first start), show them working, then serve them."""
    st = state(ctx)
    with st.local_registry() as reg:
        added = ensure_examples(reg)
        models = reg.list_models()
        demo = _demo_prediction(reg)
    if st.json:
        st.emit(
            {
                "home": str(st.settings.home),
                "added": added,
                "models": [m.to_dict() for m in models],
                "prediction": demo,
                "next": next_commands(st, None),
            },
            lambda: None,
        )
    else:
        _show(st, added, models, demo)
    if not serve:
        if not st.json:
            _print_next(st, None)
        return
    from ._serve import run_server

    def announce(addresses: Addresses) -> None:
        if not st.json:
            _print_next(st, f"{addresses.host}:{addresses.http_port}")

    run_server(
        st.settings,
        ServingConfig(http_port=http_port, grpc_port=grpc_port, metrics_port=metrics_port),
        announce=announce,
        jobs=st.settings.jobs.run_in_server and not st.settings.read_only,
    )


def _demo_prediction(reg: Registry) -> dict[str, Any]:
    """Classify a few freshly simulated light curves with every example model."""
    from ..examples import CLASSES, extract_many, simulate

    curves = simulate(5, seed=2026)
    features = extract_many(curves)
    predicted: dict[str, list[str]] = {}
    for ref in EXAMPLES:
        with load(ref, registry=reg) as model:
            probs = model.predict(features=features)["probabilities"]
        predicted[model.ref] = [CLASSES[int(np.argmax(p))] for p in probs]
    rows = [
        {"object": c.object_id, "truth": c.label, **{m: p[i] for m, p in predicted.items()}}
        for i, c in enumerate(curves)
    ]
    return {"models": list(predicted), "rows": rows}


def next_commands(st: State, http: str | None) -> list[str]:
    """Commands to try next, written so they work in a fresh shell.

    A plain ``sciserve`` there would find neither this registry (unless it is
    the default one) nor, outside the virtual environment, the program:
    the first line sets both when needed.
    """
    setup = []
    home = st.settings.home.absolute()
    if home != Path(platformdirs.user_data_dir("sciserve")).absolute():
        setup.append(f"SCISERVE_HOME={shlex.quote(str(home))}")
    program = "sciserve"
    script = Path(sys.argv[0]).absolute()
    if script.name != "sciserve":  # python -m sciserve
        program = f"{shlex.quote(sys.executable)} -m sciserve"
    else:
        # In a virtual environment, a fresh shell has not activated it.
        found = shutil.which("sciserve")
        in_venv = sys.prefix != sys.base_prefix
        if in_venv or found is None or Path(found).resolve() != script.resolve():
            setup.append(f"PATH={shlex.quote(str(script.parent))}:$PATH")
    commands = [f"export {' '.join(setup)}"] if setup else []
    commands += [f"{program} models list", f"{program} models card {EXAMPLES[0]}"]
    if http is not None:
        served = served_name(*EXAMPLES[0].split("/"))
        commands.append(f"curl -s {http}/v2/models/{served}")
    return commands


def _print_next(st: State, http: str | None) -> None:
    where = "in another shell (Ctrl-C here stops the server)" if http else "in any shell"
    lines = "\n".join(f"  {command}" for command in next_commands(st, http))
    st.console.print(f"next, {where}:\n{lines}", markup=False, soft_wrap=True)


def _show(st: State, added: list[str], models: list[VersionInfo], demo: dict[str, Any]) -> None:
    """One summary table: what the registry serves, and how each example did."""
    con = st.console
    con.print(f"registry in {st.settings.home.absolute()}", markup=False, soft_wrap=True)
    if added:
        con.print(f"published {len(added)} example models (first start)")
    rows = len(demo["rows"])
    right = {ref: sum(row[ref] == row["truth"] for row in demo["rows"]) for ref in demo["models"]}
    table = Table(
        Column("model, served as", overflow="fold"),
        Column("aliases", overflow="fold"),
        Column("check", overflow="fold"),
        caption=f"check: {rows} freshly simulated light curves classified in-process",
    )
    for m in models:
        check = right.get(m.ref)
        table.add_row(
            Text(f"{m.ref}\n{served_name(m.namespace, m.name)}"),
            Text(", ".join(m.aliases)),
            "" if check is None else f"{check}/{rows} right",
        )
    con.print(table)
