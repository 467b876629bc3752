"""``sciserve init`` and ``sciserve validate``."""

from __future__ import annotations

from pathlib import Path
from typing import Annotated, Any

import typer
from rich.console import Console
from rich.text import Text

from ..errors import InvalidInput, ManifestError, Problem
from ..package.init import init_package, parse_tensor_option, update_package
from ..package.manifest import MANIFEST_NAME, load_manifest
from ..package.validate import check_package
from ._context import exit_code_for, state


def register(app: typer.Typer) -> None:
    app.command("init")(init)
    app.command("validate")(validate)


def init(
    ctx: typer.Context,
    model_file: Annotated[
        Path | None,
        typer.Argument(
            help="The model file (.onnx, .pt, .txt, ...); with --update, the package "
            "directory (default: the current one) or a new model file."
        ),
    ] = None,
    name: Annotated[str | None, typer.Option(help="Model name.")] = None,
    version: Annotated[str | None, typer.Option(help="Version, e.g. 1.0.0.")] = None,
    out: Annotated[
        Path | None, typer.Option(help="Write the package here instead of beside the model file.")
    ] = None,
    runtime: Annotated[str | None, typer.Option(help="Runtime (default: from the suffix).")] = None,
    namespace: Annotated[str | None, typer.Option(help="Namespace (default: default).")] = None,
    input_: Annotated[
        list[str] | None,
        typer.Option("--input", help="NAME:DATATYPE:SHAPE, e.g. x:FP32:-1,64 (repeatable)."),
    ] = None,
    output: Annotated[
        list[str] | None, typer.Option("--output", help="NAME:DATATYPE:SHAPE (repeatable).")
    ] = None,
    license_: Annotated[
        str | None, typer.Option("--license", help="SPDX licence expression.")
    ] = None,
    description: Annotated[str | None, typer.Option(help="What the model does.")] = None,
    author: Annotated[
        list[str] | None, typer.Option(help="NAME[,ORCID[,AFFILIATION]] (repeatable).")
    ] = None,
    file: Annotated[
        list[Path] | None,
        typer.Option("--file", help="Another file that belongs to the package (repeatable)."),
    ] = None,
    update: Annotated[
        bool,
        typer.Option(
            "--update",
            help="Refresh an existing sciserve.yaml: files, sizes, checksums and the "
            "signature; keep everything else (options given here replace their fields).",
        ),
    ] = False,
    force: Annotated[
        bool, typer.Option("--force", help="Overwrite an existing sciserve.yaml.")
    ] = False,
) -> None:
    """Scaffold sciserve.yaml for an existing model file (or refresh one: --update)."""
    st = state(ctx)
    if update and force:
        raise InvalidInput("pass --update or --force, not both")
    authors = []
    for text in author or []:
        # Checked with the whole manifest: a bad ORCID is a problem with a hint.
        parts = [p.strip() or None for p in text.split(",")]
        fields = dict(zip(("name", "orcid", "affiliation"), parts, strict=False))
        authors.append({"name": "", **{k: v for k, v in fields.items() if v is not None}})
    notes: list[str] = []
    common: dict[str, Any] = {
        "out": out,
        "runtime": runtime,
        "inputs": [parse_tensor_option(t) for t in input_ or []],
        "outputs": [parse_tensor_option(t) for t in output or []],
        "extra_files": file or [],
        "license": license_,
        "description": description,
        "authors": authors or None,
        "notes": notes,
    }
    if update:
        target = update_package(
            model_file or Path("."), name=name, version=version, namespace=namespace, **common
        )
    elif model_file is None:
        raise InvalidInput("give the model file: sciserve init MODEL_FILE --name … --version …")
    elif not name or not version:
        missing = [opt for opt, value in (("--name", name), ("--version", version)) if not value]
        raise InvalidInput(f"give {' and '.join(missing)} for the new package")
    else:
        target = init_package(
            model_file,
            name=name,
            version=version,
            namespace=namespace or "default",
            force=force,
            **common,
        )
    problems = check_package(target.parent)
    st.emit(
        {"manifest": str(target), "notes": notes, "problems": [p.__dict__ for p in problems]},
        lambda: _print_init(
            st.console, ("updated " if update else "wrote ") + str(target), notes, problems
        ),
    )


def _print_init(console: Console, done: str, notes: list[str], problems: list[Problem]) -> None:
    console.print(done)
    for note in notes:
        console.print(Text(f"note: {note}"))
    if problems:
        console.print("before publishing, fix:")
        for p in problems:
            console.print(Text(f"  {p.severity}: {p}"))


def validate(
    ctx: typer.Context,
    package: Annotated[Path, typer.Argument(help="Package directory or its sciserve.yaml.")] = Path(
        "."
    ),
) -> None:
    """Check a package: every problem with its field path and a fix hint."""
    st = state(ctx)
    root = package.parent if package.name == MANIFEST_NAME else package
    problems = check_package(root)
    errors = [p for p in problems if p.severity == "error"]
    ref = None
    if not errors:
        ref = load_manifest(root).ref

    def human() -> None:
        for p in problems:
            style = "red" if p.severity == "error" else "yellow"
            st.console.print(Text.assemble((f"{p.severity}: ", style), str(p)))
        if not errors:
            st.console.print(Text.assemble(("ok: ", "green"), f"{ref} is ready to publish"))

    st.emit({"ok": not errors, "ref": ref, "problems": [p.__dict__ for p in problems]}, human)
    if errors:
        # Problems are already printed; the exit code is InvalidInput's.
        raise typer.Exit(exit_code_for(ManifestError(errors)))
