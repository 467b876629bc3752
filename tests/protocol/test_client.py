"""The one table that turns a server's status codes back into domain errors."""

from __future__ import annotations

from collections.abc import Callable
from pathlib import Path

import httpx
import numpy as np
import pytest

from sciserve import errors
from sciserve.config import Settings
from sciserve.protocol.client import InferenceClient, error_from_response
from sciserve.registry.registry import Registry

from helpers.legacy import insert_legacy_alias, insert_legacy_version
from helpers.packages import expected_linear
from helpers.server import start_server, stop_server


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


async def test_the_inference_client_runs_a_model_on_a_real_server(
    tmp_path: Path, onnx_package: Callable[..., Path]
) -> None:
    home = tmp_path / "home"
    with Registry(Settings.load(home, environ={})) as registry:
        registry.publish(onnx_package(version="1.0.0", scale=1.0))
        registry.publish(onnx_package(version="3.0.0", scale=3.0))
        # An older registry's version named like an alias of another version.
        insert_legacy_version(registry.settings, onnx_package(version="beta", scale=4.0))
        insert_legacy_alias(registry.settings, "default", "linear", "beta", "3.0.0")
    server = start_server(home, "--model", "linear")
    try:
        x = np.arange(8, dtype=np.float32).reshape(2, 4)
        async with InferenceClient(f"http://{server.http}") as client:
            assert (await client.server_metadata())["name"] == "sciserve"
            answer = await client.infer("linear", {"x": (x, "FP32")}, ["y"], version="3.0.0")
            np.testing.assert_allclose(answer["y"], expected_linear(x, scale=3.0))
            # The server takes "beta" for the alias (3.0.0): the client refuses
            # an answer from another version than the one it asked for.
            with pytest.raises(errors.ModelExecutionError, match=r"answered by version '3\.0\.0'"):
                await client.infer("linear", {"x": (x, "FP32")}, ["y"], version="beta")
            with pytest.raises(errors.NotFound):
                await client.infer("nope", {"x": (x, "FP32")}, ["y"])
    finally:
        stop_server(server.proc)
