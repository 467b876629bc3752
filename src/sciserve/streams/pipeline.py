"""Stream pipelines: alerts in, annotations out, every alert at least once.

A :class:`Pipeline` runs one :class:`~sciserve.streams.spec.PipelineSpec`
as a loop over batches::

    fetch ─► decode ─► features ─► models ─► annotations ─► filter
                │          │          │                        │
                └──────────┴──────────┴─► dead letters         ▼
                                               │       result store + sinks
                                               ▼                │
                                     (all outputs durable) ◄────┘
                                               │
                                               ▼
                                        commit the batch

* A message that cannot be decoded (malformed, truncated, wrong schema,
  oversized), whose features cannot be computed, or whose models fail twice
  goes to the dead-letter sink with the reason, its bytes (base64) and where
  it came from.  Nothing is dropped silently and no bad message stops the
  pipeline.
* Every annotation goes to the result store (sink ``results``); those that
  pass the filter also go to the topic sinks, keyed
  ``"{alert_id}:{model}:{version}"`` so consumers can de-duplicate.
* The source is committed only once the result store, the sinks and the
  dead-letter sink all hold the batch's outputs durably.  A crash (even
  ``kill -9``) before that point means the batch is delivered again on
  restart; the result store ignores annotations it already holds, so it
  ends with exactly one annotation per alert and model version.
* :meth:`Pipeline.request_stop` (SIGTERM, SIGINT) drains: the batches in
  hand are finished, written and committed, then everything is closed.
* The steps are shared with the batch executor (:mod:`sciserve.batch`),
  which runs the same spec over archives: the module-level names without a
  leading underscore (``LocalModel``, ``RemoteModel``, ``PrepareConfig``,
  ``prepare_values``, ``preparation``, ``evaluate_filter``, ...) are that
  shared surface; the rest is this executor's own.

Fetching, preparing (decoding and features) and writing run as three
stages, so consecutive batches overlap; batches are still committed in
order.  Decoding and features cost most of the CPU: ``workers: N`` in the
spec runs them in N processes, and by default a pipeline starts one per
core beyond the first (:func:`~sciserve.streams.spec.default_workers`).
Rubin alerts read for the built-in light-curve features (and, by a filter,
only as plain values) are decoded a batch at a time
(:mod:`sciserve.streams.batchdecode`) and their features computed over the
batch; whatever the batch reader cannot vouch for is decoded message by
message, as before, and dead-lettered with the codec's reason.

Scaling out
-----------
Several workers of one pipeline share a stream through the broker: all
workers of a Kafka source with the same ``?group=`` split the topic's
partitions between them, and all workers of a NATS source with the same
``durable=`` pull from one JetStream durable consumer.  Both default to
the pipeline's name, so pipelines with different names each see the whole
stream (a file source keeps one offset per pipeline name, too).  To run N workers on
N machines:

1. give the topic at least N partitions (Kafka; JetStream needs nothing);
2. point every machine at the same PostgreSQL registry
   (``SCISERVE_DATABASE_URL`` or ``--database-url``), which is then the one
   shared result store;
3. start ``sciserve stream run spec.yaml`` with the same spec on each.

When a worker dies, the broker hands its uncommitted messages to the others
(after the session timeout or the ack wait); the annotations some of them
already have are skipped by the result store.  ``sciserve stream status``
and ``stream stop`` act on the workers of the host they run on.
"""

from __future__ import annotations

import asyncio
import base64
import concurrent.futures
import contextlib
import functools
import hashlib
import importlib.metadata
import importlib.util
import json
import logging
import math
import multiprocessing
import os
import platform
import signal
import time
from collections.abc import Awaitable, Callable, Collection, Mapping, Sequence
from dataclasses import dataclass, field
from datetime import UTC, datetime
from pathlib import Path
from typing import TYPE_CHECKING, Any, Protocol, TypeVar

import numpy as np
import numpy.typing as npt

from .._parent import exit_with_parent
from .._version import __version__
from ..access.priority import Priority
from ..config import Settings
from ..errors import (
    DependencyMissing,
    DeviceUnavailable,
    InvalidInput,
    ModelExecutionError,
    NotFound,
    PermissionDenied,
    RateLimited,
    SciserveError,
    Unauthenticated,
    Unavailable,
)
from ..package.manifest import Manifest, TensorSpec
from ..package.reference import served_name
from .base import Message, OutRecord, Sink, Source, error_text, open_sink, open_source
from .expr import EvaluationError, Expression
from .metrics import PipelineMetrics, State, process_identity, status_path, write_status
from .results import Annotation, ResultStore, WriteOutcome
from .spec import PipelineSpec, PythonFeatures, StepsSpec

if TYPE_CHECKING:
    from ..protocol.client import InferenceClient
    from .batchdecode import RubinBatchDecoder

__all__ = ["DeadLetter", "Pipeline", "run_pipeline"]

log = logging.getLogger("sciserve.streams")

FeatureFunction = Callable[[Mapping[str, Any]], Any]

#: Names a filter may read besides the model outputs.
FILTER_NAMES = frozenset({"alert", "label", "score"})
#: Message bytes kept in a dead-letter record; longer values are cut, with
#: their size and sha256, so a dead letter always fits the dead-letter sink.
DEAD_LETTER_VALUE_BYTES = 256 * 2**10
#: Attempts to make a batch durable before the pipeline gives up (and,
#: having committed nothing, leaves the batch for the next run).
_WRITE_ATTEMPTS = 5
#: Batches fetched but not yet committed, at most: one being written, one
#: being prepared and one being fetched.
_IN_FLIGHT = 3
_STATUS_INTERVAL = 1.0
#: Errors of a model step that say nothing about the alerts: retried with
#: back-off, and if they persist the pipeline stops without committing, so
#: the batch is re-delivered once the deployment is fixed instead of being
#: dead-lettered.
SERVICE_ERRORS = (
    Unavailable,
    Unauthenticated,
    PermissionDenied,
    NotFound,
    RateLimited,
    DependencyMissing,
    DeviceUnavailable,
)
#: Calls of a model step through service errors: waits of 0.5 s doubling to
#: 32 s between them, about a minute in all.
_SERVICE_ATTEMPTS = 8
#: Seconds between consumer-lag queries.  They are broker round trips (and
#: wait behind long-poll fetches on some brokers), so they run beside the
#: batches rather than between them, and not too often.
_LAG_INTERVAL = 5.0

_T = TypeVar("_T")

#: The distributions whose versions matter to each runtime's results.
_RUNTIME_LIBRARIES: Mapping[str, tuple[str, ...]] = {
    "onnx": ("onnxruntime", "onnx"),
    "lightgbm": ("lightgbm",),
    "sklearn": ("scikit-learn", "skops"),
    "xgboost": ("xgboost", "xgboost-cpu"),
    "torchscript": ("torch",),
}


# -- dead letters --------------------------------------------------------------


@dataclass(frozen=True)
class DeadLetter:
    """A message the pipeline could not annotate, and why."""

    message: Message
    #: ``decode``, ``features`` or ``model``.
    stage: str
    #: A short machine-readable cause (``truncated``, ``model-error``, …).
    error: str
    #: The full explanation.
    reason: str
    alert_id: int | None = None

    def record(self, pipeline: str) -> OutRecord:
        """The dead-letter record: a JSON document with the message's bytes in base64."""
        value = self.message.value
        doc: dict[str, Any] = {
            "pipeline": pipeline,
            "stage": self.stage,
            "error": self.error,
            "reason": self.reason,
            "alert_id": self.alert_id,
            "topic": self.message.topic,
            "partition": self.message.partition,
            "offset": self.message.offset,
            "timestamp_ms": self.message.timestamp_ms,
            "key_b64": _b64(self.message.key),
            "value_b64": _b64(value[:DEAD_LETTER_VALUE_BYTES]),
            "value_size": len(value),
            "value_sha256": hashlib.sha256(value).hexdigest(),
            "value_truncated": len(value) > DEAD_LETTER_VALUE_BYTES,
            "failed_at": datetime.now(UTC).isoformat(),
        }
        return OutRecord(value=json.dumps(doc).encode(), key=self.message.key)


def _b64(data: bytes | None) -> str | None:
    return None if data is None else base64.b64encode(data).decode("ascii")


# -- models --------------------------------------------------------------------


class ModelRunner(Protocol):
    """A model the pipeline feeds one feature matrix per batch."""

    #: ``namespace/name``.
    model: str
    version: str
    digest: str
    runtime: str
    input: TensorSpec
    outputs: Sequence[TensorSpec]
    library_versions: Mapping[str, str]

    async def predict(self, features: npt.NDArray[Any]) -> dict[str, npt.NDArray[Any]]:
        """Outputs by name, each with one row per row of ``features``."""
        ...

    async def close(self) -> None: ...


def _library_versions(runtime: str) -> dict[str, str]:
    versions = {"sciserve": __version__, "python": platform.python_version()}
    for name in ("numpy", *_RUNTIME_LIBRARIES.get(runtime, ())):
        with contextlib.suppress(importlib.metadata.PackageNotFoundError):
            versions[name] = importlib.metadata.version(name)
    return versions


def single_input(ref: str, inputs: Sequence[TensorSpec]) -> TensorSpec:
    if len(inputs) != 1:
        raise InvalidInput(
            f"{ref} takes {len(inputs)} inputs; a stream pipeline feeds exactly one "
            "(the feature vector)"
        )
    return inputs[0]


def rows_along_dim0(ref: str, manifest: Manifest) -> None:
    """Refuse a model whose input or outputs batch along another dim than 0.

    The pipeline stacks one feature vector per alert along dim 0 and reads
    one answer per alert along dim 0 of every output.
    """
    for group, tensors in (("input", manifest.inputs), ("output", manifest.outputs)):
        for spec in tensors:
            dim = manifest.batch_dim_of(spec)
            if dim not in (None, 0):
                raise InvalidInput(
                    f"{ref} batches its {group} {spec.name!r} along dim {dim}; a stream "
                    "pipeline feeds one row per alert along dim 0, so it needs a model "
                    "whose batch dimension is dim 0 of every tensor"
                )


def _chunks(rows: int, max_batch: int) -> list[slice]:
    step = max_batch if max_batch > 0 else rows
    return [slice(start, min(start + step, rows)) for start in range(0, rows, max(step, 1))]


class LocalModel:
    """A model loaded into this process with :func:`sciserve.load`."""

    def __init__(self, model: Any) -> None:
        from ..model import Model

        assert isinstance(model, Model)
        self._model = model
        manifest = model.manifest
        self.model = f"{manifest.namespace}/{manifest.name}"
        self.version = manifest.version
        self.digest = model.digest
        self.runtime = manifest.runtime
        self.input = single_input(model.ref, manifest.inputs)
        rows_along_dim0(model.ref, manifest)
        self.outputs: Sequence[TensorSpec] = tuple(manifest.outputs)
        self.library_versions: Mapping[str, str] = _library_versions(manifest.runtime)
        self._max_batch = manifest.max_batch_size

    @classmethod
    async def load(cls, ref: str, settings: Settings) -> LocalModel:
        """Resolve, verify and load ``ref`` from the registry of ``settings``."""
        from ..model import load
        from ..registry.registry import Registry

        def load_it() -> Any:
            with Registry(settings) as registry:
                return load(ref, registry=registry)

        return cls(await asyncio.to_thread(load_it))

    async def predict(self, features: npt.NDArray[Any]) -> dict[str, npt.NDArray[Any]]:
        if self._max_batch == 0:
            # A model without a batch dimension takes one row at a time.
            parts = [
                await asyncio.to_thread(self._model.predict, {self.input.name: row})
                for row in features
            ]
            return {o.name: np.stack([p[o.name] for p in parts]) for o in self.outputs}
        parts = [
            await asyncio.to_thread(self._model.predict, {self.input.name: features[part]})
            for part in _chunks(len(features), self._max_batch)
        ]
        return {o.name: np.concatenate([p[o.name] for p in parts]) for o in self.outputs}

    def predict_now(self, features: npt.NDArray[Any]) -> dict[str, npt.NDArray[Any]]:
        """:meth:`predict` in the calling thread, for callers without an event
        loop (batch workers): no thread hand-off per chunk of ``max_batch_size``."""
        if self._max_batch == 0:
            parts = [self._model.predict({self.input.name: row}) for row in features]
            return {o.name: np.stack([p[o.name] for p in parts]) for o in self.outputs}
        parts = [
            self._model.predict({self.input.name: features[part]})
            for part in _chunks(len(features), self._max_batch)
        ]
        return {o.name: np.concatenate([p[o.name] for p in parts]) for o in self.outputs}

    async def close(self) -> None:
        await asyncio.to_thread(self._model.close)


class RemoteModel:
    """A model run by a sciserve server, over the Open Inference Protocol's
    HTTP binding with binary tensors.

    The reference is resolved once, at start, and every request names that
    exact version, so the recorded version and digest are what ran even if
    an alias moves while the pipeline runs.  The server's answers map to
    errors through the one client-side table
    (:func:`~sciserve.protocol.client.error_from_response`): credentials,
    visibility, quotas and load are the deployment's problem, not the
    alerts' (see ``SERVICE_ERRORS``); anything else is the model failing on
    the batch.

    With ``priority`` every request asks to be served in that class (the
    Open Inference Protocol parameter ``priority``); a server only ever
    lowers a caller's class with it, so a batch job's requests queue behind
    realtime ones even when its token could ask for more.
    """

    def __init__(
        self,
        client: InferenceClient,
        info: Any,
        server_version: str,
        *,
        priority: Priority | None = None,
    ) -> None:
        manifest = info.manifest
        self.model = f"{manifest.namespace}/{manifest.name}"
        self.version = manifest.version
        self.digest = info.digest
        self.runtime = manifest.runtime
        self.input = single_input(info.ref, manifest.inputs)
        rows_along_dim0(info.ref, manifest)
        self.outputs: Sequence[TensorSpec] = tuple(manifest.outputs)
        self.library_versions: Mapping[str, str] = {
            **_library_versions(""),
            "sciserve-server": server_version,
        }
        self._max_batch = manifest.max_batch_size
        self._served = served_name(manifest.namespace, manifest.name)
        self._client = client
        self._parameters = {"priority": priority.name.lower()} if priority is not None else None

    @classmethod
    async def connect(
        cls,
        ref: str,
        server: str,
        headers: Mapping[str, str] | None = None,
        *,
        priority: Priority | None = None,
    ) -> RemoteModel:
        """Resolve ``ref`` on the server at ``server``, sending ``headers``
        (credentials) with every request, and asking for ``priority``."""
        from ..protocol.client import InferenceClient
        from ..registry.remote import RemoteRegistry

        headers = dict(headers or {})

        def resolve() -> Any:
            with RemoteRegistry(server, headers=headers) as registry:
                return registry.resolve(ref)

        info = await asyncio.to_thread(resolve)
        client = InferenceClient(server, headers=headers)
        try:
            meta = await client.server_metadata()
            return cls(client, info, str(meta.get("version", "unknown")), priority=priority)
        except BaseException:
            await client.aclose()
            raise

    async def predict(self, features: npt.NDArray[Any]) -> dict[str, npt.NDArray[Any]]:
        if self._max_batch == 0:
            parts = [await self._infer(row) for row in features]
            return {o.name: np.stack([p[o.name] for p in parts]) for o in self.outputs}
        parts = [
            await self._infer(features[part]) for part in _chunks(len(features), self._max_batch)
        ]
        return {o.name: np.concatenate([p[o.name] for p in parts]) for o in self.outputs}

    async def _infer(self, batch: npt.NDArray[Any]) -> dict[str, npt.NDArray[Any]]:
        return await self._client.infer(
            self._served,
            {self.input.name: (batch, self.input.datatype)},
            [o.name for o in self.outputs],
            version=self.version,
            parameters=self._parameters,
        )

    async def close(self) -> None:
        await self._client.aclose()


# -- decoding and features ------------------------------------------------------


def check_trusted(features: PythonFeatures, settings: Settings) -> None:
    """Refuse a user's feature function unless an admin trusts its namespace.

    Loading the function runs the code of its file: hence this check first.
    """
    from ..registry.registry import Registry

    with Registry(settings) as registry:
        namespace = registry.namespace(features.namespace)
    if not namespace.trusted:
        raise PermissionDenied(
            f"feature function {features.python} belongs to namespace {features.namespace!r}, "
            "which is not trusted to run code"
        )


def _load_function(file: str, name: str) -> FeatureFunction:
    """``name`` from the Python file ``file``, loaded as a module of its own
    (``sys.path`` is not touched)."""
    path = Path(file)
    if not path.is_file():
        raise InvalidInput(f"no feature file {path}")
    digest = hashlib.sha256(str(path.resolve()).encode()).hexdigest()[:16]
    spec = importlib.util.spec_from_file_location(f"sciserve_features_{digest}", path)
    if spec is None or spec.loader is None:
        raise InvalidInput(f"cannot load {path} as a Python module")
    module = importlib.util.module_from_spec(spec)
    try:
        spec.loader.exec_module(module)
    except Exception as exc:  # the user's module failed to import, however it failed
        raise InvalidInput(f"importing {path} failed: {type(exc).__name__}: {exc}") from exc
    function = getattr(module, name, None)
    if not callable(function):
        raise InvalidInput(f"{path} has no function {name!r}")
    result: FeatureFunction = function
    return result


@dataclass(frozen=True)
class PrepareConfig:
    """How to turn message bytes into feature vectors; small, hashable and
    picklable, so worker processes can be told it with every task."""

    codec: str
    #: Keyword arguments of :func:`~sciserve.streams.codecs.codec_for`.
    codec_options: tuple[tuple[str, Any], ...]
    #: ``(file, function)`` of a user feature function; ``None`` for the
    #: built-in light-curve features.
    python: tuple[str, str] | None
    dtype: str
    #: Length every feature vector must have, if the models fix it.
    width: int | None
    #: Whether the decoded alerts are needed afterwards (by the filter).
    keep_alerts: bool
    #: Whether Rubin alerts may be decoded a batch at a time.
    batch_decode: bool = True
    #: With ``keep_alerts``: the only alert values the filter reads, if it
    #: reads nothing else of the alert (see ``Expression.alert_leaves``).
    alert_paths: tuple[tuple[str, ...], ...] | None = None


@dataclass(frozen=True)
class _Prepared:
    """One message after decoding and feature extraction (or the failure)."""

    alert_id: int | None = None
    alert: dict[str, Any] | None = None
    vector: npt.NDArray[Any] | None = None
    #: ``(stage, error, reason)`` of a message that cannot be annotated.
    failure: tuple[str, str, str] | None = None


#: What the stages hand on: a batch (fetched, or fetched and prepared), the
#: end (``None``), or the exception that stopped the stage.
_Fetched = Sequence[Message] | BaseException | None
_Intake = tuple[Sequence[Message], list[_Prepared]] | BaseException | None

#: Prepared messages, and the seconds spent decoding and computing features.
PrepareResult = tuple[list[_Prepared], float, float]


class _Preparer:
    """Decodes messages and computes their feature vectors."""

    def __init__(self, config: PrepareConfig) -> None:
        from .codecs import codec_for

        self.config = config
        self.codec = codec_for(config.codec, **dict(config.codec_options))
        if config.python is None:
            from .simulate import features_from_alert

            self.features: FeatureFunction = features_from_alert
        else:
            self.features = _load_function(*config.python)
        self.dtype = np.dtype(config.dtype)
        self.batch = _batch_decoder(config, self.codec)

    def __call__(self, values: Sequence[bytes]) -> PrepareResult:
        """The prepared messages, and the seconds spent decoding and in features."""
        if self.batch is not None and values:
            return self._batch(values)
        decoding = featuring = 0.0
        prepared = []
        for value in values:
            item, decode_s, features_s = self._one(value)
            decoding += decode_s
            featuring += features_s
            prepared.append(item)
        return prepared, decoding, featuring

    def _one(self, value: bytes) -> tuple[_Prepared, float, float]:
        """One message decoded by the codec and featurised, and the seconds each took."""
        from .codecs import DecodeError

        started = time.perf_counter()
        try:
            alert = self.codec.decode(value)
            alert_id = self.codec.alert_id(alert)
        except DecodeError as exc:
            return (
                _Prepared(failure=("decode", exc.reason, str(exc))),
                time.perf_counter() - started,
                0.0,
            )
        decoded = time.perf_counter()
        item = self._features(alert, alert_id)
        return item, decoded - started, time.perf_counter() - decoded

    def _batch(self, values: Sequence[bytes]) -> PrepareResult:
        """Decode ``values`` at once into light curves and featurise them as a batch.

        Messages the batch decoder leaves aside (malformed ones, in practice)
        take the per-message path, which dead-letters them as it always did.
        """
        from ..examples.features import extract_columns

        assert self.batch is not None
        started = time.perf_counter()
        curves = self.batch.decode(values)
        decoding = time.perf_counter() - started
        featuring = 0.0
        prepared: list[_Prepared | None] = [None] * len(values)
        decoded = [(i, curve) for i, curve in enumerate(curves) if curve is not None]
        if decoded:
            began = time.perf_counter()
            try:
                vectors = extract_columns([curve for _, curve in decoded])
            except Exception:  # odd data: each message then fails (or not) on its own
                log.exception("batch features failed; computing them one alert at a time")
            else:
                for (index, curve), vector in zip(decoded, vectors, strict=True):
                    prepared[index] = self._checked(curve.alert_id, curve.alert, vector)
            featuring += time.perf_counter() - began
        for index, value in enumerate(values):
            if prepared[index] is None:
                prepared[index], decode_s, features_s = self._one(value)
                decoding += decode_s
                featuring += features_s
        return [item for item in prepared if item is not None], decoding, featuring

    def _features(self, alert: dict[str, Any], alert_id: int) -> _Prepared:
        try:
            vector = np.asarray(self.features(alert), dtype=self.dtype).reshape(-1)
        except Exception as exc:  # a feature function may fail in any way on odd data
            reason = f"{type(exc).__name__}: {error_text(exc)}"
            return _Prepared(alert_id, failure=("features", "features-failed", reason))
        return self._checked(alert_id, alert, vector)

    def _checked(
        self, alert_id: int, alert: dict[str, Any] | None, vector: npt.NDArray[Any]
    ) -> _Prepared:
        vector = np.asarray(vector, dtype=self.dtype).reshape(-1)
        width = self.config.width
        if width is not None and len(vector) != width:
            reason = f"{len(vector)} features; the models take {width}"
            return _Prepared(alert_id, failure=("features", "features-shape", reason))
        return _Prepared(alert_id, alert if self.config.keep_alerts else None, vector)


def _batch_decoder(config: PrepareConfig, codec: Any) -> RubinBatchDecoder | None:
    """A batch decoder for ``config``, when its alerts can be decoded as a batch.

    That is Rubin alerts read by the built-in light-curve features and, if
    the filter reads the alert, only as plain values at known paths: a
    user's feature function, or a filter reading a record whole, gets the
    alerts the per-message codec makes.  Without polars the per-message path
    is used.
    """
    from .batchdecode import RubinBatchDecoder, batch_decoding_available
    from .codecs import RubinCodec

    if not config.batch_decode or not isinstance(codec, RubinCodec):
        return None
    if config.python is not None:
        return None
    paths = config.alert_paths if config.keep_alerts else ()
    if paths is None:
        return None
    if not batch_decoding_available():
        log.warning("polars is not installed: alerts are decoded one at a time (slower)")
        return None
    decoder = RubinBatchDecoder(codec.schemas, max_bytes=codec.max_bytes, alert_paths=paths)
    decoder.warm(codec.schema.schema_id)
    return decoder


@functools.cache
def _preparer(config: PrepareConfig) -> _Preparer:
    # One preparer per configuration and process: building a codec parses
    # every alert schema, which must not happen per batch.
    return _Preparer(config)


def prepare_values(config: PrepareConfig, values: Sequence[bytes]) -> PrepareResult:
    """Prepare ``values`` with the preparer of ``config`` (in whichever process runs this)."""
    return _preparer(config)(values)


def preparation(
    spec: StepsSpec, inputs: Sequence[TensorSpec], output_names: Collection[str]
) -> PrepareConfig:
    """How ``spec``'s records become feature vectors for models taking
    ``inputs``, checked against them and against the filter's names."""
    from ..datatypes import numpy_dtype

    widths = {spec_.shape[-1] for spec_ in inputs if spec_.shape}
    widths.discard(-1)
    if len(widths) > 1:
        raise InvalidInput(f"the models expect feature vectors of different lengths {widths}")
    dtypes = {spec_.datatype for spec_ in inputs}
    if len(dtypes) > 1:
        raise InvalidInput(f"the models expect features of different datatypes {dtypes}")
    check_filter_names(spec.filter_expression, output_names, FILTER_NAMES)
    options: dict[str, Any] = {"max_bytes": spec.max_message_bytes}
    if spec.codec.partition(":")[0] == "lsst":
        options["fields"] = _projection(spec)
    elif spec.id_field:
        options["id_field"] = spec.id_field
    features = spec.features
    expression = spec.filter_expression
    # A filter that never reads ``alert`` needs no decoded alerts.
    keep_alerts = expression is not None and "alert" in expression.names
    return PrepareConfig(
        codec=spec.codec,
        codec_options=tuple(sorted(options.items())),
        python=(
            (str(features.file), features.function)
            if isinstance(features, PythonFeatures)
            else None
        ),
        dtype=numpy_dtype(dtypes.pop()).str,
        width=widths.pop() if widths else None,
        keep_alerts=keep_alerts,
        # Fields chosen in the spec may lack the light curve (features must
        # then fail as they always did): those alerts go through the codec.
        batch_decode=spec.decode == "batch" and spec.fields in (None, "all"),
        alert_paths=(
            tuple(sorted(expression.alert_leaves))
            if keep_alerts and expression is not None and expression.alert_leaves is not None
            else None
        ),
    )


def check_filter_names(
    expression: Expression | None, output_names: Collection[str], names: Collection[str]
) -> None:
    """Refuse a filter that reads a name that is neither a model output nor one of ``names``."""
    if expression is None:
        return
    known = set(names) | set(output_names)
    unknown = expression.names - known
    if unknown:
        raise InvalidInput(
            f"the filter reads {sorted(unknown)}, which are neither model outputs "
            f"nor one of {sorted(names)}; known names: {sorted(known)}"
        )


def _projection(spec: StepsSpec) -> tuple[str, ...] | str | None:
    """The Rubin fields to decode: what the features and the filter read."""
    expression = spec.filter_expression
    wanted = [".".join(p) for p in expression.alert_paths] if expression else []
    if spec.fields == "all":
        return None
    if spec.fields is not None:
        return (*spec.fields, *wanted)
    if isinstance(spec.features, PythonFeatures):
        return None  # a user function may read anything
    if not wanted:
        return "lightcurve"
    from .schemas import RubinSchemas

    return (*RubinSchemas().get(spec.codec).lightcurve_paths(), *wanted)


def evaluate_filter(
    expression: Expression | None, context: Mapping[str, Any]
) -> tuple[bool, str | None]:
    """Whether an annotation passes the filter, and why not if the filter failed on it."""
    if expression is None:
        return True, None
    try:
        return expression.matches(context), None
    except EvaluationError as exc:
        return False, str(exc)


def _init_worker(parent: int) -> None:
    """Set up a preparing worker process of the pipeline process ``parent``.

    Ctrl-C reaches the whole process group, and so does a SIGTERM sent to
    the group (a service manager stopping the unit, ``kill -- -PGID``); the
    pipeline process drains and needs its workers until the batch in hand
    is written, so they ignore both and leave when the pipeline shuts its
    pool down.  A pipeline killed with SIGKILL cannot stop its workers, and
    they would run (and hold memory) forever: on Linux the kernel kills them
    when it exits, and everywhere a thread exits them once their parent
    changed.
    """
    signal.signal(signal.SIGINT, signal.SIG_IGN)
    signal.signal(signal.SIGTERM, signal.SIG_IGN)
    # Each worker is one core's share of the work: a thread pool per worker
    # the size of the machine (polars' default) would only oversubscribe it.
    # Set before polars is first imported here, when the preparer is built.
    os.environ.setdefault("POLARS_MAX_THREADS", "1")
    exit_with_parent(parent)


# -- one batch -----------------------------------------------------------------


@dataclass
class _Alert:
    message: Message
    #: The decoded alert, kept only when the filter reads it.
    alert: dict[str, Any] | None
    alert_id: int


@dataclass
class _Batch:
    """Everything one batch produced, ready to be written."""

    messages: Sequence[Message]
    annotations: list[Annotation] = field(default_factory=list)
    dead: list[DeadLetter] = field(default_factory=list)
    #: Broker timestamps of the alerts that got at least one annotation.
    annotated_timestamps: list[int | None] = field(default_factory=list)
    #: What the result store made of the annotations.
    stored: WriteOutcome = field(default_factory=WriteOutcome)

    @property
    def published(self) -> list[Annotation]:
        return [a for a in self.annotations if a.published]


def json_safe_row(values: npt.NDArray[Any]) -> Any:
    """A numpy row as JSON-safe nested lists (non-finite numbers become ``None``)."""
    data = values.tolist()
    if values.dtype.kind == "f" and not np.isfinite(values).all():
        return json_safe(data)
    return data


def json_safe(data: Any) -> Any:
    if isinstance(data, list):
        return [json_safe(item) for item in data]
    if isinstance(data, float) and not math.isfinite(data):
        return None
    return data


def _top_class(
    outputs: Sequence[TensorSpec], rows: Mapping[str, npt.NDArray[Any]]
) -> tuple[str | None, float | None]:
    """The label and value of the largest element of the first labelled output."""
    for spec in outputs:
        row = rows.get(spec.name)
        if spec.labels and row is not None and row.ndim == 1 and len(row) == len(spec.labels):
            index = int(np.argmax(row))
            score = float(row[index])
            return spec.labels[index], (score if math.isfinite(score) else None)
    return None, None


# -- the pipeline --------------------------------------------------------------


class Pipeline:
    """One worker of a stream pipeline.  Call :meth:`run` once.

    ``settings`` locate the registry (models, namespaces, result store) and
    the data directory where the status file goes.  ``metrics_port`` serves
    Prometheus metrics on 127.0.0.1 (0 picks a free port).  Pass
    ``metrics`` to keep more latencies than the default (benchmarks).
    """

    def __init__(
        self,
        spec: PipelineSpec,
        settings: Settings,
        *,
        metrics_port: int | None = None,
        write_status_file: bool = True,
        metrics: PipelineMetrics | None = None,
    ) -> None:
        self.spec = spec
        self.settings = settings
        self.metrics = metrics if metrics is not None else PipelineMetrics(spec.name)
        self.metrics_port = metrics_port
        self.state: State = "starting"
        self._write_status_file = write_status_file
        self._identity = process_identity()
        self._status_path = status_path(settings.home, spec.name, self._identity["pid"])
        self._started_at = datetime.now(UTC)
        self._stop = asyncio.Event()
        self._models: list[ModelRunner] = []
        self._store: ResultStore | None = None
        self._source: Source | None = None
        self._sinks: list[Sink] = []
        self._dead_letter: Sink | None = None
        self._filter: Expression | None = spec.filter_expression
        self._prepare_config: PrepareConfig | None = None
        self._pool: concurrent.futures.ProcessPoolExecutor | None = None
        self._workers = 0

    @property
    def status_file(self) -> Path:
        return self._status_path

    def request_stop(self) -> None:
        """Drain: finish the batch in hand, write and commit it, then stop.

        Call it from the event loop's thread (e.g. a signal handler added
        with :meth:`asyncio.loop.add_signal_handler`).
        """
        if self.state == "running":
            self.state = "draining"
        if not self._stop.is_set():
            log.info("pipeline %s: draining", self.spec.name)
        self._stop.set()

    async def run(self) -> dict[str, Any]:
        """Process batches until the source is exhausted or a stop is requested.

        Returns the final counters.  A failure to make outputs durable is
        raised (after retries) with nothing of the failing batch committed.
        """
        metrics_server = None
        status_task = None
        try:
            if self._write_status_file:
                status_task = asyncio.create_task(self._status_loop())
            await self._start()
            if self.metrics_port is not None:
                from .metrics import serve_metrics

                metrics_server = serve_metrics(self.metrics.registry, self.metrics_port)
                self.metrics_port = int(metrics_server.server_port)
            self.state = "draining" if self._stop.is_set() else "running"
            log.info("pipeline %s: running (pid %s)", self.spec.name, self._identity["pid"])
            await self._loop()
        except BaseException:
            self.state = "failed"
            raise
        finally:
            await self._close()
            if self.state != "failed":
                self.state = "stopped"
            if status_task is not None:
                status_task.cancel()
                with contextlib.suppress(asyncio.CancelledError):
                    await status_task
            if metrics_server is not None:
                metrics_server.shutdown()
                metrics_server.server_close()
            self._write_status()
        log.info("pipeline %s: stopped", self.spec.name)
        return self.metrics.snapshot()

    # -- set-up and tear-down ------------------------------------------------

    async def _start(self) -> None:
        spec = self.spec
        if isinstance(spec.features, PythonFeatures):
            await asyncio.to_thread(check_trusted, spec.features, self.settings)
        if spec.writes_results:
            self._store = await asyncio.to_thread(ResultStore.open, self.settings)
        for step in spec.models:
            runner: ModelRunner
            if step.server:
                runner = await RemoteModel.connect(
                    step.ref, step.server, self.settings.auth_headers()
                )
            else:
                runner = await LocalModel.load(step.ref, self.settings)
            self._models.append(runner)
            log.info("pipeline %s: model %s:%s", spec.name, runner.model, runner.version)
        self._prepare_config = self._preparation()
        await self._start_preparers(self._prepare_config)
        for url in spec.topic_sinks:
            self._sinks.append(await self._open_sink(url))
        self._dead_letter = await self._open_sink(spec.dead_letter)
        # The pipeline's name is its consumer group unless the URL names one.
        self._source = open_source(spec.source, consumer=spec.name)
        await self._source.start()

    def _preparation(self) -> PrepareConfig:
        """What decoding and features need to know, checked against the models."""
        return preparation(
            self.spec,
            [m.input for m in self._models],
            {o.name for m in self._models for o in m.outputs},
        )

    async def _start_preparers(self, config: PrepareConfig) -> None:
        """Build the preparer here, or in every worker process, before the
        first batch (so a bad configuration fails now, not on data)."""
        # Resolved once: the pool's size, whatever the cores do later.
        workers = self._workers = self.spec.worker_processes
        if not workers:
            await asyncio.to_thread(_preparer, config)
            return
        self._pool = concurrent.futures.ProcessPoolExecutor(
            max_workers=workers,
            # A fresh interpreter per worker: forking a process that runs
            # threads (the event loop's, ONNX Runtime's) is unsafe.
            mp_context=multiprocessing.get_context("spawn"),
            # Workers start on the first submits, from this (the event loop's)
            # thread: the thread whose end PR_SET_PDEATHSIG ties them to.
            initializer=_init_worker,
            initargs=(os.getpid(),),
        )
        loop = asyncio.get_running_loop()
        await asyncio.gather(
            *(loop.run_in_executor(self._pool, prepare_values, config, ()) for _ in range(workers))
        )

    async def _open_sink(self, url: str) -> Sink:
        sink = open_sink(url)
        if not sink.durable_on_write:
            raise InvalidInput(
                f"sink {url} makes records durable only when closed; a pipeline commits "
                "after every batch and needs a sink that is durable on write "
                "(e.g. .jsonl or .avro instead of .parquet)"
            )
        await sink.start()
        return sink

    async def _close(self) -> None:
        closers: list[Callable[[], Awaitable[None]]] = []
        if self._source is not None:
            closers.append(self._source.close)
        closers += [sink.close for sink in self._sinks]
        if self._dead_letter is not None:
            closers.append(self._dead_letter.close)
        closers += [model.close for model in self._models]
        for close in closers:
            try:
                await close()
            except Exception:  # closing the rest matters more than this one
                log.exception("pipeline %s: error while closing", self.spec.name)
        if self._store is not None:
            self._store.close()
        if self._pool is not None:
            self._pool.shutdown(cancel_futures=True)

    # -- the loop ------------------------------------------------------------

    async def _loop(self) -> None:
        """Run the three stages of the pipeline side by side.

        One task fetches batches, one prepares them (decodes, computes
        features) and this one annotates, writes and commits them, so that
        fetching, preparing and flushing sinks overlap instead of taking
        turns.  At most :data:`_IN_FLIGHT` batches are fetched and not yet
        committed, and batches are committed in the order they were fetched.
        """
        fetched: asyncio.Queue[_Fetched] = asyncio.Queue()
        prepared: asyncio.Queue[_Intake] = asyncio.Queue()
        slots = asyncio.Semaphore(_IN_FLIGHT)
        stages = [
            asyncio.create_task(self._fetcher(fetched, slots)),
            asyncio.create_task(self._preparer(fetched, prepared)),
        ]
        finished = asyncio.Event()
        lag = asyncio.create_task(self._watch_lag(finished))
        try:
            while True:
                item = await prepared.get()
                if isinstance(item, BaseException):
                    raise item
                if item is None:
                    break
                messages, ready = item
                batch = await self._process(messages, ready)
                await self._write(batch)
                started = time.perf_counter()
                assert self._source is not None
                await self._source.commit(messages)
                self.metrics.stage("commit", time.perf_counter() - started)
                self._committed(batch)
                slots.release()
        finally:
            for stage in stages:
                stage.cancel()
            await asyncio.gather(*stages, return_exceptions=True)
            # Let a lag query in progress finish: the source must not be
            # closed under it.
            finished.set()
            await lag

    async def _watch_lag(self, finished: asyncio.Event) -> None:
        """Refresh the consumer-lag gauge every :data:`_LAG_INTERVAL` seconds,
        and once more when the loop ends, so the last status tells the truth."""
        assert self._source is not None
        while True:
            try:
                self.metrics.set_lag(await self._source.lag())
            except SciserveError as exc:  # a gauge is not worth stopping for
                log.warning("pipeline %s: cannot read the lag: %s", self.spec.name, exc)
            if finished.is_set():
                return
            with contextlib.suppress(TimeoutError):
                await asyncio.wait_for(finished.wait(), _LAG_INTERVAL)

    async def _fetcher(self, out: asyncio.Queue[_Fetched], slots: asyncio.Semaphore) -> None:
        """Fetch batches until stopped or the source runs dry; then ``None``
        (or the exception that ended it)."""
        assert self._source is not None
        source = self._source
        try:
            while not self._stop.is_set():
                await slots.acquire()
                messages: Sequence[Message] = []
                started = time.perf_counter()
                while not messages and not self._stop.is_set():
                    messages = await source.fetch(self.spec.batch, self.spec.fetch_timeout)
                    if not messages and source.exhausted:
                        break
                if not messages:
                    break
                # Includes waiting for messages to arrive: high when idle.
                self.metrics.stage("fetch", time.perf_counter() - started)
                self.metrics.consumed(len(messages))
                # Fetched means "in hand": even when a stop arrives now, the
                # batch is prepared, written and committed.
                out.put_nowait(messages)
        except Exception as exc:
            out.put_nowait(exc)
            return
        out.put_nowait(None)

    async def _preparer(self, inbox: asyncio.Queue[_Fetched], out: asyncio.Queue[_Intake]) -> None:
        """Decode and featurise each fetched batch, in order."""
        while True:
            messages = await inbox.get()
            if messages is None or isinstance(messages, BaseException):
                out.put_nowait(messages)
                return
            try:
                ready = await self._prepare([m.value for m in messages])
            except Exception as exc:
                out.put_nowait(exc)
                return
            out.put_nowait((messages, ready))

    async def _process(self, messages: Sequence[Message], prepared: Sequence[_Prepared]) -> _Batch:
        batch = _Batch(messages)
        alerts: list[_Alert] = []
        vectors: list[npt.NDArray[Any]] = []
        for message, ready in zip(messages, prepared, strict=True):
            if ready.failure is not None:
                batch.dead.append(DeadLetter(message, *ready.failure, ready.alert_id))
            else:
                assert ready.alert_id is not None
                assert ready.vector is not None
                alerts.append(_Alert(message, ready.alert, ready.alert_id))
                vectors.append(ready.vector)
        if not alerts:
            return batch
        features = np.stack(vectors)
        annotated: set[int] = set()
        processed_at = datetime.now(UTC)
        for model in self._models:
            began = time.perf_counter()
            outputs = await self._predict(model, features, alerts, batch.dead)
            self.metrics.stage("model", time.perf_counter() - began)
            if outputs is None:
                continue
            began = time.perf_counter()
            for index, item in enumerate(alerts):
                rows = {name: values[index] for name, values in outputs.items()}
                batch.annotations.append(self._annotate(model, item, rows, processed_at))
                annotated.add(index)
            self.metrics.stage("annotate", time.perf_counter() - began)
        batch.annotated_timestamps = [alerts[i].message.timestamp_ms for i in sorted(annotated)]
        return batch

    async def _prepare(self, values: list[bytes]) -> list[_Prepared]:
        """Decode and featurise ``values``, split over the worker processes if any."""
        assert self._prepare_config is not None
        config = self._prepare_config
        if self._pool is None:
            parts = [await asyncio.to_thread(prepare_values, config, values)]
        else:
            loop = asyncio.get_running_loop()
            size = -(-len(values) // self._workers)
            parts = await asyncio.gather(
                *(
                    loop.run_in_executor(self._pool, prepare_values, config, values[i : i + size])
                    for i in range(0, len(values), size)
                )
            )
        # Worker times add up to more than the wall time: they are CPU time.
        self.metrics.stage("decode", sum(part[1] for part in parts))
        self.metrics.stage("features", sum(part[2] for part in parts))
        return [item for part in parts for item in part[0]]

    async def _predict(
        self,
        model: ModelRunner,
        features: npt.NDArray[Any],
        alerts: Sequence[_Alert],
        dead: list[DeadLetter],
    ) -> dict[str, npt.NDArray[Any]] | None:
        """The model's outputs, trying twice; on a second failure the batch's
        alerts are dead-lettered for this model and ``None`` is returned.

        A service error (server gone, credentials refused) is not the
        model's verdict on these alerts: it is retried with back-off and,
        if it persists, raised, which stops the pipeline with nothing
        committed."""

        async def predict() -> dict[str, npt.NDArray[Any]]:
            outputs = await model.predict(features)
            for name, values in outputs.items():
                if len(values) != len(alerts):
                    raise ModelExecutionError(
                        f"output {name!r} has {len(values)} rows for {len(alerts)} alerts"
                    )
            return outputs

        failure: Exception | None = None
        for attempt in (1, 2):
            try:
                return await self._backoff(
                    f"{model.model}:{model.version}",
                    predict,
                    retry_on=SERVICE_ERRORS,
                    attempts=_SERVICE_ATTEMPTS,
                    max_delay=32.0,
                )
            except SERVICE_ERRORS:
                raise
            except Exception as exc:  # any other failure of the model is the model's, not ours
                failure = exc
                log.warning(
                    "pipeline %s: %s:%s failed on a batch of %d (attempt %d): %s",
                    self.spec.name,
                    model.model,
                    model.version,
                    len(alerts),
                    attempt,
                    exc,
                )
        assert failure is not None
        reason = (
            f"{model.model}:{model.version} failed twice: "
            f"{type(failure).__name__}: {error_text(failure)}"
        )
        dead.extend(
            DeadLetter(item.message, "model", "model-error", reason, item.alert_id)
            for item in alerts
        )
        return None

    def _annotate(
        self,
        model: ModelRunner,
        item: _Alert,
        rows: Mapping[str, npt.NDArray[Any]],
        processed_at: datetime,
    ) -> Annotation:
        outputs = {name: json_safe_row(row) for name, row in rows.items()}
        label, score = _top_class(model.outputs, rows)
        published, filter_error = True, None
        if self._filter is not None:
            context = {**outputs, "alert": item.alert or {}, "label": label, "score": score}
            published, filter_error = evaluate_filter(self._filter, context)
        return Annotation(
            alert_id=item.alert_id,
            model=model.model,
            model_version=model.version,
            model_digest=model.digest,
            outputs=outputs,
            label=label,
            score=score,
            pipeline=self.spec.name,
            runtime=model.runtime,
            library_versions=model.library_versions,
            broker_timestamp_ms=item.message.timestamp_ms,
            processed_at=processed_at,
            published=published,
            filter_error=filter_error,
        )

    # -- output --------------------------------------------------------------

    async def _write(self, batch: _Batch) -> None:
        """Make every output of ``batch`` durable, or raise without committing."""
        started = time.perf_counter()
        writes: list[Awaitable[None]] = []
        if self._store is not None and batch.annotations:
            store = self._store

            async def store_annotations() -> None:
                batch.stored = await asyncio.to_thread(store.write_checked, batch.annotations)

            writes.append(self._durably("the result store", store_annotations))
        published = [OutRecord(value=a.to_json(), key=a.key.encode()) for a in batch.published]
        if published:
            for sink, url in zip(self._sinks, self.spec.topic_sinks, strict=True):
                writes.append(self._durably(url, sink.write, published))
        if batch.dead and self._dead_letter is not None:
            records = [letter.record(self.spec.name) for letter in batch.dead]
            writes.append(self._durably(self.spec.dead_letter, self._dead_letter.write, records))
        await asyncio.gather(*writes)
        self.metrics.stage("sinks", time.perf_counter() - started)

    async def _durably(self, what: str, write: Callable[..., Awaitable[Any]], *args: Any) -> None:
        """Await ``write(*args)``, retrying with back-off while the target is unavailable."""
        try:
            await self._backoff(
                f"writing to {what}",
                lambda: write(*args),
                retry_on=(Unavailable, OSError),
                attempts=_WRITE_ATTEMPTS,
                max_delay=8.0,
            )
        except (Unavailable, OSError) as exc:
            raise Unavailable(
                f"pipeline {self.spec.name}: cannot write to {what} "
                f"after {_WRITE_ATTEMPTS} attempts: {exc}"
            ) from exc

    async def _backoff(
        self,
        what: str,
        call: Callable[[], Awaitable[_T]],
        *,
        retry_on: tuple[type[BaseException], ...],
        attempts: int,
        max_delay: float,
    ) -> _T:
        """Await ``call()`` up to ``attempts`` times while it raises one of
        ``retry_on``, waiting 0.5 s doubling up to ``max_delay`` in between;
        the last error propagates."""
        delay = 0.5
        for attempt in range(1, attempts):
            try:
                return await call()
            except retry_on as exc:
                log.warning(
                    "pipeline %s: %s failed (%s, attempt %d); retrying in %.1f s",
                    self.spec.name, what, exc, attempt, delay,
                )  # fmt: skip
                await asyncio.sleep(delay)
                delay = min(delay * 2, max_delay)
        return await call()

    def _committed(self, batch: _Batch) -> None:
        now_ms = time.time() * 1000
        for timestamp in batch.annotated_timestamps:
            if timestamp is not None:
                self.metrics.latency(max(0.0, now_ms - timestamp) / 1000)
        self.metrics.annotated(len(batch.annotated_timestamps))
        self.metrics.published(len(batch.published))
        stored = batch.stored
        self.metrics.stored(stored.new, stored.duplicate, stored.conflicting)
        if stored.conflicting:
            log.warning(
                "pipeline %s: %d annotation(s) belong to alerts whose id was already annotated "
                "with other outputs, so these are different alerts sharing an alert id; the "
                "stored annotations are kept: %s",
                self.spec.name,
                stored.conflicting,
                ", ".join(stored.conflicts),
            )
        for letter in batch.dead:
            self.metrics.dead_lettered(
                letter.stage, error=letter.error, reason=letter.reason, alert_id=letter.alert_id
            )

    # -- status ----------------------------------------------------------------

    async def _status_loop(self) -> None:
        while True:
            self._write_status()
            await asyncio.sleep(_STATUS_INTERVAL)

    def _write_status(self) -> None:
        if not self._write_status_file:
            return
        data = {
            "name": self.spec.name,
            **self._identity,
            "state": self.state,
            "source": self.spec.source,
            "sinks": list(self.spec.sinks),
            "dead_letter": self.spec.dead_letter,
            "models": [f"{m.model}:{m.version}" for m in self._models],
            "metrics_port": self.metrics_port,
            # For whoever judges the numbers below (the server's health report).
            "budget": None if self.spec.budget is None else self.spec.budget.model_dump(),
            "started_at": self._started_at.isoformat(),
            "updated_at": datetime.now(UTC).isoformat(),
            **self.metrics.snapshot(),
        }
        try:
            write_status(self._status_path, data)
        except OSError as exc:  # a full disk must not stop the annotations
            log.warning("pipeline %s: cannot write %s: %s", self.spec.name, self._status_path, exc)


async def run_pipeline(
    spec: PipelineSpec,
    settings: Settings,
    *,
    metrics_port: int | None = None,
    handle_signals: bool = True,
) -> dict[str, Any]:
    """Run ``spec`` until its source is exhausted or SIGTERM / SIGINT drains it."""
    pipeline = Pipeline(spec, settings, metrics_port=metrics_port)
    loop = asyncio.get_running_loop()
    signals = (signal.SIGTERM, signal.SIGINT) if handle_signals else ()
    for signum in signals:
        loop.add_signal_handler(signum, pipeline.request_stop)
    try:
        return await pipeline.run()
    finally:
        for signum in signals:
            loop.remove_signal_handler(signum)
