"""An S3-compatible server on loopback for tests: moto's standalone server in a process.

Fixtures (registered in ``tests/conftest.py``): ``s3_server`` (session; started on first
use, stopped by its PID at the end), ``s3_settings`` (``S3Settings`` that reach it) and
``s3_bucket`` (a fresh, empty bucket per test, removed afterwards).
"""

from __future__ import annotations

import contextlib
import os
import signal
import subprocess
import sys
import tempfile
import time
import urllib.error
import urllib.request
import uuid
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import boto3
import pytest

from bismuth_provider.storage.s3 import S3Settings
from tests.support.zkserver import free_port

ACCESS_KEY = "bismuth-test-access"
SECRET_KEY = "bismuth-test-secret"
_DIRECT = urllib.request.build_opener(urllib.request.ProxyHandler({}))  # loopback: no proxy


class MotoServer:
    """One ``python -m moto.server`` on 127.0.0.1 and a free port; ``endpoint`` is its URL."""

    def __init__(self) -> None:
        self.port = free_port()
        self.log = Path(tempfile.mkstemp(prefix="bismuth-moto-", suffix=".log")[1])
        self.proc: subprocess.Popen[bytes] | None = None

    @property
    def endpoint(self) -> str:
        return f"http://127.0.0.1:{self.port}"

    def start(self, timeout: float = 30.0) -> None:
        with open(self.log, "ab") as log:
            self.proc = subprocess.Popen(
                [sys.executable, "-m", "moto.server", "-H", "127.0.0.1", "-p", str(self.port)],
                stdin=subprocess.DEVNULL,
                stdout=log,
                stderr=log,
                start_new_session=True,
            )
        deadline = time.monotonic() + timeout
        while not self._answers():
            if self.proc.poll() is not None or time.monotonic() > deadline:
                self.stop()
                raise RuntimeError(f"moto server did not answer within {timeout}s: {self.log}")
            time.sleep(0.05)

    def _answers(self) -> bool:
        try:
            with _DIRECT.open(f"{self.endpoint}/moto-api/data.json", timeout=1) as answer:
                return bool(answer.status == 200)
        except (OSError, urllib.error.URLError):
            return False

    def stop(self) -> None:
        if self.proc is None:
            return
        if self.proc.poll() is None:
            os.kill(self.proc.pid, signal.SIGTERM)
            try:
                self.proc.wait(timeout=10)
            except subprocess.TimeoutExpired:
                os.kill(self.proc.pid, signal.SIGKILL)
                self.proc.wait()
        self.proc = None
        self.log.unlink(missing_ok=True)


def s3_client(settings: S3Settings) -> Any:
    """A plain boto3 client of the test server, to look at or set up buckets directly."""
    return boto3.client(
        "s3",
        endpoint_url=settings.endpoint,
        region_name=settings.region,
        aws_access_key_id=settings.access_key,
        aws_secret_access_key=settings.secret_key,
    )


@pytest.fixture(scope="session")
def s3_server() -> Iterator[MotoServer]:
    server = MotoServer()
    with pytest.MonkeyPatch.context() as patch:
        # boto3 honours *_PROXY variables: keep requests to the loopback server direct.
        no_proxy = ",".join(v for v in (os.environ.get("NO_PROXY"), "127.0.0.1") if v)
        patch.setenv("NO_PROXY", no_proxy)
        patch.setenv("no_proxy", no_proxy)
        server.start()
        try:
            yield server
        finally:
            server.stop()


@pytest.fixture
def s3_settings(s3_server: MotoServer) -> S3Settings:
    return S3Settings(endpoint=s3_server.endpoint, access_key=ACCESS_KEY, secret_key=SECRET_KEY)


@pytest.fixture
def s3_bucket(s3_settings: S3Settings) -> Iterator[str]:
    """The name of a new, empty bucket; it and everything in it go after the test."""
    name = "t" + uuid.uuid4().hex
    client = s3_client(s3_settings)
    client.create_bucket(Bucket=name)
    yield name
    with contextlib.suppress(Exception):
        pages = client.get_paginator("list_objects_v2").paginate(Bucket=name)
        for page in pages:
            for item in page.get("Contents", []):
                client.delete_object(Bucket=name, Key=item["Key"])
        client.delete_bucket(Bucket=name)
    client.close()
