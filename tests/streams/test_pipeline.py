"""A pipeline end to end on a replayed file: simulated Rubin alerts plus bad messages."""

from __future__ import annotations

import asyncio
import csv
import json
import subprocess
import sys
from pathlib import Path

import pytest

from sciserve.config import Settings
from sciserve.streams.base import OutRecord, open_sink
from sciserve.streams.results import ResultStore

#: Bad messages, each with the reason the dead-letter record must give.
BAD = [
    (b"garbage", "bad-magic"),
    (b"\x00\x00\x00\x04\x4d" + b"x" * 10, "invalid-avro"),  # a real schema id, broken Avro
    (b"\x00\x00\x00\x27\x0f" + b"\x00" * 40, "unknown-schema"),  # schema id 9999
    (b"", "empty"),
    (b"\x00\x00\x00\x04\x4d" + b"\x01" * (2 << 20), "oversized"),
]


def _cli(home: Path, *args: str) -> subprocess.CompletedProcess[str]:
    return subprocess.run(
        [sys.executable, "-m", "sciserve", "--home", str(home), *args],
        capture_output=True,
        text=True,
        check=False,
        timeout=300,
    )


@pytest.fixture(scope="module")
def stream(tmp_path_factory: pytest.TempPathFactory) -> tuple[Path, Path, list[dict[str, str]]]:
    """A registry with the example models and a file of 400 alerts and some bad messages."""
    base = tmp_path_factory.mktemp("pipeline")
    home = base / "home"
    assert _cli(home, "--json", "up", "--no-serve").returncode == 0
    alerts = base / "alerts.avro"
    done = _cli(
        home,
        "alerts",
        "simulate",
        "--count",
        "400",
        "--seed",
        "7",
        "--to",
        f"file://{alerts}",
        "--truth",
        str(base / "truth.csv"),
    )
    assert done.returncode == 0, done.stderr

    async def add_bad() -> None:
        sink = open_sink(f"file://{alerts}")
        await sink.start()
        await sink.write([OutRecord(value) for value, _ in BAD])
        await sink.close()

    asyncio.run(add_bad())
    with open(base / "truth.csv", newline="") as fh:
        truth = list(csv.DictReader(fh))
    return home, alerts, truth


def _spec(base: Path, alerts: Path, name: str) -> Path:
    spec = base / f"{name}.yaml"
    spec.write_text(
        f"name: {name}\n"
        f"source: file://{alerts}\n"
        "codec: lsst\n"
        "models:\n  - ref: examples/lc-classifier@production\n"
        "filter: \"label == 'kilonova' and score > 0.5\"\n"
        f"sinks: [results, file://{base / (name + '-out.jsonl')}]\n"
        f"dead_letter: file://{base / (name + '-dead.jsonl')}\n"
        "batch: 64\n"
    )
    return spec


def test_every_alert_is_annotated_once_and_bad_ones_are_dead_lettered(
    stream: tuple[Path, Path, list[dict[str, str]]], tmp_path: Path
) -> None:
    home, alerts, truth = stream
    spec = _spec(tmp_path, alerts, "smoke")
    run = _cli(home, "stream", "run", str(spec))
    assert run.returncode == 0, run.stderr
    with ResultStore.open(Settings.load(home, environ={})) as store:
        ids = store.alert_ids(pipeline="smoke")
        assert sorted(ids) == sorted(int(row["alert_id"]) for row in truth)
        one = store.get(ids[0], "examples/lc-classifier", "1.0.0")
        assert one is not None
    dead = [json.loads(line) for line in (tmp_path / "smoke-dead.jsonl").read_text().splitlines()]
    assert [d["error"] for d in dead] == [reason for _, reason in BAD]
    assert all(d["pipeline"] == "smoke" and d["offset"] >= 400 for d in dead)
    published = [
        json.loads(line) for line in (tmp_path / "smoke-out.jsonl").read_text().splitlines()
    ]
    assert published and all(p["label"] == "kilonova" and p["score"] > 0.5 for p in published)
    kilonovae = {int(r["alert_id"]) for r in truth if r["label"] == "kilonova"}
    hits = {p["alert_id"] for p in published} & kilonovae
    assert len(hits) > 0.8 * len(kilonovae)  # the classifier finds them
    provenance = published[0]
    assert provenance["model_digest"].startswith("sha256:")
    assert "onnxruntime" in provenance["library_versions"]

    # Replaying the same input (a restart from the beginning) adds nothing.
    (alerts.parent / (alerts.name + ".offset")).unlink()
    again = _cli(home, "stream", "run", str(spec))
    assert again.returncode == 0, again.stderr
    with ResultStore.open(Settings.load(home, environ={})) as store:
        assert store.count(pipeline="smoke") == len(truth)


def test_status_reports_the_run(
    stream: tuple[Path, Path, list[dict[str, str]]], tmp_path: Path
) -> None:
    home, alerts, truth = stream
    # A file source keeps its committed offset beside the file: replay a copy.
    copy = tmp_path / "copy.avro"
    copy.write_bytes(alerts.read_bytes())
    assert _cli(home, "stream", "run", str(_spec(tmp_path, copy, "counted"))).returncode == 0
    status = _cli(home, "--json", "stream", "status", "counted")
    assert status.returncode == 0, status.stderr
    [entry] = json.loads(status.stdout)
    assert entry["state"] == "stopped"
    assert entry["consumed"] == len(truth) + len(BAD)
    assert entry["dead_lettered"] == len(BAD)
