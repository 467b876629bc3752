"""Tests of the content-addressed artifact store, local and on a real S3 server."""

from __future__ import annotations

import hashlib
import os
import signal
import socket
import stat
import subprocess
import sys
import time
from pathlib import Path
from typing import Any

import pytest

import sciserve
from sciserve.errors import (
    IntegrityError,
    InvalidInput,
    NotFound,
    ReadOnlyRegistry,
    Unavailable,
)
from sciserve.registry.store import (
    ArtifactStore,
    FsspecStore,
    LocalStore,
    open_store,
    validate_digest,
)

HOSTILE_DIGESTS = [
    "../../etc/passwd",
    "",
    "a" * 63,
    "a" * 65,
    "A" * 64,
    "g" * 64,
    "a" * 64 + "\n",
    "../" + "a" * 61,
    "aa/" + "a" * 61,
]


def write(path: Path, data: bytes) -> Path:
    path.write_bytes(data)
    return path


def sha256(data: bytes) -> str:
    return hashlib.sha256(data).hexdigest()


def files_under(path: Path) -> list[Path]:
    return sorted(p for p in path.rglob("*") if p.is_file()) if path.exists() else []


def subprocess_env() -> dict[str, str]:
    """Environment in which a child interpreter imports this checkout of sciserve."""
    src = str(Path(sciserve.__file__).resolve().parents[1])
    path = os.environ.get("PYTHONPATH")
    return {**os.environ, "PYTHONPATH": src if not path else os.pathsep.join([src, path])}


@pytest.fixture
def payload() -> bytes:
    # A little over 3 chunks, so chunk boundaries are exercised.
    return os.urandom(3 * 2**20 + 12345)


@pytest.fixture
def store(tmp_path: Path) -> LocalStore:
    return LocalStore(tmp_path / "store")


# -- validate_digest and open_store --------------------------------------------


@pytest.mark.parametrize("value", [*HOSTILE_DIGESTS, None, 42])
def test_validate_digest_rejects_anything_but_lowercase_hex(value: object) -> None:
    with pytest.raises(InvalidInput, match="sha256 digest"):
        validate_digest(value)


def test_validate_digest_returns_a_valid_digest() -> None:
    digest = sha256(b"x")
    assert validate_digest(digest) == digest


def test_open_store_plain_path_and_file_url_give_the_same_local_store(tmp_path: Path) -> None:
    plain = open_store(str(tmp_path / "a"))
    via_url = open_store((tmp_path / "a").as_uri())
    assert isinstance(plain, LocalStore)
    assert isinstance(via_url, LocalStore)
    assert plain.root == via_url.root == tmp_path / "a"
    assert not plain.read_only
    assert open_store(tmp_path, read_only=True).read_only


def test_open_store_url_gives_fsspec_store() -> None:
    store = open_store("memory://artifacts")
    assert isinstance(store, FsspecStore)
    assert store.url == "memory://artifacts"


def test_open_store_rejects_unknown_protocol_and_misplaced_options(tmp_path: Path) -> None:
    with pytest.raises(InvalidInput, match="unsupported"):
        open_store("nosuchprotocol://x")
    with pytest.raises(InvalidInput, match="storage_options"):
        open_store(tmp_path, storage_options={"key": "k"})
    with pytest.raises(InvalidInput, match="remote host"):
        open_store("file://otherhost/x")


# -- LocalStore ----------------------------------------------------------------


def test_local_round_trip(store: LocalStore, tmp_path: Path, payload: bytes) -> None:
    source = write(tmp_path / "weights.bin", payload)
    put_progress: list[int] = []

    digest, size = store.put_file(source, progress=put_progress.append)

    assert (digest, size) == (sha256(payload), len(payload))
    assert sum(put_progress) == size
    blob = store.root / "sha256" / digest[:2] / digest
    assert blob.read_bytes() == payload
    assert stat.S_IMODE(blob.stat().st_mode) == 0o444
    assert files_under(store.root / "tmp") == []
    assert store.has(digest)
    assert store.size(digest) == size
    with store.open(digest) as stream:
        assert stream.read() == payload
    assert list(store.iter_digests()) == [digest]

    fetch_progress: list[int] = []
    dest = tmp_path / "out" / "copy.bin"
    store.fetch(digest, dest, progress=fetch_progress.append)
    assert dest.read_bytes() == payload
    assert sum(fetch_progress) == size
    assert files_under(dest.parent) == [dest]
    store.verify(digest)


def test_local_fetch_creates_files_with_ordinary_permissions(
    store: LocalStore, tmp_path: Path
) -> None:
    digest, _ = store.put_file(write(tmp_path / "f", b"data"))
    dest = tmp_path / "copy"
    store.fetch(digest, dest)
    umask = os.umask(0)
    os.umask(umask)
    assert stat.S_IMODE(dest.stat().st_mode) == 0o666 & ~umask


def test_local_put_of_same_content_is_a_no_op(
    store: LocalStore, tmp_path: Path, payload: bytes
) -> None:
    first = store.put_file(write(tmp_path / "a", payload))
    blob = store.root / "sha256" / first[0][:2] / first[0]
    inode = blob.stat().st_ino

    second = store.put_file(write(tmp_path / "b", payload), expected_sha256=first[0])

    assert second == first
    assert blob.stat().st_ino == inode
    assert files_under(store.root) == [blob]


def test_local_put_of_empty_file(store: LocalStore, tmp_path: Path) -> None:
    digest, size = store.put_file(write(tmp_path / "empty", b""))
    assert (digest, size) == (sha256(b""), 0)
    store.verify(digest)


def test_local_put_with_wrong_expected_digest_stores_nothing(
    store: LocalStore, tmp_path: Path, payload: bytes
) -> None:
    wrong = sha256(b"something else")
    with pytest.raises(IntegrityError, match=wrong) as info:
        store.put_file(write(tmp_path / "f", payload), expected_sha256=wrong)
    assert info.value.expected == wrong
    assert info.value.actual == sha256(payload)
    assert files_under(store.root) == []


def test_local_put_of_missing_file_is_not_found(store: LocalStore, tmp_path: Path) -> None:
    with pytest.raises(NotFound, match="no such file"):
        store.put_file(tmp_path / "absent")
    assert files_under(store.root) == []


def test_local_tampered_blob_fails_verify_and_fetch(
    store: LocalStore, tmp_path: Path, payload: bytes
) -> None:
    digest, _ = store.put_file(write(tmp_path / "f", payload))
    blob = store.root / "sha256" / digest[:2] / digest
    blob.chmod(0o644)
    with blob.open("r+b") as fh:
        fh.seek(len(payload) // 2)
        fh.write(bytes([payload[len(payload) // 2] ^ 0xFF]))
    actual = sha256(blob.read_bytes())

    with pytest.raises(IntegrityError) as verified:
        store.verify(digest)
    assert digest in str(verified.value)
    assert actual in str(verified.value)
    assert (verified.value.expected, verified.value.actual) == (digest, actual)

    out = tmp_path / "out"
    out.mkdir()
    with pytest.raises(IntegrityError) as fetched:
        store.fetch(digest, out / "copy.bin")
    assert digest in str(fetched.value)
    assert actual in str(fetched.value)
    assert list(out.iterdir()) == []


def test_local_failed_fetch_keeps_an_existing_destination(
    store: LocalStore, tmp_path: Path
) -> None:
    digest, _ = store.put_file(write(tmp_path / "f", b"original"))
    blob = store.root / "sha256" / digest[:2] / digest
    blob.chmod(0o644)
    blob.write_bytes(b"tampered")
    dest = write(tmp_path / "dest", b"previous content")

    with pytest.raises(IntegrityError):
        store.fetch(digest, dest)

    assert dest.read_bytes() == b"previous content"
    assert sorted(p.name for p in tmp_path.iterdir()) == ["dest", "f", "store"]


def test_local_missing_blob_is_not_found(store: LocalStore, tmp_path: Path) -> None:
    digest = sha256(b"never stored")
    assert not store.has(digest)
    with pytest.raises(NotFound, match=digest):
        store.size(digest)
    with pytest.raises(NotFound, match=digest):
        store.open(digest)
    with pytest.raises(NotFound, match=digest):
        store.verify(digest)
    with pytest.raises(NotFound, match=digest):
        store.fetch(digest, tmp_path / "dest")
    assert not (tmp_path / "dest").exists()
    assert list(store.iter_digests()) == []


@pytest.mark.parametrize("digest", HOSTILE_DIGESTS)
def test_local_hostile_digests_never_reach_the_file_system(
    store: LocalStore, tmp_path: Path, digest: str
) -> None:
    source = write(tmp_path / "f", b"data")
    with pytest.raises(InvalidInput):
        store.has(digest)
    with pytest.raises(InvalidInput):
        store.size(digest)
    with pytest.raises(InvalidInput):
        store.open(digest)
    with pytest.raises(InvalidInput):
        store.verify(digest)
    with pytest.raises(InvalidInput):
        store.fetch(digest, tmp_path / "dest")
    with pytest.raises(InvalidInput):
        store.put_file(source, expected_sha256=digest)
    assert not store.root.exists()
    assert sorted(p.name for p in tmp_path.iterdir()) == ["f"]


def test_local_read_only_store_refuses_writes_but_reads(tmp_path: Path) -> None:
    source = write(tmp_path / "f", b"data")
    digest, _ = LocalStore(tmp_path / "store").put_file(source)
    store = open_store(tmp_path / "store", read_only=True)

    with pytest.raises(ReadOnlyRegistry):
        store.put_file(write(tmp_path / "g", b"other"))
    with pytest.raises(ReadOnlyRegistry):
        store.remove_orphan_temps()
    assert list(store.iter_digests()) == [digest]
    store.fetch(digest, tmp_path / "copy")
    assert (tmp_path / "copy").read_bytes() == b"data"


def test_local_read_only_store_never_creates_its_directory(tmp_path: Path) -> None:
    store = open_store(tmp_path / "absent", read_only=True)
    assert list(store.iter_digests()) == []
    assert not store.has(sha256(b""))
    assert store.read_only
    assert not (tmp_path / "absent").exists()


def test_local_iter_digests_lists_only_blobs(store: LocalStore, tmp_path: Path) -> None:
    digests = sorted(store.put_file(write(tmp_path / f"f{i}", bytes([i])))[0] for i in range(5))
    shard = store.root / "sha256" / digests[0][:2]
    write(shard / "notes.txt", b"stray")
    misplaced = sha256(b"misplaced")
    write(shard / misplaced, b"misplaced")  # wrong shard unless the prefix collides
    expected = digests + ([misplaced] if misplaced[:2] == digests[0][:2] else [])

    assert list(store.iter_digests()) == sorted(expected)


def test_local_remove_orphan_temps_spares_recent_files(store: LocalStore, tmp_path: Path) -> None:
    store.put_file(write(tmp_path / "f", b"data"))  # creates tmp/
    old = write(store.root / "tmp" / "put-old.part", b"partial")
    recent = write(store.root / "tmp" / "put-recent.part", b"partial")
    hours_ago = time.time() - 7200
    os.utime(old, (hours_ago, hours_ago))

    assert store.remove_orphan_temps(older_than_s=3600) == 1
    assert not old.exists()
    assert recent.exists()
    with pytest.raises(InvalidInput):
        store.remove_orphan_temps(older_than_s=-1)
    assert LocalStore(tmp_path / "fresh").remove_orphan_temps() == 0


_PUT_AND_FETCH = """
import resource, sys
from sciserve.registry.store import open_store

store = open_store(sys.argv[1])
before = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss
digest, size = store.put_file(sys.argv[2])
store.fetch(digest, sys.argv[3])
after = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss
print(digest, size, after - before)
"""


@pytest.mark.slow
@pytest.mark.skipif(sys.platform == "win32", reason="needs the resource module")
def test_local_large_file_is_streamed(tmp_path: Path) -> None:
    size = 300 * 2**20
    source = tmp_path / "large.bin"
    with source.open("wb") as fh:
        fh.truncate(size)  # sparse: no need to write 300 MB first
    dest = tmp_path / "copy.bin"

    result = subprocess.run(
        [sys.executable, "-c", _PUT_AND_FETCH, str(tmp_path / "store"), str(source), str(dest)],
        capture_output=True,
        text=True,
        env=subprocess_env(),
        timeout=120,
        check=False,
    )

    assert result.returncode == 0, result.stderr
    digest, stored_size, growth = result.stdout.split()
    # ru_maxrss is in KiB on Linux, in bytes on macOS.
    growth_bytes = int(growth) * (1 if sys.platform == "darwin" else 1024)
    assert growth_bytes < 150 * 2**20
    zeros = hashlib.sha256()
    for _ in range(size // 2**20):
        zeros.update(bytes(2**20))
    assert (digest, int(stored_size)) == (zeros.hexdigest(), size)
    assert dest.stat().st_size == size


_SLOW_PUT = """
import sys, time
from sciserve.registry.store import open_store

copied = 0

def progress(n):
    global copied
    copied += n
    if copied >= 4 * 2**20:
        print("copying", flush=True)
        time.sleep(600)

open_store(sys.argv[1]).put_file(sys.argv[2], progress=progress)
"""


@pytest.mark.skipif(sys.platform == "win32", reason="needs SIGKILL")
def test_local_put_killed_midway_leaves_no_blob(tmp_path: Path) -> None:
    data = os.urandom(16 * 2**20)
    source = write(tmp_path / "weights.bin", data)
    root = tmp_path / "store"
    proc = subprocess.Popen(
        [sys.executable, "-c", _SLOW_PUT, str(root), str(source)],
        stdout=subprocess.PIPE,
        stderr=subprocess.PIPE,
        env=subprocess_env(),
    )
    try:
        assert proc.stdout is not None
        line = proc.stdout.readline()
        assert line == b"copying\n", proc.stderr.read() if proc.stderr else b""
        leftovers = files_under(root / "tmp")
        assert len(leftovers) == 1
        assert leftovers[0].stat().st_size >= 2**20
    finally:
        proc.kill()  # SIGKILL: no cleanup handlers run
        proc.wait()
        for stream in (proc.stdout, proc.stderr):
            if stream is not None:
                stream.close()
    assert proc.returncode == -signal.SIGKILL

    store = LocalStore(root)
    digest = sha256(data)
    assert not store.has(digest)
    assert files_under(root / "sha256") == []

    assert store.put_file(source) == (digest, len(data))
    store.verify(digest)
    assert files_under(root / "tmp") == leftovers

    assert store.remove_orphan_temps() == 0  # the leftover is still recent
    hours_ago = time.time() - 7200
    os.utime(leftovers[0], (hours_ago, hours_ago))
    assert store.remove_orphan_temps() == 1
    assert files_under(root / "tmp") == []
    assert store.has(digest)


# -- FsspecStore on S3 (moto) ----------------------------------------------------


@pytest.fixture
def s3_store(s3_url: str, s3_store_options: dict[str, Any]) -> ArtifactStore:
    return open_store(s3_url, storage_options=s3_store_options)


def s3_key(s3_url: str, digest: str) -> str:
    prefix = s3_url.split("/", 3)[3]
    return f"{prefix}/sha256/{digest[:2]}/{digest}"


def test_s3_round_trip(
    s3_store: ArtifactStore, s3_url: str, s3_client: Any, tmp_path: Path, payload: bytes
) -> None:
    assert isinstance(s3_store, FsspecStore)
    source = write(tmp_path / "weights.bin", payload)
    progress: list[int] = []

    digest, size = s3_store.put_file(source, progress=progress.append)

    assert (digest, size) == (sha256(payload), len(payload))
    assert sum(progress) == size
    obj = s3_client.get_object(Bucket="sciserve-test", Key=s3_key(s3_url, digest))
    assert obj["Body"].read() == payload
    assert s3_store.has(digest)
    assert s3_store.size(digest) == size
    with s3_store.open(digest) as stream:
        assert stream.read(10) == payload[:10]
        assert stream.read() == payload[10:]
    assert list(s3_store.iter_digests()) == [digest]

    fetch_progress: list[int] = []
    dest = tmp_path / "copy.bin"
    s3_store.fetch(digest, dest, progress=fetch_progress.append)
    assert dest.read_bytes() == payload
    assert sum(fetch_progress) == size
    s3_store.verify(digest)

    again: list[int] = []
    assert s3_store.put_file(source, expected_sha256=digest, progress=again.append) == (
        digest,
        size,
    )
    assert sum(again) == size


def test_s3_sees_blobs_uploaded_by_others(
    s3_store: ArtifactStore, s3_url: str, s3_client: Any, tmp_path: Path
) -> None:
    first, _ = s3_store.put_file(write(tmp_path / "a", b"first"))
    assert list(s3_store.iter_digests()) == [first]  # fills the listing cache

    other = sha256(b"second")
    s3_client.put_object(Bucket="sciserve-test", Key=s3_key(s3_url, other), Body=b"second")

    assert s3_store.has(other)
    assert s3_store.size(other) == len(b"second")
    assert sorted(s3_store.iter_digests()) == sorted([first, other])


def test_s3_put_with_wrong_expected_digest_uploads_nothing(
    s3_store: ArtifactStore, tmp_path: Path
) -> None:
    wrong = sha256(b"something else")
    with pytest.raises(IntegrityError, match=wrong):
        s3_store.put_file(write(tmp_path / "f", b"data"), expected_sha256=wrong)
    assert list(s3_store.iter_digests()) == []


def test_s3_tampered_object_fails_fetch_and_verify(
    s3_store: ArtifactStore, s3_url: str, s3_client: Any, tmp_path: Path, payload: bytes
) -> None:
    digest, _ = s3_store.put_file(write(tmp_path / "f", payload))
    forged = b"not the weights you published"
    s3_client.put_object(Bucket="sciserve-test", Key=s3_key(s3_url, digest), Body=forged)

    out = tmp_path / "out"
    out.mkdir()
    with pytest.raises(IntegrityError) as fetched:
        s3_store.fetch(digest, out / "copy.bin")
    assert digest in str(fetched.value)
    assert sha256(forged) in str(fetched.value)
    assert list(out.iterdir()) == []

    with pytest.raises(IntegrityError) as verified:
        s3_store.verify(digest)
    assert (verified.value.expected, verified.value.actual) == (digest, sha256(forged))


def test_s3_missing_blob_is_not_found(s3_store: ArtifactStore, tmp_path: Path) -> None:
    digest = sha256(b"never stored")
    assert not s3_store.has(digest)
    with pytest.raises(NotFound, match=digest):
        s3_store.size(digest)
    with pytest.raises(NotFound, match=digest):
        s3_store.open(digest)
    with pytest.raises(NotFound, match=digest):
        s3_store.verify(digest)
    with pytest.raises(NotFound, match=digest):
        s3_store.fetch(digest, tmp_path / "dest")
    assert not (tmp_path / "dest").exists()


@pytest.mark.parametrize("digest", HOSTILE_DIGESTS[:3])
def test_s3_hostile_digests_are_refused(s3_store: ArtifactStore, digest: str) -> None:
    with pytest.raises(InvalidInput):
        s3_store.has(digest)
    with pytest.raises(InvalidInput):
        s3_store.open(digest)


def test_s3_read_only_store_refuses_writes(
    s3_url: str, s3_store_options: dict[str, Any], tmp_path: Path
) -> None:
    source = write(tmp_path / "f", b"data")
    digest, _ = open_store(s3_url, storage_options=s3_store_options).put_file(source)
    store = open_store(s3_url, read_only=True, storage_options=s3_store_options)

    with pytest.raises(ReadOnlyRegistry):
        store.put_file(source)
    with pytest.raises(ReadOnlyRegistry):
        store.remove_orphan_temps()
    assert store.has(digest)


def test_s3_unreachable_endpoint_is_unavailable() -> None:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        port = sock.getsockname()[1]
    # Nothing listens on the port once the socket is closed.
    store = open_store(
        "s3://sciserve-test/unreachable",
        storage_options={
            "client_kwargs": {"endpoint_url": f"http://127.0.0.1:{port}", "region_name": "x"},
            "config_kwargs": {"retries": {"max_attempts": 1}},
            "key": "testing",
            "secret": "testing",
        },
    )
    with pytest.raises(Unavailable, match="cannot look up"):
        store.has(sha256(b"x"))
