"""The jobs of a sciserve server, reached over its HTTP API.

:class:`RemoteJobs` is what ``sciserve --server URL jobs …`` works with: the
operations of :class:`~sciserve.jobs.records.JobStore` a caller may ask a
server for (submit, list, status, logs, cancel, resume).  Records travel as
:meth:`~sciserve.jobs.records.JobRecord.to_dict` writes them; errors the
server answers come back as the :mod:`sciserve.errors` classes the one
status table of :mod:`sciserve.protocol.client` maps them to.

This module also names where the API lives (:data:`JOBS_PREFIX`);
:mod:`sciserve.protocol.rest` serves it.
"""

from __future__ import annotations

from collections.abc import Mapping
from types import TracebackType
from typing import Any
from urllib.parse import quote

import httpx

from ..errors import SciserveError, Unavailable
from ..protocol.client import error_from_response
from .records import check_job_id

__all__ = ["JOBS_PREFIX", "RemoteJobs"]

#: Where the jobs API lives on a sciserve server.
JOBS_PREFIX = "/v2/sciserve/jobs"


class RemoteJobs:
    """The jobs API of the sciserve server at ``url``, e.g. ``http://host:8000``.

    Use as a context manager or call :meth:`close`.  ``headers`` (credentials)
    go with every request; ``transport`` is handed to :class:`httpx.Client`.
    """

    def __init__(
        self,
        url: str,
        *,
        timeout: float = 30.0,
        headers: Mapping[str, str] | None = None,
        transport: httpx.BaseTransport | None = None,
    ) -> None:
        # "host:port" as tritonclient takes it means plain HTTP.
        self.url = (url if "://" in url else f"http://{url}").rstrip("/")
        self._client = httpx.Client(
            base_url=self.url,
            timeout=timeout,
            headers=headers,
            transport=transport,
        )

    def close(self) -> None:
        self._client.close()

    def __enter__(self) -> RemoteJobs:
        return self

    def __exit__(
        self,
        exc_type: type[BaseException] | None,
        exc: BaseException | None,
        tb: TracebackType | None,
    ) -> None:
        self.close()

    def __repr__(self) -> str:
        return f"RemoteJobs({self.url!r})"

    def submit(
        self,
        spec: str | Mapping[str, Any],
        *,
        namespace: str | None = None,
        cluster: str | None = None,
        priority: str | None = None,
    ) -> dict[str, Any]:
        """Submit a batch spec (YAML text or a mapping); the new job's record.

        Its locations are the server's: under its ``[jobs] archives`` roots.
        """
        body: dict[str, Any] = {"spec": spec if isinstance(spec, str) else dict(spec)}
        for key, value in (("namespace", namespace), ("cluster", cluster), ("priority", priority)):
            if value is not None:
                body[key] = value
        return _job(self._json("POST", JOBS_PREFIX, json=body))

    def find(
        self, *, state: str | None = None, namespace: str | None = None, limit: int | None = None
    ) -> list[dict[str, Any]]:
        """The jobs the caller may see, newest first (without their specs)."""
        params = {
            key: str(value)
            for key, value in (("state", state), ("namespace", namespace), ("limit", limit))
            if value is not None
        }
        data = self._json("GET", JOBS_PREFIX, params=params)
        jobs = data.get("jobs") if isinstance(data, dict) else None
        if not isinstance(jobs, list):
            raise SciserveError("malformed response from the server: no 'jobs'")
        return [_job(item) for item in jobs]

    def get(self, job_id: str) -> dict[str, Any]:
        """One job's record."""
        return _job(self._json("GET", _path(job_id)))

    def logs(self, job_id: str, *, after: int = 0) -> list[dict[str, Any]]:
        """The job's log lines after line id ``after``, oldest first."""
        data = self._json("GET", _path(job_id) + "/logs", params={"after": str(after)})
        lines = data.get("lines") if isinstance(data, dict) else None
        if not isinstance(lines, list) or not all(
            isinstance(line, dict) and isinstance(line.get("id"), int) for line in lines
        ):
            raise SciserveError("malformed response from the server: no 'lines'")
        return lines

    def cancel(self, job_id: str) -> dict[str, Any]:
        """Cancel a job (a running one stops after its current shard)."""
        return _job(self._json("POST", _path(job_id) + "/cancel"))

    def resume(self, job_id: str) -> dict[str, Any]:
        """Queue a failed or cancelled job again."""
        return _job(self._json("POST", _path(job_id) + "/resume"))

    # -- plumbing --------------------------------------------------------

    def _json(self, method: str, path: str, **kwargs: Any) -> Any:
        try:
            response = self._client.request(method, path, **kwargs)
        except httpx.HTTPError as exc:
            raise Unavailable(f"cannot reach the sciserve server at {self.url}: {exc}") from exc
        if response.is_error:
            raise error_from_response(response)
        try:
            return response.json()
        except ValueError as exc:
            raise SciserveError(
                f"the server answered {response.request.url} with something that is not JSON"
            ) from exc


def _path(job_id: str) -> str:
    # What the server would answer for a malformed id, without asking it.
    return f"{JOBS_PREFIX}/{quote(check_job_id(job_id), safe='')}"


def _job(data: object) -> dict[str, Any]:
    if not isinstance(data, dict) or not isinstance(data.get("id"), str):
        raise SciserveError("malformed job record from the server")
    return data
