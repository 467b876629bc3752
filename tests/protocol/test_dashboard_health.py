"""The health report when the parts a server needs are out of reach: an
artifact store nobody answers for, a database cut off from the network."""

from __future__ import annotations

import socket
from pathlib import Path

import pytest
from sqlalchemy.engine import make_url

from sciserve.access.identity import Identity
from sciserve.config import Settings
from sciserve.protocol.dashboard.health import Status, check_health
from sciserve.registry.registry import Registry
from sciserve.registry.store import open_store
from sciserve.serving.service import InferenceService

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
