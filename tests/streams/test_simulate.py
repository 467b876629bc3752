"""The simulated Rubin alert stream: validity, structure, learnability, CLI."""

from __future__ import annotations

import asyncio
import csv
import json
import time
from collections import Counter
from collections.abc import Sequence
from pathlib import Path

import numpy as np
import onnxruntime as ort
import pytest
import typer
from fastavro.validation import validate
from typer.testing import CliRunner

from sciserve.cli import _alerts
from sciserve.cli._context import State
from sciserve.errors import InvalidInput
from sciserve.examples import CLASSES, build_examples
from sciserve.examples.features import FEATURE_NAMES
from sciserve.streams.base import OutRecord, Sink, open_source
from sciserve.streams.codecs import RubinCodec
from sciserve.streams.schemas import RubinSchemas
from sciserve.streams.simulate import (
    TRUTH_COLUMNS,
    AlertSimulator,
    SimulatedAlert,
    features_from_alert,
    lightcurve_from_alert,
    truth_table,
    write_truth_table,
)

SCHEMAS = RubinSchemas()

# Seeds of the learnability data, unrelated to the examples' training seed.
TRAIN_SEED, TEST_SEED = 101, 202


@pytest.fixture(scope="module")
def held_out() -> list[SimulatedAlert]:
    return list(AlertSimulator("lsst:11.1", seed=TEST_SEED, schemas=SCHEMAS).alerts(500))


def _features(alerts: list[SimulatedAlert]) -> tuple[np.ndarray, np.ndarray]:
    """Features of alerts decoded from their wire bytes, with a light-curve projection."""
    codec = RubinCodec(schemas=SCHEMAS, fields="lightcurve")
    x = np.stack([features_from_alert(codec.decode(alert.payload)) for alert in alerts])
    y = np.array([CLASSES.index(alert.label) for alert in alerts])
    return x, y


# -- validity and structure ----------------------------------------------------


@pytest.mark.parametrize("version", SCHEMAS.versions())
def test_alerts_of_every_class_are_schema_valid(version: str) -> None:
    for label in CLASSES:
        simulator = AlertSimulator(
            f"lsst:{version}", seed=3, n_detections=4, classes=(label,), schemas=SCHEMAS
        )
        for alert in simulator.alerts(2):
            assert alert.label == label
            assert validate(alert.alert, simulator.schema.parsed, raise_errors=True)


def test_alert_structure() -> None:
    simulator = AlertSimulator("lsst:11.1", seed=4, n_detections=30, schemas=SCHEMAS)
    alerts = list(simulator.alerts(40))
    alert_ids = [a.alert_id for a in alerts]
    assert alert_ids == sorted(alert_ids)
    assert len(set(alert_ids)) == 40
    object_ids = [a.object_id for a in alerts]
    assert len(set(object_ids)) == 40
    source_ids: list[int] = []
    for sim in alerts:
        alert = sim.alert
        source, history = alert["diaSource"], alert["prvDiaSources"]
        assert alert["diaSourceId"] == source["diaSourceId"] == sim.alert_id
        assert len(history) == 30
        times = [p["midpointMjdTai"] for p in history]
        assert times == sorted(times)
        assert source["midpointMjdTai"] >= times[-1]  # the alert is the latest detection
        assert {p["band"] for p in [source, *history]} <= set("ugrizy")
        assert all(p["psfFluxErr"] > 0 for p in [source, *history])
        assert all(p["diaObjectId"] == sim.object_id for p in [source, *history])
        obj = alert["diaObject"]
        assert obj["diaObjectId"] == sim.object_id
        assert obj["nDiaSources"] == 31
        assert sum(obj[f"{b}_psfFluxNdata"] for b in "ugrizy") == 31
        assert abs(obj["ra"] - source["ra"]) < 1e-3 or abs(obj["ra"] - source["ra"]) > 359
        assert abs(obj["dec"] - source["dec"]) < 1e-3
        assert -90 <= obj["dec"] <= 30
        # Fields the simulator knows nothing about stay null.
        assert source["trailFlux"] is None
        assert alert["cutoutDifference"] is None
        source_ids += [p["diaSourceId"] for p in [*history, source]]
    assert len(set(source_ids)) == len(source_ids) == 40 * 31
    assert Counter(a.label for a in alerts).keys() == set(CLASSES)


def test_determinism_and_prefixes() -> None:
    def payloads(seed: int, n: int) -> list[bytes]:
        return [a.payload for a in AlertSimulator(seed=seed, schemas=SCHEMAS).alerts(n)]

    assert payloads(7, 3) == payloads(7, 3)
    assert payloads(7, 3) != payloads(8, 3)
    # Crossing the simulator's internal chunk boundary keeps the stream a prefix.
    long = AlertSimulator(seed=7, n_detections=2, schemas=SCHEMAS).alerts(520)
    short = AlertSimulator(seed=7, n_detections=2, schemas=SCHEMAS).alerts(3)
    assert [a.payload for a in short] == [a.payload for a in long][:3]
    endless = AlertSimulator(seed=7, n_detections=2, schemas=SCHEMAS).alerts()
    firsts = [next(endless).alert_id for _ in range(505)]
    assert firsts == sorted(set(firsts))


def test_options_are_checked_and_history_may_be_empty() -> None:
    alone = next(AlertSimulator(n_detections=0, schemas=SCHEMAS).alerts(1))
    assert alone.alert["prvDiaSources"] == []
    assert len(lightcurve_from_alert(alone.alert)) == 1
    numbered = next(AlertSimulator(first_id=10**15, n_detections=1, schemas=SCHEMAS).alerts(1))
    assert numbered.object_id == 10**15
    assert numbered.alert_id == 10**15 + 1
    with pytest.raises(InvalidInput):
        AlertSimulator(n_detections=-1, schemas=SCHEMAS)
    with pytest.raises(InvalidInput):
        list(AlertSimulator(schemas=SCHEMAS).alerts(-1))
    with pytest.raises(InvalidInput):
        AlertSimulator(classes=("quasar",), schemas=SCHEMAS).alerts(1).__next__()


def test_truth_table_csv(tmp_path: Path) -> None:
    alerts = list(AlertSimulator(seed=2, n_detections=2, schemas=SCHEMAS).alerts(12))
    rows = truth_table(alerts)
    assert [row["alert_id"] for row in rows] == [a.alert_id for a in alerts]
    path = tmp_path / "truth.csv"
    assert write_truth_table(path, rows) == 12
    with path.open(newline="") as fh:
        read = list(csv.DictReader(fh))
    assert tuple(read[0]) == TRUTH_COLUMNS
    assert [(int(r["alert_id"]), int(r["object_id"]), r["label"]) for r in read] == [
        (a.alert_id, a.object_id, a.label) for a in alerts
    ]


# -- reading alerts back ---------------------------------------------------------


def test_features_from_full_projected_and_legacy_alerts() -> None:
    for version in ("4.0", "11.1"):
        sim = next(AlertSimulator(f"lsst:{version}", seed=6, schemas=SCHEMAS).alerts(1))
        full = RubinCodec(schemas=SCHEMAS).decode(sim.payload)
        part = RubinCodec(schemas=SCHEMAS, fields="lightcurve").decode(sim.payload)
        curve = lightcurve_from_alert(part)
        assert len(curve) == 31
        assert curve.object_id == sim.object_id
        assert set(curve.band.tolist()) <= set("ugrizy")
        features = features_from_alert(full)
        assert features.shape == (len(FEATURE_NAMES),)
        assert features.dtype == np.float32
        np.testing.assert_array_equal(features, features_from_alert(part))
        assert features[FEATURE_NAMES.index("n_detections")] == 31
    with pytest.raises(InvalidInput, match="no light curve"):
        lightcurve_from_alert({"diaSourceId": 1})


def test_simulated_alerts_are_learnable(held_out: list[SimulatedAlert]) -> None:
    from sklearn.linear_model import LogisticRegression
    from sklearn.pipeline import make_pipeline
    from sklearn.preprocessing import StandardScaler

    train = list(AlertSimulator("lsst:11.1", seed=TRAIN_SEED, schemas=SCHEMAS).alerts(1500))
    x_train, y_train = _features(train)
    x_test, y_test = _features(held_out)
    model = make_pipeline(StandardScaler(), LogisticRegression(max_iter=5000))
    model.fit(x_train, y_train)
    accuracy = float(np.mean(model.predict(x_test) == y_test))
    assert accuracy > 0.6, accuracy  # chance is 0.2


def test_example_onnx_classifier_reads_simulated_alerts(
    held_out: list[SimulatedAlert], tmp_path: Path
) -> None:
    built = {path.name: path for path in build_examples(tmp_path)}
    session = ort.InferenceSession(
        str(built["lc-classifier"] / "model.onnx"), providers=["CPUExecutionProvider"]
    )
    x, y = _features(held_out)
    (probabilities,) = session.run(["probabilities"], {"features": x})
    accuracy = float(np.mean(np.argmax(probabilities, axis=1) == y))
    assert accuracy > 0.6, accuracy


# -- CLI -----------------------------------------------------------------------------


def _cli(*args: str) -> str:
    app = typer.Typer()

    @app.callback()
    def root(ctx: typer.Context, json_output: bool = typer.Option(False, "--json")) -> None:
        ctx.obj = State(json=json_output)

    _alerts.register(app)
    result = CliRunner().invoke(app, list(args))
    assert result.exit_code == 0, (result.output, result.exception)
    return result.stdout


def test_cli_lists_schemas() -> None:
    rows = json.loads(_cli("--json", "alerts", "schemas"))
    by_name = {row["name"]: row for row in rows}
    assert by_name["lsst:11.1"]["schema_id"] == 1101
    assert by_name["lsst:7.4"]["id_field"] == "alertId"
    assert [row["name"] for row in rows if row["latest"]] == [f"lsst:{SCHEMAS.latest()}"]
    assert "lsst:11.1" in _cli("alerts", "schemas")


def test_token_bucket_paces_and_never_slows_a_slow_producer() -> None:
    now = [0.0]
    bucket = _alerts._TokenBucket(10.0, clock=lambda: now[0])
    for _ in range(100):
        now[0] += bucket.take()
    assert now[0] == pytest.approx(9.9)  # 100 events, 99 intervals of 0.1 s
    for _ in range(5):
        now[0] += 0.5
        assert bucket.take() == 0.0
    with pytest.raises(typer.BadParameter):
        _alerts._rate("fast")
    assert _alerts._rate("250/s") == _alerts._rate("250") == 250.0


class _ListSink(Sink):
    """A sink that keeps what it is given, with the time of each write."""

    def __init__(self) -> None:
        self.writes: list[tuple[float, list[OutRecord]]] = []
        self.started = self.closed = False

    async def start(self) -> None:
        self.started = True

    async def write(self, records: Sequence[OutRecord]) -> None:
        self.writes.append((time.monotonic(), list(records)))

    async def close(self) -> None:
        self.closed = True


def test_produce_paces_batches_and_reports_what_was_sent() -> None:
    simulator = AlertSimulator(seed=5, n_detections=3, schemas=SCHEMAS)
    sink = _ListSink()
    reported: list[int] = []
    started = time.monotonic()
    sent = asyncio.run(
        _alerts._produce(
            simulator,
            sink,
            count=30,
            bucket=_alerts._TokenBucket(100.0),
            batch=8,
            on_sent=lambda alerts: reported.extend(a.alert_id for a in alerts),
        )
    )
    elapsed = time.monotonic() - started
    assert sent == 30
    assert sink.started and sink.closed
    assert elapsed >= 0.28  # 30 alerts at 100/s: 29 intervals of 10 ms
    records = [record for _, batch in sink.writes for record in batch]
    expected = list(AlertSimulator(seed=5, n_detections=3, schemas=SCHEMAS).alerts(30))
    assert [r.value for r in records] == [a.payload for a in expected]
    assert [r.key for r in records] == [str(a.object_id).encode() for a in expected]
    assert reported == [a.alert_id for a in expected]
    assert all(len(batch) <= 8 for _, batch in sink.writes)


def test_cli_simulate_to_a_file(tmp_path: Path) -> None:
    out, truth = tmp_path / "alerts.avro", tmp_path / "truth.csv"
    summary = json.loads(
        _cli(
            "--json", "alerts", "simulate", "--to", f"file://{out}", "--count", "25",
            "--rate", "200/s", "--seed", "3", "--n-detections", "5", "--truth", str(truth),
        )
    )  # fmt: skip
    assert summary["sent"] == 25
    assert summary["seconds"] >= 0.11  # 24 intervals of 5 ms
    expected = list(AlertSimulator(seed=3, n_detections=5, schemas=SCHEMAS).alerts(25))
    with truth.open(newline="") as fh:
        assert [int(row["alert_id"]) for row in csv.DictReader(fh)] == [
            a.alert_id for a in expected
        ]

    async def read_back() -> list[bytes]:
        source = open_source(f"file://{out}")
        values: list[bytes] = []
        async with source:
            while not source.exhausted:
                values += [m.value for m in await source.fetch(100, 1.0)]
        return values

    assert asyncio.run(read_back()) == [a.payload for a in expected]
