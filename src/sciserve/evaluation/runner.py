"""Run a loaded model over arrays and record the evaluation.

:func:`evaluate_arrays` feeds a model (``sciserve.load(...)``, or anything
with the same ``predict``) fixed-size batches in order, checks that every
batch comes back with one output row per input row, computes the task
metrics over the outputs and times the model alone.  The
:class:`EvaluationRecord` it returns holds what is needed to re-check the
numbers: model and dataset digests, split, code and library versions, seeds,
thread settings, hardware, and the sha256 of all outputs.

Bit-identical outputs on a re-run need the same batch size (a model may
reduce differently over a different batch) and the same thread counts
(a reduction split over more threads adds in another order); both are in
the record.  Throughput, latency and the creation time are measurements,
not results: :meth:`EvaluationRecord.reproducible` leaves them out.
"""

from __future__ import annotations

import datetime as dt
import importlib.metadata
import os
import platform
import time
from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from typing import Any, Protocol

import numpy as np
import numpy.typing as npt

from .._version import __version__
from ..errors import MetricInputError, ModelExecutionError
from ..package.manifest import Manifest
from ._checks import as_array
from .digest import predictions_sha256
from .metrics import classification_metrics, regression_metrics
from .result import (
    ClassificationMetrics,
    RegressionMetrics,
    Task,
    metrics_from_dict,
    to_dict,
)

__all__ = [
    "DEFAULT_BATCH_SIZE",
    "EvaluationRecord",
    "Performance",
    "Predictor",
    "evaluate_arrays",
    "record_from_dict",
    "record_outputs",
    "timings",
]

#: Rows per call of the model unless told otherwise.
DEFAULT_BATCH_SIZE = 1024

#: Libraries whose versions can change a model's outputs, recorded when installed.
LIBRARIES = (
    "numpy",
    "onnxruntime",
    "lightgbm",
    "xgboost",
    "scikit-learn",
    "torch",
)

#: Version of the record's shape, so a reader can tell old records from new.
RECORD_SCHEMA = 1


class Predictor(Protocol):
    """What the runner needs of a model: :class:`sciserve.Model` has it."""

    @property
    def ref(self) -> str: ...

    @property
    def digest(self) -> str: ...

    @property
    def manifest(self) -> Manifest: ...

    @property
    def runtime_options(self) -> Mapping[str, Any]: ...

    def predict(self, inputs: Any = None, /, **named: Any) -> dict[str, np.ndarray]: ...


@dataclass(frozen=True)
class Performance:
    """How fast the model ran: its own time only (metrics not included).

    ``rows_per_second`` is rows over the summed time of the model calls;
    latencies are per batch call, in milliseconds.
    """

    seconds: float
    rows_per_second: float
    batches: int
    latency_ms_p50: float
    latency_ms_p99: float
    latency_ms_max: float


@dataclass(frozen=True)
class EvaluationRecord:
    """One evaluation of one model version on one dataset split."""

    schema: int
    task: Task
    model: str
    model_digest: str
    dataset: str
    dataset_digest: str
    split: str
    output: str
    rows: int
    batch_size: int
    threads: dict[str, Any]
    seeds: dict[str, int]
    code_version: str
    libraries: dict[str, str]
    hardware: dict[str, Any]
    predictions_sha256: str
    metrics: ClassificationMetrics | RegressionMetrics
    performance: Performance
    created_at: str

    def reproducible(self) -> dict[str, Any]:
        """The record without measurements and timestamps: equal for two runs
        that computed the same thing."""
        data: dict[str, Any] = to_dict(self)
        del data["performance"], data["created_at"]
        return data


def record_from_dict(data: Mapping[str, Any]) -> EvaluationRecord:
    """Read back what ``to_dict(record)`` wrote."""
    body = dict(data)
    if body.get("schema") != RECORD_SCHEMA:
        raise MetricInputError(f"evaluation record schema {body.get('schema')!r} is not known")
    return EvaluationRecord(
        **{
            **body,
            "task": Task(body["task"]),
            "metrics": metrics_from_dict(body["metrics"]),
            "performance": Performance(**body["performance"]),
        }
    )


def _inputs(model: Predictor, features: Any) -> tuple[dict[str, npt.NDArray[Any]], int]:
    if isinstance(features, Mapping):
        arrays = {str(k): as_array(v, f"input {k!r}") for k, v in features.items()}
    else:
        names = [t.name for t in model.manifest.inputs]
        if len(names) != 1:
            raise MetricInputError(
                f"{model.ref} takes {len(names)} inputs {names}: pass the features as a "
                "mapping of input name to array"
            )
        arrays = {names[0]: as_array(features, "features")}
    rows = {name: (a.shape[0] if a.ndim else -1) for name, a in arrays.items()}
    counts = set(rows.values())
    if len(counts) != 1 or -1 in counts:
        raise MetricInputError(f"every input needs the same number of rows, got {rows}")
    (n,) = counts
    if n == 0:
        raise MetricInputError("the features have no rows: there is nothing to evaluate")
    return arrays, n


def _output_name(model: Predictor, outputs: Mapping[str, Any], wanted: str | None) -> str:
    names = list(outputs)
    if wanted is not None:
        if wanted not in outputs:
            raise MetricInputError(f"{model.ref} has no output {wanted!r}; it returns {names}")
        return wanted
    if len(names) == 1:
        return names[0]
    if "probabilities" in outputs:
        return "probabilities"
    raise MetricInputError(
        f"{model.ref} returns outputs {names}: name the one to evaluate (output=...)"
    )


def _classes(model: Predictor, output: str) -> list[str] | None:
    for spec in model.manifest.outputs:
        if spec.name == output and spec.labels:
            return list(spec.labels)
    return None


def _libraries() -> dict[str, str]:
    found = {"sciserve": __version__}
    for name in LIBRARIES:
        try:
            found[name] = importlib.metadata.version(name)
        except importlib.metadata.PackageNotFoundError:
            continue
    return found


def _hardware() -> dict[str, Any]:
    return {
        "machine": platform.machine(),
        "processor": platform.processor(),
        "system": platform.system(),
        "cpus": os.cpu_count() or 0,
        "python": platform.python_version(),
    }


def _threads(model: Predictor) -> dict[str, Any]:
    """The runtime options that set thread counts (``intra_op_threads``,
    ``num_threads``), sorted by name; a runtime's default applies to any not set."""
    options = model.runtime_options
    return {k: options[k] for k in sorted(options) if "thread" in k}


def evaluate_arrays(
    model: Predictor,
    features: Any,
    labels: Any,
    task: Task | str,
    *,
    output: str | None = None,
    classes: Sequence[Any] | None = None,
    class_weights: Mapping[str, float] | Sequence[float] | None = None,
    bins: int | Sequence[float] = 10,
    batch_size: int = DEFAULT_BATCH_SIZE,
    dataset: str = "",
    dataset_digest: str = "",
    split: str = "",
    seeds: Mapping[str, int] | None = None,
) -> tuple[EvaluationRecord, dict[str, npt.NDArray[Any]]]:
    """Run ``model`` over ``features`` in batches and evaluate ``output``.

    ``features`` is the model's single input as an array, or arrays by
    input name; ``labels`` are the true classes (or values, for regression).
    Classification evaluates the output named ``output`` (default: the only
    one, or ``probabilities``) as per-class probabilities whose columns are
    ``classes`` (default: the output's ``labels`` in the manifest, else
    column indices).  Returns the record and all outputs concatenated.
    """
    kind = Task(task)
    if batch_size < 1:
        raise MetricInputError(f"batch_size must be at least 1, got {batch_size}")
    arrays, n = _inputs(model, features)
    # Checked before the model runs: a mismatch found after an hour of inference is an hour lost.
    label_array = as_array(labels, "labels")
    given = label_array.shape[0] if label_array.ndim else 0
    if given != n:
        raise MetricInputError(f"{given} label(s) for {n} row(s) of features: they must match")
    parts: dict[str, list[npt.NDArray[Any]]] = {}
    latencies: list[float] = []
    for start in range(0, n, batch_size):
        batch = {name: a[start : start + batch_size] for name, a in arrays.items()}
        rows = min(batch_size, n - start)
        began = time.perf_counter()
        result = model.predict(batch)
        latencies.append(time.perf_counter() - began)
        for name, value in result.items():
            value = np.asarray(value)
            # A batch dim that does not hold the batch's rows would shift every
            # later row against its label: a wrong answer, so an error.
            if value.ndim == 0 or value.shape[0] != rows:
                raise ModelExecutionError(
                    f"{model.ref} returned {name!r} with shape {value.shape} for a batch of "
                    f"{rows} rows; every output needs one row per input row"
                )
            parts.setdefault(name, []).append(value)
    outputs = {name: np.concatenate(chunks, axis=0) for name, chunks in parts.items()}
    record = record_outputs(
        model,
        outputs,
        label_array,
        kind,
        timings(n, latencies),
        output=output,
        classes=classes,
        class_weights=class_weights,
        bins=bins,
        batch_size=batch_size,
        dataset=dataset,
        dataset_digest=dataset_digest,
        split=split,
        seeds=seeds,
    )
    return record, outputs


def timings(rows: int, latencies: Sequence[float]) -> Performance:
    """:class:`Performance` of ``rows`` rows computed in calls that took
    ``latencies`` seconds each."""
    if not latencies:
        raise MetricInputError("no model call was timed")
    total = float(sum(latencies))
    ms = np.asarray(latencies) * 1000
    return Performance(
        seconds=total,
        rows_per_second=rows / total if total > 0 else 0.0,
        batches=len(latencies),
        latency_ms_p50=float(np.percentile(ms, 50)),
        latency_ms_p99=float(np.percentile(ms, 99)),
        latency_ms_max=float(ms.max()),
    )


def record_outputs(
    model: Predictor,
    outputs: Mapping[str, npt.NDArray[Any]],
    labels: Any,
    task: Task | str,
    performance: Performance,
    *,
    output: str | None = None,
    classes: Sequence[Any] | None = None,
    class_weights: Mapping[str, float] | Sequence[float] | None = None,
    bins: int | Sequence[float] = 10,
    batch_size: int = DEFAULT_BATCH_SIZE,
    dataset: str = "",
    dataset_digest: str = "",
    split: str = "",
    seeds: Mapping[str, int] | None = None,
) -> EvaluationRecord:
    """The record of ``model``'s ``outputs`` (all rows, in the order of
    ``labels``), however they were computed: the metrics of ``output`` (as
    :func:`evaluate_arrays` chooses it) and what is needed to re-check them."""
    kind = Task(task)
    label_array = as_array(labels, "labels")
    n = label_array.shape[0] if label_array.ndim else 0
    for name, value in outputs.items():
        # Outputs not row-aligned with the labels would be wrong answers.
        if value.ndim == 0 or value.shape[0] != n:
            raise ModelExecutionError(
                f"{model.ref}'s output {name!r} has shape {value.shape} for {n} labelled rows"
            )
    chosen = _output_name(model, outputs, output)
    values = outputs[chosen]
    metrics: ClassificationMetrics | RegressionMetrics
    try:
        if kind is Task.CLASSIFICATION:
            metrics = classification_metrics(
                label_array,
                values,
                classes=classes if classes is not None else _classes(model, chosen),
                weights=class_weights,
            )
        else:
            metrics = regression_metrics(label_array, values, bins=bins)
    except MetricInputError as exc:
        raise MetricInputError(
            f"output {chosen!r} of {model.ref} does not fit the {kind.value} task: {exc}"
        ) from exc
    record = EvaluationRecord(
        schema=RECORD_SCHEMA,
        task=kind,
        model=model.ref,
        model_digest=model.digest,
        dataset=dataset,
        dataset_digest=dataset_digest,
        split=split,
        output=chosen,
        rows=n,
        batch_size=batch_size,
        threads=_threads(model),
        seeds=dict(sorted((seeds or {}).items())),
        code_version=__version__,
        libraries=_libraries(),
        hardware=_hardware(),
        predictions_sha256=predictions_sha256(outputs),
        metrics=metrics,
        performance=performance,
        created_at=dt.datetime.now(dt.UTC).isoformat(timespec="seconds"),
    )
    return record
