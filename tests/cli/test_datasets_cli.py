"""``sciserve datasets``: add, list, show, card, pull, verify, builtin; bad input."""

from __future__ import annotations

import hashlib
import http.server
import json
import threading
import time
from collections.abc import Iterator
from pathlib import Path

import pyarrow as pa
import pyarrow.parquet as pq
import pytest

from sciserve.package import croissant

from helpers.cli import Cli


def _parquet(path: Path, rows: int, label: str = "label") -> Path:
    pq.write_table(
        pa.table(
            {
                "x": pa.array([i / 4 for i in range(rows)], pa.float32()),
                label: pa.array(["a", "b"][i % 2] for i in range(rows)),
            }
        ),
        path,
    )
    return path


@pytest.fixture
def data_dir(tmp_path: Path) -> Path:
    d = tmp_path / "mydata"
    d.mkdir()
    _parquet(d / "train.parquet", 8)
    _parquet(d / "test.parquet", 4)
    return d


def _count(cli: Cli) -> int:
    return len(cli.json("datasets", "list"))


def _events(cli: Cli) -> int:
    import sqlite3

    path = cli.home / "registry.db"
    if not path.exists():
        return 0
    conn = sqlite3.connect(path)
    try:
        return int(conn.execute("select count(*) from events").fetchone()[0])
    finally:
        conn.close()


def test_add_list_show_card_pull_verify(cli: Cli, data_dir: Path, tmp_path: Path) -> None:
    out = cli.json(
        "datasets",
        "add",
        str(data_dir),
        "--version",
        "1.0.0",
        "--creator",
        "Ann",
        "--license",
        "MIT",
    )
    assert out["created"] and out["kind"] == "dataset" and out["ref"] == "default/mydata:1.0.0"
    listed = cli.json("datasets", "list")
    assert [d["ref"] for d in listed] == ["default/mydata:1.0.0"]
    assert cli.json("models", "list") == []
    shown = cli.json("datasets", "show", "mydata")
    assert {f["path"] for f in shown["files"]} == {
        "croissant.json",
        "train.parquet",
        "test.parquet",
    }
    doc = json.loads(cli("datasets", "card", "mydata"))
    assert croissant.validate(doc) == []
    assert doc["license"] == "https://spdx.org/licenses/MIT.html"
    pulled = cli.json("datasets", "pull", "mydata", "--dest", str(tmp_path / "out"))
    assert (Path(pulled["path"]) / "train.parquet").read_bytes() == (
        data_dir / "train.parquet"
    ).read_bytes()
    (report,) = cli.json("datasets", "verify", "mydata")
    assert report["ok"] and report["checked"] == 3
    # The same files again: a no-op.
    again = cli.json(
        "datasets",
        "add",
        str(data_dir),
        "--version",
        "1.0.0",
        "--creator",
        "Ann",
        "--license",
        "MIT",
    )
    assert not again["created"]


def test_the_registrys_commands_tag_and_yank_datasets(cli: Cli, data_dir: Path) -> None:
    cli("datasets", "add", str(data_dir), "--version", "1.0.0", "--license", "CC0-1.0")
    _parquet(data_dir / "test.parquet", 6)
    cli("datasets", "add", str(data_dir), "--version", "1.1.0", "--license", "CC0-1.0")
    cli("tag", "mydata:1.0.0", "benchmark")
    assert cli.json("datasets", "show", "mydata@benchmark")["versions"][1]["aliases"] == [
        "benchmark"
    ]
    cli("yank", "mydata:1.1.0", "--reason", "wrong labels")
    assert [d["version"] for d in cli.json("datasets", "list")] == ["1.0.0"]


def test_a_dataset_is_not_a_model_on_the_command_line(cli: Cli, data_dir: Path) -> None:
    cli("datasets", "add", str(data_dir), "--version", "1.0.0", "--license", "CC0-1.0")
    assert "is a dataset, not a model" in cli("models", "show", "mydata", code=3)
    assert "is a dataset, not a model" in cli("pull", "mydata", "--dest", "x", code=3)
    assert "no dataset default/other" in cli("datasets", "show", "other", code=3)


def test_verify_detects_one_changed_byte(cli: Cli, data_dir: Path) -> None:
    cli("datasets", "add", str(data_dir), "--version", "1.0.0", "--license", "CC0-1.0")
    digest = hashlib.sha256((data_dir / "test.parquet").read_bytes()).hexdigest()
    (blob,) = [p for p in (cli.home / "artifacts").rglob("*") if p.name.startswith(digest)]
    data = bytearray(blob.read_bytes())
    data[10] ^= 0x40
    blob.chmod(0o644)
    blob.write_bytes(bytes(data))
    (report,) = cli.json("datasets", "verify", "mydata", code=5)
    assert not report["ok"] and "test.parquet" in report["failures"][0]
    # Nothing reads the damaged file: a pull fails rather than returning it.
    assert "sha256" in cli("datasets", "pull", "mydata", "--dest", str(cli.home / "o"), code=5)


def test_bad_input_is_a_clear_error_and_changes_nothing(
    cli: Cli, data_dir: Path, tmp_path: Path
) -> None:
    cli("datasets", "add", str(data_dir), "--version", "1.0.0", "--license", "CC0-1.0")
    before = (_count(cli), _events(cli))
    out = cli(
        "datasets",
        "add",
        str(data_dir),
        "--version",
        "2.0.0",
        "--license",
        "CC0-1.0",
        "--label",
        "klass",
        code=2,
    )
    assert "no label field 'klass'" in out
    assert "give the dataset's --version" in cli("datasets", "add", str(data_dir), code=2)
    assert "give the dataset's --license" in cli(
        "datasets", "add", str(data_dir), "--version", "4", code=2
    )
    assert "license" in cli(
        "datasets", "add", str(data_dir), "--version", "5", "--license", "Not a licence", code=2
    )
    odd = tmp_path / "odd"
    odd.mkdir()
    (odd / "train.parquet").write_bytes(b"not parquet at all")
    assert "not a readable Parquet file" in cli(
        "datasets", "add", str(odd), "--version", "1", "--license", "CC0-1.0", code=2
    )
    assert "unknown task" in cli(
        "datasets",
        "add",
        str(data_dir),
        "--version",
        "3",
        "--license",
        "CC0-1.0",
        "--task",
        "clustering",
        code=2,
    )
    assert (_count(cli), _events(cli)) == before


def test_a_document_that_does_not_validate_is_refused(cli: Cli, data_dir: Path) -> None:
    cli("datasets", "add", str(data_dir), "--version", "1.0.0", "--license", "CC0-1.0")
    own = cli.home.parent / "own"
    cli("datasets", "pull", "mydata", "--dest", str(own))
    (own / "sciserve.yaml").unlink()
    doc = json.loads((own / "croissant.json").read_text())
    doc["version"] = "2.0.0"
    doc["recordSet"][-1]["field"][0]["source"]["fileObject"]["@id"] = "nope.parquet"
    (own / "croissant.json").write_text(json.dumps(doc))
    before = (_count(cli), _events(cli))
    out = cli("datasets", "add", str(own), code=2)
    assert "croissant.json" in out
    assert (_count(cli), _events(cli)) == before
    # Fixed, the user's own document is added as it is.
    doc["recordSet"][-1]["field"][0]["source"]["fileObject"]["@id"] = doc["recordSet"][-1]["field"][
        1
    ]["source"]["fileObject"]["@id"]
    (own / "croissant.json").write_text(json.dumps(doc))
    added = cli.json("datasets", "add", str(own))
    assert added["version"] == "2.0.0"
    assert json.loads(cli("datasets", "card", "mydata:2.0.0")) == doc


def test_the_size_cap_refuses_a_big_file(cli: Cli, data_dir: Path) -> None:
    cli.home.mkdir(parents=True)
    (cli.home / "sciserve.toml").write_text("[limits]\nmax_dataset_file_bytes = 100\n")
    assert "max_dataset_file_bytes" in cli(
        "datasets", "add", str(data_dir), "--version", "1", "--license", "CC0-1.0", code=2
    )
    assert _count(cli) == 0


# -- URLs ----------------------------------------------------------------------------


class _Handler(http.server.SimpleHTTPRequestHandler):
    hits: list[str]

    def do_GET(self) -> None:
        self.hits.append(self.path)
        if self.path.startswith("/hang"):
            time.sleep(3)
            return
        super().do_GET()

    def log_message(self, *args: object) -> None:
        pass


@pytest.fixture
def http_dir(tmp_path: Path) -> Iterator[tuple[str, Path, list[str]]]:
    """A file server on 127.0.0.1 over a directory (404 for what is not there)."""
    root = tmp_path / "www"
    root.mkdir()
    hits: list[str] = []

    class Handler(_Handler):
        def __init__(self, *args: object, **kw: object) -> None:
            super().__init__(*args, directory=str(root), **kw)  # type: ignore[arg-type]

    Handler.hits = hits
    server = http.server.ThreadingHTTPServer(("127.0.0.1", 0), Handler)
    server.daemon_threads = True
    thread = threading.Thread(target=server.serve_forever, daemon=True)
    thread.start()
    try:
        yield f"http://127.0.0.1:{server.server_address[1]}", root, hits
    finally:
        server.shutdown()
        server.server_close()
        thread.join()


def test_a_url_is_fetched_once_verified_and_cached(
    cli: Cli, http_dir: tuple[str, Path, list[str]]
) -> None:
    base, root, hits = http_dir
    _parquet(root / "train.parquet", 10)
    sha = hashlib.sha256((root / "train.parquet").read_bytes()).hexdigest()
    url = f"{base}/train.parquet?token=s3cret"
    out = cli.json(
        "datasets",
        "add",
        url,
        "--sha256",
        sha,
        "--name",
        "remote",
        "--version",
        "1",
        "--license",
        "CC0-1.0",
    )
    assert out["created"]
    cli.json(
        "datasets",
        "add",
        url,
        "--sha256",
        sha,
        "--name",
        "remote",
        "--version",
        "1",
        "--license",
        "CC0-1.0",
    )
    assert hits == ["/train.parquet?token=s3cret"]  # the second add used the cache
    doc = json.loads(cli("datasets", "card", "remote"))
    assert doc["url"] == f"{base}/train.parquet"  # no token recorded


def test_url_failures_are_clear_errors(cli: Cli, http_dir: tuple[str, Path, list[str]]) -> None:
    base, root, _ = http_dir
    _parquet(root / "train.parquet", 10)
    good = hashlib.sha256((root / "train.parquet").read_bytes()).hexdigest()
    args = ("--name", "remote", "--version", "1", "--license", "CC0-1.0")
    out = cli(
        "datasets", "add", f"{base}/train.parquet?token=s3cret", "--sha256", "0" * 64, *args, code=5
    )
    assert "has sha256" in out and "nothing was added" in out and "s3cret" not in out
    assert "404" in cli("datasets", "add", f"{base}/gone.parquet", "--sha256", good, *args, code=3)
    out = cli(
        "datasets",
        "add",
        f"{base}/hang/train.parquet",
        "--sha256",
        good,
        "--timeout",
        "0.5",
        *args,
        code=7,
    )
    assert "timed out" in out
    assert "needs --sha256" in cli("datasets", "add", f"{base}/train.parquet", *args, code=2)
    assert "no file or directory at ftp:" in cli("datasets", "add", "ftp://x/y", *args, code=2)
    assert _count(cli) == 0
    assert not list((cli.home / "cache" / "downloads").rglob("*.parquet"))


def test_a_url_over_the_size_cap_is_refused(
    cli: Cli, http_dir: tuple[str, Path, list[str]]
) -> None:
    base, root, _ = http_dir
    _parquet(root / "train.parquet", 100)
    cli.home.mkdir(parents=True)
    (cli.home / "sciserve.toml").write_text("[limits]\nmax_dataset_file_bytes = 200\n")
    sha = hashlib.sha256((root / "train.parquet").read_bytes()).hexdigest()
    out = cli(
        "datasets",
        "add",
        f"{base}/train.parquet",
        "--sha256",
        sha,
        "--version",
        "1",
        "--license",
        "CC0-1.0",
        code=2,
    )
    assert "over the 200-byte limit" in out


def test_builtin_lightcurves(cli: Cli, tmp_path: Path) -> None:
    out = cli.json("datasets", "builtin", "lightcurves")
    assert out["ref"] == "examples/synthetic-lightcurves:1.0.0"
    doc = json.loads(cli("datasets", "card", "examples/synthetic-lightcurves"))
    assert {d["contentUrl"]: d["sha256"] for d in doc["distribution"]}["test.parquet"] == (
        "675d25c52158219d7b750fc0810d8163199515be63cdf4e2e020c5c93dfe5a2f"
    )
    assert "no built-in benchmark 'mnist'" in cli("datasets", "builtin", "mnist", code=2)


def test_numpy_splits_and_alert_archives_from_a_directory(cli: Cli, tmp_path: Path) -> None:
    import fastavro
    import numpy as np

    d = tmp_path / "arrays"
    d.mkdir()
    for split, n in (("train", 8), ("test", 4)):
        np.savez(
            d / f"{split}.npz",
            features=np.ones((n, 2), np.float32),
            labels=np.arange(n) % 2,
            classes=np.array(["quiet", "flaring"]),
        )
    schema = {"type": "record", "name": "a", "fields": [{"name": "id", "type": "long"}]}
    with (d / "alerts.avro").open("wb") as out:
        fastavro.writer(out, schema, [{"id": 1}])
    out_ = cli.json(
        "datasets",
        "add",
        str(d),
        "--version",
        "1",
        "--license",
        "CC0-1.0",
        "--classes",
        "quiet,flaring",
    )
    shown = cli.json("datasets", "show", out_["ref"])
    assert {f["path"] for f in shown["files"]} == {
        "croissant.json",
        "train.parquet",
        "test.parquet",
        "alerts/alerts.avro",
    }
    doc = json.loads(cli("datasets", "card", "arrays"))
    classes = next(r for r in doc["recordSet"] if r["@id"] == "classes")["data"]
    assert [c["classes/name"] for c in classes] == ["quiet", "flaring"]
    # The top-level verify covers datasets too.
    reports = cli.json("verify")
    assert [r["ref"] for r in reports] == ["default/arrays:1"]


def test_export_and_import_carry_datasets(cli: Cli, data_dir: Path, tmp_path: Path) -> None:
    cli("datasets", "add", str(data_dir), "--version", "1.0.0", "--license", "CC0-1.0")
    cli("datasets", "tag", "mydata:1.0.0", "benchmark")
    cli("export", "mydata", "--out", str(tmp_path / "exported.tar.gz"))
    other = Cli(tmp_path / "other", cli.capsys)
    imported = other.json("import", str(tmp_path / "exported.tar.gz"))
    assert [i["kind"] for i in imported] == ["dataset"]
    assert other.json("datasets", "show", "mydata@benchmark")["versions"][0]["version"] == "1.0.0"
    (report,) = other.json("datasets", "verify", "mydata")
    assert report["ok"]
