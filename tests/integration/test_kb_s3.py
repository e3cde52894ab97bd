"""The knowledge base's files in an S3-compatible bucket (``lifelong.cloud.kb.s3``), against a
real S3 server: s3s-fs, built by ``tests/s3/build.sh`` and started by ``tests/harness/s3.py``.

The ``S3Files`` store is held to ``LocalFiles``' semantics (paths checked before any request,
bounded size with nothing stored past it, ``FileMissing``, streamed reads), and the KB's routes,
Sedna's ``/file/upload`` and ``/file/download`` and the native ``/v1/files``, are run on it, as
is ``lifelong kb serve --files s3://... --s3-endpoint ...`` as a process. Without the server
binary these tests skip with one line saying why (CI sets ``LIFELONG_REQUIRE_S3=1``).
"""

from __future__ import annotations

import io
import os
import subprocess
import sys
import uuid
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import httpx
import pytest
import requests
from harness import reaper
from harness.s3 import ACCESS_KEY, SECRET_KEY, S3Server, s3_server
from harness.waiting import free_port, wait_for

from lifelong.cloud.kb.files import BadPath, FileMissing, FilesUnavailable, TooLarge, open_files
from lifelong.cloud.kb.s3 import S3Files
from lifelong.cloud.kb.server import KBServer
from lifelong.common.errors import ConfigError

pytest.importorskip("boto3", reason="the s3 extra (boto3) is not installed")


@pytest.fixture(scope="module")
def server(tmp_path_factory: pytest.TempPathFactory) -> Iterator[S3Server]:
    with s3_server(tmp_path_factory.mktemp("s3")) as running:
        yield running


@pytest.fixture(autouse=True)
def aws_env(server: S3Server, monkeypatch: pytest.MonkeyPatch) -> dict[str, str]:
    """Credentials as a deployment gives them: the standard AWS variables."""
    for name in ("AWS_PROFILE", "AWS_SESSION_TOKEN", "AWS_ENDPOINT_URL", "AWS_ENDPOINT_URL_S3"):
        monkeypatch.delenv(name, raising=False)
    env = server.env()
    for name, value in env.items():
        monkeypatch.setenv(name, value)
    return env


@pytest.fixture
def bucket(server: S3Server) -> str:
    return server.bucket(f"kb-{uuid.uuid4().hex[:12]}")


def keys(server: S3Server, bucket: str) -> list[str]:
    listed = server.client().list_objects_v2(Bucket=bucket)  # type: ignore[attr-defined]
    return sorted(o["Key"] for o in listed.get("Contents", []))


class Unsized(io.RawIOBase):
    """A stream that cannot tell its length (as a chunked request body), in ``parts``."""

    def __init__(self, parts: list[bytes]) -> None:
        self.parts = list(parts)
        self.read_bytes = 0

    def readable(self) -> bool:
        return True

    def read(self, size: int = -1) -> bytes:
        chunk = self.parts.pop(0) if self.parts else b""
        self.read_bytes += len(chunk)
        return chunk


# -- the store ---------------------------------------------------------------------------------


def test_s3_files_keep_the_local_stores_semantics(server: S3Server, bucket: str) -> None:
    files = S3Files(bucket, "kb/v1", endpoint=server.endpoint)
    for bad in ("", "/etc/passwd", "../x", "a/../../x", "a//b", "a/./b", "a\\b", "c:x", ".hidden", "x" * 600):
        with pytest.raises(BadPath):
            files.put(bad, b"x", 10)
    assert files.put("models/r1/m.pkl", b"abc", 10) == 3
    assert keys(server, bucket) == ["kb/v1/models/r1/m.pkl"]
    with files.open("models/r1/m.pkl") as handle:
        assert handle.read() == b"abc"
    assert files.size("models/r1/m.pkl") == 3
    assert files.exists("models/r1/m.pkl") is True
    with pytest.raises(TooLarge):
        files.put("models/r1/m.pkl", b"x" * 11, 10)
    with pytest.raises(TooLarge):
        files.put("models/r1/m.pkl", Unsized([b"x" * 6, b"x" * 6]), 10)
    with pytest.raises(TooLarge):
        files.put("models/r1/m.pkl", io.BytesIO(b"x" * 11), 10)
    with files.open("models/r1/m.pkl") as handle:
        assert handle.read() == b"abc"  # the old object stays whole
    assert keys(server, bucket) == ["kb/v1/models/r1/m.pkl"]
    assert files.put("models/r1/m.pkl", Unsized([b"new ", b"model"]), 10) == 9
    handle, size = files.open_sized("models/r1/m.pkl")
    with handle:
        assert (handle.read(), size) == (b"new model", 9)
    for missing in (files.open, files.size, files.open_sized):
        with pytest.raises(FileMissing, match=r"no file models/none\.pkl"):
            missing("models/none.pkl")
    assert files.exists("models/none.pkl") is False
    assert files.delete("models/r1/m.pkl") is True
    assert files.delete("models/r1/m.pkl") is False
    assert keys(server, bucket) == []


def test_a_long_stream_goes_up_in_parts_and_streams_back(server: S3Server, bucket: str) -> None:
    files = S3Files(bucket, endpoint=server.endpoint, multipart_threshold=5 * 1024 * 1024)
    part = bytes(range(256)) * 4096  # 1 MiB
    body = Unsized([part] * 11)
    assert files.put("samples/big.bin", body, 12 * 1024 * 1024) == 11 * len(part)
    assert keys(server, bucket) == ["samples/big.bin"]
    handle, size = files.open_sized("samples/big.bin")
    with handle:
        assert size == 11 * len(part)
        chunks = list(iter(lambda: handle.read(65536), b""))
    assert max(len(c) for c in chunks) == 65536  # read in chunks, not whole
    assert b"".join(chunks) == part * 11
    over = Unsized([part] * 20)
    with pytest.raises(TooLarge):
        files.put("samples/over.bin", over, 12 * 1024 * 1024)
    assert over.read_bytes == 13 * len(part)  # refused as soon as it passed the bound
    assert keys(server, bucket) == ["samples/big.bin"]


def test_bad_settings_are_config_errors_that_name_no_secret(
    server: S3Server, bucket: str, monkeypatch: pytest.MonkeyPatch
) -> None:
    with pytest.raises(ConfigError, match="no credentials in the URL"):
        S3Files(bucket, endpoint=f"http://{ACCESS_KEY}:{SECRET_KEY}@127.0.0.1:1")
    with pytest.raises(ConfigError, match="goes with --files s3://"):
        open_files("/tmp/x", server.endpoint)
    with pytest.raises(
        ConfigError, match=r"s3://no-such-bucket/kb at http://127\.0\.0\.1:\d+ cannot be used"
    ):
        open_files("s3://no-such-bucket/kb", server.endpoint)
    monkeypatch.setenv("AWS_SECRET_ACCESS_KEY", "wrong-secret-value")
    with pytest.raises(ConfigError, match="cannot be used") as refused:
        S3Files(bucket, endpoint=server.endpoint)
    assert "wrong-secret-value" not in str(refused.value)
    assert ACCESS_KEY not in str(refused.value)


def test_a_store_that_cannot_be_reached_is_unavailable(bucket: str) -> None:
    files = S3Files(bucket, endpoint=f"http://127.0.0.1:{free_port()}", check=False)
    with pytest.raises(FilesUnavailable, match=r"could not store m\.pkl"):
        files.put("m.pkl", b"abc", 10)
    with pytest.raises(FilesUnavailable, match=r"could not read m\.pkl"):
        files.open("m.pkl")


# -- the KB's routes on it ---------------------------------------------------------------------


@pytest.fixture
def kb(server: S3Server, bucket: str, tmp_path: Path) -> Iterator[KBServer]:
    kb = KBServer(tmp_path / "kb", "127.0.0.1", 0, files=open_files(f"s3://{bucket}/kb", server.endpoint))
    kb.kb.max_file = 100_000
    kb.start()
    try:
        yield kb
    finally:
        kb.stop()


def test_the_kbs_file_routes_keep_files_in_the_bucket(
    kb: KBServer, server: S3Server, bucket: str, tmp_path: Path
) -> None:
    base = f"{kb.url}/knowledgebase"
    model = tmp_path / "model.pkl"
    model.write_bytes(b"\x80\x04model bytes" * 1000)
    with model.open("rb") as fin:  # Sedna's KBClient.upload_file
        response = requests.post(f"{base}/file/upload", files={"file": fin}, timeout=10)
    assert response.status_code == 200
    assert response.json() == "/file/download?files=model.pkl&name=model.pkl"
    fetched = requests.get(f"{base}/{response.json().lstrip('/')}", timeout=10)
    assert fetched.status_code == 200
    assert fetched.content == model.read_bytes()
    assert fetched.headers["Content-Length"] == str(model.stat().st_size)
    v1 = f"{base}/v1"
    put = httpx.put(f"{v1}/files/models/r1/summer.pkl", content=iter([b"wei", b"ghts"]))  # chunked
    assert put.json() == {
        "path": "models/r1/summer.pkl",
        "url": "/knowledgebase/v1/files/models/r1/summer.pkl",
        "size": 7,
    }
    assert httpx.get(f"{kb.url}{put.json()['url']}").content == b"weights"
    assert keys(server, bucket) == ["kb/model.pkl", "kb/models/r1/summer.pkl"]
    assert not (tmp_path / "kb" / "files").exists()  # nothing on the KB's disk
    missing = requests.get(f"{base}/file/download", params={"files": "nothing.pkl"}, timeout=10)
    assert (missing.status_code, missing.json()) == (404, {"error": "no file nothing.pkl"})
    assert httpx.put(f"{v1}/files/big.bin", content=b"x" * 100_001).status_code == 413
    chunked = httpx.put(f"{v1}/files/chunked.bin", content=iter([b"x" * 60_000, b"x" * 60_000]))
    assert chunked.status_code == 413
    sedna_big = requests.post(f"{base}/file/upload", files={"file": ("big.pkl", b"x" * 200_000)}, timeout=10)
    assert sedna_big.status_code == 413
    bad = requests.post(f"{base}/file/upload", files={"file": ("../evil.pkl", b"x")}, timeout=10)
    assert bad.status_code == 400
    assert keys(server, bucket) == ["kb/model.pkl", "kb/models/r1/summer.pkl"]


def test_a_store_gone_is_503_and_named(bucket: str, tmp_path: Path) -> None:
    files = S3Files(bucket, endpoint=f"http://127.0.0.1:{free_port()}", check=False)
    kb = KBServer(tmp_path / "kb", "127.0.0.1", 0, files=files)
    kb.start()
    try:
        put = httpx.put(f"{kb.url}/knowledgebase/v1/files/m.pkl", content=b"abc")
        assert put.status_code == 503
        assert put.json() == {"error": "the file store could not store m.pkl: EndpointConnectionError"}
        got = httpx.get(f"{kb.url}/knowledgebase/v1/files/m.pkl")
        assert got.status_code == 503
        assert 'lifelong_kb_refused_total{reason="unavailable"} 2.0' in httpx.get(f"{kb.url}/metrics").text
    finally:
        kb.stop()


# -- lifelong kb serve --files s3://... ----------------------------------------------------------


def _serve(args: list[str], env: dict[str, str], log: Path) -> subprocess.Popen[bytes]:
    with log.open("wb") as out:
        return reaper.started(
            subprocess.Popen(
                [sys.executable, "-m", "lifelong", "--log-level", "DEBUG", "kb", "serve", *args],
                stdout=out,
                stderr=subprocess.STDOUT,
                env={**os.environ, **env},
            )
        )


def test_kb_serve_with_files_in_a_bucket(
    server: S3Server, bucket: str, aws_env: dict[str, str], tmp_path: Path
) -> None:
    port = free_port()
    args = ["--port", str(port), "--data-dir", str(tmp_path / "kb")]
    args += ["--files", f"s3://{bucket}/served", "--s3-endpoint", server.endpoint]
    log = tmp_path / "kb.log"
    proc = _serve(args, aws_env, log)
    try:
        url = f"http://127.0.0.1:{port}/knowledgebase"

        def healthy() -> Any:
            assert proc.poll() is None, log.read_text()
            try:
                return httpx.get(f"http://127.0.0.1:{port}/healthz").status_code == 200
            except httpx.TransportError:
                return False

        wait_for(healthy, timeout=30, what="lifelong kb serve")
        response = requests.post(f"{url}/file/upload", files={"file": ("m.pkl", b"model")}, timeout=10)
        assert response.status_code == 200
        assert keys(server, bucket) == ["served/m.pkl"]
        assert requests.get(f"{url}/file/download?files=m.pkl", timeout=10).content == b"model"
    finally:
        proc.terminate()
        proc.wait(10)
    text = log.read_text()
    assert f"s3://{bucket}/served" in text
    assert SECRET_KEY not in text and ACCESS_KEY not in text


def test_kb_serve_refuses_a_bucket_it_cannot_use(
    server: S3Server, aws_env: dict[str, str], tmp_path: Path
) -> None:
    serve = ["kb", "serve", "--port", "0", "--data-dir", str(tmp_path / "kb")]
    serve += ["--files", "s3://no-such-bucket/kb", "--s3-endpoint", server.endpoint]
    done = subprocess.run(
        [sys.executable, "-m", "lifelong", *serve],
        env={**os.environ, **aws_env},
        check=False,
        capture_output=True,
        text=True,
        timeout=60,
    )
    assert done.returncode == 2
    assert "s3://no-such-bucket/kb" in done.stderr and "cannot be used" in done.stderr
    assert "Traceback" not in done.stderr
    assert SECRET_KEY not in done.stderr
