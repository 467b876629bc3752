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
from collections.abc import Sequence
from dataclasses import dataclass
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

import numpy as np
import numpy.typing as npt

from ..config import Settings
from ..errors import IntegrityError
from ..streams.base import error_text
from ..streams.pipeline import (
    _SERVICE_ERRORS,
    LocalModel,
    _plain,
    _prepare,
    _PrepareConfig,
    _top_class,
    evaluate_filter,
)
from ..streams.spec import BatchSpec
from .shards import InputLayout, Shard, ShardRows, input_ids, read_shard

__all__ = ["ModelPin", "ShardResult", "ShardTask", "ids_checksum", "run_shard", "verify_shard"]

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


@dataclass(frozen=True)
class ModelPin:
    """A model of the job: the exact version resolved when the job started."""

    ref: str
    digest: str


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
    prepare: _PrepareConfig | None = None


@dataclass(frozen=True)
class ShardResult:
    shard: str
    rows: int
    outputs: int
    dead_letters: int
    seconds: float
    pid: int


def paths(out_dir: str | Path, shard: str) -> tuple[Path, Path, Path]:
    """The output, dead-letter and manifest files of ``shard``."""
    base = Path(out_dir)
    return (
        base / f"shard-{shard}.parquet",
        base / f"shard-{shard}.dead.jsonl",
        base / f"shard-{shard}.json",
    )


def ids_checksum(ids: Sequence[str]) -> str:
    """sha256 of the sorted ids: the same for the same multiset of ids."""
    digest = hashlib.sha256()
    for row_id in sorted(ids):
        digest.update(row_id.encode())
        digest.update(b"\n")
    return digest.hexdigest()


def _sha256(path: Path) -> str:
    digest = hashlib.sha256()
    with path.open("rb") as fh:
        for block in iter(lambda: fh.read(2**20), b""):
            digest.update(block)
    return digest.hexdigest()


# -- models, once per process -----------------------------------------------------

# Loaded models of this worker process by content digest.  This module runs
# in batch worker processes only (Dask workers), never in a server: the
# cache lives as long as the worker, holds read-only models, and a digest
# names exactly one model, so an entry can never be stale.
_MODELS: dict[str, LocalModel] = {}
_MODELS_LOCK = threading.Lock()


def _model(pin: ModelPin, settings: Settings) -> LocalModel:
    with _MODELS_LOCK:
        model = _MODELS.get(pin.digest)
        if model is None:
            model = asyncio.run(LocalModel.load(pin.ref, settings))
            if model.digest != pin.digest:
                raise IntegrityError(
                    f"{pin.ref} in this worker's registry has digest {model.digest}, "
                    f"not {pin.digest} as when the job started"
                )
            _MODELS[pin.digest] = model
        return model


@functools.cache
def _spec(spec_json: str) -> BatchSpec:
    return BatchSpec.model_validate_json(spec_json)


# -- one shard ------------------------------------------------------------------


def _alert_rows(shard: Shard, config: _PrepareConfig) -> ShardRows:
    from ..streams.files import read_messages

    messages = list(read_messages(shard.path, shard.format, row_group=shard.row_group))
    rows = ShardRows(ids=[f"{shard.label}:{shard.first_row + i}" for i in range(len(messages))])
    prepared, _, _ = _prepare(config, [m.value for m in messages])
    vectors = []
    for index, item in enumerate(prepared):
        if item.failure is not None:
            rows.failures.append((index, *item.failure))
            continue
        assert item.vector is not None
        rows.good.append(index)
        rows.alert_ids.append(item.alert_id)
        rows.alerts.append(item.alert)
        vectors.append(item.vector)
    if vectors:
        rows.matrix = np.stack(vectors)
    return rows


def _predict(
    model: LocalModel, matrix: npt.NDArray[Any], batch: int
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
                outputs = asyncio.run(model.predict(chunk))
                for name, values in outputs.items():
                    if len(values) != len(chunk):
                        raise ValueError(
                            f"output {name!r} has {len(values)} rows for {len(chunk)} inputs"
                        )
                results.append(outputs)
                reasons.append("")
                break
            except _SERVICE_ERRORS:
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
    """Annotate one shard and write its output, dead letters and manifest."""
    started = time.perf_counter()
    spec = _spec(task.spec_json)
    models = [_model(pin, task.settings) for pin in task.models]
    shard = task.shard
    if task.prepare is not None:
        rows = _alert_rows(shard, task.prepare)
    else:
        assert task.layout is not None
        rows = read_shard(spec, shard, task.layout)
    dead: list[dict[str, Any]] = [
        _dead(task, rows, index, stage, error, reason, None)
        for index, stage, error, reason in rows.failures
    ]
    out: list[dict[str, Any]] = []
    processed_at = datetime.now(UTC).isoformat()
    expression = spec.filter_expression
    if rows.matrix is not None:
        for model, pin in zip(models, task.models, strict=True):
            chunks, reasons = _predict(model, rows.matrix, spec.batch)
            for number, (outputs, reason) in enumerate(zip(chunks, reasons, strict=True)):
                first = number * spec.batch
                span = range(first, min(first + spec.batch, len(rows.good)))
                if outputs is None:
                    dead.extend(
                        _dead(task, rows, rows.good[i], "model", "model-error", reason, pin.ref)
                        for i in span
                    )
                    continue
                for local, i in enumerate(span):
                    values = {name: array[local] for name, array in outputs.items()}
                    out.append(_row(task, spec, model, rows, i, values, expression, processed_at))
    _write(task, rows, out, dead)
    return ShardResult(
        shard.id, len(rows.ids), len(out), len(dead), time.perf_counter() - started, os.getpid()
    )


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
        "row_id": rows.ids[index],
        "job_id": task.job_id,
        "shard_id": task.shard.id,
        "stage": stage,
        "error": error,
        "reason": reason,
        #: ``None``: the row reached no model.
        "model": model,
    }


def _row(
    task: ShardTask,
    spec: BatchSpec,
    model: LocalModel,
    rows: ShardRows,
    good: int,
    values: dict[str, npt.NDArray[Any]],
    expression: Any,
    processed_at: str,
) -> dict[str, Any]:
    outputs = {name: _plain(value) for name, value in values.items()}
    label, score = _top_class(model.outputs, values)
    index = rows.good[good]
    context: dict[str, Any] = {**outputs, "label": label, "score": score}
    if task.prepare is not None:
        context["alert"] = rows.alerts[good] or {}
    else:
        context["id"] = rows.ids[index]
    selected, filter_error = evaluate_filter(expression, context)
    return {
        "row_id": rows.ids[index],
        "alert_id": rows.alert_ids[good] if rows.alert_ids else None,
        "model": model.model,
        "model_version": model.version,
        "model_digest": model.digest,
        "runtime": model.runtime,
        "library_versions": json.dumps(dict(model.library_versions), sort_keys=True),
        "job_id": task.job_id,
        "shard_id": task.shard.id,
        "label": label,
        "score": score,
        "selected": selected,
        "filter_error": filter_error,
        "processed_at": processed_at,
        **outputs,
    }


def _table(out: list[dict[str, Any]]) -> Any:
    import pyarrow as pa

    fixed = {
        "row_id": pa.string(),
        "alert_id": pa.int64(),
        "model": pa.string(),
        "model_version": pa.string(),
        "model_digest": pa.string(),
        "runtime": pa.string(),
        "library_versions": pa.string(),
        "job_id": pa.string(),
        "shard_id": pa.string(),
        "label": pa.string(),
        "score": pa.float64(),
        "selected": pa.bool_(),
        "filter_error": pa.string(),
        "processed_at": pa.string(),
    }
    names = list(fixed)
    for row in out:
        names.extend(name for name in row if name not in names)
    columns = {
        name: pa.array([row.get(name) for row in out], type=fixed.get(name)) for name in names
    }
    return pa.table(columns)


def _replace(tmp: Path, final: Path) -> None:
    with tmp.open("rb") as fh:
        os.fsync(fh.fileno())
    os.replace(tmp, final)


def _write(
    task: ShardTask, rows: ShardRows, out: list[dict[str, Any]], dead: list[dict[str, Any]]
) -> None:
    import pyarrow.parquet as pq

    directory = Path(task.out_dir)
    output, dead_path, manifest = paths(directory, task.shard.id)
    # A unique hidden name per attempt: a retried shard never writes into
    # the half-written file of an attempt that was killed.
    aside = f".{uuid.uuid4().hex[:12]}.partial"
    tmp_out = directory / f".{output.name}{aside}"
    pq.write_table(_table(out), tmp_out)
    _replace(tmp_out, output)
    tmp_dead = directory / f".{dead_path.name}{aside}"
    tmp_dead.write_text("".join(json.dumps(d, sort_keys=True) + "\n" for d in dead))
    _replace(tmp_dead, dead_path)
    doc = {
        "job_id": task.job_id,
        "shard_id": task.shard.id,
        "input": {
            "file": task.shard.label,
            "row_group": task.shard.row_group,
            "first_row": task.shard.first_row,
        },
        "rows": len(rows.ids),
        "outputs": len(out),
        "dead_letters": len(dead),
        "ids_sha256": ids_checksum(rows.ids),
        "models": [{"ref": pin.ref, "digest": pin.digest} for pin in task.models],
        "files": {
            "output": {"name": output.name, "sha256": _sha256(output)},
            "dead_letters": {"name": dead_path.name, "sha256": _sha256(dead_path)},
        },
        "host": socket.gethostname(),
        "pid": os.getpid(),
        "finished_at": datetime.now(UTC).isoformat(),
    }
    tmp_manifest = directory / f".{manifest.name}{aside}"
    tmp_manifest.write_text(json.dumps(doc, indent=2) + "\n")
    _replace(tmp_manifest, manifest)
    fd = os.open(directory, os.O_RDONLY)
    try:
        os.fsync(fd)
    finally:
        os.close(fd)


# -- checking a shard ----------------------------------------------------------


def finished(out_dir: str | Path, shard: Shard, job_id: str) -> bool:
    """Whether ``shard`` has a manifest of ``job_id`` and of this input that
    agrees with its files."""
    output, dead_path, manifest = paths(out_dir, shard.id)
    try:
        doc = json.loads(manifest.read_text())
        files = doc["files"]
        source = doc["input"]
        return bool(
            doc["job_id"] == job_id
            and (source["file"], source["row_group"]) == (shard.label, shard.row_group)
            and _sha256(output) == files["output"]["sha256"]
            and _sha256(dead_path) == files["dead_letters"]["sha256"]
        )
    except (OSError, ValueError, KeyError, TypeError):
        return False


def verify_shard(task: ShardTask) -> list[str]:
    """Problems of ``task``'s finished shard against its input: every input
    id must appear exactly once per model, as an output row or a dead letter."""
    import pyarrow.parquet as pq

    shard = task.shard
    spec = _spec(task.spec_json)
    if not finished(task.out_dir, shard, task.job_id):
        return [f"shard {shard.id}: no manifest agreeing with its files"]
    output, dead_path, manifest = paths(task.out_dir, shard.id)
    expected = sorted(input_ids(spec, shard))
    doc = json.loads(manifest.read_text())
    problems = []
    if doc["rows"] != len(expected) or doc["ids_sha256"] != ids_checksum(expected):
        problems.append(f"shard {shard.id}: the manifest's ids are not the input's")
    table = pq.read_table(output, columns=["row_id", "model_version", "model"])
    produced = list(
        zip(
            table.column("row_id").to_pylist(),
            table.column("model").to_pylist(),
            table.column("model_version").to_pylist(),
            strict=True,
        )
    )
    letters = [json.loads(line) for line in dead_path.read_text().splitlines() if line]
    for pin in task.models:
        name, _, version = pin.ref.rpartition(":")
        ids = [row_id for row_id, m, v in produced if (m, v) == (name, version)]
        ids += [d["row_id"] for d in letters if d["model"] in (None, pin.ref)]
        if sorted(ids) != expected:
            missing = len(set(expected) - set(ids))
            problems.append(
                f"shard {shard.id}, {pin.ref}: {len(ids)} rows out for {len(expected)} in "
                f"({missing} ids missing)"
            )
    return problems
