"""Registry commands: publish, models, tag, yank, pull, verify, export, import."""

from __future__ import annotations

import json
import sys
from pathlib import Path
from typing import Annotated

import typer
from rich.markdown import Markdown

from .._hashing import sha256_file
from ..errors import IntegrityError, InvalidInput
from ..package.manifest import MANIFEST_NAME, load_manifest
from ..registry.registry import VerifyReport, VersionInfo
from ..registry.remote import RemoteRegistry
from ._context import State, folding_table, local_actor, state

models_app = typer.Typer(help="Inspect published models.", no_args_is_help=True)


def register(app: typer.Typer) -> None:
    app.command("publish")(publish)
    app.add_typer(models_app, name="models")
    for fn in (tag, untag, yank, unyank, pull, verify, export, import_):
        app.command(fn.__name__.rstrip("_"))(fn)


def _size(n: int) -> str:
    value = float(n)
    for unit in ("B", "KiB", "MiB", "GiB"):
        if value < 1024 or unit == "GiB":
            return f"{value:.0f} {unit}" if unit == "B" else f"{value:.1f} {unit}"
        value /= 1024
    raise AssertionError("unreachable")


def version_line(info: VersionInfo) -> str:
    """One line about a version: reference, aliases, digest, yank."""
    flags = f" [{', '.join(info.aliases)}]" if info.aliases else ""
    yanked = f" YANKED: {info.yanked_reason}" if info.yanked else ""
    return f"{info.ref}{flags} {info.digest[:19]}…{yanked}"


def _package_size(source: Path) -> int | None:
    if source.is_dir() and (source / MANIFEST_NAME).is_file():
        return sum(f.size for f in load_manifest(source).files)
    return source.stat().st_size if source.is_file() else None


def publish(
    ctx: typer.Context,
    source: Annotated[Path, typer.Argument(help="Package directory or .tar/.tar.gz archive.")],
) -> None:
    """Publish a package (a no-op when identical content is already published)."""
    st = state(ctx)
    with st.registry() as reg, st.progress("uploading", _package_size(source)) as advance:
        result = reg.publish(source, progress=advance, actor=local_actor())
    info = result.version
    verb = "published" if result.created else "already published (identical)"
    st.emit(
        {**info.to_dict(), "created": result.created},
        lambda: st.console.print(f"{verb}: {version_line(info)}"),
    )


@models_app.command("list")
def models_list(
    ctx: typer.Context,
    namespace: Annotated[str | None, typer.Option(help="Only this namespace.")] = None,
) -> None:
    """List models with their default version."""
    st = state(ctx)
    with st.registry(create=False) as reg:
        if isinstance(reg, RemoteRegistry):
            items, complete = reg.list_visible(namespace)
        else:
            items, complete = reg.list_models(namespace), True

    def human() -> None:
        if not items and not complete:
            # A server lists only the namespaces the caller's token may read.
            st.console.print(
                f"no models visible to this token on {st.settings.server_url}: "
                "it lists only namespaces the token may read"
            )
            return
        if not items:
            st.console.print("no models yet: publish one with 'sciserve publish DIR'")
            return
        rows = [
            (
                f"{v.namespace}/{v.name}",
                v.version + (" (yanked)" if v.yanked else ""),
                ", ".join(v.aliases),
                v.manifest.runtime,
                v.manifest.license or "",
                _size(v.size),
            )
            for v in items
        ]
        headers = ("model", "version", "aliases", "runtime", "license", "size")
        table = folding_table(headers, rows, width=st.console.width, fixed=("size",))
        st.console.print(table)

    st.emit([v.to_dict() for v in items], human)


@models_app.command("show")
def models_show(ctx: typer.Context, ref: str) -> None:
    """Every version of a model, newest first, with its manifest (JSON)."""
    st = state(ctx)
    with st.registry(create=False) as reg:
        versions = reg.versions(ref)
        chosen = reg.resolve(ref)

    def human() -> None:
        for v in versions:
            marker = "*" if v.digest == chosen.digest else " "
            published = f"{v.published_at:%Y-%m-%d %H:%M}"
            st.console.print(f"{marker} {version_line(v)}  published {published}")

    st.emit(
        {
            "resolved": chosen.to_dict(),
            "manifest": chosen.manifest.to_dict(),
            "versions": [v.to_dict() for v in versions],
        },
        human,
    )


@models_app.command("check-names")
def models_check_names(ctx: typer.Context) -> None:
    """Report models and versions whose names publishing refuses today (exit 4 if any).

    Older releases accepted names with a dot in namespace 'default' (which
    a server takes for namespace.name, so it does not serve them) and
    versions named like aliases. Fix names with 'sciserve models rename'.
    """
    st = state(ctx)
    with st.local_registry() as reg:
        issues = reg.check_names()

    def human() -> None:
        if not issues:
            st.console.print("every model and version name is fine")
            return
        for issue in issues:
            st.console.print(f"{issue.subject}: {issue.problem}", markup=False)
            st.console.print(f"  fix: {issue.hint}", markup=False)

    st.emit([i.to_dict() for i in issues], human)
    if issues:
        raise typer.Exit(4)


@models_app.command("rename")
def models_rename(
    ctx: typer.Context,
    model: Annotated[str, typer.Argument(help="NAMESPACE/NAME of the model to rename.")],
    new_name: Annotated[str, typer.Argument(help="Its new name, in the same namespace.")],
) -> None:
    """Rename a model, every version and alias with it (admin: on the registry directly).

    Each version's manifest records the name, so each version gets a new
    digest; the files are unchanged. Clients must use the new name.
    """
    from ..package.reference import parse_reference

    st = state(ctx)
    ref = parse_reference(model)
    if ref.version is not None or ref.alias is not None or "/" not in model:
        raise InvalidInput(f"{model!r}: name the model as NAMESPACE/NAME, without a version")
    with st.local_registry() as reg:
        versions = reg.rename_model(ref.namespace, ref.name, new_name, actor=local_actor())

    def human() -> None:
        st.console.print(f"renamed {ref.namespace}/{ref.name} to {ref.namespace}/{new_name}:")
        for v in versions:
            st.console.print(f"  {version_line(v)}")

    st.emit([v.to_dict() for v in versions], human)


@models_app.command("card")
def models_card(
    ctx: typer.Context,
    ref: str,
    format_: Annotated[
        str, typer.Option("--format", help="markdown, jsonld or raw (Markdown source).")
    ] = "markdown",
) -> None:
    """The model card of a version, or its JSON-LD metadata."""
    from ..package.card import render_card, to_jsonld

    st = state(ctx)
    with st.registry(create=False) as reg:
        info = reg.resolve(ref)
    if format_ == "jsonld" or st.json:
        sys.stdout.write(json.dumps(to_jsonld(info.manifest, digest=info.digest), indent=2) + "\n")
        return
    text = render_card(
        info.manifest,
        digest=info.digest,
        published_at=info.published_at.isoformat(),
        aliases=info.aliases,
        yanked_reason=info.yanked_reason if info.yanked else None,
    )
    if format_ == "raw" or not st.console.is_terminal:
        sys.stdout.write(text)
    else:
        st.console.print(Markdown(text))


def tag(
    ctx: typer.Context,
    ref: Annotated[str, typer.Argument(help="NAME:VERSION")],
    alias: Annotated[str, typer.Argument(help="e.g. production")],
    force: Annotated[
        bool,
        typer.Option(
            "--force",
            help="Move the alias even though the promotion policy is not met "
            "(an admin's decision, recorded in the audit trail).",
        ),
    ] = False,
) -> None:
    """Point an alias (production, staging, …) at a version."""
    tag_version(state(ctx), ref, alias, force=force)


def untag(ctx: typer.Context, ref: Annotated[str, typer.Argument(help="NAME")], alias: str) -> None:
    """Remove an alias."""
    untag_alias(state(ctx), ref, alias)


def yank(
    ctx: typer.Context,
    ref: Annotated[str, typer.Argument(help="NAME:VERSION")],
    reason: Annotated[str, typer.Option(help="Why; shown to everyone who uses it.")],
) -> None:
    """Withdraw a version; its record and files are kept, exact pins still resolve."""
    yank_version(state(ctx), ref, reason)


def unyank(ctx: typer.Context, ref: Annotated[str, typer.Argument(help="NAME:VERSION")]) -> None:
    """Undo a yank."""
    unyank_version(state(ctx), ref)


# The alias and yank commands of models and of datasets (``sciserve datasets
# tag``…) differ only in the kind they name: ``kind`` is passed on when given.


def _kind(kind: str | None) -> dict[str, str]:
    return {} if kind is None else {"kind": kind}


def tag_version(
    st: State, ref: str, alias: str, *, kind: str | None = None, force: bool = False
) -> None:
    with st.registry() as reg:
        info = reg.tag(ref, alias, actor=local_actor(), force=force, **_kind(kind))
    st.emit(info.to_dict(), lambda: st.console.print(f"{alias} -> {version_line(info)}"))


def untag_alias(st: State, ref: str, alias: str, *, kind: str | None = None) -> None:
    with st.registry() as reg:
        reg.untag(ref, alias, actor=local_actor(), **_kind(kind))
    st.emit({"removed": alias}, lambda: st.console.print(f"removed alias {alias}"))


def yank_version(st: State, ref: str, reason: str, *, kind: str | None = None) -> None:
    with st.registry() as reg:
        info = reg.yank(ref, reason, actor=local_actor(), **_kind(kind))
    st.emit(info.to_dict(), lambda: st.console.print(f"yanked {version_line(info)}"))


def unyank_version(st: State, ref: str, *, kind: str | None = None) -> None:
    with st.registry() as reg:
        info = reg.unyank(ref, actor=local_actor(), **_kind(kind))
    st.emit(info.to_dict(), lambda: st.console.print(f"restored {version_line(info)}"))


def pull(
    ctx: typer.Context,
    ref: str,
    dest: Annotated[Path, typer.Option(help="Directory to write the package to.")],
) -> None:
    """Materialise a package locally, every file verified against its checksum."""
    st = state(ctx)
    with st.registry(create=False) as reg:
        info = reg.resolve(ref)
        with st.progress("downloading", info.size) as advance:
            path = reg.pull(info.ref, dest, progress=advance)
    st.emit(
        {**info.to_dict(), "path": str(path)},
        lambda: st.console.print(f"pulled {info.ref} into {path}"),
    )


def verify(
    ctx: typer.Context,
    ref: Annotated[
        str | None,
        typer.Argument(
            help="A model reference, or a local package directory; default: every version."
        ),
    ] = None,
) -> None:
    """Re-hash stored files and compare with their recorded sha256."""
    st = state(ctx)
    if ref is not None and Path(ref).is_dir():
        _verify_local(st, Path(ref))
        return
    with st.registry(create=False) as reg:
        # Without a reference: every version of every model and dataset.
        reports = reg.verify(ref) if ref is not None else reg.verify(kind=None)
    show_verify_reports(st, reports)


def show_verify_reports(st: State, reports: list[VerifyReport]) -> None:
    """Print what ``verify`` found; exit 5 (integrity) if any version failed."""

    def human() -> None:
        for r in reports:
            st.console.print(f"{'ok  ' if r.ok else 'FAIL'} {r.ref} ({r.checked} files)")
            for failure in r.failures:
                st.console.print(f"     {failure}", markup=False)

    st.emit(
        [{"ref": r.ref, "ok": r.ok, "checked": r.checked, "failures": r.failures} for r in reports],
        human,
    )
    if not all(r.ok for r in reports):
        raise typer.Exit(5)


def _verify_local(st: State, root: Path) -> None:
    manifest = load_manifest(root)
    for entry in manifest.files:
        actual, _ = sha256_file(root / entry.path)
        if actual != entry.sha256:
            raise IntegrityError(
                f"{entry.path}: sha256 {actual}, expected {entry.sha256}",
                path=entry.path,
                expected=entry.sha256,
                actual=actual,
            )
    st.emit(
        {"ref": manifest.ref, "ok": True, "checked": len(manifest.files)},
        lambda: st.console.print(f"ok   {manifest.ref} ({len(manifest.files)} files)"),
    )


def export(
    ctx: typer.Context,
    refs: Annotated[
        list[str],
        typer.Argument(
            help="Model or dataset references (all versions of a bare name with --all-versions)."
        ),
    ],
    out: Annotated[Path, typer.Option(help="Directory, or .tar / .tar.gz archive, to write.")],
    all_versions: Annotated[bool, typer.Option(help="Export every version of each model.")] = False,
) -> None:
    """Write models and datasets to a self-contained registry directory or archive."""
    from ..registry.exchange import export_models

    st = state(ctx)
    with st.local_registry(create=False) as reg:
        written = export_models(reg, refs, out, all_versions=all_versions)
    st.emit(
        {"path": str(out), "models": [v.ref for v in written]},
        lambda: st.console.print(f"exported {len(written)} version(s) to {out}"),
    )


def import_(
    ctx: typer.Context,
    source: Annotated[Path, typer.Argument(help="An export directory or archive.")],
) -> None:
    """Load the models and datasets of an export into this registry."""
    from ..registry.exchange import import_models

    st = state(ctx)
    with st.local_registry() as reg:
        results = import_models(reg, source)

    def human() -> None:
        for r in results:
            verb = "imported" if r.created else "already present"
            st.console.print(f"{verb} {version_line(r.version)}")

    st.emit([{**r.version.to_dict(), "created": r.created} for r in results], human)
