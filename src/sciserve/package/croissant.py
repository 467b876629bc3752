"""Croissant, MLCommons' JSON-LD format for ML datasets: a dataset package's metadata.

A dataset package holds its data files and ``croissant.json``, the Croissant
1.0 document that describes them: name, description, SPDX licence, citation,
creators, one ``cr:FileObject`` per file (with ``sha256`` and size), and one
``cr:RecordSet`` per split whose ``@id`` is the split's name and whose fields
name a column of the split's file each.  The label is the field whose
``dataType`` includes ``cr:Label``; a classification task's classes are a
``sc:Enumeration`` record set the label field references.  What the
dataset is for (``classification`` or ``regression``) is the
``sciserve:task`` property: Croissant 1.0 has no term for it.

:func:`build` writes such a document, :func:`read` reads the part sciserve
relies on (and refuses documents it cannot evaluate on), :func:`validate`
runs MLCommons' own validator (``mlcroissant``, the ``datasets`` extra) on
top.  Nothing here reads the data files.
"""

from __future__ import annotations

import json
import logging
import re
import warnings
from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from typing import Any, Final

from ..errors import DependencyMissing, ManifestError, Problem

__all__ = [
    "CONFORMS_TO",
    "CROISSANT_NAME",
    "DATA_TYPES",
    "TASKS",
    "Column",
    "Croissant",
    "DataFile",
    "Split",
    "build",
    "dumps",
    "read",
    "validate",
]

#: The document's file name in a dataset package.
CROISSANT_NAME: Final = "croissant.json"
CONFORMS_TO: Final = "http://mlcommons.org/croissant/1.0"
#: What a dataset can be a benchmark for.
TASKS: Final = ("classification", "regression")
#: The Croissant data types sciserve writes, by the kind of column.
DATA_TYPES: Final = {
    "integer": "sc:Integer",
    "float": "sc:Float",
    "boolean": "sc:Boolean",
    "text": "sc:Text",
}
_LABEL_TYPE: Final = "cr:Label"
_TASK_KEY: Final = "sciserve:task"
_SPLIT_RE = re.compile(r"^[a-z][a-z0-9_-]{0,63}$")
_CLASSES_ID: Final = "classes"
_SPLITS_ID: Final = "splits"
#: Croissant's well-known split IRIs, for the splits enumeration.
_SPLIT_IRIS: Final = {
    "train": "cr:TrainingSplit",
    "validation": "cr:ValidationSplit",
    "test": "cr:TestSplit",
}

#: The Croissant 1.0 context (as the specification publishes it), plus the
#: ``sciserve`` prefix of the task property.  Written out rather than taken
#: from mlcroissant at run time, so a document's bytes do not depend on the
#: installed validator's version.
_CONTEXT: Final[Mapping[str, Any]] = {
    "@language": "en",
    "@vocab": "https://schema.org/",
    "citeAs": "cr:citeAs",
    "column": "cr:column",
    "conformsTo": "dct:conformsTo",
    "cr": "http://mlcommons.org/croissant/",
    "rai": "http://mlcommons.org/croissant/RAI/",
    "data": {"@id": "cr:data", "@type": "@json"},
    "dataType": {"@id": "cr:dataType", "@type": "@vocab"},
    "dct": "http://purl.org/dc/terms/",
    "equivalentProperty": "cr:equivalentProperty",
    "examples": {"@id": "cr:examples", "@type": "@json"},
    "extract": "cr:extract",
    "field": "cr:field",
    "fileProperty": "cr:fileProperty",
    "fileObject": "cr:fileObject",
    "fileSet": "cr:fileSet",
    "format": "cr:format",
    "includes": "cr:includes",
    "isLiveDataset": "cr:isLiveDataset",
    "jsonPath": "cr:jsonPath",
    "key": "cr:key",
    "md5": "cr:md5",
    "parentField": "cr:parentField",
    "path": "cr:path",
    "recordSet": "cr:recordSet",
    "references": "cr:references",
    "regex": "cr:regex",
    "repeated": "cr:repeated",
    "replace": "cr:replace",
    "samplingRate": "cr:samplingRate",
    "sc": "https://schema.org/",
    "sciserve": "https://w3id.org/sciserve/terms#",
    "separator": "cr:separator",
    "source": "cr:source",
    "subField": "cr:subField",
    "transform": "cr:transform",
}

#: Media types of the data files sciserve reads, by suffix.
_FORMATS: Final = {
    ".parquet": "application/x-parquet",
    # Alert archives travel with a dataset's splits (no record set reads them).
    ".avro": "application/avro",
}


@dataclass(frozen=True)
class Column:
    """One field of a split: a column of its file, with its Croissant data type."""

    name: str
    data_type: str

    def __post_init__(self) -> None:
        if self.data_type not in DATA_TYPES.values():
            raise ValueError(f"unknown data type {self.data_type!r}")


@dataclass(frozen=True)
class DataFile:
    """A file of the dataset: its path in the package, sha256 and size."""

    path: str
    sha256: str
    size: int


@dataclass(frozen=True)
class Split:
    """One split: its file and its columns."""

    name: str
    file: str
    columns: tuple[Column, ...]

    def column(self, name: str) -> Column:
        for column in self.columns:
            if column.name == name:
                return column
        raise KeyError(name)


@dataclass(frozen=True)
class Croissant:
    """What sciserve reads from a Croissant document (see :func:`read`)."""

    name: str
    description: str
    license: str
    citation: str | None
    creators: tuple[str, ...]
    version: str
    task: str
    label: str
    #: Classification: the classes, in the order the document lists them.
    classes: tuple[str, ...]
    splits: Mapping[str, Split]
    files: Mapping[str, DataFile]

    def features(self, split: str) -> tuple[str, ...]:
        """The columns of ``split`` a model sees: every one but the label and ``id``."""
        return tuple(c.name for c in self.splits[split].columns if c.name not in (self.label, "id"))


def _media_type(path: str) -> str:
    for suffix, media in _FORMATS.items():
        if path.endswith(suffix):
            return media
    raise ValueError(f"{path}: neither a Parquet nor an Avro file")


def build(
    *,
    name: str,
    version: str,
    description: str,
    license: str,
    creators: Sequence[str],
    citation: str | None,
    url: str,
    task: str,
    label: str,
    classes: Sequence[str],
    splits: Sequence[Split],
    files: Sequence[DataFile],
) -> dict[str, Any]:
    """A Croissant 1.0 document for a dataset of one Parquet file per split.

    ``license`` is an SPDX identifier (written as its spdx.org URL).  The
    document has no dates or other varying content: the same arguments
    give the same document, byte for byte (:func:`dumps`).
    """
    by_path = {f.path: f for f in files}
    distribution = [
        {
            "@type": "cr:FileObject",
            "@id": f.path,
            "name": f.path,
            "contentUrl": f.path,
            "encodingFormat": _media_type(f.path),
            "contentSize": f"{f.size} B",
            "sha256": f.sha256,
        }
        for f in files
    ]
    record_sets: list[dict[str, Any]] = []
    if task == "classification":
        record_sets.append(
            {
                "@type": "cr:RecordSet",
                "@id": _CLASSES_ID,
                "name": _CLASSES_ID,
                "description": "The classes of the label, in the order models report them.",
                "dataType": "sc:Enumeration",
                "key": {"@id": f"{_CLASSES_ID}/name"},
                "field": [
                    {
                        "@type": "cr:Field",
                        "@id": f"{_CLASSES_ID}/name",
                        "name": "name",
                        "dataType": "sc:Text",
                    }
                ],
                "data": [{f"{_CLASSES_ID}/name": c} for c in classes],
            }
        )
    record_sets.append(
        {
            "@type": "cr:RecordSet",
            "@id": _SPLITS_ID,
            "name": _SPLITS_ID,
            "description": "The splits of the dataset; each has a record set of its name.",
            "dataType": "cr:Split",
            "key": {"@id": f"{_SPLITS_ID}/name"},
            "field": [
                {
                    "@type": "cr:Field",
                    "@id": f"{_SPLITS_ID}/name",
                    "name": "name",
                    "dataType": "sc:Text",
                },
                {
                    "@type": "cr:Field",
                    "@id": f"{_SPLITS_ID}/url",
                    "name": "url",
                    "dataType": "sc:URL",
                },
            ],
            "data": [
                {
                    f"{_SPLITS_ID}/name": s.name,
                    f"{_SPLITS_ID}/url": _SPLIT_IRIS.get(s.name, f"sciserve:split/{s.name}"),
                }
                for s in splits
            ],
        }
    )
    for split in splits:
        if split.file not in by_path:
            raise ValueError(f"split {split.name}: {split.file} is not a file of the dataset")
        fields = []
        for column in split.columns:
            field: dict[str, Any] = {
                "@type": "cr:Field",
                "@id": f"{split.name}/{column.name}",
                "name": column.name,
                "dataType": column.data_type,
                "source": {"fileObject": {"@id": split.file}, "extract": {"column": column.name}},
            }
            if column.name == label:
                field["dataType"] = [column.data_type, _LABEL_TYPE]
                if task == "classification":
                    field["references"] = {"field": {"@id": f"{_CLASSES_ID}/name"}}
            fields.append(field)
        record_sets.append(
            {"@type": "cr:RecordSet", "@id": split.name, "name": split.name, "field": fields}
        )
    doc: dict[str, Any] = {
        "@context": dict(_CONTEXT),
        "@type": "sc:Dataset",
        "name": name,
        "description": description,
        "conformsTo": CONFORMS_TO,
        "license": f"https://spdx.org/licenses/{license}.html",
        "url": url,
        "version": version,
        "creator": [{"@type": "sc:Person", "name": c} for c in creators],
        _TASK_KEY: task,
        "distribution": distribution,
        "recordSet": record_sets,
    }
    if citation:
        doc["citeAs"] = citation
    return doc


def dumps(doc: Mapping[str, Any]) -> bytes:
    """The document's bytes as sciserve writes them (stable key order, UTF-8)."""
    return (json.dumps(doc, indent=2, ensure_ascii=False) + "\n").encode()


def _problem(path: str, message: str, hint: str = "") -> ManifestError:
    return ManifestError([Problem(path, message, hint)], CROISSANT_NAME)


def _ids(value: Any) -> list[str]:
    items = value if isinstance(value, list) else [value]
    return [str(v) for v in items if isinstance(v, str)]


def _text(doc: Mapping[str, Any], key: str, *, required: bool = True) -> str | None:
    value = doc.get(key)
    if isinstance(value, list) and len(value) == 1:
        value = value[0]
    if value is None and not required:
        return None
    if not isinstance(value, str) or not value.strip():
        raise _problem(key, f"'{key}' must be a non-empty text", f"add '{key}' to the document")
    return value


def _license(value: str) -> str:
    # Croissant licences are URLs; sciserve writes spdx.org ones and takes
    # a bare SPDX expression too.
    match = re.fullmatch(r"https?://spdx\.org/licenses/([^/]+?)(?:\.html)?", value)
    return match.group(1) if match else value


def read(doc: Any) -> Croissant:
    """The part of a Croissant document sciserve relies on; :class:`ManifestError` if absent.

    A document fit for evaluation names its task, has exactly one label
    field, and every split is a record set whose fields all come from one
    listed file, the label among them.
    """
    if not isinstance(doc, dict):
        raise _problem("", "a Croissant document is a JSON object")
    if doc.get("@type") not in ("sc:Dataset", "https://schema.org/Dataset"):
        raise _problem("@type", "not a Croissant dataset: '@type' is not 'sc:Dataset'")
    if doc.get("conformsTo") != CONFORMS_TO:
        raise _problem("conformsTo", f"'conformsTo' must be {CONFORMS_TO!r}")
    name = _text(doc, "name")
    description = _text(doc, "description")
    version = _text(doc, "version")
    license = _license(_text(doc, "license") or "")
    citation = _text(doc, "citeAs", required=False)
    task = _text(doc, _TASK_KEY)
    if task not in TASKS:
        raise _problem(_TASK_KEY, f"unknown task {task!r}", f"use one of {', '.join(TASKS)}")
    creators = tuple(str(c.get("name")) for c in _list(doc.get("creator")) if isinstance(c, dict))
    files: dict[str, DataFile] = {}
    for i, entry in enumerate(_list(doc.get("distribution"))):
        where = f"distribution[{i}]"
        if not isinstance(entry, dict) or entry.get("@type") != "cr:FileObject":
            raise _problem(where, "every distribution entry must be a cr:FileObject")
        path = entry.get("contentUrl")
        sha = entry.get("sha256")
        size = re.fullmatch(r"(\d+) B", str(entry.get("contentSize", "")))
        if not isinstance(path, str) or not isinstance(sha, str) or size is None:
            raise _problem(
                where,
                "a file needs 'contentUrl' (its path in the package), 'sha256' "
                "and 'contentSize' ('N B')",
            )
        if entry.get("@id") != path:
            raise _problem(f"{where}.@id", "a file's '@id' must be its 'contentUrl'")
        files[path] = DataFile(path, sha, int(size.group(1)))
    if not files:
        raise _problem("distribution", "the document lists no files")
    labels: list[tuple[str, str]] = []
    classes: tuple[str, ...] = ()
    splits: dict[str, Split] = {}
    for i, record_set in enumerate(_list(doc.get("recordSet"))):
        where = f"recordSet[{i}]"
        if not isinstance(record_set, dict):
            raise _problem(where, "a record set must be an object")
        rid = record_set.get("@id")
        if rid == _CLASSES_ID:
            classes = tuple(
                str(row.get(f"{_CLASSES_ID}/name"))
                for row in _list(record_set.get("data"))
                if isinstance(row, dict)
            )
            continue
        if rid == _SPLITS_ID or "cr:Split" in _ids(record_set.get("dataType")):
            continue
        if not isinstance(rid, str) or not _SPLIT_RE.fullmatch(rid):
            raise _problem(
                f"{where}.@id",
                f"record set {rid!r} is not named like a split",
                "name it after its split: lowercase letters, digits, '_' and '-'",
            )
        columns = []
        source_files = set()
        for j, field in enumerate(_list(record_set.get("field"))):
            fwhere = f"{where}.field[{j}]"
            if not isinstance(field, dict):
                raise _problem(fwhere, "a field must be an object")
            source = field.get("source") or {}
            column = (
                ((source.get("extract") or {}).get("column")) if isinstance(source, dict) else None
            )
            file_id = (
                ((source.get("fileObject") or {}).get("@id")) if isinstance(source, dict) else None
            )
            if not isinstance(column, str) or file_id not in files:
                raise _problem(
                    fwhere, "a field must come from a column of a listed file ('source')"
                )
            source_files.add(file_id)
            types = _ids(field.get("dataType"))
            data_type = next((t for t in types if t in DATA_TYPES.values()), None)
            if data_type is None:
                raise _problem(
                    f"{fwhere}.dataType",
                    f"unsupported data type {types}",
                    f"use one of {', '.join(DATA_TYPES.values())}",
                )
            if _LABEL_TYPE in types:
                labels.append((rid, column))
            columns.append(Column(column, data_type))
        if len(source_files) != 1:
            raise _problem(where, f"split {rid!r} must take its fields from exactly one file")
        splits[rid] = Split(rid, source_files.pop(), tuple(columns))
    if not splits:
        raise _problem("recordSet", "the document describes no split")
    label_names = {column for _, column in labels}
    if not labels:
        raise _problem(
            "recordSet",
            "no label field: no field has the data type 'cr:Label'",
            "mark the label column (sciserve datasets add --label COLUMN)",
        )
    if len(label_names) != 1 or {rid for rid, _ in labels} != set(splits):
        raise _problem(
            "recordSet",
            "every split needs the same one label field",
            "mark one column as label in every split",
        )
    label = label_names.pop()
    if task == "classification" and not classes:
        raise _problem(
            "recordSet", "a classification dataset lists its classes (record set 'classes')"
        )
    return Croissant(
        name=name or "",
        description=description or "",
        license=license,
        citation=citation,
        creators=creators,
        version=version or "",
        task=task,
        label=label,
        classes=classes,
        splits=splits,
        files=files,
    )


def _list(value: Any) -> list[Any]:
    if value is None:
        return []
    return value if isinstance(value, list) else [value]


def validate(doc: Mapping[str, Any]) -> list[Problem]:
    """Problems MLCommons' validator finds in ``doc`` (no data read); needs ``mlcroissant``."""
    try:
        import mlcroissant
    except ImportError as exc:
        raise DependencyMissing(
            "validating Croissant documents needs mlcroissant: pip install 'sciserve[datasets]'"
        ) from exc
    # mlcroissant logs through absl at WARNING for every non-standard
    # context key (ours has the sciserve prefix); the verdict is what counts.
    absl = logging.getLogger("absl")
    level = absl.level
    absl.setLevel(logging.ERROR)
    try:
        with warnings.catch_warnings():
            # rdflib's deprecations inside mlcroissant, not ours to act on.
            warnings.simplefilter("ignore", DeprecationWarning)
            mlcroissant.Dataset(jsonld=dict(doc))
    except mlcroissant.ValidationError as exc:
        lines = [ln.strip(" -") for ln in str(exc).splitlines()[1:] if ln.strip()]
        return [Problem("croissant", ln, "") for ln in lines or [str(exc)]]
    except Exception as exc:  # the validator's own failures are findings too
        return [Problem("croissant", f"mlcroissant cannot read the document: {exc}")]
    finally:
        absl.setLevel(level)
    return []
