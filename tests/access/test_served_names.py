"""A served name means one model, and access is decided on that model's namespace.

A model is served as ``name`` in namespace ``default`` and as
``namespace.name`` elsewhere.  Names with a dot in ``default`` would make
that ambiguous (``default/beta.secret`` and ``beta/secret`` are both
``beta.secret``), so publishing one is refused.  Registries that already
hold such names (older releases accepted them; :mod:`helpers.legacy` writes
them) are served without them, and every check is made on the namespace a
model is stored in, never on a split of the name a request gives.
"""

from __future__ import annotations

import json
import time
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path

import grpc
import httpx
import numpy as np
import pytest
from tritonclient.grpc import service_pb2, service_pb2_grpc

from sciserve.access.tokens import TokenStore
from sciserve.config import Settings
from sciserve.package.archive import pack
from sciserve.registry.registry import Registry

from helpers.legacy import insert_legacy_version
from helpers.packages import expected_linear, make_onnx_package
from helpers.server import Running, run_cli, start_server, stop_server

pytestmark = pytest.mark.slow

REGISTRY = "/v2/sciserve/registry"
X = np.array([[1, 2, 3, 4]], np.float32)
#: The weights' scale of each model, so every answer says which model gave it.
SCALES = {"beta/secret": 1.0, "default/beta.secret": 5.0, "default/alpha.x": 7.0}


@dataclass
class World:
    server: Running
    headers: dict[str, dict[str, str]]
    work: Path


def _answer_scale(y: list[float]) -> float:
    """The scale of the model that gave the answer ``y`` to ``X``."""
    for scale in SCALES.values():
        if np.allclose(y, expected_linear(X, scale=scale).ravel()):
            return scale
    raise AssertionError(f"an answer no model gives: {y}")


@pytest.fixture(scope="module")
def world(tmp_path_factory: pytest.TempPathFactory) -> Iterator[World]:
    work = tmp_path_factory.mktemp("served-names")
    home = work / "home"
    with Registry(Settings.load(home, environ={})) as reg:
        reg.publish(make_onnx_package(work / "beta", name="secret", namespace="beta"))
        tokens = TokenStore(reg)
        grants = {
            "default_publisher": {"default": {"read", "infer", "publish"}},
            "default_infer": {"default": {"infer"}},
            "beta_user": {"beta": {"read", "infer"}},
            "alpha_infer": {"alpha": {"infer"}},
        }
        headers = {
            who: {"Authorization": "Bearer " + tokens.create(who, scopes)[1]}
            for who, scopes in grants.items()
        }
    # What an older release let a publisher in `default` leave behind.
    for ref in ("default/beta.secret", "default/alpha.x"):
        namespace, name = ref.split("/")
        # Another version than beta's: the old server then swapped between
        # the two on every poll instead of keeping whichever loaded first.
        package = make_onnx_package(
            work / name, name=name, namespace=namespace, version="2.0.0", scale=SCALES[ref]
        )
        insert_legacy_version(home, package)
    server = start_server(home, "--auth")
    try:
        yield World(server, headers, work)
    finally:
        stop_server(server.proc)


def _rest_infer(world: World, who: str, served: str) -> httpx.Response:
    tensor = {"name": "x", "datatype": "FP32", "shape": [1, 4], "data": X.ravel().tolist()}
    body = {"inputs": [tensor]}
    return httpx.post(
        f"http://{world.server.http}/v2/models/{served}/infer",
        headers=world.headers[who],
        content=json.dumps(body),
        timeout=30,
    )


def _grpc_infer(world: World, who: str, served: str) -> tuple[grpc.StatusCode, str, list[float]]:
    request = service_pb2.ModelInferRequest(model_name=served)
    request.inputs.add(name="x", datatype="FP32", shape=[1, 4])
    request.raw_input_contents.append(X.tobytes())
    metadata = (("authorization", world.headers[who]["Authorization"]),)
    with grpc.insecure_channel(world.server.grpc) as channel:
        stub = service_pb2_grpc.GRPCInferenceServiceStub(channel)
        try:
            reply = stub.ModelInfer(request, metadata=metadata, timeout=30)
        except grpc.RpcError as exc:
            return exc.code(), exc.details() or "", []
    return grpc.StatusCode.OK, "", np.frombuffer(reply.raw_output_contents[0], np.float32).tolist()


def test_a_dotted_name_in_default_cannot_be_published(world: World) -> None:
    """The publish that made ``beta.secret`` mean two models is refused, with the rule."""
    package = make_onnx_package(world.work / "new", name="beta.secret2", scale=5.0)
    archive = pack(package, world.work / "new.tar.gz").read_bytes()
    url = f"http://{world.server.http}{REGISTRY}/models"
    headers = {**world.headers["default_publisher"], "Content-Type": "application/gzip"}
    refused = httpx.post(url, headers=headers, content=archive, timeout=60)
    assert refused.status_code == 400, refused.text
    message = refused.json()["error"]
    assert "beta.secret2" in message and "--namespace" in message, message
    shown = httpx.get(
        f"{url}/default/beta.secret2", headers=world.headers["default_publisher"], timeout=30
    )
    assert shown.status_code == 404
    # The command line says the same (exit 2: invalid input), before anything is stored.
    result = run_cli(world.work / "cli-home", "publish", str(package))
    assert result.returncode == 2, result.stderr
    assert "--namespace" in result.stderr


def test_a_served_name_is_authorized_on_the_stored_namespace(world: World) -> None:
    """``alpha.x`` is never ``default/alpha.x`` for an ``alpha`` token, whatever the transport."""
    for served, who in (("alpha.x", "alpha_infer"), ("alpha.x", "default_infer")):
        got = _rest_infer(world, who, served)
        missing = _rest_infer(world, who, "alpha.ghost")
        assert got.status_code == missing.status_code == 404, (who, got.text)
        assert got.content == missing.content.replace(b"alpha.ghost", b"alpha.x")
        code, details, _ = _grpc_infer(world, who, served)
        missing_code, missing_details, _ = _grpc_infer(world, who, "alpha.ghost")
        assert code is missing_code is grpc.StatusCode.NOT_FOUND, (who, details)
        assert details == missing_details.replace("alpha.ghost", "alpha.x")
    # The registry API names models by (namespace, name): the one in `default`
    # is its publisher's, and invisible to `alpha` and `beta`.
    url = f"http://{world.server.http}{REGISTRY}/models/default"
    for name in ("alpha.x", "beta.secret"):
        own = httpx.get(f"{url}/{name}", headers=world.headers["default_publisher"], timeout=30)
        assert own.status_code == 200 and own.json()["name"] == name
        for who in ("alpha_infer", "beta_user"):
            assert httpx.get(f"{url}/{name}", headers=world.headers[who]).status_code == 404


def test_beta_users_always_get_the_beta_model(world: World) -> None:
    """Over several alias polls, ``beta.secret`` answers with ``beta/secret`` only."""
    seen: set[float] = set()
    deadline = time.monotonic() + 2.0  # several poll intervals (0.3 s)
    while time.monotonic() < deadline:
        rest = _rest_infer(world, "beta_user", "beta.secret")
        assert rest.status_code == 200, rest.text
        seen.add(_answer_scale(rest.json()["outputs"][0]["data"]))
        code, details, y = _grpc_infer(world, "beta_user", "beta.secret")
        assert code is grpc.StatusCode.OK, details
        seen.add(_answer_scale(y))
    assert seen == {SCALES["beta/secret"]}
    # The publisher of `default` cannot reach beta's model under its served name.
    assert _rest_infer(world, "default_publisher", "beta.secret").status_code == 404
    code, _, _ = _grpc_infer(world, "default_publisher", "beta.secret")
    assert code is grpc.StatusCode.NOT_FOUND
