"""The GM API's HTTP limits and authentication, against its real server (docs/reliability.md).

Regression tests for what a fault and attack run measured on the GM API (``cloud/api_server.py``
on ``lifelong.common.httpserver.TLSWSGIServer``): a ``Content-Length: -1`` made it read and
parse a 50 MB body, 600 half-sent requests kept 131 threads alive, and any local user could
delete any resource. Then the API over TLS, and hypothesis fuzzing of whole requests (method,
path, ``Content-Length``, ``Authorization``, body bytes) in-process and of header lines over a
real socket: nothing raises out, no 500 for a client's mistake, no traceback logged.
"""

from __future__ import annotations

import contextlib
import logging
import os
import re
import shutil
import socket
import ssl
import subprocess
import threading
import time
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import httpx
import pytest
from harness.gm_inproc import DATASET, NoBus
from harness.waiting import wait_for
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from lifelong.cloud.api_server import ApiServer
from lifelong.cloud.service import GMService, GMSettings
from lifelong.common.httpserver import HTTPLimits

pytestmark = pytest.mark.faults

EXAMPLES = int(os.environ.get("LIFELONG_FAULT_EXAMPLES", "200"))
FUZZ = settings(
    max_examples=EXAMPLES,
    deadline=None,
    suppress_health_check=[HealthCheck.function_scoped_fixture, HealthCheck.too_slow],
)
WRITER, READER = "w-fedcba9876543210", "r-fedcba9876543210"


def gm(tmp_path: Path, **extra: Any) -> GMService:
    settings = GMSettings(
        broker="mqtt://127.0.0.1:1", store=f"sqlite:{tmp_path / 's.db'}", api_port=0, prefix="c/v1", **extra
    )
    service = GMService(settings, bus=NoBus())
    service.start_controllers()
    return service


def tokens(tmp_path: Path) -> str:
    path = tmp_path / "tokens.csv"
    path.write_text(f"{WRITER},write,admin\n{READER},read,viewer\n")
    return str(path)


@pytest.fixture
def open_gm(tmp_path: Path) -> Iterator[GMService]:
    service = gm(tmp_path)
    yield service
    service.stop()


def read_answer(s: socket.socket) -> bytes:
    """One whole HTTP answer from ``s`` (head and ``Content-Length`` bytes of body), or what came
    before the server closed or reset the connection or went quiet."""
    data = b""
    with contextlib.suppress(OSError):  # a timeout, or the server closed or reset it
        while chunk := s.recv(65536):
            data += chunk
            head, sep, body = data.partition(b"\r\n\r\n")
            lengths = [ln for ln in head.lower().split(b"\r\n") if ln.startswith(b"content-length:")]
            if sep and lengths and len(body) >= int(lengths[0].split(b":")[1]):
                break
    return data


def answer_to(port: int, head: bytes, timeout: float = 10.0) -> bytes:
    """What the server answers to ``head`` (and no body)."""
    with socket.create_connection(("127.0.0.1", port), timeout=timeout) as s:
        s.sendall(head)
        return read_answer(s)


def test_a_negative_content_length_is_answered_400_before_a_50_mb_body(open_gm: GMService) -> None:
    port = open_gm.api_port
    assert port is not None
    head = b"POST /api/v1/apply HTTP/1.1\r\nHost: x\r\nContent-Length: -1\r\n\r\n"
    with socket.create_connection(("127.0.0.1", port), timeout=10) as s:
        s.sendall(head)
        first = read_answer(s)  # before a byte of the body: the old server waited for its end here
        assert first.startswith(b"HTTP/1.1 400"), first[:200]
        assert b'"reason":"BadRequest"' in first
        body = b'{"kind": "Dataset", "pad": "' + b"x" * (50 << 20) + b'"}'
        with contextlib.suppress(OSError):  # the server closed the connection: the body is not read
            s.sendall(body)
    assert open_gm.store.list("Dataset") == []


def test_an_oversized_body_is_refused_413_from_its_content_length_without_reading_it(
    open_gm: GMService,
) -> None:
    port = open_gm.api_port
    assert port is not None
    head = b"POST /api/v1/apply HTTP/1.1\r\nHost: x\r\nContent-Length: 52428800\r\n\r\n"
    answer = answer_to(port, head)  # no body sent at all: the answer comes anyway
    assert answer.startswith(b"HTTP/1.1 413"), answer[:200]
    assert b'"reason":"RequestEntityTooLarge"' in answer


def test_600_half_sent_requests_hold_a_bounded_number_of_threads_and_the_api_recovers(
    open_gm: GMService,
) -> None:
    limits = HTTPLimits(idle_timeout=1, connections=16, threads=4)
    server = ApiServer(open_gm.api.app.api if open_gm.api else None, port=0, limits=limits)  # type: ignore[arg-type]
    server.start()
    socks: list[socket.socket] = []
    try:
        before = threading.active_count()
        for _ in range(600):
            s = socket.socket()
            s.setblocking(False)
            with contextlib.suppress(BlockingIOError):
                s.connect(("127.0.0.1", server.port))
            socks.append(s)
        for s in socks:
            with contextlib.suppress(OSError):  # not accepted yet, or already closed
                s.send(b"POST /api/v1/apply HTTP/1.1\r\nHost: x\r\nContent-Le")
        peak = before
        deadline = time.monotonic() + 120

        def good_request_answered() -> bool:
            nonlocal peak
            peak = max(peak, threading.active_count())
            try:
                return httpx.get(f"http://127.0.0.1:{server.port}/api/v1/nodes", timeout=2).status_code == 200
            except httpx.HTTPError:
                return time.monotonic() > deadline

        wait_for(good_request_answered, timeout=130, what="a good request answered")
        assert time.monotonic() <= deadline, "the API did not recover within 120 s"
        assert peak <= before, f"threads grew from {before} to {peak}"  # the pool was started already
    finally:
        for s in socks:
            s.close()
        server.stop()


def test_without_a_token_no_local_user_can_delete(tmp_path: Path) -> None:
    service = gm(tmp_path, token_file=tokens(tmp_path))
    try:
        url = f"http://127.0.0.1:{service.api_port}"
        auth = {"Authorization": f"Bearer {WRITER}"}
        assert httpx.post(f"{url}/api/v1/apply", json=DATASET, headers=auth).status_code == 200
        for headers in ({}, {"Authorization": f"Bearer {READER}"}, {"Authorization": "Bearer guess"}):
            answer = httpx.delete(f"{url}/api/v1/Dataset/default/ds1", headers=headers)
            assert answer.status_code in (401, 403), answer.text
        assert service.store.get("Dataset", "default", "ds1") is not None
    finally:
        service.stop()


def make_certificate(folder: Path) -> tuple[Path, Path]:
    cert, key = folder / "api.crt", folder / "api.key"
    subprocess.run(
        [
            "openssl",
            "req",
            "-x509",
            "-newkey",
            "rsa:2048",
            "-nodes",
            "-days",
            "2",
            "-subj",
            "/CN=localhost",
            "-addext",
            "subjectAltName=IP:127.0.0.1,DNS:localhost",
            "-keyout",
            str(key),
            "-out",
            str(cert),
        ],
        check=True,
        capture_output=True,
    )
    return cert, key


def test_the_api_serves_https_with_its_certificate_and_tokens(tmp_path: Path) -> None:
    cert, key = make_certificate(tmp_path)
    service = gm(tmp_path, token_file=tokens(tmp_path), api_tls_cert=str(cert), api_tls_key=str(key))
    try:
        assert service.api is not None and service.api.scheme == "https"
        url = f"https://127.0.0.1:{service.api_port}"
        with httpx.Client(verify=ssl.create_default_context(cafile=str(cert))) as c:
            answer = c.get(f"{url}/api/v1/nodes", headers={"Authorization": f"Bearer {READER}"})
            assert answer.status_code == 200 and answer.json() == {"items": []}
            assert c.get(f"{url}/api/v1/nodes").status_code == 401
        with pytest.raises(httpx.ConnectError):  # a client that does not trust it refuses it
            httpx.get(f"{url}/healthz")
        plain = answer_to(service.api_port or 0, b"GET /healthz HTTP/1.1\r\nHost: x\r\n\r\n", timeout=5)
        assert not plain.startswith(b"HTTP/1.1 200")  # plain HTTP gets no answer from the API
    finally:
        service.stop()


SECURITY_DOC = Path(__file__).resolve().parents[2] / "docs" / "security.md"


def run_doc_block(marker: str, cwd: Path) -> None:
    """Each line of the fenced block after ``<!-- marker -->`` in docs/security.md, as written."""
    found = re.findall(rf"<!-- {re.escape(marker)} -->\s*```\w*\n(.*?)```", SECURITY_DOC.read_text(), re.S)
    assert len(found) == 1, f"docs/security.md must keep one <!-- {marker} --> block"
    for line in found[0].strip().splitlines():
        subprocess.run(["bash", "-euc", line], cwd=cwd, check=True, capture_output=True)


def test_the_gm_api_tls_commands_of_the_security_doc_give_a_working_https_api(tmp_path: Path) -> None:
    assert shutil.which("openssl"), "the docs' commands need openssl"
    pki = tmp_path / "pki"
    pki.mkdir()
    run_doc_block("commands: tls-setup", pki)
    run_doc_block("commands: gm-api-tls", pki)
    assert (pki / "gm-tokens.csv").stat().st_mode & 0o077 == 0
    (write, _, _), (read, _, _) = (
        line.split(",") for line in (pki / "gm-tokens.csv").read_text().splitlines()
    )
    service = gm(
        tmp_path,
        token_file=str(pki / "gm-tokens.csv"),
        api_tls_cert=str(pki / "api.crt"),
        api_tls_key=str(pki / "api.key"),
    )
    try:
        url = f"https://localhost:{service.api_port}/api/v1"
        with httpx.Client(verify=ssl.create_default_context(cafile=str(pki / "ca.crt"))) as c:
            assert c.post(f"{url}/apply", json=DATASET, headers=bearer(write)).status_code == 200
            assert c.get(f"{url}/Dataset/default/ds1", headers=bearer(read)).status_code == 200
            assert c.delete(f"{url}/Dataset/default/ds1", headers=bearer(read)).status_code == 403
            assert c.delete(f"{url}/Dataset/default/ds1", headers=bearer(write)).status_code == 200
    finally:
        service.stop()


def bearer(token: str) -> dict[str, str]:
    return {"Authorization": f"Bearer {token}"}


# -- fuzzing -------------------------------------------------------------------------------------

methods = st.sampled_from(["GET", "POST", "DELETE", "PUT", "PATCH", "HEAD", "OPTIONS", "get", "X"])
paths = st.one_of(
    st.sampled_from(
        [
            "/",
            "/healthz",
            "/metrics",
            "/api/v1/apply",
            "/api/v1/nodes",
            "/api/v1/nodes/node-a",
            "/api/v1/Dataset",
            "/api/v1/Dataset/default/ds1",
            "/api/v1/describe/Dataset/default/ds1",
            "/api/v1/Worker/default/w/log",
            "/api/v1/LifelongLearningJob/default/j",
        ]
    ),
    st.lists(st.text(min_size=0, max_size=12), max_size=7).map(lambda p: "/" + "/".join(p)),
)
lengths = st.one_of(
    st.none(),
    st.integers(-(2**70), 2**70).map(str),
    st.sampled_from(["", "-0", "+1", " 1", "1e3", "0x10", "١٢", "NaN"]),
    st.text(max_size=8),
)
authorizations = st.one_of(
    st.none(),
    st.sampled_from([f"Bearer {WRITER}", f"Bearer {READER}", "Bearer", "bearer  " + WRITER, WRITER]),
    st.text(max_size=40),
)
bodies = st.one_of(
    st.binary(max_size=300),
    st.sampled_from([b"null", b"[]", b"{}", b'{"kind": "Dataset"}', b'{"kind": "Worker"}']),
    st.just(b'{"apiVersion": "sedna.io/v1alpha1", "kind": "Dataset", "metadata": {"name": "d"}, "spec": {}}'),
)


class ReadOnce:
    def __init__(self, data: bytes) -> None:
        self.data = data

    def read(self, size: int = -1) -> bytes:
        out, self.data = (self.data, b"") if size < 0 else (self.data[:size], self.data[size:])
        return out


@pytest.fixture
def guarded_gm(tmp_path: Path) -> Iterator[GMService]:
    service = gm(tmp_path, token_file=tokens(tmp_path))
    yield service
    service.stop()


@FUZZ
@given(request=st.tuples(methods, paths, lengths, authorizations, bodies))
def test_fuzzed_requests_get_a_json_answer_never_a_500_or_a_traceback(
    guarded_gm: GMService,
    caplog: pytest.LogCaptureFixture,
    request: tuple[str, str, str | None, str | None, bytes],
) -> None:
    assert guarded_gm.api is not None
    method, path, length, authorization, body = request
    environ: dict[str, Any] = {
        "REQUEST_METHOD": method,
        "PATH_INFO": path,
        "QUERY_STRING": "",
        "wsgi.input": ReadOnce(body),
    }
    if length is not None:
        environ["CONTENT_LENGTH"] = length
    if authorization is not None:
        environ["HTTP_AUTHORIZATION"] = authorization
    statuses: list[str] = []
    caplog.clear()
    with caplog.at_level(logging.DEBUG):
        answer = b"".join(guarded_gm.api.app(environ, lambda status, headers: statuses.append(status)))
    status = int(statuses[0].split()[0])
    assert status < 500 or status in (502, 504), (status, answer)
    if status >= 400:
        assert b'"error"' in answer and b'"reason"' in answer
    assert not [r for r in caplog.records if r.exc_info or r.levelno >= logging.ERROR]
    assert WRITER.encode() not in answer and READER.encode() not in answer


header_names = st.text(
    st.characters(min_codepoint=33, max_codepoint=126, exclude_characters=":"), min_size=1, max_size=20
)
header_values = st.binary(max_size=60).filter(lambda b: b"\r" not in b and b"\n" not in b)


@settings(
    max_examples=max(20, EXAMPLES // 4),
    deadline=None,
    suppress_health_check=[HealthCheck.function_scoped_fixture],
)
@given(headers=st.lists(st.tuples(header_names, header_values), max_size=6), length=lengths)
def test_fuzzed_header_lines_over_a_socket_get_an_answer_and_the_server_stays_up(
    guarded_gm: GMService,
    caplog: pytest.LogCaptureFixture,
    headers: list[tuple[str, bytes]],
    length: str | None,
) -> None:
    port = guarded_gm.api_port or 0
    lines = b"".join(name.encode() + b": " + value + b"\r\n" for name, value in headers)
    if length is not None:
        lines += b"Content-Length: " + length.encode("utf-8", "replace") + b"\r\n"
    caplog.clear()
    with caplog.at_level(logging.WARNING):
        answer = answer_to(
            port, b"POST /api/v1/apply HTTP/1.1\r\nHost: x\r\n" + lines + b"Connection: close\r\n\r\n", 5
        )
    assert answer.startswith(b"HTTP/1.1 "), answer[:100]
    assert not answer.startswith(b"HTTP/1.1 5"), answer[:300]
    assert not [r for r in caplog.records if r.exc_info or r.levelno >= logging.ERROR]
    assert httpx.get(f"http://127.0.0.1:{port}/healthz", timeout=5).status_code == 200
