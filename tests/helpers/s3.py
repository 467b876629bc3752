"""A real S3-compatible server (moto's stand-alone server) on 127.0.0.1."""

from __future__ import annotations

import contextlib
import socket
import subprocess
import sys
import time
import urllib.error
import urllib.request
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


def client(endpoint: str) -> Any:
    import boto3

    return boto3.client(
        "s3",
        endpoint_url=endpoint,
        region_name=S3_REGION,
        aws_access_key_id=S3_KEY,
        aws_secret_access_key=S3_SECRET,
    )


@contextlib.contextmanager
def moto_server(log: Path) -> Iterator[str]:
    """The URL of a moto S3 server on 127.0.0.1 holding the bucket ``S3_BUCKET``,
    stopped (by its PID) on exit."""
    port = _free_port()
    endpoint = f"http://127.0.0.1:{port}"
    with log.open("wb") as out:
        proc = subprocess.Popen(
            [sys.executable, "-m", "moto.server", "-H", "127.0.0.1", "-p", str(port)],
            stdout=out,
            stderr=subprocess.STDOUT,
        )
    try:
        _wait_until_serving(f"{endpoint}/moto-api/", proc, log)
        client(endpoint).create_bucket(Bucket=S3_BUCKET)
        yield endpoint
    finally:
        _stop(proc)
