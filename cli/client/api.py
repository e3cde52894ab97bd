"""The HTTP client of the GM's API (``/api/v1/...``), and the errors its answers map to.

Who calls it: the client's sub-commands (``lifelong.client.commands``), ``lifelong demo`` and
tests. It speaks only HTTP and JSON (stdlib ``urllib``): a 404 becomes :class:`NotFound`, a
400 ``ValidationError`` a :class:`~lifelong.common.errors.ValidationError`, any other refusal
:class:`ServerError`, and a GM that does not answer :class:`ServerUnreachable`.
"""

from __future__ import annotations

import builtins
import json
import urllib.error
import urllib.request
from typing import Any
from urllib.parse import quote

from lifelong.common.errors import LifelongError, ValidationError

DEFAULT_SERVER = "http://127.0.0.1:9300"


class NotFound(LifelongError):
    """The GM answered 404: no such resource."""

    exit_code = 1


class ServerUnreachable(LifelongError):
    exit_code = 1


class ServerError(LifelongError):
    exit_code = 1


class Client:
    def __init__(self, server: str, timeout: float = 30.0) -> None:
        self.server = server.rstrip("/")
        self.timeout = timeout

    def request(self, method: str, path: str, body: Any = None) -> Any:
        data = None if body is None else json.dumps(body).encode()
        req = urllib.request.Request(self.server + path, data=data, method=method)
        if data is not None:
            req.add_header("Content-Type", "application/json")
        try:
            with urllib.request.urlopen(req, timeout=self.timeout) as resp:
                return json.loads(resp.read() or b"null")
        except urllib.error.HTTPError as exc:
            try:
                err = json.loads(exc.read() or b"{}")
            except ValueError:
                err = {}
            message = err.get("error") or f"HTTP {exc.code}"
            reason = err.get("reason", "")
            if exc.code == 404:
                raise NotFound(message) from None
            if exc.code == 400 and reason == "ValidationError":
                raise ValidationError([("", message)]) from None
            raise ServerError(f"the GM refused ({exc.code}): {message}") from None
        except (urllib.error.URLError, OSError) as exc:
            reason = getattr(exc, "reason", exc)
            raise ServerUnreachable(f"cannot reach the GM at {self.server}: {reason}") from None

    def apply(self, obj: dict[str, Any]) -> dict[str, Any]:
        result: dict[str, Any] = self.request("POST", "/api/v1/apply", obj)
        return result

    def list(self, kind: str, namespace: str | None) -> list[dict[str, Any]]:
        query = "" if namespace is None else f"?namespace={quote(namespace)}"
        return list(self.request("GET", f"/api/v1/{kind}{query}")["items"])

    def get(self, kind: str, namespace: str, name: str) -> dict[str, Any]:
        obj: dict[str, Any] = self.request("GET", f"/api/v1/{kind}/{quote(namespace)}/{quote(name)}")
        return obj

    def delete(self, kind: str, namespace: str, name: str) -> dict[str, Any]:
        out: dict[str, Any] = self.request("DELETE", f"/api/v1/{kind}/{quote(namespace)}/{quote(name)}")
        return out

    def describe(self, kind: str, namespace: str, name: str) -> dict[str, Any]:
        out: dict[str, Any] = self.request("GET", f"/api/v1/describe/{kind}/{quote(namespace)}/{quote(name)}")
        return out

    def nodes(self) -> builtins.list[dict[str, Any]]:
        return list(self.request("GET", "/api/v1/nodes")["items"])
