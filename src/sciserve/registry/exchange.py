"""Export models and datasets to a self-contained registry, and import them elsewhere.

An export is itself a registry home, made to be read without writing::

    <out>/sciserve-export.json   what was exported, when, by which sciserve
    <out>/registry.db            SQLite metadata (rollback journal, no WAL)
    <out>/artifacts/             content-addressed files

so worker nodes without network (e.g. reading it from CVMFS) open it with
``sciserve --home <out> --read-only`` or ``Registry.open(out, read_only=True)``.
The same directory may be packed as ``.tar`` / ``.tar.gz``.
"""

from __future__ import annotations

import json
import shutil
import sqlite3
import tarfile
import tempfile
from collections.abc import Iterable
from pathlib import Path

from .._version import __version__
from ..config import Settings
from ..errors import Conflict, InvalidInput, NotFound, ReadOnlyRegistry
from ..package.reference import LATEST, parse_reference
from . import db
from .registry import PublishResult, Registry, VersionInfo

__all__ = ["EXPORT_MARKER", "export_models", "import_models"]

EXPORT_MARKER = "sciserve-export.json"


def _selected(reg: Registry, refs: Iterable[str], all_versions: bool) -> list[VersionInfo]:
    chosen: dict[str, VersionInfo] = {}
    for ref in refs:
        parsed = parse_reference(ref)
        if all_versions and parsed.version is None and parsed.alias is None:
            infos = reg.versions(parsed, kind=None)
        else:
            infos = [reg.resolve(parsed, kind=None)]
        chosen.update((i.ref, i) for i in infos)
    return list(chosen.values())


def export_models(
    reg: Registry, refs: Iterable[str], out: str | Path, *, all_versions: bool = False
) -> list[VersionInfo]:
    """Write the versions ``refs`` name (with their aliases) to ``out``."""
    out = Path(out)
    if out.exists():
        raise Conflict(f"{out} already exists; choose a new path")
    infos = _selected(reg, refs, all_versions)
    if not infos:
        raise InvalidInput("nothing to export: name at least one model")
    out.parent.mkdir(parents=True, exist_ok=True)
    with tempfile.TemporaryDirectory(prefix=".export-", dir=out.parent) as tmp:
        home = Path(tmp) / "registry"
        target = Registry(Settings.load(home, environ={}))
        try:
            _copy_versions(reg, target, infos)
        finally:
            target.close()
        _finalise_sqlite(home / "registry.db")
        for leftover in (".migrate.lock", "tmp", "cache"):
            path = home / leftover
            if path.is_dir():
                shutil.rmtree(path)
            else:
                path.unlink(missing_ok=True)
        (home / EXPORT_MARKER).write_text(
            json.dumps(
                {
                    "format": "sciserve-export",
                    "format_version": 1,
                    "sciserve": __version__,
                    "exported_at": db.utcnow().isoformat(),
                    "models": [{"ref": i.ref, "digest": i.digest} for i in infos],
                },
                indent=2,
            )
            + "\n",
            encoding="utf-8",
        )
        if out.name.endswith((".tar", ".tar.gz", ".tgz")):
            with (
                tarfile.open(out, "w")
                if out.name.endswith(".tar")
                else tarfile.open(out, "w:gz") as tar
            ):
                for path in sorted(home.rglob("*")):
                    tar.add(path, arcname=str(path.relative_to(home)), recursive=False)
        else:
            home.rename(out)
    return infos


def _copy_versions(src: Registry, dst: Registry, infos: list[VersionInfo]) -> None:
    namespaces = {i.namespace: src.namespace(i.namespace) for i in infos}
    for ns in namespaces.values():
        # The export is a byte-for-byte copy into a registry nobody else sees
        # yet, so every namespace accepts the copy; afterwards each gets the
        # trust it has at the source, so read-only consumers load exactly what
        # the source's admin allows.  import_models does not carry trust.
        dst.create_namespace(ns.name, trusted=True, description=ns.description)
    with tempfile.TemporaryDirectory(prefix="export-", dir=dst.settings.home) as scratch:
        for info in infos:
            package = src.pull(
                info.ref, Path(scratch) / info.digest.removeprefix("sha256:"), kind=None
            )
            dst.publish(package, actor="export")
    for ns in namespaces.values():
        dst.set_trusted(ns.name, ns.trusted, actor="export")
    _copy_states(dst, infos)


def _copy_states(dst: Registry, infos: list[VersionInfo]) -> None:
    """Re-create aliases and yanks of ``infos`` in ``dst``."""
    for info in infos:
        for alias in info.aliases:
            if alias != LATEST:
                dst.tag(info.ref, alias, actor="import")
    for info in infos:
        if info.yanked:
            dst.yank(info.ref, info.yanked_reason or "yanked at the source", actor="import")


def _finalise_sqlite(path: Path) -> None:
    # A read-only consumer opens the file 'immutable': every change must be
    # in the main file, not in a WAL beside it.
    conn = sqlite3.connect(path)
    try:
        conn.execute("PRAGMA wal_checkpoint(TRUNCATE)")
        conn.execute("PRAGMA journal_mode=DELETE")
    finally:
        conn.close()


def import_models(reg: Registry, source: str | Path) -> list[PublishResult]:
    """Publish every version of the export at ``source`` into ``reg``.

    Namespace trust is not imported: code-executing packages need the
    receiving registry's admin to trust their namespace first.
    """
    if reg.read_only:
        # Refused before anything is unpacked into the registry's home,
        # which may well be a read-only file system.
        raise ReadOnlyRegistry("this registry is open read-only; import needs a writable one")
    source = Path(source)
    if source.is_file():
        from ..package.archive import extract_tree

        with tempfile.TemporaryDirectory(prefix="import-", dir=reg.settings.home) as tmp:
            root = extract_tree(source, Path(tmp) / "export", limits=reg.settings.limits)
            return _import_dir(reg, root)
    return _import_dir(reg, source)


def _import_dir(reg: Registry, root: Path) -> list[PublishResult]:
    if not (root / EXPORT_MARKER).is_file() or not (root / "registry.db").is_file():
        raise NotFound(f"{root} is not a sciserve export (no {EXPORT_MARKER} / registry.db)")
    results = []
    with Registry(
        Settings.load(
            root,
            environ={},
            read_only=True,
            cache_dir=Path(reg.settings.home) / "tmp" / "import-cache",
        )
    ) as src:
        infos = [v for m in src.list_models(kind=None) for v in src.versions(m.ref, kind=None)]
        with tempfile.TemporaryDirectory(prefix="import-", dir=reg.settings.home) as scratch:
            for info in infos:
                package = src.pull(
                    info.ref, Path(scratch) / info.digest.removeprefix("sha256:"), kind=None
                )
                results.append(reg.publish(package, actor="import"))
    _copy_states(reg, infos)
    return results
