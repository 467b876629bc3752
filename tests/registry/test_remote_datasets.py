"""Datasets through the registry HTTP API and :class:`RemoteRegistry`, on a real server."""

from __future__ import annotations

import json
from collections.abc import Iterator
from pathlib import Path

import httpx
import pytest

from sciserve.config import Settings
from sciserve.errors import InvalidInput, NotFound
from sciserve.package.archive import pack
from sciserve.package.dataset import load_split
from sciserve.package.manifest import DATASET
from sciserve.protocol.rest import create_app
from sciserve.registry.registry import Registry
from sciserve.registry.remote import REGISTRY_PREFIX, RemoteRegistry
from sciserve.serving.service import InferenceService

from helpers.cli import Cli
from helpers.datasets import make_dataset
from helpers.packages import make_onnx_package
from helpers.server import ServerThread


@pytest.fixture
def server_registry(tmp_path: Path) -> Iterator[Registry]:
    with Registry(Settings.load(tmp_path / "server", environ={})) as registry:
        yield registry


@pytest.fixture
def url(server_registry: Registry) -> Iterator[str]:
    with ServerThread(create_app(InferenceService(server_registry))) as address:
        yield f"http://{address}"


@pytest.fixture
def remote(url: str, tmp_path: Path) -> Iterator[RemoteRegistry]:
    with RemoteRegistry(url, cache_dir=tmp_path / "cache") as client:
        yield client


def test_publish_list_resolve_card_pull_verify(remote: RemoteRegistry, tmp_path: Path) -> None:
    package = make_dataset(tmp_path / "ds")
    result = remote.publish(package)
    assert result.created and result.version.manifest.kind == DATASET
    assert [v.ref for v in remote.list_datasets()] == ["default/stars:1.0.0"]
    assert remote.list_models() == []
    info = remote.resolve_dataset("stars")
    assert info.digest == result.version.digest
    assert [v.version for v in remote.versions("stars", kind=DATASET)] == ["1.0.0"]
    assert remote.croissant("stars") == json.loads((package / "croissant.json").read_text())
    root = remote.pull("stars", kind=DATASET)
    assert load_split(root, "test").labels.tolist() == ["star", "galaxy", "qso"] * 2
    (report,) = remote.verify("stars", kind=DATASET)
    assert report.ok and report.checked == 3


def test_tag_and_yank_through_the_dataset_routes(remote: RemoteRegistry, tmp_path: Path) -> None:
    remote.publish(make_dataset(tmp_path / "a"))
    remote.publish(make_dataset(tmp_path / "b", version="1.1.0", offset=2.0))
    remote.tag("stars:1.0.0", "benchmark", kind=DATASET)
    assert remote.resolve_dataset("stars@benchmark").version == "1.0.0"
    remote.yank("stars:1.1.0", "bad", kind=DATASET)
    assert remote.resolve_dataset("stars").version == "1.0.0"
    remote.unyank("stars:1.1.0", kind=DATASET)
    remote.untag("stars", "benchmark", kind=DATASET)
    with pytest.raises(NotFound, match="no alias"):
        remote.resolve_dataset("stars@benchmark")


def test_models_and_datasets_are_not_confused(
    remote: RemoteRegistry, url: str, tmp_path: Path
) -> None:
    remote.publish(make_dataset(tmp_path / "ds"))
    remote.publish(make_onnx_package(tmp_path / "m", name="clf"))
    with pytest.raises(NotFound, match="is a dataset, not a model"):
        remote.resolve("stars")
    with pytest.raises(NotFound, match="is a model, not a dataset"):
        remote.resolve_dataset("clf")
    with pytest.raises(NotFound, match="is a dataset, not a model"):
        remote.yank("stars:1.0.0", "x")
    with pytest.raises(NotFound, match="is a model, not a dataset"):
        remote.tag("clf:1.0.0", "x", kind=DATASET)
    # An archive of a dataset sent to the models' route is refused, and the other way round.
    with httpx.Client(base_url=url + REGISTRY_PREFIX, timeout=30) as http:
        archive = pack(make_dataset(tmp_path / "ds2", version="2.0.0"), tmp_path / "ds2.tar.gz")
        answer = http.post("/models", content=archive.read_bytes())
        assert answer.status_code == 400
        assert "is a dataset package" in answer.json()["error"]
        model = pack(make_onnx_package(tmp_path / "m2", name="clf2"), tmp_path / "m2.tar.gz")
        answer = http.post("/datasets", content=model.read_bytes())
        assert answer.status_code == 400
        assert "is a model package" in answer.json()["error"]
        card = http.get("/datasets/default/stars/croissant")
        assert card.status_code == 200
        assert card.headers["content-type"] == "application/ld+json"
        assert http.get("/models/default/clf/croissant").status_code == 404
    assert [v.version for v in remote.list_datasets()] == ["1.0.0"]
    with pytest.raises(InvalidInput, match="is a dataset package"):
        remote.publish(archive)


def test_the_remote_command_line(
    url: str, tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    cli = Cli(tmp_path / "client-home", capsys)
    data = tmp_path / "mine"
    data.mkdir()
    from helpers.datasets import write_split

    write_split(data / "train.parquet", 12)
    out = cli.json(
        "--server", url, "datasets", "add", str(data), "--version", "1.0.0", "--license", "CC0-1.0"
    )
    assert out["created"] and out["ref"] == "default/mine:1.0.0"
    assert [d["ref"] for d in cli.json("--server", url, "datasets", "list")] == [out["ref"]]
    doc = json.loads(cli("--server", url, "datasets", "card", "mine"))
    assert doc["name"] == "mine"
    cli("--server", url, "datasets", "tag", "mine:1.0.0", "benchmark")
    shown = cli.json("--server", url, "datasets", "show", "mine@benchmark")
    assert shown["versions"][0]["aliases"] == ["latest", "benchmark"]
    pulled = cli.json("--server", url, "datasets", "pull", "mine", "--dest", str(tmp_path / "p"))
    assert (Path(pulled["path"]) / "croissant.json").is_file()
    assert "is a dataset, not a model" in cli("--server", url, "models", "show", "mine", code=3)
    # Nothing was written to a local registry.
    assert not (tmp_path / "client-home" / "registry.db").exists()
