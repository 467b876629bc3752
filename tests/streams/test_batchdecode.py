"""Batch decoding and batch features: the same values as one alert at a time, and
every bad message still dead-lettered with its reason."""

from __future__ import annotations

import copy
import logging
import os
import random
import sys
from typing import Any

import numpy as np
import pytest

from sciserve.errors import DependencyMissing, InvalidInput
from sciserve.examples.features import FEATURE_NAMES, extract, extract_columns
from sciserve.examples.lightcurves import LightCurve
from sciserve.streams.batchdecode import LightCurveColumns, RubinBatchDecoder
from sciserve.streams.codecs import RubinCodec
from sciserve.streams.pipeline import PrepareConfig, _Prepared, _Preparer, preparation
from sciserve.streams.schemas import RubinSchemas, schema_id
from sciserve.streams.simulate import AlertSimulator, lightcurve_from_alert
from sciserve.streams.spec import MAX_DEFAULT_WORKERS, PipelineSpec, default_workers, parse_spec

SCHEMAS = RubinSchemas()
VERSIONS = SCHEMAS.versions()
MAX_BYTES = 1 << 20
#: Batch features may differ from per-alert ones in their last float32 bits
#: (sums run in another order); in practice they are equal.
RTOL = ATOL = 1e-5


def _with_nulls(version: str, alerts: list[dict[str, Any]]) -> list[dict[str, Any]]:
    """Variants of ``alerts`` with null history, empty history and null points,
    where ``version`` allows them (a variant the schema refuses is left out)."""
    codec = RubinCodec(f"lsst:{version}", schemas=SCHEMAS)
    fields = SCHEMAS.get(f"lsst:{version}").lightcurve
    assert fields is not None
    variants = []
    first = copy.deepcopy(alerts[0])
    first["prvDiaSources"] = None
    variants.append(first)
    second = copy.deepcopy(alerts[1])
    second["prvDiaSources"] = []
    variants.append(second)
    third = copy.deepcopy(alerts[2])
    for row, name in zip(third.get("prvDiaSources") or [], fields.point, strict=False):
        row[name] = None  # each point field null in one detection
    variants.append(third)
    fourth = copy.deepcopy(alerts[3])
    fourth["diaSource"][fields.flux] = None
    variants.append(fourth)
    kept = []
    for alert in variants:
        try:
            codec.encode(alert)
        except InvalidInput:
            continue
        kept.append(alert)
    return kept


def _payloads(version: str, n: int = 12, seed: int = 3) -> list[bytes]:
    simulator = AlertSimulator(f"lsst:{version}", seed=seed, n_detections=8, schemas=SCHEMAS)
    alerts = [alert.alert for alert in simulator.alerts(n)]
    codec = RubinCodec(f"lsst:{version}", schemas=SCHEMAS)
    return [codec.encode(alert) for alert in [*alerts, *_with_nulls(version, alerts)]]


def _assert_same_curve(curve: LightCurveColumns, alert: dict[str, Any], codec: RubinCodec) -> None:
    expected = lightcurve_from_alert(alert)
    assert curve.alert_id == codec.alert_id(alert)
    for name in ("mjd", "band", "flux", "flux_err"):
        got, want = getattr(curve, name), getattr(expected, name)
        assert got.shape == want.shape, name
        assert (got == want).all(), name


@pytest.mark.parametrize("version", VERSIONS)
def test_batch_decoding_gives_the_codecs_values_for_every_schema_version(version: str) -> None:
    payloads = _payloads(version)
    codec = RubinCodec(f"lsst:{version}", fields="lightcurve", schemas=SCHEMAS)
    curves = RubinBatchDecoder(SCHEMAS, max_bytes=MAX_BYTES).decode(payloads)
    assert len(curves) == len(payloads)
    nulls = 0
    for payload, curve in zip(payloads, curves, strict=True):
        alert = codec.decode(payload)
        assert curve is not None
        _assert_same_curve(curve, alert, codec)
        history = alert.get("prvDiaSources")
        nulls += history is None or any(None in row.values() for row in history)
    assert nulls >= 1  # the null variants were there, and decoded alike


def test_a_batch_mixing_schema_versions_keeps_its_order() -> None:
    by_version = {version: _payloads(version, n=4) for version in ("4.0", "7.1", "11.1")}
    mixed = [p for group in zip(*by_version.values(), strict=False) for p in group]
    curves = RubinBatchDecoder(SCHEMAS, max_bytes=MAX_BYTES).decode(mixed)
    codec = RubinCodec("lsst", fields="lightcurve", schemas=SCHEMAS)
    for payload, curve in zip(mixed, curves, strict=True):
        assert curve is not None
        _assert_same_curve(curve, codec.decode(payload), codec)


def _curves() -> list[LightCurve]:
    simulator = AlertSimulator("lsst", seed=8, n_detections=30, schemas=SCHEMAS)
    curves = [lightcurve_from_alert(alert.alert) for alert in simulator.alerts(300)]
    rng = np.random.default_rng(4)
    for _ in range(300):
        # Short, noisy curves with repeated times, missing bands and bad errors.
        n = int(rng.integers(1, 12))
        curves.append(
            LightCurve(
                object_id=0,
                label="",
                mjd=np.round(rng.uniform(0, 20, n)),
                band=rng.choice(np.array(["g", "r", "i", "z"]), n),
                flux=rng.normal(10, 20, n),
                flux_err=rng.uniform(-1, 3, n),
            )
        )

    def curve(mjd: list[float], band: str, flux: list[float], err: list[float]) -> LightCurve:
        return LightCurve(0, "", np.array(mjd), np.array(list(band)), np.array(flux), np.array(err))

    curves += [
        curve([], "", [], []),
        curve([1.0], "g", [5.0], [1.0]),
        curve([1.0, 1.0, 1.0, 2.0], "grgi", [5.0, 5.0, 5.0, 5.0], [0.0, 1.0, np.nan, 1.0]),
        curve([3.0, 1.0, 2.0, 2.0, 5.0], "rrggr", [-5.0, np.nan, 7.0, 7.0, 1.0], [1, 1, -2, 1, 1]),
        curve([1.0, 2.0, 3.0], "ggg", [1e30, -1e30, 0.0], [1.0, 1.0, 1.0]),
    ]
    return curves


def test_batch_features_equal_the_per_alert_ones() -> None:
    curves = _curves()
    one_by_one = np.stack([extract(curve) for curve in curves])
    batch = extract_columns(curves)
    assert batch.shape == (len(curves), len(FEATURE_NAMES))
    assert batch.dtype == np.float32
    np.testing.assert_allclose(batch, one_by_one, rtol=RTOL, atol=ATOL)
    assert extract_columns([]).shape == (0, len(FEATURE_NAMES))


# -- hostile input on the batch path ----------------------------------------------


def _config() -> PrepareConfig:
    return PrepareConfig(
        codec="lsst",
        codec_options=(("fields", "lightcurve"), ("max_bytes", MAX_BYTES)),
        python=None,
        dtype=np.dtype(np.float32).str,
        width=len(FEATURE_NAMES),
        keep_alerts=False,
    )


def _one_at_a_time(values: list[bytes]) -> list[_Prepared]:
    preparer = _Preparer(_config())
    preparer.batch = None
    prepared, _, _ = preparer(values)
    return prepared


def _hostile(good: list[bytes]) -> list[tuple[bytes, str]]:
    """Bad messages, each with the reason the per-message codec gives it."""
    rng = random.Random(5)
    sample = good[0]
    header = sample[:5]
    return [
        (sample[: len(sample) // 2], "truncated"),
        (sample[:-1], "truncated"),
        (bytes(rng.randrange(256) for _ in range(300)), "bad-magic"),
        (b"\x00" + bytes(rng.randrange(256) for _ in range(300)), "unknown-schema"),
        (header + bytes(rng.randrange(256) for _ in range(300)), "invalid-avro"),
        (header + b"\xff" * 40, "invalid-avro"),
        (b"\x07" + sample[1:], "bad-magic"),
        (b"\x00" + (9999).to_bytes(4, "big") + sample[5:], "unknown-schema"),
        (header + b"\x00" * (MAX_BYTES + 1), "oversized"),
        (sample + b"\x00\x02", "trailing-bytes"),
        (b"", "empty"),
        (b"\x00\x00\x00", "truncated"),
    ]


def test_hostile_messages_are_dead_lettered_and_their_neighbours_decoded() -> None:
    good = _payloads("11.1", n=40)
    bad = _hostile(good)
    values = list(good)
    # Spread the bad messages through the batch, each between good ones.
    for position, (value, _) in zip(range(1, 2 * len(bad), 2), bad, strict=False):
        values.insert(position * 2, value)
    expected_reasons = {value: reason for value, reason in bad}
    preparer = _Preparer(_config())
    assert preparer.batch is not None  # the batch path is the one under test
    prepared, _, _ = preparer(values)
    reference = _one_at_a_time(values)

    # Rows in = rows out + dead letters, in order.
    assert len(prepared) == len(values)
    failures = [item for item in prepared if item.failure is not None]
    assert len(failures) == len(bad)
    assert len(prepared) - len(failures) == len(good)
    for value, got, want in zip(values, prepared, reference, strict=True):
        if value in expected_reasons:
            assert got.failure is not None
            assert got.failure[:2] == ("decode", expected_reasons[value])
            assert got.failure == want.failure  # the same reason text, too
        else:
            assert got.failure is None and want.failure is None
            assert got.alert_id == want.alert_id
            assert got.vector is not None and want.vector is not None
            np.testing.assert_allclose(got.vector, want.vector, rtol=RTOL, atol=ATOL)


def test_a_batch_of_nothing_but_bad_messages_loses_none() -> None:
    good = _payloads("11.1", n=4)
    bad = [value for value, _ in _hostile(good)] * 20
    prepared, _, _ = _Preparer(_config())(bad)
    assert len(prepared) == len(bad)
    assert all(item.failure is not None and item.failure[0] == "decode" for item in prepared)
    assert [item.failure for item in prepared] == [item.failure for item in _one_at_a_time(bad)]


def test_an_unknown_schema_id_is_asked_for_again_by_the_codec() -> None:
    # The batch reader leaves ids it cannot load to the codec, every time:
    # a schema registry that was down may answer on the next message.
    decoder = RubinBatchDecoder(SCHEMAS, max_bytes=MAX_BYTES)
    message = b"\x00" + (4321).to_bytes(4, "big") + b"\x00" * 20
    assert decoder.decode([message, message]) == [None, None]
    known = _payloads("9.0", n=4)
    assert known[0][1:5] == schema_id("9.0").to_bytes(4, "big")
    assert decoder.decode(known)[0] is not None


# -- what the spec chooses ---------------------------------------------------------


def _spec(**extra: Any) -> PipelineSpec:
    return parse_spec(
        {
            "name": "defaults",
            "source": "file:///tmp/none.avro",
            "models": [{"ref": "examples/lc-classifier"}],
            "sinks": ["results"],
            "dead_letter": "file:///tmp/dead.jsonl",
            **extra,
        }
    )


def test_worker_processes_default_to_the_spare_cores() -> None:
    cores = len(os.sched_getaffinity(0))
    assert default_workers() == max(0, min(cores - 1, MAX_DEFAULT_WORKERS))
    assert _spec().workers is None
    assert _spec().worker_processes == default_workers()
    assert _spec(workers=0).worker_processes == 0
    assert _spec(workers=3).worker_processes == 3
    with pytest.raises(InvalidInput):
        _spec(workers=-1)


@pytest.mark.parametrize(
    ("extra", "batch"),
    [
        ({}, True),
        ({"filter": "score > 0.5"}, True),  # reads no alert: nothing to keep
        ({"decode": "message"}, False),
        ({"filter": "alert.diaSource.band == 'g'"}, True),  # plain values: read in the batch
        ({"filter": "len(alert.diaSource) > 3"}, False),  # a record read whole
        ({"filter": "len(alert) > 3"}, False),  # the alert read whole
        ({"fields": ["diaSource.psfFlux"]}, False),  # a projection may lack the curve
    ],
)
def test_the_batch_path_is_taken_only_where_it_gives_the_same_alerts(
    extra: dict[str, Any], batch: bool
) -> None:
    from sciserve.package.manifest import TensorSpec

    spec = _spec(**extra)
    inputs = [TensorSpec(name="x", datatype="FP32", shape=[-1, len(FEATURE_NAMES)])]
    config = preparation(spec, inputs, {"probabilities"})
    decoder = _Preparer(config).batch
    payloads = _payloads("11.1", n=4)
    # A schema whose filter paths are not plain values is left to the codec.
    decoded = decoder is not None and None not in decoder.decode(payloads)
    assert decoded is batch


def test_an_unknown_decoder_is_refused() -> None:
    with pytest.raises(InvalidInput, match="decode"):
        _spec(decode="fast")


def test_without_polars_alerts_are_decoded_one_at_a_time(
    monkeypatch: pytest.MonkeyPatch, caplog: pytest.LogCaptureFixture
) -> None:
    monkeypatch.setitem(sys.modules, "polars", None)  # import polars fails
    with pytest.raises(DependencyMissing, match=r"pip install 'sciserve\[streams\]'"):
        RubinBatchDecoder(SCHEMAS, max_bytes=MAX_BYTES)
    with caplog.at_level(logging.WARNING, logger="sciserve.streams"):
        preparer = _Preparer(_config())
    assert preparer.batch is None
    assert "polars is not installed" in caplog.text
    good = _payloads("11.1", n=4)
    prepared, _, _ = preparer([*good, b"garbage"])
    assert [item.failure is None for item in prepared] == [True] * len(good) + [False]


def test_preparing_workers_run_polars_on_one_thread_each() -> None:
    import concurrent.futures
    import multiprocessing

    import polars

    from sciserve.streams.pipeline import _init_worker

    with concurrent.futures.ProcessPoolExecutor(
        1,
        mp_context=multiprocessing.get_context("spawn"),
        initializer=_init_worker,
        initargs=(os.getpid(),),
    ) as pool:
        assert pool.submit(polars.thread_pool_size).result(timeout=120) == 1


def _filter_for(version: str) -> str:
    fields = SCHEMAS.get(f"lsst:{version}").lightcurve
    assert fields is not None
    return (
        f"alert.diaSource.{fields.band} == 'g' or alert.diaSource.{fields.flux} > 1000 "
        f"or alert['diaSource']['{fields.ra}'] > 180 or alert.diaObject.{fields.ra} < 90"
    )


@pytest.mark.parametrize("version", VERSIONS)
def test_a_filter_reading_alert_values_sees_what_the_codec_decodes(version: str) -> None:
    from sciserve.package.manifest import TensorSpec
    from sciserve.streams.pipeline import evaluate_filter

    spec = _spec(codec=f"lsst:{version}", filter=_filter_for(version))
    expression = spec.filter_expression
    assert expression is not None and expression.alert_leaves
    inputs = [TensorSpec(name="x", datatype="FP32", shape=[-1, len(FEATURE_NAMES)])]
    config = preparation(spec, inputs, {"probabilities"})
    batch = _Preparer(config)
    assert batch.batch is not None
    one_at_a_time = _Preparer(config)
    one_at_a_time.batch = None
    simulator = AlertSimulator(f"lsst:{version}", seed=6, n_detections=5, schemas=SCHEMAS)
    alerts = [alert.alert for alert in simulator.alerts(24)]
    codec = RubinCodec(f"lsst:{version}", schemas=SCHEMAS)
    for alert in alerts[::3]:
        if "diaObject" in alert:
            alert["diaObject"] = None  # a null record on the way to a value
    payloads = []
    for alert in alerts:
        try:
            payloads.append(codec.encode(alert))
        except InvalidInput:  # this version's diaObject is not nullable
            continue
    assert None not in batch.batch.decode(payloads)  # the batch path, not the fallback
    got, _, _ = batch(payloads)
    want, _, _ = one_at_a_time(payloads)
    assert len(got) == len(want) == len(payloads)
    for mine, theirs in zip(got, want, strict=True):
        assert mine.failure == theirs.failure
        assert mine.alert is not None and theirs.alert is not None
        context_mine = {"alert": mine.alert, "label": None, "score": None}
        context_theirs = {"alert": theirs.alert, "label": None, "score": None}
        assert evaluate_filter(expression, context_mine) == evaluate_filter(
            expression, context_theirs
        )
        for path in expression.alert_leaves:
            assert _at(mine.alert, path) == _at(theirs.alert, path), path


def _at(alert: Any, path: tuple[str, ...]) -> tuple[str, Any]:
    """The value at ``path`` with its type, or where the path ends early."""
    node = alert
    for name in path:
        if not isinstance(node, dict) or name not in node:
            return ("missing", name)
        node = node[name]
    return (type(node).__name__, node)


def test_a_schema_where_the_filter_reads_a_list_is_left_to_the_codec() -> None:
    decoder = RubinBatchDecoder(
        SCHEMAS, max_bytes=MAX_BYTES, alert_paths=[("prvDiaSources",), ("diaSource", "band")]
    )
    payloads = _payloads("11.1", n=4)
    assert decoder.decode(payloads) == [None] * len(payloads)
