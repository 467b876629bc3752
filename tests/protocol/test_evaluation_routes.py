"""A stored evaluation's record, HTML report and plots over the REST API."""

from __future__ import annotations

import io
from collections.abc import Iterator
from pathlib import Path

import httpx
import pytest
from PIL import Image

import sciserve
from sciserve.config import Settings
from sciserve.evaluation import registered
from sciserve.protocol.rest import create_app
from sciserve.registry.registry import Registry
from sciserve.registry.remote import REGISTRY_PREFIX
from sciserve.serving.service import InferenceService

from helpers.datasets import CLASSES, make_dataset
from helpers.packages import make_softmax_package
from helpers.server import ServerThread


@pytest.fixture(scope="module")
def world(tmp_path_factory: pytest.TempPathFactory) -> Iterator[tuple[str, dict[str, str]]]:
    """A server over a registry with two evaluations of ``default/cls`` on
    ``default/stars``: one by ``evaluate`` (outputs kept), one posted bare."""
    root = tmp_path_factory.mktemp("evalroutes")
    with Registry(Settings.load(root / "home", environ={})) as reg:
        reg.publish(make_softmax_package(root / "cls", name="cls", labels=CLASSES))
        reg.publish(make_softmax_package(root / "other", name="other", labels=CLASSES))
        reg.publish(make_dataset(root / "stars"))
        split = registered.open_split(reg, "stars", "test")
        with sciserve.load("cls", registry=reg) as model:
            done = registered.evaluate_dataset(reg, model, split, batch_size=4)
        bare = reg.add_evaluation(
            "cls:1.0.0",
            dataset="stars",
            dataset_version="1.0.0",
            dataset_digest=split.info.digest,
            split="test",
            metrics={"accuracy": 0.5},
            record={},
        )
        ids = {"full": done.stored.record_id, "bare": bare.record_id}
        with ServerThread(create_app(InferenceService(reg))) as address:
            yield f"http://{address}{REGISTRY_PREFIX}/models/default", ids


@pytest.fixture
def http(world: tuple[str, dict[str, str]]) -> Iterator[httpx.Client]:
    with httpx.Client(base_url=world[0], timeout=60) as client:
        yield client


def test_the_record_and_its_report(http: httpx.Client, world: tuple[str, dict[str, str]]) -> None:
    full = world[1]["full"]
    record = http.get(f"/cls/evaluations/{full}").json()
    assert record["record_id"] == full and record["dataset"] == "default/stars"
    assert record["record"]["rows"] == 6
    answer = http.get(f"/cls/evaluations/{full}/report")
    assert answer.status_code == 200 and answer.headers["content-type"].startswith("text/html")
    csp = answer.headers["content-security-policy"]
    assert "default-src 'none'" in csp and "script" not in csp
    assert answer.headers["x-content-type-options"] == "nosniff"
    page = answer.text
    assert full in page and page.count("data:image/png;base64,") == 3
    assert "<script" not in page


@pytest.mark.parametrize("limit", ["0", "-1", "abc", "1e3", "10001", "9" * 40])
def test_a_bad_limit_on_the_listing_is_a_400(http: httpx.Client, limit: str) -> None:
    answer = http.get("/cls/evaluations", params={"limit": limit})
    assert answer.status_code == 400
    assert "limit must be an integer from 1 to" in answer.json()["error"]


def test_the_listing_is_newest_first_and_honours_its_limit(
    http: httpx.Client, world: tuple[str, dict[str, str]]
) -> None:
    listed = http.get("/cls/evaluations").json()["evaluations"]
    assert [e["record_id"] for e in listed] == [world[1]["bare"], world[1]["full"]]
    one = http.get("/cls/evaluations", params={"limit": "1"}).json()["evaluations"]
    assert [e["record_id"] for e in one] == [world[1]["bare"]]


@pytest.mark.parametrize("name", ["roc", "confusion", "reliability"])
def test_plots_are_real_images(
    http: httpx.Client, world: tuple[str, dict[str, str]], name: str
) -> None:
    full = world[1]["full"]
    png = http.get(f"/cls/evaluations/{full}/plots/{name}.png")
    assert png.status_code == 200 and png.headers["content-type"] == "image/png"
    with Image.open(io.BytesIO(png.content)) as image:
        assert image.size == (640, 480)
        lo, hi = image.convert("L").getextrema()
        assert hi - lo > 100
    svg = http.get(f"/cls/evaluations/{full}/plots/{name}.svg")
    assert svg.headers["content-type"].startswith("image/svg+xml")
    assert svg.text.lstrip().startswith("<?xml") and "<script" not in svg.text
    assert "default-src 'none'" in svg.headers["content-security-policy"]


def test_what_is_not_there_is_404(http: httpx.Client, world: tuple[str, dict[str, str]]) -> None:
    full, bare = world[1]["full"], world[1]["bare"]
    # Another model's path to the record reads like a missing record.
    for path in (
        f"/other/evaluations/{full}",
        f"/other/evaluations/{full}/report",
        f"/other/evaluations/{full}/plots/roc.png",
        "/cls/evaluations/feedfacefeedface",
        f"/cls/evaluations/{full}/plots/roc.gif",
        f"/cls/evaluations/{full}/plots/roc",
        f"/cls/evaluations/{full}/plots/residuals.png",
        f"/cls/evaluations/{full}/plots/..%2f..%2fetc.png",
        f"/ghost/evaluations/{full}",
    ):
        answer = http.get(path)
        assert answer.status_code == 404, (path, answer.text)
    # The same words as for a record that does not exist.
    assert http.get(f"/other/evaluations/{full}").json()["error"] == (
        f"no evaluation record {full!r}"
    )
    # A record posted without stored outputs (nor the evaluation's own
    # record) has no plots or report to draw: a clear error, not a crash.
    answer = http.get(f"/cls/evaluations/{bare}/report")
    assert answer.status_code == 400 and "was not recorded by 'sciserve evaluate'" in answer.text


def test_outputs_kept_in_the_store_draw_the_same_plot(world: tuple[str, dict[str, str]]) -> None:
    # The PNG of the same plot is the same bytes: drawing on demand twice agrees.
    with httpx.Client(base_url=world[0], timeout=60) as client:
        path = f"/cls/evaluations/{world[1]['full']}/plots/confusion.png"
        assert client.get(path).content == client.get(path).content


def test_a_record_naming_a_blob_that_is_not_outputs_is_a_clear_error(
    world: tuple[str, dict[str, str]], tmp_path: Path
) -> None:
    # An admin may post any record: one pointing its outputs at another blob
    # (here the model file) draws nothing and crashes nothing.
    base, ids = world
    with httpx.Client(base_url=base, timeout=60) as client:
        full = client.get(f"/cls/evaluations/{ids['full']}").json()
        model_file = client.get("/cls").json()["manifest"]["files"][0]["sha256"]
        forged = {
            **full["record"],
            "stored_outputs": {"sha256": model_file, "size": 1, "format": "npz"},
        }
        posted = client.post(
            "/cls/evaluations",
            json={
                "version": "1.0.0",
                "dataset": full["dataset"],
                "dataset_version": full["dataset_version"],
                "dataset_digest": full["dataset_digest"],
                "split": "test",
                "metrics": full["metrics"],
                "record": forged,
            },
        )
        assert posted.status_code == 201, posted.text
        record_id = posted.json()["record_id"]
        roc = client.get(f"/cls/evaluations/{record_id}/plots/roc.png")
        # The store holds bytes that are not what the record says: an integrity error.
        assert roc.status_code == 500 and roc.json()["type"] == "IntegrityError"
        assert "is not an outputs archive" in roc.json()["error"]
        # The plots drawn from the metrics alone still work.
        assert client.get(f"/cls/evaluations/{record_id}/plots/confusion.png").status_code == 200
