"""Confining the locations of API-submitted jobs to the ``[jobs] archives`` roots."""

from __future__ import annotations

from pathlib import Path

import pytest

from sciserve.errors import InvalidInput, PermissionDenied
from sciserve.jobs.archives import Archives


@pytest.fixture
def roots(tmp_path: Path) -> tuple[Path, Path]:
    data, other = tmp_path / "data", tmp_path / "other"
    (data / "sub").mkdir(parents=True)
    (data / "sub" / "a.parquet").write_bytes(b"x")
    other.mkdir()
    (other / "b.parquet").write_bytes(b"x")
    return data, other


def test_paths_resolve_under_a_root(roots: tuple[Path, Path]) -> None:
    data, other = roots
    archives = Archives([str(data), f"file://{other}"])
    assert archives.directories == (data.resolve(), other.resolve())
    assert archives.confine("sub/a.parquet") == str(data.resolve() / "sub/a.parquet")
    assert archives.confine(str(data / "sub" / ".." / "sub")) == str(data.resolve() / "sub")
    assert archives.confine(f"file://{other}/b.parquet") == str(other.resolve() / "b.parquet")
    assert archives.confine(str(data / "**" / "*.parquet")) == str(
        data.resolve() / "**" / "*.parquet"
    )
    with pytest.raises(PermissionDenied, match="outside the archives"):
        archives.confine("../other/b.parquet" + "/../../../etc/passwd")
    with pytest.raises(PermissionDenied, match="outside the archives"):
        archives.confine(str(data) + "-sibling/x")


def test_links_are_judged_by_where_they_point(roots: tuple[Path, Path], tmp_path: Path) -> None:
    data, _ = roots
    outside = tmp_path / "outside"
    outside.mkdir()
    (outside / "secret").write_text("s")
    (data / "out").symlink_to(outside)
    (data / "sub" / "leak.parquet").symlink_to(outside / "secret")
    (data / "inside").symlink_to(data / "sub")
    archives = Archives([str(data)])
    with pytest.raises(PermissionDenied):
        archives.confine("out/secret")
    assert archives.confine("inside") == str(data.resolve() / "sub")
    with pytest.raises(PermissionDenied, match=r"leak\.parquet, a link"):
        archives.check_contents(str(data / "sub"))
    with pytest.raises(PermissionDenied, match="a link"):
        archives.check_contents(str(data / "*" / "*.parquet"))
    (data / "sub" / "leak.parquet").unlink()
    archives.check_contents(str(data / "sub"))
    with pytest.raises(InvalidInput, match="does not exist"):
        archives.check_contents(str(data / "nothing"))
    with pytest.raises(InvalidInput, match="matches no files"):
        archives.check_contents(str(data / "*.avro"))


def test_urls_must_be_under_a_prefix(roots: tuple[Path, Path]) -> None:
    archives = Archives(["s3://bucket/archive", "https://data.example.org/pub/"])
    assert archives.confine("s3://bucket/archive/x/") == "s3://bucket/archive/x/"
    assert archives.confine("s3://bucket/archive") == "s3://bucket/archive"
    assert archives.confine("https://data.example.org/pub/a.parquet").endswith("a.parquet")
    for refused in (
        "s3://bucket/archived/x",
        "s3://bucket/other/x",
        "gs://bucket/archive/x",
        "s3://bucket/archive/../secret",
        "s3://bucket/archive/%2E%2E/secret",
        "s3://bucket/archive/x::s3://other/y",
        "https://data.example.org/pub/..%2f../private",
        "file:///etc/passwd",
        "/etc/passwd",
        "relative/path",  # no root directory to take it relative to
    ):
        with pytest.raises(PermissionDenied):
            archives.confine(refused)
    with pytest.raises(InvalidInput, match="NUL"):
        archives.confine("s3://bucket/archive/\x00")


def test_nothing_is_readable_without_roots() -> None:
    archives = Archives([])
    for location in ("x.parquet", "/data/x.parquet", "s3://bucket/x", "file:///data/x"):
        with pytest.raises(PermissionDenied, match="archives is empty"):
            archives.confine(location)


def test_a_feature_file_is_one_confined_file(roots: tuple[Path, Path]) -> None:
    data, _ = roots
    archives = Archives([str(data), "s3://bucket/"])
    assert archives.confine_file("sub/a.parquet", what="f") == data.resolve() / "sub/a.parquet"
    with pytest.raises(PermissionDenied, match="one file"):
        archives.confine_file("sub/*.py", what="f")
    with pytest.raises(PermissionDenied, match="must be a file"):
        archives.confine_file("s3://bucket/f.py", what="f")
