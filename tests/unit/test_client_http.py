"""The client's HTTP side (cli/client/api.py): the bearer token sent and never shown, 401/403 as
one-line errors that say what to do, HTTPS verified with the system's CAs or the given CA, and
--request-timeout.

The GM API in this branch is not yet the WSGI app (another part of issue 12 moves it), so a small
WSGI app of this file stands in for it: it speaks the GM API's answers and error format
(``{"error": ..., "reason": ...}``, 401 with ``WWW-Authenticate: Bearer``, 403 for a read token on
a write), and is called in-process through ``httpx.WSGITransport`` or served on a loopback socket
(wsgiref, with TLS from a CA and certificate that openssl makes) for the commands.
"""

from __future__ import annotations

import contextlib
import json
import logging
import shutil
import socket
import ssl
import subprocess
import threading
from collections.abc import Callable, Iterable, Iterator
from pathlib import Path
from typing import Any
from wsgiref.simple_server import WSGIRequestHandler, WSGIServer, make_server

import httpx
import pytest
import yaml
from harness.waiting import free_port

from lifelong.__main__ import main
from lifelong.client.api import Client, NotFound, ServerError, ServerUnreachable, Unauthorized
from lifelong.common.errors import ValidationError

WRITE_TOKEN = "write-token-7f3a9c"
READ_TOKEN = "read-token-0b12de"
TOKENS = {WRITE_TOKEN: "write", READ_TOKEN: "read"}

StartResponse = Callable[[str, list[tuple[str, str]]], Any]


class TokenAPI:
    """A stand-in of the GM API with bearer tokens; it records every request it answers."""

    def __init__(self) -> None:
        self.requests: list[dict[str, str]] = []

    def __call__(self, environ: dict[str, Any], start_response: StartResponse) -> Iterable[bytes]:
        method, path = environ["REQUEST_METHOD"], environ["PATH_INFO"]
        self.requests.append({"method": method, "path": path, "auth": environ.get("HTTP_AUTHORIZATION", "")})

        def answer(status: str, body: Any, *headers: tuple[str, str]) -> list[bytes]:
            start_response(status, [("Content-Type", "application/json"), *headers])
            return [json.dumps(body).encode()]

        auth = environ.get("HTTP_AUTHORIZATION", "")
        token = auth.removeprefix("Bearer ") if auth.startswith("Bearer ") else ""
        if token not in TOKENS:
            return answer(
                "401 Unauthorized",
                {"error": f"unknown bearer token {token}", "reason": "Unauthorized"},
                ("WWW-Authenticate", "Bearer"),
            )
        if TOKENS[token] == "read" and method != "GET":
            return answer("403 Forbidden", {"error": "the read role may only GET", "reason": "Forbidden"})
        if path == "/api/v1/LifelongLearningJob":
            return answer("200 OK", {"items": []})
        if path == "/api/v1/nodes":
            return answer("200 OK", {"items": []})
        if path == "/api/v1/apply":
            return answer("400 Bad Request", {"error": "spec.url: required", "reason": "ValidationError"})
        if path == "/api/v1/echo":
            return answer("500 Internal Server Error", {"error": f"boom with {auth}", "reason": "Internal"})
        if path == "/api/v1/html":
            start_response("200 OK", [("Content-Type", "text/html")])
            return [b"<html>proxy</html>"]
        return answer("404 Not Found", {"error": f"{path} not found", "reason": "NotFound"})


def in_process(api: TokenAPI, token: str | None) -> Client:
    return Client("http://gm.test", token=token, transport=httpx.WSGITransport(app=api))


def test_the_token_is_sent_as_a_bearer_header_and_only_when_given() -> None:
    api = TokenAPI()
    with in_process(api, WRITE_TOKEN) as client:
        assert client.nodes() == []
        assert client.list("LifelongLearningJob", "default") == []
    with in_process(api, None) as client, pytest.raises(Unauthorized):
        client.nodes()
    assert [r["auth"] for r in api.requests] == [f"Bearer {WRITE_TOKEN}", f"Bearer {WRITE_TOKEN}", ""]


def test_answers_map_to_errors_and_never_carry_the_token() -> None:
    api = TokenAPI()
    with in_process(api, "wrong-token-555") as client, pytest.raises(Unauthorized) as err:
        client.nodes()
    assert str(err.value) == (
        "the GM at http://gm.test refused the token (401): set LIFELONG_TOKEN or the user's token "
        "(or token-file) in the config file to a token the GM's token file lists"
    )
    with in_process(api, None) as client, pytest.raises(Unauthorized) as err:
        client.nodes()
    assert str(err.value).startswith("the GM at http://gm.test asks for a token (401): set LIFELONG_TOKEN")
    with in_process(api, READ_TOKEN) as client:
        with pytest.raises(Unauthorized) as err:
            client.delete("Dataset", "default", "ds1")
        assert str(err.value) == (
            "the GM at http://gm.test refused this request (403): the token's role may only read; "
            "use a token with the write role"
        )
        with pytest.raises(NotFound, match="/api/v1/Dataset/default/ds1 not found"):
            client.get("Dataset", "default", "ds1")
        with pytest.raises(ServerError) as server_err:
            client.request("GET", "/api/v1/echo")  # a server that echoes the header back
        assert str(server_err.value) == "the GM refused (500): boom with Bearer REDACTED"
        with pytest.raises(ServerError, match="answered 200 with a body that is not JSON"):
            client.request("GET", "/api/v1/html")
        assert READ_TOKEN not in repr(client)
    with in_process(api, WRITE_TOKEN) as client, pytest.raises(ValidationError, match=r"spec\.url: required"):
        client.apply({"kind": "Dataset"})


class QuietHandler(WSGIRequestHandler):
    def log_message(self, format: str, *args: Any) -> None:
        pass


class QuietServer(WSGIServer):
    def handle_error(self, request: Any, client_address: Any) -> None:
        pass  # a client that refused our certificate: expected here


@contextlib.contextmanager
def serve(context: ssl.SSLContext | None = None) -> Iterator[tuple[str, TokenAPI]]:
    """The stand-in API on a loopback socket, over TLS with ``context``."""
    api = TokenAPI()
    server = make_server("127.0.0.1", 0, api, server_class=QuietServer, handler_class=QuietHandler)
    if context is not None:
        server.socket = context.wrap_socket(server.socket, server_side=True)
    thread = threading.Thread(target=server.serve_forever, kwargs={"poll_interval": 0.05}, daemon=True)
    thread.start()
    try:
        yield f"{'https' if context else 'http'}://127.0.0.1:{server.server_port}", api
    finally:
        server.shutdown()
        server.server_close()
        thread.join(10)


@pytest.fixture
def served() -> Iterator[tuple[str, TokenAPI]]:
    with serve() as found:
        yield found


def write_config(path: Path, server: str, token: str | None, **cluster: str) -> Path:
    user = {} if token is None else {"token": token}
    path.write_text(
        yaml.safe_dump(
            {
                "clusters": [{"name": "gm", "cluster": {"server": server, **cluster}}],
                "users": [{"name": "me", "user": user}],
                "contexts": [{"name": "here", "context": {"cluster": "gm", "user": "me"}}],
                "current-context": "here",
            }
        )
    )
    return path


def run(capsys: pytest.CaptureFixture[str], *argv: str) -> tuple[int, str, str]:
    code = main(list(argv))
    out, err = capsys.readouterr()
    return code, out, err


@pytest.fixture(autouse=True)
def clean_env(monkeypatch: pytest.MonkeyPatch, tmp_path: Path) -> None:
    monkeypatch.delenv("LIFELONG_CONFIG", raising=False)
    monkeypatch.delenv("LIFELONG_TOKEN", raising=False)
    monkeypatch.setenv("HOME", str(tmp_path / "home"))


def test_commands_send_the_config_token_and_never_print_it(
    served: tuple[str, TokenAPI],
    tmp_path: Path,
    capsys: pytest.CaptureFixture[str],
    caplog: pytest.LogCaptureFixture,
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    server, api = served
    caplog.set_level(logging.DEBUG)  # httpx and httpcore at their most verbose
    config = write_config(tmp_path / "config", server, READ_TOKEN)
    code, out, err = run(capsys, "--log-level", "DEBUG", "get", "ll", "--config", str(config))
    assert (code, out, err) == (0, "", "No resources found in default namespace.\n")
    assert api.requests[-1]["auth"] == f"Bearer {READ_TOKEN}"

    code, out, err = run(capsys, "delete", "ll", "job1", "--config", str(config))
    assert (code, out) == (1, "")
    assert err == (
        f"error: the GM at {server} refused this request (403): the token's role may only read; "
        "use a token with the write role\n"
    )
    monkeypatch.setenv("LIFELONG_TOKEN", "not-a-known-token-99")
    code, _, err = run(capsys, "nodes", "--config", str(config))
    assert code == 1 and err.startswith(f"error: the GM at {server} refused the token (401): ")
    monkeypatch.setenv("LIFELONG_TOKEN", WRITE_TOKEN)
    code, _, err = run(capsys, "delete", "ll", "job1", "--config", str(config))
    assert (code, err) == (
        1,
        "Error from server (NotFound): /api/v1/LifelongLearningJob/default/job1 not found\n",
    )
    assert api.requests[-1]["auth"] == f"Bearer {WRITE_TOKEN}"
    monkeypatch.delenv("LIFELONG_TOKEN")
    code, _, err = run(capsys, "get", "ll", "--server", server)  # no config file, no token
    assert code == 1 and err.startswith(f"error: the GM at {server} asks for a token (401): ")

    logged = "\n".join(r.getMessage() for r in caplog.records)
    assert "GET" in logged  # httpx's debug log was captured, and no token is in it
    for token in (READ_TOKEN, WRITE_TOKEN, "not-a-known-token-99"):
        assert token not in logged and token not in caplog.text


def _openssl(*args: str, cwd: Path) -> None:
    subprocess.run(["openssl", *args], cwd=cwd, check=True, capture_output=True)


@pytest.fixture(scope="module")
def pki(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """A CA and a certificate for 127.0.0.1 it signs, made by openssl."""
    if shutil.which("openssl") is None:
        pytest.fail("openssl is needed to make the test certificates")
    d = tmp_path_factory.mktemp("pki")
    _openssl("req", "-x509", "-newkey", "rsa:2048", "-nodes", "-keyout", "ca.key", "-out", "ca.crt",
             "-days", "2", "-subj", "/CN=lifelong test CA", cwd=d)  # fmt: skip
    _openssl("req", "-newkey", "rsa:2048", "-nodes", "-keyout", "gm.key", "-out", "gm.csr",
             "-subj", "/CN=127.0.0.1", cwd=d)  # fmt: skip
    (d / "san.ext").write_text("subjectAltName=IP:127.0.0.1\n")
    _openssl("x509", "-req", "-in", "gm.csr", "-CA", "ca.crt", "-CAkey", "ca.key", "-CAcreateserial",
             "-out", "gm.crt", "-days", "2", "-extfile", "san.ext", cwd=d)  # fmt: skip
    return d


@pytest.fixture
def https_served(pki: Path) -> Iterator[tuple[str, TokenAPI]]:
    context = ssl.create_default_context(ssl.Purpose.CLIENT_AUTH)
    context.load_cert_chain(pki / "gm.crt", pki / "gm.key")
    with serve(context) as found:
        yield found


def test_https_is_verified_with_the_given_ca_and_refused_without_it(
    https_served: tuple[str, TokenAPI], pki: Path, tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    server, api = https_served
    assert server.startswith("https://")
    with Client(server, token=WRITE_TOKEN, ca_file=str(pki / "ca.crt")) as client:
        assert client.nodes() == []
    with Client(server, token=WRITE_TOKEN, ca_data=(pki / "ca.crt").read_text()) as client:
        assert client.nodes() == []
    assert api.requests[-1]["auth"] == f"Bearer {WRITE_TOKEN}"  # over TLS
    seen = len(api.requests)
    with Client(server, token=WRITE_TOKEN) as client, pytest.raises(ServerUnreachable) as err:
        client.nodes()  # the system's CAs do not know the test CA
    assert "CERTIFICATE_VERIFY_FAILED" in str(err.value) and "certificate-authority" in str(err.value)
    assert WRITE_TOKEN not in str(err.value)
    assert len(api.requests) == seen  # nothing, the token least of all, was sent

    config = write_config(
        tmp_path / "config", server, WRITE_TOKEN, **{"certificate-authority": str(pki / "ca.crt")}
    )
    code, _, err_text = run(capsys, "nodes", "--config", str(config))
    assert (code, err_text) == (0, "No nodes have said hello to this GM yet.\n")
    config = write_config(tmp_path / "config", server, WRITE_TOKEN)
    code, _, err_text = run(capsys, "nodes", "--config", str(config))
    assert code == 1 and err_text.startswith(f"error: cannot reach the GM at {server}: ")
    assert "CERTIFICATE_VERIFY_FAILED" in err_text and len(err_text.splitlines()) == 1


def test_a_gm_that_does_not_answer_ends_after_the_request_timeout(capsys: pytest.CaptureFixture[str]) -> None:
    with socket.socket() as silent:  # accepts connections (the kernel does) and never answers
        silent.bind(("127.0.0.1", 0))
        silent.listen(8)
        server = f"http://127.0.0.1:{silent.getsockname()[1]}"
        code, out, err = run(capsys, "get", "ll", "--request-timeout", "0.3", "--server", server)
    assert (code, out) == (1, "")
    assert err == f"error: the GM at {server} did not answer within 0.3 s (--request-timeout)\n"


def test_an_unreachable_gm_is_named(capsys: pytest.CaptureFixture[str]) -> None:
    server = f"http://127.0.0.1:{free_port()}"
    code, _, err = run(capsys, "nodes", "--server", server)
    assert (code, err) == (1, f"error: cannot reach the GM at {server}: [Errno 111] Connection refused\n")
    code, _, err = run(capsys, "nodes", "--server", "ftp://127.0.0.1:1")
    assert code == 1 and "must be an http:// or https:// URL" in err
