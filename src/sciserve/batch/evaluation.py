"""An evaluation whose model runs as a batch job: ``sciserve evaluate --batch``.

The dataset split is opened (and every file verified) as for any
evaluation (:func:`sciserve.evaluation.registered.open_split`); its Parquet
file, in the registry's package cache, becomes the archive of a batch job
built here with the same spec model as ``sciserve batch run``
(:class:`~sciserve.streams.spec.BatchSpec`: the Croissant feature columns
in the dataset's order, the ``id`` column as the rows' id, the record's
batch size as the rows per model call).  The job runs on the Dask client
it is given, writing under a scratch directory of the registry, and
verifies its own output.  The outputs are then read back and put in the
split's row order by id, every input id exactly once (else
:class:`~sciserve.errors.IntegrityError`, and nothing is recorded), and
the in-process path's own code computes and stores the record
(:func:`~sciserve.evaluation.runner.record_outputs`,
:func:`~sciserve.evaluation.registered.store_evaluation`), which says how
the model ran under ``executor``.
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np
import numpy.typing as npt

from ..config import Settings
from ..errors import IntegrityError, InvalidInput
from ..evaluation.registered import DatasetSplit, Evaluated, check_labels, store_evaluation
from ..evaluation.result import Task
from ..evaluation.runner import DEFAULT_BATCH_SIZE, record_outputs, timings
from ..package import croissant
from ..package.manifest import DATASET, Manifest
from ..registry.registry import Registry, VersionInfo
from ..streams.spec import BatchSpec, ModelStep
from .job import BatchJob
from .worker import ShardResult

__all__ = ["evaluate_as_batch", "evaluation_spec", "read_outputs"]

#: The column of a dataset split that identifies its rows (see
#: :func:`sciserve.package.dataset.load_split`).
ID_COLUMN = "id"


@dataclass(frozen=True)
class _PinnedModel:
    """The model version a batch job runs, as the record sees it: its
    workers load it with the runtime's own thread settings (none are set)."""

    info: VersionInfo

    @property
    def ref(self) -> str:
        return self.info.ref

    @property
    def digest(self) -> str:
        return self.info.digest

    @property
    def manifest(self) -> Manifest:
        return self.info.manifest

    @property
    def runtime_options(self) -> Mapping[str, Any]:
        return {}

    def predict(self, inputs: Any = None, /, **named: Any) -> dict[str, np.ndarray]:
        raise NotImplementedError("a batch job's model runs on its workers, not here")


def _split_file(registry: Registry, split: DatasetSplit) -> Path:
    """The split's Parquet file in the package cache (verified when pulled)."""
    root = registry.pull(split.info.ref, kind=DATASET)
    card = croissant.read(registry.croissant(split.info.ref))
    return Path(root) / card.splits[split.split].file


def evaluation_spec(
    model: str, split: DatasetSplit, archive: Path, *, batch_size: int = DEFAULT_BATCH_SIZE
) -> BatchSpec:
    """The batch job that runs ``model`` over ``archive`` (the split's
    Parquet file): its feature columns into the model's input, its ``id``
    column as the rows' id."""
    if split.data.ids is None:
        raise InvalidInput(
            f"{split.info.ref} ({split.split}) has no {ID_COLUMN!r} column: a batch job's "
            "outputs are joined to the labels by id"
        )
    if not split.data.feature_names:
        raise InvalidInput(f"{split.info.ref} ({split.split}) has no feature columns")
    return BatchSpec(
        name="evaluate",
        input=str(archive),
        format="parquet",
        columns=tuple(split.data.feature_names),
        id=ID_COLUMN,
        batch=batch_size,
        models=(ModelStep(ref=model),),
    )


def _unique_ids(split: DatasetSplit) -> npt.NDArray[np.str_]:
    assert split.data.ids is not None
    ids = np.asarray([str(i) for i in split.data.ids.tolist()])
    if len(np.unique(ids)) != len(ids):
        raise InvalidInput(
            f"{split.info.ref} ({split.split}) has repeated ids: a batch job's outputs "
            "cannot be joined to its labels"
        )
    return ids


def _as_array(name: str, column: Any) -> npt.NDArray[Any]:
    """Output ``name``'s column (scalars, or nested fixed-size lists) as one array."""
    import pyarrow as pa

    array = column.combine_chunks() if isinstance(column, pa.ChunkedArray) else column
    shape = [len(array)]
    while pa.types.is_fixed_size_list(array.type):
        shape.append(array.type.list_size)
        array = array.flatten()
    if array.null_count:
        raise IntegrityError(f"the batch job's output {name!r} has null values")
    return np.asarray(array.to_numpy(zero_copy_only=False)).reshape(shape)


def read_outputs(
    out_dir: Path, ids: Sequence[str] | npt.NDArray[Any], outputs: Sequence[str]
) -> dict[str, npt.NDArray[Any]]:
    """The ``outputs`` columns of a batch job's shard files in ``out_dir``,
    row ``i`` being that of ``ids[i]``.

    Every input id must come back exactly once (rows in = rows out, no
    dead letter): anything else is an :class:`IntegrityError` naming the
    first ids missing, repeated or unknown.
    """
    import pyarrow as pa
    import pyarrow.parquet as pq

    wanted = np.asarray(ids, dtype=str)
    files = sorted(out_dir.glob("shard-*.parquet"))
    dead = [p for p in sorted(out_dir.glob("shard-*.dead.jsonl")) if p.stat().st_size]
    if dead:
        raise IntegrityError(
            f"the batch job left dead letters ({', '.join(p.name for p in dead)}): "
            "some rows have no output, so there is nothing to evaluate"
        )
    if not files:
        raise IntegrityError(f"the batch job wrote no output in {out_dir}")
    table = pa.concat_tables([pq.read_table(f, columns=["row_id", *outputs]) for f in files])
    got = np.asarray(table.column("row_id").to_pylist(), dtype=str)
    order = np.argsort(got, kind="stable")
    sorted_got = got[order]
    repeated = np.unique(sorted_got[1:][sorted_got[1:] == sorted_got[:-1]])
    position = np.searchsorted(sorted_got, wanted)
    found = np.zeros(len(wanted), dtype=bool)
    if len(sorted_got):
        found = (position < len(sorted_got)) & (
            sorted_got[np.minimum(position, len(sorted_got) - 1)] == wanted
        )
    problems = {
        "missing": wanted[~found],
        "repeated": repeated,
        "unknown": np.setdiff1d(got, wanted),
    }
    if len(got) != len(wanted) or any(len(v) for v in problems.values()):
        said = [f"{len(got)} output rows for {len(wanted)} input rows"]
        said += [f"{kind} ids {', '.join(v[:5])}" for kind, v in problems.items() if len(v)]
        raise IntegrityError(
            "the batch job's output does not hold every input row exactly once: " + "; ".join(said)
        )
    rows = order[position]
    return {name: _as_array(name, table.column(name))[rows] for name in outputs}


def evaluate_as_batch(
    registry: Registry,
    settings: Settings,
    client: Any,
    model: str,
    split: DatasetSplit,
    *,
    scheduler: str | None = None,
    batch_size: int = DEFAULT_BATCH_SIZE,
    output: str | None = None,
    seeds: Mapping[str, int] | None = None,
    actor: str | None = None,
) -> Evaluated:
    """Evaluate ``model`` on ``split`` as a batch job on ``client``'s Dask
    cluster (its workers, and ``scheduler`` if given, are recorded), and
    store the record."""
    info = registry.resolve(model)
    pinned = _PinnedModel(info)
    check_labels(pinned, split, output)  # before any work, as in-process
    ids = _unique_ids(split)
    spec = evaluation_spec(info.ref, split, _split_file(registry, split), batch_size=batch_size)
    seconds: list[float] = []

    def on_shard(result: ShardResult) -> None:
        seconds.append(result.seconds)

    with registry.scratch("evaluate") as scratch:
        job = BatchJob(spec, settings, scratch)
        job.plan()
        report = job.run(client, on_shard)
        if report.rows != len(ids) or report.outputs != len(ids) or report.dead_letters:
            raise IntegrityError(
                f"the batch job read {report.rows} rows and wrote {report.outputs} outputs "
                f"({report.dead_letters} dead letters) for {len(ids)} rows of {split.info.ref}"
            )
        names = [o.name for o in info.manifest.outputs]
        outputs = read_outputs(report.out_dir, ids, names)
        job_id = report.job_id
    labels = split.data.labels
    if split.task is Task.CLASSIFICATION:
        labels = labels.astype(str)
    record = record_outputs(
        pinned,
        outputs,
        labels,
        split.task,
        timings(len(ids), seconds),
        output=output,
        batch_size=batch_size,
        dataset=split.info.ref,
        dataset_digest=split.info.digest,
        split=split.split,
        seeds=seeds,
    )
    executor: dict[str, Any] = {
        "kind": "batch",
        "workers": len(client.scheduler_info().get("workers", {})),
        "shards": report.shards,
        "job_id": job_id,
    }
    if scheduler is not None:
        executor["scheduler"] = scheduler
    return store_evaluation(registry, record, outputs, split, executor=executor, actor=actor)
