"""Dataset packages: data files, their Croissant document and a manifest of kind ``dataset``.

A dataset package is a package like a model's (``sciserve.yaml`` listing
every file with size and sha256), so the registry publishes, stores,
versions, tags, yanks, verifies and exports it with the same code.  Its
files are one Parquet file per split (``<split>.parquet``) and
``croissant.json`` (:mod:`.croissant`), which says what the columns are and
which is the label.

:func:`assemble` makes one from Parquet files (their columns read from the
Parquet schema, never guessed), :func:`from_croissant` from a directory
that already holds a Croissant document and the files it names;
:func:`check` is what publishing checks; :func:`load_split` reads a split
of a (pulled) dataset as numpy arrays.  Reading Parquet needs ``pyarrow``
and validating Croissant ``mlcroissant`` (the ``datasets`` extra).
"""

from __future__ import annotations

import json
import re
import shutil
import tempfile
from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np
import numpy.typing as npt

from .._hashing import sha256_file
from ..errors import (
    Conflict,
    DependencyMissing,
    IntegrityError,
    InvalidInput,
    ManifestError,
    PayloadTooLarge,
    Problem,
)
from . import croissant
from .croissant import CROISSANT_NAME, Column, Croissant, DataFile, Split
from .manifest import (
    DATASET,
    DATASET_RUNTIME,
    MANIFEST_NAME,
    Author,
    Citation,
    FileEntry,
    Manifest,
    check_member_path,
    dump_manifest,
)

__all__ = [
    "DatasetSource",
    "SplitData",
    "assemble",
    "check",
    "from_croissant",
    "load_split",
    "read_croissant",
    "write_parquet",
]

_SPLIT_RE = re.compile(r"^[a-z][a-z0-9_-]{0,63}$")
#: Largest Croissant document read (it describes files, it does not hold data).
_MAX_CROISSANT_BYTES = 4 * 2**20


@dataclass(frozen=True)
class DatasetSource:
    """What a dataset is, beside its files: the manifest's and the document's metadata."""

    name: str
    version: str
    #: SPDX licence expression (required: data is not free by default).
    license: str
    namespace: str = "default"
    description: str = ""
    creators: tuple[str, ...] = ()
    citation: str | None = None
    task: str = "classification"
    label: str = "label"
    #: Classification: the classes in model output order; ``None`` takes the
    #: label column's distinct values, sorted.
    classes: tuple[str, ...] | None = None
    url: str | None = None
    tags: tuple[str, ...] = ()


@dataclass(frozen=True)
class SplitData:
    """One split as arrays: ``features`` ``(n, f)`` float32 in ``feature_names``
    order (``(n, 0)`` when loaded without them: ``feature_names`` still names
    the split's feature columns)."""

    features: npt.NDArray[np.float32]
    labels: npt.NDArray[Any]
    feature_names: tuple[str, ...]
    label: str
    ids: npt.NDArray[Any] | None = None


def _pyarrow() -> Any:
    try:
        import pyarrow.parquet as pq
    except ImportError as exc:
        raise DependencyMissing(
            "datasets need pyarrow to read Parquet: pip install 'sciserve[datasets]'"
        ) from exc
    return pq


def _data_type(arrow_type: Any) -> str | None:
    import pyarrow as pa

    if pa.types.is_boolean(arrow_type):
        return croissant.DATA_TYPES["boolean"]
    if pa.types.is_integer(arrow_type):
        return croissant.DATA_TYPES["integer"]
    if pa.types.is_floating(arrow_type):
        return croissant.DATA_TYPES["float"]
    if pa.types.is_string(arrow_type) or pa.types.is_large_string(arrow_type):
        return croissant.DATA_TYPES["text"]
    return None


def _columns(path: Path, split: str) -> tuple[Column, ...]:
    pq = _pyarrow()
    try:
        schema = pq.read_schema(path)
    except Exception as exc:  # pyarrow raises several kinds for a broken file
        raise InvalidInput(f"split {split}: {path.name} is not a readable Parquet file") from exc
    columns = []
    for field in schema:
        data_type = _data_type(field.type)
        if data_type is None:
            raise InvalidInput(
                f"split {split}: column {field.name!r} has type {field.type}, which a "
                "benchmark dataset cannot hold; use numbers, booleans or text"
            )
        columns.append(Column(field.name, data_type))
    return tuple(columns)


def _check_file(path: Path, split: str, max_bytes: int) -> int:
    if not _SPLIT_RE.fullmatch(split):
        raise InvalidInput(
            f"{split!r} is not a split name (lowercase letters, digits, '_' and '-'); "
            "name files after their split: train.parquet, test.parquet"
        )
    if path.is_symlink() or not path.is_file():
        raise InvalidInput(f"{path} is not a regular file")
    if path.suffix not in (".parquet", ".npz"):
        raise InvalidInput(
            f"{path.name}: a split is a Parquet file (.parquet) or NumPy arrays (.npz)"
        )
    size = path.stat().st_size
    if size > max_bytes:
        raise PayloadTooLarge(
            f"{path.name} is {size} bytes, over the {max_bytes}-byte limit for a dataset "
            "file ([limits] max_dataset_file_bytes)"
        )
    return size


def _classes(paths: Mapping[str, Path], label: str) -> tuple[str, ...]:
    pq = _pyarrow()
    values: set[str] = set()
    for path in paths.values():
        column = pq.read_table(path, columns=[label]).column(label)
        values.update(str(v) for v in column.unique().to_pylist() if v is not None)
    return tuple(sorted(values))


#: How sciserve writes Parquet: fixed row groups, compression and encoding,
#: so the same table gives the same bytes (for one pyarrow release, which
#: Parquet records as ``created_by``).
_ROW_GROUP = 1024
#: The magic bytes every Avro object container file starts with.
_AVRO_MAGIC = b"Obj\x01"


def write_parquet(table: Any, path: Path, *, dictionary: Sequence[str] = ()) -> None:
    """Write a pyarrow ``table`` reproducibly (see :data:`_ROW_GROUP`)."""
    pq = _pyarrow()
    pq.write_table(
        table,
        path,
        row_group_size=_ROW_GROUP,
        compression="zstd",
        compression_level=3,
        use_dictionary=list(dictionary),
        write_statistics=True,
        store_schema=True,
        version="2.6",
        data_page_version="1.0",
    )


def _npz_to_parquet(path: Path, target: Path, label: str, max_bytes: int) -> None:
    """A NumPy ``.npz`` split (``features``, ``labels``; optional ``feature_names``,
    ``classes``, ``ids``) as a Parquet file; nothing pickled is ever loaded."""
    import zipfile

    import pyarrow as pa

    try:
        with zipfile.ZipFile(path) as archive:
            unpacked = sum(info.file_size for info in archive.infolist())
    except (zipfile.BadZipFile, OSError) as exc:
        raise InvalidInput(f"{path.name} is not a readable .npz file") from exc
    if unpacked > max_bytes:
        raise PayloadTooLarge(
            f"{path.name} unpacks to {unpacked} bytes, over the {max_bytes}-byte limit for a "
            "dataset file ([limits] max_dataset_file_bytes)"
        )
    try:
        with np.load(path, allow_pickle=False) as npz:
            arrays = {key: npz[key] for key in npz.files}
    except (ValueError, OSError, zipfile.BadZipFile) as exc:
        raise InvalidInput(f"{path.name}: {exc} (object arrays are refused)") from exc
    if "features" not in arrays or "labels" not in arrays:
        raise InvalidInput(
            f"{path.name} needs arrays 'features' (rows by features) and 'labels' (one per "
            f"row); it has {', '.join(sorted(arrays)) or 'none'}"
        )
    x, y = arrays["features"], arrays["labels"]
    if x.ndim != 2 or x.dtype.kind not in "biuf":
        raise InvalidInput(
            f"{path.name}: 'features' must be a 2-D numeric array, not {x.dtype}{list(x.shape)}"
        )
    if y.ndim != 1 or len(y) != len(x) or y.dtype.kind not in "biuU":
        raise InvalidInput(f"{path.name}: 'labels' must hold one integer or text label per row")
    names = [f"f{i}" for i in range(x.shape[1])]
    if "feature_names" in arrays:
        given = arrays["feature_names"]
        if given.shape != (x.shape[1],) or given.dtype.kind != "U":
            raise InvalidInput(f"{path.name}: 'feature_names' must name each feature column")
        names = [str(n) for n in given]
    if len(set(names)) != len(names) or label in names or "id" in names:
        raise InvalidInput(f"{path.name}: feature names must be unique and not {label!r} or 'id'")
    if "classes" in arrays:
        classes = arrays["classes"]
        if y.dtype.kind not in "iu" or classes.ndim != 1 or classes.dtype.kind != "U":
            raise InvalidInput(f"{path.name}: 'classes' names integer labels: a 1-D text array")
        if len(y) and (y.min() < 0 or y.max() >= len(classes)):
            raise InvalidInput(f"{path.name}: a label is outside the {len(classes)} classes")
        y = classes[y]
    columns: dict[str, Any] = {}
    if "ids" in arrays:
        ids = arrays["ids"]
        if ids.shape != (len(x),) or ids.dtype.kind not in "iu":
            raise InvalidInput(f"{path.name}: 'ids' must hold one integer per row")
        columns["id"] = pa.array(ids.astype(np.int64))
    for i, name in enumerate(names):
        column = np.ascontiguousarray(x[:, i])
        columns[name] = pa.array(column.astype(np.float32) if x.dtype.kind == "f" else column)
    columns[label] = pa.array(y.tolist() if y.dtype.kind == "U" else y)
    write_parquet(pa.table(columns), target, dictionary=[label])


def _attachment_name(path: Path) -> str:
    if path.is_symlink() or not path.is_file():
        raise InvalidInput(f"{path} is not a regular file")
    if path.suffix != ".avro" or not re.fullmatch(r"[A-Za-z0-9][A-Za-z0-9._-]{0,200}", path.name):
        raise InvalidInput(f"{path.name}: alert archives are Avro files with plain names (.avro)")
    with path.open("rb") as fh:
        if fh.read(4) != _AVRO_MAGIC:
            raise InvalidInput(f"{path.name} is not an Avro object container file")
    return f"alerts/{path.name}"


def assemble(
    splits: Mapping[str, Path],
    out: Path,
    source: DatasetSource,
    *,
    max_file_bytes: int,
    attachments: Sequence[Path] = (),
) -> Manifest:
    """Write a dataset package of ``splits`` into the new directory ``out``.

    A split is a Parquet file or a NumPy ``.npz`` (converted to Parquet:
    arrays ``features`` and ``labels``, optionally ``feature_names``,
    ``classes`` naming integer labels, and ``ids``).  Each is written as
    ``<split>.parquet`` (so no name a caller gave reaches the package),
    hashed and described from its Parquet schema; the label column must be
    in every split.  ``attachments`` are Avro alert archives that travel
    with the data (``alerts/<name>``, checksummed, in the document's
    distribution) without being a split.  Raises on a missing label, an
    unreadable file or one over ``max_file_bytes``; ``out`` may then be
    left for the caller to remove.
    """
    if not splits:
        raise InvalidInput("a dataset needs at least one Parquet or .npz file")
    if source.task not in croissant.TASKS:
        raise InvalidInput(f"unknown task {source.task!r}; use one of {', '.join(croissant.TASKS)}")
    for split, path in splits.items():
        _check_file(path, split, max_file_bytes)
    attached = {_attachment_name(path): path for path in attachments}
    if len(attached) != len(attachments):
        raise InvalidInput("two alert archives have the same name")
    for path in attachments:
        if path.stat().st_size > max_file_bytes:
            raise PayloadTooLarge(
                f"{path.name} is over the {max_file_bytes}-byte limit for a dataset file "
                "([limits] max_dataset_file_bytes)"
            )
    with tempfile.TemporaryDirectory(prefix=f".{out.name}-", dir=out.parent) as tmp:
        parquet = {}
        for split, path in sorted(splits.items()):
            if path.suffix == ".npz":
                parquet[split] = Path(tmp) / f"{split}.parquet"
                _npz_to_parquet(path, parquet[split], source.label, max_file_bytes)
            else:
                parquet[split] = path
        return _assemble(parquet, attached, out, source, max_file_bytes)


def _assemble(
    splits: Mapping[str, Path],
    attached: Mapping[str, Path],
    out: Path,
    source: DatasetSource,
    max_file_bytes: int,
) -> Manifest:
    described = {split: _columns(path, split) for split, path in sorted(splits.items())}
    for split, columns in described.items():
        names = [c.name for c in columns]
        if source.label not in names:
            raise InvalidInput(
                f"split {split} has no label field {source.label!r} (its columns: "
                f"{', '.join(names)}); name the label column with --label"
            )
    classes: tuple[str, ...] = ()
    if source.task == "classification":
        classes = source.classes or _classes(splits, source.label)
        found = set(_classes(splits, source.label))
        unknown = sorted(found - set(classes))
        if unknown:
            raise InvalidInput(f"labels {unknown} are not among the classes {list(classes)}")
    _make_dir(out)
    files = []
    copies = {f"{split}.parquet": splits[split] for split in described} | dict(attached)
    for name, path in copies.items():
        target = out / name
        target.parent.mkdir(parents=True, exist_ok=True)
        shutil.copyfile(path, target)
        sha, size = sha256_file(target)
        if size > max_file_bytes:  # it grew while being copied
            raise PayloadTooLarge(f"{name} is over the {max_file_bytes}-byte limit")
        files.append(DataFile(name, sha, size))
    doc = croissant.build(
        name=source.name,
        version=source.version,
        description=source.description or f"The {source.name} dataset.",
        license=source.license,
        creators=source.creators,
        citation=source.citation,
        url=source.url or f"urn:sciserve:{source.namespace}/{source.name}:{source.version}",
        task=source.task,
        label=source.label,
        classes=classes,
        splits=[Split(s, f"{s}.parquet", cols) for s, cols in described.items()],
        files=files,
    )
    (out / CROISSANT_NAME).write_bytes(croissant.dumps(doc))
    return _write_manifest(out, source, files)


def from_croissant(
    root: Path, out: Path, *, namespace: str = "default", max_file_bytes: int
) -> Manifest:
    """A dataset package in the new directory ``out`` from ``root``, which holds
    ``croissant.json`` and the files it lists (their sha256 checked)."""
    doc = _load_document(root / CROISSANT_NAME)
    card = croissant.read(doc)
    problems = croissant.validate(doc)
    if problems:
        raise ManifestError(problems, CROISSANT_NAME)
    _make_dir(out)
    files = []
    for entry in card.files.values():
        try:
            check_member_path(entry.path)
        except ValueError as exc:
            raise InvalidInput(f"{CROISSANT_NAME}: {exc}") from exc
        path = root / entry.path
        if path.is_symlink() or not path.is_file():
            raise InvalidInput(
                f"{CROISSANT_NAME} lists {entry.path}, which is not a file in {root}"
            )
        if path.stat().st_size > max_file_bytes:
            raise PayloadTooLarge(
                f"{entry.path} is over the {max_file_bytes}-byte limit for a dataset file"
            )
        target = out / entry.path
        target.parent.mkdir(parents=True, exist_ok=True)
        shutil.copyfile(path, target)
        sha, size = sha256_file(target)
        if sha != entry.sha256 or size != entry.size:
            raise IntegrityError(
                f"{entry.path} has sha256 {sha} and {size} bytes; {CROISSANT_NAME} says "
                f"{entry.sha256} and {entry.size} bytes"
            )
        files.append(entry)
    shutil.copyfile(root / CROISSANT_NAME, out / CROISSANT_NAME)
    source = DatasetSource(
        name=card.name,
        version=card.version,
        namespace=namespace,
        description=card.description,
        license=card.license,
        creators=card.creators,
        citation=card.citation,
        task=card.task,
        label=card.label,
    )
    return _write_manifest(out, source, files)


def _make_dir(out: Path) -> None:
    try:
        out.mkdir(parents=True)
    except FileExistsError as exc:
        raise Conflict(f"{out} already exists; choose a new directory") from exc


def _write_manifest(out: Path, source: DatasetSource, files: Sequence[DataFile]) -> Manifest:
    doc_sha, doc_size = sha256_file(out / CROISSANT_NAME)
    manifest = Manifest(
        kind=DATASET,
        name=source.name,
        version=source.version,
        namespace=source.namespace,
        description=source.description or None,
        runtime=DATASET_RUNTIME,
        license=source.license,
        authors=[Author(name=c) for c in source.creators],
        citation=Citation(text=source.citation) if source.citation else None,
        tags=list(source.tags),
        files=[
            FileEntry(path=CROISSANT_NAME, size=doc_size, sha256=doc_sha, role="metadata"),
            *(FileEntry(path=f.path, size=f.size, sha256=f.sha256, role="data") for f in files),
        ],
    )
    (out / MANIFEST_NAME).write_text(dump_manifest(manifest), encoding="utf-8")
    return manifest


def _load_document(path: Path) -> Any:
    try:
        size = path.stat().st_size
    except OSError as exc:
        raise ManifestError(
            [Problem("", f"cannot read {path.name}: {exc.strerror}")], CROISSANT_NAME
        ) from exc
    if size > _MAX_CROISSANT_BYTES:
        raise ManifestError(
            [Problem("", f"{path.name} is {size} bytes, over {_MAX_CROISSANT_BYTES}")],
            CROISSANT_NAME,
        )
    try:
        return json.loads(path.read_bytes())
    except (ValueError, UnicodeDecodeError) as exc:
        raise ManifestError([Problem("", f"not valid JSON: {exc}")], CROISSANT_NAME) from exc
    except RecursionError as exc:  # a few KB of brackets nest deeper than the parser goes
        raise ManifestError([Problem("", "the JSON nests too deeply")], CROISSANT_NAME) from exc


def read_croissant(root: Path) -> Croissant:
    """The Croissant document of the dataset package at ``root``."""
    return croissant.read(_load_document(Path(root) / CROISSANT_NAME))


def check(root: Path, manifest: Manifest) -> list[Problem]:
    """What publishing a dataset checks beyond every package's file checks.

    The document must be there, be read by :func:`croissant.read`, pass
    mlcroissant, and list exactly the manifest's data files with the same
    sha256 and size, so the two can never tell different stories.
    """
    try:
        entry = manifest.file(CROISSANT_NAME)
    except KeyError:
        return [Problem("files", f"a dataset lists its {CROISSANT_NAME}", "add the document")]
    if entry.role != "metadata":
        return [Problem("files", f"{CROISSANT_NAME} has role 'metadata'")]
    try:
        doc = _load_document(root / CROISSANT_NAME)
        card = croissant.read(doc)
    except ManifestError as exc:
        return list(exc.problems)
    problems = croissant.validate(doc)
    data = {f.path: f for f in manifest.files if f.path != CROISSANT_NAME}
    if set(data) != set(card.files):
        problems.append(
            Problem(
                "files",
                f"the manifest lists {sorted(data)} and {CROISSANT_NAME} {sorted(card.files)}",
                "list the same data files in both",
            )
        )
    for path, described in card.files.items():
        listed = data.get(path)
        if listed is not None and (listed.sha256, listed.size) != (
            described.sha256,
            described.size,
        ):
            problems.append(
                Problem("files", f"{path}: the manifest and {CROISSANT_NAME} disagree on its bytes")
            )
    if not problems:
        problems += _schema_problems(root, card)
    return problems


def _schema_problems(root: Path, card: Croissant) -> list[Problem]:
    """Every split's file is Parquet holding the document's columns with their types:
    a document that describes other data than it ships would give wrong answers."""
    problems = []
    for split in card.splits.values():
        where = f"recordSet {split.name}"
        try:
            found = {c.name: c.data_type for c in _columns(root / split.file, split.name)}
        except InvalidInput as exc:
            problems.append(Problem(where, str(exc)))
            continue
        for column in split.columns:
            actual = found.get(column.name)
            if actual is None:
                problems.append(
                    Problem(where, f"{split.file} has no column {column.name!r}", "fix the field")
                )
            elif actual != column.data_type:
                problems.append(
                    Problem(
                        where,
                        f"{split.file}: column {column.name!r} is {actual}, the document "
                        f"says {column.data_type}",
                    )
                )
    return problems


def load_split(root: Path, split: str, *, features: bool = True) -> SplitData:
    """Split ``split`` of the dataset package at ``root`` (e.g. ``Registry.pull``'s result).

    The label column comes from the Croissant document; the features are
    every other column but ``id``, in the document's order, as float32.
    ``features=False`` reads only the labels and ids (for a batch job that
    reads the features itself, however many rows there are).
    """
    root = Path(root)
    card = read_croissant(root)
    if split not in card.splits:
        raise InvalidInput(f"no split {split!r}; the dataset has {', '.join(card.splits)}")
    info = card.splits[split]
    names = card.features(split)
    pq = _pyarrow()
    wanted = None
    if not features:
        present = {c.name for c in info.columns}
        wanted = [card.label, *(["id"] if "id" in present else [])]
    try:
        table = pq.read_table(root / info.file, columns=wanted)
    except Exception as exc:  # pyarrow raises several kinds for a broken file
        raise InvalidInput(f"split {split}: {info.file} is not a readable Parquet file") from exc
    missing = [n for n in (*names, card.label) if n not in table.column_names]
    if not features:
        missing = [n for n in missing if n == card.label]
        names_loaded: tuple[str, ...] = ()
    else:
        names_loaded = names
    if missing:
        raise InvalidInput(f"split {split}: {info.file} has no column(s) {', '.join(missing)}")
    if any(info.column(n).data_type == croissant.DATA_TYPES["text"] for n in names):
        raise InvalidInput(f"split {split}: a text column cannot be a model's feature")
    matrix = (
        np.column_stack(
            [
                table.column(n).to_numpy(zero_copy_only=False).astype(np.float32)
                for n in names_loaded
            ]
        )
        if names_loaded
        else np.empty((table.num_rows, 0), np.float32)
    )
    labels = table.column(card.label).to_numpy(zero_copy_only=False)
    ids = table.column("id").to_numpy(zero_copy_only=False) if "id" in table.column_names else None
    return SplitData(
        features=np.ascontiguousarray(matrix, dtype=np.float32),
        labels=labels,
        feature_names=names,
        label=card.label,
        ids=ids,
    )
