"""Batch benchmark: re-score a Parquet archive with the example ONNX classifier.

    python bench/batch.py --setup    # once: pandas for the hand-written Dask job
    python bench/batch.py            # 2,000,000 rows, 16 files
    python bench/batch.py --rows 200000 --runs 1   # a quick look
    python bench/batch.py --shard-cost 15          # CPU of one shard, in this process

The archive holds the example light-curve features (the 21 columns of
:mod:`sciserve.examples.features`, float32, plus an int64 id): the features
of ``--distinct`` light curves simulated with :mod:`sciserve.examples` (seeded),
repeated with fresh ids up to ``--rows`` rows, in ``--files`` Parquet files of
one row group each.  It is written once and cached under ``--data-dir``
(nothing is downloaded).  The model is ``examples/lc-classifier`` (features
→ 32 → 32 → 5, FP32), built by :func:`sciserve.examples.build_examples` and
published in a registry under ``--data-dir``.

Side by side, in one run, each best of ``--runs``:

(a) **in-process ONNX Runtime**: one process, one intra-op thread, reads each
    file and scores it in batches of ``--batch`` rows (no output written);
(b) **hand-written Dask**, as users write it today:
    ``dask.dataframe.read_parquet(...).map_partitions(score).to_parquet(...)``
    with an ONNX Runtime session (one intra-op thread) made per partition;
(c) **sciserve**: ``BatchJob`` of a spec naming the columns and the model — what
    ``sciserve batch run SPEC --scheduler ADDRESS`` runs — with output Parquet
    per shard, provenance columns and the final verification included.

(b) and (c) run on the same local Dask cluster (``LocalCluster`` of worker
processes with one thread each, on 127.0.0.1, as ``sciserve batch run
--workers N`` makes it), first with 1 worker, then with 2; each cluster is
closed before the next.  Targets: sciserve ≥ 1.0x the hand-written job;
sciserve's rows/s per core used ≥ 80 % of in-process ONNX Runtime; sciserve's
rows/s at 2 workers ≥ 1.7x at 1 worker.

A second table (``--alerts N``, 0 to skip) re-scores an archive of ``N``
simulated Rubin alerts (schema ``lsst``, 30 previous detections each, the
first ``--alert-unique`` of :class:`~sciserve.streams.simulate.AlertSimulator`
repeated) in ``--alert-files`` Avro object containers: ``sciserve batch``
decodes them (the reader-schema projection), computes light-curve features
and runs the classifier, with 1 and 2 workers, best of ``--runs``.  Beside
it, the stream pipeline's capacity measured in the same run on the same
alerts by ``bench/stream.py``'s :func:`capacity`: a backlog in a Kafka topic
of a memory-only broker on 127.0.0.1, drained by one pipeline process, then
by one with 2 worker processes for decoding and features (batches of
``--alert-batch``).  Per core is alerts/s over the processes doing the work
(capped at the machine's cores).

Results go to ``bench/results/batch-<timestamp>.json``.

``--shard-cost N`` measures instead what a worker spends on one shard of
125,000 rows (read, model, provenance, Parquet output, manifest, read-back
verification): :func:`~sciserve.batch.worker.run_shard` called ``N`` times
in this process after a warm-up, as CPU time (user and system, all
threads), which other work on the machine disturbs far less than it does
wall-clock comparisons.
"""

from __future__ import annotations

import argparse
import asyncio
import json
import os
import platform
import shutil
import subprocess
import sys
import tempfile
import time
from collections.abc import Callable
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

import numpy as np
import pyarrow as pa
import pyarrow.parquet as pq
from rich.console import Console
from rich.table import Table

from sciserve.batch.executor import dask_client
from sciserve.batch.job import BatchJob
from sciserve.config import Settings
from sciserve.errors import NotFound
from sciserve.examples import build_examples
from sciserve.examples.features import FEATURE_NAMES, extract_many
from sciserve.examples.lightcurves import simulate
from sciserve.registry.registry import Registry
from sciserve.streams.base import OutRecord, open_sink
from sciserve.streams.files import read_messages
from sciserve.streams.simulate import AlertSimulator
from sciserve.streams.spec import parse_batch_spec

HERE = Path(__file__).resolve().parent
#: pandas (which dask.dataframe needs, and sciserve does not) goes here.
PYLIB = HERE / ".peers" / "batch-pylib"
MODEL = "examples/lc-classifier"
TARGETS = {"vs_dask": 1.0, "per_core": 0.8, "scaling": 1.7}


def setup() -> None:
    """Install pandas beside the venv (the hand-written Dask job needs it)."""
    PYLIB.mkdir(parents=True, exist_ok=True)
    subprocess.run(
        [sys.executable, "-m", "pip", "install", "--quiet", "--no-deps", "--target", str(PYLIB),
         "pandas>=2.2"],
        check=True,
    )  # fmt: skip


# -- data and model ------------------------------------------------------------


def archive(data_dir: Path, rows: int, files: int, distinct: int, seed: int) -> Path:
    """The cached archive directory, written on first use."""
    root = data_dir / f"archive-{rows}-{files}-{distinct}-{seed}"
    if (root / "DONE").exists():
        return root
    shutil.rmtree(root, ignore_errors=True)
    root.mkdir(parents=True)
    started = time.perf_counter()
    features = extract_many(simulate(distinct, seed=seed)).astype(np.float32)
    print(f"simulated {distinct} light curves in {time.perf_counter() - started:.1f} s")
    per_file = -(-rows // files)
    for part in range(files):
        first = part * per_file
        count = min(per_file, rows - first)
        ids = np.arange(first, first + count, dtype=np.int64)
        x = features[ids % distinct]
        columns: dict[str, Any] = {"obj": ids}
        columns.update({name: x[:, j] for j, name in enumerate(FEATURE_NAMES)})
        pq.write_table(pa.table(columns), root / f"part-{part:04d}.parquet", row_group_size=count)
    (root / "DONE").touch()
    return root


def model(data_dir: Path) -> tuple[Settings, Path]:
    """The registry holding the example classifier, and its ONNX file."""
    packages = data_dir / "packages"
    if not (packages / "lc-classifier").exists():
        build_examples(packages)
    settings = Settings.load(data_dir / "home", environ={})
    with Registry(settings) as registry:
        try:
            registry.resolve(MODEL)
        except NotFound:
            registry.publish(packages / "lc-classifier")
    [onnx_file] = (packages / "lc-classifier").glob("*.onnx")
    return settings, onnx_file


def alert_archive(data_dir: Path, alerts: int, files: int, unique: int, seed: int) -> Path:
    """The cached directory of ``alerts`` simulated alerts in ``files`` Avro
    object containers (the stream file format), written on first use."""
    root = data_dir / f"alerts-{alerts}-{files}-{unique}-{seed}"
    if (root / "DONE").exists():
        return root
    shutil.rmtree(root, ignore_errors=True)
    root.mkdir(parents=True)
    started = time.perf_counter()
    payloads = [a.payload for a in AlertSimulator("lsst", seed=seed).alerts(min(unique, alerts))]
    print(f"simulated {len(payloads)} alerts in {time.perf_counter() - started:.1f} s")
    per_file = -(-alerts // files)
    for part, first in enumerate(range(0, alerts, per_file)):
        values = [payloads[i % len(payloads)] for i in range(first, min(first + per_file, alerts))]
        asyncio.run(_write_avro(root / f"part-{part:04d}.avro", values))
    (root / "DONE").touch()
    return root


async def _write_avro(path: Path, values: list[bytes]) -> None:
    sink = open_sink(f"file://{path}")
    await sink.start()
    try:
        await sink.write([OutRecord(v) for v in values])
    finally:
        await sink.close()


def stream_settings(data_dir: Path) -> Settings:
    """A registry with the example models tagged ``production``, as
    ``bench/stream.py``'s pipeline spec names them."""
    from sciserve.cli._up import ensure_examples

    settings = Settings.load(data_dir / "stream-home", environ={})
    with Registry(settings) as registry:
        ensure_examples(registry)
    return settings


# -- the contenders --------------------------------------------------------------


def in_process(root: Path, onnx_file: Path, batch: int) -> int:
    import onnxruntime as ort

    options = ort.SessionOptions()
    options.intra_op_num_threads = 1
    options.inter_op_num_threads = 1
    session = ort.InferenceSession(str(onnx_file), options, providers=["CPUExecutionProvider"])
    rows = 0
    for path in sorted(root.glob("*.parquet")):
        table = pq.read_table(path, columns=list(FEATURE_NAMES))
        x = np.column_stack([table.column(n).to_numpy() for n in FEATURE_NAMES])
        for start in range(0, len(x), batch):
            session.run(None, {"features": x[start : start + batch]})
        rows += len(x)
    return rows


def hand_written(client: Any, root: Path, onnx_file: Path, out: Path) -> int:
    """What a user writes today: read_parquet, map_partitions, to_parquet."""
    import dask.dataframe as dd
    import pandas as pd

    model_path = str(onnx_file)
    classes = [f"p{i}" for i in range(5)]

    def score(df: pd.DataFrame) -> pd.DataFrame:
        import onnxruntime as ort

        options = ort.SessionOptions()
        options.intra_op_num_threads = 1
        session = ort.InferenceSession(model_path, options, providers=["CPUExecutionProvider"])
        x = df[list(FEATURE_NAMES)].to_numpy(np.float32)
        [probabilities] = session.run(None, {"features": x})
        result = pd.DataFrame(probabilities, columns=classes, index=df.index)
        result.insert(0, "obj", df["obj"].to_numpy())
        return result

    frame = dd.read_parquet(str(root), columns=["obj", *FEATURE_NAMES])
    meta = pd.DataFrame(
        {"obj": pd.Series(dtype="int64"), **{c: pd.Series(dtype="float32") for c in classes}}
    )
    frame.map_partitions(score, meta=meta).to_parquet(str(out), write_index=False)
    return sum(pq.ParquetFile(p).metadata.num_rows for p in out.glob("*.parquet"))


def sciserve_job(client: Any, settings: Settings, root: Path, out: Path, batch: int) -> int:
    spec = parse_batch_spec(
        {
            "name": "rescore",
            "input": str(root),
            "columns": list(FEATURE_NAMES),
            "id": "obj",
            "models": [{"ref": MODEL}],
            "batch": batch,
        }
    )
    job = BatchJob(spec, settings, out, job_id=f"bench-{os.urandom(4).hex()}")
    job.plan()
    report = job.run(client)
    if not report.verified or report.dead_letters:
        raise RuntimeError(f"the job did not finish cleanly: {report.to_dict()}")
    return report.outputs


def sciserve_alert_job(client: Any, settings: Settings, root: Path, out: Path, batch: int) -> int:
    """``sciserve batch`` over the alert archive: decode, features, model."""
    spec = parse_batch_spec(
        {
            "name": "alerts",
            "input": str(root),
            "codec": "lsst",
            "models": [{"ref": MODEL}],
            "batch": batch,
        }
    )
    job = BatchJob(spec, settings, out, job_id=f"bench-{os.urandom(4).hex()}")
    job.plan()
    report = job.run(client)
    if not report.verified or report.dead_letters:
        raise RuntimeError(f"the job did not finish cleanly: {report.to_dict()}")
    return report.outputs


def pipeline_capacity(
    settings: Settings, payloads: list[bytes], batch: int, pools: list[int]
) -> list[dict[str, Any]]:
    """The stream pipeline draining a backlog of ``payloads`` as fast as it
    can, once per number of worker processes in ``pools`` (``bench/stream.py``)."""
    import stream

    rows = []
    with tempfile.TemporaryDirectory(prefix="batch-bench-stream-") as tmp:
        scratch = Path(tmp)
        with stream.tansu(scratch / "broker.log") as bootstrap:
            for workers in pools:
                label = "projection" + (f", {workers} worker processes" if workers else "")
                config = stream.Config(label, None, workers)
                print(f"stream pipeline capacity: {label}…")
                rows.append(
                    asyncio.run(
                        stream.capacity(
                            settings, bootstrap, payloads, len(payloads), config, batch, scratch
                        )
                    )
                )
    return rows


def shard_cost(data_dir: Path, settings: Settings, distinct: int, seed: int, reps: int) -> None:
    """Print the CPU time of ``run_shard`` on one shard of 125,000 rows."""
    from sciserve.batch.worker import ShardTask, run_shard

    root = archive(data_dir, 125_000, 1, distinct, seed)
    spec = parse_batch_spec(
        {
            "name": "shard-cost",
            "input": str(root),
            "columns": list(FEATURE_NAMES),
            "id": "obj",
            "models": [{"ref": MODEL}],
            "batch": 1024,
        }
    )
    out = data_dir / "scratch-shard-cost"
    shutil.rmtree(out, ignore_errors=True)
    job = BatchJob(spec, settings, out, job_id="shard-cost")
    job.plan()
    job.out_dir.mkdir(parents=True)
    [shard] = job.shards
    task = ShardTask(
        job.job_id, spec.model_dump_json(), settings, job.pins, shard, str(job.out_dir),
        layout=job.layout, prepare=job.prepare,
    )  # fmt: skip
    run_shard(task)  # the model loaded, the caches warm
    costs = []
    for _ in range(reps):
        started = time.process_time()
        result = run_shard(task)
        costs.append(time.process_time() - started)
        if result.problems:
            raise RuntimeError(f"the shard did not verify: {result.problems}")
    costs.sort()
    print(
        f"one shard of {result.rows:,} rows, in process: CPU min {costs[0] * 1e3:.1f} ms, "
        f"median {costs[len(costs) // 2] * 1e3:.1f} ms over {reps} runs"
    )
    shutil.rmtree(out, ignore_errors=True)


def timed(work: Callable[[], int], runs: int, scratch: Path) -> dict[str, float]:
    best = 0.0
    rows = 0
    for _ in range(runs):
        shutil.rmtree(scratch, ignore_errors=True)
        scratch.mkdir(parents=True)
        started = time.perf_counter()
        rows = work()
        best = max(best, rows / (time.perf_counter() - started))
        shutil.rmtree(scratch, ignore_errors=True)
    return {"rows": rows, "rows_per_s": round(best, 1)}


# -- the run ------------------------------------------------------------------------


def positive(text: str) -> int:
    """An argparse type: an integer of at least 1."""
    value = int(text)
    if value < 1:
        raise argparse.ArgumentTypeError(f"{text} is not at least 1")
    return value


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--setup", action="store_true", help="install pandas, then exit")
    parser.add_argument("--rows", type=int, default=2_000_000)
    parser.add_argument("--files", type=int, default=16)
    parser.add_argument("--distinct", type=int, default=20_000, help="simulated light curves")
    parser.add_argument("--batch", type=int, default=1024, help="rows per model call")
    parser.add_argument("--runs", type=int, default=2, help="best of N per contender")
    parser.add_argument("--workers", default="1,2")
    parser.add_argument("--seed", type=int, default=7)
    parser.add_argument("--shard-cost", type=positive, metavar="N", help="CPU of one shard, N runs")
    parser.add_argument("--alerts", type=int, default=20_000, help="alerts to re-score (0: skip)")
    parser.add_argument("--alert-files", type=positive, default=8, help="Avro files of the alerts")
    parser.add_argument("--alert-unique", type=positive, default=4000, help="distinct alerts")
    parser.add_argument("--alert-batch", type=positive, default=256, help="stream pipeline batch")
    parser.add_argument("--data-dir", type=Path, default=HERE / ".data" / "batch")
    parser.add_argument("--output-dir", type=Path, default=HERE / "results")
    args = parser.parse_args()
    if args.setup:
        setup()
        return
    if args.shard_cost:
        settings, _ = model(args.data_dir)
        shard_cost(args.data_dir, settings, args.distinct, args.seed, args.shard_cost)
        return
    if not (PYLIB / "pandas").exists():
        sys.exit(f"pandas is missing: run {Path(__file__).name} --setup first")
    # The workers (spawned processes) find pandas through PYTHONPATH.
    sys.path.insert(0, str(PYLIB))
    os.environ["PYTHONPATH"] = os.pathsep.join([str(PYLIB), *sys.path])

    root = archive(args.data_dir, args.rows, args.files, args.distinct, args.seed)
    settings, onnx_file = model(args.data_dir)
    scratch = args.data_dir / "scratch"
    cores = os.cpu_count() or 1
    results: dict[str, Any] = {
        "rows": args.rows,
        "files": args.files,
        "batch": args.batch,
        "runs": args.runs,
        "cores": cores,
        "machine": {"cpu": platform.processor() or platform.machine(), "os": platform.platform()},
        "python": platform.python_version(),
    }
    import dask
    import distributed
    import onnxruntime

    results["versions"] = {
        "dask": dask.__version__,
        "distributed": distributed.__version__,
        "onnxruntime": onnxruntime.__version__,
    }
    results["in_process"] = timed(
        lambda: in_process(root, onnx_file, args.batch), args.runs, scratch
    )
    print(f"in-process ONNX Runtime: {results['in_process']['rows_per_s']:,.0f} rows/s")
    for workers in [int(w) for w in args.workers.split(",")]:
        with dask_client(None, workers=workers) as client:
            client.run(lambda: __import__("onnxruntime") and __import__("pandas"))
            dask_run = timed(
                lambda: hand_written(client, root, onnx_file, scratch / "out"), args.runs, scratch
            )
            print(f"{workers} worker(s), hand-written Dask: {dask_run['rows_per_s']:,.0f} rows/s")
            ours = timed(
                lambda: sciserve_job(client, settings, root, scratch, args.batch),
                args.runs,
                scratch,
            )
            print(f"{workers} worker(s), sciserve: {ours['rows_per_s']:,.0f} rows/s")
        for result in (dask_run, ours):
            assert result["rows"] == args.rows, result
        results[f"workers_{workers}"] = {"dask": dask_run, "sciserve": ours}
    report(results, cores)
    if args.alerts > 0:
        results["alerts"] = alerts_section(args, settings, scratch, cores)
        report_alerts(results["alerts"], cores)
    args.output_dir.mkdir(parents=True, exist_ok=True)
    stamp = datetime.now(UTC).strftime("%Y%m%dT%H%M%SZ")
    path = args.output_dir / f"batch-{stamp}.json"
    path.write_text(json.dumps(results, indent=2) + "\n")
    print(f"results: {path}")


def alerts_section(
    args: argparse.Namespace, settings: Settings, scratch: Path, cores: int
) -> dict[str, Any]:
    """Re-scoring the alert archive with sciserve batch at 1 and 2 workers,
    and the stream pipeline's capacity on the same alerts."""
    root = alert_archive(args.data_dir, args.alerts, args.alert_files, args.alert_unique, args.seed)
    section: dict[str, Any] = {
        "alerts": args.alerts,
        "files": args.alert_files,
        "unique": args.alert_unique,
        "batch": args.batch,
        "pipeline_batch": args.alert_batch,
    }
    for workers in [int(w) for w in args.workers.split(",")]:
        with dask_client(None, workers=workers) as client:
            ours = timed(
                lambda: sciserve_alert_job(client, settings, root, scratch, args.batch),
                args.runs,
                scratch,
            )
        assert ours["rows"] == args.alerts, ours
        print(f"{workers} worker(s), sciserve batch: {ours['rows_per_s']:,.0f} alerts/s")
        section[f"workers_{workers}"] = {
            **ours,
            "per_core": round(ours["rows_per_s"] / min(workers, cores), 1),
        }
    payloads = [m.value for p in sorted(root.glob("*.avro")) for m in read_messages(p, "avro")]
    pipeline = pipeline_capacity(stream_settings(args.data_dir), payloads, args.alert_batch, [0, 2])
    for row in pipeline:
        row["per_core"] = round(row["alerts_per_s"] / min(max(row["workers"], 1), cores), 1)
    section["pipeline"] = pipeline
    return section


def report_alerts(section: dict[str, Any], cores: int) -> None:
    table = Table(
        title=f"Re-scoring {section['alerts']:,} simulated Rubin alerts: decode → features → "
        f"model ({cores} cores)"
    )
    for column in ("contender", "processes", "alerts/s", "alerts/s per core",
                   "per core vs stream pipeline"):  # fmt: skip
        table.add_column(column, justify="right" if column != "contender" else "left")
    [single] = [row for row in section["pipeline"] if row["workers"] == 0]
    base = single["per_core"]
    for row in section["pipeline"]:
        processes = f"1 + {row['workers']} workers" if row["workers"] else "1"
        table.add_row("stream pipeline capacity", processes,
                      f"{row['alerts_per_s']:,.0f}", f"{row['per_core']:,.0f}",
                      f"{row['per_core'] / base:.0%}")  # fmt: skip
    for key in sorted(k for k in section if k.startswith("workers_")):
        row = section[key]
        table.add_row("sciserve batch", key.split("_")[1], f"{row['rows_per_s']:,.0f}",
                      f"{row['per_core']:,.0f}", f"{row['per_core'] / base:.0%}")  # fmt: skip
    Console(width=120).print(table)


def report(results: dict[str, Any], cores: int) -> None:
    ort_rate = results["in_process"]["rows_per_s"]
    table = Table(title=f"Re-scoring {results['rows']:,} rows ({cores} cores)")
    for column in (
        "contender",
        "workers",
        "rows/s",
        "vs hand-written Dask",
        "per core vs in-process ORT",
    ):
        table.add_column(column, justify="right" if column != "contender" else "left")
    table.add_row("in-process ONNX Runtime", "-", f"{ort_rate:,.0f}", "-", "100 %")
    verdicts = []
    for key in sorted(k for k in results if k.startswith("workers_")):
        workers = int(key.split("_")[1])
        used = min(workers, cores)
        dask_rate = results[key]["dask"]["rows_per_s"]
        ours = results[key]["sciserve"]["rows_per_s"]
        versus = ours / dask_rate
        per_core = ours / used / ort_rate
        table.add_row("hand-written Dask", str(workers), f"{dask_rate:,.0f}", "1.00x",
                      f"{dask_rate / used / ort_rate:.0%}")  # fmt: skip
        table.add_row("sciserve batch", str(workers), f"{ours:,.0f}", f"{versus:.2f}x",
                      f"{per_core:.0%}")  # fmt: skip
        verdicts.append(
            (f"sciserve ≥ 1.0x hand-written Dask, {workers} worker(s)", versus, TARGETS["vs_dask"])
        )
        verdicts.append(
            (
                f"sciserve per core ≥ 80 % of in-process ORT, {workers} worker(s)",
                per_core,
                TARGETS["per_core"],
            )
        )
    if "workers_1" in results and "workers_2" in results:
        scaling = (
            results["workers_2"]["sciserve"]["rows_per_s"]
            / results["workers_1"]["sciserve"]["rows_per_s"]
        )
        dask_scaling = (
            results["workers_2"]["dask"]["rows_per_s"] / results["workers_1"]["dask"]["rows_per_s"]
        )
        verdicts.append(
            ("sciserve rows/s at 2 workers ≥ 1.7x at 1 worker", scaling, TARGETS["scaling"])
        )
        results["scaling"] = {"sciserve": round(scaling, 3), "dask": round(dask_scaling, 3)}
    Console().print(table)
    results["targets"] = []
    for name, value, target in verdicts:
        verdict = "PASS" if value >= target else "FAIL"
        print(f"{verdict}  {name}: {value:.2f} (target {target})")
        results["targets"].append(
            {"target": name, "value": round(value, 3), "pass": verdict == "PASS"}
        )
    if "scaling" in results:
        print(f"(hand-written Dask: 2 workers = {results['scaling']['dask']:.2f}x 1 worker)")


if __name__ == "__main__":
    main()
