"""The built-in benchmark: labelled light-curve features as a dataset package, offline.

``sciserve datasets builtin lightcurves`` publishes what :func:`build_benchmark`
writes: the objects the example classifiers are trained (``train``) and
tested (``test``) on (:mod:`.build`: the same seeds and sizes), one row per
object with its id, the broker-style features of :mod:`.features` (the
example classifiers' inputs, in their order) and its class, one of
:data:`~sciserve.examples.CLASSES` (their outputs, in their order).

The same seed gives the same bytes, and so the same sha256, on every run:
the light curves come from one seeded random stream, the Parquet files are
written with fixed row groups, compression and no timestamps, and the
Croissant document has no dates.  Parquet files record the writing library
(``created_by``: the pyarrow version), so the bytes are those of one
pyarrow release; a test pins them.
"""

from __future__ import annotations

from pathlib import Path

import numpy as np

from ..errors import Conflict, DependencyMissing
from ..package.dataset import DatasetSource, assemble, write_parquet
from ..package.manifest import Manifest
from .build import AUTHORS, DATASET, LICENSE, N_TEST, N_TRAIN, NAMESPACE, REPOSITORY
from .features import FEATURE_NAMES, FEATURE_SET, extract_many
from .lightcurves import CLASSES, simulate

__all__ = ["BENCHMARKS", "BENCHMARK_NAME", "BENCHMARK_VERSION", "build_benchmark"]

#: The dataset's name in the registry (in namespace ``examples``).
BENCHMARK_NAME = DATASET.removesuffix("-v1")
BENCHMARK_VERSION = "1.0.0"
#: What ``sciserve datasets builtin`` offers, by its short name.
BENCHMARKS = {"lightcurves": BENCHMARK_NAME}
_LABEL = "label"


def _write_split(path: Path, seed: int, n: int) -> None:
    try:
        import pyarrow as pa
    except ImportError as exc:
        raise DependencyMissing(
            "the built-in benchmark is written as Parquet: pip install 'sciserve[datasets]'"
        ) from exc
    curves = simulate(n, seed=seed)
    features = extract_many(curves)
    columns: dict[str, pa.Array] = {
        "id": pa.array(np.array([lc.object_id for lc in curves], dtype=np.int64)),
    }
    for i, name in enumerate(FEATURE_NAMES):
        columns[name] = pa.array(np.ascontiguousarray(features[:, i], dtype=np.float32))
    columns[_LABEL] = pa.array([lc.label for lc in curves], type=pa.string())
    write_parquet(pa.table(columns), path, dictionary=[_LABEL])


def build_benchmark(
    out: Path, *, seed: int = 42, n_train: int = N_TRAIN, n_test: int = N_TEST
) -> Manifest:
    """Write the light-curve benchmark as a dataset package into the new directory ``out``.

    The defaults are the example classifiers' own training and held-out
    objects (seed ``seed`` and ``seed + 1``).  Takes a few seconds of CPU.
    """
    out = Path(out)
    if out.exists():
        raise Conflict(f"{out} already exists; choose a new directory")
    defaults = (seed, n_train, n_test) == (42, N_TRAIN, N_TEST)
    version = BENCHMARK_VERSION if defaults else f"{BENCHMARK_VERSION}+s{seed}.{n_train}.{n_test}"
    staging = out.parent / f".{out.name}.data"
    staging.mkdir(parents=True)
    try:
        _write_split(staging / "train.parquet", seed, n_train)
        _write_split(staging / "test.parquet", seed + 1, n_test)
        source = DatasetSource(
            name=BENCHMARK_NAME,
            version=version,
            namespace=NAMESPACE,
            description=(
                "Simulated multi-band light curves of five classes of transients and variable "
                f"sources, summarised as broker-style features ({FEATURE_SET}); the training "
                f"and held-out objects of the sciserve example classifiers (seeds {seed} and "
                f"{seed + 1}). A reference classification task, generated offline."
            ),
            license=LICENSE,
            creators=(AUTHORS,),
            citation=f"{AUTHORS}. {BENCHMARK_NAME} {version}. {REPOSITORY}",
            task="classification",
            label=_LABEL,
            classes=CLASSES,
            url=f"urn:sciserve:{DATASET}?seed={seed}&n_train={n_train}&n_test={n_test}",
            tags=("astronomy", "time-domain", "light-curves", "classification", "synthetic"),
        )
        return assemble(
            {"train": staging / "train.parquet", "test": staging / "test.parquet"},
            out,
            source,
            max_file_bytes=2**40,
        )
    finally:
        for path in staging.iterdir():
            path.unlink()
        staging.rmdir()
