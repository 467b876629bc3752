"""Fixtures shared by the whole suite: tiny real model packages and registries.

Registries are parametrised over a real SQLite file and a real PostgreSQL
server.  PostgreSQL comes from ``SCISERVE_TEST_POSTGRES_URL`` (default: the
local server on 127.0.0.1:5432, database ``test``); each test gets its own
schema.  When the server is missing the tests *fail* in CI (``CI`` set) and
are skipped, with the reason, only on a developer machine.
"""

from __future__ import annotations

import os
import uuid
from collections.abc import Callable, Iterator
from pathlib import Path

import pytest
import sqlalchemy as sa

from sciserve.config import Settings
from sciserve.registry.registry import Registry

from helpers.packages import make_onnx_package
from helpers.required import unavailable
from helpers.slurm import SlurmCluster, missing_binaries, slurm_cluster

POSTGRES_URL = os.environ.get(
    "SCISERVE_TEST_POSTGRES_URL", "postgresql+psycopg://postgres@127.0.0.1:5432/test"
)


def _postgres_available() -> str | None:
    try:
        engine = sa.create_engine(POSTGRES_URL)
        with engine.connect() as conn:
            conn.execute(sa.text("select 1"))
        engine.dispose()
    except Exception as exc:  # any failure means "not reachable"
        return f"{type(exc).__name__}: {exc}"
    return None


@pytest.fixture(scope="session")
def postgres_base_url() -> str:
    problem = _postgres_available()
    if problem:
        unavailable(f"PostgreSQL at {POSTGRES_URL} is not reachable ({problem})")
    return POSTGRES_URL


@pytest.fixture
def postgres_url(postgres_base_url: str) -> Iterator[str]:
    """A PostgreSQL URL whose search_path is a fresh schema, dropped afterwards."""
    schema = f"t_{uuid.uuid4().hex[:12]}"
    engine = sa.create_engine(postgres_base_url)
    with engine.begin() as conn:
        conn.execute(sa.text(f'CREATE SCHEMA "{schema}"'))
    sep = "&" if "?" in postgres_base_url else "?"
    try:
        yield f"{postgres_base_url}{sep}options=-csearch_path%3D{schema}"
    finally:
        with engine.begin() as conn:
            conn.execute(sa.text(f'DROP SCHEMA "{schema}" CASCADE'))
        engine.dispose()


@pytest.fixture(scope="session")
def slurm(tmp_path_factory: pytest.TempPathFactory) -> Iterator[SlurmCluster]:
    """A real one-node Slurm cluster (Debian's slurm-wlm and munge), for the whole session.

    ``SLURM_CONF`` is exported while it runs, so Slurm clients started by the
    tests (and by dask-jobqueue) talk to it.  Without the Slurm binaries the
    tests fail in CI (``CI`` set) and are skipped, with the reason, elsewhere.
    """
    missing = missing_binaries()
    if missing:
        unavailable(
            f"Slurm is not installed (missing: {', '.join(missing)}); "
            "install it with `apt-get install slurm-wlm munge`"
        )
    if os.geteuid() != 0:
        unavailable("the test Slurm cluster runs its daemons as root")
    with slurm_cluster(tmp_path_factory.mktemp("slurm")) as cluster:
        previous = os.environ.get("SLURM_CONF")
        os.environ["SLURM_CONF"] = str(cluster.conf)
        try:
            yield cluster
        finally:
            if previous is None:
                os.environ.pop("SLURM_CONF", None)
            else:
                os.environ["SLURM_CONF"] = previous


@pytest.fixture(params=["sqlite", pytest.param("postgres", marks=pytest.mark.postgres)])
def database_url(request: pytest.FixtureRequest, tmp_path: Path) -> str:
    if request.param == "sqlite":
        return f"sqlite:///{tmp_path / 'home' / 'registry.db'}"
    url: str = request.getfixturevalue("postgres_url")
    return url


@pytest.fixture
def settings(tmp_path: Path, database_url: str) -> Settings:
    return Settings.load(tmp_path / "home", environ={}, database_url=database_url)


@pytest.fixture
def registry(settings: Settings) -> Iterator[Registry]:
    with Registry(settings) as reg:
        yield reg


@pytest.fixture
def sqlite_registry(tmp_path: Path) -> Iterator[Registry]:
    with Registry(Settings.load(tmp_path / "home", environ={})) as reg:
        yield reg


@pytest.fixture
def onnx_package(tmp_path: Path) -> Callable[..., Path]:
    """Factory: ``onnx_package(name="m", version="1.0.0", scale=1.0, ...) -> dir``."""
    counter = iter(range(10_000))

    def make(**kwargs: object) -> Path:
        return make_onnx_package(tmp_path / f"pkg{next(counter)}", **kwargs)  # type: ignore[arg-type]

    return make
