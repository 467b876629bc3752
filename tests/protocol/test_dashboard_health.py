"""The health report when the parts a server needs are out of reach: an
artifact store nobody answers for, a database cut off from the network."""

from __future__ import annotations

import os
import socket
from pathlib import Path

import pytest
import yaml
from sqlalchemy.engine import make_url

from sciserve.access.identity import Identity
from sciserve.config import Settings
from sciserve.errors import InvalidInput
from sciserve.protocol.dashboard.health import Status, check_health
from sciserve.registry.registry import Registry
from sciserve.registry.store import open_store
from sciserve.serving.service import InferenceService
from sciserve.streams.metrics import PipelineMetrics, process_identity, status_path, write_status
from sciserve.streams.spec import parse_spec

from helpers.packages import make_onnx_package
from helpers.s3 import S3_KEY, S3_REGION, S3_SECRET
from helpers.tcp_proxy import tcp_proxy

ADMIN = Identity.anonymous()  # auth off: the caller sees everything
READER = Identity(subject="alice", kind="token", scopes={"alpha": frozenset({"read"})})


def _closed_port() -> int:
    """A port of 127.0.0.1 nothing listens on (bound, then released)."""
    with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as sock:
        sock.bind(("127.0.0.1", 0))
        return int(sock.getsockname()[1])


async def test_an_unreachable_artifact_store_is_reported_with_what_to_do(tmp_path: Path) -> None:
    store = open_store(
        "s3://nobody-answers",
        storage_options={
            "key": S3_KEY,
            "secret": S3_SECRET,
            "client_kwargs": {
                "endpoint_url": f"http://127.0.0.1:{_closed_port()}",
                "region_name": S3_REGION,
            },
            "config_kwargs": {"retries": {"max_attempts": 1}, "connect_timeout": 2},
            "retries": 1,
        },
    )
    with Registry(Settings.load(tmp_path / "home", environ={}), store=store) as reg:
        report = await check_health(InferenceService(reg), ADMIN)
        reader = await check_health(InferenceService(reg), READER)
    assert report.status is Status.FAILING
    assert report.checks["artifact_store"] == "problem"
    assert report.checks["database"] == "ok"
    [problem] = [p for p in report.problems if p.component == "artifact_store"]
    assert problem.message.startswith("the artifact store is unreachable: ")
    assert "store_url" in problem.action
    # Callers other than admins learn that it is down, not the server's details.
    [told] = [p for p in reader.problems if p.component == "artifact_store"]
    assert told.message == "the artifact store is unreachable"


@pytest.mark.postgres
async def test_an_unreachable_database_is_reported_with_what_to_do(
    tmp_path: Path, postgres_url: str
) -> None:
    real = make_url(postgres_url)
    with tcp_proxy((real.host or "127.0.0.1", real.port or 5432)) as proxy:
        url = real.set(host="127.0.0.1", port=proxy.port)
        settings = Settings.load(
            tmp_path / "home", environ={}, database_url=url.render_as_string(hide_password=False)
        )
        with Registry(settings) as reg:
            reg.publish(make_onnx_package(tmp_path / "m", name="m", namespace="alpha"))
            service = InferenceService(reg)
            assert (await check_health(service, ADMIN)).status is Status.OK
            proxy.cut()  # the database server is gone from the network
            report = await check_health(service, ADMIN)
    assert report.status is Status.FAILING
    assert report.checks["database"] == "problem"
    [problem] = [p for p in report.problems if p.component == "database"]
    assert problem.message.startswith("the registry database is unreachable: ")
    assert "database_url" in problem.action
    # What needs the database is not checked, and says so.
    assert "jobs" not in report.checks and "unreachable" in report.not_checked["jobs"]
    assert report.to_dict()["status"] == "failing"


def _worker(home: Path, name: str, state: str, budget: str, lag: int | None, p99: float) -> None:
    """A status file as a pipeline worker writes it (this live process stands
    in for the worker): the spec's budget and its real metrics' snapshot."""
    spec = parse_spec(
        yaml.safe_load(
            f"name: {name}\nsource: kafka://127.0.0.1:9092/alerts\nmodels: [{{ref: m}}]\n"
            f"sinks: [results]\ndead_letter: file:///tmp/dead.jsonl\n{budget}"
        )
    )
    metrics = PipelineMetrics(name)
    metrics.consumed(1000)
    metrics.set_lag(lag)
    for _ in range(95):
        metrics.latency(0.1)
    for _ in range(5):
        metrics.latency(p99)
    write_status(
        status_path(home, name, os.getpid()),
        {
            "name": name,
            **process_identity(),
            "state": state,
            "budget": None if spec.budget is None else spec.budget.model_dump(),
            **metrics.snapshot(),
        },
    )


async def test_a_stream_beyond_its_budget_is_reported_to_admins_only(tmp_path: Path) -> None:
    home = tmp_path / "home"
    _worker(home, "lagging", "running", "budget: {max_lag: 100}", 5000, 0.2)
    _worker(home, "slow", "running", "budget: {max_lag: 10000, max_latency: 1.5}", 40, 7.5)
    _worker(home, "keeping-up", "running", "budget: {max_lag: 100, max_latency: 1}", 99, 0.5)
    _worker(home, "free", "running", "", 10**9, 600.0)
    # Beyond its budget, but it stopped cleanly: nothing is behind any more.
    _worker(home, "done", "stopped", "budget: {max_lag: 1}", 50, 0.1)
    with Registry(Settings.load(home, environ={})) as reg:
        report = await check_health(InferenceService(reg), ADMIN)
        reader = await check_health(InferenceService(reg), READER)
    streams = {p.message.split(" ")[1]: p for p in report.problems if p.component == "stream"}
    assert set(streams) == {"lagging", "slow"}
    assert "lags 5000 messages behind its source, over its budget of 100" in (
        streams["lagging"].message
    )
    assert "sciserve stream run SPEC" in streams["lagging"].action
    assert "takes 7.5 s from alert to annotation (p99), over its budget of 1.5 s" in (
        streams["slow"].message
    )
    assert "fetch_timeout" in streams["slow"].action
    assert report.status is Status.DEGRADED
    assert report.checks["stream_lag"] == "problem" and report.checks["streams"] == "ok"
    assert "free declare no budget" in report.not_checked["stream_lag"]
    # Pipelines belong to no namespace: other callers learn nothing of them.
    assert not any(p.component == "stream" for p in reader.problems)
    assert "stream_lag" not in reader.checks and "stream_lag" not in reader.not_checked
    assert "streams" in reader.not_checked
    shown = str(reader.to_dict())
    assert not any(name in shown for name in ("lagging", "slow", "keeping-up", "free"))


async def test_workers_within_budget_or_with_a_broken_one_are_no_problem(tmp_path: Path) -> None:
    home = tmp_path / "home"
    _worker(home, "keeping-up", "running", "budget: {max_lag: 100, max_latency: 1}", 100, 1.0)
    _worker(home, "no-lag-yet", "starting", "budget: {max_lag: 100}", None, 0.1)
    path = status_path(home, "odd", os.getpid())
    write_status(
        path,
        {
            "name": "odd",
            **process_identity(),
            "state": "running",
            "lag": 10**6,
            "budget": {"max_lag": "many"},
        },
    )
    with Registry(Settings.load(home, environ={})) as reg:
        report = await check_health(InferenceService(reg), ADMIN)
    assert report.status is Status.OK, report.problems
    assert report.checks["stream_lag"] == "ok"
    # A budget that does not parse is no budget: said, not guessed at.
    assert report.not_checked["stream_lag"].startswith("pipeline odd declare")
    with pytest.raises(InvalidInput, match="max_lag"):
        parse_spec(
            yaml.safe_load(
                "name: x\nsource: kafka://h:1/t\nmodels: [{ref: m}]\nsinks: [results]\n"
                "dead_letter: file:///tmp/d\nbudget: {max_lag: -1}\n"
            )
        )
