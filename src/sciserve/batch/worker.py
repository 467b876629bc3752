"""What a Dask worker does with one shard: read, annotate, write atomically.

The steps are the stream pipeline's own: its decoding and feature step
(:func:`sciserve.streams.pipeline._prepare`), its in-process model runner
(:class:`~sciserve.streams.pipeline.LocalModel`), its filter and its
dead-letter error text.  A shard's output is three files under the job's
directory, each written under a hidden name and renamed into place:

``shard-N.parquet``
    One row per input row and model (provenance columns included).
``shard-N.dead.jsonl``
    One dead letter per input row that could not be annotated (and model,
    when the model failed on it), naming the row's id and the reason.
``shard-N.json``
    The manifest, renamed last: rows, dead letters, a checksum of the
    input ids and the sha256 of the two files.  A shard is finished
    exactly when its manifest exists and agrees with the files, so a
    worker killed at any point leaves nothing a re-run would trust.

A shard's files are not flushed to disk one by one: a power cut that loses
or tears any of them leaves a manifest that is missing, unreadable or
disagrees with the files, and the next run redoes the shard.  The job makes
its whole output durable once, with :func:`make_durable`, before it
reports it verified.

Models are loaded once per worker process, not per shard, and never
travel through the scheduler: each worker resolves the exact version the
job pinned from the registry it can read (``--home``), and checks its
digest.
"""

from __future__ import annotations

import asyncio
import functools
import hashlib
import json
import os
import socket
import threading
import time
import uuid
from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass
from datetime import UTC, datetime
from pathlib import Path
from typing import Any, Protocol

import numpy as np
import numpy.typing as npt

from ..access.priority import Priority
from ..config import Settings
from ..errors import IntegrityError
from ..package.manifest import TensorSpec
from ..streams.base import error_text
from ..streams.pipeline import (
    SERVICE_ERRORS,
    LocalModel,
    PrepareConfig,
    RemoteModel,
    evaluate_filter,
    json_safe,
    json_safe_row,
    prepare_values,
)
from ..streams.results import Annotation, ResultStore
from ..streams.spec import BatchSpec
from .shards import (
    InputLayout,
    Shard,
    ShardRows,
    input_id_column,
    input_ids,
    position_ids,
    read_shard,
    read_values,
)

__all__ = [
    "ModelPin",
    "ShardResult",
    "ShardTask",
    "ids_checksum",
    "make_durable",
    "run_shard",
    "verify_shard",
]

#: Columns every output row has besides the models' outputs.
PROVENANCE = (
    "row_id",
    "alert_id",
    "model",
    "model_version",
    "model_digest",
    "runtime",
    "library_versions",
    "job_id",
    "shard_id",
    "label",
    "score",
    "selected",
    "filter_error",
)


#: Provenance columns with one value per shard and model, dictionary-encoded.
PER_SHARD = (
    "model",
    "model_version",
    "model_digest",
    "runtime",
    "library_versions",
    "job_id",
    "shard_id",
    "processed_at",
)


@dataclass(frozen=True)
class ModelPin:
    """A model of the job: the exact version resolved when the job started."""

    ref: str
    digest: str
    #: The sciserve server that runs it (``server:`` in the spec), if not the worker.
    server: str | None = None


@dataclass(frozen=True)
class ShardTask:
    """Everything a worker needs for one shard (small and picklable)."""

    job_id: str
    spec_json: str
    settings: Settings
    models: tuple[ModelPin, ...]
    shard: Shard
    out_dir: str
    #: Tabular input: the models' input row.
    layout: InputLayout | None = None
    #: Alert input: the pipeline's decoding and features configuration.
    prepare: PrepareConfig | None = None
    #: The class ``server:`` steps ask to be served in (a job's priority).
    priority: Priority | None = None


@dataclass(frozen=True)
class ShardResult:
    shard: str
    rows: int
    outputs: int
    dead_letters: int
    seconds: float
    pid: int
    #: What :func:`verify_shard` found reading the shard back once written.
    problems: tuple[str, ...] = ()


#: The version of the shard manifest and of what it describes (the ids
#: checksum, the output's columns).  A shard written under another version
#: is not finished: a re-run redoes it rather than mixing formats.
#: 3: the columns every row has a value of are required (not nullable).
#: 4: the label column is dictionary-encoded (an index into the model's labels).
MANIFEST_FORMAT = 4


def paths(out_dir: str | Path, shard: str) -> tuple[Path, Path, Path]:
    """The output, dead-letter and manifest files of ``shard``."""
    base = Path(out_dir)
    return (
        base / f"shard-{shard}.parquet",
        base / f"shard-{shard}.dead.jsonl",
        base / f"shard-{shard}.json",
    )


def ids_checksum(ids: Any) -> str:
    """sha256 of the ids in input order (an Arrow string array, or a list
    of str): of every id's length in bytes, then of all their bytes, so a
    lost, added, duplicated, changed or moved id changes it.  Computed over
    Arrow's buffers, without a Python object per id."""
    import pyarrow as pa

    if not isinstance(ids, pa.Array | pa.ChunkedArray):
        ids = pa.array(ids, pa.string())
    if isinstance(ids, pa.ChunkedArray):
        ids = ids.combine_chunks()
    if ids.null_count:
        raise ValueError("row ids cannot be null")
    if not (pa.types.is_string(ids.type) or pa.types.is_large_string(ids.type)):
        ids = ids.cast(pa.string())
    _, offsets, data = ids.buffers()
    if len(ids) and offsets is not None:
        # Read in place, in the width the array has (no cast, no copy).
        width = np.int32 if pa.types.is_string(ids.type) else np.int64
        bounds = np.frombuffer(offsets, dtype=width)[ids.offset : ids.offset + len(ids) + 1]
    else:
        bounds = np.zeros(1, dtype=np.int64)
    digest = hashlib.sha256(np.diff(bounds).astype("<i8").tobytes())
    if len(bounds) > 1 and data is not None:
        digest.update(memoryview(data)[int(bounds[0]) : int(bounds[-1])])
    return digest.hexdigest()


def _sha256(path: Path) -> str:
    digest = hashlib.sha256()
    with path.open("rb") as fh:
        for block in iter(lambda: fh.read(2**20), b""):
            digest.update(block)
    return digest.hexdigest()


# -- models, once per process -----------------------------------------------------


class Runner(Protocol):
    """A model as a shard uses it: in the worker, or on a sciserve server."""

    model: str
    version: str
    digest: str
    runtime: str
    outputs: Sequence[TensorSpec]
    library_versions: Mapping[str, str]

    def predict_now(self, features: npt.NDArray[Any]) -> dict[str, npt.NDArray[Any]]: ...


class _Remote:
    """The pipeline's :class:`~sciserve.streams.pipeline.RemoteModel`, called
    from worker threads through this process's one event loop (its HTTP
    client and connections belong to that loop)."""

    def __init__(self, model: RemoteModel, loop: asyncio.AbstractEventLoop) -> None:
        self._model = model
        self._loop = loop
        self.model = model.model
        self.version = model.version
        self.digest = model.digest
        self.runtime = model.runtime
        self.outputs = model.outputs
        self.library_versions = model.library_versions

    def predict_now(self, features: npt.NDArray[Any]) -> dict[str, npt.NDArray[Any]]:
        future = asyncio.run_coroutine_threadsafe(self._model.predict(features), self._loop)
        return future.result()


@functools.cache
def _event_loop() -> asyncio.AbstractEventLoop:
    loop = asyncio.new_event_loop()
    threading.Thread(target=loop.run_forever, name="sciserve-batch-remote", daemon=True).start()
    return loop


# Models of this worker process by server, content digest and priority class.  This module
# runs in batch worker processes only (Dask workers), never in a server:
# the cache lives as long as the worker, holds read-only models (or
# connections to a server), and a digest names exactly one model, so an
# entry can never be stale.
_MODELS: dict[tuple[str | None, str, Priority | None], Runner] = {}
_MODELS_LOCK = threading.Lock()


def _load(ref: str, settings: Settings) -> Any:
    """``ref`` from the registry of ``settings``, which a worker only reads:
    a worker that cannot see it says so rather than creating an empty one."""
    from ..model import load
    from ..registry.registry import Registry

    with Registry(settings, create=False) as registry:
        return load(ref, registry=registry)


def _model(pin: ModelPin, settings: Settings, priority: Priority | None = None) -> Runner:
    # A local model runs in this process whatever the job's class.
    key = (pin.server, pin.digest, priority if pin.server else None)
    with _MODELS_LOCK:
        model = _MODELS.get(key)
        if model is None:
            model = _open(pin, settings, key[2])
            if model.digest != pin.digest:
                where = f"server {pin.server}" if pin.server else "this worker's registry"
                raise IntegrityError(
                    f"{pin.ref} on {where} has digest {model.digest}, "
                    f"not {pin.digest} as when the job started"
                )
            _MODELS[key] = model
        return model


def _open(pin: ModelPin, settings: Settings, priority: Priority | None) -> Runner:
    if pin.server is None:
        return LocalModel(_load(pin.ref, settings))
    loop = _event_loop()
    connecting = RemoteModel.connect(
        pin.ref, pin.server, settings.worker_auth_headers(), priority=priority
    )
    return _Remote(asyncio.run_coroutine_threadsafe(connecting, loop).result(), loop)


# The result store of each registry database, per worker process (an engine
# and its connection pool), for jobs that write annotations there too.
_STORES: dict[str, ResultStore] = {}


def _store(task: ShardTask, spec: BatchSpec, table: Any) -> None:
    """Write the shard's annotations to the result store.  Keys that are
    stored already (a shard redone after a worker died) are skipped there."""
    with _MODELS_LOCK:
        store = _STORES.get(task.settings.database_url)
        if store is None:
            store = _STORES[task.settings.database_url] = ResultStore.open(task.settings)
    fixed = set(_schema().names)
    annotations = [
        Annotation(
            alert_id=row["alert_id"],
            model=row["model"],
            model_version=row["model_version"],
            model_digest=row["model_digest"],
            outputs={k: json_safe(v) for k, v in row.items() if k not in fixed and v is not None},
            label=row["label"],
            score=row["score"],
            pipeline=spec.name,
            runtime=row["runtime"],
            library_versions=json.loads(row["library_versions"]),
            broker_timestamp_ms=None,
            processed_at=datetime.fromisoformat(row["processed_at"]),
            published=row["selected"],
            filter_error=row["filter_error"],
        )
        for row in table.to_pylist()
    ]
    store.write_checked(annotations)


@functools.cache
def _spec(spec_json: str) -> BatchSpec:
    return BatchSpec.model_validate_json(spec_json)


# -- one shard ------------------------------------------------------------------


def _alert_rows(spec: BatchSpec, shard: Shard, config: PrepareConfig) -> ShardRows:
    values = read_values(spec, shard)
    rows = ShardRows(ids=position_ids(shard, len(values)))
    prepared, _, _ = prepare_values(config, values)
    vectors = []
    good: list[int] = []
    for index, item in enumerate(prepared):
        if item.failure is not None:
            rows.failures.append((index, *item.failure))
            continue
        assert item.vector is not None
        good.append(index)
        rows.alert_ids.append(item.alert_id)
        rows.alerts.append(item.alert)
        vectors.append(item.vector)
    rows.good = good
    if vectors:
        rows.matrix = np.stack(vectors)
    return rows


#: Waits (s) between calls of a model step through service errors (a server
#: restarting, rate limits): about half a minute in all, then the task fails.
_SERVICE_WAITS = (0.5, 1.0, 2.0, 4.0, 8.0, 16.0)


def _patiently(model: Runner, chunk: npt.NDArray[Any]) -> dict[str, npt.NDArray[Any]]:
    """``model``'s outputs for ``chunk``, retrying through service errors,
    which say nothing about the rows."""
    for wait in _SERVICE_WAITS:
        try:
            return model.predict_now(chunk)
        except SERVICE_ERRORS:
            time.sleep(wait)
    return model.predict_now(chunk)


def _predict(
    model: Runner, matrix: npt.NDArray[Any], batch: int
) -> tuple[list[dict[str, npt.NDArray[Any]] | None], list[str]]:
    """Outputs of each chunk of ``batch`` rows (``None`` for a chunk the model
    failed on twice), and the reason of each failed chunk."""
    results: list[dict[str, npt.NDArray[Any]] | None] = []
    reasons: list[str] = []
    for start in range(0, len(matrix), batch):
        chunk = matrix[start : start + batch]
        failure: Exception | None = None
        for _ in range(2):
            try:
                outputs = _patiently(model, chunk)
                for name, values in outputs.items():
                    if len(values) != len(chunk):
                        raise ValueError(
                            f"output {name!r} has {len(values)} rows for {len(chunk)} inputs"
                        )
                results.append(outputs)
                reasons.append("")
                break
            except SERVICE_ERRORS:
                raise  # the deployment's problem, not the rows': the task fails
            except Exception as exc:  # any other failure is the model's on these rows
                failure = exc
        else:
            assert failure is not None
            results.append(None)
            reasons.append(
                f"{model.model}:{model.version} failed twice: "
                f"{type(failure).__name__}: {error_text(failure)}"
            )
    return results, reasons


def run_shard(task: ShardTask) -> ShardResult:
    """Annotate one shard, write its output, dead letters and manifest, and
    verify them (:func:`verify_shard`)."""
    started = time.perf_counter()
    rows, outputs, dead_letters, written = _annotate(task)
    # Checked in the same task: a task of its own per shard would cost the
    # scheduler, the client and the worker more than the check itself.  The
    # files and the input's ids are read again; the output file is compared
    # with the bytes this task encoded rather than hashed and decoded a
    # second time (equal bytes have the manifest's sha256, and hold the
    # table they were encoded from), and the input's id column with the
    # values the row ids were made of (see _verify).
    problems = tuple(_verify(task, written))
    return ShardResult(
        task.shard.id, rows, outputs, dead_letters, time.perf_counter() - started, os.getpid(),
        problems,
    )  # fmt: skip


def _annotate(task: ShardTask) -> tuple[int, int, int, _Written]:
    """Annotate one shard and write its files: its rows, output rows, dead
    letters, and the output as written."""
    spec = _spec(task.spec_json)
    models = [_model(pin, task.settings, task.priority) for pin in task.models]
    shard = task.shard
    if task.prepare is not None:
        rows = _alert_rows(spec, shard, task.prepare)
    else:
        assert task.layout is not None
        rows = read_shard(spec, shard, task.layout)
    dead: list[dict[str, Any]] = [
        _dead(task, rows, index, stage, error, reason, None)
        for index, stage, error, reason in rows.failures
    ]
    tables = []
    processed_at = datetime.now(UTC).isoformat()
    if rows.matrix is not None:
        for model, pin in zip(models, task.models, strict=True):
            chunks, reasons = _predict(model, rows.matrix, spec.batch)
            done: list[npt.NDArray[np.int64]] = []
            parts: list[dict[str, npt.NDArray[Any]]] = []
            for number, (outputs, reason) in enumerate(zip(chunks, reasons, strict=True)):
                span = np.arange(
                    number * spec.batch, min((number + 1) * spec.batch, len(rows.good))
                )
                if outputs is None:
                    dead.extend(
                        _dead(task, rows, rows.good[i], "model", "model-error", reason, pin.ref)
                        for i in span.tolist()
                    )
                else:
                    done.append(span)
                    parts.append(outputs)
            if parts:
                values = {o.name: np.concatenate([p[o.name] for p in parts]) for o in model.outputs}
                tables.append(
                    _model_table(
                        task, spec, model, rows, np.concatenate(done), values, processed_at
                    )
                )
    table = _concat(tables)
    if spec.results and table.num_rows:
        _store(task, spec, table)
    written = _write(task, rows, table, dead)
    return len(rows.ids), table.num_rows, len(dead), written


def _dead(
    task: ShardTask,
    rows: ShardRows,
    index: int,
    stage: str,
    error: str,
    reason: str,
    model: str | None,
) -> dict[str, Any]:
    return {
        "row_id": rows.row_id(index),
        "job_id": task.job_id,
        "shard_id": task.shard.id,
        "stage": stage,
        "error": error,
        "reason": reason,
        #: ``None``: the row reached no model.
        "model": model,
    }


def _top_classes(
    model: Runner, values: dict[str, npt.NDArray[Any]], count: int
) -> tuple[Any, npt.NDArray[np.float64] | None]:
    """Per row, what :func:`~sciserve.streams.pipeline._top_class` gives a
    single row (the largest element of the first labelled output), for all
    rows at once: the labels as a dictionary array (each row the index of
    its label among the output's labels, so no string is copied per row),
    and the scores, where non-finite ones are NaN (null in the output)."""
    import pyarrow as pa

    for spec in model.outputs:
        array = values.get(spec.name)
        if (
            spec.labels
            and array is not None
            and array.ndim == 2
            and array.shape[1] == len(spec.labels)
            and count
        ):
            index = np.argmax(array, axis=1)
            labels = pa.DictionaryArray.from_arrays(
                pa.array(index.astype(np.int32)), pa.array(list(spec.labels), pa.string())
            )
            return labels, array[np.arange(count), index].astype(np.float64)
    return pa.nulls(count, _schema().field("label").type), None


def _column(array: npt.NDArray[Any], required: bool) -> Any:
    """A model output as an Arrow column: scalars, or fixed-size lists per
    row; with ``required``, lists whose items are declared never null."""
    import pyarrow as pa

    if array.ndim == 1:
        return pa.array(array)
    flat: Any = pa.array(np.ascontiguousarray(array).reshape(-1))
    for size in reversed(array.shape[1:]):
        kind = pa.list_(pa.field("item", flat.type, nullable=not required), size)
        flat = pa.FixedSizeListArray.from_arrays(flat, type=kind)
    return flat


def _model_table(
    task: ShardTask,
    spec: BatchSpec,
    model: Runner,
    rows: ShardRows,
    done: npt.NDArray[np.int64],
    values: dict[str, npt.NDArray[Any]],
    processed_at: str,
) -> Any:
    """The output rows of one model: ``done`` (positions in ``rows.good``)
    with the model's ``values`` for them, built column by column."""
    import pyarrow as pa

    count = len(done)
    # rows.good lists input rows in order: as long as the input, it is all of them.
    positions = done if len(rows.good) == len(rows.ids) else np.asarray(rows.good)[done]
    ids = rows.ids if len(positions) == len(rows.ids) else rows.ids.take(pa.array(positions))
    labels, scores = _top_classes(model, values, count)
    selected: list[bool] | None = None
    errors: list[str | None] | None = None
    expression = spec.filter_expression
    if expression is not None:
        selected, errors = [], []
        id_list = ids.to_pylist()
        label_list = labels.to_pylist()
        for local, i in enumerate(done):
            score = None if scores is None else float(scores[local])
            context: dict[str, Any] = {
                **{name: json_safe_row(array[local]) for name, array in values.items()},
                "label": label_list[local],
                "score": score if score is not None and np.isfinite(score) else None,
            }
            if task.prepare is not None:
                context["alert"] = rows.alerts[i] or {}
            else:
                context["id"] = id_list[local]
            passed, error = evaluate_filter(expression, context)
            selected.append(passed)
            errors.append(error)
    libraries = json.dumps(dict(model.library_versions), sort_keys=True)
    constant = {
        "model": model.model,
        "model_version": model.version,
        "model_digest": model.digest,
        "runtime": model.runtime,
        "library_versions": libraries,
        "job_id": task.job_id,
        "shard_id": task.shard.id,
        "processed_at": processed_at,
    }
    first = pa.array(np.zeros(count, dtype=np.int32))
    columns: dict[str, Any] = {
        "row_id": ids,
        "alert_id": (
            pa.array([rows.alert_ids[i] for i in done], pa.int64())
            if rows.alert_ids
            else pa.nulls(count, pa.int64())
        ),
        # One value per shard and model: dictionary-encoded, each row an
        # index into a dictionary of that one value (no copy of it per row;
        # the columns share one array of indices).
        **{
            name: pa.DictionaryArray.from_arrays(first, pa.array([value], pa.string()))
            for name, value in constant.items()
        },
        "label": labels,
        "score": _scores(scores, count),
        "selected": (
            pa.repeat(pa.scalar(True), count)
            if selected is None
            else pa.array(selected, pa.bool_())
        ),
        "filter_error": (
            pa.nulls(count, pa.string()) if errors is None else pa.array(errors, pa.string())
        ),
    }
    # A job of one model has every numeric output in every row: its columns
    # are declared required, which spares the Parquet writer a definition
    # level per value.  With several models, a row of one has nulls in the
    # other's columns.
    single = len(task.models) == 1
    fields = list(_schema())
    for name, array in values.items():
        required = single and array.dtype.kind in "biuf"
        columns[name] = _column(array, required)
        fields.append(pa.field(name, columns[name].type, nullable=not required))
    return pa.Table.from_arrays([columns[f.name] for f in fields], schema=pa.schema(fields))


def _scores(scores: npt.NDArray[np.float64] | None, count: int) -> Any:
    """The score column: non-finite scores are null; without any, the
    column has no validity bitmap to build (nor the writer to read)."""
    import pyarrow as pa

    if scores is None:
        return pa.nulls(count, pa.float64())
    finite = np.isfinite(scores)
    return pa.array(scores) if finite.all() else pa.array(scores, mask=~finite)


#: The output's own columns, in order, and their types; those every row
#: has a value of are declared required (written without definition levels).
#: Built once per process (a schema is immutable).
@functools.cache
def _schema() -> Any:
    import pyarrow as pa

    per_shard = pa.dictionary(pa.int32(), pa.string())
    return pa.schema(
        [
            pa.field("row_id", pa.string(), nullable=False),
            ("alert_id", pa.int64()),
            *(pa.field(name, per_shard, nullable=False) for name in PER_SHARD),
            # An index per row into the model's labels.
            ("label", pa.dictionary(pa.int32(), pa.string())),
            ("score", pa.float64()),
            pa.field("selected", pa.bool_(), nullable=False),
            ("filter_error", pa.string()),
        ]
    )  # fmt: skip


#: The output's columns verification reads: which id, of which model.
_CHECKED = ("row_id", "model", "model_version")


#: Columns of the output whose values rarely repeat.
_UNIQUE = frozenset(("row_id", "alert_id", "score"))


def _concat(tables: list[Any]) -> Any:
    import pyarrow as pa

    if not tables:
        return _schema().empty_table()
    return pa.concat_tables(tables, promote_options="default")


@dataclass(frozen=True)
class _Written:
    """A shard's output file as its worker wrote it, its sha256, and the
    columns verification reads (row id, model, version) of the table it
    encodes."""

    data: Any  # a pyarrow Buffer
    sha256: str
    ids: Any  # a pyarrow Table
    #: The shard's id column as this process read it (``ShardRows.source_ids``),
    #: and the row ids it made of it.
    source_ids: Any
    row_ids: Any


def _write(task: ShardTask, rows: ShardRows, table: Any, dead: list[dict[str, Any]]) -> _Written:
    import pyarrow as pa
    import pyarrow.parquet as pq

    directory = Path(task.out_dir)
    output, dead_path, manifest = paths(directory, task.shard.id)
    own = set(_schema().names) - _UNIQUE
    # A unique hidden name per attempt: a retried shard never writes into
    # the half-written file of an attempt that was killed.
    aside = f".{uuid.uuid4().hex[:12]}.partial"
    # Encoded in memory, hashed there and written as is: the manifest's
    # sha256 is that of the exact bytes written, without reading them back.
    sink = pa.BufferOutputStream()
    pq.write_table(
        table,
        sink,
        # Dictionary pages where values repeat (the provenance columns, the
        # label): trying them on the row ids and the model outputs, which
        # rarely repeat, costs more time than it saves space.
        use_dictionary=[n for n in table.column_names if n in own],
        # Statistics where a reader would filter on them.
        write_statistics=["row_id", "alert_id", "score"],
        # Rows encoded 64 Ki at a time, not 1 Ki: fewer rounds through the
        # writer's levels and encoders for the same bytes.
        write_batch_size=65536,
    )
    # Kept as Arrow's buffer: a copy into a Python bytes object would cost
    # fresh memory (page faults) for every shard.
    data = sink.getvalue()
    written = _Written(
        data, hashlib.sha256(data).hexdigest(), table.select(list(_CHECKED)),
        rows.source_ids, rows.ids,
    )  # fmt: skip
    tmp_out = directory / f".{output.name}{aside}"
    tmp_out.write_bytes(memoryview(data))
    os.replace(tmp_out, output)
    tmp_dead = directory / f".{dead_path.name}{aside}"
    letters = "".join(json.dumps(d, sort_keys=True) + "\n" for d in dead).encode()
    tmp_dead.write_bytes(letters)
    os.replace(tmp_dead, dead_path)
    doc = {
        "format": MANIFEST_FORMAT,
        "job_id": task.job_id,
        "shard_id": task.shard.id,
        "input": {
            "file": task.shard.label,
            "row_group": task.shard.row_group,
            "first_row": task.shard.first_row,
        },
        "rows": len(rows.ids),
        "outputs": table.num_rows,
        "dead_letters": len(dead),
        "ids_sha256": ids_checksum(rows.ids),
        "models": [{"ref": pin.ref, "digest": pin.digest} for pin in task.models],
        "files": {
            "output": {"name": output.name, "sha256": written.sha256},
            "dead_letters": {"name": dead_path.name, "sha256": hashlib.sha256(letters).hexdigest()},
        },
        "host": socket.gethostname(),
        "pid": os.getpid(),
        "finished_at": datetime.now(UTC).isoformat(),
    }
    tmp_manifest = directory / f".{manifest.name}{aside}"
    tmp_manifest.write_text(json.dumps(doc, indent=2) + "\n")
    # Written aside and renamed: a reader sees the whole file or none.  No
    # fsync here: see make_durable().
    os.replace(tmp_manifest, manifest)
    return written


def _fsync(path: Path) -> None:
    fd = os.open(path, os.O_RDONLY)
    try:
        os.fsync(fd)
    finally:
        os.close(fd)


def make_durable(out_dir: str, shards: Sequence[str]) -> int:
    """Flush the files of ``shards`` (and ``job.json``) under ``out_dir`` to
    disk, then the directory (their names); the number of files flushed.

    Once per job, not four times per shard as each one finishes: the
    workers do not wait for the disk between shards, and a journalling file
    system commits once for many files (on ext4, the first flush writes most
    of what the others would).  It runs where the shards were written (each
    worker process), since on a shared file system a host flushes only what
    it wrote itself.  A file missing here is skipped: verification, not this,
    decides whether the output is complete; a flush that fails (the disk)
    raises :class:`OSError`.
    """
    base = Path(out_dir)
    flushed = 0
    names = ["job.json"]
    for shard in shards:
        names.extend(p.name for p in paths(base, shard))
    for name in names:
        try:
            _fsync(base / name)
        except FileNotFoundError:
            continue
        flushed += 1
    _fsync(base)
    return flushed


# -- checking a shard ----------------------------------------------------------


def finished(out_dir: str | Path, shard: Shard, job_id: str) -> bool:
    """Whether ``shard`` has a manifest of ``job_id`` and of this input that
    agrees with its files."""
    return _agreeing(out_dir, shard, job_id, _sha256) is not None


def _agreeing(
    out_dir: str | Path, shard: Shard, job_id: str, output_sha256: Callable[[Path], str]
) -> dict[str, Any] | None:
    """The manifest of ``shard`` if it is one of ``job_id`` and of this input
    that agrees with the files (``output_sha256(path)`` hashes the output)."""
    output, dead_path, manifest = paths(out_dir, shard.id)
    try:
        doc = json.loads(manifest.read_text())
        files = doc["files"]
        source = doc["input"]
        agrees = bool(
            doc.get("format") == MANIFEST_FORMAT
            and doc["job_id"] == job_id
            and (source["file"], source["row_group"]) == (shard.label, shard.row_group)
            and output_sha256(output) == files["output"]["sha256"]
            and _sha256(dead_path) == files["dead_letters"]["sha256"]
        )
    except (OSError, ValueError, KeyError, TypeError):
        return None
    return doc if agrees else None


def verify_shard(task: ShardTask) -> list[str]:
    """Problems of ``task``'s finished shard against its input: every input
    id must appear exactly once per model, as an output row or a dead letter."""
    return _verify(task, None)


def _verify(task: ShardTask, written: _Written | None) -> list[str]:
    """:func:`verify_shard`; ``written``, the output as this process just
    wrote it, if it did."""
    import pyarrow as pa
    import pyarrow.compute as pc
    import pyarrow.parquet as pq

    shard = task.shard
    spec = _spec(task.spec_json)
    # The output is read once (into Arrow's memory): hashed against the
    # manifest, then parsed; or found to be the bytes this process wrote.
    read: list[Any] = []
    own: list[bool] = []

    def output_sha256(path: Path) -> str:
        with pa.OSFile(str(path)) as fh:
            read.append(fh.read_buffer())
        own.append(written is not None and read[0].equals(written.data))
        if written is not None and own[0]:
            return written.sha256  # the very bytes hashed for the manifest
        return hashlib.sha256(read[0]).hexdigest()

    doc = _agreeing(task.out_dir, shard, task.job_id, output_sha256)
    if doc is None:
        return [f"shard {shard.id}: no manifest agreeing with its files"]
    _, dead_path, _ = paths(task.out_dir, shard.id)
    expected = None
    if written is not None and written.source_ids is not None:
        column = input_id_column(spec, shard)
        if column is not None and column.equals(written.source_ids):
            # The input's id column holds the very values this process made
            # its row ids of: those are the input's ids (not made again).
            expected = written.row_ids
    if expected is None:
        expected = input_ids(spec, shard)
    problems = []
    parquet = pq.ParquetFile(pa.BufferReader(read[0]), read_dictionary=_CHECKED[1:])
    if written is not None and own[0]:
        # The file holds the very bytes this process encoded from the table
        # of these columns: they are checked in memory, not decoded again;
        # the file's footer must still count the table's rows.
        table = written.ids
        if parquet.metadata.num_rows != table.num_rows:
            problems.append(
                f"shard {shard.id}: the output's footer counts {parquet.metadata.num_rows} "
                f"rows, not the {table.num_rows} written"
            )
    else:
        table = parquet.read(columns=list(_CHECKED), use_threads=False)
    letters = [json.loads(line) for line in dead_path.read_text().splitlines() if line]
    in_order = 0
    for pin in task.models:
        name, _, version = pin.ref.rpartition(":")
        produced = table.column("row_id")
        models, versions = table.column("model"), table.column("model_version")
        if not (_only(models, name) and _only(versions, version)):
            mine = pc.and_(pc.equal(models, name), pc.equal(versions, version))
            produced = produced.filter(mine)
        produced = produced.combine_chunks()
        dead = [d["row_id"] for d in letters if d["model"] in (None, pin.ref)]
        # The worker writes a model's rows in input order: then the ids
        # compare element by element; dead letters (or another order) are
        # compared as multisets.
        if not dead and len(produced) == len(expected) and produced.equals(expected):
            in_order += 1
            continue
        ids = pa.concat_arrays([produced.cast(pa.string()), pa.array(dead, pa.string())])
        if len(ids) != len(expected) or not _sorted(ids).equals(_sorted(expected)):
            missing = len(set(expected.to_pylist()) - set(ids.to_pylist()))
            problems.append(
                f"shard {shard.id}, {pin.ref}: {len(ids)} rows out for {len(expected)} in "
                f"({missing} ids missing)"
            )
    # The manifest's ids checksum is that of the ids the worker read.  When
    # every model's rows are the input's ids in order, the output itself has
    # shown the worker read the input's ids, and the checksum (a pass over
    # all the ids' bytes) is not computed again.
    manifest_ok = doc["rows"] == len(expected) and (
        in_order == len(task.models) or doc["ids_sha256"] == ids_checksum(expected)
    )
    if not manifest_ok:
        problems.insert(0, f"shard {shard.id}: the manifest's ids are not the input's")
    return problems


def _only(column: Any, value: str) -> bool:
    """Whether every row of ``column`` (dictionary-encoded) is ``value``,
    known from the dictionaries alone: each chunk's is that one value and
    no row is null.  ``False`` says nothing (the rows must be compared)."""
    return all(
        chunk.null_count == 0 and chunk.dictionary.to_pylist() == [value] for chunk in column.chunks
    )


def _sorted(ids: Any) -> Any:
    import pyarrow.compute as pc

    return ids.take(pc.sort_indices(ids))
