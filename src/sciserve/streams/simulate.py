"""A simulated Rubin alert stream with known classes.

:class:`AlertSimulator` turns the labelled light curves of
:mod:`sciserve.examples.lightcurves` into schema-valid Rubin alerts: the
object's latest detection is the alert's ``diaSource``, the earlier ones are
its ``prvDiaSources`` and ``diaObject`` summarises them.  The alerts are
built from the schema itself, so every shipped version works: the fields a
light curve or a survey needs get plausible values (unique, increasing ids,
sky positions, visits, fluxes in nJy), every other nullable field is null and
every other required field gets its type's zero.  Floats the schema stores
in 32 bits are rounded to them, so a decoded alert equals the simulated one.

The class of each alert is not in the alert; :func:`truth_table` lists it.
:func:`features_from_alert` turns a decoded (possibly projected) alert back
into a light curve and its feature vector, the input of the example
classifiers.
"""

from __future__ import annotations

import csv
import datetime as dt
import itertools
import math
from collections.abc import Iterable, Iterator, Mapping, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Final

import numpy as np
import numpy.typing as npt

from ..errors import InvalidInput
from ..examples.features import extract
from ..examples.lightcurves import BANDS, CLASSES, LightCurve, simulate
from .codecs import RubinCodec
from .schemas import LightCurveFields, RubinSchema, RubinSchemas, named_types

__all__ = [
    "TRUTH_COLUMNS",
    "AlertSimulator",
    "SimulatedAlert",
    "features_from_alert",
    "lightcurve_from_alert",
    "truth_table",
    "write_truth_table",
]

#: Columns of :func:`truth_table` rows, in CSV order.
TRUTH_COLUMNS: Final = ("alert_id", "object_id", "label")

# Objects are simulated in chunks of this size, each from its own seed, so
# that an endless stream needs bounded memory and ``alerts(n)`` is always a
# prefix of ``alerts(m)`` for n < m.
_CHUNK = 500
_MJD_EPOCH = dt.datetime(1858, 11, 17, tzinfo=dt.UTC)
# Alerts go out about two minutes after the exposure.
_PROCESSING_DELAY_DAYS = 2.0 / 1440.0
# Rubin's camera: 189 science detectors of 4k x 4k pixels.
_DETECTORS = 189
_PIXELS = 4000.0
# Astrometric scatter of one detection around the object (degrees): 50 mas.
_POSITION_SCATTER_DEG = 0.05 / 3600.0


@dataclass(frozen=True)
class SimulatedAlert:
    """One simulated alert: the record, its wire bytes and its true class."""

    alert: dict[str, Any]
    payload: bytes
    alert_id: int
    object_id: int
    label: str

    def truth(self) -> dict[str, Any]:
        """This alert's row of the truth table."""
        return {"alert_id": self.alert_id, "object_id": self.object_id, "label": self.label}


class AlertSimulator:
    """Schema-valid Rubin alerts whose light curves come from labelled classes.

    Each simulated object gives one alert at its latest detection, preceded
    by ``n_detections`` earlier detections in ``prvDiaSources``.  Alerts of
    one simulator are numbered from ``first_id``: a source ``diaSourceId``
    increases with time within an object and from object to object, so alert
    ids are unique and increasing; ``diaObjectId`` counts objects from
    ``first_id``.  Everything depends only on the arguments.
    """

    def __init__(
        self,
        schema: str = "lsst",
        *,
        seed: int = 0,
        n_detections: int = 30,
        classes: Sequence[str] = CLASSES,
        first_id: int = 1,
        schemas: RubinSchemas | None = None,
    ) -> None:
        if n_detections < 0:
            raise InvalidInput(f"n_detections must be 0 or more, not {n_detections}")
        if first_id < 0:
            raise InvalidInput(f"first_id must be 0 or more, not {first_id}")
        self.codec = RubinCodec(schema, schemas=schemas)
        self.seed = seed
        self.n_detections = n_detections
        self.classes = tuple(classes)
        self.first_id = first_id
        self._builder = _AlertBuilder(self.codec.schema)

    @property
    def schema(self) -> RubinSchema:
        """The schema the alerts follow."""
        return self.codec.schema

    def alerts(self, n: int | None = None) -> Iterator[SimulatedAlert]:
        """The first ``n`` alerts of this simulator's stream (endless for ``None``)."""
        if n is not None and n < 0:
            raise InvalidInput(f"cannot simulate {n} alerts")
        emitted = 0
        for chunk in itertools.count():
            for alert in self._chunk(chunk):
                if n is not None and emitted >= n:
                    return
                yield alert
                emitted += 1

    def _chunk(self, chunk: int) -> Iterator[SimulatedAlert]:
        # simulate() wants one integer seed; derive an independent one per chunk.
        lc_seed = int(np.random.SeedSequence([self.seed, chunk]).generate_state(1)[0])
        curves = simulate(
            _CHUNK, seed=lc_seed, n_detections=self.n_detections + 1, classes=self.classes
        )
        rng = np.random.default_rng([self.seed, chunk, 1])
        # Uniform on the sphere, south of +30 degrees as Rubin sees it.
        ra = rng.uniform(0.0, 360.0, _CHUNK)
        dec = np.degrees(np.arcsin(rng.uniform(-1.0, 0.5, _CHUNK)))
        per_object = self.n_detections + 1
        for row, curve in enumerate(curves):
            index = chunk * _CHUNK + row
            alert = self._builder.alert(
                curve,
                object_id=self.first_id + index,
                first_source_id=self.first_id + index * per_object,
                ra=float(ra[row]),
                dec=float(dec[row]),
                rng=rng,
            )
            alert_id = self.codec.alert_id(alert)
            yield SimulatedAlert(
                alert=alert,
                payload=self.codec.encode(alert),
                alert_id=alert_id,
                object_id=self.first_id + index,
                label=curve.label,
            )


def truth_table(alerts: Iterable[SimulatedAlert]) -> list[dict[str, Any]]:
    """``alert_id``, ``object_id`` and ``label`` of each alert."""
    return [alert.truth() for alert in alerts]


def write_truth_table(path: str | Path, rows: Iterable[Mapping[str, Any]]) -> int:
    """Write truth rows as CSV with a header; return how many rows were written.

    ``rows`` may be a generator: rows are written as they come.
    """
    count = 0
    with Path(path).open("w", newline="", encoding="utf-8") as fh:
        writer = csv.DictWriter(fh, fieldnames=TRUTH_COLUMNS, extrasaction="ignore")
        writer.writeheader()
        for row in rows:
            writer.writerow(row)
            count += 1
    return count


# -- reading alerts back -------------------------------------------------------


def lightcurve_from_alert(alert: Mapping[str, Any], *, label: str = "") -> LightCurve:
    """The light curve in an alert's ``diaSource`` and ``prvDiaSources``.

    Works on full and projected alerts of any schema version; detections
    without a time, band, flux or flux error are left out.
    """
    source = alert.get("diaSource")
    history = alert.get("prvDiaSources") or ()
    rows = [row for row in (source, *history) if isinstance(row, Mapping)]
    fields = LightCurveFields.detect(rows[0].keys()) if rows else None
    if fields is None:
        raise InvalidInput("the alert has no light curve (diaSource with time, band and flux)")
    points = [
        tuple(row[name] for name in fields.point)
        for row in rows
        if all(row.get(name) is not None for name in fields.point)
    ]
    mjd, band, flux, flux_err = zip(*points, strict=True) if points else ((), (), (), ())
    return LightCurve(
        object_id=_object_id(alert),
        label=label,
        mjd=np.asarray(mjd, dtype=np.float64),
        band=np.asarray(band, dtype=np.str_),
        flux=np.asarray(flux, dtype=np.float64),
        flux_err=np.asarray(flux_err, dtype=np.float64),
    )


def features_from_alert(alert: Mapping[str, Any]) -> npt.NDArray[np.float32]:
    """The :mod:`sciserve.examples.features` vector of an alert's light curve."""
    return extract(lightcurve_from_alert(alert))


def _object_id(alert: Mapping[str, Any]) -> int:
    for record in (alert.get("diaObject"), alert.get("diaSource")):
        if isinstance(record, Mapping) and isinstance(record.get("diaObjectId"), int):
            return int(record["diaObjectId"])
    return 0


# -- building alerts from the schema -----------------------------------------


class _Template:
    """Fills one Avro record type: given values where the schema has the field, defaults else."""

    def __init__(self, record: Mapping[str, Any], named: Mapping[str, Any]) -> None:
        self.base: dict[str, Any] = {}
        self.float32: set[str] = set()
        for field in record["fields"]:
            name, type_ = field["name"], field["type"]
            self.base[name] = _default(field, named)
            if _non_null(type_) == "float":
                self.float32.add(name)

    def fill(self, values: Mapping[str, Any]) -> dict[str, Any]:
        row = dict(self.base)
        for name, value in values.items():
            if name in row:
                # The wire keeps 32 bits of a float; so does the alert, and a
                # decoded alert compares equal to it.
                row[name] = float(np.float32(value)) if name in self.float32 else value
        return row


def _non_null(type_: Any) -> Any:
    """The one non-null branch of a nullable union (or the type itself)."""
    if isinstance(type_, list):
        branches = [branch for branch in type_ if branch != "null"]
        return branches[0] if len(branches) == 1 else type_
    return type_


_ZEROS: Final[Mapping[str, Any]] = {
    "null": None,
    "boolean": False,
    "int": 0,
    "long": 0,
    "float": 0.0,
    "double": 0.0,
    "bytes": b"",
    "string": "",
}


def _default(field: Mapping[str, Any], named: Mapping[str, Any]) -> Any:
    """Null if allowed, else the schema default, else the type's zero."""
    type_ = field["type"]
    if isinstance(type_, list) and "null" in type_:
        return None
    if "default" in field:
        return field["default"]
    return _zero(type_, named)


def _zero(type_: Any, named: Mapping[str, Any]) -> Any:
    if isinstance(type_, list):
        return _zero(type_[0], named)
    if isinstance(type_, str):
        if type_ in _ZEROS:
            return _ZEROS[type_]
        type_ = named[type_]
    kind = type_["type"]
    if type_.get("logicalType", "").startswith("timestamp"):
        return _MJD_EPOCH
    if kind == "record":
        return {field["name"]: _default(field, named) for field in type_["fields"]}
    if kind == "enum":
        return type_["symbols"][0]
    if kind == "fixed":
        return bytes(type_["size"])
    if kind == "array":
        return []
    if kind == "map":
        return {}
    return _zero(kind, named)


def _record_type(type_: Any, named: Mapping[str, Any]) -> Mapping[str, Any]:
    """The record a field holds, through nullable unions, arrays and named references."""
    type_ = _non_null(type_)
    if isinstance(type_, str):
        type_ = named[type_]
    if type_.get("type") == "array":
        return _record_type(type_["items"], named)
    if not isinstance(type_, Mapping) or type_.get("type") != "record":
        raise InvalidInput(f"expected a record type, found {type_!r:.80}")
    return type_


def _mjd_to_datetime(mjd: float) -> dt.datetime:
    return _MJD_EPOCH + dt.timedelta(days=mjd)


class _AlertBuilder:
    """Turns a light curve into an alert of one schema version."""

    def __init__(self, schema: RubinSchema) -> None:
        if schema.lightcurve is None:
            raise InvalidInput(f"schema {schema.name} has no diaSource light curve to fill")
        named = named_types(schema.parsed)
        top = {field["name"]: field for field in schema.parsed["fields"]}
        self._id_field = schema.id_field
        self._alert = _Template(schema.parsed, named)
        self._source = _Template(_record_type(top["diaSource"]["type"], named), named)
        self._object = (
            _Template(_record_type(top["diaObject"]["type"], named), named)
            if "diaObject" in top
            else None
        )
        self._has_history = "prvDiaSources" in top

    def alert(
        self,
        curve: LightCurve,
        *,
        object_id: int,
        first_source_id: int,
        ra: float,
        dec: float,
        rng: np.random.Generator,
    ) -> dict[str, Any]:
        k = len(curve)
        cos_dec = max(math.cos(math.radians(dec)), 1e-6)
        ras = ra + rng.normal(0.0, _POSITION_SCATTER_DEG, k) / cos_dec
        decs = np.clip(dec + rng.normal(0.0, _POSITION_SCATTER_DEG, k), -90.0, 90.0)
        detectors = rng.integers(0, _DETECTORS, k)
        pixels = rng.uniform(0.0, _PIXELS, (k, 2))
        box = rng.integers(15, 40, k)
        sources = [
            self._source.fill(
                _source_values(
                    source_id=first_source_id + j,
                    object_id=object_id,
                    mjd=float(curve.mjd[j]),
                    band=str(curve.band[j]),
                    flux=float(curve.flux[j]),
                    flux_err=float(curve.flux_err[j]),
                    ra=float(ras[j] % 360.0),
                    dec=float(decs[j]),
                    detector=int(detectors[j]),
                    x=float(pixels[j, 0]),
                    y=float(pixels[j, 1]),
                    box=int(box[j]),
                )
            )
            for j in range(k)
        ]
        values: dict[str, Any] = {
            self._id_field: sources[-1]["diaSourceId"],
            "diaSource": sources[-1],
        }
        if self._has_history:
            values["prvDiaSources"] = sources[:-1]
        if self._object is not None:
            values["diaObject"] = self._object.fill(_object_values(curve, object_id, ra, dec))
        return self._alert.fill(values)


def _source_values(
    *,
    source_id: int,
    object_id: int,
    mjd: float,
    band: str,
    flux: float,
    flux_err: float,
    ra: float,
    dec: float,
    detector: int,
    x: float,
    y: float,
    box: int,
) -> dict[str, Any]:
    """Plausible values of one detection, under the names of every schema version."""
    day = _mjd_to_datetime(mjd)
    # Rubin numbers visits YYYYMMDDNNNNN: the observing night and a sequence.
    night = day.year * 10_000 + day.month * 100 + day.day
    visit = night * 100_000 + int(mjd % 1.0 * 86_400) // 30
    processed = mjd + _PROCESSING_DELAY_DAYS
    return {
        "diaSourceId": source_id,
        "diaObjectId": object_id,
        "visit": visit,
        "detector": detector,
        "ccdVisitId": visit * 1000 + detector,
        "programId": 0,
        "flags": 0,
        "midpointMjdTai": mjd,
        "midPointTai": mjd,
        "band": band,
        "filterName": band,
        "ra": ra,
        "dec": dec,
        "decl": dec,
        "x": x,
        "y": y,
        "psfFlux": flux,
        "psFlux": flux,
        "psfFluxErr": flux_err,
        "psFluxErr": flux_err,
        "apFlux": flux,
        "apFluxErr": flux_err,
        "snr": abs(flux) / flux_err,
        "isNegative": flux < 0,
        "psfNdata": box * box,
        "trailNdata": box * box,
        "dipoleNdata": box * box,
        "bboxSize": box,
        "timeProcessedMjdTai": processed,
        "time_processed": _mjd_to_datetime(processed),
    }


def _object_values(curve: LightCurve, object_id: int, ra: float, dec: float) -> dict[str, Any]:
    """Plausible ``diaObject`` values: position, validity and per-band summaries."""
    latest = float(curve.mjd[-1])
    values: dict[str, Any] = {
        "diaObjectId": object_id,
        "ra": ra,
        "dec": dec,
        "decl": dec,
        "radecTai": latest,
        "radecMjdTai": latest,
        "validityStart": _mjd_to_datetime(latest),
        "validityStartMjdTai": latest,
        "nDiaSources": len(curve),
        "flags": 0,
    }
    for band in BANDS:
        chosen = curve.band == band
        values[f"{band}_psfFluxNdata"] = int(chosen.sum())
        if chosen.any():
            values[f"{band}_psfFluxMean"] = float(curve.flux[chosen].mean())
    return values
