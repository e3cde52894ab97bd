"""A real S3-compatible server for the tests of the knowledge base's S3 file store.

Who uses it: ``tests/integration/test_kb_s3.py``. The server is s3s-fs (an S3 server on a
directory, Rust, Apache-2.0) at the version of ``tests/s3/version``, built by
``tests/s3/build.sh`` into a cache outside the repository (``LIFELONG_S3_SERVER`` names another
binary). ``s3_server(tmp)`` starts it on a free loopback port with its own access key and secret,
waits until it answers, and stops it by its pid after; ``server.bucket(name)`` makes a bucket
through the S3 API. ``server.env()`` is the environment a client of it needs (the standard AWS
variables; the user's own AWS files and profile kept out).

Without the binary the tests skip with one line saying how to build it; with
``LIFELONG_REQUIRE_S3=1`` (set by CI) they fail instead.
"""

from __future__ import annotations

import contextlib
import os
import signal
import subprocess
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path

import pytest

from harness import reaper
from harness.waiting import free_port, port_open, wait_for

S3_DIR = Path(__file__).resolve().parent.parent / "s3"
VERSION = (S3_DIR / "version").read_text().strip()
ACCESS_KEY = "lifelong-test-access"
SECRET_KEY = "lifelong-test-secret-0123456789"


def cache_dir() -> Path:
    """Where ``tests/s3/build.sh`` keeps what it builds."""
    if os.environ.get("LIFELONG_CACHE"):
        return Path(os.environ["LIFELONG_CACHE"])
    base = os.environ.get("XDG_CACHE_HOME") or str(Path.home() / ".cache")
    return Path(base) / "lifelong"


def server_binary() -> Path | None:
    """The s3s-fs binary (``LIFELONG_S3_SERVER``, else the one ``build.sh`` built), if there is one."""
    named = os.environ.get("LIFELONG_S3_SERVER")
    path = Path(named) if named else cache_dir() / f"s3s-fs-{VERSION}" / "bin" / "s3s-fs"
    return path if path.is_file() and os.access(path, os.X_OK) else None


def require_binary() -> Path:
    """The binary, or skip (fail under ``LIFELONG_REQUIRE_S3=1``) with one line saying why."""
    binary = server_binary()
    if binary is not None:
        return binary
    why = f"no S3 server binary: run tests/s3/build.sh (builds s3s-fs {VERSION} with cargo)"
    if os.environ.get("LIFELONG_REQUIRE_S3") == "1":
        pytest.fail(f"LIFELONG_REQUIRE_S3=1 but {why}", pytrace=False)
    pytest.skip(why)


@dataclass
class S3Server:
    endpoint: str
    root: Path
    proc: subprocess.Popen[bytes]

    def env(self) -> dict[str, str]:
        """The variables a client of this server reads (and the user's own AWS setup masked)."""
        return {
            "AWS_ACCESS_KEY_ID": ACCESS_KEY,
            "AWS_SECRET_ACCESS_KEY": SECRET_KEY,
            "AWS_REGION": "us-east-1",
            "AWS_CONFIG_FILE": str(self.root / "no-aws-config"),
            "AWS_SHARED_CREDENTIALS_FILE": str(self.root / "no-aws-credentials"),
            "AWS_EC2_METADATA_DISABLED": "true",
        }

    def client(self) -> object:
        """A boto3 client of the server (for set-up and for looking behind the store)."""
        import boto3

        return boto3.client(
            "s3",
            endpoint_url=self.endpoint,
            aws_access_key_id=ACCESS_KEY,
            aws_secret_access_key=SECRET_KEY,
            region_name="us-east-1",
        )

    def bucket(self, name: str) -> str:
        self.client().create_bucket(Bucket=name)  # type: ignore[attr-defined]
        return name


@contextlib.contextmanager
def s3_server(tmp: Path) -> Iterator[S3Server]:
    """s3s-fs on a free loopback port, its data in ``tmp/data``, stopped (by pid) after."""
    binary = require_binary()
    root = tmp / "data"
    root.mkdir(parents=True)
    port = free_port()
    log = (tmp / "s3s-fs.log").open("wb")
    proc = reaper.started(
        subprocess.Popen(
            [
                str(binary),
                "--host",
                "127.0.0.1",
                "--port",
                str(port),
                "--access-key",
                ACCESS_KEY,
                "--secret-key",
                SECRET_KEY,
                str(root),
            ],
            stdout=log,
            stderr=subprocess.STDOUT,
            start_new_session=True,
        )
    )
    try:
        wait_for(
            lambda: proc.poll() is not None or port_open("127.0.0.1", port),
            timeout=20,
            what=f"s3s-fs on port {port}",
        )
        if proc.poll() is not None:
            raise AssertionError(f"s3s-fs exited with {proc.returncode}: {(tmp / 's3s-fs.log').read_text()}")
        yield S3Server(f"http://127.0.0.1:{port}", root, proc)
    finally:
        if proc.poll() is None:
            os.killpg(proc.pid, signal.SIGTERM)
            try:
                proc.wait(10)
            except subprocess.TimeoutExpired:
                os.killpg(proc.pid, signal.SIGKILL)
                proc.wait(10)
        log.close()
