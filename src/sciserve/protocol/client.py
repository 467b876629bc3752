"""The client side of sciserve's HTTP API.

Servers map domain errors to status codes in one place
(:mod:`sciserve.protocol.rest`); this module maps them back, in one table,
for every client in the package: the remote registry
(:class:`~sciserve.registry.remote.RemoteRegistry`) and the stream
pipeline's model step that calls a server.  So a quota answered with 429 is
:class:`~sciserve.errors.RateLimited` wherever it arrives.

:class:`InferenceClient` is the small Open Inference Protocol client those
callers share: one request per call, binary tensors both ways.
"""

from __future__ import annotations

import contextlib
import json
from collections.abc import Mapping, Sequence
from typing import Any

import httpx
import numpy as np
import numpy.typing as npt

from .. import errors
from ..datatypes import from_json_data, from_raw, to_raw
from ..errors import (
    Conflict,
    InvalidInput,
    ModelExecutionError,
    NotFound,
    Overloaded,
    PayloadTooLarge,
    PermissionDenied,
    SciserveError,
    Unavailable,
)
from .rest_codec import HEADER_LENGTH_HEADER

__all__ = ["InferenceClient", "error_from_response"]

#: The error classes a sciserve server answers with each status (see
#: :mod:`sciserve.protocol.rest`); the first is raised when the body names none.
_STATUS_ERRORS: Mapping[int, tuple[type[SciserveError], ...]] = {
    400: (InvalidInput,),
    401: (errors.Unauthenticated,),
    403: (PermissionDenied, errors.ReadOnlyRegistry),
    404: (NotFound,),
    409: (Conflict,),
    413: (PayloadTooLarge,),
    429: (errors.RateLimited,),
    500: (SciserveError,),
    503: (Unavailable, errors.DependencyMissing, errors.DeviceUnavailable),
}

#: Error classes the server may name in an error body's ``type``.  Only
#: classes constructed from a message alone are listed; ManifestError, say,
#: arrives as the InvalidInput it derives from, its problems in the message.
_NAMED_ERRORS: Mapping[str, type[SciserveError]] = {
    cls.__name__: cls
    for cls in (
        errors.InvalidInput,
        errors.ArchiveError,
        errors.InvalidReference,
        errors.PayloadTooLarge,
        errors.NotFound,
        errors.Conflict,
        errors.VersionConflict,
        errors.PolicyViolation,
        errors.IntegrityError,
        errors.PermissionDenied,
        errors.ReadOnlyRegistry,
        errors.Unavailable,
        errors.ModelNotReady,
        errors.DependencyMissing,
        errors.DeviceUnavailable,
        errors.ModelExecutionError,
        errors.ConfigError,
    )
}


def error_from_response(response: httpx.Response, context: str = "") -> SciserveError:
    """The :mod:`sciserve.errors` exception an error response stands for.

    ``context`` (e.g. which model on which server) is put before the
    server's message.
    """
    message, kind = f"{response.status_code} {response.reason_phrase}", None
    failures: list[Any] = []
    with contextlib.suppress(ValueError):
        body = response.json()
        if isinstance(body, dict):
            message = str(body.get("error") or message)
            kind = body.get("type")
            if isinstance(body.get("failures"), list):
                failures = body["failures"]
    if context:
        message = f"{context}: {message}"
    bases = _STATUS_ERRORS.get(response.status_code, (SciserveError,))
    # The body may name a subclass (VersionConflict for a 409); trust it only
    # as far as it agrees with the status.
    cls = _NAMED_ERRORS.get(kind) if isinstance(kind, str) else None
    if cls is None or not issubclass(cls, bases):
        cls = bases[0]
    if issubclass(cls, errors.PolicyViolation):
        return errors.PolicyViolation(message, failures)
    if issubclass(cls, errors.RateLimited):
        return errors.RateLimited(message, _retry_after(response))
    if issubclass(cls, Overloaded) or (cls is Unavailable and "Retry-After" in response.headers):
        return Overloaded(message, _retry_after(response))
    return cls(message)


def _retry_after(response: httpx.Response) -> float:
    try:
        return float(response.headers.get("Retry-After", "1"))
    except ValueError:
        return 1.0


class InferenceClient:
    """Inference requests to one server over the Open Inference Protocol's
    HTTP binding, tensors in the binary data extension both ways.

    ``headers`` (credentials) go with every request.  Errors the server
    answers come back as :mod:`sciserve.errors` classes; a server that cannot
    be reached is :class:`~sciserve.errors.Unavailable`; an answer that is not
    a well-formed inference response is a
    :class:`~sciserve.errors.ModelExecutionError`.
    """

    def __init__(
        self,
        url: str,
        *,
        headers: Mapping[str, str] | None = None,
        timeout: float = 60.0,
        transport: httpx.AsyncBaseTransport | None = None,
    ) -> None:
        self.url = url.rstrip("/")
        self._client = httpx.AsyncClient(
            base_url=self.url, timeout=timeout, headers=dict(headers or {}), transport=transport
        )

    async def __aenter__(self) -> InferenceClient:
        return self

    async def __aexit__(self, *exc_info: object) -> None:
        await self.aclose()

    async def aclose(self) -> None:
        await self._client.aclose()

    async def server_metadata(self) -> dict[str, Any]:
        """The server's ``GET /v2`` document (name, version, extensions)."""
        response = await self._send("GET", "/v2")
        try:
            doc = response.json()
        except ValueError as exc:
            raise Unavailable(f"{self.url} answered /v2 with something that is not JSON") from exc
        if not isinstance(doc, dict):
            raise Unavailable(f"{self.url} answered /v2 with something that is not an object")
        return doc

    async def infer(
        self,
        model: str,
        inputs: Mapping[str, tuple[npt.NDArray[Any], str]],
        outputs: Sequence[str],
        *,
        version: str | None = None,
        parameters: Mapping[str, Any] | None = None,
    ) -> dict[str, npt.NDArray[Any]]:
        """Run served model ``model`` (at ``version``) on ``inputs`` (name →
        array and its protocol datatype) and return the ``outputs`` named;
        ``parameters`` are the request's (e.g. ``{"priority": "batch"}``)."""
        path = f"/v2/models/{model}"
        if version is not None:
            path += f"/versions/{version}"
        raws = {name: to_raw(array, datatype) for name, (array, datatype) in inputs.items()}
        request: dict[str, Any] = {"parameters": dict(parameters)} if parameters else {}
        header = json.dumps(
            {
                **request,
                "inputs": [
                    {
                        "name": name,
                        "datatype": datatype,
                        "shape": list(array.shape),
                        "parameters": {"binary_data_size": len(raws[name])},
                    }
                    for name, (array, datatype) in inputs.items()
                ],
                "outputs": [{"name": o, "parameters": {"binary_data": True}} for o in outputs],
            }
        ).encode()
        response = await self._send(
            "POST",
            f"{path}/infer",
            context=f"{model}" + (f":{version}" if version else "") + f" on {self.url}",
            content=b"".join([header, *raws.values()]),
            headers={
                HEADER_LENGTH_HEADER: str(len(header)),
                "Content-Type": "application/octet-stream",
            },
        )
        answered_version, answer = _parse_response(response)
        if version is not None and answered_version not in (None, version):
            # Results are recorded under the version asked for: an answer
            # from another one (an alias of that name on an older registry)
            # must not be recorded as if it came from it.
            raise ModelExecutionError(
                f"{model}:{version} on {self.url} was answered by version {answered_version!r}"
            )
        missing = set(outputs) - set(answer)
        if missing:
            raise ModelExecutionError(f"the inference response lacks {sorted(missing)}")
        return answer

    async def _send(
        self, method: str, path: str, *, context: str = "", **kwargs: Any
    ) -> httpx.Response:
        try:
            response = await self._client.request(method, path, **kwargs)
        except httpx.HTTPError as exc:
            raise Unavailable(f"cannot reach {self.url}: {exc}") from exc
        if response.is_error:
            raise error_from_response(response, context)
        return response


def _parse_response(response: httpx.Response) -> tuple[str | None, dict[str, npt.NDArray[Any]]]:
    """The model version that answered (if the server said) and the outputs."""
    body = response.content
    try:
        length = int(response.headers.get(HEADER_LENGTH_HEADER, len(body)))
        doc = json.loads(body[:length])
        outputs: dict[str, npt.NDArray[Any]] = {}
        offset = length
        for entry in doc["outputs"]:
            size = (entry.get("parameters") or {}).get("binary_data_size")
            if size is None:
                array = from_json_data(entry["data"], entry["datatype"], entry["shape"])
            else:
                array = from_raw(body[offset : offset + size], entry["datatype"], entry["shape"])
                offset += size
            outputs[entry["name"]] = np.asarray(array)
        version = doc.get("model_version")
    except (ValueError, KeyError, TypeError, AttributeError, InvalidInput) as exc:
        raise ModelExecutionError(f"malformed inference response: {exc}") from exc
    return (None if version is None else str(version)), outputs
