"""Rubin's alert schemas: the versions lsst-alert-packet ships, and their ids.

Rubin sends alerts in the Confluent wire format, whose header names the
schema by a number.  By Rubin's convention that number encodes the schema
version as ``major * 100 + minor`` (``11.1`` is ``1101``, ``7.4`` is
``704``): lsst-alert-packet computes ids this way and Rubin registers its
schemas in its Confluent schema registry under them, so an id read from the
wire is enough to pick the shipped schema.  The schemas themselves are never
copied here; they are read from the installed ``lsst-alert-packet``.

Ids of schemas newer than the installed package (or of other producers) can
be resolved through a Confluent-compatible schema registry, asked once per
id (``GET {url}/schemas/ids/{id}``) and remembered.

:func:`reader_schema` builds the *projection* of a writer schema on a few
fields: a reader schema that makes Avro skip every other field while
decoding, which is much cheaper than building dictionaries nobody reads.
"""

from __future__ import annotations

import copy
import json
import re
import threading
from collections.abc import Collection, Iterable, Mapping
from dataclasses import dataclass
from typing import Any

import httpx

from ..errors import DependencyMissing, InvalidInput, NotFound, Unavailable

try:
    import fastavro
    from fastavro.schema import SchemaParseException
except ImportError as exc:  # pragma: no cover - depends on the installation
    raise DependencyMissing("alert codecs need fastavro: pip install 'sciserve[streams]'") from exc

__all__ = [
    "LightCurveFields",
    "RubinSchema",
    "RubinSchemas",
    "named_types",
    "reader_schema",
    "schema_id",
    "version_of",
]

#: The prefix of Rubin schema names: ``lsst``, ``lsst:11.1``.
FAMILY = "lsst"

_VERSION = re.compile(r"^(\d+)\.(\d+)$")
_RECORD_NAME = re.compile(r"^lsst\.v(\d+)_(\d+)\.alert$")
# Negative answers of the schema registry are remembered so that a stream of
# garbage with random schema ids cannot turn into a stream of HTTP requests;
# the bound keeps that memory small.
_MAX_UNKNOWN = 4096


def schema_id(version: str) -> int:
    """The Confluent schema id of Rubin schema ``version``: ``"11.1"`` → ``1101``."""
    major, minor = _split(version)
    if minor > 99:
        raise InvalidInput(f"schema version {version}: a minor version above 99 has no id")
    return major * 100 + minor


def version_of(schema_id: int) -> str:
    """The Rubin schema version an id stands for: ``1101`` → ``"11.1"``."""
    if schema_id < 100:
        raise InvalidInput(f"{schema_id} is not a Rubin schema id (major * 100 + minor)")
    return f"{schema_id // 100}.{schema_id % 100}"


def _split(version: str) -> tuple[int, int]:
    match = _VERSION.match(version)
    if match is None:
        raise InvalidInput(f"schema version {version!r} is not MAJOR.MINOR, e.g. 11.1")
    return int(match[1]), int(match[2])


@dataclass(frozen=True)
class LightCurveFields:
    """Where a schema keeps a detection's light-curve point, inside ``diaSource``.

    The names changed once, with schema 5.0 (``midPointTai`` became
    ``midpointMjdTai``, ``filterName`` became ``band`` and so on).
    """

    time: str
    band: str
    flux: str
    flux_err: str
    ra: str
    dec: str

    @classmethod
    def detect(cls, names: Collection[str]) -> LightCurveFields | None:
        """The convention whose time, band and flux fields are all in ``names``."""
        for fields in (CURRENT_FIELDS, LEGACY_FIELDS):
            if {fields.time, fields.band, fields.flux, fields.flux_err} <= set(names):
                return fields
        return None

    @property
    def point(self) -> tuple[str, str, str, str]:
        """The four fields a light-curve point needs: time, band, flux and its error."""
        return (self.time, self.band, self.flux, self.flux_err)


#: Names used from schema 5.0 on.
CURRENT_FIELDS = LightCurveFields("midpointMjdTai", "band", "psfFlux", "psfFluxErr", "ra", "dec")
#: Names used by schemas 3.0 and 4.0.
LEGACY_FIELDS = LightCurveFields("midPointTai", "filterName", "psFlux", "psFluxErr", "ra", "decl")


@dataclass(frozen=True, eq=False)
class RubinSchema:
    """One alert schema, parsed and ready for :mod:`fastavro`.

    ``id_field`` names the top-level field that identifies an alert:
    ``diaSourceId`` from schema 8.0 on, ``alertId`` before.  ``lightcurve``
    is ``None`` for a schema without Rubin's ``diaSource`` record.
    """

    version: str
    schema_id: int
    parsed: dict[str, Any]
    id_field: str
    lightcurve: LightCurveFields | None

    @classmethod
    def from_definition(
        cls, definition: Mapping[str, Any], *, schema_id: int, version: str
    ) -> RubinSchema:
        """Parse ``definition``; :class:`~sciserve.errors.InvalidInput` if it is no alert schema."""
        try:
            parsed = fastavro.parse_schema(dict(definition))
        except (SchemaParseException, ValueError, TypeError, KeyError) as exc:
            raise InvalidInput(f"schema {schema_id} is not a valid Avro schema: {exc}") from exc
        if not isinstance(parsed, dict) or parsed.get("type") != "record":
            raise InvalidInput(f"schema {schema_id} is not an Avro record")
        fields = {field["name"]: field for field in parsed["fields"]}
        id_field = next((name for name in ("diaSourceId", "alertId") if name in fields), "")
        source = _named_record(parsed, fields["diaSource"]["type"]) if "diaSource" in fields else {}
        lightcurve = LightCurveFields.detect([f["name"] for f in source.get("fields", ())])
        return cls(
            version=version,
            schema_id=schema_id,
            parsed=parsed,
            id_field=id_field,
            lightcurve=lightcurve,
        )

    @property
    def name(self) -> str:
        """``lsst:11.1``."""
        return f"{FAMILY}:{self.version}"

    def lightcurve_paths(self) -> list[str]:
        """Projection paths keeping the alert and object ids and the light curve."""
        paths = [self.id_field] if self.id_field else []
        if self.lightcurve is None:
            return paths
        lc = self.lightcurve
        return [
            *paths,
            "diaObject.diaObjectId",
            *(f"diaSource.{name}" for name in ("diaSourceId", *lc.point, lc.ra, lc.dec)),
            *(f"prvDiaSources[].{name}" for name in lc.point),
        ]


class RubinSchemas:
    """The Rubin alert schemas lsst-alert-packet ships, and optionally a schema registry.

    Shipped schemas come first: their ids follow Rubin's convention, so they
    need no network.  Other ids go to ``registry_url`` (a Confluent-compatible
    schema registry) when one is given.  Everything loaded is kept for the
    life of the object; share one instance between codecs to parse each
    schema once.  Safe to use from several threads.
    """

    def __init__(self, registry_url: str | None = None, *, timeout: float = 5.0) -> None:
        self._registry_url = registry_url.rstrip("/") if registry_url else None
        self._timeout = timeout
        self._lock = threading.Lock()
        self._shipped: dict[str, str] | None = None  # version -> schema file
        self._by_id: dict[int, RubinSchema] = {}
        self._unknown: dict[int, str] = {}

    def versions(self) -> list[str]:
        """The shipped schema versions, oldest first: ``["3.0", …, "11.1"]``."""
        return list(self._files())

    def latest(self) -> str:
        """The newest shipped version."""
        return self.versions()[-1]

    def parse(self, name: str) -> str:
        """The version a schema name means: ``lsst`` (the latest), ``lsst:11.1`` or ``11.1``.

        Raises :class:`~sciserve.errors.NotFound` for a version that is not shipped.
        """
        family, _, version = name.strip().partition(":")
        if not version and _VERSION.match(family):
            family, version = FAMILY, family
        if family != FAMILY:
            raise InvalidInput(f"schema {name!r}: expected {FAMILY}, {FAMILY}:MAJOR.MINOR or M.m")
        if not version:
            return self.latest()
        major, minor = _split(version)
        version = f"{major}.{minor}"
        if version not in self._files():
            raise NotFound(
                f"Rubin alert schema {version} is not shipped with the installed "
                f"lsst-alert-packet (it has {', '.join(self.versions())})"
            )
        return version

    @staticmethod
    def schema_id(version: str) -> int:
        """The Confluent schema id of ``version`` (see :func:`schema_id`)."""
        return schema_id(version)

    def get(self, name: str) -> RubinSchema:
        """The schema named ``name`` (as :meth:`parse` reads it)."""
        return self.by_id(schema_id(self.parse(name)))

    def by_id(self, schema_id: int) -> RubinSchema:
        """The schema with Confluent id ``schema_id``.

        Raises :class:`~sciserve.errors.NotFound` when neither the shipped
        schemas nor the registry know it, and :class:`~sciserve.errors.Unavailable`
        when the registry cannot be reached (that answer is not remembered).
        """
        found = self._by_id.get(schema_id)
        if found is not None:
            return found
        with self._lock:
            found = self._by_id.get(schema_id)
            if found is not None:
                return found
            if schema_id in self._unknown:
                raise NotFound(self._unknown[schema_id])
            try:
                found = self._load(schema_id)
            except NotFound as exc:
                if len(self._unknown) >= _MAX_UNKNOWN:
                    self._unknown.clear()
                self._unknown[schema_id] = str(exc)
                raise
            self._by_id[schema_id] = found
            return found

    # -- loading -------------------------------------------------------------

    def _load(self, schema_id: int) -> RubinSchema:
        if schema_id >= 100:
            version = version_of(schema_id)
            path = self._files().get(version)
            if path is not None:
                from lsst.alert.packet.schema import Schema

                definition = Schema.from_file(path).definition
                return RubinSchema.from_definition(definition, schema_id=schema_id, version=version)
        if self._registry_url is None:
            raise NotFound(
                f"unknown schema id {schema_id}: not a Rubin schema shipped with the installed "
                "lsst-alert-packet, and no schema registry is configured"
            )
        return self._fetch(schema_id)

    def _fetch(self, schema_id: int) -> RubinSchema:
        url = f"{self._registry_url}/schemas/ids/{schema_id}"
        try:
            response = httpx.get(url, timeout=self._timeout)
        except httpx.HTTPError as exc:
            raise Unavailable(f"schema registry {url}: {exc}") from exc
        if response.status_code == 404:
            raise NotFound(f"unknown schema id {schema_id}: the schema registry has none ({url})")
        if response.is_error:
            raise Unavailable(f"schema registry {url} answered {response.status_code}")
        try:
            body = response.json()
            if body.get("schemaType", "AVRO") != "AVRO":
                raise NotFound(f"schema {schema_id} at {url} is {body['schemaType']}, not Avro")
            definition = json.loads(body["schema"])
            match = _RECORD_NAME.match(str(definition.get("name", "")))
            version = f"{match[1]}.{match[2]}" if match else f"registry:{schema_id}"
            return RubinSchema.from_definition(definition, schema_id=schema_id, version=version)
        except (ValueError, KeyError, TypeError, AttributeError, InvalidInput) as exc:
            # A schema nobody can parse is, for decoding, no schema at all.
            raise NotFound(f"schema {schema_id} from {url} is unusable: {exc}") from exc

    def _files(self) -> dict[str, str]:
        if self._shipped is None:
            self._shipped = _shipped_schema_files()
        return self._shipped


def _shipped_schema_files() -> dict[str, str]:
    """``{version: path of lsst.vM_m.alert.avsc}`` for every shipped version, in order."""
    try:
        from lsst.alert.packet.schema import get_schema_path, get_schema_root
    except ImportError as exc:
        raise DependencyMissing(
            "Rubin alert schemas need lsst-alert-packet: pip install 'sciserve[streams]'"
        ) from exc
    found: list[tuple[int, int]] = []
    for major in get_schema_root().iterdir():
        if not major.name.isdigit() or not major.is_dir():
            continue
        for minor in major.iterdir():
            primary = minor / f"lsst.v{major.name}_{minor.name}.alert.avsc"
            if minor.name.isdigit() and primary.is_file():
                found.append((int(major.name), int(minor.name)))
    return {
        f"{major}.{minor}": f"{get_schema_path(major, minor)}/lsst.v{major}_{minor}.alert.avsc"
        for major, minor in sorted(found)
    }


def named_types(schema: Mapping[str, Any]) -> dict[str, dict[str, Any]]:
    """Every named type (record, enum, fixed) defined in a parsed schema, by full name."""
    found: dict[str, dict[str, Any]] = {}

    def visit(node: Any) -> None:
        if isinstance(node, list):
            for item in node:
                visit(item)
        elif isinstance(node, dict):
            if node.get("type") in ("record", "error", "enum", "fixed") and "name" in node:
                found.setdefault(node["name"], node)
            for field in node.get("fields", ()):
                visit(field["type"])
            for key in ("items", "values"):
                if key in node:
                    visit(node[key])
            if isinstance(node.get("type"), (dict, list)):
                visit(node["type"])

    visit(schema)
    return found


def _named_record(parsed: Mapping[str, Any], type_: Any) -> dict[str, Any]:
    """The record behind ``type_``, which may be a nullable union or a named reference."""
    named = named_types(parsed)
    for branch in type_ if isinstance(type_, list) else [type_]:
        resolved = named.get(branch, branch) if isinstance(branch, str) else branch
        if isinstance(resolved, dict) and resolved.get("type") == "record":
            return resolved
    return {}


# -- projection ---------------------------------------------------------------

# A projection tree: field name -> sub-tree, or None to keep the field whole.
_Tree = dict[str, "_Tree | None"]


def reader_schema(
    writer: Mapping[str, Any], paths: Iterable[str], *, strict: bool = True
) -> dict[str, Any]:
    """A reader schema that keeps only ``paths`` of the parsed ``writer`` schema.

    Paths are dotted field names from the top-level record:
    ``diaSource.psfFlux``; ``[]`` marks (optionally) a step into an array's
    items, ``prvDiaSources[].band``, and ``{a,b}`` lists several fields at
    the end, ``diaSource.{ra,dec}``.  Nullable unions, arrays and maps are
    stepped through.  A path naming a record keeps it whole.

    With ``strict`` a path the writer lacks raises
    :class:`~sciserve.errors.InvalidInput`; otherwise it is left out, so one
    list of paths can serve several schema versions.

    Projected records get new names that alias the writer's, as Avro's
    schema resolution allows: one writer record (``diaSource``) may be
    projected differently at two places (the alert's source and its
    history).
    """
    tree = _tree(paths)
    named = named_types(writer)
    if strict:
        for path in _missing(writer, tree, named):
            raise InvalidInput(f"schema {writer.get('name')} has no field {path}")
    builder = _Projector(named)
    projected = builder.project(dict(writer), tree)
    assert isinstance(projected, dict)
    return projected


def _tree(paths: Iterable[str]) -> _Tree:
    tree: _Tree = {}
    for path in paths:
        head, brace, rest = path.partition("{")
        leaves = [head]
        if brace:
            if not rest.endswith("}") or (head and not head.endswith(".")):
                raise InvalidInput(f"field path {path!r}: braces only list the last names")
            leaves = [head + name.strip() for name in rest[:-1].split(",")]
        for leaf in leaves:
            steps = [step.removesuffix("[]") for step in leaf.split(".")]
            if not all(steps):
                raise InvalidInput(f"field path {path!r} has an empty step")
            node: _Tree | None = tree
            for depth, step in enumerate(steps):
                assert node is not None
                last = depth == len(steps) - 1
                if last:
                    node[step] = None  # whole field: wins over any sub-selection
                elif step in node and node[step] is None:
                    break  # already kept whole
                else:
                    node = node.setdefault(step, {})
    return tree


def _branches(type_: Any, named: Mapping[str, dict[str, Any]]) -> list[Any]:
    """The concrete types a field's type may hold (unions, arrays and maps opened)."""
    out: list[Any] = []
    for branch in type_ if isinstance(type_, list) else [type_]:
        resolved = named.get(branch, branch) if isinstance(branch, str) else branch
        if isinstance(resolved, dict) and resolved.get("type") == "array":
            out.extend(_branches(resolved["items"], named))
        elif isinstance(resolved, dict) and resolved.get("type") == "map":
            out.extend(_branches(resolved["values"], named))
        elif isinstance(resolved, dict) and isinstance(resolved.get("type"), (dict, list)):
            out.extend(_branches(resolved["type"], named))
        else:
            out.append(resolved)
    return out


def _missing(
    record: Mapping[str, Any], tree: _Tree, named: Mapping[str, dict[str, Any]], prefix: str = ""
) -> list[str]:
    missing: list[str] = []
    fields = {field["name"]: field for field in record.get("fields", ())}
    for name, subtree in tree.items():
        if name not in fields:
            missing.append(prefix + name)
        elif subtree is not None:
            records = [
                b
                for b in _branches(fields[name]["type"], named)
                if isinstance(b, dict) and b.get("type") == "record"
            ]
            if not records:
                missing.extend(f"{prefix}{name}.{sub}" for sub in subtree)
            else:
                # Present if some branch of the union has it.
                lacking = set.intersection(
                    *(set(_missing(r, subtree, named, f"{prefix}{name}.")) for r in records)
                )
                missing.extend(sorted(lacking))
    return missing


class _Projector:
    """Builds one reader schema; tracks which named types it has defined."""

    def __init__(self, named: Mapping[str, dict[str, Any]]) -> None:
        self._named = named
        self._defined: set[str] = set()
        self._counter = 0

    def project(self, type_: Any, tree: _Tree | None) -> Any:
        if tree is None:
            return self._whole(type_)
        if isinstance(type_, list):
            return [self.project(branch, tree) for branch in type_]
        if isinstance(type_, str):
            if type_ not in self._named:
                return type_  # a primitive: nothing below it to select
            type_ = self._named[type_]
        kind = type_.get("type")
        if kind == "array":
            return {"type": "array", "items": self.project(type_["items"], tree)}
        if kind == "map":
            return {"type": "map", "values": self.project(type_["values"], tree)}
        if kind in ("record", "error"):
            return self._record(type_, tree)
        if isinstance(kind, (dict, list)):
            return self.project(kind, tree)
        return self._whole(type_)

    def _record(self, record: Mapping[str, Any], tree: _Tree) -> dict[str, Any]:
        self._counter += 1
        fields = [
            {"name": field["name"], "type": self.project(field["type"], tree[field["name"]])}
            for field in record["fields"]
            if field["name"] in tree
        ]
        return {
            "type": "record",
            # A fresh name, so the same writer record can be projected
            # differently elsewhere in this schema.
            "name": f"{record['name']}_projection{self._counter}",
            "aliases": [record["name"]],
            "fields": fields,
        }

    def _whole(self, type_: Any) -> Any:
        """``type_`` unchanged, with each named type defined once in the reader."""
        if isinstance(type_, list):
            return [self._whole(branch) for branch in type_]
        if isinstance(type_, str):
            if type_ in self._named and type_ not in self._defined:
                return self._whole(self._named[type_])
            return type_
        name = type_.get("name")
        if type_.get("type") in ("record", "error", "enum", "fixed") and name:
            if name in self._defined:
                return name
            self._defined.add(name)
        out = {
            key: copy.deepcopy(value) for key, value in type_.items() if not key.startswith("__")
        }
        if "fields" in out:
            out["fields"] = [
                {**field, "type": self._whole(field["type"])} for field in type_["fields"]
            ]
        for key in ("items", "values"):
            if key in out:
                out[key] = self._whole(type_[key])
        if isinstance(out.get("type"), (dict, list)):
            out["type"] = self._whole(type_["type"])
        return out
