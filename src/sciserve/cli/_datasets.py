"""Dataset commands: add, list, show, verify, pull, card, builtin; tag, untag, yank, unyank.

The alias and yank commands are the registry's (``sciserve tag`` works on a
dataset of a local registry too); here they ask for a dataset, which is
also how a server's routes are told.  ``export`` and ``import`` carry
datasets with models.  Every command works on a local registry and,
with ``--server``, on a server's.
"""

from __future__ import annotations

import contextlib
import json
import sys
import tempfile
from collections.abc import Iterator
from pathlib import Path
from typing import Annotated

import typer

from ..errors import InvalidInput
from ..package.croissant import CROISSANT_NAME, TASKS
from ..package.dataset import DatasetSource, assemble, from_croissant
from ..package.manifest import DATASET, NAME_RE
from ..registry.registry import PublishResult, Registry
from ._context import State, folding_table, local_actor, state
from ._registry import (
    show_verify_reports,
    tag_version,
    untag_alias,
    unyank_version,
    version_line,
    yank_version,
)

app = typer.Typer(
    help="Benchmark datasets in the registry (Croissant metadata, checksummed files).",
    no_args_is_help=True,
)


def register(root: typer.Typer) -> None:
    root.add_typer(app, name="datasets")


def _publish(st: State, package: Path) -> None:
    with st.registry() as reg:
        result: PublishResult = reg.publish(package, actor=local_actor())
    info = result.version
    verb = "added" if result.created else "already added (identical)"
    st.emit(
        {**info.to_dict(), "created": result.created},
        lambda: st.console.print(f"{verb}: {version_line(info)}"),
    )


@contextlib.contextmanager
def _scratch(st: State) -> Iterator[Path]:
    # The registry's own scratch space: on its file system, cleaned up after
    # a crash like a publish's; against a server, a temporary directory.
    settings = st.settings
    if settings.server_url:
        with tempfile.TemporaryDirectory(prefix="sciserve-dataset-") as tmp:
            yield Path(tmp)
        return
    with Registry(settings) as reg, reg.scratch() as scratch:
        yield scratch


_SPLIT_SUFFIXES = (".parquet", ".npz")


def _splits_of(path: Path, split: str | None) -> tuple[dict[str, Path], list[Path]]:
    """The splits (name → file) and the Avro alert archives of ``path``."""
    if path.is_dir():
        entries = sorted(path.iterdir())
        files = [p for p in entries if p.suffix in _SPLIT_SUFFIXES]
        if not files:
            raise InvalidInput(
                f"{path} holds no Parquet or .npz files (name them after their split: "
                f"train.parquet, test.parquet) and no {CROISSANT_NAME}"
            )
        if split is not None:
            raise InvalidInput("--split names the split of a single file, not of a directory")
        stems = [p.stem for p in files]
        if len(set(stems)) != len(stems):
            raise InvalidInput(f"{path} has two files for one split: {', '.join(stems)}")
        return {p.stem: p for p in files}, [p for p in entries if p.suffix == ".avro"]
    if not path.is_file():
        raise InvalidInput(f"no file or directory at {path}")
    return {split or path.stem: path}, []


@app.command("add")
def add(
    ctx: typer.Context,
    source: Annotated[
        str,
        typer.Argument(
            help="A directory of <split>.parquet / <split>.npz files (and Avro alert "
            "archives, *.avro, carried along), a directory with its own croissant.json, "
            "one such file, or an http(s) URL of one (with --sha256)."
        ),
    ],
    name: Annotated[str | None, typer.Option(help="Dataset name (default: from the path).")] = None,
    version: Annotated[str | None, typer.Option(help="Version, e.g. 1.0.0.")] = None,
    namespace: Annotated[str, typer.Option(help="Namespace.")] = "default",
    label: Annotated[str, typer.Option(help="The label column.")] = "label",
    task: Annotated[str, typer.Option(help=f"One of {', '.join(TASKS)}.")] = "classification",
    classes: Annotated[
        str | None,
        typer.Option(help="Comma-separated classes in model output order (default: sorted)."),
    ] = None,
    description: Annotated[str | None, typer.Option(help="What the data is.")] = None,
    license_: Annotated[
        str | None, typer.Option("--license", help="SPDX licence, e.g. CC-BY-4.0 (required).")
    ] = None,
    creator: Annotated[
        list[str] | None, typer.Option(help="Who made it (repeatable).", show_default=False)
    ] = None,
    citation: Annotated[str | None, typer.Option(help="How to cite it.")] = None,
    split: Annotated[
        str | None, typer.Option(help="The split of a single file (default: its name).")
    ] = None,
    sha256: Annotated[
        str | None, typer.Option(help="The sha256 of the file at a URL (required for URLs).")
    ] = None,
    timeout: Annotated[
        float, typer.Option(help="Seconds a URL's server may stay silent before giving up.")
    ] = 30.0,
) -> None:
    """Add a dataset: files checksummed, described in Croissant, validated, published."""
    from ..registry.downloads import fetch, public_url, url_file_name

    st = state(ctx)
    settings = st.settings
    max_bytes = settings.limits.max_dataset_file_bytes
    url = source if source.startswith(("http://", "https://")) else None
    if url is not None:
        if sha256 is None:
            raise InvalidInput("a dataset from a URL needs --sha256 of the file")
        file_name = url_file_name(url)
        path = fetch(
            url,
            sha256,
            settings.package_cache / "downloads",
            max_bytes=max_bytes,
            timeout=timeout,
        )
        default_name = Path(file_name).stem
    else:
        if sha256 is not None:
            raise InvalidInput("--sha256 is for URLs; a local file is hashed as it is added")
        path = Path(source)
        default_name = path.name if path.is_dir() else path.stem
    with _scratch(st) as scratch:
        package = scratch / "dataset"
        if path.is_dir() and (path / CROISSANT_NAME).is_file():
            from_croissant(path, package, namespace=namespace, max_file_bytes=max_bytes)
        else:
            splits, alerts = _splits_of(path, split)
            if version is None:
                raise InvalidInput("give the dataset's --version, e.g. --version 1.0.0")
            if license_ is None:
                raise InvalidInput("give the dataset's --license (SPDX), e.g. --license CC-BY-4.0")
            dataset_name = name or default_name
            if not NAME_RE.fullmatch(dataset_name):
                raise InvalidInput(f"{dataset_name!r} is not a valid name; give --name")
            assemble(
                splits,
                package,
                DatasetSource(
                    name=dataset_name,
                    version=version,
                    namespace=namespace,
                    description=description or "",
                    license=license_,
                    creators=tuple(creator or ()),
                    citation=citation,
                    task=task,
                    label=label,
                    classes=tuple(c.strip() for c in classes.split(",")) if classes else None,
                    url=public_url(url) if url is not None else None,
                ),
                max_file_bytes=max_bytes,
                attachments=alerts,
            )
        _publish(st, package)


@app.command("builtin")
def builtin(
    ctx: typer.Context,
    which: Annotated[str, typer.Argument(help="lightcurves")] = "lightcurves",
    seed: Annotated[int, typer.Option(help="Seed of the training split (test: seed + 1).")] = 42,
) -> None:
    """Generate and add a built-in benchmark (offline, byte-identical for a seed)."""
    from ..examples.benchmark import BENCHMARKS, build_benchmark

    if which not in BENCHMARKS:
        raise InvalidInput(f"no built-in benchmark {which!r}; choose from {', '.join(BENCHMARKS)}")
    st = state(ctx)
    with _scratch(st) as scratch:
        build_benchmark(scratch / "dataset", seed=seed)
        _publish(st, scratch / "dataset")


@app.command("list")
def list_(
    ctx: typer.Context,
    namespace: Annotated[str | None, typer.Option(help="Only this namespace.")] = None,
) -> None:
    """List datasets with their default version."""
    st = state(ctx)
    with st.registry(create=False) as reg:
        items = reg.list_datasets(namespace)

    def human() -> None:
        if not items:
            st.console.print("no datasets yet: add one with 'sciserve datasets add PATH'")
            return
        rows = [
            (
                f"{v.namespace}/{v.name}",
                v.version + (" (yanked)" if v.yanked else ""),
                ", ".join(v.aliases),
                v.manifest.license or "",
                str(v.size),
            )
            for v in items
        ]
        headers = ("dataset", "version", "aliases", "license", "bytes")
        st.console.print(folding_table(headers, rows, width=st.console.width, fixed=("bytes",)))

    st.emit([v.to_dict() for v in items], human)


@app.command("show")
def show(ctx: typer.Context, ref: str) -> None:
    """Every version of a dataset, newest first, and its files."""
    st = state(ctx)
    with st.registry(create=False) as reg:
        versions = reg.versions(ref, kind=DATASET)
        chosen = reg.resolve_dataset(ref)

    def human() -> None:
        for v in versions:
            marker = "*" if v.digest == chosen.digest else " "
            st.console.print(f"{marker} {version_line(v)}  added {v.published_at:%Y-%m-%d %H:%M}")
        for f in chosen.manifest.files:
            st.console.print(f"    {f.path}  {f.size} B  sha256:{f.sha256}", markup=False)

    st.emit(
        {
            "versions": [v.to_dict() for v in versions],
            "files": [f.model_dump() for f in chosen.manifest.files],
        },
        human,
    )


@app.command("verify")
def verify(
    ctx: typer.Context,
    ref: Annotated[str | None, typer.Argument(help="A dataset; default: every version.")] = None,
) -> None:
    """Re-hash a dataset's stored files against their recorded sha256."""
    st = state(ctx)
    with st.registry(create=False) as reg:
        reports = reg.verify(ref, kind=DATASET)
    show_verify_reports(st, reports)


@app.command("pull")
def pull(
    ctx: typer.Context,
    ref: str,
    dest: Annotated[Path, typer.Option(help="Directory to write the dataset to.")],
) -> None:
    """Write a dataset's files (and its croissant.json) to a directory, every file verified."""
    st = state(ctx)
    with st.registry(create=False) as reg:
        info = reg.resolve_dataset(ref)
        path = reg.pull(info.ref, dest, kind=DATASET)
    st.emit(
        {**info.to_dict(), "path": str(path)},
        lambda: st.console.print(f"pulled {info.ref} into {path}"),
    )


@app.command("card")
def card(ctx: typer.Context, ref: str) -> None:
    """Print a dataset's Croissant document (JSON-LD)."""
    st = state(ctx)
    with st.registry(create=False) as reg:
        document = reg.croissant(ref)
    sys.stdout.write(json.dumps(document, indent=2, ensure_ascii=False) + "\n")


@app.command("tag")
def tag(
    ctx: typer.Context,
    ref: Annotated[str, typer.Argument(help="NAME:VERSION")],
    alias: Annotated[str, typer.Argument(help="e.g. benchmark")],
) -> None:
    """Point an alias of a dataset at a version."""
    tag_version(state(ctx), ref, alias, kind=DATASET)


@app.command("untag")
def untag(ctx: typer.Context, ref: Annotated[str, typer.Argument(help="NAME")], alias: str) -> None:
    """Remove an alias of a dataset."""
    untag_alias(state(ctx), ref, alias, kind=DATASET)


@app.command("yank")
def yank(
    ctx: typer.Context,
    ref: Annotated[str, typer.Argument(help="NAME:VERSION")],
    reason: Annotated[str, typer.Option(help="Why; shown to everyone who uses it.")],
) -> None:
    """Withdraw a dataset version; its record and files are kept, exact pins still resolve."""
    yank_version(state(ctx), ref, reason, kind=DATASET)


@app.command("unyank")
def unyank(ctx: typer.Context, ref: Annotated[str, typer.Argument(help="NAME:VERSION")]) -> None:
    """Undo a yank of a dataset version."""
    unyank_version(state(ctx), ref, kind=DATASET)
