"""The result store tells re-delivered alerts from different alerts that share an alert id."""

from __future__ import annotations

import csv
import io
import json
import logging
from datetime import UTC, datetime
from pathlib import Path

import pytest

import sciserve
from sciserve.cli import main
from sciserve.config import Settings
from sciserve.examples.features import FEATURE_NAMES
from sciserve.registry.registry import Registry
from sciserve.streams.base import OutRecord, open_sink
from sciserve.streams.codecs import codec_for
from sciserve.streams.pipeline import Pipeline
from sciserve.streams.results import Annotation, ResultStore, WriteOutcome
from sciserve.streams.simulate import AlertSimulator
from sciserve.streams.spec import parse_spec

from helpers.packages import make_onnx_package


def _annotation(alert_id: int, probabilities: list[float]) -> Annotation:
    return Annotation(
        alert_id=alert_id,
        model="lab/m",
        model_version="1.0.0",
        model_digest="sha256:" + "0" * 64,
        outputs={"probabilities": probabilities},
        label=None,
        score=None,
        pipeline="outcomes",
        runtime="onnx",
        library_versions={"sciserve": sciserve.__version__},
        broker_timestamp_ms=1_700_000_000_000,
        processed_at=datetime.now(UTC),
    )


def test_write_checked_counts_new_repeated_and_conflicting_annotations(
    settings: Settings,
) -> None:
    with ResultStore.open(settings) as store:
        first = store.write_checked([_annotation(i, [0.25, 0.75]) for i in range(4)])
        assert first == WriteOutcome(new=4)
        outcome = store.write_checked(
            [
                _annotation(0, [0.25, 0.75]),  # re-delivered
                _annotation(1, [0.25 + 1e-9, 0.75]),  # re-delivered, computed in another batch
                _annotation(2, [0.9, 0.1]),  # another alert with alert id 2
                _annotation(7, [0.5, 0.5]),  # new
                _annotation(7, [0.6, 0.4]),  # another alert with id 7, in the same batch
            ]
        )
        assert (outcome.new, outcome.duplicate, outcome.conflicting) == (1, 2, 2)
        assert sorted(outcome.conflicts) == ["2:lab/m:1.0.0", "7:lab/m:1.0.0"]
        # The first annotation of a key stays; write() still counts new rows.
        kept = store.get(2, "lab/m", "1.0.0")
        assert kept is not None and kept.outputs == {"probabilities": [0.25, 0.75]}
        assert store.write([_annotation(2, [0.9, 0.1]), _annotation(8, [1.0, 0.0])]) == 1


def _same_id(payload: bytes, alert_id: int) -> bytes:
    """Another alert given ``alert_id``: as when a broker or survey reuses an id."""
    codec = codec_for("lsst")
    alert = codec.decode(payload)
    alert["diaSourceId"] = alert_id
    alert["diaSource"]["diaSourceId"] = alert_id
    return codec.encode(alert)


async def test_a_pipeline_reports_alerts_sharing_an_id_apart_from_new_ones(
    tmp_path: Path, caplog: pytest.LogCaptureFixture, capsys: pytest.CaptureFixture[str]
) -> None:
    settings = Settings.load(tmp_path / "home", environ={})
    with Registry(settings) as registry:
        registry.publish(make_onnx_package(tmp_path / "pkg", name="lc", n_in=len(FEATURE_NAMES)))
    first, second, third = AlertSimulator(seed=3, first_id=3 * 10**9).alerts(3)
    impostor = _same_id(third.payload, first.alert_id)
    alerts = tmp_path / "alerts.avro"
    sink = open_sink(f"file://{alerts}")
    await sink.start()
    # The first alert twice (a re-delivery), the second once, and a third
    # alert carrying the first one's id.
    payloads = [first.payload, second.payload, first.payload, impostor]
    await sink.write([OutRecord(p) for p in payloads])
    await sink.close()
    spec = parse_spec(
        {
            "name": "shared-ids",
            "source": f"file://{alerts}",
            "models": [{"ref": "lc"}],
            "sinks": ["results"],
            "dead_letter": f"file://{tmp_path / 'dead.jsonl'}",
            "batch": 2,
        }
    )
    with caplog.at_level(logging.WARNING, logger="sciserve.streams"):
        summary = await Pipeline(spec, settings).run()
    assert summary["annotated"] == 4
    assert (summary["stored"], summary["already_stored"], summary["conflicting"]) == (2, 1, 1)
    warnings = [r.getMessage() for r in caplog.records if r.levelno == logging.WARNING]
    assert any(
        "sharing an alert id" in w and f"{first.alert_id}:default/lc:1.0.0" in w for w in warnings
    ), warnings
    with ResultStore.open(settings) as store:
        assert store.count(pipeline="shared-ids") == 2
    capsys.readouterr()
    assert main(["--home", str(settings.home), "stream", "status", "shared-ids"]) == 0
    shown = capsys.readouterr().out
    assert "already" in shown and "warning: 1 annotation(s)" in shown
    assert main(["--home", str(settings.home), "--json", "stream", "status"]) == 0
    [status] = json.loads(capsys.readouterr().out)
    assert (status["stored"], status["already_stored"], status["conflicting"]) == (2, 1, 1)


async def test_stream_results_reads_annotations_back(
    tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    settings = Settings.load(tmp_path / "home", environ={})
    home = str(settings.home)
    # Nothing is created by asking before anything ran.
    assert main(["--home", home, "stream", "results", "readback"]) == 3
    assert "no registry at" in capsys.readouterr().err and not settings.home.exists()
    with Registry(settings) as registry:
        registry.publish(make_onnx_package(tmp_path / "pkg", name="lc", n_in=len(FEATURE_NAMES)))
    simulated = list(AlertSimulator(seed=4, first_id=4 * 10**9).alerts(3))
    alerts = tmp_path / "alerts.avro"
    sink = open_sink(f"file://{alerts}")
    await sink.start()
    await sink.write([OutRecord(a.payload) for a in simulated])
    await sink.close()
    spec = {
        "name": "readback",
        "source": f"file://{alerts}",
        "models": [{"ref": "lc"}],
        "sinks": ["results"],
        "dead_letter": f"file://{tmp_path / 'dead.jsonl'}",
    }
    await Pipeline(parse_spec(spec), settings, write_status_file=False).run()
    ids = sorted(a.alert_id for a in simulated)
    capsys.readouterr()

    assert main(["--home", home, "stream", "results", "readback"]) == 0
    table = capsys.readouterr().out
    assert all(str(i) in table for i in ids) and "default/lc" in table

    assert main(["--home", home, "stream", "results", "readback", "--csv"]) == 0
    rows = list(csv.DictReader(io.StringIO(capsys.readouterr().out)))
    assert [int(r["alert_id"]) for r in rows] == ids
    with ResultStore.open(settings) as store:
        stored = store.get(ids[1], "default/lc", "1.0.0")
    assert stored is not None
    assert json.loads(rows[1]["outputs"]) == stored.outputs
    assert rows[1]["model_digest"] == stored.model_digest

    args = ["--home", home, "--json", "stream", "results", "readback", "--alert", str(ids[2])]
    assert main(args) == 0
    [one] = json.loads(capsys.readouterr().out)
    assert one["alert_id"] == ids[2] and one["model"] == "default/lc"

    assert main(["--home", home, "stream", "results", "readback", "--alert", "1"]) == 3
    assert "no annotations of alert 1" in capsys.readouterr().err
    assert main(["--home", home, "stream", "results", "other"]) == 3
    assert "pipeline 'other'" in capsys.readouterr().err
