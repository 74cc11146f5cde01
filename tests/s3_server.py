"""Test helper: a local S3-compatible server (moto's standalone server, in a thread of the test
process) that subprocesses reach through ``AWS_ENDPOINT_URL``.

Import :func:`s3_endpoint` into a test module to use it as a fixture. Tests skip with a reason when
``moto[server]`` or ``s3fs`` is not installed (``pip install 'moto[server]' s3fs``)."""

from __future__ import annotations

import logging
import os
from collections.abc import Iterator
from pathlib import Path

import pytest

BUCKET = "bucket"
#: What every process of a test needs to reach the server: endpoint, dummy credentials, region.
S3_ENV_KEYS = ("AWS_ENDPOINT_URL", "AWS_ACCESS_KEY_ID", "AWS_SECRET_ACCESS_KEY", "AWS_DEFAULT_REGION")


@pytest.fixture(scope="module")
def s3_endpoint() -> Iterator[str]:
    """Start a moto S3 server on a free port of 127.0.0.1 with one empty bucket ``bucket``; set the
    ``AWS_*`` variables of :data:`S3_ENV_KEYS` in ``os.environ`` (inherited by subprocesses) for the
    module, then restore them and stop the server. Yields the endpoint URL."""
    moto_server = pytest.importorskip("moto.server", reason="S3 tests need moto[server]: pip install 'moto[server]'")
    pytest.importorskip("s3fs", reason="S3 tests need s3fs: pip install s3fs")
    import boto3

    logging.getLogger("werkzeug").setLevel(logging.ERROR)  # one line per request otherwise
    server = moto_server.ThreadedMotoServer(ip_address="127.0.0.1", port=0, verbose=False)
    server.start()
    host, port = server.get_host_and_port()
    endpoint = f"http://{host}:{port}"
    saved = {k: os.environ.get(k) for k in S3_ENV_KEYS}
    os.environ.update(AWS_ENDPOINT_URL=endpoint, AWS_ACCESS_KEY_ID="testing", AWS_SECRET_ACCESS_KEY="testing",
                      AWS_DEFAULT_REGION="us-east-1")
    try:
        boto3.client("s3").create_bucket(Bucket=BUCKET)
        yield endpoint
    finally:
        server.stop()
        for k, v in saved.items():
            if v is None:
                os.environ.pop(k, None)
            else:
                os.environ[k] = v


def s3_keys(prefix: str) -> list[str]:
    """Keys under ``prefix`` of :data:`BUCKET`, listed afresh (no fsspec listing cache)."""
    import boto3

    pages = boto3.client("s3").get_paginator("list_objects_v2").paginate(Bucket=BUCKET, Prefix=prefix)
    return sorted(o["Key"] for page in pages for o in page.get("Contents", []))


def upload_dir(local: Path, url: str) -> None:
    """Copy a local directory tree to ``s3://...`` (every file, same relative keys)."""
    import s3fs

    fs = s3fs.S3FileSystem(skip_instance_cache=True)
    dest = url.removeprefix("s3://").rstrip("/")
    for path in sorted(p for p in Path(local).rglob("*") if p.is_file()):
        fs.put_file(str(path), f"{dest}/{path.relative_to(local).as_posix()}")
