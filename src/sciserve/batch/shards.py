"""An archive cut into shards, and a shard's rows turned into model inputs.

A shard is one Parquet row group, or one whole JSON Lines or Avro file.
Files are taken in sorted order and row groups in file order, so the same
input always gives the same shards with the same ids: that is what lets a
re-run of a job recognise the shards it already finished.

Every input row has an id: the value of the spec's ``id`` column, or else
``file:row`` (the file relative to the input's root, and the row's index in
it).  Each row ends as model input or as a failure naming that id, never
dropped; :func:`input_ids` reads the ids alone, for verifying outputs.
"""

from __future__ import annotations

import contextlib
import glob
import json
import os
import posixpath
import tempfile
from collections.abc import Iterator, Sequence
from dataclasses import dataclass, field
from pathlib import Path, PurePosixPath
from typing import Any

import numpy as np
import numpy.typing as npt

from ..errors import DependencyMissing, InvalidInput
from ..streams.base import error_text
from ..streams.spec import BatchSpec

__all__ = [
    "InputFile",
    "InputLayout",
    "Shard",
    "ShardRows",
    "find_inputs",
    "input_id_column",
    "input_ids",
    "plan",
    "position_ids",
    "read_shard",
    "read_values",
]

_SUFFIXES = {".parquet": "parquet", ".jsonl": "jsonl", ".avro": "avro"}
_GLOB_CHARS = frozenset("*?[")


@dataclass(frozen=True)
class InputLayout:
    """What one row of model input looks like: every model of the job takes it."""

    #: numpy dtype string, e.g. ``<f4``.
    dtype: str
    #: The shape of one row (the model's input shape without the batch dim);
    #: ``-1`` where the model takes any size.
    row_shape: tuple[int, ...]


@dataclass(frozen=True)
class Shard:
    """One unit of work: a Parquet row group or a whole file."""

    id: str
    path: str
    #: ``path`` relative to the input's root: the file part of row ids.
    label: str
    format: str
    row_group: int | None = None
    #: Index in its file of the shard's first row.
    first_row: int = 0
    #: Rows, when the file's metadata says (Parquet).
    rows: int | None = None


@dataclass
class ShardRows:
    """A shard read and converted: ids of all rows, and the model input of
    the rows that converted."""

    #: The row ids, in input order: an Arrow string array.
    ids: Any
    #: Indices (into ``ids``) of the rows that became model input, in order
    #: (a ``range`` when every row did: no Python int per row).
    good: Sequence[int] = field(default_factory=list)
    matrix: npt.NDArray[Any] | None = None
    #: Alert ids of the good rows (alert input).
    alert_ids: list[int | None] = field(default_factory=list)
    #: Decoded alerts of the good rows, when the filter reads them.
    alerts: list[dict[str, Any] | None] = field(default_factory=list)
    #: ``(row index, stage, error, reason)`` of the rows that did not.
    failures: list[tuple[int, str, str, str]] = field(default_factory=list)
    #: The id column as read (Parquet input with ``id:``), before its values
    #: became the text of ``ids``: what verification compares the input with.
    source_ids: Any = None
    _id_list: list[str] | None = field(default=None, repr=False)

    def row_id(self, index: int) -> str:
        """The id of row ``index`` (for dead letters: the ids as Python
        strings are made once, and only for shards that have some)."""
        if self._id_list is None:
            self._id_list = self.ids.to_pylist()
        return self._id_list[index]


def _pyarrow() -> tuple[Any, Any]:
    try:
        import pyarrow as pa
        import pyarrow.parquet as pq
    except ImportError as exc:  # pragma: no cover - depends on the installed extras
        raise DependencyMissing("batch jobs need pyarrow: pip install 'sciserve[dask]'") from exc
    return pa, pq


# -- finding the input ----------------------------------------------------------


@dataclass(frozen=True)
class InputFile:
    """One file of the input."""

    #: A local path or an fsspec URL.
    path: str
    #: ``path`` relative to the input's root: the file part of row ids.
    label: str
    format: str
    size: int
    #: What changes when the file does: its mtime, or its ETag on object stores.
    version: str


def _filesystem(spec: BatchSpec, url: str) -> tuple[Any, str]:
    try:
        import fsspec

        fs, target = fsspec.core.url_to_fs(url, **spec.storage_options)
    except ImportError as exc:
        raise DependencyMissing(
            f"reading {url.split('://')[0]}:// input needs its fsspec backend "
            f"(for S3: pip install 'sciserve[s3]'): {exc}"
        ) from exc
    except ValueError as exc:  # fsspec's "Protocol not known"
        raise InvalidInput(f"input {url}: {exc}") from exc
    return fs, str(target)


def find_inputs(spec: BatchSpec) -> list[InputFile]:
    """The input's files with their formats, sorted.

    ``input`` is a local path or an fsspec URL (``s3://…``; credentials from
    the environment or the spec's ``storage_options``).  A directory is
    searched recursively (hive-style ``key=value/`` partitions included) for
    files of a known suffix (or of the spec's ``format``); hidden files and
    ``_``-files (``_SUCCESS``, ``_metadata``) are skipped.
    """
    where = spec.input
    if "://" in where:
        try:
            return _remote_inputs(spec, where)
        except OSError as exc:
            raise InvalidInput(f"cannot list input {where}: {error_text(exc)}") from exc
    path = Path(where)
    if _GLOB_CHARS & set(where):
        files = sorted(Path(p) for p in glob.glob(where, recursive=True) if Path(p).is_file())
        root = Path(os.path.commonpath([f.parent for f in files])) if files else path.parent
    elif path.is_dir():
        root = path
        files = sorted(
            p
            for p in path.rglob("*")
            if p.is_file()
            and _data_file(spec, p.name)
            and not any(part.startswith((".", "_")) for part in p.relative_to(path).parts)
        )
    elif path.is_file():
        root, files = path.parent, [path]
    else:
        raise InvalidInput(f"input {where} does not exist")
    found = []
    for file in files:
        stat = file.stat()
        label = file.relative_to(root).as_posix()
        found.append(
            InputFile(str(file), label, _format(spec, label), stat.st_size, str(stat.st_mtime_ns))
        )
    if not found:
        raise InvalidInput(f"input {where} holds no files")
    return found


def _remote_inputs(spec: BatchSpec, where: str) -> list[InputFile]:
    fs, target = _filesystem(spec, where)
    target = target.rstrip("/")
    if _GLOB_CHARS & set(target):
        names = sorted(n for n in fs.glob(target) if fs.isfile(n))
        root = posixpath.commonpath([posixpath.dirname(n) for n in names]) if names else ""
    elif fs.isdir(target):
        root = target
        names = sorted(
            n
            for n in fs.find(target)
            if _data_file(spec, posixpath.basename(n))
            and not any(
                part.startswith((".", "_")) for part in posixpath.relpath(n, target).split("/")
            )
        )
    elif fs.isfile(target):
        root, names = posixpath.dirname(target), [target]
    else:
        raise InvalidInput(f"input {where} does not exist")
    found = []
    for name in names:
        info = fs.info(name)
        label = posixpath.relpath(name, root)
        version = info.get("ETag") or info.get("LastModified") or info.get("mtime") or ""
        found.append(
            InputFile(
                fs.unstrip_protocol(name),
                label,
                _format(spec, label),
                int(info.get("size") or 0),
                str(version),
            )
        )
    if not found:
        raise InvalidInput(f"input {where} holds no files")
    return found


def _data_file(spec: BatchSpec, name: str) -> bool:
    """Whether a file found in an input directory is data: of the spec's
    format, or with a known suffix (a HATS catalogue's ``properties`` and
    ``partition_info.csv`` beside its Parquet files are not)."""
    suffix = PurePosixPath(name).suffix
    if spec.format is not None:
        return _SUFFIXES.get(suffix, spec.format) == spec.format
    return suffix in _SUFFIXES


def _format(spec: BatchSpec, label: str) -> str:
    fmt = spec.format or _SUFFIXES.get(PurePosixPath(label).suffix)
    if fmt is None:
        raise InvalidInput(
            f"input file {label} has no known suffix ({', '.join(_SUFFIXES)}); "
            "set format: in the spec"
        )
    return fmt


@contextlib.contextmanager
def _parquet(spec: BatchSpec, path: str) -> Iterator[Any]:
    """The Parquet file at ``path`` (local or fsspec URL), open."""
    _, pq = _pyarrow()
    if "://" not in path:
        with pq.ParquetFile(path) as parquet:
            yield parquet
        return
    fs, target = _filesystem(spec, path)
    with fs.open(target, "rb") as fh, pq.ParquetFile(fh) as parquet:
        yield parquet


@contextlib.contextmanager
def _local(spec: BatchSpec, path: str) -> Iterator[Path]:
    """``path`` as a local file: itself, or a temporary copy of a remote one."""
    if "://" not in path:
        yield Path(path)
        return
    fs, target = _filesystem(spec, path)
    with tempfile.TemporaryDirectory(prefix="sciserve-batch-") as tmp:
        local = Path(tmp) / posixpath.basename(target)
        fs.get_file(target, str(local))
        yield local


def read_values(spec: BatchSpec, shard: Shard) -> list[bytes]:
    """The message bytes of every record of an alert shard."""
    if shard.format == "parquet":
        with _parquet(spec, shard.path) as parquet:
            table = parquet.read_row_group(shard.row_group, columns=["value"])
        values: list[bytes] = table.column(0).to_pylist()
        return values
    from ..streams.files import read_messages

    with _local(spec, shard.path) as local:
        return [m.value for m in read_messages(local, shard.format)]


# -- planning -------------------------------------------------------------------


def plan(spec: BatchSpec, layout: InputLayout | None) -> list[Shard]:
    """The job's shards, after checking every file can be read and holds what
    the spec names (columns, their types and sizes against ``layout``).

    ``layout`` is the models' input (needed for tabular input).  Problems
    raise :class:`~sciserve.errors.InvalidInput` before any work starts.
    """
    tabular = spec.columns is not None
    if tabular:
        assert layout is not None
        _check_layout(spec, layout)
    shards: list[Shard] = []
    for file in find_inputs(spec):
        path, label, fmt = file.path, file.label, file.format
        if fmt == "parquet":
            for group, first, rows in _row_groups(path, label, spec, layout):
                shards.append(Shard("", path, label, fmt, group, first, rows))
            continue
        if tabular and fmt != "jsonl":
            raise InvalidInput(f"{label}: columns: needs Parquet or JSON Lines input, not {fmt}")
        if fmt == "jsonl" and tabular:
            _check_jsonl(spec, path, label)
        if fmt == "avro":
            _check_avro(spec, path, label)
        shards.append(Shard("", path, label, fmt))
    width = max(5, len(str(len(shards))))
    return [
        Shard(f"{i:0{width}d}", s.path, s.label, s.format, s.row_group, s.first_row, s.rows)
        for i, s in enumerate(shards)
    ]


def _check_layout(spec: BatchSpec, layout: InputLayout) -> None:
    if np.dtype(layout.dtype).kind not in "biuf":
        raise InvalidInput(
            f"the models take {np.dtype(layout.dtype)} input; columns: fills numeric inputs only"
        )
    if isinstance(spec.columns, tuple):
        fixed = [d for d in layout.row_shape if d != -1]
        if len(fixed) == len(layout.row_shape) and int(np.prod(fixed)) != len(spec.columns):
            raise InvalidInput(
                f"{len(spec.columns)} columns do not fit the models' input of shape "
                f"{list(layout.row_shape)} per row"
            )
        if len(layout.row_shape) - len(fixed) > 1 or (
            len(fixed) < len(layout.row_shape) and len(layout.row_shape) > 1
        ):
            raise InvalidInput(
                f"columns cannot fill an input of shape {list(layout.row_shape)} per row; "
                "name one list column instead"
            )


def _row_groups(
    path: str, label: str, spec: BatchSpec, layout: InputLayout | None
) -> list[tuple[int, int, int]]:
    pa, _ = _pyarrow()
    try:
        with _parquet(spec, path) as parquet:
            schema = parquet.schema_arrow
            meta = parquet.metadata
            groups = [meta.row_group(i).num_rows for i in range(meta.num_row_groups)]
    except (pa.ArrowException, OSError) as exc:
        raise InvalidInput(f"cannot read Parquet file {label}: {error_text(exc)}") from exc
    if spec.columns is None:
        if "value" not in schema.names or not pa.types.is_binary(schema.field("value").type):
            raise InvalidInput(
                f"{label}: alert input needs a binary column 'value' (or name columns: "
                "in the spec for tabular input)"
            )
    else:
        assert layout is not None
        _check_columns(schema, label, spec, layout)
    result, first = [], 0
    for group, rows in enumerate(groups):
        result.append((group, first, rows))
        first += rows
    return result


def _check_columns(schema: Any, label: str, spec: BatchSpec, layout: InputLayout) -> None:
    pa, _ = _pyarrow()
    names = schema.names
    wanted = [spec.columns] if isinstance(spec.columns, str) else list(spec.columns or ())
    missing = [c for c in [*wanted, *([spec.id] if spec.id else [])] if c not in names]
    if missing:
        raise InvalidInput(
            f"{label} has no column {', '.join(repr(c) for c in missing)}; "
            f"its columns: {', '.join(names)}"
        )
    integer_target = np.dtype(layout.dtype).kind in "biu"
    for column in wanted:
        kind = schema.field(column).type
        if isinstance(spec.columns, str):
            if not (
                pa.types.is_list(kind)
                or pa.types.is_large_list(kind)
                or pa.types.is_fixed_size_list(kind)
            ):
                raise InvalidInput(f"{label}: column {column!r} is {kind}, not a list column")
            if pa.types.is_fixed_size_list(kind):
                fixed = [d for d in layout.row_shape if d != -1]
                if len(fixed) == len(layout.row_shape) and kind.list_size != int(np.prod(fixed)):
                    raise InvalidInput(
                        f"{label}: column {column!r} holds {kind.list_size} values per row; "
                        f"the models take shape {list(layout.row_shape)} per row"
                    )
            kind = kind.value_type
        numeric = pa.types.is_integer(kind) or pa.types.is_boolean(kind)
        if not integer_target:
            numeric = numeric or pa.types.is_floating(kind) or pa.types.is_decimal(kind)
        if not numeric:
            raise InvalidInput(
                f"{label}: column {column!r} is {kind}, which does not convert to the "
                f"models' input type {np.dtype(layout.dtype)}"
            )


def _check_jsonl(spec: BatchSpec, path: str, label: str) -> None:
    """The first record must name every column (later ones failing are dead letters)."""
    try:
        with _local(spec, path) as local, local.open("rb") as fh:
            line = next((ln for ln in fh if ln.strip()), b"")
        first = json.loads(line) if line else None
    except (OSError, ValueError) as exc:
        raise InvalidInput(f"cannot read {label}: {error_text(exc)}") from exc
    if first is None:
        return
    if not isinstance(first, dict):
        raise InvalidInput(f"{label}: records must be JSON objects for columns:")
    wanted = [spec.columns] if isinstance(spec.columns, str) else list(spec.columns or ())
    missing = [c for c in [*wanted, *([spec.id] if spec.id else [])] if c not in first]
    if missing:
        raise InvalidInput(
            f"{label} has no column {', '.join(repr(c) for c in missing)}; "
            f"its first record has: {', '.join(first)}"
        )


def _check_avro(spec: BatchSpec, path: str, label: str) -> None:
    from ..streams.files import read_messages

    try:
        with _local(spec, path) as local:
            next(iter(read_messages(local, "avro")), None)
    except (InvalidInput, OSError) as exc:
        raise InvalidInput(f"cannot read Avro file {label}: {error_text(exc)}") from exc


# -- reading a shard ------------------------------------------------------------


def position_ids(shard: Shard, count: int) -> Any:
    """``file:row`` of the shard's ``count`` rows, as an Arrow string array."""
    pa, _ = _pyarrow()
    import pyarrow.compute as pc

    rows = pa.array(np.arange(shard.first_row, shard.first_row + count, dtype=np.int64))
    return pc.binary_join_element_wise(pa.scalar(f"{shard.label}:"), pc.cast(rows, pa.string()), "")


def _id_text(value: Any) -> str | None:
    return None if value is None else str(value)


def _id_array(shard: Shard, column: Any) -> Any:
    """The row ids of an id column: its values as text, ``file:row`` where
    a value is null or empty.  Integer and text columns are converted by
    Arrow at once (the same text as ``str()`` of each value); other types
    value by value."""
    pa, _ = _pyarrow()
    import pyarrow.compute as pc

    column = column.combine_chunks() if isinstance(column, pa.ChunkedArray) else column
    kind = column.type
    if pa.types.is_integer(kind) or pa.types.is_string(kind) or pa.types.is_large_string(kind):
        ids = pc.cast(column, pa.string())
        if pa.types.is_integer(kind) and not ids.null_count:
            return ids  # the text of an integer is never empty
    else:
        ids = pa.array([_id_text(v) for v in column.to_pylist()], pa.string())
    empty = pc.equal(pc.binary_length(ids), 0)
    if ids.null_count or pc.any(empty).as_py():
        ids = pc.if_else(pc.fill_null(empty, True), position_ids(shard, len(ids)), ids)
    return ids


def input_id_column(spec: BatchSpec, shard: Shard) -> Any | None:
    """The id column of a Parquet shard as stored (an Arrow chunked array,
    before its values become text), or ``None`` if the shard has none."""
    if shard.format != "parquet" or spec.columns is None or not spec.id:
        return None
    with _parquet(spec, shard.path) as parquet:
        table = parquet.read_row_group(shard.row_group, columns=[spec.id])
    return table.column(0)


def input_ids(spec: BatchSpec, shard: Shard) -> Any:
    """The ids of every row of ``shard``, in order, as an Arrow string array
    (reading as little as possible)."""
    pa, _ = _pyarrow()
    column = input_id_column(spec, shard)
    if column is not None:
        return _id_array(shard, column)
    if shard.format == "parquet" and shard.rows is not None:
        return position_ids(shard, shard.rows)
    if spec.columns is not None and spec.id:
        return pa.array([row_id for row_id, _ in _jsonl_records(spec, shard)], pa.string())
    if shard.format == "avro":
        from ..streams.files import count_records

        # The records counted block by block, none of them decoded.
        with _local(spec, shard.path) as local:
            return position_ids(shard, count_records(local, "avro"))
    return position_ids(shard, len(read_values(spec, shard)))


def _jsonl_records(spec: BatchSpec, shard: Shard) -> list[tuple[str, Any]]:
    """``(row id, parsed record or the exception)`` of every non-blank line."""
    from ..streams.files import read_messages

    id_column = spec.id
    with _local(spec, shard.path) as local:
        messages = list(read_messages(local, "jsonl"))
    out: list[tuple[str, Any]] = []
    for message in messages:
        position = f"{shard.label}:{message.offset}"
        try:
            record: Any = json.loads(message.value)
        except ValueError as exc:
            out.append((position, exc))
            continue
        row_id = None
        if id_column and isinstance(record, dict):
            row_id = _id_text(record.get(id_column))
        out.append((row_id or position, record))
    return out


def read_shard(spec: BatchSpec, shard: Shard, layout: InputLayout) -> ShardRows:
    """The rows of a tabular shard (``spec.columns``) as model input."""
    if shard.format == "parquet":
        return _parquet_rows(spec, shard, layout)
    pa, _ = _pyarrow()
    records = _jsonl_records(spec, shard)
    rows = ShardRows(ids=pa.array([row_id for row_id, _ in records], pa.string()))
    values: list[Any] = []
    good: list[int] = []
    for index, (_, record) in enumerate(records):
        if isinstance(record, Exception):
            rows.failures.append((index, "read", "not-json", f"not JSON: {error_text(record)}"))
            continue
        if not isinstance(record, dict):
            rows.failures.append((index, "read", "not-object", "the record is not an object"))
            continue
        values.append(record)
        good.append(index)
    rows.good = good
    _convert_rows(spec, layout, rows, values)
    return rows


def _parquet_rows(spec: BatchSpec, shard: Shard, layout: InputLayout) -> ShardRows:
    wanted = [spec.columns] if isinstance(spec.columns, str) else list(spec.columns or ())
    columns = [*wanted, *([spec.id] if spec.id and spec.id not in wanted else [])]
    with _parquet(spec, shard.path) as parquet:
        table = parquet.read_row_group(shard.row_group, columns=columns)
    if spec.id:
        row_ids = _id_array(shard, table.column(spec.id))
    else:
        row_ids = position_ids(shard, table.num_rows)
    rows = ShardRows(ids=row_ids, source_ids=table.column(spec.id) if spec.id else None)
    fast = _vectorised(spec, layout, table)
    if fast is not None:
        rows.good = range(table.num_rows)
        rows.matrix = fast
        return rows
    # Some rows do not convert: find them one by one.
    rows.good = range(table.num_rows)
    _convert_rows(spec, layout, rows, table.select(wanted).to_pylist())
    return rows


def _vectorised(spec: BatchSpec, layout: InputLayout, table: Any) -> npt.NDArray[Any] | None:
    """The whole row group converted at once, or ``None`` if any row does not convert."""
    pa, _ = _pyarrow()
    import pyarrow.compute as pc

    dtype = np.dtype(layout.dtype)
    target = pa.from_numpy_dtype(dtype)
    try:
        if isinstance(spec.columns, str):
            column = table.column(spec.columns).combine_chunks()
            if column.null_count:
                return None
            lengths = pc.list_value_length(column).to_numpy(zero_copy_only=False)
            flat = column.flatten()
            if flat.null_count or (len(lengths) and (lengths != lengths[0]).any()):
                return None
            width = int(lengths[0]) if len(lengths) else 0
            values = pc.cast(flat, target, safe=True).to_numpy(zero_copy_only=False)
            matrix = values.astype(dtype, copy=False).reshape(len(lengths), width)
        else:
            parts = []
            for name in spec.columns or ():
                column = table.column(name)
                if column.null_count:
                    return None
                parts.append(pc.cast(column, target, safe=True).to_numpy(zero_copy_only=False))
            matrix = np.column_stack(parts).astype(dtype, copy=False)
        return _shaped(matrix, layout)
    except (pa.ArrowInvalid, ValueError):
        return None


def _shaped(matrix: npt.NDArray[Any], layout: InputLayout) -> npt.NDArray[Any]:
    """``matrix`` (one flat row per input row) in the models' row shape, or ValueError."""
    shape = layout.row_shape
    width = matrix.shape[1] if matrix.ndim == 2 else 0
    if any(d == -1 for d in shape):
        if len(shape) != 1:
            raise ValueError(f"cannot fill a row shape of {list(shape)}")
        return matrix
    if int(np.prod(shape)) != width:
        raise ValueError(f"{width} values per row; the models take shape {list(shape)}")
    return matrix.reshape(len(matrix), *shape)


def _convert_rows(
    spec: BatchSpec, layout: InputLayout, rows: ShardRows, records: Sequence[dict[str, Any]]
) -> None:
    """Convert ``records`` (those of ``rows.good``) row by row; rows that do
    not convert become failures naming the reason."""
    dtype = np.dtype(layout.dtype)
    vectors: list[npt.NDArray[Any]] = []
    good: list[int] = []
    for index, record in zip(rows.good, records, strict=True):
        try:
            vector = _convert_one(spec, layout, dtype, record)
            if vectors and vector.shape != vectors[0].shape:
                raise ValueError(
                    f"{vector.size} values; the other rows of the shard have {vectors[0].size}"
                )
        except (ValueError, TypeError, OverflowError) as exc:
            rows.failures.append((index, "convert", "bad-value", error_text(exc)))
            continue
        vectors.append(vector)
        good.append(index)
    rows.good = good
    if vectors:
        rows.matrix = np.stack(vectors)
    rows.failures.sort()


def _convert_one(
    spec: BatchSpec, layout: InputLayout, dtype: np.dtype[Any], record: dict[str, Any]
) -> npt.NDArray[Any]:
    if isinstance(spec.columns, str):
        if spec.columns not in record:
            raise ValueError(f"no column {spec.columns!r}")
        raw = record[spec.columns]
        if not isinstance(raw, list):
            raise ValueError(f"column {spec.columns!r} holds {type(raw).__name__}, not a list")
        if any(v is None for v in raw):
            raise ValueError(f"column {spec.columns!r} holds a null")
        values = raw
    else:
        values = []
        for name in spec.columns or ():
            if name not in record:
                raise ValueError(f"no column {name!r}")
            value = record[name]
            if value is None:
                raise ValueError(f"column {name!r} is null")
            values.append(value)
    for value in values:
        if not isinstance(value, int | float):  # bool is an int
            raise ValueError(f"{value!r} is not a number")
    array = np.asarray(values)
    converted = array.astype(dtype)
    if dtype.kind in "biu" and not np.array_equal(converted, array):
        raise ValueError(f"{values!r} does not fit {dtype}")
    vector: npt.NDArray[Any] = _shaped(converted.reshape(1, -1), layout)[0]
    return vector
