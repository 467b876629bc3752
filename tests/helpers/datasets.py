"""Small dataset packages for tests: Parquet splits, assembled with their Croissant document."""

from __future__ import annotations

from pathlib import Path

import pyarrow as pa
import pyarrow.parquet as pq

from sciserve.package.dataset import DatasetSource, assemble

CLASSES = ("star", "galaxy", "qso")


def write_split(path: Path, rows: int, *, label: str = "label", offset: float = 0.0) -> Path:
    """A Parquet split: ``id``, two numeric features and a text label cycling through CLASSES."""
    pq.write_table(
        pa.table(
            {
                "id": pa.array(range(rows), pa.int64()),
                "flux": pa.array([offset + i / 10 for i in range(rows)], pa.float32()),
                "colour": pa.array([float(i % 5) for i in range(rows)], pa.float64()),
                label: pa.array([CLASSES[i % 3] for i in range(rows)], pa.string()),
            }
        ),
        path,
    )
    return path


def make_dataset(
    out: Path,
    *,
    name: str = "stars",
    version: str = "1.0.0",
    namespace: str = "default",
    offset: float = 0.0,
) -> Path:
    """A dataset package at ``out`` (train: 9 rows, test: 6 rows); ``offset`` changes the bytes."""
    src = out.parent / f".{out.name}.src"
    src.mkdir(parents=True)
    splits = {
        "train": write_split(src / "train.parquet", 9, offset=offset),
        "test": write_split(src / "test.parquet", 6, offset=offset),
    }
    source = DatasetSource(
        name=name,
        version=version,
        license="CC-BY-4.0",
        namespace=namespace,
        creators=("A. Astronomer",),
    )
    assemble(splits, out, source, max_file_bytes=2**30)
    return out
