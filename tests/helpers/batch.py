"""An archive, a spec and the outputs of batch jobs, shared by the batch tests."""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

import numpy as np
import pyarrow as pa
import pyarrow.parquet as pq
import yaml

#: Ids of the Parquet rows with a null feature, and of the JSON Lines row
#: whose feature is text.
NULL_IDS = {1053, 1077}
TEXT_ID = 2002


def archive(root: Path) -> dict[str, np.ndarray]:
    """Two hive partitions of Parquet (50 rows, row groups of 25) and a JSON
    Lines file; returns each good row's features by id."""
    rng = np.random.default_rng(3)
    good: dict[str, np.ndarray] = {}
    for night, first in ((1, 1000), (2, 1050)):
        ids = np.arange(first, first + 50)
        x = rng.normal(size=(50, 4))
        columns: dict[str, Any] = {"obj": ids}
        for j in range(4):
            values: list[float | None] = x[:, j].tolist()
            if night == 2:
                for bad in NULL_IDS:
                    values[bad - first] = None
            columns[f"f{j}"] = pa.array(values, pa.float64())
        columns["note"] = [f"n{i}" for i in ids]
        (root / f"night={night}").mkdir(parents=True)
        pq.write_table(
            pa.table(columns), root / f"night={night}" / "part-0.parquet", row_group_size=25
        )
        good.update({str(i): x[k] for k, i in enumerate(ids) if int(i) not in NULL_IDS})
    lines = []
    for k, i in enumerate(range(2000, 2004)):
        row = rng.normal(size=4)
        record = {"obj": i, **{f"f{j}": float(row[j]) for j in range(4)}}
        if i == TEXT_ID:
            record["f1"] = "abc"
        else:
            good[str(i)] = row
        lines.append(json.dumps(record))
        if k == 1:
            lines.append("{not json")
    (root / "extra.jsonl").write_text("\n".join(lines) + "\n")
    # What a HATS catalogue keeps beside its partitions: not data.
    (root / "properties").write_text("obs_collection=test\n")
    (root / "partition_info.csv").write_text("Norder,Npix\n0,1\n")
    (root / "_metadata").write_bytes(b"PAR1")
    return good


def spec(tmp_path: Path, **fields: Any) -> Path:
    doc = {
        "name": "rescore",
        "input": "archive",
        "columns": ["f0", "f1", "f2", "f3"],
        "id": "obj",
        "models": [{"ref": "default/linear"}],
        "filter": "y[2] > 30",
        "batch": 16,
        **fields,
    }
    path = tmp_path / "job.yaml"
    path.write_text(yaml.safe_dump(doc))
    return path


def outputs(out_dir: Path) -> tuple[pa.Table, list[dict[str, Any]]]:
    table = pa.concat_tables(
        [pq.read_table(p) for p in sorted(out_dir.glob("shard-*.parquet"))],
        promote_options="default",
    )
    dead = [
        json.loads(line)
        for p in sorted(out_dir.glob("shard-*.dead.jsonl"))
        for line in p.read_text().splitlines()
    ]
    return table, dead
