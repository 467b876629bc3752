"""``sciserve monitor reference``: a dataset's statistics into the registry, and hostile files."""

from __future__ import annotations

import zipfile
from collections.abc import Callable
from pathlib import Path

import numpy as np
import pytest

from sciserve.access._db import engine_of
from sciserve.config import Settings
from sciserve.monitoring import ReferenceSource, ReferenceStore
from sciserve.registry.registry import Registry

from helpers.cli import Cli
from helpers.packages import expected_linear


@pytest.fixture
def cli(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> Cli:
    return Cli(tmp_path / "home", capsys)


@pytest.fixture
def published(cli: Cli, onnx_package: Callable[..., Path]) -> str:
    with Registry(Settings.load(cli.home, environ={})) as reg:
        return reg.publish(onnx_package(name="lin")).version.digest


def _stored(cli: Cli, digest: str) -> int:
    with Registry(Settings.load(cli.home, environ={})) as reg:
        ref = ReferenceStore(engine_of(reg)).latest(digest)
        assert ref.source is ReferenceSource.DATASET
        return ref.stats.rows


def test_inputs_only_runs_the_model_for_the_outputs(
    cli: Cli, published: str, tmp_path: Path
) -> None:
    x = np.random.default_rng(0).normal(size=(1000, 4)).astype(np.float32)
    np.savez(tmp_path / "eval.npz", x=x)
    got = cli.json("monitor", "reference", "lin:1.0.0", str(tmp_path / "eval.npz"))
    assert got["rows"] == 1000 and got["features"] == ["x[0]", "x[1]", "x[2]", "x[3]"]
    assert _stored(cli, published) == 1000
    with Registry(Settings.load(cli.home, environ={})) as reg:
        stats = ReferenceStore(engine_of(reg)).latest(published).stats
    assert stats.predictions["y"].mean == pytest.approx(float(expected_linear(x).mean()), rel=1e-4)


def test_given_outputs_are_used_as_they_are(cli: Cli, published: str, tmp_path: Path) -> None:
    x = np.zeros((10, 4), np.float32)
    np.savez_compressed(tmp_path / "eval.npz", x=x, y=np.full((10, 3), 7.0, np.float32))
    cli("monitor", "reference", "lin", str(tmp_path / "eval.npz"))
    with Registry(Settings.load(cli.home, environ={})) as reg:
        assert ReferenceStore(engine_of(reg)).latest(published).stats.predictions["y"].mean == 7.0


def _pickled(path: Path) -> None:
    np.save(path.with_suffix(".npy"), np.array([object()], dtype=object), allow_pickle=True)
    with zipfile.ZipFile(path, "w") as z:
        z.write(path.with_suffix(".npy"), "x.npy")


def _bomb(path: Path) -> None:
    with zipfile.ZipFile(path, "w", compression=zipfile.ZIP_DEFLATED) as z:
        z.writestr("x.npy", b"\0" * (64 * 2**20))


@pytest.mark.parametrize(
    ("make", "message"),
    [
        (lambda p: p.write_bytes(b"not a zip"), "not a readable .npz"),
        (lambda p: np.savez(p, other=np.zeros(3)), "no array(s) ['x']"),
        (_pickled, "cannot read"),
        (lambda p: np.savez(p, x=np.array(["a", "b"])), "dtype <U1"),
        (lambda p: np.savez(p, x=np.zeros((0, 4), np.float32)), "at least one row"),
        (lambda p: p.with_name("missing.npz"), "not a readable .npz"),
    ],
)
def test_hostile_datasets_are_refused_clearly(
    cli: Cli,
    published: str,
    tmp_path: Path,
    make: Callable[[Path], object],
    message: str,
) -> None:
    path = tmp_path / "bad.npz"
    made = make(path)
    target = made if isinstance(made, Path) else path
    out = cli("monitor", "reference", "lin", str(target), code=2)
    assert message in out


def test_an_npz_bomb_is_refused_before_it_is_inflated(
    cli: Cli, published: str, tmp_path: Path
) -> None:
    (cli.home / "sciserve.toml").write_text("[limits]\nmax_upload_bytes = 1048576\n")
    _bomb(tmp_path / "bomb.npz")
    out = cli("monitor", "reference", "lin", str(tmp_path / "bomb.npz"), code=2)
    assert "unpacks to" in out


def test_an_unknown_model_is_not_found(cli: Cli, published: str, tmp_path: Path) -> None:
    np.savez(tmp_path / "eval.npz", x=np.zeros((3, 4), np.float32))
    out = cli("monitor", "reference", "nope", str(tmp_path / "eval.npz"), code=3)
    assert "nope" in out
