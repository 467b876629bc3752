"""Registry states that today's publish refuses, as older releases left them.

Older releases accepted model names with dots in namespace ``default`` (so
``default/beta.secret`` and ``beta/secret`` were both served as
``beta.secret``) and versions named like aliases (``production``).  These
helpers write such rows straight into the registry database, the way the
old publish did, so tests can show what a registry upgraded in place does
with them.
"""

from __future__ import annotations

from pathlib import Path

import sqlalchemy as sa

from sciserve.config import Settings
from sciserve.package.manifest import load_manifest
from sciserve.registry import db
from sciserve.registry.store import open_store


def _settings(where: Path | Settings) -> Settings:
    return where if isinstance(where, Settings) else Settings.load(where, environ={})


def insert_legacy_version(where: Path | Settings, package: Path, *, actor: str = "legacy") -> str:
    """Store ``package`` (a directory) in the registry (of a home, or with these settings)
    without any check.  Returns the version's ``namespace/name:version``."""
    settings = _settings(where)
    manifest = load_manifest(package)
    store = open_store(settings.store_url)
    for entry in manifest.files:
        store.put_file(package / entry.path, expected_sha256=entry.sha256)
    engine = db.connect(settings.database_url)
    try:
        with engine.begin() as conn:
            now = db.utcnow()
            ns_id = conn.execute(
                sa.select(db.namespaces.c.id).where(db.namespaces.c.name == manifest.namespace)
            ).scalar()
            if ns_id is None:
                ns_id = conn.execute(
                    sa.insert(db.namespaces).values(
                        name=manifest.namespace, trusted=False, created_at=now
                    )
                ).inserted_primary_key[0]  # type: ignore[index]
            model_id = conn.execute(
                sa.select(db.models.c.id).where(
                    db.models.c.namespace_id == ns_id, db.models.c.name == manifest.name
                )
            ).scalar()
            if model_id is None:
                model_id = conn.execute(
                    sa.insert(db.models).values(
                        namespace_id=ns_id, name=manifest.name, created_at=now
                    )
                ).inserted_primary_key[0]  # type: ignore[index]
            version_id = conn.execute(
                sa.insert(db.versions).values(
                    model_id=model_id,
                    version=manifest.version,
                    digest=manifest.digest,
                    manifest=manifest.canonical_bytes().decode(),
                    runtime=manifest.runtime,
                    size=sum(f.size for f in manifest.files),
                    published_at=now,
                    published_by=actor,
                )
            ).inserted_primary_key[0]  # type: ignore[index]
            conn.execute(
                sa.insert(db.files),
                [
                    {
                        "version_id": version_id,
                        "path": f.path,
                        "sha256": f.sha256,
                        "size": f.size,
                        "role": f.role,
                    }
                    for f in manifest.files
                ],
            )
    finally:
        engine.dispose()
    return manifest.ref


def insert_legacy_alias(
    where: Path | Settings, namespace: str, name: str, alias: str, version: str
) -> None:
    """Point ``alias`` at ``version`` without the checks ``Registry.tag`` makes."""
    settings = _settings(where)
    engine = db.connect(settings.database_url)
    m, n, v = db.models, db.namespaces, db.versions
    try:
        with engine.begin() as conn:
            model_id, version_id = conn.execute(
                sa.select(m.c.id, v.c.id)
                .join(n, m.c.namespace_id == n.c.id)
                .join(v, v.c.model_id == m.c.id)
                .where(n.c.name == namespace, m.c.name == name, v.c.version == version)
            ).one()
            conn.execute(
                sa.insert(db.aliases).values(
                    model_id=model_id, alias=alias, version_id=version_id, updated_at=db.utcnow()
                )
            )
    finally:
        engine.dispose()
