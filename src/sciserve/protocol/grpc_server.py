"""The gRPC adapter: Triton's ``inference.GRPCInferenceService`` over ``grpc.aio``.

Clients written for NVIDIA Triton (``tritonclient.grpc``, CMSSW's
SonicTriton, Triton's perf_analyzer) talk to sciserve unchanged: the
messages are the ones compiled in ``tritonclient.grpc.service_pb2``, so field
numbers match Triton exactly.

Every RPC runs as a coroutine on the event loop of the
:class:`~sciserve.serving.service.InferenceService` it adapts, so a request
goes from the socket to the batcher without a thread hop.  The standard
``grpc.health.v1.Health`` service is served alongside: the empty service
name (and ``inference.GRPCInferenceService``) is SERVING when the server is
ready, and each served model name is SERVING when that model is.

Domain errors become gRPC status codes in one place, :data:`STATUS_TABLE`.
Triton's shared-memory, trace and log-settings RPCs are not implemented and
answer UNIMPLEMENTED with a message saying so.
"""

from __future__ import annotations

import asyncio
import functools
import logging
import math
import time
from collections.abc import AsyncIterator, Awaitable, Callable, Mapping
from dataclasses import dataclass
from typing import Any, TypeVar

import grpc
from google.protobuf import json_format
from google.protobuf.message import DecodeError
from grpc_health.v1 import health_pb2, health_pb2_grpc
from tritonclient.grpc import model_config_pb2, service_pb2, service_pb2_grpc

from ..access.identity import Identity
from ..errors import (
    ConfigError,
    Conflict,
    DependencyMissing,
    DeviceUnavailable,
    IntegrityError,
    InvalidInput,
    ModelExecutionError,
    ModelNotReady,
    NotFound,
    Overloaded,
    PayloadTooLarge,
    PermissionDenied,
    RateLimited,
    ReadOnlyRegistry,
    SciserveError,
    Unauthenticated,
    Unavailable,
)
from ..serving.service import InferenceService, max_input_elements
from ._grpc_listen import listen, server_options
from ._messages import client_message
from ._relay_frames import METHODS, Method
from .grpc_codec import decode_infer_request, encode_infer_response

__all__ = [
    "STATUS_TABLE",
    "HealthServicer",
    "InferenceServicer",
    "create_grpc_server",
    "status_of",
]

log = logging.getLogger("sciserve.protocol.grpc")

_Code = grpc.StatusCode

#: Domain error → gRPC status code; the first class that matches wins, so
#: subclasses come before their bases.  Anything that is not a
#: :class:`~sciserve.errors.SciserveError` is INTERNAL with a generic message.
STATUS_TABLE: tuple[tuple[type[SciserveError], grpc.StatusCode], ...] = (
    (Unauthenticated, _Code.UNAUTHENTICATED),
    (RateLimited, _Code.RESOURCE_EXHAUSTED),  # adds retry metadata
    # The same code gRPC itself uses for a message over the size limit.
    (PayloadTooLarge, _Code.RESOURCE_EXHAUSTED),
    (InvalidInput, _Code.INVALID_ARGUMENT),  # ManifestError, ArchiveError, InvalidReference
    (NotFound, _Code.NOT_FOUND),
    (Conflict, _Code.ALREADY_EXISTS),  # VersionConflict
    (PermissionDenied, _Code.PERMISSION_DENIED),
    (ReadOnlyRegistry, _Code.PERMISSION_DENIED),
    (Unavailable, _Code.UNAVAILABLE),  # ModelNotReady; Overloaded adds retry metadata
    (DependencyMissing, _Code.UNAVAILABLE),
    (DeviceUnavailable, _Code.UNAVAILABLE),
    (IntegrityError, _Code.DATA_LOSS),
    (ModelExecutionError, _Code.INTERNAL),
    (ConfigError, _Code.INTERNAL),
    (SciserveError, _Code.INTERNAL),
)

#: Codes that mean the server is at fault: logged with their traceback.
_SERVER_FAULTS = frozenset({_Code.INTERNAL, _Code.DATA_LOSS})

_INTERNAL = "internal server error; the server log has the details"

#: Longest status message: it travels in the trailing metadata, which
#: clients accept up to 8 KiB by default.
_MAX_DETAILS = 4096

#: Requests one ModelStreamInfer stream may have in flight (running, or
#: answered but not yet sent).  Past it the server stops reading the stream,
#: so HTTP/2 flow control slows the client down instead of memory growing.
_STREAM_WINDOW = 256

#: How often a health Watch re-checks the status it reports (s).
_WATCH_INTERVAL = 1.0

_SERVING: int = health_pb2.HealthCheckResponse.SERVING
_NOT_SERVING: int = health_pb2.HealthCheckResponse.NOT_SERVING
_SERVICE_UNKNOWN: int = health_pb2.HealthCheckResponse.SERVICE_UNKNOWN

#: The fields of ``service.model_config()`` that exist in Triton's
#: ``ModelConfig``.  ``version_policy`` is left out: Triton versions are
#: integers, sciserve versions are not.
_CONFIG_FIELDS = (
    "name",
    "platform",
    "backend",
    "max_batch_size",
    "input",
    "output",
    "dynamic_batching",
    "instance_group",
    "parameters",
)

#: The fields of one model's ``service.statistics()`` entry that exist in
#: Triton's ``ModelStatistics`` (sciserve adds ``state`` and ``reason``).
_STATISTICS_FIELDS = (
    "name",
    "version",
    "last_inference",
    "inference_count",
    "execution_count",
    "inference_stats",
    "batch_stats",
)


def status_of(exc: SciserveError) -> grpc.StatusCode:
    """The gRPC status code :data:`STATUS_TABLE` gives ``exc``."""
    for cls, code in STATUS_TABLE:
        if isinstance(exc, cls):
            return code
    return _Code.INTERNAL  # unreachable: SciserveError closes the table


@dataclass(frozen=True, slots=True)
class _Failure:
    """How one exception is reported to a client."""

    code: grpc.StatusCode
    details: str
    trailing_metadata: tuple[tuple[str, str], ...] = ()


def _failure(exc: Exception) -> _Failure:
    """Translate ``exc`` for the client, logging what the client must not see."""
    if not isinstance(exc, SciserveError):
        log.error("unexpected error in a gRPC call", exc_info=exc)
        return _Failure(_Code.INTERNAL, _INTERNAL)
    code = status_of(exc)
    if code in _SERVER_FAULTS:
        log.error("%s: %s", type(exc).__name__, exc, exc_info=exc)
    metadata: tuple[tuple[str, str], ...] = ()
    if isinstance(exc, Overloaded | RateLimited):
        # ``retry-after`` mirrors REST's header; ``grpc-retry-pushback-ms``
        # is what gRPC's own retry policy honours.
        metadata = (
            ("retry-after", str(max(1, math.ceil(exc.retry_after)))),
            ("grpc-retry-pushback-ms", str(max(0, round(exc.retry_after * 1000)))),
        )
    return _Failure(code, client_message(str(exc), _MAX_DETAILS), metadata)


_Request = TypeVar("_Request")
_Response = TypeVar("_Response")
_Unary = Callable[[Any, _Request, grpc.aio.ServicerContext], Awaitable[_Response]]


def _reported(method: _Unary[_Request, _Response]) -> _Unary[_Request, _Response]:
    """Wrap a unary RPC so every exception it raises ends the call with the
    status :func:`_failure` gives it."""

    @functools.wraps(method)
    async def call(self: Any, request: _Request, context: grpc.aio.ServicerContext) -> _Response:
        try:
            return await method(self, request, context)
        except Exception as exc:
            await self.audit_denial(method.__name__, exc, context)
            failure = _failure(exc)
            await context.abort(failure.code, failure.details, failure.trailing_metadata)
            raise  # unreachable: abort() raises

    return call


_NO_SHARED_MEMORY = "; send tensor data in the request itself"
_NO_TRACE = "; use the server log and its Prometheus metrics"


async def _unimplemented(context: grpc.aio.ServicerContext, what: str, hint: str) -> None:
    await context.abort(_Code.UNIMPLEMENTED, f"sciserve does not implement {what}{hint}")


def _version(version: str) -> str | None:
    """Protobuf has no null: an empty version means "the default one"."""
    return version or None


def _authorization(context: grpc.aio.ServicerContext) -> str | None:
    """The ``authorization`` metadata value, if the caller sent one."""
    for key, value in context.invocation_metadata() or ():
        if key == "authorization":
            return value if isinstance(value, str) else value.decode("latin-1")
    return None


class InferenceServicer(service_pb2_grpc.GRPCInferenceServiceServicer):  # type: ignore[misc]
    """Triton's ``inference.GRPCInferenceService`` on top of an :class:`InferenceService`."""

    def __init__(self, service: InferenceService) -> None:
        self.service = service

    async def identity(self, context: grpc.aio.ServicerContext) -> Identity:
        """The caller, from the ``authorization`` metadata (``Bearer …``)."""
        return await self.service.identify(_authorization(context))

    async def audit_denial(
        self, method: str, exc: BaseException, context: grpc.aio.ServicerContext
    ) -> None:
        reason = {Unauthenticated: "unauthenticated", PermissionDenied: "forbidden",
                  RateLimited: "rate_limited"}.get(type(exc))  # fmt: skip
        if reason is not None:
            await self.service.record_denial(f"gRPC {method}", reason, _authorization(context))

    # -- health and metadata ---------------------------------------------

    @_reported
    async def ServerLive(
        self, request: service_pb2.ServerLiveRequest, context: grpc.aio.ServicerContext
    ) -> service_pb2.ServerLiveResponse:
        return service_pb2.ServerLiveResponse(live=self.service.live())

    @_reported
    async def ServerReady(
        self, request: service_pb2.ServerReadyRequest, context: grpc.aio.ServicerContext
    ) -> service_pb2.ServerReadyResponse:
        return service_pb2.ServerReadyResponse(ready=self.service.ready())

    @_reported
    async def ModelReady(
        self, request: service_pb2.ModelReadyRequest, context: grpc.aio.ServicerContext
    ) -> service_pb2.ModelReadyResponse:
        try:
            ready = await self.service.model_ready(
                request.name, _version(request.version), await self.identity(context)
            )
        except ModelNotReady:  # known, but no version loaded yet: the answer is "no"
            ready = False
        return service_pb2.ModelReadyResponse(ready=ready)

    @_reported
    async def ServerMetadata(
        self, request: service_pb2.ServerMetadataRequest, context: grpc.aio.ServicerContext
    ) -> service_pb2.ServerMetadataResponse:
        meta = self.service.server_metadata()
        return service_pb2.ServerMetadataResponse(
            name=meta["name"], version=meta["version"], extensions=meta["extensions"]
        )

    @_reported
    async def ModelMetadata(
        self, request: service_pb2.ModelMetadataRequest, context: grpc.aio.ServicerContext
    ) -> service_pb2.ModelMetadataResponse:
        meta = await self.service.model_metadata(
            request.name, _version(request.version), await self.identity(context)
        )
        tensor = service_pb2.ModelMetadataResponse.TensorMetadata
        return service_pb2.ModelMetadataResponse(
            name=meta["name"],
            versions=meta["versions"],
            platform=meta["platform"],
            inputs=[tensor(**t) for t in meta["inputs"]],
            outputs=[tensor(**t) for t in meta["outputs"]],
        )

    @_reported
    async def ModelConfig(
        self, request: service_pb2.ModelConfigRequest, context: grpc.aio.ServicerContext
    ) -> service_pb2.ModelConfigResponse:
        config = await self.service.model_config(
            request.name, _version(request.version), await self.identity(context)
        )
        return service_pb2.ModelConfigResponse(config=model_config_message(config))

    @_reported
    async def ModelStatistics(
        self, request: service_pb2.ModelStatisticsRequest, context: grpc.aio.ServicerContext
    ) -> service_pb2.ModelStatisticsResponse:
        stats = await self.service.statistics(
            request.name or None, _version(request.version), await self.identity(context)
        )
        return statistics_message(stats)

    # -- inference -------------------------------------------------------

    @_reported
    async def ModelInfer(
        self, request: service_pb2.ModelInferRequest, context: grpc.aio.ServicerContext
    ) -> service_pb2.ModelInferResponse:
        return await self._infer(request, await self.identity(context))

    async def _infer(
        self, request: service_pb2.ModelInferRequest, identity: Identity
    ) -> service_pb2.ModelInferResponse:
        # Scope and model are checked before the tensors are decoded, and
        # decoding builds no more elements than the model's inputs can hold.
        model = await self.service.admit_infer(
            identity, request.model_name, _version(request.model_version)
        )
        max_elements = max_input_elements(model.info.manifest)
        # Raw inputs are decoded as views over the message's bytes: no copy
        # between the wire and the batcher.
        decoded = decode_infer_request(request, max_elements=max_elements)
        response = await self.service.infer(decoded, identity=identity)
        return encode_infer_response(response)

    async def ModelStreamInfer(
        self,
        requests: AsyncIterator[service_pb2.ModelInferRequest],
        context: grpc.aio.ServicerContext,
    ) -> AsyncIterator[service_pb2.ModelStreamInferResponse]:
        """Answer every request of a bidirectional stream, each as soon as it is done.

        Requests run concurrently (so they can share batches) and are
        answered in the order they finish.  A failed request is answered
        with ``error_message`` (and its id) and the stream goes on.
        """
        answers: asyncio.Queue[service_pb2.ModelStreamInferResponse | None] = asyncio.Queue()
        window = asyncio.Semaphore(_STREAM_WINDOW)
        try:
            identity = await self.identity(context)
        except Exception as exc:
            await self.audit_denial("ModelStreamInfer", exc, context)
            failure = _failure(exc)
            await context.abort(failure.code, failure.details, failure.trailing_metadata)
            raise  # unreachable: abort() raises
        reader = asyncio.create_task(self._read_stream(requests, answers, window, identity))
        try:
            while (answer := await answers.get()) is not None:
                yield answer
                window.release()  # sent: room for one more request
            await reader  # re-raises a failure to read the stream
        finally:
            reader.cancel()

    async def _read_stream(
        self,
        requests: AsyncIterator[service_pb2.ModelInferRequest],
        answers: asyncio.Queue[service_pb2.ModelStreamInferResponse | None],
        window: asyncio.Semaphore,
        identity: Identity,
    ) -> None:
        try:
            # The task group waits for every request still running once the
            # client half-closes, and cancels them if the stream is cancelled.
            async with asyncio.TaskGroup() as group:
                async for request in requests:
                    await window.acquire()
                    group.create_task(self._stream_answer(request, answers, identity))
        finally:
            answers.put_nowait(None)

    async def _stream_answer(
        self,
        request: service_pb2.ModelInferRequest,
        answers: asyncio.Queue[service_pb2.ModelStreamInferResponse | None],
        identity: Identity,
    ) -> None:
        try:
            response = await self._infer(request, identity)
        except Exception as exc:
            failure = _failure(exc)
            answers.put_nowait(
                service_pb2.ModelStreamInferResponse(
                    error_message=failure.details,
                    infer_response=service_pb2.ModelInferResponse(
                        model_name=request.model_name,
                        model_version=request.model_version,
                        id=request.id,
                    ),
                )
            )
        else:
            answers.put_nowait(service_pb2.ModelStreamInferResponse(infer_response=response))

    # -- model repository extension ----------------------------------------

    @_reported
    async def RepositoryIndex(
        self, request: service_pb2.RepositoryIndexRequest, context: grpc.aio.ServicerContext
    ) -> service_pb2.RepositoryIndexResponse:
        rows = await self.service.repository_index(request.ready, await self.identity(context))
        entry = service_pb2.RepositoryIndexResponse.ModelIndex
        return service_pb2.RepositoryIndexResponse(
            models=[
                entry(name=r["name"], version=r["version"], state=r["state"], reason=r["reason"])
                for r in rows
            ]
        )

    @_reported
    async def RepositoryModelLoad(
        self, request: service_pb2.RepositoryModelLoadRequest, context: grpc.aio.ServicerContext
    ) -> service_pb2.RepositoryModelLoadResponse:
        # A configuration or model files sent with the request would be
        # silently ignored otherwise: models come from the registry only.
        if any(key == "config" or key.startswith("file:") for key in request.parameters):
            raise InvalidInput(
                "loading with a configuration or files in the request is not supported: "
                "publish the model to the registry instead"
            )
        await self.service.load_model(request.model_name, await self.identity(context))
        return service_pb2.RepositoryModelLoadResponse()

    @_reported
    async def RepositoryModelUnload(
        self, request: service_pb2.RepositoryModelUnloadRequest, context: grpc.aio.ServicerContext
    ) -> service_pb2.RepositoryModelUnloadResponse:
        await self.service.unload_model(request.model_name, await self.identity(context))
        return service_pb2.RepositoryModelUnloadResponse()

    # -- Triton extensions sciserve does not implement -----------------------

    async def SystemSharedMemoryStatus(self, request: Any, context: Any) -> None:
        await _unimplemented(context, "Triton's system shared-memory extension", _NO_SHARED_MEMORY)

    async def SystemSharedMemoryRegister(self, request: Any, context: Any) -> None:
        await _unimplemented(context, "Triton's system shared-memory extension", _NO_SHARED_MEMORY)

    async def SystemSharedMemoryUnregister(self, request: Any, context: Any) -> None:
        await _unimplemented(context, "Triton's system shared-memory extension", _NO_SHARED_MEMORY)

    async def CudaSharedMemoryStatus(self, request: Any, context: Any) -> None:
        await _unimplemented(context, "Triton's CUDA shared-memory extension", _NO_SHARED_MEMORY)

    async def CudaSharedMemoryRegister(self, request: Any, context: Any) -> None:
        await _unimplemented(context, "Triton's CUDA shared-memory extension", _NO_SHARED_MEMORY)

    async def CudaSharedMemoryUnregister(self, request: Any, context: Any) -> None:
        await _unimplemented(context, "Triton's CUDA shared-memory extension", _NO_SHARED_MEMORY)

    async def TraceSetting(self, request: Any, context: Any) -> None:
        await _unimplemented(context, "Triton's trace extension", _NO_TRACE)

    async def LogSettings(self, request: Any, context: Any) -> None:
        await _unimplemented(context, "Triton's logging extension", _NO_TRACE)


def model_config_message(config: Mapping[str, Any]) -> model_config_pb2.ModelConfig:
    """Build Triton's ``ModelConfig`` from :meth:`InferenceService.model_config`.

    That dict already is Triton's model configuration in protobuf's JSON
    mapping (``"data_type": "TYPE_FP32"``, ``dims`` without the batch
    dimension), so protobuf's own JSON parser builds the message; a field
    Triton does not know is an error, not silently dropped.
    """
    fields = {key: config[key] for key in _CONFIG_FIELDS if key in config}
    message: model_config_pb2.ModelConfig = json_format.ParseDict(
        fields, model_config_pb2.ModelConfig()
    )
    return message


def statistics_message(stats: Mapping[str, Any]) -> service_pb2.ModelStatisticsResponse:
    """Build Triton's ``ModelStatisticsResponse`` from :meth:`InferenceService.statistics`."""
    message = service_pb2.ModelStatisticsResponse()
    for model in stats["model_stats"]:
        fields = {key: model[key] for key in _STATISTICS_FIELDS if key in model}
        json_format.ParseDict(fields, message.model_stats.add())
    return message


class HealthServicer(health_pb2_grpc.HealthServicer):  # type: ignore[misc]
    """``grpc.health.v1.Health``, answered from the service's live state.

    Statuses are computed on each call rather than pushed into a table, so
    they can never go stale as models load, fail and unload.
    """

    #: Names that stand for the whole server.
    SERVER_NAMES = frozenset({"", "inference.GRPCInferenceService"})

    def __init__(self, service: InferenceService) -> None:
        self.service = service

    async def status(self, name: str, context: grpc.aio.ServicerContext) -> int | None:
        """The ``ServingStatus`` of ``name``, or ``None`` when no such service
        exists or the caller may not see it.

        The server's own status is public, for probes and load balancers; a
        model's is what the caller's credentials may read, so that health
        checks cannot reveal which models exist.
        """
        if name in self.SERVER_NAMES:
            return _SERVING if self.service.ready() else _NOT_SERVING
        try:
            identity = await self.service.identify(_authorization(context))
            ready = await self.service.model_ready(name, identity=identity)
        except (NotFound, Unauthenticated):
            return None
        except ModelNotReady:
            ready = False
        return _SERVING if ready else _NOT_SERVING

    async def Check(
        self, request: health_pb2.HealthCheckRequest, context: grpc.aio.ServicerContext
    ) -> health_pb2.HealthCheckResponse:
        status = await self.status(request.service, context)
        if status is None:
            await context.abort(_Code.NOT_FOUND, f"unknown service {request.service!r}")
        return health_pb2.HealthCheckResponse(status=status)

    async def Watch(
        self, request: health_pb2.HealthCheckRequest, context: grpc.aio.ServicerContext
    ) -> AsyncIterator[health_pb2.HealthCheckResponse]:
        """Send the current status, then every change, until the client leaves."""
        last: int | None = None
        while True:
            status = await self.status(request.service, context)
            if status is None:
                status = _SERVICE_UNKNOWN
            if status != last:
                yield health_pb2.HealthCheckResponse(status=status)
                last = status
            await asyncio.sleep(_WATCH_INTERVAL)


# -- messages that are not protobuf ---------------------------------------------


class Undecodable(Exception):
    """A request message that is not the protobuf message its method takes."""


def is_undecodable(exc: BaseException) -> bool:
    """Whether ``exc`` is (or, from a stream's task group, wraps) :class:`Undecodable`."""
    if isinstance(exc, BaseExceptionGroup):
        return any(is_undecodable(inner) for inner in exc.exceptions)
    return isinstance(exc, Undecodable)


def undecodable_details(method: Method) -> str:
    """The INVALID_ARGUMENT message for a request that is not ``method``'s message."""
    return f"the request is not a valid {method.request.DESCRIPTOR.full_name} message"


class _NotProtobuf:
    """What the servicers get instead of a message gRPC could not decode."""


_NOT_PROTOBUF = _NotProtobuf()


class _ClientMistakes:
    """Logs refused client messages briefly, at most once per ``interval`` (s),
    so a client sending garbage cannot flood the log."""

    def __init__(self, interval: float = 60.0) -> None:
        self.interval = interval
        self._last = -math.inf
        self._unreported = 0

    def refused(self, method: Method) -> None:
        self._unreported += 1
        now = time.monotonic()
        if now - self._last < self.interval:
            return
        log.warning(
            "refused %d gRPC request message(s) that were not protobuf (latest: %s); "
            "the next report comes in %.0f s at the earliest",
            self._unreported,
            method.path,
            self.interval,
        )
        self._last, self._unreported = now, 0


_MISTAKES = _ClientMistakes()


def _lenient(message: Any) -> Callable[[bytes], Any]:
    """``message.FromString``, but undecodable bytes give ``_NOT_PROTOBUF``
    instead of an exception, which gRPC would log with its traceback and
    answer UNKNOWN."""
    parse = message.FromString

    def deserialize(data: bytes) -> Any:
        try:
            return parse(data)
        except DecodeError:
            return _NOT_PROTOBUF

    return deserialize


def _checked(method: Method, behavior: Any) -> Any:
    """``behavior`` refusing undecodable requests with INVALID_ARGUMENT."""

    async def refuse(context: grpc.aio.ServicerContext) -> None:
        _MISTAKES.refused(method)
        await context.abort(_Code.INVALID_ARGUMENT, undecodable_details(method))

    if method.client_streaming:

        async def messages(requests: AsyncIterator[Any]) -> AsyncIterator[Any]:
            async for request in requests:
                if request is _NOT_PROTOBUF:
                    raise Undecodable
                yield request

        async def streams(requests: AsyncIterator[Any], context: Any) -> AsyncIterator[Any]:
            try:
                async for response in behavior(messages(requests), context):
                    yield response
            except Exception as exc:
                if not is_undecodable(exc):
                    raise
                await refuse(context)

        return streams

    if method.server_streaming:

        async def replies(request: Any, context: Any) -> AsyncIterator[Any]:
            if request is _NOT_PROTOBUF:
                await refuse(context)
            async for response in behavior(request, context):
                yield response

        return replies

    async def unary(request: Any, context: Any) -> Any:
        if request is _NOT_PROTOBUF:
            await refuse(context)
        return await behavior(request, context)

    return unary


def _add_servicers(server: grpc.aio.Server, servicers: Mapping[str, Any]) -> None:
    """Register every method of :data:`METHODS` on ``server``, as the generated
    ``add_…_to_server`` functions do, but with lenient deserializers."""
    factories = {
        (False, False): grpc.unary_unary_rpc_method_handler,
        (False, True): grpc.unary_stream_rpc_method_handler,
        (True, False): grpc.stream_unary_rpc_method_handler,
        (True, True): grpc.stream_stream_rpc_method_handler,
    }
    handlers: dict[str, dict[str, grpc.RpcMethodHandler]] = {}
    for method in METHODS:
        behavior = getattr(servicers[method.service], method.name)
        factory = factories[(method.client_streaming, method.server_streaming)]
        handlers.setdefault(method.service, {})[method.name] = factory(
            _checked(method, behavior),
            request_deserializer=_lenient(method.request),
            response_serializer=method.response.SerializeToString,
        )
    for name, table in handlers.items():
        server.add_generic_rpc_handlers((grpc.method_handlers_generic_handler(name, table),))
        server.add_registered_method_handlers(name, table)


def create_grpc_server(
    service: InferenceService,
    host: str,
    port: int,
    *,
    tls: tuple[bytes, bytes] | None = None,
) -> tuple[grpc.aio.Server, int]:
    """A ``grpc.aio`` server for ``service``, bound to ``host:port`` but not started.

    Returns the server and the port it bound (``port`` 0 picks a free one).
    Call it from the event loop that runs ``service``; start the server with
    ``await server.start()`` and stop it with ``await server.stop(grace)``.
    Messages larger than ``service.config.max_request_bytes`` are refused by
    gRPC itself with RESOURCE_EXHAUSTED.  ``tls`` is a PEM (certificate
    chain, private key) pair.  Raises :class:`OSError` when the address
    cannot be bound.
    """
    server = grpc.aio.server(options=server_options(service.config.max_request_bytes))
    servicers = {
        "inference.GRPCInferenceService": InferenceServicer(service),
        "grpc.health.v1.Health": HealthServicer(service),
    }
    _add_servicers(server, servicers)
    return server, listen(server, host, port, tls)
