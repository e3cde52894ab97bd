"""The GM API's HTTP layer: bearer tokens and roles, the request checks, its settings.

In-process through httpx's WSGI transport (``GMApiApp`` is the WSGI application the server
runs); the server's own limits and TLS are tested over real sockets in
``tests/faults/test_http_limits.py``. The GM's bus is a stand-in that sends nothing.
"""

from __future__ import annotations

import logging
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import httpx
import pytest
from harness.gm_inproc import DATASET, NoBus

from lifelong.cloud.api_server import GMApiApp, load_tokens
from lifelong.cloud.service import GMService, GMSettings
from lifelong.common.errors import ConfigError

WRITER, READER = "w-0123456789abcdef", "r-0123456789abcdef"


def token_file(tmp_path: Path) -> Path:
    path = tmp_path / "tokens.csv"
    path.write_text(f"# token,role,name\n\n{WRITER},write,admin\n{READER},read,viewer\n")
    return path


@pytest.fixture
def svc(tmp_path: Path) -> Iterator[GMService]:
    settings = GMSettings(
        broker="mqtt://127.0.0.1:1",
        store=f"sqlite:{tmp_path / 's.db'}",
        api_port=0,
        prefix="c/v1",
        token_file=str(token_file(tmp_path)),
    )
    service = GMService(settings, bus=NoBus())
    service.start_controllers()
    yield service
    service.stop()


@pytest.fixture
def client(svc: GMService) -> Iterator[httpx.Client]:
    assert svc.api is not None
    with httpx.Client(transport=httpx.WSGITransport(app=svc.api.app), base_url="http://gm") as c:
        yield c


def bearer(token: str) -> dict[str, str]:
    return {"Authorization": f"Bearer {token}"}


def test_without_a_known_token_every_resource_request_is_401_and_nothing_changes(
    svc: GMService, client: httpx.Client
) -> None:
    assert client.post("/api/v1/apply", json=DATASET, headers=bearer(WRITER)).status_code == 200
    for headers in ({}, bearer("nope"), {"Authorization": WRITER}, {"Authorization": f"Basic {WRITER}"}):
        for method, path in (("GET", "/api/v1/Dataset"), ("DELETE", "/api/v1/Dataset/default/ds1")):
            answer = client.request(method, path, headers=headers)
            assert answer.status_code == 401, (method, headers)
            assert answer.headers["WWW-Authenticate"] == "Bearer"
            assert answer.json()["reason"] == "Unauthorized"
            assert WRITER not in answer.text
    assert svc.store.get("Dataset", "default", "ds1") is not None


def test_a_read_token_reads_and_may_not_write(svc: GMService, client: httpx.Client) -> None:
    assert client.post("/api/v1/apply", json=DATASET, headers=bearer(WRITER)).status_code == 200
    assert client.get("/api/v1/Dataset/default/ds1", headers=bearer(READER)).status_code == 200
    assert client.get("/api/v1/describe/Dataset/default/ds1", headers=bearer(READER)).status_code == 200
    for method, path in (("DELETE", "/api/v1/Dataset/default/ds1"), ("POST", "/api/v1/apply")):
        answer = client.request(method, path, headers=bearer(READER), json=DATASET)
        assert answer.status_code == 403 and answer.json()["reason"] == "Forbidden"
        assert "viewer" in answer.json()["error"] and READER not in answer.text
    assert svc.store.get("Dataset", "default", "ds1") is not None
    assert client.delete("/api/v1/Dataset/default/ds1", headers=bearer(WRITER)).status_code == 200


def test_the_probes_and_metrics_need_no_token(client: httpx.Client) -> None:
    assert client.get("/healthz").text == "ok\n"
    assert client.get("/metrics").status_code == 200


@pytest.mark.parametrize(
    ("length", "status", "reason"),
    [("-1", 400, "BadRequest"), ("+5", 400, "BadRequest"), ("x", 400, "BadRequest"), ("99999999", 413, None)],
)
def test_a_bad_or_oversized_content_length_is_refused_before_the_body(
    svc: GMService, length: str, status: int, reason: str | None
) -> None:
    assert svc.api is not None
    environ = {
        "REQUEST_METHOD": "POST",
        "PATH_INFO": "/api/v1/apply",
        "CONTENT_LENGTH": length,
        "HTTP_AUTHORIZATION": f"Bearer {WRITER}",
        "wsgi.input": Unreadable(),
    }
    seen: list[str] = []
    body = b"".join(svc.api.app(environ, lambda s, h: seen.append(s)))
    assert seen[0].startswith(str(status)), seen
    assert reason is None or reason.encode() in body
    assert b'"error"' in body


class Unreadable:
    def read(self, *args: Any) -> bytes:
        raise AssertionError("the body was read")


def test_unknown_methods_get_405_as_json(client: httpx.Client) -> None:
    answer = client.request("PUT", "/api/v1/apply", headers=bearer(WRITER))
    assert answer.status_code == 405 and answer.json()["reason"] == "MethodNotAllowed"


def test_an_open_api_stays_open(tmp_path: Path) -> None:
    settings = GMSettings(broker="mqtt://127.0.0.1:1", store=f"sqlite:{tmp_path / 's.db'}", api_port=0)
    service = GMService(settings, bus=NoBus())
    try:
        assert service.api is not None
        app: GMApiApp = service.api.app
        with httpx.Client(transport=httpx.WSGITransport(app=app), base_url="http://gm") as c:
            assert c.get("/api/v1/nodes").status_code == 200
    finally:
        service.stop()


@pytest.mark.parametrize(
    ("text", "message"),
    [
        ("abc,admin,x\n", "line 1: the role must be read or write"),
        ("# c\nabc,write\n", "line 2: expected TOKEN,ROLE,NAME"),
        ("a b,write,x\n", "line 1: the token has a space"),
        ("abc,read,x\nabc,write,y\n", "line 2: the same token"),
        ("# nothing\n", "holds no token"),
    ],
)
def test_a_malformed_token_file_is_a_startup_error_naming_the_line_not_the_token(
    tmp_path: Path, text: str, message: str
) -> None:
    path = tmp_path / "t.csv"
    path.write_text(text)
    with pytest.raises(ConfigError) as err:
        load_tokens(str(path))
    assert message in str(err.value)
    assert "abc" not in str(err.value) and "a b" not in str(err.value)


def test_an_open_api_on_a_non_loopback_address_is_refused_unless_allowed(
    tmp_path: Path, caplog: pytest.LogCaptureFixture
) -> None:
    base = {"broker": "mqtt://127.0.0.1:1", "store": f"sqlite:{tmp_path / 's.db'}", "api_port": 0}
    with pytest.raises(ConfigError, match="--token-file"):
        GMService(GMSettings(**base, api_host="0.0.0.0"), bus=NoBus())
    with caplog.at_level(logging.WARNING):
        service = GMService(GMSettings(**base, api_host="0.0.0.0", api_allow_anonymous=True), bus=NoBus())
    service.stop()
    assert "takes no token (--api-allow-anonymous)" in caplog.text
    service = GMService(
        GMSettings(**base, api_host="0.0.0.0", token_file=str(token_file(tmp_path))), bus=NoBus()
    )
    service.stop()
    with pytest.raises(ConfigError, match="go together"):
        GMService(GMSettings(**base, api_tls_cert=str(tmp_path / "c.pem")), bus=NoBus())
