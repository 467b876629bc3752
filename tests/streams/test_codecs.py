"""Alert codecs: Rubin wire format for every shipped schema, projections, ZTF, JSON, errors."""

from __future__ import annotations

import contextlib
import io
import json
import random
import re
import threading
from collections.abc import Callable, Iterator
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from typing import Any

import fastavro
import numpy as np
import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from sciserve.errors import InvalidInput, NotFound, Unavailable
from sciserve.streams.base import error_text
from sciserve.streams.codecs import (
    DecodeError,
    JsonCodec,
    RubinCodec,
    ZtfCodec,
    codec_for,
)
from sciserve.streams.schemas import RubinSchemas, schema_id, version_of
from sciserve.streams.simulate import AlertSimulator, SimulatedAlert, lightcurve_from_alert

SCHEMAS = RubinSchemas()
VERSIONS = SCHEMAS.versions()
LIGHTCURVE_POINT = {"midpointMjdTai", "band", "psfFlux", "psfFluxErr"}


def _alerts(version: str, n: int = 4, seed: int = 11) -> list[SimulatedAlert]:
    simulator = AlertSimulator(f"lsst:{version}", seed=seed, n_detections=6, schemas=SCHEMAS)
    return list(simulator.alerts(n))


@pytest.fixture(scope="module")
def latest() -> list[SimulatedAlert]:
    return list(AlertSimulator("lsst", seed=5, schemas=SCHEMAS).alerts(3))


def _subset(full: Any, projected: Any) -> None:
    """Assert ``projected`` holds exactly the values of ``full`` at its own keys."""
    if isinstance(projected, dict):
        assert isinstance(full, dict)
        assert set(projected) <= set(full)
        for key, value in projected.items():
            _subset(full[key], value)
    elif isinstance(projected, list):
        assert isinstance(full, list)
        assert len(projected) == len(full)
        for whole, part in zip(full, projected, strict=True):
            _subset(whole, part)
    else:
        assert projected == full


# -- schemas -----------------------------------------------------------------


def test_shipped_versions_and_rubin_schema_ids() -> None:
    assert VERSIONS[0] == "3.0"
    assert {"7.4", "8.0", "11.0", "11.1"} <= set(VERSIONS)
    assert sorted(VERSIONS, key=lambda v: tuple(map(int, v.split(".")))) == VERSIONS
    assert SCHEMAS.parse("lsst") == SCHEMAS.latest() == VERSIONS[-1]
    assert SCHEMAS.parse("lsst:7.4") == SCHEMAS.parse("7.4") == "7.4"
    assert schema_id("11.1") == SCHEMAS.schema_id("11.1") == 1101
    assert schema_id("7.4") == 704
    assert schema_id("3.0") == 300
    assert version_of(1101) == "11.1"
    assert version_of(1000) == "10.0"
    with pytest.raises(NotFound, match=r"99\.0"):
        SCHEMAS.parse("lsst:99.0")
    with pytest.raises(InvalidInput):
        SCHEMAS.parse("ztf:1.0")
    with pytest.raises(InvalidInput):
        SCHEMAS.parse("lsst:eleven")


def test_alert_id_field_changes_with_schema_8() -> None:
    for version in VERSIONS:
        loaded = SCHEMAS.get(version)
        major = int(version.split(".")[0])
        assert loaded.id_field == ("diaSourceId" if major >= 8 else "alertId")
        assert loaded.schema_id == schema_id(version)
        assert SCHEMAS.by_id(loaded.schema_id) is loaded
        assert loaded.lightcurve is not None


# -- Rubin round trips -------------------------------------------------------


@pytest.mark.parametrize("version", VERSIONS)
def test_round_trip_every_shipped_version(version: str) -> None:
    alerts = _alerts(version)
    codec = RubinCodec(schemas=SCHEMAS)  # encodes the latest, decodes any version
    for alert in alerts:
        assert alert.payload[0] == 0
        assert int.from_bytes(alert.payload[1:5], "big") == schema_id(version)
        decoded = codec.decode(alert.payload)
        assert decoded == alert.alert
        assert codec.alert_id(decoded) == alert.alert_id
        curve, again = lightcurve_from_alert(alert.alert), lightcurve_from_alert(decoded)
        assert len(curve) == 7
        np.testing.assert_array_equal(curve.mjd, again.mjd)
        np.testing.assert_array_equal(curve.flux, again.flux)
        np.testing.assert_array_equal(curve.band, again.band)
    # Re-encoding the decoded alert gives the very same bytes.
    own = RubinCodec(f"lsst:{version}", schemas=SCHEMAS)
    assert own.encode(codec.decode(alerts[0].payload)) == alerts[0].payload


@pytest.mark.parametrize("version", VERSIONS)
def test_lightcurve_projection_equals_full_decoding(version: str) -> None:
    full = RubinCodec(schemas=SCHEMAS)
    projected = RubinCodec(schemas=SCHEMAS, fields="lightcurve")
    fields = SCHEMAS.get(version).lightcurve
    assert fields is not None
    for alert in _alerts(version, n=2):
        whole, part = full.decode(alert.payload), projected.decode(alert.payload)
        _subset(whole, part)
        assert projected.alert_id(part) == alert.alert_id
        assert set(part["diaSource"]) == {"diaSourceId", *fields.point, fields.ra, fields.dec}
        assert all(set(row) == set(fields.point) for row in part["prvDiaSources"])
        assert part["diaObject"] == {"diaObjectId": alert.object_id}
        assert len(part["prvDiaSources"]) == len(whole["prvDiaSources"]) == 6


def test_projection_on_chosen_fields(latest: list[SimulatedAlert]) -> None:
    codec = RubinCodec(
        schemas=SCHEMAS,
        fields=["diaSource.{psfFlux, band}", "prvDiaSources[].midpointMjdTai", "diaObject"],
    )
    full = RubinCodec(schemas=SCHEMAS)
    for alert in latest:
        part, whole = codec.decode(alert.payload), full.decode(alert.payload)
        # The alert id is always kept.
        assert set(part) == {"diaSourceId", "diaSource", "prvDiaSources", "diaObject"}
        assert part["diaSource"] == {
            "psfFlux": whole["diaSource"]["psfFlux"],
            "band": whole["diaSource"]["band"],
        }
        assert [p["midpointMjdTai"] for p in part["prvDiaSources"]] == [
            p["midpointMjdTai"] for p in whole["prvDiaSources"]
        ]
        assert part["diaObject"] == whole["diaObject"]  # a whole record stays whole


def test_projection_paths_are_checked() -> None:
    with pytest.raises(InvalidInput, match=r"diaSource\.noSuchField"):
        RubinCodec(schemas=SCHEMAS, fields=["diaSource.noSuchField"])
    with pytest.raises(InvalidInput, match="braces"):
        RubinCodec(schemas=SCHEMAS, fields=["diaSource{ra,dec}.x"])
    with pytest.raises(InvalidInput):
        RubinCodec(schemas=SCHEMAS, fields="everything")
    # A path of the newest schema is simply absent from an old version's alerts.
    codec = RubinCodec(schemas=SCHEMAS, fields=["diaSource.psfFlux"])
    old = codec.decode(_alerts("4.0", n=1)[0].payload)
    assert old["diaSource"] == {}
    assert codec.alert_id(old) == old["alertId"]


def test_encode_rejects_an_alert_the_schema_does_not_allow(latest: list[SimulatedAlert]) -> None:
    codec = RubinCodec(schemas=SCHEMAS)
    broken = dict(latest[0].alert, diaSource={"diaSourceId": "not a number"})
    with pytest.raises(InvalidInput, match="does not fit"):
        codec.encode(broken)


# -- malformed Rubin messages ------------------------------------------------


def test_malformed_messages_have_distinct_reasons(latest: list[SimulatedAlert]) -> None:
    codec = RubinCodec(schemas=SCHEMAS, max_bytes=100_000)
    good = latest[0].payload
    cases = {
        "empty": b"",
        "bad-magic": b"\x01" + good[1:],
        "unknown-schema": b"\x00" + (9999).to_bytes(4, "big") + good[5:],
        "trailing-bytes": good + b"\x00garbage",
        "oversized": good + bytes(100_000),
    }
    seen = {}
    for reason, value in cases.items():
        with pytest.raises(DecodeError) as caught:
            codec.decode(value)
        assert caught.value.reason == reason, (reason, str(caught.value))
        assert isinstance(caught.value, InvalidInput)
        seen[reason] = str(caught.value)
    assert len(set(seen.values())) == len(cases)
    assert "9999" in seen["unknown-schema"]


@pytest.mark.parametrize("cut", [1, 3, 5, 6, 40, 0.5, -1])
def test_truncated_messages(latest: list[SimulatedAlert], cut: float) -> None:
    good = latest[0].payload
    end = int(len(good) * cut) if isinstance(cut, float) else cut % len(good)
    with pytest.raises(DecodeError) as caught:
        RubinCodec(schemas=SCHEMAS).decode(good[:end])
    assert caught.value.reason == "truncated", str(caught.value)


def test_random_bytes_after_a_valid_header(latest: list[SimulatedAlert]) -> None:
    codec = RubinCodec(schemas=SCHEMAS)
    rng = random.Random(3)
    reasons = set()
    for _ in range(200):
        body = rng.randbytes(rng.randrange(0, 400))
        with pytest.raises(DecodeError) as caught:
            codec.decode(latest[0].payload[:5] + body)
        reasons.add(caught.value.reason)
    assert reasons <= {"truncated", "invalid-avro", "trailing-bytes"}
    assert "truncated" in reasons


#: What must never be in a dead-letter reason: object reprs and addresses.
_REPR = re.compile(r"<[^<>]*\bat 0x[0-9a-fA-F]+>|0x[0-9a-fA-F]{6,}")


def _reason(decode: Callable[[bytes], Any], value: bytes) -> str:
    with pytest.raises(DecodeError) as caught:
        decode(value)
    return str(caught.value)


def test_decode_errors_are_stable_readable_text(latest: list[SimulatedAlert]) -> None:
    good = latest[0].payload
    rng = random.Random(7)
    broken = [good[:end] for end in range(5, len(good), 3)]
    for _ in range(300):
        value = bytearray(good)
        for _ in range(4):
            value[rng.randrange(5, len(value))] = rng.randrange(256)
        broken.append(bytes(value))
    containers = [b"Obj\x01" + bytes(20), b"Obj\x01garbage", b"Obj\x01" + bytes(range(256))]
    cases: list[tuple[Callable[[], Any], list[bytes]]] = [
        (lambda: RubinCodec(schemas=SCHEMAS), broken),
        (lambda: RubinCodec(schemas=SCHEMAS, fields="lightcurve"), broken),
        (ZtfCodec, containers),
    ]
    checked = 0
    for make, values in cases:
        first, second = make(), make()
        for value in values:
            try:
                second.decode(value)
            except DecodeError:
                pass
            else:
                continue  # a mutation that still decodes
            text = _reason(first.decode, value)
            assert not _REPR.search(text), text
            _, _, detail = text.partition(": ")
            assert detail and not detail.rstrip().endswith(":"), text
            # The same bytes give the same reason, in any process, at any time.
            assert _reason(second.decode, value) == text
            checked += 1
    assert checked > 300


def test_error_text_keeps_no_object_reprs() -> None:
    # Feature functions and models fail with messages like these too.
    assert error_text(ValueError(f"cannot use {io.BytesIO()}")) == "cannot use the BytesIO"
    assert error_text(TypeError(f"bad {object()}!")) == "bad the object!"
    assert error_text(KeyError("flux")) == "missing key 'flux'"
    assert error_text(EOFError()) == "EOFError"


_CODEC = RubinCodec(schemas=SCHEMAS)
_PROJECTED = RubinCodec(schemas=SCHEMAS, fields="lightcurve")
_PAYLOAD = next(AlertSimulator("lsst", seed=9, n_detections=3, schemas=SCHEMAS).alerts(1)).payload


@settings(max_examples=300, deadline=None, suppress_health_check=[HealthCheck.too_slow])
@given(st.binary(max_size=600))
def test_fuzz_arbitrary_bytes_only_raise_decode_error(value: bytes) -> None:
    for codec in (_CODEC, _PROJECTED):
        with contextlib.suppress(DecodeError):
            codec.decode(value)


@settings(max_examples=300, deadline=None, suppress_health_check=[HealthCheck.too_slow])
@given(st.lists(st.tuples(st.integers(0, len(_PAYLOAD) - 1), st.integers(0, 255)), max_size=6))
def test_fuzz_mutated_alerts_only_raise_decode_error(edits: list[tuple[int, int]]) -> None:
    value = bytearray(_PAYLOAD)
    for position, byte in edits:
        value[position] = byte
    for codec in (_CODEC, _PROJECTED):
        try:
            alert = codec.decode(bytes(value))
        except DecodeError:
            continue
        assert isinstance(alert, dict)


# -- a schema registry ----------------------------------------------------------


class _Registry:
    """A Confluent-style schema registry on 127.0.0.1 that counts its requests."""

    def __init__(self, schemas: dict[int, str]) -> None:
        self.requests: list[str] = []
        registry = self

        class Handler(BaseHTTPRequestHandler):
            def do_GET(self) -> None:
                registry.requests.append(self.path)
                prefix = "/schemas/ids/"
                found = None
                if self.path.startswith(prefix) and self.path[len(prefix) :].isdigit():
                    found = schemas.get(int(self.path[len(prefix) :]))
                body = json.dumps(
                    {"schema": found} if found else {"error_code": 40403, "message": "not found"}
                ).encode()
                self.send_response(200 if found else 404)
                self.send_header("Content-Type", "application/vnd.schemaregistry.v1+json")
                self.send_header("Content-Length", str(len(body)))
                self.end_headers()
                self.wfile.write(body)

            def log_message(self, format: str, *args: Any) -> None:
                pass

        self.server = ThreadingHTTPServer(("127.0.0.1", 0), Handler)
        self.url = f"http://127.0.0.1:{self.server.server_address[1]}"
        self.thread = threading.Thread(target=self.server.serve_forever, daemon=True)
        self.thread.start()

    def stop(self) -> None:
        self.server.shutdown()
        self.server.server_close()
        self.thread.join(5)


_SMALL_SCHEMA = {
    "type": "record",
    "name": "alert",
    "namespace": "example.survey",
    "fields": [
        {"name": "alertId", "type": "long"},
        {"name": "note", "type": ["null", "string"], "default": None},
    ],
}


@pytest.fixture
def registry(latest: list[SimulatedAlert]) -> Iterator[_Registry]:
    # Rubin's newest schema under the name and id of a version not shipped.
    canonical = fastavro.schema.to_parsing_canonical_form(SCHEMAS.get("11.1").parsed)
    future = canonical.replace("lsst.v11_1.", "lsst.v12_0.")
    server = _Registry({1200: future, 4242: json.dumps(_SMALL_SCHEMA)})
    yield server
    server.stop()


def _frame(schema_id: int, schema: dict[str, Any], record: dict[str, Any]) -> bytes:
    stream = io.BytesIO()
    stream.write(b"\x00" + schema_id.to_bytes(4, "big"))
    fastavro.schemaless_writer(stream, fastavro.parse_schema(schema), record)
    return stream.getvalue()


def test_schema_registry_resolves_unshipped_ids_once(
    registry: _Registry, latest: list[SimulatedAlert]
) -> None:
    schemas = RubinSchemas(registry.url)
    codec = RubinCodec(schemas=schemas, fields="lightcurve")
    # Shipped ids never reach the registry.
    assert codec.decode(latest[0].payload)["diaSourceId"] == latest[0].alert_id
    assert registry.requests == []

    # An alert of "12.0": the registry knows the schema, fetched once.
    future = b"\x00" + (1200).to_bytes(4, "big") + latest[1].payload[5:]
    for _ in range(3):
        part = codec.decode(future)
        assert codec.alert_id(part) == latest[1].alert_id
        assert len(part["prvDiaSources"]) == 30
    assert schemas.by_id(1200).version == "12.0"
    assert registry.requests == ["/schemas/ids/1200"]

    small = _frame(4242, _SMALL_SCHEMA, {"alertId": 77, "note": "hi"})
    full = RubinCodec(schemas=schemas)
    assert full.decode(small) == {"alertId": 77, "note": "hi"}
    assert full.alert_id(full.decode(small)) == 77

    # Unknown ids are asked once and then remembered as unknown.
    unknown = b"\x00" + (4243).to_bytes(4, "big") + b"\x02"
    for _ in range(3):
        with pytest.raises(DecodeError) as caught:
            full.decode(unknown)
        assert caught.value.reason == "unknown-schema"
    assert registry.requests.count("/schemas/ids/4243") == 1


def test_unreachable_registry_is_unavailable_not_a_bad_message(registry: _Registry) -> None:
    url = registry.url
    registry.stop()
    codec = RubinCodec(schemas=RubinSchemas(url, timeout=2.0))
    message = _frame(4242, _SMALL_SCHEMA, {"alertId": 1, "note": None})
    with pytest.raises(Unavailable):
        codec.decode(message)
    # Not remembered as an unknown id: the next message asks the registry again.
    with pytest.raises(Unavailable):
        codec.decode(message)


# -- ZTF -----------------------------------------------------------------------


def _ztf_schema() -> dict[str, Any]:
    candidate = {
        "type": "record",
        "name": "candidate",
        "fields": [
            {"name": "jd", "type": "double"},
            {"name": "fid", "type": "int"},
            {"name": "magpsf", "type": "float"},
            {"name": "sigmapsf", "type": "float"},
            {"name": "ra", "type": "double"},
            {"name": "dec", "type": "double"},
        ],
    }
    previous = {
        "type": "record",
        "name": "prv_candidate",
        "fields": [
            {"name": "jd", "type": "double"},
            {"name": "fid", "type": "int"},
            {"name": "magpsf", "type": ["null", "float"], "default": None},
            {"name": "sigmapsf", "type": ["null", "float"], "default": None},
        ],
    }
    return {
        "type": "record",
        "name": "alert",
        "namespace": "test.ztf",
        "fields": [
            {"name": "objectId", "type": "string"},
            {"name": "candid", "type": "long"},
            {"name": "candidate", "type": candidate},
            {"name": "prv_candidates", "type": ["null", {"type": "array", "items": previous}]},
        ],
    }


def _ztf_alert(candid: int) -> dict[str, Any]:
    return {
        "objectId": f"ZTF24aa{candid:05d}",
        "candid": candid,
        "candidate": {
            "jd": 2460000.5 + candid,
            "fid": 2,
            "magpsf": 18.5,
            "sigmapsf": 0.0625,
            "ra": 150.25,
            "dec": 2.5,
        },
        "prv_candidates": [
            {"jd": 2459990.5, "fid": 1, "magpsf": 19.25, "sigmapsf": 0.125},
            {"jd": 2459995.5, "fid": 2, "magpsf": None, "sigmapsf": None},
        ],
    }


def test_ztf_container_round_trip_and_errors() -> None:
    codec = ZtfCodec(_ztf_schema())
    alert = _ztf_alert(1234567)
    payload = codec.encode(alert)
    assert payload.startswith(b"Obj\x01")
    # Decoding needs no schema: it is in the container.
    reader = ZtfCodec()
    assert reader.decode(payload) == alert
    assert reader.alert_id(reader.decode(payload)) == 1234567
    assert codec_for("ztf").decode(payload) == alert

    two = io.BytesIO()
    fastavro.writer(two, fastavro.parse_schema(_ztf_schema()), [alert, _ztf_alert(2)])
    problems = {
        "empty": b"",
        "bad-magic": b"\x00" + payload[1:],
        "not-one-record": two.getvalue(),
        "oversized": payload + bytes(10_000),
    }
    for reason, value in problems.items():
        with pytest.raises(DecodeError) as caught:
            ZtfCodec(max_bytes=5_000).decode(value)
        assert caught.value.reason == reason
    for end in (4, 20, len(payload) // 2, len(payload) - 20):
        with pytest.raises(DecodeError) as caught:
            reader.decode(payload[:end])
        assert caught.value.reason in {"truncated", "invalid-avro"}
    with pytest.raises(InvalidInput, match="needs the schema"):
        reader.encode(alert)
    with pytest.raises(DecodeError, match="no-alert-id"):
        reader.alert_id({"objectId": "x"})


# -- JSON ------------------------------------------------------------------------


def test_json_round_trip_ids_and_errors(latest: list[SimulatedAlert]) -> None:
    codec = JsonCodec()
    alert = latest[0].alert
    decoded = codec.decode(codec.encode(alert))
    assert codec.alert_id(decoded) == latest[0].alert_id
    assert decoded["diaSource"]["psfFlux"] == alert["diaSource"]["psfFlux"]
    assert len(decoded["prvDiaSources"]) == 30

    nested = JsonCodec(id_field="candidate.candid")
    assert nested.alert_id(nested.decode(b'{"candidate": {"candid": 42}}')) == 42
    raw = nested.encode({"candidate": {"candid": 1}, "cutout": b"\x00\xff"})
    assert json.loads(raw)["cutout"] == "AP8="

    problems = {
        "empty": b"",
        "not-utf8": b'{"a": "\xff"}',
        "not-json": b"{nope",
        "not-an-object": b"[1, 2]",
        "oversized": b'{"a": "' + b"x" * 200 + b'"}',
    }
    for reason, value in problems.items():
        with pytest.raises(DecodeError) as caught:
            JsonCodec(max_bytes=100).decode(value)
        assert caught.value.reason == reason
    for alert_without_id in ({}, {"diaSourceId": "12"}, {"diaSourceId": True}):
        with pytest.raises(DecodeError) as caught:
            codec.alert_id(alert_without_id)
        assert caught.value.reason == "no-alert-id"
    with pytest.raises(InvalidInput):
        codec.encode({"value": object()})


# -- codec_for -------------------------------------------------------------------


def test_codec_for_names() -> None:
    latest_codec = codec_for("lsst")
    assert isinstance(latest_codec, RubinCodec)
    assert latest_codec.name == f"lsst:{SCHEMAS.latest()}"
    old = codec_for("lsst:7.4", fields="lightcurve")
    assert old.name == "lsst:7.4"
    assert old.encode(_alerts("7.4", n=1)[0].alert)[1:5] == (704).to_bytes(4, "big")
    assert isinstance(codec_for("ztf"), ZtfCodec)
    json_codec = codec_for("json", id_field="alertId")
    assert isinstance(json_codec, JsonCodec)
    assert json_codec.alert_id({"alertId": 5}) == 5
    with pytest.raises(InvalidInput, match="unknown alert codec"):
        codec_for("avro")
    with pytest.raises(InvalidInput, match="only lsst"):
        codec_for("json:1.0")
    with pytest.raises(NotFound):
        codec_for("lsst:99.9")
