"""Client mistakes are client errors (4xx, CLI exit 2), never a 500 or a traceback:
numbers of thousands of digits, GNU sparse members in a package archive.  And
a large body a model may take is still answered (decoded in a thread)."""

from __future__ import annotations

import io
import json
import tarfile
from collections.abc import Iterator
from pathlib import Path

import httpx
import pytest

from sciserve.config import Settings
from sciserve.errors import ArchiveError
from sciserve.package.archive import unpack
from sciserve.protocol.rest import create_app
from sciserve.registry.registry import Registry
from sciserve.registry.remote import REGISTRY_PREFIX
from sciserve.serving.service import InferenceService

from helpers.packages import identity_package, make_onnx_package
from helpers.server import ServerThread, run_cli

#: More digits than Python turns into an int by default (4300).
DIGITS = "9" * 5000


@pytest.fixture(scope="module")
def http(tmp_path_factory: pytest.TempPathFactory) -> Iterator[httpx.Client]:
    tmp = tmp_path_factory.mktemp("mistakes")
    with Registry(Settings.load(tmp / "home", environ={})) as registry:
        registry.publish(make_onnx_package(tmp / "linear"))
        registry.publish(identity_package(tmp / "strings", "BYTES"))
        app = create_app(InferenceService(registry), manage_service=True)
        with (
            ServerThread(app) as address,
            httpx.Client(base_url=f"http://{address}", timeout=30) as client,
        ):
            yield client


def test_a_header_length_of_thousands_of_digits_is_400(http: httpx.Client) -> None:
    response = http.post(
        "/v2/models/linear/infer",
        content=b'{"inputs": []}',
        headers={"Inference-Header-Content-Length": DIGITS},
    )
    assert response.status_code == 400, response.text
    assert "Inference-Header-Content-Length" in response.json()["error"]
    assert len(response.text) < 1000  # the digits are not echoed back


def test_a_limit_of_thousands_of_digits_is_400(http: httpx.Client) -> None:
    response = http.get(f"{REGISTRY_PREFIX}/events", params={"limit": DIGITS})
    assert response.status_code == 400, response.text
    assert "limit" in response.json()["error"]
    assert len(response.text) < 1000


# -- GNU sparse members ---------------------------------------------------------

#: PAX headers that make Python's tarfile treat a member as GNU sparse: two
#: with a map it cannot read (the member's data is no map), one it can.
SPARSE_HEADERS = {
    "1.0 with a bad map": {
        "GNU.sparse.major": "1",
        "GNU.sparse.minor": "0",
        "GNU.sparse.realsize": "10",
    },
    "0.1 with a bad map": {"GNU.sparse.map": "0,5,x"},
    "0.0": {
        "GNU.sparse.size": "10",
        "GNU.sparse.numblocks": "1",
        "GNU.sparse.offset": "0",
        "GNU.sparse.numbytes": "5",
    },
}


def sparse_archive(path: Path, headers: dict[str, str]) -> Path:
    buffer = io.BytesIO()
    with tarfile.open(fileobj=buffer, mode="w", format=tarfile.PAX_FORMAT) as tar:
        data = b"name: x\n" * 4
        info = tarfile.TarInfo("sciserve.yaml")
        info.size = len(data)
        info.pax_headers = headers
        tar.addfile(info, io.BytesIO(data))
    path.write_bytes(buffer.getvalue())
    return path


@pytest.mark.parametrize("kind", SPARSE_HEADERS)
def test_a_gnu_sparse_member_is_an_archive_error(kind: str, tmp_path: Path) -> None:
    archive = sparse_archive(tmp_path / "sparse.tar", SPARSE_HEADERS[kind])
    with pytest.raises(ArchiveError, match="sparse"):
        unpack(archive, tmp_path / "out")
    assert not (tmp_path / "out").exists()


def test_a_gnu_sparse_upload_is_400(http: httpx.Client, tmp_path: Path) -> None:
    for kind, headers in SPARSE_HEADERS.items():
        body = sparse_archive(tmp_path / "sparse.tar", headers).read_bytes()
        response = http.post(f"{REGISTRY_PREFIX}/models", content=body)
        assert response.status_code == 400, (kind, response.text)
        assert response.json()["type"] == "ArchiveError"


def test_cli_publish_of_a_gnu_sparse_archive_exits_2(tmp_path: Path) -> None:
    archive = sparse_archive(tmp_path / "sparse.tar", SPARSE_HEADERS["1.0 with a bad map"])
    done = run_cli(tmp_path / "home", "publish", str(archive), timeout=120)
    assert done.returncode == 2, done.stderr
    assert "sparse" in done.stderr
    assert "Traceback" not in done.stderr


def test_a_large_body_the_model_may_take_is_answered(http: httpx.Client) -> None:
    # Strings leave the body bounded only by max_request_bytes; at 600 KB it
    # is decoded in a worker thread rather than on the event loop.
    words = [[f"{row}-{col}-" + "x" * 25_000 for col in range(3)] for row in range(8)]
    body = {"inputs": [{"name": "INPUT0", "datatype": "BYTES", "shape": [8, 3], "data": words}]}
    content = json.dumps(body).encode()
    assert len(content) > 512 * 1024
    response = http.post("/v2/models/identity_bytes/infer", content=content)
    assert response.status_code == 200, response.text[:500]
    assert response.json()["outputs"][0]["data"] == [w for row in words for w in row]
