"""Fixtures for registry tests: a real S3-compatible server on 127.0.0.1.

``s3_endpoint`` starts moto's stand-alone server once per test session in a
child process, creates the bucket named by ``S3_BUCKET`` and stops the
server (by its PID) at the end.  Tests address the bucket through
``s3_store_options``, the storage options sciserve passes to s3fs, and
isolate themselves with ``s3_url``, a fresh prefix per test.
"""

from __future__ import annotations

import uuid
from collections.abc import Iterator
from typing import Any

import pytest

from helpers.s3 import S3_BUCKET, S3_KEY, S3_REGION, S3_SECRET, moto_server
from helpers.s3 import client as _client


@pytest.fixture(scope="session")
def s3_endpoint(tmp_path_factory: pytest.TempPathFactory) -> Iterator[str]:
    """URL of a moto S3 server on 127.0.0.1 holding the bucket ``S3_BUCKET``."""
    with moto_server(tmp_path_factory.mktemp("moto") / "server.log") as endpoint:
        yield endpoint


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
