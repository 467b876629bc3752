"""``sciserve evaluate`` (and ``--reproduce``) and ``sciserve compare``: models
run on registered datasets, in this process with fixed thread settings, or
(``evaluate --server URL``) on a sciserve server over the Open Inference
Protocol.

Both work on the local registry (the record and the outputs are stored in
it); the dataset is verified before the model sees a row.
"""

from __future__ import annotations

import asyncio
import contextlib
import urllib.parse
from collections.abc import Mapping
from pathlib import Path
from typing import Annotated, Any

import numpy as np
import typer
from rich.table import Table

from .. import model as model_module
from ..errors import DependencyMissing, InvalidInput
from ..evaluation import registered
from ..evaluation.compare import Comparison
from ..evaluation.result import ClassificationMetrics, to_dict
from ..evaluation.runner import DEFAULT_BATCH_SIZE, EvaluationRecord, Predictor
from ..package.manifest import Manifest
from ..package.reference import served_name
from ..protocol.client import InferenceClient
from ..registry.registry import Registry, VersionInfo
from ._context import State, local_actor, state

#: The runtime option that sets a runtime's thread count, by runtime.
THREAD_OPTIONS = {
    "onnx": "intra_op_threads",
    "lightgbm": "num_threads",
    "xgboost": "num_threads",
}


class ServedModel:
    """A registered model version run by a sciserve server over the Open
    Inference Protocol: what the evaluation runner needs of a model.

    The server must serve that exact version; it answers for the version
    asked, or the call fails (:class:`~sciserve.protocol.client.InferenceClient`).
    """

    def __init__(self, info: VersionInfo, url: str, headers: Mapping[str, str]) -> None:
        self.info = info
        self._runner = asyncio.Runner()
        self._client = InferenceClient(url, headers=headers, timeout=300.0)
        self._served = served_name(info.namespace, info.name)

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
        return {}  # the server's: not known here, not recorded

    def predict(self, inputs: Any = None, /, **named: Any) -> dict[str, np.ndarray]:
        arrays = dict(inputs) if isinstance(inputs, Mapping) else dict(named)
        specs = {t.name: t for t in self.manifest.inputs}
        unknown = sorted(set(arrays) - set(specs))
        if unknown:
            raise InvalidInput(f"{self.ref} has no input(s) {', '.join(unknown)}")
        request = {
            name: (np.ascontiguousarray(a), str(specs[name].datatype)) for name, a in arrays.items()
        }
        outputs = [t.name for t in self.manifest.outputs]
        return self._runner.run(
            self._client.infer(self._served, request, outputs, version=self.info.version)
        )

    def close(self) -> None:
        try:
            self._runner.run(self._client.aclose())
        finally:
            self._runner.close()

    def __enter__(self) -> ServedModel:
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()


def register(root: typer.Typer) -> None:
    root.command("evaluate")(evaluate)
    root.command("compare")(compare)


def _thread_options(reg: Registry, ref: str, threads: int) -> dict[str, Any]:
    if threads < 1:
        raise InvalidInput(f"--threads must be at least 1, got {threads}")
    runtime = reg.resolve(ref).manifest.runtime
    option = THREAD_OPTIONS.get(runtime)
    return {option: threads} if option else {}


def _loader(reg: Registry) -> registered.Loader:
    def load(ref: str, options: Mapping[str, Any]) -> Predictor:
        return model_module.load(ref, registry=reg, **dict(options))

    return load


def _server_url(url: str) -> str:
    """The server's URL as recorded: scheme, host, port and path only."""
    parts = urllib.parse.urlsplit(url)
    if parts.scheme not in ("http", "https") or not parts.hostname:
        raise InvalidInput(f"--server takes an http(s) URL, got {url[:80]!r}")
    if parts.username or parts.password or parts.query or parts.fragment:
        raise InvalidInput("--server takes a plain URL; credentials go in SCISERVE_TOKEN")
    return urllib.parse.urlunsplit((parts.scheme, parts.netloc, parts.path.rstrip("/"), "", ""))


def _report_dir(path: Path) -> None:
    """Make the report directory, or say why not; and check that plots can be drawn."""
    import importlib.util

    if importlib.util.find_spec("matplotlib") is None:
        raise DependencyMissing(
            'plots need matplotlib: install the extra with pip install "sciserve[evaluate]"'
        )
    try:
        path.mkdir(parents=True, exist_ok=True)
    except OSError as exc:
        raise InvalidInput(f"--report {path}: cannot make that directory ({exc.strerror})") from exc


def _seeds(values: list[str]) -> dict[str, int]:
    seeds: dict[str, int] = {}
    for value in values:
        name, sep, number = value.partition("=")
        if not sep or not name or not number.lstrip("-").isdigit():
            raise InvalidInput(f"--seed takes NAME=INTEGER, got {value!r}")
        seeds[name] = int(number)
    return seeds


def _metrics_table(title: str, scalars: Mapping[str, float | None]) -> Table:
    table = Table("metric", "value", title=title)
    for name, value in scalars.items():
        table.add_row(name, "-" if value is None else f"{value:.6g}")
    return table


def _write_report(
    directory: Path, evaluated: registered.Evaluated, record: Mapping[str, Any]
) -> Path:
    from ..evaluation import plots, report

    rec = evaluated.record
    values = evaluated.outputs[rec.output]
    truth = evaluated.split.data.labels
    files: list[plots.PlotFiles]
    if isinstance(rec.metrics, ClassificationMetrics):
        files = plots.write_classification_plots(
            directory, truth.astype(str), values, rec.metrics, classes=rec.metrics.classes
        )
    else:
        files = plots.write_regression_plots(directory, truth, values, rec.metrics)
    return report.write_report(
        directory,
        report.ReportInput(
            title=f"{rec.model} on {rec.dataset} ({rec.split})",
            model=rec.model,
            metrics=rec.metrics,
            model_digest=rec.model_digest,
            dataset=rec.dataset,
            dataset_digest=rec.dataset_digest,
            split=rec.split,
            plots=files,
            record={"record_id": evaluated.stored.record_id, **record},
        ),
    )


def evaluate(
    ctx: typer.Context,
    model: Annotated[
        str | None, typer.Argument(help="NAME[:VERSION] of the model", show_default=False)
    ] = None,
    dataset: Annotated[
        str | None, typer.Argument(help="DATASET[:VERSION] to evaluate on", show_default=False)
    ] = None,
    split: Annotated[str, typer.Option(help="The dataset split.")] = "test",
    batch_size: Annotated[int, typer.Option(min=1, help="Rows per model call.")] = (
        DEFAULT_BATCH_SIZE
    ),
    threads: Annotated[int, typer.Option(min=1, help="The runtime's thread count.")] = 1,
    output: Annotated[
        str | None, typer.Option(help="The model output to evaluate (default: the only one).")
    ] = None,
    seed: Annotated[
        list[str] | None, typer.Option(help="NAME=INTEGER seeds to record; repeat for more.")
    ] = None,
    report: Annotated[
        Path | None, typer.Option(help="Write plots (PNG, SVG) and report.html here.")
    ] = None,
    reproduce: Annotated[
        str | None,
        typer.Option(
            help="Re-run this evaluation record as recorded and say whether the outputs match."
        ),
    ] = None,
    server: Annotated[
        str | None,
        typer.Option(
            "--server",
            help="Run the model on this sciserve server (its URL; credentials from "
            "SCISERVE_TOKEN); the dataset and the record stay in the local registry.",
        ),
    ] = None,
    batch: Annotated[
        bool,
        typer.Option(
            "--batch",
            help="Run the model as a batch job on Dask (a local cluster on 127.0.0.1, or "
            "--scheduler): for splits too large for one process.",
        ),
    ] = False,
    workers: Annotated[
        int | None,
        typer.Option(help="Worker processes of the local cluster (--batch) [default: the cores]."),
    ] = None,
    scheduler: Annotated[
        str | None,
        typer.Option(help="Run the batch job on an existing Dask cluster: tcp://HOST:PORT."),
    ] = None,
    rtol: Annotated[float, typer.Option(min=0.0, help="Relative tolerance (--reproduce).")] = 1e-6,
    atol: Annotated[float, typer.Option(min=0.0, help="Absolute tolerance (--reproduce).")] = 1e-7,
) -> None:
    """Evaluate MODEL on DATASET and record it; or check a record with --reproduce.

    The dataset's files are verified before the model runs.  Exit code 10
    when a re-run's outputs differ beyond the tolerance.
    """
    st = state(ctx)
    if reproduce is not None:
        if model is not None or dataset is not None:
            raise InvalidInput("--reproduce takes a record id alone: the record names the rest")
        _reproduce(st, reproduce, rtol, atol)
        return
    if model is None or dataset is None:
        raise InvalidInput("name a MODEL and a DATASET (or --reproduce RECORD_ID)")
    where = None if server is None else _server_url(server)
    if batch and where is not None:
        raise InvalidInput("--batch and --server exclude each other: give one")
    if not batch and (workers is not None or scheduler is not None):
        raise InvalidInput("--workers and --scheduler size the cluster of --batch: add --batch")
    if workers is not None and scheduler is not None:
        raise InvalidInput("--workers sizes the local cluster; an existing one has its own")
    if report is not None:
        _report_dir(report)  # before the run: a record without its asked-for report helps no one
    with st.local_registry(create=False) as reg:
        # Resolved (a dataset's name is refused) before the dataset is read.
        info = reg.resolve(model)
        # A batch job reads the features itself: here only labels and ids.
        split_data = registered.open_split(reg, dataset, split, features=not batch)
        if batch:
            evaluated = _evaluate_as_batch(
                st, reg, info.ref, split_data, workers, scheduler, batch_size, output, seed
            )
        else:
            runner: contextlib.AbstractContextManager[Predictor]
            if where is None:
                options = _thread_options(reg, info.ref, threads)
                runner = model_module.load(info.ref, registry=reg, **options)
            else:
                runner = ServedModel(info, where, st.settings.auth_headers())
            with runner as loaded:
                evaluated = registered.evaluate_dataset(
                    reg,
                    loaded,
                    split_data,
                    batch_size=batch_size,
                    output=output,
                    seeds=_seeds(seed or []),
                    server=where,
                    actor=local_actor(),
                )
    written = None
    if report is not None:
        written = _write_report(report, evaluated, evaluated.stored.record)
    scalars = evaluated.record.metrics.scalars()
    perf = evaluated.record.performance

    def human() -> None:
        st.console.print(f"record {evaluated.stored.record_id}")
        st.console.print(
            _metrics_table(
                f"{evaluated.record.model} on {evaluated.record.dataset} ({split})", scalars
            )
        )
        st.console.print(
            f"{evaluated.record.rows} rows, {perf.rows_per_second:.0f} rows/s "
            f"(model time {perf.seconds:.3f} s, p50 {perf.latency_ms_p50:.2f} ms per batch)"
        )
        if written is not None:
            st.console.print(f"report: {written}")

    st.emit(
        {
            "record_id": evaluated.stored.record_id,
            "metrics": scalars,
            "record": evaluated.stored.record,
            "report": str(written) if written else None,
        },
        human,
    )


def _evaluate_as_batch(
    st: State,
    reg: Registry,
    ref: str,
    split_data: registered.DatasetSplit,
    workers: int | None,
    scheduler: str | None,
    batch_size: int,
    output: str | None,
    seed: list[str] | None,
) -> registered.Evaluated:
    import os

    from ..batch.evaluation import evaluate_as_batch
    from ..batch.executor import dask_client

    seeds = _seeds(seed or [])  # refused before a cluster starts
    with dask_client(scheduler, workers or os.cpu_count() or 1) as client:
        return evaluate_as_batch(
            reg,
            st.settings,
            client,
            ref,
            split_data,
            scheduler=scheduler,
            batch_size=batch_size,
            output=output,
            seeds=seeds,
            actor=local_actor(),
        )


def _reproduce(st: State, record_id: str, rtol: float, atol: float) -> None:
    from ..evaluation.reproduce import Verdict

    with st.local_registry(create=False) as reg:
        done = registered.reproduce(reg, record_id, _loader(reg), rtol=rtol, atol=atol)
    result = done.reproduction
    data = {
        "record_id": record_id,
        "verdict": result.verdict.value,
        "expected_sha256": result.expected_sha256,
        "actual_sha256": result.actual_sha256,
        "rtol": rtol,
        "atol": atol,
        "rows_checked": done.rows_checked,
        "differences": to_dict(list(result.differences)),
    }

    def human() -> None:
        words = {
            Verdict.BIT_IDENTICAL: "bit-identical",
            Verdict.WITHIN_TOLERANCE: f"within tolerance (rtol={rtol:g}, atol={atol:g})",
            Verdict.DIFFERENT: f"different (beyond rtol={rtol:g}, atol={atol:g})",
        }
        st.console.print(f"{record_id}: {words[result.verdict]}")
        for d in result.differences:
            rows = ", ".join(str(r) for r in d.rows)
            st.console.print(
                f"  {d.name}: {d.reason}; {d.differing} value(s) differ"
                + (f", max |difference| {d.max_abs_difference:.3g}" if d.max_abs_difference else "")
                + (f"; first rows {rows}" if rows else "")
            )
        if not done.rows_checked and result.verdict is Verdict.DIFFERENT:
            st.console.print("  (outputs were too large to keep: compared by digest only)")

    st.emit(data, human)
    if result.verdict is Verdict.DIFFERENT:
        raise typer.Exit(10)


def compare(
    ctx: typer.Context,
    model_a: Annotated[str, typer.Argument(help="NAME:VERSION of version A (the baseline)")],
    model_b: Annotated[str, typer.Argument(help="NAME:VERSION of version B")],
    dataset: Annotated[str, typer.Argument(help="DATASET[:VERSION]")],
    split: Annotated[str, typer.Option(help="The dataset split.")] = "test",
    batch_size: Annotated[int, typer.Option(min=1, help="Rows per model call.")] = (
        DEFAULT_BATCH_SIZE
    ),
    threads: Annotated[int, typer.Option(min=1, help="The runtimes' thread count.")] = 1,
    output: Annotated[str | None, typer.Option(help="The model output to compare.")] = None,
    n_bootstrap: Annotated[int, typer.Option(min=10, max=100_000)] = 1000,
    seed: Annotated[int, typer.Option(help="Seed of the bootstrap resampling.")] = 0,
    show: Annotated[int, typer.Option(min=0, help="Changed objects listed, at most.")] = 20,
) -> None:
    """Metric deltas B - A with bootstrap intervals, and the objects that changed class."""
    st = state(ctx)
    with st.local_registry(create=False) as reg:
        split_data = registered.open_split(reg, dataset, split)
        opts_a = _thread_options(reg, model_a, threads)
        opts_b = _thread_options(reg, model_b, threads)
        with (
            model_module.load(model_a, registry=reg, **opts_a) as a,
            model_module.load(model_b, registry=reg, **opts_b) as b,
        ):
            comparison, rec_a, rec_b = registered.compare_on_dataset(
                a,
                b,
                split_data,
                batch_size=batch_size,
                output=output,
                n_bootstrap=n_bootstrap,
                seed=seed,
            )
    _show_comparison(st, comparison, rec_a, rec_b, show)


def _show_comparison(
    st: State, c: Comparison, a: EvaluationRecord, b: EvaluationRecord, show: int
) -> None:
    data = {"a": a.model, "b": b.model, "dataset": a.dataset, "split": a.split, **to_dict(c)}

    def num(value: float | None) -> str:
        return "-" if value is None else f"{value:.4g}"

    def human() -> None:
        table = Table(
            "metric",
            "A",
            "B",
            "B - A",
            f"{c.confidence:.0%} interval",
            title=f"{b.model} against {a.model} on {a.dataset} ({a.split}, {c.n} rows)",
        )
        for d in c.deltas:
            interval = "-" if d.low is None or d.high is None else f"[{d.low:.4g}, {d.high:.4g}]"
            table.add_row(d.metric, num(d.a), num(d.b), num(d.delta), interval)
        st.console.print(table)
        if c.classes:
            diff = Table("true \\ predicted (B - A)", *c.classes)
            for name, row in zip(c.classes, c.confusion_difference, strict=True):
                diff.add_row(name, *(f"{v:+d}" if v else "0" for v in row))
            st.console.print(diff)
            st.console.print(f"{c.n_changed} object(s) changed class")
            if c.changed and show:
                changed = Table("id", "true", "A", "B")
                for r in c.changed[:show]:
                    changed.add_row(r.id, r.truth, r.a, r.b)
                st.console.print(changed)

    st.emit(data, human)
