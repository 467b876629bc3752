"""The harness against a real sciserve server on 127.0.0.1: checks, loads, shutdown."""

from __future__ import annotations

import socket
from collections.abc import Iterator
from pathlib import Path

import numpy as np
import pytest
from servebench.h2load import GrpcRequest, answer_bytes, find_h2load, run_h2load
from servebench.inproc import open_session, run_inprocess
from servebench.model import write_model
from servebench.payloads import BodyFiles, Payloads, make_payloads
from servebench.runner import LoadTools, Options, measure_server
from servebench.servers import GRPC, HTTP_BINARY, SERVERS, Endpoint
from servebench.verify import WrongAnswer, check_grpc, check_http_binary, check_http_json
from servebench.wrk import WrkRequest, find_wrk, run_wrk
from tritonclient.grpc import service_pb2

from helpers.required import unavailable

pytestmark = pytest.mark.slow

SCISERVE = next(spec for spec in SERVERS if spec.key == "sciserve")


@pytest.fixture(scope="module")
def work(tmp_path_factory: pytest.TempPathFactory) -> Path:
    return tmp_path_factory.mktemp("live")


@pytest.fixture(scope="module")
def model(work: Path) -> Path:
    return write_model(work / "model.onnx")


@pytest.fixture(scope="module")
def payloads(model: Path) -> dict[int, Payloads]:
    session = open_session(model)
    out = {}
    for batch in (1, 8):
        x = np.random.default_rng(batch).standard_normal((batch, 64), dtype=np.float32)
        (expected,) = session.run(["OUTPUT0"], {"INPUT0": x})
        out[batch] = make_payloads(x, expected)
    return out


@pytest.fixture(scope="module")
def bodies(work: Path, payloads: dict[int, Payloads]) -> dict[int, BodyFiles]:
    return {b: p.write(work / "bodies") for b, p in payloads.items()}


@pytest.fixture(scope="module")
def sciserve(work: Path, model: Path) -> Iterator[Endpoint]:
    reason = SCISERVE.missing()
    if reason:
        unavailable(reason)
    with SCISERVE.launch(work, model) as endpoint:
        yield endpoint


def test_sciserve_answers_every_protocol_correctly(
    sciserve: Endpoint, payloads: dict[int, Payloads]
) -> None:
    assert sciserve.version.startswith("sciserve ")
    for batch_payloads in payloads.values():
        check_http_binary("sciserve", sciserve.http, batch_payloads)
        check_http_json("sciserve", sciserve.http, batch_payloads)
        check_grpc("sciserve", sciserve.grpc, batch_payloads)


def test_a_wrong_expectation_is_caught(sciserve: Endpoint, payloads: dict[int, Payloads]) -> None:
    good = payloads[1]
    wrong = make_payloads(good.inputs, good.expected + 1.0)
    with pytest.raises(WrongAnswer, match="differs"):
        check_grpc("sciserve", sciserve.grpc, wrong)
    with pytest.raises(WrongAnswer, match="differs"):
        check_http_json("sciserve", sciserve.http, wrong)


def _h2load() -> str:
    h2load = find_h2load()
    if h2load is None:
        unavailable("h2load is not installed (apt-get install nghttp2-client)")
    return h2load


def test_h2load_loads_grpc(sciserve: Endpoint, bodies: dict[int, BodyFiles]) -> None:
    h2load = _h2load()
    size = answer_bytes(sciserve.grpc, bodies[8].grpc)
    request = GrpcRequest(sciserve.grpc, bodies[8].grpc, size, batch=8)
    run = run_h2load(h2load, request, concurrency=4, duration=1, warmup=1)
    assert run.requests > 0
    assert run.errors == 0
    assert run.rows_per_s == pytest.approx(run.requests / run.duration_s * 8)
    assert 0 < run.p50_ms <= run.p99_ms


def test_h2load_does_not_count_failed_calls(
    sciserve: Endpoint, bodies: dict[int, BodyFiles], work: Path
) -> None:
    h2load = _h2load()
    size = answer_bytes(sciserve.grpc, bodies[1].grpc)
    message = service_pb2.ModelInferRequest(model_name="no-such-model").SerializeToString()
    body = work / "no-such-model.grpc"
    body.write_bytes(b"\x00" + len(message).to_bytes(4, "big") + message)
    # HTTP says 200 for every one of these calls; their trailers say NOT_FOUND.
    run = run_h2load(h2load, GrpcRequest(sciserve.grpc, body, size, 1), 2, 1, 1)
    assert run.requests == 0
    assert run.errors > 0


def test_wrk_loads_http(
    sciserve: Endpoint, payloads: dict[int, Payloads], bodies: dict[int, BodyFiles]
) -> None:
    wrk = find_wrk()
    if wrk is None:
        unavailable("wrk is not installed (apt-get install wrk)")
    request = WrkRequest(
        url=f"http://{sciserve.http}/v2/models/mlp/infer",
        body=bodies[8].binary,
        content_type="application/octet-stream",
        header_length=payloads[8].http_binary_header_length,
        batch=8,
    )
    run = run_wrk(wrk, request, connections=2, duration=1)
    assert run.requests > 0
    assert run.errors == 0
    assert run.rows_per_s == pytest.approx(run.requests / run.duration_s * 8)


def test_wrk_reports_failed_requests(sciserve: Endpoint, bodies: dict[int, BodyFiles]) -> None:
    wrk = find_wrk()
    if wrk is None:
        unavailable("wrk is not installed (apt-get install wrk)")
    request = WrkRequest(
        url=f"http://{sciserve.http}/v2/models/no-such-model/infer",
        body=bodies[1].json,
        content_type="application/json",
        header_length=None,
        batch=1,
    )
    run = run_wrk(wrk, request, connections=1, duration=1)
    assert run.requests == 0
    assert run.errors > 0


def test_the_runner_measures_each_cell_with_its_runs(
    sciserve: Endpoint, payloads: dict[int, Payloads], bodies: dict[int, BodyFiles]
) -> None:
    wrk, h2load = find_wrk(), _h2load()
    protocols = (GRPC, HTTP_BINARY) if wrk else (GRPC,)
    options = Options(duration=0.5, runs=2, warmup=0.2, concurrencies=(2,), batches=(1,))
    tools = LoadTools(wrk or "wrk", h2load)
    results = measure_server("sciserve", protocols, sciserve, payloads, bodies, options, tools)
    assert [r.cell.protocol for r in results] == list(protocols)
    for result in results:
        assert result.error is None
        assert len(result.runs) == 2
        median = result.median
        assert median is not None
        assert median.rows_per_s > 0


def test_the_runner_does_not_time_a_wrong_answer(
    sciserve: Endpoint, payloads: dict[int, Payloads], bodies: dict[int, BodyFiles]
) -> None:
    good = payloads[1]
    wrong = {1: make_payloads(good.inputs, good.expected * 2.0 + 1.0)}
    options = Options(duration=60, runs=3, warmup=60, concurrencies=(1, 16), batches=(1,))
    tools = LoadTools("wrk", "h2load")
    results = measure_server("sciserve", (GRPC,), sciserve, wrong, bodies, options, tools)
    assert len(results) == 2
    for result in results:
        assert result.runs == ()
        assert result.median is None
        assert result.error is not None
        assert result.error.startswith("verification failed")


def test_the_in_process_ceiling(model: Path, payloads: dict[int, Payloads]) -> None:
    session = open_session(model)
    runs = run_inprocess(
        session, payloads[8].inputs, concurrency=2, warmup=0.1, duration=0.3, runs=2
    )
    assert len(runs) == 2
    assert all(r.requests > 0 and r.batch == 8 for r in runs)


def test_the_server_is_gone_after_the_block(work: Path, model: Path) -> None:
    if SCISERVE.missing():
        unavailable("sciserve serve is not available")
    with SCISERVE.launch(work / "second", model) as endpoint:
        host, port = endpoint.http.rsplit(":", 1)
        socket.create_connection((host, int(port)), timeout=5).close()
    with pytest.raises(ConnectionRefusedError):
        socket.create_connection((host, int(port)), timeout=5)
