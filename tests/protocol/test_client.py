"""The one table that turns a server's status codes back into domain errors."""

from __future__ import annotations

import httpx
import pytest

from sciserve import errors
from sciserve.protocol.client import error_from_response


def _response(status: int, body: object = None, **headers: str) -> httpx.Response:
    request = httpx.Request("POST", "http://127.0.0.1:1/v2/models/m/infer")
    if body is None:
        return httpx.Response(status, headers=headers, request=request)
    return httpx.Response(status, json=body, headers=headers, request=request)


@pytest.mark.parametrize(
    ("status", "kind", "expected"),
    [
        (400, "InvalidInput", errors.InvalidInput),
        (400, "ArchiveError", errors.ArchiveError),
        (401, None, errors.Unauthenticated),
        (403, "ReadOnlyRegistry", errors.ReadOnlyRegistry),
        (403, None, errors.PermissionDenied),
        (404, "NotFound", errors.NotFound),
        (409, "VersionConflict", errors.VersionConflict),
        (413, None, errors.PayloadTooLarge),
        (429, "RateLimited", errors.RateLimited),
        (429, None, errors.RateLimited),
        (503, "ModelNotReady", errors.ModelNotReady),
        (503, "DependencyMissing", errors.DependencyMissing),
        (500, None, errors.SciserveError),
        (418, None, errors.SciserveError),
    ],
)
def test_each_status_is_one_error_class(
    status: int, kind: str | None, expected: type[errors.SciserveError]
) -> None:
    body = {"error": "what went wrong", **({"type": kind} if kind else {})}
    error = error_from_response(_response(status, body), context="m:1 on a server")
    assert type(error) is expected
    assert str(error) == "m:1 on a server: what went wrong"


def test_a_body_cannot_name_a_class_the_status_contradicts() -> None:
    # A 404 claiming to be an IntegrityError is still a NotFound.
    error = error_from_response(_response(404, {"error": "gone", "type": "IntegrityError"}))
    assert type(error) is errors.NotFound


def test_quotas_and_full_queues_carry_their_retry_after() -> None:
    limited = error_from_response(_response(429, {"error": "slow down"}, **{"Retry-After": "7"}))
    assert isinstance(limited, errors.RateLimited)
    assert limited.retry_after == 7.0
    full = error_from_response(_response(503, {"error": "queue full"}, **{"Retry-After": "2"}))
    assert isinstance(full, errors.Overloaded)
    assert full.retry_after == 2.0


def test_a_body_that_is_not_json_still_gives_the_status() -> None:
    error = error_from_response(_response(502))
    assert type(error) is errors.SciserveError
    assert str(error) == "502 Bad Gateway"
