"""The knowledge base's HTTP API as a WSGI application: Sedna's routes and the native JSON API.

Who calls it: ``lifelong.cloud.kb.server.KBServer`` serves it (``lifelong kb serve``, or beside
the GM); tests call it over a loopback socket. The routes are listed in docs/knowledge-base.md;
each handler parses HTTP and calls ``LocalKnowledgeBase`` (``lifelong.cloud.kb.service``).

Sedna's routes answer as Sedna's server does, so Sedna's ``KBClient`` works unchanged: a JSON
string such as ``"/file/download?files=F&name=F"``; multipart fields ``file`` and ``task``. The
pickle upload (``/update``) is refused with 403 unless the KB was started with ``--allow-pickle``,
before a byte of its body is read.

Security and bounds (docs/knowledge-base.md, "Security"):

* bearer tokens as the GM API's (``cloud/api_server.py``: ``Tokens``): GET needs a ``read`` or
  ``write`` token, everything else ``write``; ``/healthz`` and ``/metrics`` are open. Without a
  token file every request is let in (``KBServer`` allows that on loopback only, unless told);
* a JSON body over ``max_json`` bytes, a file over the service's ``max_file``, are refused with
  413 from their ``Content-Length`` before they are read (a chunked one as soon as it passes);
* errors are ``{"error": "..."}`` with 400, 401, 403, 404, 405, 411 or 413; a failure of ours is
  500 with a line that names no internals (the traceback goes to the log only);
* every refusal is counted (``lifelong_kb_refused_total{reason}``), every request too.
"""

from __future__ import annotations

import json
import logging
from collections.abc import Callable, Iterable, Iterator
from http import HTTPStatus
from typing import Any, BinaryIO
from urllib.parse import parse_qs, unquote

import multipart
from prometheus_client import CollectorRegistry, Counter, generate_latest

from lifelong.cloud.api_server import Tokens
from lifelong.cloud.kb.base import KBRefused
from lifelong.cloud.kb.files import CHUNK, BadPath, check_path
from lifelong.cloud.kb.service import PICKLE_REFUSED, SEDNA_JOB, LocalKnowledgeBase, sample_json

log = logging.getLogger(__name__)

MAX_JSON = 8 * 1024 * 1024
"""Bytes of a JSON body (a task index, a batch of samples or labels)."""
MULTIPART_SLACK = 64 * 1024
"""Bytes a multipart body may carry beyond its file (boundaries and part headers)."""
OPEN_PATHS = frozenset({"/healthz", "/metrics"})
BASE = "knowledgebase"

Start = Callable[..., Any]
Answer = tuple[HTTPStatus, Iterable[bytes], list[tuple[str, str]]]


class KBMetrics:
    """The KB's Prometheus metrics, in a registry of its own."""

    def __init__(self) -> None:
        self.registry = CollectorRegistry()
        self.requests = Counter(
            "lifelong_kb_requests",
            "KB HTTP requests answered, by status code",
            ["code"],
            registry=self.registry,
        )
        self.refused = Counter(
            "lifelong_kb_refused",
            "KB HTTP requests refused, by reason (bad_request, unauthorized, forbidden, pickle, "
            "not_found, method, length_required, too_large, internal)",
            ["reason"],
            registry=self.registry,
        )

    def render(self) -> bytes:
        return generate_latest(self.registry)


class HTTPError(Exception):
    def __init__(self, status: HTTPStatus, reason: str, message: str) -> None:
        super().__init__(message)
        self.status, self.reason = status, reason


_REASONS = {
    400: "bad_request",
    401: "unauthorized",
    403: "forbidden",
    404: "not_found",
    405: "method",
    411: "length_required",
    413: "too_large",
    503: "unavailable",
}


def _json(value: Any) -> bytes:
    return json.dumps(value, separators=(",", ":")).encode()


class _Limited:
    """A stream of at most ``limit`` bytes of ``source`` (a chunked body); ``HTTPError`` 413 when
    it holds more."""

    def __init__(self, source: BinaryIO, limit: int) -> None:
        self.source, self.limit, self.read_so_far = source, limit, 0

    def read(self, size: int = -1) -> bytes:
        want = CHUNK if size is None or size < 0 else size
        data: bytes = self.source.read(min(want, self.limit + 1 - self.read_so_far))
        self.read_so_far += len(data)
        if self.read_so_far > self.limit:
            raise HTTPError(
                HTTPStatus.REQUEST_ENTITY_TOO_LARGE, "too_large", f"the body is over {self.limit} bytes"
            )
        return data


class _FileBody:
    """A file sent in chunks, closed when the server is done with it."""

    def __init__(self, handle: BinaryIO) -> None:
        self.handle = handle

    def __iter__(self) -> Iterator[bytes]:
        while chunk := self.handle.read(CHUNK):
            yield chunk

    def close(self) -> None:
        self.handle.close()


def _safe_name(name: str, fallback: str) -> str:
    """A download's file name for Content-Disposition: plain characters only."""
    try:
        return check_path(name).rsplit("/", 1)[-1]
    except BadPath:
        return fallback.rsplit("/", 1)[-1]


class KBApp:
    """The WSGI application (see the module docstring)."""

    def __init__(
        self,
        kb: LocalKnowledgeBase,
        *,
        tokens: Tokens | None = None,
        max_json: int = MAX_JSON,
        metrics: KBMetrics | None = None,
    ) -> None:
        self.kb = kb
        self.tokens = tokens
        self.max_json = max_json
        self.metrics = metrics or KBMetrics()

    def __call__(self, environ: dict[str, Any], start_response: Start) -> Iterable[bytes]:
        method = str(environ.get("REQUEST_METHOD", ""))
        try:
            status, body, headers = self._handle(environ)
        except HTTPError as exc:
            status, body, headers = self._refusal(exc.status, exc.reason, str(exc))
        except KBRefused as exc:
            code = HTTPStatus(getattr(exc, "http_status", 400))
            status, body, headers = self._refusal(code, _REASONS.get(code, "bad_request"), str(exc))
        except Exception:
            log.exception("KB request %s %s failed", method, environ.get("PATH_INFO"))
            status, body, headers = self._refusal(
                HTTPStatus.INTERNAL_SERVER_ERROR, "internal", "the knowledge base failed; see its log"
            )
        if status >= 400 and method in ("POST", "PUT", "DELETE"):
            headers.append(("Connection", "close"))  # its body may be unread
        self.metrics.requests.labels(code=str(status.value)).inc()
        start_response(f"{status.value} {status.phrase}", headers)
        return body

    def _refusal(self, status: HTTPStatus, reason: str, message: str) -> Answer:
        self.metrics.refused.labels(reason=reason).inc()
        data = _json({"error": message})
        headers = [("Content-Type", "application/json"), ("Content-Length", str(len(data)))]
        if status == HTTPStatus.UNAUTHORIZED:
            headers.append(("WWW-Authenticate", "Bearer"))
        return status, [data], headers

    @staticmethod
    def _ok(value: Any) -> Answer:
        data = _json(value)
        return (
            HTTPStatus.OK,
            [data],
            [("Content-Type", "application/json"), ("Content-Length", str(len(data)))],
        )

    # -- request plumbing ------------------------------------------------------------------
    def _authorize(self, method: str, path: str, environ: dict[str, Any]) -> None:
        if self.tokens is None or path in OPEN_PATHS:
            return
        refused = self.tokens.refusal(method, environ.get("HTTP_AUTHORIZATION"))
        if refused is not None:
            status, message = refused
            raise HTTPError(status, status.phrase.lower(), message)

    @staticmethod
    def _length(environ: dict[str, Any], limit: int) -> int | None:
        """The body's length (None: chunked), refused from ``Content-Length`` over ``limit``."""
        text = str(environ.get("CONTENT_LENGTH") or "")
        chunked = "chunked" in str(environ.get("HTTP_TRANSFER_ENCODING", "")).lower()
        if not text:
            if chunked:
                return None
            raise HTTPError(
                HTTPStatus.LENGTH_REQUIRED, "length_required", "the request has no Content-Length"
            )
        if not (text.isascii() and text.isdigit()):
            raise HTTPError(
                HTTPStatus.BAD_REQUEST, "bad_request", "Content-Length must be a whole number >= 0"
            )
        if int(text) > limit:
            raise HTTPError(
                HTTPStatus.REQUEST_ENTITY_TOO_LARGE, "too_large", f"the request body is over {limit} bytes"
            )
        return int(text)

    def _stream(self, environ: dict[str, Any], limit: int) -> BinaryIO:
        length = self._length(environ, limit)
        stream: BinaryIO = environ["wsgi.input"]
        return _Limited(stream, limit if length is None else length)  # type: ignore[return-value]

    def _body(self, environ: dict[str, Any]) -> Any:
        raw = self._stream(environ, self.max_json).read(self.max_json + 1)
        try:
            return json.loads(raw or b"null")
        except ValueError as exc:
            raise HTTPError(
                HTTPStatus.BAD_REQUEST, "bad_request", f"the request body is not JSON: {exc}"
            ) from None

    def _part(self, environ: dict[str, Any], field: str) -> multipart.MultipartPart:
        """The multipart ``field`` of the body (a file part), spooled to disk past 1 MiB."""
        limit = self.kb.max_file + MULTIPART_SLACK
        length = self._length(environ, limit)
        ctype, options = multipart.parse_options_header(str(environ.get("CONTENT_TYPE", "")))
        if ctype != "multipart/form-data" or not options.get("boundary"):
            raise HTTPError(
                HTTPStatus.BAD_REQUEST,
                "bad_request",
                f"expected a multipart/form-data body with a {field!r} field",
            )
        stream = _Limited(environ["wsgi.input"], limit if length is None else length)
        try:
            parser = multipart.MultipartParser(
                stream,
                options["boundary"],
                content_length=-1 if length is None else length,
                part_limit=16,
                spool_limit=1 << 20,
                memory_limit=4 << 20,
                disk_limit=limit,
                partsize_limit=self.kb.max_file + 1,
            )
            found = None
            for part in parser:
                if part.name == field and found is None:
                    found = part
                else:
                    part.close()
        except multipart.ParserLimitReached as exc:
            raise HTTPError(
                HTTPStatus.REQUEST_ENTITY_TOO_LARGE, "too_large", f"multipart body: {exc}"
            ) from None
        except multipart.MultipartError as exc:
            raise HTTPError(
                HTTPStatus.BAD_REQUEST, "bad_request", f"malformed multipart body: {exc}"
            ) from None
        if found is None:
            raise HTTPError(
                HTTPStatus.BAD_REQUEST, "bad_request", f"the multipart body has no {field!r} field"
            )
        if found.size > self.kb.max_file:
            found.close()
            raise HTTPError(
                HTTPStatus.REQUEST_ENTITY_TOO_LARGE, "too_large", f"the file is over {self.kb.max_file} bytes"
            )
        return found

    # -- routes ----------------------------------------------------------------------------
    def _handle(self, environ: dict[str, Any]) -> Answer:
        method = str(environ.get("REQUEST_METHOD", ""))
        path = str(environ.get("PATH_INFO", "") or "/")
        if method not in ("GET", "POST", "PUT"):
            raise HTTPError(HTTPStatus.METHOD_NOT_ALLOWED, "method", f"method {method!r} not allowed")
        self._authorize(method, path, environ)
        query = {k: v[-1] for k, v in parse_qs(str(environ.get("QUERY_STRING", ""))).items()}
        if method == "GET" and path == "/healthz":
            return HTTPStatus.OK, [b"ok\n"], [("Content-Type", "text/plain")]
        if method == "GET" and path == "/metrics":
            return HTTPStatus.OK, [self.metrics.render()], [("Content-Type", "text/plain; version=0.0.4")]
        parts = [unquote(p) for p in path.split("/") if p]
        if parts[:1] != [BASE]:
            raise HTTPError(HTTPStatus.NOT_FOUND, "not_found", f"no such path {path}")
        if parts[1:2] == ["v1"]:
            return self._native(method, path, parts[2:], query, environ)
        return self._sedna(method, path, parts[1:], query, environ)

    def _sedna(
        self, method: str, path: str, rest: list[str], query: dict[str, str], environ: dict[str, Any]
    ) -> Answer:
        kb = self.kb
        if method == "POST" and rest == ["update"]:
            if not kb.allow_pickle:
                raise HTTPError(HTTPStatus.FORBIDDEN, "pickle", PICKLE_REFUSED)
            part = self._part(environ, "task")
            try:
                return self._ok(kb.sedna_update(part.raw, query.get("job", SEDNA_JOB)))
            finally:
                part.close()
        if method == "POST" and rest == ["update", "status"]:
            return self._ok(kb.sedna_status(self._body(environ)))
        if method == "POST" and rest == ["file", "upload"]:
            part = self._part(environ, "file")
            try:
                name = part.filename or ""
                if not name:
                    raise HTTPError(HTTPStatus.BAD_REQUEST, "bad_request", "the 'file' part has no filename")
                assert part.file is not None
                return self._ok(kb.sedna_upload(name, part.file))
            finally:
                part.close()
        if method == "GET" and rest == ["file", "download"]:
            files = query.get("files", "")
            return self._download(files, query.get("name") or files)
        if method == "POST" and rest == ["query"]:
            return self._ok(kb.sedna_query())
        raise HTTPError(HTTPStatus.NOT_FOUND, "not_found", f"no such path {method} {path}")

    def _download(self, path: str, name: str) -> Answer:
        handle, size = self.kb.open_file(path)
        filename = _safe_name(name, path)
        headers = [
            ("Content-Type", "application/octet-stream"),
            ("Content-Length", str(size)),
            ("Content-Disposition", f'attachment; filename="{filename}"'),
        ]
        return HTTPStatus.OK, _FileBody(handle), headers

    def _native(
        self, method: str, path: str, rest: list[str], query: dict[str, str], environ: dict[str, Any]
    ) -> Answer:
        kb = self.kb
        head, args = (rest[0] if rest else ""), rest[1:]
        job = "/".join(args[:2]) if len(args) >= 2 else ""
        if head == "files" and args:
            file_path = "/".join(args)
            if method == "PUT":
                stream = self._stream(environ, kb.max_file)
                return self._ok(kb.put_file(file_path, stream))
            if method == "GET":
                return self._download(file_path, file_path)
        elif head == "index":
            if method == "POST" and not args:
                return self._ok(kb.post_index(self._body(environ)))
            if method == "GET" and len(args) == 2:
                return self._ok(kb.get_index(job))
            if method == "GET" and len(args) == 3:
                return self._ok(kb.get_index(job, _number(args[2], "version", low=1)))
        elif head == "metrics":
            if method == "POST" and not args:
                return self._ok(kb.post_metrics(self._body(environ)))
            if method == "GET" and len(args) == 2:
                return self._ok(kb.metrics(job))
        elif head == "tasks" and method == "GET" and len(args) == 2:
            return self._ok(kb.tasks(job))
        elif head == "summary" and method == "GET" and len(args) == 2:
            return self._ok(kb.summary(job).model_dump(mode="json", by_alias=True))
        elif head == "undelivered" and method == "GET" and not args:
            limit = _number(query.get("limit", "1000"), "limit", low=1)
            return self._ok({"items": [sample_json(s) for s in kb.undelivered(limit)]})
        elif head == "samples" and len(args) >= 2:
            return self._samples(method, job, args[2:], query, environ)
        raise HTTPError(HTTPStatus.NOT_FOUND, "not_found", f"no such path {method} {path}")

    def _samples(
        self, method: str, job: str, rest: list[str], query: dict[str, str], environ: dict[str, Any]
    ) -> Answer:
        kb = self.kb
        if method == "POST" and not rest:
            return self._ok(kb.post_samples(job, self._body(environ)))
        if method == "POST" and rest == ["labels"]:
            return self._ok(kb.post_labels(job, self._body(environ)))
        if method == "POST" and rest == ["delivered"]:
            return self._ok(kb.post_delivered(job, self._body(environ)))
        if method == "GET" and not rest:
            state = query.get("state", "all")
            given = query.get("predicted")
            predicted: str | int | None = given
            if given is not None and _integer(given) and query.get("predictedType") != "str":
                predicted = int(given)  # a class that reads as a whole number is one (predictedType=str: not)
            items = kb.samples(
                job,
                state=state,  # type: ignore[arg-type]  # checked by the service
                predicted=predicted,
                limit=_number(query.get("limit", "1000"), "limit", low=1),
                after=query.get("after"),
            )
            return self._ok({"items": [sample_json(s) for s in items]})
        raise HTTPError(
            HTTPStatus.NOT_FOUND, "not_found", f"no such path {method} samples/{job}/{'/'.join(rest)}"
        )


def _integer(text: str) -> bool:
    digits = text[1:] if text.startswith("-") else text
    return digits.isascii() and digits.isdigit() and len(digits) <= 18


def _number(text: str, name: str, *, low: int) -> int:
    if not (text.isascii() and text.isdigit()) or int(text) < low or len(text) > 12:
        raise HTTPError(HTTPStatus.BAD_REQUEST, "bad_request", f"{name}: must be a whole number >= {low}")
    return int(text)
