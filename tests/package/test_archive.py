"""Packing model packages reproducibly and unpacking hostile archives safely."""

from __future__ import annotations

import io
import os
import random
import re
import tarfile
import time
from pathlib import Path
from typing import Literal

import pytest

from sciserve._hashing import sha256_file
from sciserve.config import Limits
from sciserve.errors import ArchiveError, Conflict, ManifestError
from sciserve.package.archive import extract_tree, is_archive, pack, unpack
from sciserve.package.manifest import MANIFEST_NAME, FileEntry, Manifest, dump_manifest

FILES = {
    "model.onnx": b"not really onnx, the archive does not care\n",
    "data/norm.json": b'{"mean": 0.5, "std": 2.0}\n',
    "data/labels.txt": b"star\ngalaxy\nqso\n",
}


def make_package(root: Path, files: dict[str, bytes] = FILES) -> Path:
    """A package directory whose manifest lists ``files``."""
    entries = []
    for rel, data in files.items():
        path = root / rel
        path.parent.mkdir(parents=True, exist_ok=True)
        path.write_bytes(data)
        digest, size = sha256_file(path)
        role: Literal["model", "other"] = "model" if rel == "model.onnx" else "other"
        entries.append(FileEntry(path=rel, size=size, sha256=digest, role=role))
    manifest = Manifest(
        name="demo", version="1.0.0", runtime="onnx", model_file="model.onnx", files=entries
    )
    (root / MANIFEST_NAME).write_text(dump_manifest(manifest), encoding="utf-8")
    return root


def member(name: str, data: bytes = b"", **fields: object) -> tuple[tarfile.TarInfo, bytes]:
    info = tarfile.TarInfo(name)
    info.size = len(data)
    for key, value in fields.items():
        setattr(info, key, value)
    return info, data


def write_tar(
    path: Path, members: list[tuple[tarfile.TarInfo, bytes]], *, gz: bool = False
) -> Path:
    with tarfile.open(path, "w:gz" if gz else "w") as tar:
        for info, data in members:
            tar.addfile(info, io.BytesIO(data) if info.isreg() else None)
    return path


def package_members(root: Path) -> list[tuple[tarfile.TarInfo, bytes]]:
    """The members of an honest archive of ``root`` (manifest plus listed files)."""
    names = [MANIFEST_NAME, *FILES]
    return [member(name, (root / name).read_bytes()) for name in names]


@pytest.fixture
def package(tmp_path: Path) -> Path:
    return make_package(tmp_path / "pkg")


@pytest.fixture
def out(tmp_path: Path) -> Path:
    """An empty directory the destination lives in, to check nothing is left beside it."""
    path = tmp_path / "out"
    path.mkdir()
    return path


def assert_refused(
    archive: Path,
    out: Path,
    match: str,
    *,
    limits: Limits | None = None,
    error: type[Exception] = ArchiveError,
) -> str:
    dest = out / "unpacked"
    with pytest.raises(error, match=match) as info:
        unpack(archive, dest, limits=limits or Limits())
    assert not dest.exists()
    assert list(out.iterdir()) == [], "a partial extraction or staging dir was left behind"
    return str(info.value)


def tree(root: Path) -> dict[str, bytes]:
    return {p.relative_to(root).as_posix(): p.read_bytes() for p in root.rglob("*") if p.is_file()}


# -- packing ---------------------------------------------------------------


@pytest.mark.parametrize("suffix", [".tar", ".tar.gz", ".tgz"])
def test_round_trip_gives_back_the_same_bytes(
    package: Path, out: Path, tmp_path: Path, suffix: str
) -> None:
    archive = pack(package, tmp_path / f"demo{suffix}")
    dest = unpack(archive, out / "demo")
    assert dest == out / "demo"
    assert tree(dest) == tree(package)
    assert sorted(p.name for p in out.iterdir()) == ["demo"]
    assert (dest / "model.onnx").stat().st_mode & 0o777 == 0o644


def test_packing_is_deterministic(package: Path, tmp_path: Path) -> None:
    first = pack(package, tmp_path / "a.tar.gz").read_bytes()
    model = package / "model.onnx"
    later = model.stat().st_mtime + 3600
    os.utime(model, (later, later))  # a new mtime must not matter
    second = pack(package, tmp_path / "other-name.tgz").read_bytes()
    assert first == second
    assert first[:2] == b"\x1f\x8b"
    # mtime field of the gzip header (bytes 4..8) is zero
    assert first[4:8] == b"\0\0\0\0"


def test_archive_headers_carry_nothing_from_the_machine(package: Path, tmp_path: Path) -> None:
    archive = pack(package, tmp_path / "demo.tar")
    assert archive.read_bytes()[:2] != b"\x1f\x8b"
    with tarfile.open(archive) as tar:
        members = tar.getmembers()
    assert [m.name for m in members] == [MANIFEST_NAME, *sorted(FILES)]
    for m in members:
        assert m.isreg()
        assert (m.mtime, m.uid, m.gid, m.uname, m.gname, m.mode) == (0, 0, 0, "", "", 0o644)


def test_only_listed_files_are_packed(package: Path, tmp_path: Path) -> None:
    (package / "secret.txt").write_text("api key")
    (package / "data" / "scratch.npy").write_bytes(b"junk")
    with tarfile.open(pack(package, tmp_path / "demo.tgz")) as tar:
        names = set(tar.getnames())
    assert names == {MANIFEST_NAME, *FILES}


def test_compress_overrides_the_suffix(package: Path, tmp_path: Path) -> None:
    archive = pack(package, tmp_path / "demo.tar", compress=True)
    assert archive.read_bytes()[:2] == b"\x1f\x8b"


def test_unknown_suffix_needs_compress(package: Path, tmp_path: Path) -> None:
    with pytest.raises(ArchiveError, match=r"\.tar, \.tar\.gz or \.tgz"):
        pack(package, tmp_path / "demo.zip")
    assert list(tmp_path.glob("*demo.zip*")) == []


def test_missing_listed_file_is_not_packed(package: Path, tmp_path: Path) -> None:
    (package / "data" / "labels.txt").unlink()
    with pytest.raises(ManifestError, match=r"'data/labels.txt' does not exist"):
        pack(package, tmp_path / "demo.tar")
    assert list(tmp_path.glob("*demo.tar*")) == []


def test_symlinked_file_is_not_packed(package: Path, tmp_path: Path) -> None:
    outside = tmp_path / "outside.onnx"
    outside.write_bytes(FILES["model.onnx"])
    (package / "model.onnx").unlink()
    (package / "model.onnx").symlink_to(outside)
    with pytest.raises(ManifestError, match=r"'model.onnx' is a symbolic link"):
        pack(package, tmp_path / "demo.tar")


def test_file_under_symlinked_directory_is_not_packed(package: Path, tmp_path: Path) -> None:
    (package / "data").rename(tmp_path / "elsewhere")
    (package / "data").symlink_to(tmp_path / "elsewhere")
    with pytest.raises(ManifestError, match=r"lies under 'data', which is a symbolic link"):
        pack(package, tmp_path / "demo.tar")


def test_is_archive() -> None:
    assert is_archive("m.tar")
    assert is_archive(Path("dir/m-1.0.TAR.GZ"))
    assert is_archive("m.tgz")
    assert not is_archive("m.zip")
    assert not is_archive("model.onnx")


# -- accepted layouts --------------------------------------------------------


@pytest.mark.parametrize("arcname", ["demo-1.0.0", "."])
def test_single_top_level_directory_or_dot_prefix_is_accepted(
    package: Path, out: Path, tmp_path: Path, arcname: str
) -> None:
    # What people get from "tar czf x.tgz demo-1.0.0" or "tar czf x.tgz -C demo ."
    archive = tmp_path / "by-hand.tgz"
    with tarfile.open(archive, "w:gz") as tar:
        tar.add(package, arcname=arcname)
    dest = unpack(archive, out / "demo")
    assert tree(dest) == tree(package)
    assert not (dest / "demo-1.0.0").exists()


def test_unpack_into_an_existing_empty_directory(package: Path, out: Path, tmp_path: Path) -> None:
    archive = pack(package, tmp_path / "demo.tar")
    (out / "demo").mkdir()
    assert tree(unpack(archive, out / "demo")) == tree(package)


def test_unpack_refuses_a_non_empty_destination(package: Path, out: Path, tmp_path: Path) -> None:
    archive = pack(package, tmp_path / "demo.tar")
    (out / "demo").mkdir()
    (out / "demo" / "keep.txt").write_text("mine")
    with pytest.raises(Conflict, match="not empty"):
        unpack(archive, out / "demo")
    assert sorted(p.name for p in (out / "demo").iterdir()) == ["keep.txt"]
    assert sorted(p.name for p in out.iterdir()) == ["demo"]


# -- hostile archives ------------------------------------------------------


@pytest.mark.parametrize(
    ("name", "reason"),
    [
        ("../evil", "normalised relative path"),
        ("data/../../evil", "normalised relative path"),
        ("/etc/evil", "is absolute"),
        ("C:/evil", "is absolute"),
        ("..\\evil", "not a valid relative path"),
        ("data/./evil", "'.' components"),
    ],
)
def test_unsafe_paths_are_refused(
    package: Path, out: Path, tmp_path: Path, name: str, reason: str
) -> None:
    archive = write_tar(tmp_path / "evil.tar", [*package_members(package), member(name, b"x")])
    message = assert_refused(archive, out, reason)
    assert f"member {name!r} has an unsafe path" in message
    assert not (tmp_path / "evil").exists()


@pytest.mark.parametrize(
    ("hostile", "reason"),
    [
        (member("passwd", type=tarfile.SYMTYPE, linkname="/etc/passwd"), "symbolic link"),
        (member("data/up", type=tarfile.SYMTYPE, linkname="../../.."), "symbolic link"),
        (member("copy.onnx", type=tarfile.LNKTYPE, linkname="model.onnx"), "hard link"),
        (member("tty", type=tarfile.CHRTYPE, devmajor=5, devminor=0), "character device"),
        (member("disk", type=tarfile.BLKTYPE, devmajor=8, devminor=0), "block device"),
        (member("pipe", type=tarfile.FIFOTYPE), "fifo"),
    ],
    ids=["symlink-abs", "symlink-escaping", "hardlink", "chardev", "blockdev", "fifo"],
)
def test_links_and_special_files_are_refused(
    package: Path,
    out: Path,
    tmp_path: Path,
    hostile: tuple[tarfile.TarInfo, bytes],
    reason: str,
) -> None:
    archive = write_tar(tmp_path / "evil.tar", [*package_members(package), hostile])
    message = assert_refused(archive, out, reason)
    assert f"member {hostile[0].name!r}" in message
    assert "only regular files and directories" in message


def test_escaping_symlink_followed_by_a_file_through_it_is_refused(
    package: Path, out: Path, tmp_path: Path
) -> None:
    members = [
        member("data", type=tarfile.SYMTYPE, linkname=str(tmp_path)),
        member("data/planted.txt", b"gotcha"),
        *package_members(package),
    ]
    assert_refused(write_tar(tmp_path / "evil.tgz", members, gz=True), out, "symbolic link")
    assert not (tmp_path / "planted.txt").exists()


def test_duplicate_members_are_refused(package: Path, out: Path, tmp_path: Path) -> None:
    members = [*package_members(package), member("model.onnx", b"second copy")]
    message = assert_refused(write_tar(tmp_path / "dup.tar", members), out, "appears twice")
    assert "'model.onnx'" in message


def test_file_below_a_file_is_refused(package: Path, out: Path, tmp_path: Path) -> None:
    members = [*package_members(package), member("model.onnx/inner", b"x")]
    assert_refused(write_tar(tmp_path / "x.tar", members), out, "lies under 'model.onnx'")


def test_too_many_members_are_refused(package: Path, out: Path, tmp_path: Path) -> None:
    members = [*package_members(package), *(member(f"f{i}", b"x") for i in range(5))]
    archive = write_tar(tmp_path / "many.tar", members)
    assert_refused(
        archive, out, r"one too many: the limit is 6 members", limits=Limits(max_archive_members=6)
    )


def test_oversized_total_is_refused(out: Path, tmp_path: Path) -> None:
    package = make_package(tmp_path / "big", {"model.onnx": b"w" * 5000})
    archive = pack(package, tmp_path / "big.tar")
    message = assert_refused(
        archive, out, "over the limit of 4096 bytes", limits=Limits(max_unpacked_bytes=4096)
    )
    assert "'model.onnx'" in message


class Zeros(io.RawIOBase):
    """``size`` zero bytes, produced on demand so they never sit in memory."""

    def __init__(self, size: int) -> None:
        self.left = size

    def readable(self) -> bool:
        return True

    def readinto(self, buffer: memoryview) -> int:  # type: ignore[override]
        n = min(len(buffer), self.left)
        buffer[:n] = bytes(n)
        self.left -= n
        return n


def test_gzip_bomb_is_refused_quickly(package: Path, out: Path, tmp_path: Path) -> None:
    size = 256 * 2**20
    bomb = tmp_path / "bomb.tar.gz"
    with tarfile.open(bomb, "w:gz", compresslevel=9) as tar:
        manifest, text = member(MANIFEST_NAME, (package / MANIFEST_NAME).read_bytes())
        tar.addfile(manifest, io.BytesIO(text))
        info = tarfile.TarInfo("model.onnx")
        info.size = size
        tar.addfile(info, Zeros(size))
    assert bomb.stat().st_size < size / 500

    start = time.monotonic()
    message = assert_refused(bomb, out, "likely archive bomb")
    assert time.monotonic() - start < 5
    assert "member 'model.onnx' inflates more than 200 times" in message
    inflated = int(re.search(r"\((\d+) bytes from", message).group(1))  # type: ignore[union-attr]
    assert inflated < 16 * 2**20, "the bomb was noticed too late"


@pytest.mark.parametrize("suffix", [".tar", ".tar.gz"])
def test_truncated_archive_is_refused(out: Path, tmp_path: Path, suffix: str) -> None:
    noise = random.Random(1).randbytes(200_000)
    package = make_package(tmp_path / "p", {"model.onnx": noise})
    whole = pack(package, tmp_path / f"whole{suffix}").read_bytes()
    cut = tmp_path / f"cut{suffix}"
    cut.write_bytes(whole[: len(whole) // 2])
    assert_refused(cut, out, "is truncated or not a tar archive")


def test_corrupted_gzip_is_refused(package: Path, out: Path, tmp_path: Path) -> None:
    data = bytearray(pack(package, tmp_path / "ok.tgz").read_bytes())
    data[-8] ^= 0xFF  # the CRC in the gzip trailer
    bad = tmp_path / "bad.tgz"
    bad.write_bytes(bytes(data))
    assert_refused(bad, out, "is truncated or not a tar archive")


@pytest.mark.parametrize(
    "content",
    [random.Random(2).randbytes(4096), b"", b"\x1f\x8b" + bytes(100)],
    ids=["random", "empty", "fake-gzip"],
)
def test_not_an_archive_is_refused(out: Path, tmp_path: Path, content: bytes) -> None:
    path = tmp_path / "noise.tar"
    path.write_bytes(content)
    assert_refused(path, out, "is truncated or not a tar archive")


def test_archive_without_manifest_is_refused(package: Path, out: Path, tmp_path: Path) -> None:
    archive = write_tar(tmp_path / "nomanifest.tar", package_members(package)[1:])
    assert_refused(archive, out, f"has no top-level {MANIFEST_NAME}")


def test_manifest_in_a_subdirectory_among_others_is_refused(
    package: Path, out: Path, tmp_path: Path
) -> None:
    members = [member(f"demo/{i.name}", data) for i, data in package_members(package)]
    members.append(member("README", b"hello"))
    assert_refused(write_tar(tmp_path / "x.tar", members), out, "has no top-level")


def test_unlisted_member_is_refused(package: Path, out: Path, tmp_path: Path) -> None:
    members = [*package_members(package), member("extra.txt", b"surprise")]
    assert_refused(
        write_tar(tmp_path / "x.tgz", members, gz=True),
        out,
        r"member 'extra.txt' is not listed in sciserve.yaml",
    )


def test_directory_holding_no_listed_file_is_refused(
    package: Path, out: Path, tmp_path: Path
) -> None:
    members = [*package_members(package), member("empty", type=tarfile.DIRTYPE, mode=0o755)]
    assert_refused(
        write_tar(tmp_path / "x.tar", members), out, "'empty' is a directory holding no listed file"
    )


def test_missing_listed_file_is_refused(package: Path, out: Path, tmp_path: Path) -> None:
    members = [m for m in package_members(package) if m[0].name != "data/labels.txt"]
    assert_refused(
        write_tar(tmp_path / "x.tar", members),
        out,
        r"lists 'data/labels.txt' but the archive does not contain it",
    )


def test_invalid_manifest_is_a_manifest_error(out: Path, tmp_path: Path) -> None:
    members = [member(MANIFEST_NAME, b"name: demo\nversion: [\n")]
    message = assert_refused(
        write_tar(tmp_path / "x.tar", members), out, "not valid YAML", error=ManifestError
    )
    assert "x.tar: sciserve.yaml" in message


# -- arbitrary trees -------------------------------------------------------


def test_extract_tree_keeps_any_safe_tree(out: Path, tmp_path: Path) -> None:
    members = [
        member("registry.db", b"sqlite"),
        member("artifacts", type=tarfile.DIRTYPE, mode=0o700),
        member("artifacts/sha256/ab/cd", b"blob"),
        member("tmp", type=tarfile.DIRTYPE),
    ]
    dest = extract_tree(write_tar(tmp_path / "export.tar", members), out / "export")
    assert tree(dest) == {"registry.db": b"sqlite", "artifacts/sha256/ab/cd": b"blob"}
    assert (dest / "tmp").is_dir()
    assert (dest / "artifacts").stat().st_mode & 0o777 == 0o755


def test_extract_tree_applies_the_same_safety_rules(out: Path, tmp_path: Path) -> None:
    members = [member("registry.db", b"sqlite"), member("../evil", b"x")]
    dest = out / "export"
    with pytest.raises(ArchiveError, match=r"member '\.\./evil' has an unsafe path"):
        extract_tree(write_tar(tmp_path / "export.tar", members), dest)
    assert list(out.iterdir()) == []
