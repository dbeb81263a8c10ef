"""A local S3 server (moto's, a test extra) on 127.0.0.1, for the tests and the bench to read
and write `s3://` URIs without the internet."""

from __future__ import annotations

import contextlib
import socket
import subprocess
import sys
import time
from collections.abc import Callable, Iterator
from pathlib import Path

START_WITHIN_S = 30.0


@contextlib.contextmanager
def local_s3(log: Path) -> Iterator[Callable[[str], str]]:
    """A running server, as a function: bucket/prefix -> an s3:// URI whose options point
    pyarrow (in every process, Ray's workers included) at it, with its dummy credentials."""
    with socket.socket() as probe:
        probe.bind(("127.0.0.1", 0))
        port = probe.getsockname()[1]
    with open(log, "w") as log_file:
        server = subprocess.Popen([sys.executable, "-m", "moto.server", "-H", "127.0.0.1", "-p", str(port)],
                                  stdout=log_file, stderr=subprocess.STDOUT)
        try:
            deadline = time.monotonic() + START_WITHIN_S
            while time.monotonic() < deadline:
                with socket.socket() as client:
                    if client.connect_ex(("127.0.0.1", port)) == 0:
                        break
                time.sleep(0.2)

            def uri(bucket_and_prefix: str) -> str:
                return (f"s3://test:test@{bucket_and_prefix}?endpoint_override=127.0.0.1:{port}&scheme=http"
                        "&region=us-east-1&allow_bucket_creation=true")

            yield uri
        finally:
            server.terminate()
            server.wait(timeout=10)


def upload(folder: Path, uri: str) -> None:
    """Every file under `folder` to the folder `uri` names."""
    import pyarrow.fs as pafs

    filesystem, path = pafs.FileSystem.from_uri(uri)
    filesystem.create_dir(path, recursive=True)
    pafs.copy_files(str(folder), path, source_filesystem=pafs.LocalFileSystem(), destination_filesystem=filesystem)
