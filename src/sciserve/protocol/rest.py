"""The HTTP server: the Open Inference Protocol (v2 REST, as NVIDIA Triton
speaks it) and the sciserve registry API.

Inference and model management, compatible with ``tritonclient.http``::

    GET  /v2/health/live                      200 when live, else 503
    GET  /v2/health/ready                     200 when every model to load is ready, else 503
    GET  /v2                                  server metadata
    GET  /v2/models/stats                     statistics of every loaded version
    GET  /v2/models/{name}[/versions/{v}]             model metadata
    GET  /v2/models/{name}[/versions/{v}]/ready       200, or 503 {"ready": false, "reason"}
    GET  /v2/models/{name}[/versions/{v}]/config      Triton model configuration
    GET  /v2/models/{name}[/versions/{v}]/stats       statistics
    POST /v2/models/{name}[/versions/{v}]/infer       inference
    POST /v2/repository/index                 body {"ready": bool} optional
    POST /v2/repository/models/{name}/load
    POST /v2/repository/models/{name}/unload
    GET  /v2/sciserve/monitoring              drift judgement of every monitored version
    POST /v2/sciserve/monitoring/{name}/reference   store the default version's recorded
                                              traffic as its drift reference (admin)

``{name}`` is the served name (``lc-classifier`` in namespace ``default``,
``examples.lc-classifier`` elsewhere) and ``{v}`` a version or an alias.
Health endpoints answer 503 rather than Triton's 400 when not live or
ready: 503 is what load balancers and Kubernetes probes understand as
"not now".

The registry API, under ``/v2/sciserve/registry`` (``REGISTRY_PREFIX``),
where ``{ref}`` is one of ``/models/{ns}/{name}`` (the default version),
``/models/{ns}/{name}/versions/{version}`` or
``/models/{ns}/{name}/aliases/{alias}``::

    GET    /namespaces                      {"namespaces": [...]}
    GET    /events?limit=N                  {"events": [...]}, newest first
    GET    /models?namespace=NS             {"models": [...], "complete"}: each model's default
                                            version the caller may see; "complete" when it
                                            sees every namespace (an admin)
    POST   /models                          publish; body: the package as .tar.gz (or .tar);
                                            201 {"created": true, "version"} or 200 if it existed
    GET    /models/{ns}/{name}/versions     {"versions": [...]}, newest first
    GET    {ref}                            the version
    GET    {ref}/card                       model card, text/markdown
    GET    {ref}/card.jsonld                FAIR4ML metadata, application/ld+json
    GET    {ref}/archive                    the package as .tar.gz
    POST   {ref}/verify                     {"reports": [...]}: the server re-hashes the bytes
    POST   /verify                          the same for every version
    POST   {ref}/yank                       body {"reason": "..."}
    POST   {ref}/unyank
    PUT    /models/{ns}/{name}/aliases/{a}  tag; body {"version": V} or {"alias": A} (or {}),
                                            and "force": true (admin) past a promotion policy;
                                            409 {"error", "failures": [...]} when the policy refuses
    DELETE /models/{ns}/{name}/aliases/{a}  untag
    GET    /models/{ns}/{name}/policies     {"policies": [...]}: promotion policies per alias
    PUT    /models/{ns}/{name}/policies/{a} body {"require": ["DATASET:METRIC OP VALUE", ...],
                                            "split"} (admin)
    DELETE /models/{ns}/{name}/policies/{a} (admin)
    GET    /models/{ns}/{name}/evaluations  {"evaluations": [...]}, newest first;
                                            ?version=V&dataset=D&limit=N
    POST   /models/{ns}/{name}/evaluations  store a record; body {"version", "dataset",
                                            "dataset_version", "dataset_digest", "split",
                                            "metrics", "record"} (admin: a record is evidence
                                            for a promotion gate)
    GET    /models/{ns}/{name}/evaluations/{id}  the record (as in the listing)
    GET    /models/{ns}/{name}/evaluations/{id}/report  its HTML report (self-contained:
                                            plots inline, no script, its own CSP)
    GET    /models/{ns}/{name}/evaluations/{id}/plots/{plot}.png|.svg  one plot (roc,
                                            confusion, reliability; residuals), drawn on
                                            demand from the record and its stored outputs
    GET    /leaderboards/{ns}/{dataset}     ?metric=M&split=S&direction=higher|lower|zero: model
                                            versions ranked by their newest record's M; only
                                            models of namespaces the caller may see
    GET    /tokens                          {"tokens": [...]}: API tokens, never their secrets
    POST   /tokens                          mint; body {"subject", "scopes": {ns: [scope]},
                                            "admin", "priority", "expires_in" (s), "label",
                                            "limit"}; 201 {..., "token"}: the only time it is sent
    POST   /tokens/{token_id}/revoke        the token's record, revoked

Datasets have the same routes under ``/datasets`` (``{"datasets": [...]}``
for the listing; ``POST /datasets`` takes a dataset package), with
``{ref}/croissant`` (the Croissant document, application/ld+json) in place
of the model card.  Each kind's routes refuse the other kind's names and
packages (404 / 400), so a dataset is never served or pulled as a model.

The token routes need ``admin`` on ``*`` and a server with authentication
on; each change is in the audit trail under the admin's token id.

The dashboard (:mod:`sciserve.protocol.dashboard`) adds its pages under
``/`` and the health report ``GET /v2/sciserve/health``.

The jobs API, under ``/v2/sciserve/jobs`` (``JOBS_PREFIX``): batch jobs
recorded in the registry database, which runners execute::

    POST /                                  submit; body {"spec": YAML text or object,
                                            "namespace", "cluster", "priority"}; 201, the record
    GET  /?state=S[,S]&namespace=NS&limit=N {"jobs": [...]}: the caller's namespaces, newest first
    GET  /{job_id}                          the record, its spec included
    GET  /{job_id}/logs?after=N             {"lines": [...]}: log lines after line id N
    POST /{job_id}/cancel                   the record; 409 once it has finished
    POST /{job_id}/resume                   the record, queued again; 409 unless failed or cancelled

A job is its namespace's: seeing it needs a scope there, and a job the
caller may not see answers like a missing one.  Submitting, cancelling and
resuming need ``infer`` (submitting: also in the namespace of every model
the spec names).  A submitted spec may read only under ``[jobs] archives``
(:mod:`sciserve.jobs.archives`); each change is in the audit trail.

Versions travel in the form :func:`sciserve.registry.remote.version_to_wire`
writes, which :class:`~sciserve.registry.remote.RemoteRegistry` reads.

Every error is JSON, ``{"error": message}``.  Domain errors add
``"type"``, the name of their class, and get the status :data:`STATUS_TABLE`
gives that class (the one place domain errors meet HTTP); ``RemoteRegistry``
turns them back into the same exceptions.  An unknown route is 404 and a
wrong method 405.  Errors of the server itself are 500 with a generic
message; the traceback goes to the log, never to the client.
"""

from __future__ import annotations

import contextlib
import functools
import json
import logging
import math
import os
import re
import shutil
import tempfile
import zlib
from collections.abc import AsyncIterator, Awaitable, Callable, Iterator, Mapping
from pathlib import Path
from typing import Any, NamedTuple, TypeVar
from urllib.parse import unquote

from prometheus_client import CONTENT_TYPE_LATEST, generate_latest
from pydantic import ValidationError
from starlette import types as asgi
from starlette.applications import Starlette
from starlette.concurrency import iterate_in_threadpool, run_in_threadpool
from starlette.exceptions import HTTPException
from starlette.requests import ClientDisconnect, Request
from starlette.responses import Response, StreamingResponse
from starlette.routing import BaseRoute, Route

from .._hashing import CHUNK
from ..access.audit import audit
from ..access.identity import ANY_NAMESPACE, Identity, Scope
from ..access.policy import authorize, visible
from ..access.priority import Priority, parse_priority
from ..access.tokens import TokenStore
from ..config import RateLimit
from ..datatypes import check_element_total
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
    PolicyViolation,
    RateLimited,
    ReadOnlyRegistry,
    SciserveError,
    Unauthenticated,
    Unavailable,
)
from ..evaluation import views
from ..jobs.archives import Archives
from ..jobs.records import MAX_SPEC_BYTES, JobOrigin, JobRecord, JobStore, parse_states
from ..jobs.remote import JOBS_PREFIX
from ..jobs.submission import api_spec, model_references, spec_document
from ..package.archive import pack
from ..package.card import render_card, to_jsonld
from ..package.manifest import DATASET, MODEL, NAMESPACE_RE, Manifest
from ..package.reference import Reference, parse_reference
from ..registry.leaderboard import Direction
from ..registry.promotion import DEFAULT_SPLIT, EvaluationInfo
from ..registry.registry import VersionInfo
from ..registry.remote import REGISTRY_PREFIX, namespace_to_wire, version_to_wire
from ..serving.service import InferenceService, max_input_elements
from ..serving.types import InferenceRequest, InferenceResponse
from ..streams.spec import BatchSpec, PythonFeatures, parse_batch_spec
from ._frames import Buffer
from ._infer_frames import RelayedRequest, response_payload, tensors_only
from ._infer_path import INFER_PATH
from ._messages import client_message
from .rest_codec import (
    HEADER_LENGTH_HEADER,
    decode_infer_request,
    encode_infer_response,
    infer_response_headers,
    wants_binary_output,
)

__all__ = [
    "REGISTRY_PREFIX",
    "STATUS_TABLE",
    "RestApp",
    "Tensors",
    "create_app",
    "create_metrics_app",
    "status_of",
    "status_of_type",
]

log = logging.getLogger("sciserve.protocol.rest")

#: Domain error → HTTP status; the first class that matches wins, so
#: subclasses come before their bases.
STATUS_TABLE: list[tuple[type[SciserveError], int]] = [
    (Unauthenticated, 401),  # adds WWW-Authenticate: Bearer
    (RateLimited, 429),  # adds Retry-After
    (PayloadTooLarge, 413),
    (InvalidInput, 400),  # also ManifestError, ArchiveError, InvalidReference
    (NotFound, 404),
    (Conflict, 409),  # also VersionConflict
    (PermissionDenied, 403),
    (ReadOnlyRegistry, 403),
    (Unavailable, 503),  # ModelNotReady; Overloaded adds Retry-After
    (DependencyMissing, 503),
    (DeviceUnavailable, 503),
    (IntegrityError, 500),
    (ModelExecutionError, 500),
    (ConfigError, 500),
    (SciserveError, 500),
]

_JSON = "application/json"
_INTERNAL = "internal server error; the server log has the details"
#: Largest JSON body of the management and registry routes.
_SMALL_BODY = 1 << 20
_JSON_TYPES = {str: "string", bool: "boolean", int: "integer"}
#: Largest number of events one request may ask for.
_MAX_EVENTS = 10_000
#: Most digits of a number a client sends (a header, a query parameter):
#: more than any size or count, and few enough for ``int()``.
_MAX_DIGITS = 18
#: Inference bodies: the most bytes one tensor element takes in JSON (a
#: float's repr, separator and indentation) or raw, and the room left for
#: everything else (names, ids, parameters).
_BYTES_PER_ELEMENT = 64
_BODY_OVERHEAD = 64 * 1024
#: Inference bodies up to this size are decoded on the event loop (it takes
#: well under a millisecond); larger ones in a worker thread.
_INLINE_DECODE = 256 * 1024

Endpoint = Callable[[Request], Awaitable[Response]]
_Answer = TypeVar("_Answer")


def status_of(exc: SciserveError) -> int:
    """The HTTP status :data:`STATUS_TABLE` gives ``exc``."""
    return status_of_type(type(exc))


def status_of_type(kind: type[BaseException]) -> int:
    """The HTTP status of errors of class ``kind``: 500 for any but domain errors."""
    for cls, status in STATUS_TABLE:
        if issubclass(kind, cls):
            return status
    return 500  # a fault of the server, not a domain error


# -- responses ---------------------------------------------------------------


def _json(data: Any, status: int = 200, headers: Mapping[str, str] | None = None) -> Response:
    body = json.dumps(data, separators=(",", ":")).encode()
    return Response(body, status, headers, media_type=_JSON)


def _error(
    status: int, message: str, kind: str | None = None, headers: Mapping[str, str] | None = None
) -> Response:
    body = {"error": message} if kind is None else {"error": message, "type": kind}
    return _json(body, status, headers)


def _domain_error(exc: SciserveError) -> Response:
    status = status_of(exc)
    if status == 500:
        # A fault of the server or the model, not of the client: keep the cause.
        # (503s are expected states, loading or overloaded, and not logged.)
        log.error("%s: %s", type(exc).__name__, exc, exc_info=exc)
    headers: dict[str, str] = {}
    if isinstance(exc, Overloaded | RateLimited):
        headers["Retry-After"] = str(max(1, math.ceil(exc.retry_after)))
    if isinstance(exc, Unauthenticated):
        headers["WWW-Authenticate"] = 'Bearer realm="sciserve"'

    if isinstance(exc, PayloadTooLarge):
        # The rest of an oversized body may still be on its way; closing the
        # connection spares the server from reading it.
        headers["Connection"] = "close"
    response = _error(status, client_message(str(exc)), type(exc).__name__, headers)
    if isinstance(exc, PolicyViolation):
        # What failed, as data: a release script can show or act on it.
        body = {"error": client_message(str(exc)), "type": "PolicyViolation"}
        response = _json(body | {"failures": exc.failures}, status, headers)
    return response


async def _http_error(request: Request, exc: Exception) -> Response:
    """Routing errors (unknown path, wrong method) as JSON, like every other error."""
    assert isinstance(exc, HTTPException)
    message = {404: f"no route {request.url.path}", 405: f"{request.method} is not allowed"}
    return _error(exc.status_code, message.get(exc.status_code, exc.detail), None, exc.headers)


#: Denials worth an audit event, and the reason recorded for each.
_DENIALS: tuple[tuple[type[SciserveError], str], ...] = (
    (Unauthenticated, "unauthenticated"),
    (PermissionDenied, "forbidden"),
    (RateLimited, "rate_limited"),
)

Denied = Callable[[Request, str], Awaitable[None]]


def _guarded(
    endpoint: Callable[[Request], Awaitable[_Answer]], denied: Denied | None = None
) -> Callable[[Request], Awaitable[_Answer | Response]]:
    """Wrap an endpoint so every exception leaves as a JSON error response."""

    @functools.wraps(endpoint)
    async def guarded(request: Request) -> _Answer | Response:
        try:
            return await endpoint(request)
        except SciserveError as exc:
            reason = next((r for cls, r in _DENIALS if isinstance(exc, cls)), None)
            if reason is not None and denied is not None:
                await denied(request, reason)
            return _domain_error(exc)
        except ClientDisconnect:
            return Response(status_code=400)  # nobody is listening any more
        except Exception:
            log.exception("unexpected error in %s %s", request.method, request.url.path)
            return _error(500, _INTERNAL)

    return guarded


# -- request bodies ----------------------------------------------------------


def _check_declared_length(request: Request, limit: int) -> None:
    """Refuse a body whose Content-Length is over ``limit`` before reading any of it."""
    raw = request.headers.get("content-length")
    if raw is not None and _digits(raw) and (len(raw) > _MAX_DIGITS or int(raw) > limit):
        raise PayloadTooLarge(f"request body is {raw} bytes; the limit is {limit} bytes")


def _digits(raw: str) -> bool:
    return raw.isascii() and raw.isdigit()


def _decoder(request: Request) -> Any:
    """A zlib decompressor for the body's Content-Encoding, or ``None``."""
    encoding = request.headers.get("content-encoding", "").strip().lower()
    if encoding in ("", "identity"):
        return None
    if encoding == "gzip":
        return zlib.decompressobj(16 + zlib.MAX_WBITS)
    if encoding == "deflate":
        return zlib.decompressobj(zlib.MAX_WBITS)
    raise InvalidInput(f"unsupported Content-Encoding {encoding!r}; use gzip or deflate")


def _inflate(decoder: Any, chunk: bytes, room: int, limit: int) -> bytes:
    """Decompress ``chunk``, never producing more than ``room`` + 1 bytes."""
    try:
        out: bytes = decoder.decompress(chunk, room + 1)
    except zlib.error as exc:
        raise InvalidInput(f"request body is not valid compressed data: {exc}") from exc
    # Stopping at room + 1 bytes is what keeps a compression bomb from ever
    # being inflated in memory.
    if len(out) > room:
        raise PayloadTooLarge(f"request body inflates to more than the limit of {limit} bytes")
    if decoder.unused_data:
        raise InvalidInput("request body has data after the end of the compressed stream")
    return out


def _too_large(limit: int) -> PayloadTooLarge:
    return PayloadTooLarge(f"request body exceeds the limit of {limit} bytes")


async def _read_body(request: Request, limit: int) -> bytes:
    """The (decompressed) request body, refused as soon as it exceeds ``limit``."""
    _check_declared_length(request, limit)
    decoder = _decoder(request)
    chunks: list[bytes] = []
    received = size = 0
    async for chunk in request.stream():
        if not chunk:
            continue
        # A body sent chunked, or longer than it claimed, is counted as it comes.
        received += len(chunk)
        if received > limit:
            raise _too_large(limit)
        if decoder is not None:
            chunk = _inflate(decoder, chunk, limit - size, limit)
        size += len(chunk)
        chunks.append(chunk)
    if decoder is not None and not decoder.eof:
        raise InvalidInput("compressed request body is truncated")
    return chunks[0] if len(chunks) == 1 else b"".join(chunks)


async def _json_object(request: Request, limit: int = _SMALL_BODY) -> dict[str, Any]:
    """The body as a JSON object; an empty body is ``{}``."""
    body = await _read_body(request, limit)
    if not body.strip():
        return {}
    try:
        doc = json.loads(body)
    except (ValueError, RecursionError) as exc:  # UnicodeDecodeError is a ValueError
        raise InvalidInput(f"request body is not valid JSON: {exc}") from exc
    if not isinstance(doc, dict):
        raise InvalidInput("request body must be a JSON object")
    return doc


def _required(doc: dict[str, Any], key: str, kind: type) -> Any:
    """``doc[key]``, which must be there with exactly type ``kind``."""
    if doc.get(key) is None:
        raise InvalidInput(f"{key!r} is required")
    return _optional(doc, key, kind)


def _optional(doc: dict[str, Any], key: str, kind: type, default: Any = None) -> Any:
    """``doc[key]`` if it has exactly type ``kind`` (so ``true`` is no integer), else refuse."""
    value = doc.get(key)
    if value is None:
        return default
    if type(value) is not kind:
        raise InvalidInput(f"{key!r} must be a {_JSON_TYPES.get(kind, kind.__name__)}")
    return value


def _body_bound(manifest: Manifest, max_elements: int | None, limit: int) -> int:
    """The largest inference body a model's inputs can need, at most ``limit``.

    A JSON or raw element takes at most :data:`_BYTES_PER_ELEMENT`; strings
    (``BYTES``) or unbounded shapes leave only ``limit``.  The bound holds
    for the inflated body too, so a small compressed body cannot make the
    server inflate and parse megabytes for a model taking a few numbers.
    """
    if max_elements is None or any(t.datatype == "BYTES" for t in manifest.inputs):
        return limit
    return min(limit, max_elements * _BYTES_PER_ELEMENT + _BODY_OVERHEAD)


def _check_relayed_body(request: Request, limit: int, size: int) -> None:
    """The checks :func:`_read_body` makes, in its order, for a body of
    ``size`` bytes a front end read and decoded (uncompressed: a front end
    relays compressed bodies as they are)."""
    _check_declared_length(request, limit)
    if _decoder(request) is not None:
        raise RuntimeError("a front end decoded a compressed body")
    if size > limit:
        raise _too_large(limit)


def _header_length(request: Request) -> int | None:
    raw = request.headers.get(HEADER_LENGTH_HEADER)
    if raw is None:
        return None
    if not _digits(raw):
        raise InvalidInput(f"{HEADER_LENGTH_HEADER} must be a non-negative integer, got {raw!r}")
    if len(raw) > _MAX_DIGITS:  # int() refuses thousands of digits; no body is that long
        raise InvalidInput(f"{HEADER_LENGTH_HEADER} ({len(raw)} digits) exceeds the body length")
    return int(raw)


# -- Open Inference Protocol -------------------------------------------------


class _Inference:
    """The OIP endpoints over one :class:`InferenceService`."""

    def __init__(self, service: InferenceService) -> None:
        self.service = service
        self.limit = service.config.max_request_bytes

    async def _identity(self, request: Request) -> Identity:
        return await self.service.identify(request.headers.get("authorization"))

    def routes(self) -> list[BaseRoute]:
        # Inference first: the router tries routes in order, and this is the
        # route that carries the load.
        model = "/v2/models/{name}"
        version = "/v2/models/{name}/versions/{version}"
        get, post = ["GET"], ["POST"]
        table: list[tuple[str, Endpoint, list[str]]] = [
            (model + "/infer", self.infer, post),
            (version + "/infer", self.infer, post),
            ("/v2/health/live", self.live, get),
            ("/v2/health/ready", self.ready, get),
            ("/v2", self.server_metadata, get),
            ("/v2/models/stats", self.statistics, get),
            (model, self.model_metadata, get),
            (version, self.model_metadata, get),
            (model + "/ready", self.model_ready, get),
            (version + "/ready", self.model_ready, get),
            (model + "/config", self.model_config, get),
            (version + "/config", self.model_config, get),
            (model + "/stats", self.statistics, get),
            (version + "/stats", self.statistics, get),
            ("/v2/repository/index", self.repository_index, post),
            ("/v2/repository/models/{name}/load", self.load, post),
            ("/v2/repository/models/{name}/unload", self.unload, post),
            ("/v2/sciserve/monitoring", self.monitoring, get),
            ("/v2/sciserve/monitoring/{name}/reference", self.freeze_reference, post),
        ]
        denied = _denied_recorder(self.service)
        return [Route(path, _guarded(fn, denied), methods=methods) for path, fn, methods in table]

    async def infer(self, request: Request) -> Response:
        result, decoded = await self._infer(request, None)
        return _infer_response(result, decoded)

    async def infer_relayed(self, request: Request) -> Response | Tensors:
        """Inference decoded by an HTTP front end (the fast path): the same
        checks, the same call of the service, and the outputs as tensors
        for the front end to encode."""
        relayed = RelayedRequest(request.scope[_RELAYED])
        result, decoded = await self._infer(request, relayed)
        if not tensors_only(result):
            return _infer_response(result, decoded)
        return Tensors(response_payload(result))

    async def _infer(
        self, request: Request, relayed: RelayedRequest | None
    ) -> tuple[InferenceResponse, InferenceRequest]:
        """The one inference path of HTTP: with ``relayed``, a front end read
        and decoded the body; without, it is read and decoded here."""
        params = request.path_params
        name, version = params["name"], params.get("version")
        # Caller, scope and model first: the body of a request that will be
        # refused anyway is never read, let alone inflated or parsed.
        identity = await self._identity(request)
        model = await self.service.admit_infer(identity, name, version)
        header_length = _header_length(request)
        max_elements = max_input_elements(model.info.manifest)
        limit = _body_bound(model.info.manifest, max_elements, self.limit)
        if relayed is not None:
            # The front end decoded it within the server's own limits; what
            # this model's limits add is checked here, where decoding would
            # have checked it, so the answer is the in-process one.
            _check_relayed_body(request, limit, relayed.body_size)
            check_element_total(relayed.shapes, max_elements)
            decoded = relayed.request(name, version)
        else:
            body = await _read_body(request, limit)
            decode = functools.partial(
                decode_infer_request,
                body,
                header_length,
                model_name=name,
                model_version=version,
                max_body_bytes=limit,
                max_elements=max_elements,
            )
            # Parsing a large body takes long enough to stall every other
            # request on the loop (health probes included): do it in a thread.
            decoded = decode() if len(body) <= _INLINE_DECODE else await run_in_threadpool(decode)
        return await self.service.infer(decoded, identity=identity), decoded

    async def live(self, request: Request) -> Response:
        return Response(status_code=200 if self.service.live() else 503)

    async def ready(self, request: Request) -> Response:
        return Response(status_code=200 if self.service.ready() else 503)

    async def server_metadata(self, request: Request) -> Response:
        return _json(self.service.server_metadata())

    async def model_metadata(self, request: Request) -> Response:
        name, version = _model(request)
        identity = await self._identity(request)
        return _json(await self.service.model_metadata(name, version, identity))

    async def model_ready(self, request: Request) -> Response:
        name, version = _model(request)
        identity = await self._identity(request)
        try:
            ready, reason = await self.service.model_state(name, version, identity)
        except ModelNotReady as exc:  # e.g. unloaded: known, but no version to ask
            ready, reason = False, str(exc)
        if ready:
            return Response(status_code=200)
        return _json({"ready": False, "reason": reason}, 503)

    async def model_config(self, request: Request) -> Response:
        name, version = _model(request)
        identity = await self._identity(request)
        return _json(await self.service.model_config(name, version, identity))

    async def statistics(self, request: Request) -> Response:
        params = request.path_params  # no name: every model
        identity = await self._identity(request)
        stats = await self.service.statistics(params.get("name"), params.get("version"), identity)
        return _json(stats)

    async def monitoring(self, request: Request) -> Response:
        identity = await self._identity(request)
        return _json(await self.service.monitoring_status(identity))

    async def freeze_reference(self, request: Request) -> Response:
        identity = await self._identity(request)
        return _json(await self.service.freeze_reference(request.path_params["name"], identity))

    async def repository_index(self, request: Request) -> Response:
        identity = await self._identity(request)
        doc = await _json_object(request)
        ready_only = _optional(doc, "ready", bool, False)
        return _json(await self.service.repository_index(ready_only, identity))

    async def load(self, request: Request) -> Response:
        identity = await self._identity(request)
        parameters = (await _json_object(request)).get("parameters") or {}
        if not isinstance(parameters, dict):
            raise InvalidInput("'parameters' must be an object")
        if any(key == "config" or key.startswith("file:") for key in parameters):
            raise InvalidInput(
                "loading with a configuration or files in the request is not supported: "
                "models come from the registry (publish a new version instead)"
            )
        await self.service.load_model(request.path_params["name"], identity)
        return Response(status_code=200)

    async def unload(self, request: Request) -> Response:
        identity = await self._identity(request)
        await _json_object(request)  # Triton's unload parameters change nothing here
        await self.service.unload_model(request.path_params["name"], identity)
        return Response(status_code=200)


def _denied_recorder(service: InferenceService) -> Denied | None:
    if service.access is None:
        return None

    async def record(request: Request, reason: str) -> None:
        route = request.scope.get("route")
        template = getattr(route, "path", None)
        if template is None:
            # Inference skips the router: name its template, not the raw path,
            # so callers cannot mint new sampling keys with new model names.
            match = _INFER_PATH.fullmatch(request.url.path)
            template = _infer_template(match) if match else request.url.path
        await service.record_denial(
            f"{request.method} {template}", reason, request.headers.get("authorization")
        )

    return record


#: The key of a registry listing's items, by kind.
_PLURAL = {MODEL: "models", DATASET: "datasets"}


def _check_upload(identity: Identity, manifest: Manifest, kind: str) -> None:
    """A publish's check, once the manifest is read: the namespace, then the kind."""
    authorize(identity, "publish", manifest.namespace)
    if manifest.kind != kind:
        raise InvalidInput(
            f"the upload is a {manifest.kind} package; publish it to "
            f"{REGISTRY_PREFIX}/{_PLURAL[manifest.kind]}"
        )


class _Encoded(Response):
    """A response whose body and headers are already encoded."""

    def __init__(self, body: bytes, headers: list[tuple[bytes, bytes]]) -> None:
        self.status_code = 200
        self.background = None
        self.body = body
        self.raw_headers = headers


def _infer_response(result: InferenceResponse, decoded: InferenceRequest) -> Response:
    payload, json_length = encode_infer_response(
        result, decoded.outputs, binary_default=wants_binary_output(decoded)
    )
    return _Encoded(payload, infer_response_headers(len(payload), json_length))


class Tensors(NamedTuple):
    """The answer to inference a front end decoded: the OUTPUTS payload
    (:mod:`~sciserve.protocol._infer_frames`), for it to encode."""

    payload: list[Buffer]


def _model(request: Request) -> tuple[str, str | None]:
    params = request.path_params
    return params["name"], params.get("version")


# -- registry API ------------------------------------------------------------


class _RegistryApi:
    """The registry endpoints over the (synchronous) registry of a service."""

    def __init__(self, service: InferenceService) -> None:
        self.service = service
        self.registry = service.registry

    async def _authorize(
        self,
        request: Request,
        action: Scope,
        namespace: str | None,
        name: str | None = None,
        kind: str = MODEL,
    ) -> Identity:
        """The caller, if it may do ``action`` in ``namespace``; every route asks here first.

        ``namespace`` ``None`` means "across namespaces": listings are then
        filtered to what the caller may see, and global actions (the audit
        trail, verifying everything) need ``admin`` on ``*``.  Routes about
        one model (or dataset: ``kind``) pass its ``name``, so one the caller
        may not see is reported in the registry's words for a missing one.
        """
        identity = await self.service.identify(request.headers.get("authorization"))
        if namespace is not None:
            authorize(identity, action, namespace, name, what=kind)
        elif action == "admin" and not identity.is_admin:
            raise PermissionDenied(f"{identity.subject} needs the admin scope on '*'")
        return identity

    def routes(self) -> list[BaseRoute]:
        base = REGISTRY_PREFIX
        get, post = ["GET"], ["POST"]
        table: list[tuple[str, Endpoint, list[str]]] = [
            (base + "/namespaces", self.namespaces, get),
            (base + "/events", self.events, get),
            (base + "/verify", self.verify_all, post),
            (base + "/tokens", self.tokens, get),
            (base + "/tokens", self.create_token, post),
            (base + "/tokens/{token_id}/revoke", self.revoke_token, post),
            (base + "/leaderboards/{namespace}/{name}", self.leaderboard, get),
        ]
        # Models and datasets: the same routes over the same registry calls,
        # each kind under its own path, so one is never taken for the other.
        for kind, plural in ((MODEL, "models"), (DATASET, "datasets")):

            def of(fn: Callable[..., Awaitable[Response]], kind: str = kind) -> Endpoint:
                return functools.partial(fn, kind=kind)

            item = f"{base}/{plural}/{{namespace}}/{{name}}"
            table += [
                (f"{base}/{plural}", of(self.list_models), get),
                (f"{base}/{plural}", of(self.publish), post),
                (item + "/versions", of(self.versions), get),
                (item + "/aliases/{alias}", of(self.tag), ["PUT"]),
                (item + "/aliases/{alias}", of(self.untag), ["DELETE"]),
            ]
            for ref in (item, item + "/versions/{version}", item + "/aliases/{alias}"):
                table += [
                    (ref, of(self.resolve), get),
                    (ref + "/archive", of(self.archive), get),
                    (ref + "/verify", of(self.verify), post),
                    (ref + "/yank", of(self.yank), post),
                    (ref + "/unyank", of(self.unyank), post),
                ]
                if kind == MODEL:
                    table += [
                        (ref + "/card", self.card, get),
                        (ref + "/card.jsonld", self.jsonld, get),
                    ]
                else:
                    table.append((ref + "/croissant", self.croissant, get))
        # Promotion policies and evaluation records belong to models.
        model = f"{base}/models/{{namespace}}/{{name}}"
        table += [
            (model + "/policies", self.policies, get),
            (model + "/policies/{policy}", self.set_policy, ["PUT"]),
            (model + "/policies/{policy}", self.clear_policy, ["DELETE"]),
            (model + "/evaluations", self.evaluations, get),
            (model + "/evaluations", self.add_evaluation, post),
            (model + "/evaluations/{record_id}", self.evaluation, get),
            (model + "/evaluations/{record_id}/report", self.evaluation_report, get),
            (model + "/evaluations/{record_id}/plots/{plot}", self.evaluation_plot, get),
        ]
        denied = _denied_recorder(self.service)
        return [Route(path, _guarded(fn, denied), methods=methods) for path, fn, methods in table]

    async def _call(self, fn: Callable[..., Any], *args: Any, **kwargs: Any) -> Any:
        # The registry is synchronous (database and file I/O): keep it off the loop.
        return await run_in_threadpool(fn, *args, **kwargs)

    # -- reading -----------------------------------------------------------

    async def namespaces(self, request: Request) -> Response:
        identity = await self._authorize(request, "read", None)
        found = await self._call(self.registry.namespaces)
        shown = [n for n in found if identity.can_see(n.name)]
        return _json({"namespaces": [namespace_to_wire(n) for n in shown]})

    async def events(self, request: Request) -> Response:
        await self._authorize(request, "admin", None)
        raw = request.query_params.get("limit", "100")
        if not _digits(raw) or len(raw) > _MAX_DIGITS or not 0 < int(raw) <= _MAX_EVENTS:
            raise InvalidInput(f"limit must be an integer from 1 to {_MAX_EVENTS}, got {raw!r}")
        return _json({"events": await self._call(self.registry.events, int(raw))})

    async def list_models(self, request: Request, *, kind: str = MODEL) -> Response:
        namespace = request.query_params.get("namespace")
        identity = await self._authorize(request, "read", namespace)
        found = await self._call(self.registry.list_models, namespace, kind=kind)
        shown = [v for v in found if identity.can_see(v.namespace)]
        # "complete": whether the caller sees every namespace, so a client can
        # tell "nothing published" from "nothing it may see" (without learning
        # whether anything is hidden).
        items = [version_to_wire(v) for v in shown]
        return _json({_PLURAL[kind]: items, "complete": identity.is_admin})

    async def versions(self, request: Request, *, kind: str = MODEL) -> Response:
        ref = _reference(request)
        await self._authorize(request, "read", ref.namespace, ref.name, kind)
        found = await self._call(self.registry.versions, ref, kind=kind)
        return _json({"versions": [version_to_wire(v) for v in found]})

    async def _resolve(self, request: Request, action: Scope, kind: str = MODEL) -> VersionInfo:
        ref = _reference(request)
        await self._authorize(request, action, ref.namespace, ref.name, kind)
        info: VersionInfo = await self._call(self.registry.resolve, ref, kind=kind)
        return info

    async def resolve(self, request: Request, *, kind: str = MODEL) -> Response:
        return _json(version_to_wire(await self._resolve(request, "read", kind)))

    async def croissant(self, request: Request) -> Response:
        info = await self._resolve(request, "read", DATASET)
        document = await self._call(self.registry.croissant, info.ref)
        return Response(json.dumps(document).encode(), media_type="application/ld+json")

    async def card(self, request: Request) -> Response:
        info = await self._resolve(request, "read")
        text = render_card(
            info.manifest,
            digest=info.digest,
            published_at=info.published_at.isoformat(),
            aliases=info.aliases,
            yanked_reason=(info.yanked_reason or "") if info.yanked else None,
        )
        return Response(text, media_type="text/markdown; charset=utf-8")

    async def jsonld(self, request: Request) -> Response:
        info = await self._resolve(request, "read")
        # The IRIs of versions are then the addresses of this API.
        base_url = str(request.base_url).rstrip("/") + REGISTRY_PREFIX
        document = to_jsonld(info.manifest, digest=info.digest, base_url=base_url)
        return Response(json.dumps(document).encode(), media_type="application/ld+json")

    async def archive(self, request: Request, *, kind: str = MODEL) -> Response:
        info = await self._resolve(request, "read", kind)
        source = await self._call(self._packed, info)
        size = os.fstat(source.fileno()).st_size
        filename = f"{info.name}-{info.version}.tar.gz"
        return StreamingResponse(
            iterate_in_threadpool(_chunks(source)),
            media_type="application/gzip",
            headers={
                "Content-Length": str(size),
                "Content-Disposition": f'attachment; filename="{filename}"',
                "Sciserve-Digest": info.digest,
            },
        )

    def _packed(self, info: VersionInfo) -> Any:
        """An open, already unlinked ``.tar.gz`` of the verified package."""
        root = self.registry.pull(info.ref, kind=info.manifest.kind)
        with self._scratch() as scratch:
            archive = pack(root, scratch / "package.tar.gz")
            # The open file outlives its name, so nothing is left behind
            # however the download ends.
            return archive.open("rb")

    @contextlib.contextmanager
    def _scratch(self) -> Iterator[Path]:
        if not self.registry.settings.read_only:
            # The registry's own scratch space: what a killed server leaves
            # there is reclaimed when a registry is next opened for writing.
            with self.registry.scratch("http") as path:
                yield path
            return
        path = Path(tempfile.mkdtemp(prefix="sciserve-http-"))
        try:
            yield path
        finally:
            shutil.rmtree(path, ignore_errors=True)

    async def verify(self, request: Request, *, kind: str = MODEL) -> Response:
        info = await self._resolve(request, "admin", kind)
        reports = await self._call(self.registry.verify, info.ref, kind=kind)
        return _json({"reports": _reports(reports)})

    async def verify_all(self, request: Request) -> Response:
        await self._authorize(request, "admin", None)
        # Every version of every model and dataset.
        return _json({"reports": _reports(await self._call(self.registry.verify, kind=None))})

    # -- changing ----------------------------------------------------------

    async def publish(self, request: Request, *, kind: str = MODEL) -> Response:
        identity = await self._authorize(request, "publish", None)
        # The target namespace is only known once the manifest is unpacked;
        # a caller who may publish nowhere is refused before the upload is read.
        if not identity.allows_somewhere("publish"):
            raise PermissionDenied(f"{identity.subject} may not publish in any namespace")
        if self.registry.read_only:
            raise ReadOnlyRegistry("this server's registry is read-only")
        limit = self.registry.settings.limits.max_upload_bytes
        _check_declared_length(request, limit)
        with self._scratch() as scratch:
            upload = scratch / "upload.tar.gz"
            await _receive_file(request, upload, limit)
            # The namespace is known once the manifest is read: check it then,
            # before any file of the package is looked at.
            result = await self._call(
                self.registry.publish,
                upload,
                actor=identity.principal,
                check=lambda manifest: _check_upload(identity, manifest, kind),
                label="the upload",
            )
        body = {"created": result.created, "version": version_to_wire(result.version)}
        return _json(body, 201 if result.created else 200)

    async def tag(self, request: Request, *, kind: str = MODEL) -> Response:
        ref = _reference(request)
        identity = await self._authorize(request, "publish", ref.namespace, ref.name, kind)
        actor = identity.principal
        doc = await _json_object(request)
        target = Reference(
            ref.namespace,
            ref.name,
            version=_optional(doc, "version", str),
            alias=_optional(doc, "alias", str),
        )
        if target.version is not None and target.alias is not None:
            raise InvalidInput("name either a 'version' or an 'alias' to tag, not both")
        force = _optional(doc, "force", bool, False)
        if force:
            # Past a promotion gate only with the namespace's admin scope.
            await self._authorize(request, "admin", ref.namespace, ref.name, kind)
        info = await self._call(
            self.registry.tag, str(target), ref.alias, actor=actor, kind=kind, force=force
        )
        return _json(version_to_wire(info))

    # -- promotion policies and evaluation records --------------------------

    async def policies(self, request: Request) -> Response:
        ref = _reference(request)
        await self._authorize(request, "read", ref.namespace, ref.name)
        found = await self._call(self.registry.policies, f"{ref.namespace}/{ref.name}")
        return _json({"policies": [p.to_dict() for p in found]})

    async def set_policy(self, request: Request) -> Response:
        ref = _reference(request)
        actor = (await self._authorize(request, "admin", ref.namespace, ref.name)).principal
        doc = await _json_object(request)
        require = doc.get("require")
        if not isinstance(require, list) or not all(isinstance(r, str) for r in require):
            raise InvalidInput("'require' must be a list of strings 'DATASET:METRIC OP VALUE'")
        policy = await self._call(
            self.registry.set_policy,
            f"{ref.namespace}/{ref.name}",
            require,
            alias=request.path_params["policy"],
            split=_optional(doc, "split", str, DEFAULT_SPLIT),
            actor=actor,
        )
        return _json(policy.to_dict())

    async def clear_policy(self, request: Request) -> Response:
        ref = _reference(request)
        actor = (await self._authorize(request, "admin", ref.namespace, ref.name)).principal
        await self._call(
            self.registry.clear_policy,
            f"{ref.namespace}/{ref.name}",
            alias=request.path_params["policy"],
            actor=actor,
        )
        return Response(status_code=204)

    async def evaluations(self, request: Request) -> Response:
        ref = _reference(request)
        identity = await self._authorize(request, "read", ref.namespace, ref.name)
        params = request.query_params
        limit = _bounded_int(params.get("limit"), "limit", 100, 1, _MAX_EVENTS)
        target = Reference(ref.namespace, ref.name, version=params.get("version"))
        found = await self._call(
            self.registry.evaluations, str(target), dataset=params.get("dataset"), limit=limit
        )
        # A record names a dataset, perhaps in a namespace the caller may not see.
        shown = [e for e in found if identity.can_see(e.dataset.split("/", 1)[0])]
        return _json({"evaluations": [e.to_dict() for e in shown]})

    async def _evaluation(self, request: Request) -> EvaluationInfo:
        """The record the path names, if it is of the model the path names and
        the caller may see both the model and the record's dataset."""
        ref = _reference(request)
        identity = await self._authorize(request, "read", ref.namespace, ref.name)
        # A model that does not exist is reported as such, in the words an
        # invisible one gets, before any record is looked up.
        await self._call(self.registry.versions, f"{ref.namespace}/{ref.name}")
        record_id = request.path_params["record_id"]
        found: EvaluationInfo = await self._call(self.registry.evaluation, record_id)
        # Another model's record, or one on a dataset the caller may not see,
        # reads exactly like a missing one.
        if (found.namespace, found.name) != (ref.namespace, ref.name) or not identity.can_see(
            found.dataset.split("/", 1)[0]
        ):
            raise NotFound(f"no evaluation record {record_id[:40]!r}")
        return found

    async def evaluation(self, request: Request) -> Response:
        return _json((await self._evaluation(request)).to_dict())

    async def evaluation_report(self, request: Request) -> Response:
        found = await self._evaluation(request)
        html = await self._call(views.report_html, self.registry, found)
        return Response(html, 200, _report_headers(views.REPORT_CSP), media_type="text/html")

    async def evaluation_plot(self, request: Request) -> Response:
        found = await self._evaluation(request)
        name, dot, fmt = request.path_params["plot"].rpartition(".")
        if not dot:
            raise NotFound("name a plot with its format: NAME.png or NAME.svg")
        data = await self._call(views.plot_bytes, self.registry, found, name, fmt)
        media = "image/png" if fmt == "png" else "image/svg+xml"
        # An SVG is a document: it may run nothing and load nothing.
        return Response(
            data,
            200,
            _report_headers("default-src 'none'; style-src 'unsafe-inline'"),
            media_type=media,
        )

    async def leaderboard(self, request: Request) -> Response:
        identity = await self._authorize(request, "read", None)
        params = request.query_params
        metric = params.get("metric")
        if not metric:
            raise InvalidInput("name the metric to rank by: ?metric=NAME")
        raw = params.get("direction")
        if raw is not None and raw not in tuple(Direction):
            raise InvalidInput(f"direction must be higher, lower or zero, not {raw[:40]!r}")
        dataset = f"{request.path_params['namespace']}/{request.path_params['name']}"
        # A listing: the models of namespaces the caller may not see are left
        # out before anything is ranked (ranks do not betray them either).
        board = await self._call(
            self.registry.leaderboard,
            dataset,
            metric,
            split=params.get("split", DEFAULT_SPLIT),
            direction=None if raw is None else Direction(raw),
            visible=identity.can_see,
        )
        return _json(board.to_dict())

    async def add_evaluation(self, request: Request) -> Response:
        ref = _reference(request)
        actor = (await self._authorize(request, "admin", ref.namespace, ref.name)).principal
        doc = await _json_object(request)
        version = _required(doc, "version", str)
        dataset = _required(doc, "dataset", str)
        metrics, record = doc.get("metrics"), doc.get("record", {})
        if not isinstance(metrics, dict) or not isinstance(record, dict):
            raise InvalidInput("'metrics' and 'record' must be JSON objects")
        stored = await self._call(
            self.registry.add_evaluation,
            str(Reference(ref.namespace, ref.name, version=version)),
            dataset=dataset,
            dataset_version=_required(doc, "dataset_version", str),
            dataset_digest=_required(doc, "dataset_digest", str),
            split=_optional(doc, "split", str, DEFAULT_SPLIT),
            metrics=metrics,
            record=record,
            actor=actor,
        )
        return _json(stored.to_dict(), 201)

    async def untag(self, request: Request, *, kind: str = MODEL) -> Response:
        ref = _reference(request)
        identity = await self._authorize(request, "publish", ref.namespace, ref.name, kind)
        actor = identity.principal
        model = str(Reference(ref.namespace, ref.name))
        await self._call(self.registry.untag, model, ref.alias, actor=actor, kind=kind)
        return Response(status_code=204)

    async def yank(self, request: Request, *, kind: str = MODEL) -> Response:
        ref = _reference(request)
        identity = await self._authorize(request, "publish", ref.namespace, ref.name, kind)
        actor = identity.principal
        reason = _optional(await _json_object(request), "reason", str, "")
        info = await self._call(self.registry.yank, str(ref), reason, actor=actor, kind=kind)
        return _json(version_to_wire(info))

    async def unyank(self, request: Request, *, kind: str = MODEL) -> Response:
        ref = _reference(request)
        identity = await self._authorize(request, "publish", ref.namespace, ref.name, kind)
        actor = identity.principal
        await _json_object(request)
        info = await self._call(self.registry.unyank, str(ref), actor=actor, kind=kind)
        return _json(version_to_wire(info))

    # -- tokens ------------------------------------------------------------

    async def _token_admin(self, request: Request) -> tuple[TokenStore, Identity]:
        """The server's token store and the admin asking; refused unless auth is on."""
        identity = await self._authorize(request, "admin", None)
        if self.service.access is None:
            # Anyone may call an unauthenticated server: minting tokens there
            # would hand out credentials that count once auth is turned on.
            raise PermissionDenied(
                "this server runs without authentication, so it does not manage tokens; "
                "create them where the registry is ('sciserve token create')"
            )
        return self.service.access.tokens, identity

    async def tokens(self, request: Request) -> Response:
        store, _ = await self._token_admin(request)
        records = await self._call(store.list)
        return _json({"tokens": [r.to_dict() for r in records]})

    async def create_token(self, request: Request) -> Response:
        store, identity = await self._token_admin(request)
        doc = await _json_object(request)
        unknown = sorted(set(doc) - _TOKEN_FIELDS)
        if unknown:
            raise InvalidInput(f"unknown token field(s) {', '.join(map(repr, unknown))}")
        record, raw = await self._call(
            store.create,
            _required_str(doc, "subject"),
            _scope_map(doc.get("scopes")),
            priority=_optional(doc, "priority", str, "interactive"),
            expires_in=_lifetime(doc.get("expires_in")),
            label=_optional(doc, "label", str),
            admin=_optional(doc, "admin", bool, False),
            limit=_rate_limit(doc.get("limit")),
            actor=identity.principal,
        )
        return _json({**record.to_dict(), "token": raw}, 201)

    async def revoke_token(self, request: Request) -> Response:
        store, identity = await self._token_admin(request)
        token_id = request.path_params["token_id"]
        record = await self._call(store.revoke, token_id, actor=identity.principal)
        return _json(record.to_dict())


#: The fields of a token creation request.
_TOKEN_FIELDS = frozenset(
    {"subject", "scopes", "admin", "priority", "expires_in", "label", "limit"}
)
#: Longest token lifetime a request may ask for (100 years, in seconds).
_MAX_LIFETIME = 100 * 365 * 86400


def _required_str(doc: dict[str, Any], key: str) -> str:
    value = _optional(doc, key, str)
    if value is None:
        raise InvalidInput(f"{key!r} is required")
    return str(value)


def _scope_map(value: Any) -> dict[str, list[str]]:
    """``{"namespace": ["scope", ...]}`` from a request body (checked again by the store)."""
    if value is None:
        return {}
    if not isinstance(value, dict) or not all(
        isinstance(scopes, list) and all(isinstance(s, str) for s in scopes)
        for scopes in value.values()
    ):
        raise InvalidInput("'scopes' must map namespaces to lists of scopes")
    return value


def _lifetime(value: Any) -> float | None:
    if value is None:
        return None
    if type(value) not in (int, float) or not 0 < value <= _MAX_LIFETIME:
        raise InvalidInput(f"'expires_in' must be seconds, more than 0 and at most {_MAX_LIFETIME}")
    return float(value)


def _rate_limit(value: Any) -> RateLimit | None:
    if value is None:
        return None
    try:
        return RateLimit.model_validate(value)
    except ValidationError as exc:
        problems = "; ".join(f"{'.'.join(map(str, e['loc']))}: {e['msg']}" for e in exc.errors())
        raise InvalidInput(f"invalid 'limit': {problems}") from exc


def _report_headers(csp: str) -> dict[str, str]:
    """Headers of a report or plot: its own CSP, no sniffing, cacheable by the caller only
    (a record never changes, but who may see it can)."""
    return {
        "Content-Security-Policy": csp,
        "X-Content-Type-Options": "nosniff",
        "Cache-Control": "private, max-age=3600",
    }


def _reference(request: Request) -> Reference:
    """The reference a registry path names, checked like any typed reference."""
    params = request.path_params
    text = f"{params['namespace']}/{params['name']}"
    if "version" in params:
        text += f":{params['version']}"
    elif "alias" in params:
        text += f"@{params['alias']}"
    return parse_reference(text)


def _reports(reports: list[Any]) -> list[dict[str, Any]]:
    return [
        {"ref": r.ref, "checked": r.checked, "failures": r.failures, "ok": r.ok} for r in reports
    ]


def _chunks(source: Any) -> Iterator[bytes]:
    with source:
        while chunk := source.read(CHUNK):
            yield chunk


async def _receive_file(request: Request, dest: Path, limit: int) -> None:
    """Stream the request body into ``dest``, never holding more than a chunk in memory."""
    received = 0
    pending: list[bytes] = []
    buffered = 0
    with dest.open("wb") as out:
        async for chunk in request.stream():
            received += len(chunk)
            if received > limit:
                raise PayloadTooLarge(f"upload exceeds the limit of {limit} bytes")
            pending.append(chunk)
            buffered += len(chunk)
            # Writes go to a thread in CHUNK-sized batches: one hop per
            # network chunk would cost more than the write itself.
            if buffered >= CHUNK:
                await run_in_threadpool(out.write, b"".join(pending))
                pending, buffered = [], 0
        if pending:
            await run_in_threadpool(out.write, b"".join(pending))
    if received == 0:
        raise InvalidInput("the upload is empty; send the package archive as the body")


# -- jobs API ----------------------------------------------------------------

#: The fields of a job submission.
_SUBMIT_FIELDS = frozenset({"spec", "namespace", "cluster", "priority"})
#: The query parameters of a job listing.
_LIST_PARAMS = frozenset({"state", "namespace", "limit"})
#: Most jobs one listing returns, and how many when the caller does not say.
_MAX_JOBS = 10_000
_DEFAULT_JOBS = 100


class _JobsApi:
    """Batch jobs over the registry database: submitted and watched here,
    executed by runners (:mod:`sciserve.batch.runner`) wherever they run.

    A job belongs to a namespace: seeing it needs a scope there, acting on
    it (submit, cancel, resume) ``infer``.  A job the caller may not see
    answers exactly like a job that does not exist.
    """

    def __init__(self, service: InferenceService) -> None:
        self.service = service
        self.registry = service.registry
        self.store = JobStore.of(service.registry)
        self.archives = Archives(self.registry.settings.jobs.archives)

    def routes(self) -> list[BaseRoute]:
        job = JOBS_PREFIX + "/{job_id}"
        get, post = ["GET"], ["POST"]
        table: list[tuple[str, Endpoint, list[str]]] = [
            (JOBS_PREFIX, self.submit, post),
            (JOBS_PREFIX, self.list_jobs, get),
            (job, self.job, get),
            (job + "/logs", self.logs, get),
            (job + "/cancel", self.cancel, post),
            (job + "/resume", self.resume, post),
        ]
        denied = _denied_recorder(self.service)
        return [Route(path, _guarded(fn, denied), methods=methods) for path, fn, methods in table]

    async def _call(self, fn: Callable[..., Any], *args: Any, **kwargs: Any) -> Any:
        # The job store is synchronous database I/O: keep it off the loop.
        return await run_in_threadpool(fn, *args, **kwargs)

    async def _identity(self, request: Request) -> Identity:
        return await self.service.identify(request.headers.get("authorization"))

    async def _record(self, request: Request, action: Scope) -> tuple[JobRecord, Identity]:
        """The job the path names, if the caller may do ``action`` in its namespace."""
        identity = await self._identity(request)
        job_id = request.path_params["job_id"]
        record: JobRecord = await self._call(self.store.get, job_id)
        if not identity.can_see(record.namespace):
            # The very words of a missing job: whether it exists is not told.
            raise NotFound(f"no job {job_id!r}")
        authorize(identity, action, record.namespace)
        return record, identity

    async def _audit(self, action: str, record: JobRecord, identity: Identity) -> None:
        detail = {"namespace": record.namespace, "state": record.state.value}
        await self._call(audit, self.registry, action, record.id, identity.principal, detail)

    # -- submitting --------------------------------------------------------

    async def submit(self, request: Request) -> Response:
        identity = await self._identity(request)
        doc = await _json_object(request, MAX_SPEC_BYTES)
        unknown = sorted(set(doc) - _SUBMIT_FIELDS)
        if unknown:
            raise InvalidInput(f"unknown job field(s) {', '.join(map(repr, unknown))}")
        if doc.get("spec") is None:
            raise InvalidInput("'spec' is required: the batch spec, as YAML text or an object")
        # Up to 256 KiB of YAML: parsed off the loop, like a large inference body.
        data, spec = await self._call(_submitted_spec, doc["spec"])
        # Who may do this first: what the spec asks of the server comes after.
        refs = model_references(spec)
        for ref in refs:
            authorize(identity, "infer", ref.namespace, ref.name)
        namespace = _optional(doc, "namespace", str)
        if namespace is None:
            namespace = refs[0].namespace
        if not NAMESPACE_RE.fullmatch(namespace):
            raise InvalidInput(f"{namespace!r} is not a namespace")
        authorize(identity, "infer", namespace)
        if isinstance(spec.features, PythonFeatures):
            authorize(identity, "infer", spec.features.namespace)
        cluster = _optional(doc, "cluster", str)
        if cluster is not None:
            self.registry.settings.cluster(cluster)
        priority = _job_priority(identity, _optional(doc, "priority", str))
        await self._call(self._check_models, refs, namespace)
        checked = await self._call(api_spec, data, self.archives)
        record: JobRecord = await self._call(
            self.store.submit,
            checked.text,
            namespace=namespace,
            submitter=identity.principal,
            priority=priority,
            cluster=cluster,
            origin=JobOrigin.API,
        )
        await self._audit("job.submit", record, identity)
        return _json(record.to_dict(), 201)

    def _check_models(self, refs: list[Reference], namespace: str) -> None:
        for ref in refs:
            self.registry.resolve(ref)
        self.registry.namespace(namespace)

    # -- reading -----------------------------------------------------------

    async def list_jobs(self, request: Request) -> Response:
        identity = await self._identity(request)
        params = request.query_params
        unknown = sorted(set(params) - _LIST_PARAMS)
        if unknown:
            raise InvalidInput(f"unknown query parameter(s) {', '.join(map(repr, unknown))}")
        repeated = sorted(key for key in params if len(params.getlist(key)) > 1)
        if repeated:
            raise InvalidInput(f"query parameter {repeated[0]!r} is given more than once")
        namespace = params.get("namespace")
        namespaces: list[str] | None
        if namespace is not None:
            if not NAMESPACE_RE.fullmatch(namespace):
                raise InvalidInput(f"{namespace[:64]!r} is not a namespace")
            authorize(identity, "read", namespace)
            namespaces = [namespace]
        elif identity.can_see(ANY_NAMESPACE):  # an admin, or a scope on every namespace
            namespaces = None
        else:
            namespaces = visible(identity, [ns for ns in identity.scopes if ns != ANY_NAMESPACE])
        raw_states = params.get("state")
        states = parse_states(raw_states) if raw_states is not None else None
        limit = _bounded_int(params.get("limit"), "limit", _DEFAULT_JOBS, 1, _MAX_JOBS)
        records = await self._call(
            self.store.find, namespaces=namespaces, states=states, limit=limit
        )
        return _json({"jobs": [r.to_dict(spec=False) for r in records]})

    async def job(self, request: Request) -> Response:
        record, _ = await self._record(request, "read")
        return _json(record.to_dict())

    async def logs(self, request: Request) -> Response:
        record, _ = await self._record(request, "read")
        after = _bounded_int(request.query_params.get("after"), "after", 0, 0, None)
        lines = await self._call(self.store.logs, record.id, after=after)
        return _json({"lines": [line.to_dict() for line in lines]})

    # -- changing ----------------------------------------------------------

    async def cancel(self, request: Request) -> Response:
        record, identity = await self._record(request, "infer")
        await _json_object(request)
        record = await self._call(self.store.cancel, record.id, by=identity.principal)
        await self._audit("job.cancel", record, identity)
        return _json(record.to_dict())

    async def resume(self, request: Request) -> Response:
        record, identity = await self._record(request, "infer")
        await _json_object(request)
        record = await self._call(self.store.resume, record.id, by=identity.principal)
        await self._audit("job.resume", record, identity)
        return _json(record.to_dict())


def _submitted_spec(value: object) -> tuple[dict[str, Any], BatchSpec]:
    """The ``spec`` of a submission as a mapping, and validated."""
    data = spec_document(value, source="'spec'")
    return data, parse_batch_spec(data, source="submitted")


def _job_priority(identity: Identity, asked: str | None) -> Priority:
    """The caller's class, or the lower one it asks for (as inference requests do)."""
    if asked is None:
        return identity.priority
    priority = parse_priority(asked)
    if identity.kind == "anonymous":
        return priority  # no identity to cap it: auth is off
    return max(priority, identity.priority)


def _bounded_int(raw: str | None, name: str, default: int, low: int, high: int | None) -> int:
    """A non-negative integer query parameter within ``low``..``high``."""
    if raw is None:
        return default
    bound = f"from {low} to {high}" if high is not None else f"of at least {low}"
    if not _digits(raw) or len(raw) > _MAX_DIGITS:
        raise InvalidInput(f"{name} must be an integer {bound}, got {raw[:64]!r}")
    value = int(raw)
    if value < low or (high is not None and value > high):
        raise InvalidInput(f"{name} must be an integer {bound}, got {raw[:64]!r}")
    return value


# -- applications ------------------------------------------------------------


def create_app(service: InferenceService, *, manage_service: bool = False) -> Starlette:
    """The HTTP application serving ``service``: OIP v2 REST, the registry and
    jobs APIs, and the dashboard (:mod:`sciserve.protocol.dashboard`).

    With ``manage_service`` the application's lifespan starts and stops the
    service, for running the HTTP server on its own; otherwise whoever runs
    the servers (HTTP, gRPC) starts the service once for all of them.
    """
    # The dashboard builds on this module's error table and guard.
    from .dashboard import Dashboard

    inference = _Inference(service)
    denied = _denied_recorder(service)
    dashboard = Dashboard(
        service,
        json_guard=lambda endpoint: _guarded(endpoint, denied),
        status_of=status_of_type,
        json_response=_json,
    )
    # The dashboard's routes come last: inference and the APIs keep their paths.
    routes = (
        inference.routes()
        + _RegistryApi(service).routes()
        + _JobsApi(service).routes()
        + dashboard.routes()
    )

    @contextlib.asynccontextmanager
    async def lifespan(app: Starlette) -> AsyncIterator[None]:
        if not manage_service:
            yield
            return
        await service.start()
        try:
            yield
        finally:
            await service.stop()

    return RestApp(
        routes=routes,
        exception_handlers={HTTPException: _http_error},
        lifespan=lifespan,
        infer=_guarded(inference.infer, denied),
        infer_relayed=_guarded(inference.infer_relayed, denied),
    )


_INFER_PATH = INFER_PATH


def _infer_template(match: re.Match[str]) -> str:
    """The route template an inference path matched by :data:`_INFER_PATH` belongs to."""
    if match.group(2) is None:
        return "/v2/models/{name}/infer"
    return "/v2/models/{name}/versions/{version}/infer"


#: The scope key under which the HTTP relay hands a front end's decoded
#: request to :meth:`RestApp.infer_relayed` (set only there, never by a client).
_RELAYED = "sciserve.relayed"


def _infer_params(match: re.Match[str]) -> dict[str, str]:
    name, version = match.groups()
    params = {"name": unquote(name)}
    if version is not None:
        params["version"] = unquote(version)
    return params


class RestApp(Starlette):
    """Starlette, with a direct path to inference.

    Inference requests skip the router and the middleware stack (the
    endpoint is already guarded: every error becomes a JSON response), which
    is a sizeable share of the time a small request spends in the server.
    Everything else goes through Starlette as usual.
    """

    def __init__(
        self,
        *,
        infer: Endpoint,
        infer_relayed: Callable[[Request], Awaitable[Response | Tensors]],
        **kwargs: Any,
    ) -> None:
        super().__init__(**kwargs)
        self._infer = infer
        self._infer_relayed = infer_relayed

    async def __call__(self, scope: asgi.Scope, receive: asgi.Receive, send: asgi.Send) -> None:
        if scope["type"] == "http" and scope["method"] == "POST":
            match = _INFER_PATH.fullmatch(scope["path"])
            if match is not None:
                scope["app"] = self
                scope["path_params"] = _infer_params(match)
                response = await self._infer(Request(scope, receive))
                await response(scope, receive, send)
                return
        await super().__call__(scope, receive, send)

    async def infer_relayed(
        self, scope: asgi.Scope, receive: asgi.Receive, payload: memoryview
    ) -> Response | Tensors:
        """Answer an inference request an HTTP front end decoded into
        ``payload`` (an INFER frame's): ``scope`` is the request's, its body
        already read.  The caller, quotas, audit and errors are this app's,
        exactly as for a request it decodes itself; an error is a
        :class:`Response` to send, success the output tensors."""
        match = _INFER_PATH.fullmatch(scope["path"]) if scope["method"] == "POST" else None
        if match is None:  # a front end sends only inference this way
            log.error("a front end relayed %s %s as inference", scope["method"], scope["path"])
            return _error(500, _INTERNAL)
        scope["app"] = self
        scope["path_params"] = _infer_params(match)
        scope[_RELAYED] = payload
        return await self._infer_relayed(Request(scope, receive))


def create_metrics_app(service: InferenceService) -> Starlette:
    """A separate application serving ``GET /metrics`` in the Prometheus text format."""

    async def metrics(request: Request) -> Response:
        payload = await run_in_threadpool(generate_latest, service.metrics.registry)
        return Response(payload, media_type=CONTENT_TYPE_LATEST)

    return Starlette(
        routes=[Route("/metrics", metrics, methods=["GET"])],
        exception_handlers={HTTPException: _http_error},
    )
