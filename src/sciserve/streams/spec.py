"""Pipeline specs: the YAML file that ``sciserve stream run`` executes.

::

    name: lsst-classify
    source: kafka://127.0.0.1:9092/alerts?group=lsst-classify
    codec: lsst:11.1
    features: lightcurve
    models:
      - ref: examples/lc-classifier@production
    filter: "probabilities[4] > 0.5 and alert.diaSource.band in ['g', 'r']"
    sinks: [kafka://127.0.0.1:9092/annotations, results]
    dead_letter: file:///var/tmp/dead.jsonl
    batch: 256
    workers: 2              # decoding/features processes; default: one per core beyond the first
    decode: batch           # Rubin alerts a batch at a time (polars); message: one at a time
    fetch_timeout: 1.0
    max_message_bytes: 1048576
    budget:                 # what "keeping up" means; the health report flags the worker beyond it
      max_lag: 10000        # messages in the source not yet committed
      max_latency: 30       # p99 of broker timestamp to committed annotation (s)

Everything that can be checked without connecting to anything is checked
when the spec is loaded, the filter expression included, so a typo fails
at once rather than after the first batch.
"""

from __future__ import annotations

import os
import re
from pathlib import Path
from typing import Any, Literal, TypeVar

import yaml
from pydantic import BaseModel, ConfigDict, Field, PrivateAttr, ValidationError, field_validator

from .. import _yaml
from ..errors import InvalidInput
from .expr import Expression, parse_expression

__all__ = [
    "RESULTS",
    "BatchSpec",
    "LagBudget",
    "ModelStep",
    "PipelineSpec",
    "PythonFeatures",
    "StepsSpec",
    "default_workers",
    "load_batch_spec",
    "load_spec",
    "parse_batch_spec",
    "parse_spec",
]

#: The sink name that stands for the registry database's result store.
RESULTS = "results"

#: Pipeline names become file names (status files) and consumer-group names.
_NAME_RE = re.compile(r"^[a-z0-9][a-z0-9_.-]{0,63}$")
_STREAM_SCHEMES = ("kafka://", "nats://", "file://")
_CODEC_FAMILIES = ("lsst", "ztf", "json")
_ENTRY_RE = re.compile(r"^(?P<file>[^:]+\.py):(?P<function>[A-Za-z_][A-Za-z0-9_]*)$")


#: The most preparing processes a pipeline starts when its spec does not say.
MAX_DEFAULT_WORKERS = 8


def default_workers() -> int:
    """Preparing processes for a pipeline whose spec sets no ``workers``.

    One per core beyond the first that this process may run on: the
    pipeline's own process fetches, runs the models and writes, the workers
    decode and compute features, and the two overlap.  With one core there
    is nothing to overlap with, and the work stays in-process.
    """
    try:
        cores = len(os.sched_getaffinity(0))
    except AttributeError:  # not on Linux
        cores = os.cpu_count() or 1
    return max(0, min(cores - 1, MAX_DEFAULT_WORKERS))


class _Strict(BaseModel):
    model_config = ConfigDict(frozen=True, extra="forbid")


class ModelStep(_Strict):
    """One model every alert goes through."""

    #: Registry reference, e.g. ``examples/lc-classifier@production``.
    ref: str = Field(min_length=1)
    #: A sciserve server to run the model on (Open Inference Protocol over
    #: HTTP); without it the model runs in the pipeline's process.
    server: str | None = None

    @field_validator("server")
    @classmethod
    def _http(cls, value: str | None) -> str | None:
        if value is not None and not value.startswith(("http://", "https://")):
            raise ValueError(f"{value!r} is not an http:// or https:// URL")
        return value


class PythonFeatures(_Strict):
    """A user function ``file.py:function`` turning one decoded alert into a
    feature vector; it runs only if ``namespace`` is trusted in the registry."""

    python: str
    namespace: str = Field(min_length=1)

    @field_validator("python")
    @classmethod
    def _entry(cls, value: str) -> str:
        if not _ENTRY_RE.fullmatch(value):
            raise ValueError(f"{value!r} is not of the form file.py:function")
        return value

    @property
    def file(self) -> Path:
        return Path(self.python.rsplit(":", 1)[0])

    @property
    def function(self) -> str:
        return self.python.rsplit(":", 1)[1]


class StepsSpec(_Strict):
    """What a stream pipeline and a batch job share: how records become
    feature vectors, the models they go through and the filter.

    One spec language for both executors: :class:`PipelineSpec` adds a
    stream source and sinks, :class:`BatchSpec` an archive input.
    """

    name: str
    codec: str = "lsst"
    #: Dotted path of the alert id for the ``ztf`` and ``json`` codecs
    #: (Rubin alerts name it by schema version).
    id_field: str | None = None
    #: Reader-schema projection for Rubin alerts: the field paths to decode,
    #: or ``all`` for whole alerts; by default what the feature step and the
    #: filter read.
    fields: tuple[str, ...] | Literal["all"] | None = None
    features: Literal["lightcurve"] | PythonFeatures = "lightcurve"
    models: tuple[ModelStep, ...] = Field(min_length=1)
    #: Which annotations are published to topic sinks (the result store
    #: keeps all of them).
    filter: str | None = None
    max_message_bytes: int = Field(default=2**20, gt=0)
    #: How Rubin alerts are decoded.  ``batch``: a batch at a time, straight
    #: into light-curve columns, when the built-in features read them (no
    #: user feature function, no chosen ``fields``) and the filter, if it
    #: reads the alert, reads plain values at fixed paths; ``message``: one
    #: at a time with fastavro, always.
    decode: Literal["batch", "message"] = "batch"

    _filter: Expression | None = PrivateAttr(default=None)

    @field_validator("name")
    @classmethod
    def _name(cls, value: str) -> str:
        if not _NAME_RE.fullmatch(value):
            raise ValueError(
                f"{value!r} is not a pipeline name (lowercase letters, digits, '.', '_', '-')"
            )
        return value

    @field_validator("codec")
    @classmethod
    def _codec(cls, value: str) -> str:
        if value.partition(":")[0] not in _CODEC_FAMILIES:
            raise ValueError(f"unknown codec {value!r}; choose lsst, lsst:M.m, ztf or json")
        return value

    def model_post_init(self, context: Any) -> None:
        # Parsed here, once, so a bad filter fails when the spec is loaded.
        if self.filter is not None:
            self._filter = parse_expression(self.filter, what="filter")

    @property
    def filter_expression(self) -> Expression | None:
        """The parsed :attr:`filter`, or ``None`` when every annotation is published."""
        return self._filter


class LagBudget(_Strict):
    """How far behind a pipeline may fall before its workers need attention.

    Each worker writes the budget into its status file; the server's health
    report (``/health``) names a worker beyond either bound, with what to do.
    """

    #: Messages in the source not yet committed by the consumer group.
    max_lag: int | None = Field(default=None, ge=0)
    #: The p99 of the recent end-to-end latencies (broker timestamp to
    #: committed annotation), in seconds.
    max_latency: float | None = Field(default=None, gt=0)


class PipelineSpec(StepsSpec):
    """A validated pipeline spec (see the module documentation)."""

    source: str
    sinks: tuple[str, ...] = Field(min_length=1)
    dead_letter: str
    batch: int = Field(default=256, ge=1, le=100_000)
    #: Processes that decode alerts and compute features in parallel; 0 does
    #: it in the pipeline's own process.  Unset, one per core this process
    #: may run on beyond the first (at most :data:`MAX_DEFAULT_WORKERS`): 0
    #: on one core, 1 on two, 3 on four.  See :attr:`worker_processes`.
    workers: int | None = Field(default=None, ge=0, le=64)
    #: How long one fetch waits to fill a batch of ``batch`` messages before
    #: it hands on what arrived (s); also how often an idle loop looks
    #: around (drain requests) again.  Lower it on slow streams to bound the
    #: latency an alert gets waiting for its batch.
    fetch_timeout: float = Field(default=1.0, gt=0, le=60)
    #: Lag and latency beyond which the health report flags a worker.
    budget: LagBudget | None = None

    @property
    def worker_processes(self) -> int:
        """``workers``, or the default for this machine's cores when unset."""
        return self.workers if self.workers is not None else default_workers()

    @field_validator("source", "dead_letter")
    @classmethod
    def _stream_url(cls, value: str) -> str:
        if not value.startswith(_STREAM_SCHEMES):
            raise ValueError(f"{value!r} is not a kafka://, nats:// or file:// URL")
        return value

    @field_validator("sinks")
    @classmethod
    def _sinks(cls, value: tuple[str, ...]) -> tuple[str, ...]:
        for sink in value:
            if sink != RESULTS and not sink.startswith(_STREAM_SCHEMES):
                raise ValueError(f"{sink!r} is neither {RESULTS!r} nor a stream URL")
        if len(set(value)) != len(value):
            raise ValueError("a sink is listed twice")
        return value

    @property
    def writes_results(self) -> bool:
        """Whether annotations go to the registry database's result store."""
        return RESULTS in self.sinks

    @property
    def topic_sinks(self) -> tuple[str, ...]:
        """The sinks that are stream URLs (everything but ``results``)."""
        return tuple(sink for sink in self.sinks if sink != RESULTS)


class BatchSpec(StepsSpec):
    """A batch job: the models of a pipeline spec run over an archive.

    ::

        name: rescore-2024
        input: archive/objects/          # a file, a glob or a directory
        columns: [f1, f2, f3, f4]        # or one list column: columns: flux
        id: objectId                     # the rows' id column
        models:
          - ref: examples/lc-classifier@production
        filter: "score > 0.5"

    Without ``columns`` the records are alerts (Avro stream containers,
    JSON Lines, or Parquet with a binary ``value`` column), decoded with
    ``codec`` and turned into feature vectors by ``features``, as a stream
    pipeline does.
    """

    #: A file, a glob or a directory (searched recursively, so hive-style
    #: ``key=value/`` partitions are found), local (relative to the spec's
    #: directory) or an fsspec URL such as ``s3://bucket/archive/``.
    input: str = Field(min_length=1)
    #: ``parquet``, ``jsonl`` or ``avro``; by default from the file suffix.
    format: Literal["parquet", "jsonl", "avro"] | None = None
    #: Tabular input: the columns stacked into the model's input, or the
    #: name of one list column holding each row's whole input.
    columns: tuple[str, ...] | str | None = None
    #: The id column of tabular input; without it a row's id is
    #: ``file:row`` (its position in the archive).
    id: str | None = None
    #: Rows per model call.
    batch: int = Field(default=4096, ge=1, le=1_000_000)
    #: Options of the fsspec file system of an ``input`` URL (e.g. an S3
    #: ``endpoint_url``); credentials are better left to the environment.
    #: Never written to the job's output.
    storage_options: dict[str, Any] = Field(default_factory=dict)
    #: Also write the annotations to the registry database's result store
    #: (alert input: it is keyed by alert id, model and version), where
    #: ``sciserve stream results NAME`` finds them.
    results: bool = False

    def model_post_init(self, context: Any) -> None:
        super().model_post_init(context)
        if self.results and self.columns is not None:
            raise ValueError(
                "results: needs alert input (the result store is keyed by alert id); "
                "tabular output is in the job's Parquet files"
            )

    @field_validator("columns")
    @classmethod
    def _columns(cls, value: tuple[str, ...] | str | None) -> tuple[str, ...] | str | None:
        if isinstance(value, tuple):
            if not value or not all(value):
                raise ValueError("columns must name at least one column")
            if len(set(value)) != len(value):
                raise ValueError("a column is listed twice")
        elif value == "":
            raise ValueError("columns must name a column")
        return value


def parse_spec(data: object, *, base_dir: Path | None = None, source: str = "") -> PipelineSpec:
    """Validate a spec given as parsed YAML.

    A relative ``features.python`` file is taken relative to ``base_dir``
    (the spec's directory).  Every problem raises
    :class:`~sciserve.errors.InvalidInput` naming the field.
    """
    return _parse(PipelineSpec, data, base_dir=base_dir, source=source, what="pipeline spec")


def parse_batch_spec(data: object, *, base_dir: Path | None = None, source: str = "") -> BatchSpec:
    """Validate a batch job spec given as parsed YAML (see :func:`parse_spec`);
    a relative ``input`` is taken relative to ``base_dir`` too."""
    if isinstance(data, dict) and base_dir and isinstance(data.get("input"), str):
        entry = data["input"]
        if "://" not in entry and not Path(entry).is_absolute():
            data = {**data, "input": str(base_dir / entry)}
    return _parse(BatchSpec, data, base_dir=base_dir, source=source, what="batch spec")


_SpecT = TypeVar("_SpecT", bound=StepsSpec)


def _parse(
    cls: type[_SpecT], data: object, *, base_dir: Path | None, source: str, what: str
) -> _SpecT:
    label = f" {source}" if source else ""
    if not isinstance(data, dict):
        raise InvalidInput(f"{what}{label} must be a mapping of settings")
    features = data.get("features")
    if isinstance(features, dict) and isinstance(features.get("python"), str) and base_dir:
        entry = features["python"]
        file, colon, function = entry.rpartition(":")
        if colon and file and not Path(file).is_absolute():
            data = {**data, "features": {**features, "python": f"{base_dir / file}:{function}"}}
    try:
        return cls.model_validate(data)
    except ValidationError as exc:
        problems = "\n".join(
            f"  - {'.'.join(str(p) for p in error['loc']) or '<spec>'}: {error['msg']}"
            for error in exc.errors()
        )
        raise InvalidInput(f"invalid {what}{label}:\n{problems}") from exc


def load_spec(path: str | Path) -> PipelineSpec:
    """Read and validate the pipeline spec at ``path``."""
    path = Path(path)
    data = _read(path, "pipeline spec")
    return parse_spec(data, base_dir=path.resolve().parent, source=str(path))


def load_batch_spec(path: str | Path) -> BatchSpec:
    """Read and validate the batch job spec at ``path``."""
    path = Path(path)
    data = _read(path, "batch spec")
    return parse_batch_spec(data, base_dir=path.resolve().parent, source=str(path))


def _read(path: Path, what: str) -> object:
    try:
        text = path.read_text(encoding="utf-8")
    except OSError as exc:
        raise InvalidInput(f"cannot read {what} {path}: {exc.strerror or exc}") from exc
    try:
        return _yaml.load(text, what=f"a {what}")
    except yaml.YAMLError as exc:
        raise InvalidInput(f"{what} {path} is not valid YAML: {exc}") from exc
