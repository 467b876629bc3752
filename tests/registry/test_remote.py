"""The registry HTTP API through :class:`RemoteRegistry`, against a real server on 127.0.0.1."""

from __future__ import annotations

import contextlib
import socket
from collections.abc import Callable, Iterator
from pathlib import Path

import httpx
import pytest
from starlette.applications import Starlette
from starlette.requests import Request
from starlette.responses import JSONResponse, Response
from starlette.routing import Route

from sciserve._hashing import sha256_file
from sciserve.config import Limits, Settings
from sciserve.errors import (
    ArchiveError,
    Conflict,
    IntegrityError,
    InvalidInput,
    NotFound,
    PayloadTooLarge,
    ReadOnlyRegistry,
    Unavailable,
    VersionConflict,
)
from sciserve.package.archive import pack
from sciserve.protocol.rest import create_app
from sciserve.registry.registry import Registry
from sciserve.registry.remote import (
    REGISTRY_PREFIX,
    RemoteRegistry,
    version_from_wire,
    version_to_wire,
)
from sciserve.serving.service import InferenceService

from helpers.server import ServerThread

UPLOAD_LIMIT = 256 * 1024


@pytest.fixture(scope="module")
def home(tmp_path_factory: pytest.TempPathFactory) -> Path:
    return tmp_path_factory.mktemp("remote") / "home"


@pytest.fixture(scope="module")
def server_registry(home: Path) -> Iterator[Registry]:
    limits = Limits(max_unpacked_bytes=UPLOAD_LIMIT, max_upload_bytes=UPLOAD_LIMIT)
    with Registry(Settings.load(home, environ={}, limits=limits)) as registry:
        yield registry


@pytest.fixture(scope="module")
def url(server_registry: Registry) -> Iterator[str]:
    # The registry API needs no loaded models: the service is never started.
    with ServerThread(create_app(InferenceService(server_registry))) as address:
        yield f"http://{address}"


@pytest.fixture
def remote(url: str, tmp_path: Path) -> Iterator[RemoteRegistry]:
    with RemoteRegistry(url, cache_dir=tmp_path / "cache") as client:
        yield client


@pytest.fixture
def http(url: str) -> Iterator[httpx.Client]:
    with httpx.Client(base_url=url + REGISTRY_PREFIX, timeout=30) as client:
        yield client


Package = Callable[..., Path]


def test_publish_list_resolve_and_versions(
    remote: RemoteRegistry, server_registry: Registry, onnx_package: Package, tmp_path: Path
) -> None:
    sent: list[int] = []
    first = remote.publish(onnx_package(name="alpha"), progress=sent.append)
    assert first.created and first.version.ref == "default/alpha:1.0.0"
    assert sum(sent) > 0
    again = remote.publish(onnx_package(name="alpha"))
    assert not again.created and again.version.digest == first.version.digest
    # An archive is sent as it is.
    archive = pack(onnx_package(name="alpha", version="2.0.0", scale=2.0), tmp_path / "a.tar")
    second = remote.publish(archive)
    assert second.created and second.version.version == "2.0.0"

    local = server_registry.resolve("alpha")
    resolved = remote.resolve("alpha")
    assert resolved == local  # every field, the manifest and datetimes included
    assert resolved.aliases == ("latest",)
    assert remote.resolve("alpha:1.0.0").digest == first.version.digest
    assert remote.resolve("default/alpha@latest").version == "2.0.0"
    assert [v.version for v in remote.versions("alpha")] == ["2.0.0", "1.0.0"]
    listed = {v.ref: v for v in remote.list_models()}
    assert listed["default/alpha:2.0.0"] == local
    assert remote.list_models("no-such-namespace") == []


def test_version_conflict_round_trips_as_the_same_class(
    remote: RemoteRegistry, onnx_package: Package
) -> None:
    remote.publish(onnx_package(name="beta"))
    with pytest.raises(VersionConflict, match="immutable"):
        remote.publish(onnx_package(name="beta", scale=3.0))


def test_tag_untag_yank_and_unyank(remote: RemoteRegistry, onnx_package: Package) -> None:
    remote.publish(onnx_package(name="gamma"))
    remote.publish(onnx_package(name="gamma", version="2.0.0", scale=2.0))

    tagged = remote.tag("gamma:1.0.0", "production")
    assert "production" in tagged.aliases
    assert remote.resolve("gamma").version == "1.0.0"  # production wins over latest
    assert remote.tag("gamma@latest", "staging").version == "2.0.0"
    with pytest.raises(InvalidInput, match="latest"):
        remote.tag("gamma:1.0.0", "latest")
    with pytest.raises(Conflict, match="production"):
        remote.yank("gamma:1.0.0", "pinned by an alias")
    remote.untag("gamma", "production")
    with pytest.raises(NotFound, match="production"):
        remote.resolve("gamma@production")
    with pytest.raises(NotFound):
        remote.untag("gamma", "production")

    remote.untag("gamma", "staging")
    yanked = remote.yank("gamma:2.0.0", "wrong weights")
    assert yanked.yanked and yanked.yanked_reason == "wrong weights"
    assert yanked.yanked_at is not None
    assert remote.resolve("gamma").version == "1.0.0"
    with pytest.raises(InvalidInput, match="exact version"):
        remote.yank("gamma", "no version given")
    assert not remote.unyank("gamma:2.0.0").yanked
    assert remote.resolve("gamma").version == "2.0.0"


def test_pull_is_verified_and_cached(
    remote: RemoteRegistry, onnx_package: Package, tmp_path: Path
) -> None:
    published = remote.publish(onnx_package(name="delta")).version
    received: list[int] = []
    dest = remote.pull("delta", tmp_path / "out", progress=received.append)
    assert dest == tmp_path / "out"
    assert sum(received) > 0
    for entry in published.manifest.files:
        assert sha256_file(dest / entry.path) == (entry.sha256, entry.size)
    assert sorted(p.name for p in dest.iterdir()) == ["model.onnx", "sciserve.yaml"]

    cached = remote.pull("delta:1.0.0")
    assert cached == remote.cache_dir / published.digest.removeprefix("sha256:")
    model = cached / "model.onnx"
    model.write_bytes(b"tampered")
    assert remote.pull("delta") == cached  # the damaged copy is replaced
    assert sha256_file(model)[0] == published.manifest.files[0].sha256
    assert not any(p.name.endswith(".partial") for p in remote.cache_dir.iterdir())
    with pytest.raises(NotFound):
        remote.pull("no-such-model", tmp_path / "never")
    assert not (tmp_path / "never").exists()


def test_verify_events_and_namespaces(remote: RemoteRegistry, onnx_package: Package) -> None:
    remote.publish(onnx_package(name="epsilon", namespace="astro"))
    [report] = remote.verify("astro/epsilon")
    assert report.ok and report.checked == 1 and report.ref == "astro/epsilon:1.0.0"
    everything = remote.verify()
    assert "astro/epsilon:1.0.0" in {r.ref for r in everything}
    assert all(r.ok for r in everything)
    events = remote.events(limit=5)
    assert 0 < len(events) <= 5
    assert any(e["action"] == "publish" and e["subject"] == "astro/epsilon:1.0.0" for e in events)
    names = {n.name: n for n in remote.namespaces()}
    assert "astro" in names and not names["astro"].trusted


def test_card_and_jsonld(
    remote: RemoteRegistry, http: httpx.Client, onnx_package: Package, url: str
) -> None:
    remote.publish(onnx_package(name="zeta"))
    card = http.get("/models/default/zeta/versions/1.0.0/card")
    assert card.status_code == 200
    assert card.headers["content-type"].startswith("text/markdown")
    assert "zeta" in card.text and "y = x @ W + b" in card.text
    document = http.get("/models/default/zeta/card.jsonld")
    assert document.headers["content-type"] == "application/ld+json"
    node = document.json()
    assert "MLModel" in node["@type"]
    # The node's IRI is this API's address of the version: it dereferences.
    assert node["@id"] == f"{url}{REGISTRY_PREFIX}/models/default/zeta/versions/1.0.0"
    assert httpx.get(node["@id"]).json()["digest"] == node["identifier"]


def test_archive_download_is_the_package(
    remote: RemoteRegistry, http: httpx.Client, onnx_package: Package, tmp_path: Path
) -> None:
    source = onnx_package(name="eta")
    published = remote.publish(source).version
    response = http.get("/models/default/eta/aliases/latest/archive")
    assert response.status_code == 200
    assert response.headers["sciserve-digest"] == published.digest
    assert int(response.headers["content-length"]) == len(response.content)
    # Packing is reproducible: the download is byte for byte the local pack.
    assert response.content == pack(source, tmp_path / "local.tar.gz").read_bytes()


@pytest.mark.parametrize(
    ("method", "path", "body", "status", "fragment"),
    [
        ("POST", "/models/default/x/versions/1.0.0/yank", b"{not json", 400, "json"),
        ("POST", "/models/default/x/versions/1.0.0/yank", b"[]", 400, "object"),
        ("POST", "/models/default/x/versions/1.0.0/yank", b'{"reason": 3}', 400, "reason"),
        ("PUT", "/models/default/x/aliases/prod", b'{"version": true}', 400, "version"),
        (
            "PUT",
            "/models/default/x/aliases/prod",
            b'{"version": "1", "alias": "a"}',
            400,
            "not both",
        ),
        ("GET", "/events?limit=many", b"", 400, "limit"),
        ("GET", "/events?limit=0", b"", 400, "limit"),
        ("GET", "/models/Bad%20NS/x", b"", 400, "namespace"),
        ("GET", "/models/default/no-such-model", b"", 404, "no-such-model"),
        ("DELETE", "/models", b"", 405, "DELETE"),
        ("GET", "/nothing/here", b"", 404, "no route"),
    ],
)
def test_client_mistakes_are_4xx(
    http: httpx.Client, method: str, path: str, body: bytes, status: int, fragment: str
) -> None:
    response = http.request(method, path, content=body or None)
    assert response.status_code == status, response.text
    assert fragment.lower() in response.json()["error"].lower()


def test_bad_uploads(remote: RemoteRegistry, http: httpx.Client, tmp_path: Path) -> None:
    garbage = tmp_path / "garbage.tar.gz"
    garbage.write_bytes(b"this is not an archive")
    with pytest.raises(ArchiveError):
        remote.publish(garbage)
    big = tmp_path / "big.tar"
    big.write_bytes(b"\0" * (UPLOAD_LIMIT + 1))
    with pytest.raises(PayloadTooLarge):
        remote.publish(big)
    empty = http.post("/models", content=b"")
    assert empty.status_code == 400 and "empty" in empty.json()["error"]
    with pytest.raises(NotFound):
        remote.publish(tmp_path / "missing")
    assert remote.list_models("nowhere") == []  # the server is still fine


def test_read_only_server_refuses_writes(onnx_package: Package, tmp_path: Path) -> None:
    with Registry(Settings.load(tmp_path / "ro", environ={})) as writable:
        writable.publish(onnx_package(name="theta"))
    settings = Settings.load(
        tmp_path / "ro", environ={}, read_only=True, cache_dir=tmp_path / "cache"
    )
    with (
        Registry(settings) as registry,
        ServerThread(create_app(InferenceService(registry))) as address,
        RemoteRegistry(address, cache_dir=tmp_path / "pulled") as remote,
    ):
        with pytest.raises(ReadOnlyRegistry):
            remote.publish(onnx_package(name="theta", version="2.0.0"))
        # Reads, downloads included, still work.
        assert [v.version for v in remote.versions("theta")] == ["1.0.0"]
        assert (remote.pull("theta") / "model.onnx").is_file()


@contextlib.contextmanager
def unused_port() -> Iterator[int]:
    """A port on 127.0.0.1 that nothing listens on, for as long as the block runs."""
    # Bound but not listening: connections are refused, and no other process
    # can take the port meanwhile.
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        yield sock.getsockname()[1]


def test_unreachable_server_is_unavailable() -> None:
    with (
        unused_port() as port,
        RemoteRegistry(f"http://127.0.0.1:{port}") as remote,
        pytest.raises(Unavailable, match="cannot reach"),
    ):
        remote.list_models()


def test_wire_format_round_trips_and_checks_the_digest(
    remote: RemoteRegistry, onnx_package: Package
) -> None:
    info = remote.publish(onnx_package(name="iota")).version
    wire = version_to_wire(info)
    assert version_from_wire(wire) == info
    wire["manifest"]["description"] = "swapped in transit"
    with pytest.raises(IntegrityError, match="hashes to"):
        version_from_wire(wire)


def test_pull_refuses_a_package_other_than_the_one_announced(
    remote: RemoteRegistry, onnx_package: Package, tmp_path: Path
) -> None:
    announced = remote.publish(onnx_package(name="kappa")).version
    impostor = pack(onnx_package(name="kappa", scale=5.0), tmp_path / "impostor.tar.gz")

    # A server that describes one package and sends another.
    async def version(request: Request) -> Response:
        return JSONResponse(version_to_wire(announced))

    async def archive(request: Request) -> Response:
        return Response(impostor.read_bytes(), media_type="application/gzip")

    model = REGISTRY_PREFIX + "/models/default/kappa"
    app = Starlette(
        routes=[
            Route(model, version),
            Route(model + "/versions/1.0.0/archive", archive),
        ]
    )
    with (
        ServerThread(app) as address,
        RemoteRegistry(address, cache_dir=tmp_path / "c") as liar,
        pytest.raises(IntegrityError, match="digest"),
    ):
        liar.pull("kappa", tmp_path / "dest")
    assert not (tmp_path / "dest").exists()
    assert [p.name for p in tmp_path.iterdir() if p.name.startswith(".dest")] == []
