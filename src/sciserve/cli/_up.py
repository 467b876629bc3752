"""``sciserve up``: the main job on the embedded default registry.

On first start it builds the example models (no network needed), publishes
them and points ``production`` at them; then it shows what the registry
holds and runs one in-process prediction through the SDK, so a newcomer sees
real, working content.
"""

from __future__ import annotations

import tempfile
from pathlib import Path
from typing import Annotated, Any

import numpy as np
import typer
from rich.markdown import Markdown
from rich.table import Table

from ..config import ServingConfig
from ..errors import NotFound
from ..model import load
from ..registry.registry import Registry, VersionInfo
from ._context import State, local_actor, state

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
        card_ref = reg.resolve(EXAMPLES[0])
        demo = _demo_prediction(reg)
    if st.json:
        st.emit(
            {
                "home": str(st.settings.home),
                "added": added,
                "models": [m.to_dict() for m in models],
                "prediction": demo,
            },
            lambda: None,
        )
    else:
        _show(st, added, models, card_ref, demo)
    if serve:
        from ._serve import run_server

        if not st.json:
            st.console.print(
                "serving the registry (Ctrl-C stops): try\n"
                f"  curl localhost:{http_port}/v2/models/examples.lc-classifier"
            )
        run_server(
            st.settings,
            ServingConfig(http_port=http_port, grpc_port=grpc_port, metrics_port=metrics_port),
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


def _show(
    st: State, added: list[str], models: list[VersionInfo], info: VersionInfo, demo: dict[str, Any]
) -> None:
    from ..package.card import render_card

    con = st.console
    con.rule("sciserve")
    con.print(f"registry: {st.settings.database_url}\nartifacts: {st.settings.store_url}")
    for ref in added:
        con.print(f"published example {ref} (alias production)")
    table = Table("model", "version", "aliases", "runtime", "license")
    for m in models:
        table.add_row(
            f"{m.namespace}/{m.name}",
            m.version,
            ", ".join(m.aliases),
            m.manifest.runtime,
            m.manifest.license or "",
        )
    con.print(table)
    con.print(Markdown(render_card(info.manifest, digest=info.digest, aliases=info.aliases)))
    pred = Table("object", "truth", *demo["models"], title="in-process predictions")
    for row in demo["rows"]:
        pred.add_row(str(row["object"]), row["truth"], *(row[m] for m in demo["models"]))
    con.print(pred)
    con.print("next: sciserve models card examples/lc-classifier · sciserve --help")
