"""Fixtures for registry tests: a real S3-compatible server on 127.0.0.1.

``s3_endpoint`` starts moto's stand-alone server once per test session in a
child process, creates the bucket named by ``S3_BUCKET`` and stops the
server (by its PID) at the end.  Tests address the bucket through
``s3_store_options``, the storage options sciserve passes to s3fs, and
isolate themselves with ``s3_url``, a fresh prefix per test.
"""

from __future__ import annotations

import socket
import subprocess
import sys
import time
import urllib.error
import urllib.request
import uuid
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest

#: The bucket ``s3_endpoint`` creates.
S3_BUCKET = "sciserve-test"
#: moto accepts any credentials; these keep real AWS settings out of the tests.
S3_KEY = "testing"
S3_SECRET = "testing"
S3_REGION = "us-east-1"

_STARTUP_TIMEOUT_S = 30.0


def _free_port() -> int:
    with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as sock:
        sock.bind(("127.0.0.1", 0))
        return int(sock.getsockname()[1])


def _wait_until_serving(url: str, proc: subprocess.Popen[bytes], log: Path) -> None:
    """Poll ``url`` until the server answers any HTTP response."""
    deadline = time.monotonic() + _STARTUP_TIMEOUT_S
    while time.monotonic() < deadline:
        if proc.poll() is not None:
            pytest.fail(f"moto server exited with {proc.returncode}:\n{log.read_text()}")
        try:
            with urllib.request.urlopen(url, timeout=1):
                return
        except urllib.error.HTTPError:
            return  # an error status still proves the server is up
        except OSError:
            time.sleep(0.1)
    pytest.fail(f"moto server did not answer at {url} within {_STARTUP_TIMEOUT_S} s")


def _stop(proc: subprocess.Popen[bytes]) -> None:
    proc.terminate()
    try:
        proc.wait(timeout=10)
    except subprocess.TimeoutExpired:
        proc.kill()
        proc.wait()


def _client(endpoint: str) -> Any:
    import boto3

    return boto3.client(
        "s3",
        endpoint_url=endpoint,
        region_name=S3_REGION,
        aws_access_key_id=S3_KEY,
        aws_secret_access_key=S3_SECRET,
    )


@pytest.fixture(scope="session")
def s3_endpoint(tmp_path_factory: pytest.TempPathFactory) -> Iterator[str]:
    """URL of a moto S3 server on 127.0.0.1 holding the bucket ``S3_BUCKET``."""
    port = _free_port()
    log = tmp_path_factory.mktemp("moto") / "server.log"
    endpoint = f"http://127.0.0.1:{port}"
    with log.open("wb") as out:
        proc = subprocess.Popen(
            [sys.executable, "-m", "moto.server", "-H", "127.0.0.1", "-p", str(port)],
            stdout=out,
            stderr=subprocess.STDOUT,
        )
    try:
        _wait_until_serving(f"{endpoint}/moto-api/", proc, log)
        _client(endpoint).create_bucket(Bucket=S3_BUCKET)
        yield endpoint
    finally:
        _stop(proc)


@pytest.fixture
def s3_store_options(s3_endpoint: str) -> dict[str, Any]:
    """Storage options that point s3fs at the ``s3_endpoint`` server."""
    return {
        "client_kwargs": {"endpoint_url": s3_endpoint, "region_name": S3_REGION},
        "key": S3_KEY,
        "secret": S3_SECRET,
    }


@pytest.fixture
def s3_url() -> str:
    """A fresh ``s3://`` prefix in ``S3_BUCKET``, so tests never see each other's objects."""
    return f"s3://{S3_BUCKET}/{uuid.uuid4().hex}"


@pytest.fixture
def s3_client(s3_endpoint: str) -> Any:
    """A boto3 S3 client for the ``s3_endpoint`` server, to inspect or tamper with objects."""
    return _client(s3_endpoint)
