"""Storage backends under one contract: every test taking ``storage`` runs against local
files in a temporary directory and against S3 as spoken by moto's server on loopback (a
real S3 protocol endpoint reached over HTTP by boto3, not an in-process mock)."""

from __future__ import annotations

import uuid
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import boto3
import pytest
from botocore.config import Config
from moto.server import ThreadedMotoServer

from voiceslot.storage.base import Storage
from voiceslot.storage.local import LocalStorage
from voiceslot.storage.s3 import S3Storage

S3_PREFIX = "tenant-a"
S3_PAGE_SIZE = 2
"""Tiny pages, so every listing in the contract tests crosses page boundaries."""


@pytest.fixture(scope="session")
def s3_endpoint() -> Iterator[str]:
    server = ThreadedMotoServer(ip_address="127.0.0.1", port=0, verbose=False)
    server.start()
    host, port = server.get_host_and_port()
    yield f"http://{host}:{port}"
    server.stop()


@pytest.fixture(scope="session")
def s3_client(s3_endpoint: str) -> Any:
    session = boto3.session.Session(
        aws_access_key_id="testing", aws_secret_access_key="testing", region_name="us-east-1"
    )
    return session.client(
        "s3",
        endpoint_url=s3_endpoint,
        config=Config(s3={"addressing_style": "path"}, signature_version="s3v4"),
    )


@pytest.fixture
def s3_bucket(s3_client: Any) -> str:
    name = f"test-{uuid.uuid4().hex[:16]}"
    s3_client.create_bucket(Bucket=name)
    return name


@pytest.fixture(params=["local", "s3"])
def storage(request: pytest.FixtureRequest, tmp_path: Path) -> Storage:
    if request.param == "local":
        return LocalStorage(tmp_path / "store")
    return S3Storage(
        bucket=request.getfixturevalue("s3_bucket"),
        prefix=S3_PREFIX,
        client=request.getfixturevalue("s3_client"),
        page_size=S3_PAGE_SIZE,
    )
