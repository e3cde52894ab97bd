"""The HTTP client of the GM's API (``/api/v1/...``), and the errors its answers map to.

Who calls it: the client's sub-commands (``lifelong.client.commands``, ``lifelong.client.logs``),
``lifelong demo`` and tests. It speaks HTTP(S) and JSON through httpx: a 404 becomes
:class:`NotFound`, a 400 ``ValidationError`` a :class:`~lifelong.common.errors.ValidationError`,
a 401 or 403 :class:`Unauthorized` (saying what to do), any other refusal :class:`ServerError`,
a GM that does not answer :class:`ServerUnreachable` (naming the server) and one that does not
answer in time :class:`ServerTimeout`.

Authentication (docs/operations.md, "The client's config file"): with a token, every request
carries ``Authorization: Bearer TOKEN``; the token is never part of an error, a log line or the
client's ``repr``. An ``https://`` server is verified with the system's CAs, or with the given CA
file or PEM text only. ``transport`` is the seam for tests: ``httpx.WSGITransport(app=...)``
calls a WSGI app in-process, ``httpx.MockTransport`` records requests.
"""

from __future__ import annotations

import argparse
import builtins
import json
import logging
import ssl
from typing import Any
from urllib.parse import quote

import httpx

from lifelong.client.config import DEFAULT_SERVER, Connection, connection
from lifelong.common.errors import ConfigError, LifelongError, ValidationError

# httpx logs each request at INFO (the client's default level): the commands' output is their own.
logging.getLogger("httpx").setLevel(logging.WARNING)

__all__ = ["DEFAULT_SERVER", "Client", "NotFound", "ServerError", "ServerUnreachable", "Unauthorized"]


class NotFound(LifelongError):
    """The GM answered 404: no such resource."""

    exit_code = 1


class ServerUnreachable(LifelongError):
    """No answer from the GM: refused, unknown host, TLS failure."""

    exit_code = 1


class ServerTimeout(ServerUnreachable):
    """The GM did not answer within the request timeout."""


class ServerError(LifelongError):
    exit_code = 1


class Unauthorized(ServerError):
    """The GM answered 401 (no token, or one it does not know) or 403 (the token may only read)."""


def tls_context(ca_file: str | None = None, ca_data: str | None = None) -> ssl.SSLContext:
    """How an ``https://`` GM is verified: the given CA (file or PEM text) only, else the system's CAs."""
    if ca_file is None and ca_data is None:
        return ssl.create_default_context()
    try:
        return ssl.create_default_context(cafile=ca_file, cadata=ca_data)
    except (OSError, ssl.SSLError) as exc:
        what = ca_file or "certificate-authority-data"
        reason = getattr(exc, "strerror", None) or getattr(exc, "reason", None) or "not a PEM certificate"
        raise ConfigError(f"cannot use the CA {what} to verify the GM: {reason}") from None


class Client:
    """One GM's API. ``token``: sent as a bearer token. ``ca_file``/``ca_data``: the CA that signs an
    ``https://`` GM's certificate (default: the system's). ``transport``: an httpx transport in
    place of the network (tests)."""

    def __init__(
        self,
        server: str = DEFAULT_SERVER,
        timeout: float = 30.0,
        *,
        token: str | None = None,
        ca_file: str | None = None,
        ca_data: str | None = None,
        transport: httpx.BaseTransport | None = None,
    ) -> None:
        self.server = server.rstrip("/")
        self.timeout = timeout
        self._token = token
        headers = {"Accept": "application/json"}
        if token:
            headers["Authorization"] = f"Bearer {token}"
        verify: ssl.SSLContext | bool = True
        if transport is None and self.server.startswith("https://"):
            verify = tls_context(ca_file, ca_data)
        self._http = httpx.Client(
            headers=headers, timeout=timeout, verify=verify, transport=transport, follow_redirects=False
        )

    @classmethod
    def connect(
        cls, conn: Connection, timeout: float = 30.0, transport: httpx.BaseTransport | None = None
    ) -> Client:
        """A client for what the config file and flags chose (``lifelong.client.config.connection``)."""
        return cls(
            conn.server,
            timeout,
            token=conn.token,
            ca_file=conn.ca_file,
            ca_data=conn.ca_data,
            transport=transport,
        )

    def __repr__(self) -> str:
        return f"Client({self.server!r}, token={'REDACTED' if self._token else None})"

    def close(self) -> None:
        self._http.close()

    def __enter__(self) -> Client:
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()

    def _scrub(self, text: str) -> str:
        """``text`` without the token, should a server or a library have echoed it."""
        return text.replace(self._token, "REDACTED") if self._token else text

    def request(self, method: str, path: str, body: Any = None) -> Any:
        try:
            if body is None:
                resp = self._http.request(method, self.server + path)
            else:  # the stdlib's encoding, as before httpx (which refuses NaN)
                resp = self._http.request(
                    method,
                    self.server + path,
                    content=json.dumps(body).encode(),
                    headers={"Content-Type": "application/json"},
                )
        except httpx.TimeoutException:
            raise ServerTimeout(
                f"the GM at {self.server} did not answer within {self.timeout:g} s (--request-timeout)"
            ) from None
        except httpx.UnsupportedProtocol:
            raise ServerUnreachable(
                f"cannot reach the GM at {self.server}: the server must be an http:// or https:// URL"
            ) from None
        except (httpx.TransportError, OSError) as exc:
            reason = self._scrub(str(exc) or type(exc).__name__)
            if "CERTIFICATE_VERIFY_FAILED" in reason:
                reason += (
                    " (give the CA that signs the GM's certificate as the cluster's certificate-authority)"
                )
            raise ServerUnreachable(f"cannot reach the GM at {self.server}: {reason}") from None
        if resp.status_code >= 400:
            self._refused(resp)
        if not resp.content:
            return None
        try:
            return resp.json()
        except ValueError:
            raise ServerError(
                f"the GM at {self.server} answered {resp.status_code} with a body that is not JSON"
            ) from None

    def _refused(self, resp: httpx.Response) -> None:
        try:
            err = resp.json()
        except ValueError:
            err = {}
        if not isinstance(err, dict):
            err = {}
        code = resp.status_code
        message = self._scrub(str(err.get("error") or f"HTTP {code}"))
        reason = err.get("reason", "")
        if code == 404:
            raise NotFound(message)
        if code == 400 and reason == "ValidationError":
            raise ValidationError([("", message)])
        if code == 401:
            if self._token:
                raise Unauthorized(
                    f"the GM at {self.server} refused the token (401): set LIFELONG_TOKEN or the user's "
                    "token (or token-file) in the config file to a token the GM's token file lists"
                )
            raise Unauthorized(
                f"the GM at {self.server} asks for a token (401): set LIFELONG_TOKEN, or a user with a token "
                "(or token-file) in the config file (--config, LIFELONG_CONFIG, ~/.config/lifelong/config)"
            )
        if code == 403:
            raise Unauthorized(
                f"the GM at {self.server} refused this request (403): the token's role may only read; "
                "use a token with the write role"
            )
        raise ServerError(f"the GM refused ({code}): {message}")

    def apply(self, obj: dict[str, Any]) -> dict[str, Any]:
        result: dict[str, Any] = self.request("POST", "/api/v1/apply", obj)
        return result

    def list(self, kind: str, namespace: str | None) -> builtins.list[dict[str, Any]]:
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


def from_args(args: argparse.Namespace, timeout: float = 30.0) -> Client:
    """The client a sub-command's ``--server``/``--config``/``--context`` flags (``config.add_flags``),
    the environment and the config file choose; fills in ``args.namespace`` when it was not given."""
    conn = connection(
        server=getattr(args, "server", None),
        context=getattr(args, "context", None),
        config=getattr(args, "config", None),
    )
    if getattr(args, "namespace", "") is None:
        args.namespace = conn.namespace or "default"
    return Client.connect(conn, timeout)
