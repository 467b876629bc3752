"""Evaluations of registered models on registered datasets, kept in the registry.

:func:`evaluate_dataset` is what ``sciserve evaluate`` runs: the dataset
version is resolved and every one of its files verified against its digest
*before* the model sees a row (one changed byte is an
:class:`~sciserve.errors.IntegrityError` and nothing is recorded), the model
runs through :func:`.runner.evaluate_arrays`, and the record goes into the
registry with :meth:`Registry.add_evaluation
<sciserve.registry.registry.Registry.add_evaluation>`.

The outputs themselves go into the registry's content-addressed store as
one ``.npz`` file (written with fixed zip timestamps, so the same outputs
are the same bytes and the same blob), named in the record under
``stored_outputs``.  They let :func:`reproduce` say which outputs and rows
of a re-run differ, and the REST API draw a record's plots on demand.
Outputs larger than :data:`MAX_STORED_OUTPUT_BYTES` are not stored; their
sha256 in the record still decides bit-identity.

:func:`reproduce` re-runs a record with its model and dataset versions
(digests checked), split, batch size, thread settings and seeds; it
records nothing.  :func:`compare_on_dataset` runs two versions over the
same rows for :mod:`.compare`.
"""

from __future__ import annotations

import io
import zipfile
from collections.abc import Callable, Mapping
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np
import numpy.typing as npt

from ..errors import IntegrityError, InvalidInput, MetricInputError, NotFound
from ..package import croissant
from ..package.dataset import SplitData
from ..registry.promotion import EvaluationInfo
from ..registry.registry import Registry, VersionInfo
from .compare import Comparison, compare_classification, compare_regression
from .result import Task, to_dict
from .runner import DEFAULT_BATCH_SIZE, EvaluationRecord, Predictor, evaluate_arrays

__all__ = [
    "EXECUTOR_KEY",
    "MAX_STORED_OUTPUT_BYTES",
    "SERVER_KEY",
    "STORED_OUTPUTS_KEY",
    "DatasetSplit",
    "Evaluated",
    "Reproduced",
    "check_labels",
    "compare_on_dataset",
    "evaluate_dataset",
    "load_outputs",
    "open_split",
    "outputs_npz",
    "record_of",
    "reproduce",
    "store_evaluation",
    "stored_outputs",
]

#: Outputs above this size (as ``.npz``) are not kept in the store: a
#: re-run is then checked by digest only, without rows.
MAX_STORED_OUTPUT_BYTES = 256 * 1024 * 1024

#: Key of the record that names the stored outputs' blob.
STORED_OUTPUTS_KEY = "stored_outputs"
#: Key of the record that names the server the model ran on (absent: in-process).
SERVER_KEY = "server"
#: Key of the record that says how the model ran when not in this process
#: at the call (absent: in-process, or ``server``): a batch job's executor
#: (``{"kind": "batch", "workers": N, ...}``).
EXECUTOR_KEY = "executor"
#: Keys the registry's record adds to the :class:`EvaluationRecord`.
_EXTRA_KEYS = (STORED_OUTPUTS_KEY, SERVER_KEY, EXECUTOR_KEY)

#: Zip entries carry a modification time; a fixed one makes equal outputs equal bytes.
_ZIP_TIME = (1980, 1, 1, 0, 0, 0)

#: Loads a model version with runtime options (the thread settings).
Loader = Callable[[str, Mapping[str, Any]], Predictor]


@dataclass(frozen=True)
class DatasetSplit:
    """One verified split of a dataset version, with its Croissant task and classes."""

    info: VersionInfo
    split: str
    task: Task
    classes: tuple[str, ...]
    data: SplitData

    @property
    def name(self) -> str:
        return f"{self.info.namespace}/{self.info.name}"


@dataclass(frozen=True)
class Evaluated:
    """A stored evaluation: the registry's row, the record and all outputs."""

    stored: EvaluationInfo
    record: EvaluationRecord
    outputs: dict[str, npt.NDArray[Any]]
    split: DatasetSplit


def open_split(
    registry: Registry, dataset: str, split: str, *, features: bool = True
) -> DatasetSplit:
    """Resolve ``dataset``, read its Croissant document and load ``split``,
    every file checked against its digest first; without ``features`` only
    its labels and ids are read (see :class:`~sciserve.package.dataset.SplitData`)."""
    info = registry.resolve_dataset(dataset)
    card = croissant.read(registry.croissant(info.ref))
    if split not in card.splits:
        raise NotFound(f"{info.ref} has no split {split!r}; it has {', '.join(card.splits)}")
    data = registry.load_split(info.ref, split, features=features)
    if data.labels.shape[0] == 0:
        raise InvalidInput(f"split {split!r} of {info.ref} has no rows")
    return DatasetSplit(info, split, Task(card.task), tuple(card.classes), data)


def outputs_npz(outputs: Mapping[str, Any]) -> bytes:
    """The outputs as an ``.npz`` archive (one ``.npy`` per output, names
    sorted), the same bytes for the same outputs."""
    buffer = io.BytesIO()
    with zipfile.ZipFile(buffer, "w", compression=zipfile.ZIP_STORED) as archive:
        for name in sorted(outputs):
            entry = zipfile.ZipInfo(f"{name}.npy", date_time=_ZIP_TIME)
            with archive.open(entry, "w", force_zip64=True) as fh:
                np.lib.format.write_array(fh, np.asarray(outputs[name]), allow_pickle=False)
    return buffer.getvalue()


def _store_outputs(registry: Registry, outputs: Mapping[str, Any]) -> dict[str, Any] | None:
    data = outputs_npz(outputs)
    if len(data) > MAX_STORED_OUTPUT_BYTES:
        return None
    with registry.scratch() as scratch:
        path = Path(scratch) / "outputs.npz"
        path.write_bytes(data)
        sha256, size = registry.store.put_file(path)
    return {"sha256": sha256, "size": size, "format": "npz"}


def stored_outputs(record: Mapping[str, Any]) -> str | None:
    """The store digest of a record's outputs, if they were kept."""
    found = record.get(STORED_OUTPUTS_KEY)
    if isinstance(found, Mapping) and isinstance(found.get("sha256"), str):
        return str(found["sha256"])
    return None


def load_outputs(registry: Registry, sha256: str) -> dict[str, npt.NDArray[Any]]:
    """Outputs kept by :func:`evaluate_dataset`, their bytes checked against ``sha256``."""
    import hashlib

    size = registry.store.size(sha256)
    if size > MAX_STORED_OUTPUT_BYTES:
        raise IntegrityError(f"stored outputs {sha256[:12]} are larger than any sciserve writes")
    with registry.store.open(sha256) as fh:
        data = fh.read(size + 1)
    actual = hashlib.sha256(data).hexdigest()
    if actual != sha256.removeprefix("sha256:"):
        raise IntegrityError(
            f"stored outputs have sha256 {actual}, recorded {sha256}",
            path="outputs.npz",
            expected=sha256,
            actual=actual,
        )
    # A record names its blob, and an admin may post any record: the blob is
    # read as untrusted (no pickles, sizes declared in the zip bounded).
    try:
        with zipfile.ZipFile(io.BytesIO(data)) as archive:
            if sum(i.file_size for i in archive.infolist()) > MAX_STORED_OUTPUT_BYTES:
                raise IntegrityError(f"stored outputs {sha256[:12]} unpack to too many bytes")
        with np.load(io.BytesIO(data), allow_pickle=False) as npz:
            return {name: npz[name] for name in npz.files}
    except (zipfile.BadZipFile, ValueError, OSError, EOFError) as exc:
        raise IntegrityError(
            f"blob {sha256[:12]} named as the outputs of a record is not an outputs archive"
        ) from exc


def record_of(info: EvaluationInfo) -> EvaluationRecord:
    """The :class:`EvaluationRecord` inside a stored record (without the store's keys)."""
    from .runner import record_from_dict

    body = {k: v for k, v in info.record.items() if k not in _EXTRA_KEYS}
    try:
        return record_from_dict(body)
    except (TypeError, KeyError, ValueError, MetricInputError) as exc:
        raise InvalidInput(
            f"evaluation {info.record_id} was not recorded by 'sciserve evaluate': {exc}"
        ) from exc


def check_labels(model: Predictor, split: DatasetSplit, output: str | None) -> None:
    """A classification dataset needs a model whose output names classes
    covering every label; checked before the model runs."""
    if split.task is not Task.CLASSIFICATION:
        return
    outputs = model.manifest.outputs
    chosen = [o for o in outputs if o.name == output] if output else list(outputs)
    if output is None and len(chosen) > 1:
        chosen = [o for o in chosen if o.name == "probabilities"] or chosen
    labelled = [o for o in chosen if o.labels]
    if not labelled:
        raise MetricInputError(
            f"{model.ref} does not fit the classification task of {split.info.ref}: "
            "its output names no classes (manifest 'labels')"
        )
    known = set(labelled[0].labels or ())
    present = {str(v) for v in np.unique(split.data.labels.astype(str))}
    unknown = sorted(present - known)
    if unknown:
        shown = ", ".join(unknown[:10])
        raise MetricInputError(
            f"{split.info.ref} ({split.split}) has labels {shown} that {model.ref} does not "
            f"predict; its classes are {', '.join(labelled[0].labels or ())}"
        )


def _run(
    model: Predictor,
    split: DatasetSplit,
    *,
    batch_size: int,
    output: str | None,
    seeds: Mapping[str, int] | None,
) -> tuple[EvaluationRecord, dict[str, npt.NDArray[Any]]]:
    check_labels(model, split, output)
    labels = split.data.labels
    if split.task is Task.CLASSIFICATION:
        labels = labels.astype(str)
    return evaluate_arrays(
        model,
        split.data.features,
        labels,
        split.task,
        output=output,
        batch_size=batch_size,
        dataset=split.info.ref,
        dataset_digest=split.info.digest,
        split=split.split,
        seeds=seeds,
    )


def evaluate_dataset(
    registry: Registry,
    model: Predictor,
    split: DatasetSplit,
    *,
    batch_size: int = DEFAULT_BATCH_SIZE,
    output: str | None = None,
    seeds: Mapping[str, int] | None = None,
    server: str | None = None,
    actor: str | None = None,
) -> Evaluated:
    """Evaluate ``model`` on a verified split (:func:`open_split`) and store
    the record (metrics: the scalars) and the outputs in ``registry``.

    ``server`` is recorded as where the model ran when ``model`` calls one
    (its thread settings and hardware are then the server's, not in the record).
    """
    record, outputs = _run(model, split, batch_size=batch_size, output=output, seeds=seeds)
    return store_evaluation(registry, record, outputs, split, server=server, actor=actor)


def store_evaluation(
    registry: Registry,
    record: EvaluationRecord,
    outputs: dict[str, npt.NDArray[Any]],
    split: DatasetSplit,
    *,
    server: str | None = None,
    executor: Mapping[str, Any] | None = None,
    actor: str | None = None,
) -> Evaluated:
    """Store ``record`` (metrics: the scalars) and its ``outputs`` in
    ``registry``; ``server`` or ``executor`` say where the model ran
    (:data:`SERVER_KEY`, :data:`EXECUTOR_KEY`)."""
    body: dict[str, Any] = to_dict(record)
    if server is not None:
        body[SERVER_KEY] = server
    if executor is not None:
        body[EXECUTOR_KEY] = dict(executor)
    kept = _store_outputs(registry, outputs)
    if kept is not None:
        body[STORED_OUTPUTS_KEY] = kept
    stored = registry.add_evaluation(
        record.model,
        dataset=split.name,
        dataset_version=split.info.version,
        dataset_digest=split.info.digest,
        split=split.split,
        metrics=record.metrics.scalars(),
        record=body,
        actor=actor,
    )
    return Evaluated(stored, record, outputs, split)


@dataclass(frozen=True)
class Reproduced:
    """A re-run of a stored record: the verdict (see :mod:`.reproduce`) and the new record."""

    stored: EvaluationInfo
    reproduction: Any  # reproduce.Reproduction
    record: EvaluationRecord
    rows_checked: bool


def reproduce(
    registry: Registry,
    record_id: str,
    load: Loader,
    *,
    rtol: float = 1e-6,
    atol: float = 1e-7,
) -> Reproduced:
    """Re-run record ``record_id`` as recorded and compare the outputs.

    The model and dataset versions must still have the recorded digests
    (versions are immutable, so anything else is an
    :class:`~sciserve.errors.IntegrityError`).  Without stored outputs the
    verdict comes from the digests alone.
    """
    from .reproduce import Reproduction, Verdict, compare_outputs

    stored = registry.evaluation(record_id)
    old = record_of(stored)
    model_ref = stored.model_ref
    info = registry.resolve(model_ref)
    if info.digest != stored.model_digest:
        raise IntegrityError(
            f"{model_ref} now has digest {info.digest}; the record was of {stored.model_digest}"
        )
    split = open_split(registry, f"{stored.dataset}:{stored.dataset_version}", stored.split)
    if split.info.digest != stored.dataset_digest:
        raise IntegrityError(
            f"{split.info.ref} now has digest {split.info.digest}; "
            f"the record was of {stored.dataset_digest}"
        )
    model = load(model_ref, dict(old.threads))
    try:
        record, outputs = _run(
            model, split, batch_size=old.batch_size, output=old.output, seeds=old.seeds
        )
    finally:
        close = getattr(model, "close", None)
        if callable(close):
            close()
    kept = stored_outputs(stored.record)
    if kept is not None:
        result = compare_outputs(load_outputs(registry, kept), outputs, rtol=rtol, atol=atol)
        if result.expected_sha256 != old.predictions_sha256:
            raise IntegrityError(
                f"the stored outputs of {record_id} do not hash to the record's predictions_sha256"
            )
    else:
        same = record.predictions_sha256 == old.predictions_sha256
        result = Reproduction(
            Verdict.BIT_IDENTICAL if same else Verdict.DIFFERENT,
            old.predictions_sha256,
            record.predictions_sha256,
            rtol,
            atol,
            (),
        )
    return Reproduced(stored, result, record, kept is not None)


def compare_on_dataset(
    model_a: Predictor,
    model_b: Predictor,
    split: DatasetSplit,
    *,
    batch_size: int = DEFAULT_BATCH_SIZE,
    output: str | None = None,
    n_bootstrap: int = 1000,
    seed: int = 0,
) -> tuple[Comparison, EvaluationRecord, EvaluationRecord]:
    """Run both versions over the same split and compare them row by row."""
    rec_a, out_a = _run(model_a, split, batch_size=batch_size, output=output, seeds=None)
    rec_b, out_b = _run(model_b, split, batch_size=batch_size, output=output, seeds=None)
    truth = split.data.labels
    if split.task is Task.CLASSIFICATION:
        classes_a, classes_b = _labels_of(model_a, rec_a.output), _labels_of(model_b, rec_b.output)
        if classes_a != classes_b:
            raise MetricInputError(
                f"{model_a.ref} and {model_b.ref} predict different classes "
                f"({', '.join(classes_a)} / {', '.join(classes_b)}); they cannot be compared"
            )
        ids = split.data.ids
        comparison = compare_classification(
            truth.astype(str),
            out_a[rec_a.output],
            out_b[rec_b.output],
            classes=list(classes_a),
            ids=None if ids is None else [str(i) for i in ids],
            n_bootstrap=n_bootstrap,
            seed=seed,
        )
    else:
        comparison = compare_regression(
            truth, out_a[rec_a.output], out_b[rec_b.output], n_bootstrap=n_bootstrap, seed=seed
        )
    return comparison, rec_a, rec_b


def _labels_of(model: Predictor, output: str) -> tuple[str, ...]:
    for spec in model.manifest.outputs:
        if spec.name == output:
            return tuple(spec.labels or ())
    return ()
