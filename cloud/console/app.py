"""The web console as a WSGI application: routing, authentication, forms, pages and errors.

Who calls it: ``GMApiApp`` (``cloud/api_server.py``) hands it every request whose path is ``/ui``
or starts with ``/ui/``, before the API's own token check; docs/console.md describes the pages.

==============================================  ===========================================
``GET /ui/``                                    303 to ``/ui/jobs``
``GET|POST /ui/login``, ``POST /ui/logout``     the login form, a session, its end
``GET /ui/jobs``, ``/ui/jobs/NS/NAME``          the jobs; one job (timeline, workers, metrics)
``GET /ui/workers/NS/NAME/log``                 the tail of a worker's log
``GET /ui/kb``, ``/ui/kb/NS/NAME``              the knowledge base per job
``GET /ui/unseen``, ``/ui/unseen/NS/NAME``      unseen samples (``?node=&state=&predicted=``)
``POST /ui/unseen/NS/NAME/label``               label one sample or one predicted class
``GET /ui/nodes``, ``POST /ui/nodes/N/delete``  the nodes; forget an offline one
``GET /ui/events``                              server-sent events (``cloud/console/live.py``)
``GET /ui/static/FILE``                         ``console.css``, ``console.js``
==============================================  ===========================================

Any page with ``?fragment=1`` answers only the inner HTML of its ``<main id="content">`` (what
``console.js`` swaps in on a change); every page's ``X-Console-Version`` header is the watcher's
version it was rendered at (what ``console.js`` puts in ``#content[data-version]``). Every page
is complete HTML without JavaScript.

Who may do what is ``cloud/console/auth.py``'s. Errors are pages, never tracebacks: 404 naming
what was not found, 400 naming the field, 401/403 for who may not, 413 for a form over
``MAX_FORM`` bytes, 503 when the knowledge base is off or out of reach or the streams are all
taken. Every refusal of who is asking or of a malformed request is counted in
``lifelong_gm_console_refused_total{reason}``.
"""

from __future__ import annotations

import functools
import logging
from collections.abc import Callable, Iterable, Mapping
from http import HTTPStatus
from importlib import resources
from typing import TYPE_CHECKING, Any
from urllib.parse import parse_qs, parse_qsl, quote, urlencode

from lifelong.cloud.console import pages
from lifelong.cloud.console.auth import Principal, Sessions, clear_cookie, cookie_of, same_origin, set_cookie
from lifelong.cloud.console.live import Watcher
from lifelong.cloud.stores.base import Conflict, NotFound
from lifelong.common.errors import LifelongError

if TYPE_CHECKING:
    import jinja2

    from lifelong.cloud.api_server import GMApi, Tokens
    from lifelong.cloud.metrics import GMMetrics

log = logging.getLogger(__name__)

MAX_FORM = 16 * 1024
"""Bytes of a console form's body; a longer one is refused (413) before it is read."""
MAX_FIELDS = 16
STATIC = {"console.css": "text/css; charset=utf-8", "console.js": "text/javascript; charset=utf-8"}
CSP = (
    "default-src 'none'; script-src 'self'; style-src 'self'; img-src 'self' data:; "
    "connect-src 'self'; form-action 'self'; frame-ancestors 'none'; base-uri 'none'"
)
NAV: tuple[tuple[str, str, str], ...] = (
    ("jobs", "/ui/jobs", "Jobs"),
    ("nodes", "/ui/nodes", "Nodes"),
    ("kb", "/ui/kb", "Knowledge base"),
    ("unseen", "/ui/unseen", "Unseen samples"),
)

Headers = list[tuple[str, str]]
Answer = tuple[HTTPStatus, Headers, Iterable[bytes]]


class Refusal(Exception):
    """A request the console refuses: its status, a one-line message, the counted reason."""

    def __init__(self, status: HTTPStatus, message: str, reason: str, headers: Headers | None = None) -> None:
        super().__init__(message)
        self.status, self.reason, self.headers = status, reason, headers or []


def _environment() -> jinja2.Environment:
    # jinja2 is imported with the first page: every GM serves the console, few are asked for a
    # page, and the import was ~35 ms of CPU at each GM start (docs/performance.md).
    import jinja2

    env = jinja2.Environment(
        loader=jinja2.PackageLoader("lifelong.cloud.console", "templates"),
        autoescape=True,
        undefined=jinja2.StrictUndefined,
        trim_blocks=True,
        lstrip_blocks=True,
    )
    env.filters["num"] = lambda v: "" if v is None else (f"{v:.3f}" if isinstance(v, float) else str(v))
    env.filters["label_text"] = pages.label_text
    return env


class ConsoleApp:
    """The console of one GM: ``api`` to read through, ``tokens`` (None: open), ``watcher`` for
    ``/ui/events``, ``metrics`` to count refusals in, ``secure``: served over HTTPS."""

    def __init__(
        self,
        api: GMApi,
        watcher: Watcher,
        *,
        tokens: Tokens | None = None,
        secure: bool = False,
        sessions: Sessions | None = None,
    ) -> None:
        self.api, self.watcher, self.tokens, self.secure = api, watcher, tokens, secure
        self.metrics: GMMetrics = api.metrics
        self.sessions = sessions or Sessions()
        self._static = {
            name: resources.files("lifelong.cloud.console").joinpath("static", name).read_bytes()
            for name in STATIC
        }

    @functools.cached_property
    def templates(self) -> jinja2.Environment:
        """The pages' templates, loaded with the first page asked for."""
        return _environment()

    # -- WSGI ------------------------------------------------------------------------------
    def __call__(self, environ: dict[str, Any], start_response: Callable[..., Any]) -> Iterable[bytes]:
        try:
            status, headers, body = self._handle(environ)
        except Refusal as exc:
            self.metrics.console_refused.labels(reason=exc.reason).inc()
            status, headers, body = self._error(environ, exc.status, str(exc), exc.headers)
        except pages.PageNotFound as exc:
            status, headers, body = self._error(environ, HTTPStatus.NOT_FOUND, str(exc))
        except NotFound as exc:
            status, headers, body = self._error(environ, HTTPStatus.NOT_FOUND, str(exc))
        except pages.BadFilter as exc:
            self.metrics.console_refused.labels(reason="bad_filter").inc()
            status, headers, body = self._error(environ, HTTPStatus.BAD_REQUEST, str(exc))
        except Conflict as exc:
            status, headers, body = self._error(environ, HTTPStatus.CONFLICT, str(exc))
        except LifelongError as exc:  # ValidationError names its fields; KBOff, KBUnreachable: 503
            given = getattr(exc, "http_status", None)
            code = HTTPStatus(given) if isinstance(given, int) else HTTPStatus.BAD_REQUEST
            status, headers, body = self._error(environ, code, str(exc))
        except Exception:
            log.exception(
                "console request %s %s failed", environ.get("REQUEST_METHOD"), environ.get("PATH_INFO")
            )
            status, headers, body = self._error(
                environ, HTTPStatus.INTERNAL_SERVER_ERROR, "the GM failed to answer; its log says why"
            )
        if status >= 400 and environ.get("REQUEST_METHOD") == "POST":
            headers.append(("Connection", "close"))  # its body may be unread
        start_response(f"{status.value} {status.phrase}", headers)
        return body

    def _handle(self, environ: dict[str, Any]) -> Answer:
        method = str(environ.get("REQUEST_METHOD", ""))
        path = str(environ.get("PATH_INFO", "") or "/")
        parts = [p for p in path.split("/") if p][1:]  # after "ui"
        query = parse_qs(str(environ.get("QUERY_STRING", "")), keep_blank_values=True)
        if method not in ("GET", "POST"):
            raise Refusal(HTTPStatus.METHOD_NOT_ALLOWED, f"method {method[:20]!r} not allowed", "method")
        if method == "GET" and len(parts) == 2 and parts[0] == "static":
            return self._static_file(parts[1])
        if parts == ["login"]:
            return self._login(environ, method, query)
        if not parts and method == "GET":
            return self._redirect("/ui/jobs")
        fragment = query.get("fragment") == ["1"]
        who = self._who(environ, method, path, quiet=fragment or parts == ["events"])
        if method == "POST":
            form = self._form(environ, who)
            return self._post(environ, who, parts, form)
        if parts == ["events"]:
            return self._events(environ, query)
        return self._page(environ, who, parts, query, fragment)

    # -- who is asking ---------------------------------------------------------------------
    def _who(self, environ: dict[str, Any], method: str, path: str, *, quiet: bool) -> Principal:
        """The principal of the request; a redirect to the login form (pages) or 401."""
        if self.tokens is None:
            return Principal("anonymous", "write", "open", "open")
        authorization = environ.get("HTTP_AUTHORIZATION")
        if authorization:
            token = self.tokens.find(authorization)
            if token is None:
                raise Refusal(
                    HTTPStatus.UNAUTHORIZED,
                    "unknown token",
                    "unknown_token",
                    [("WWW-Authenticate", "Bearer")],
                )
            return Principal(token.name, token.role, "bearer", f"bearer:{token.name}")
        found = self.sessions.get(cookie_of(environ.get("HTTP_COOKIE")))
        if found is not None:
            return found
        if method == "GET" and not quiet:
            target = path + (f"?{environ['QUERY_STRING']}" if environ.get("QUERY_STRING") else "")
            raise Refusal(
                HTTPStatus.SEE_OTHER,
                "log in first",
                "no_session",
                [("Location", "/ui/login?" + urlencode({"next": target}))],
            )
        raise Refusal(HTTPStatus.UNAUTHORIZED, "log in first (or give Authorization: Bearer)", "no_session")

    def _check_post(self, environ: dict[str, Any], who: Principal | None, form: Mapping[str, str]) -> None:
        scheme = "https" if self.secure else "http"
        if not same_origin(environ.get("HTTP_ORIGIN"), scheme, str(environ.get("HTTP_HOST", ""))):
            raise Refusal(HTTPStatus.FORBIDDEN, "the request comes from another site (Origin)", "origin")
        if who is None:
            return
        if not who.can_write:
            raise Refusal(HTTPStatus.FORBIDDEN, f"{who.name!r} may only read (role {who.role})", "read_only")
        if who.via != "bearer" and not self.sessions.csrf_ok(who, form.get("csrf")):
            raise Refusal(
                HTTPStatus.FORBIDDEN, "the form's csrf field is missing or wrong; reload the page", "csrf"
            )

    def _form(self, environ: dict[str, Any], who: Principal | None) -> dict[str, str]:
        """The form's fields (urlencoded), refused from its Content-Length before it is read,
        then checked (Origin, role, CSRF)."""
        kind = str(environ.get("CONTENT_TYPE", "")).split(";")[0].strip().lower()
        if kind != "application/x-www-form-urlencoded":
            raise Refusal(
                HTTPStatus.BAD_REQUEST, "a form must be application/x-www-form-urlencoded", "bad_form"
            )
        text = str(environ.get("CONTENT_LENGTH") or "")
        if not (text.isascii() and text.isdigit()):
            raise Refusal(
                HTTPStatus.BAD_REQUEST, "a form needs a Content-Length (a whole number)", "bad_form"
            )
        if int(text) > MAX_FORM:
            raise Refusal(
                HTTPStatus.REQUEST_ENTITY_TOO_LARGE, f"the form is over {MAX_FORM} bytes", "too_large"
            )
        raw = environ["wsgi.input"].read(int(text)) if int(text) else b""
        try:
            fields = parse_qsl(
                raw.decode("utf-8"),
                keep_blank_values=True,
                strict_parsing=bool(raw),
                max_num_fields=MAX_FIELDS,
            )
        except (UnicodeDecodeError, ValueError):
            raise Refusal(
                HTTPStatus.BAD_REQUEST, "the form is malformed (not UTF-8 urlencoded fields)", "bad_form"
            ) from None
        form: dict[str, str] = {}
        for name, value in fields:
            if name in form:
                raise Refusal(HTTPStatus.BAD_REQUEST, f"{name[:40]}: give it once", "bad_form")
            form[name] = value
        self._check_post(environ, who, form)
        return form

    # -- login -----------------------------------------------------------------------------
    def _login(self, environ: dict[str, Any], method: str, query: dict[str, list[str]]) -> Answer:
        if self.tokens is None:
            return self._redirect("/ui/jobs")
        if method == "GET":
            target = _safe_next((query.get("next") or [""])[0])
            return self._render(environ, "login.html", {"next": target, "error": None}, None)
        form = self._form(environ, None)
        target = _safe_next(form.get("next", ""))
        token = self.tokens.find(f"Bearer {form.get('token', '')}")
        if token is None:
            self.metrics.console_refused.labels(reason="unknown_token").inc()
            return self._render(
                environ,
                "login.html",
                {"next": target, "error": "unknown token"},
                None,
                HTTPStatus.UNAUTHORIZED,
            )
        sid = self.sessions.create(token.name, token.role)
        log.info("console: %s logged in (role %s)", token.name, token.role)
        return self._redirect(target, [("Set-Cookie", set_cookie(sid, secure=self.secure))])

    # -- POSTs -----------------------------------------------------------------------------
    def _post(
        self, environ: dict[str, Any], who: Principal, parts: list[str], form: dict[str, str]
    ) -> Answer:
        if parts == ["logout"]:
            self.sessions.end(cookie_of(environ.get("HTTP_COOKIE")))
            return self._redirect("/ui/login", [("Set-Cookie", clear_cookie(secure=self.secure))])
        if len(parts) == 4 and parts[0] == "unseen" and parts[3] == "label":
            ns, name = parts[1], parts[2]
            count = pages.label(self.api, ns, name, form)
            log.info("console: %s labelled %d samples of %s/%s", who.name, count, ns, name)
            back = form.get("back", "")
            target = (
                back
                if back.startswith(f"/ui/unseen/{ns}/{name}") and _safe_next(back) == back
                else (f"/ui/unseen/{quote(ns)}/{quote(name)}")
            )
            sep = "&" if "?" in target else "?"
            return self._redirect(f"{target}{sep}{urlencode({'labelled': count})}")
        if len(parts) == 3 and parts[0] == "nodes" and parts[2] == "delete":
            self.api.delete_node(parts[1])
            return self._redirect("/ui/nodes?" + urlencode({"deleted": parts[1]}))
        raise pages.PageNotFound(f"no such form {'/'.join(['/ui', *parts])}")

    # -- pages -----------------------------------------------------------------------------
    def _page(
        self,
        environ: dict[str, Any],
        who: Principal,
        parts: list[str],
        query: dict[str, list[str]],
        fragment: bool,
    ) -> Answer:
        api = self.api
        n = len(parts)
        head = parts[0] if parts else ""
        context: dict[str, Any]
        if parts == ["jobs"]:
            name, context = "jobs.html", pages.jobs_page(api)
        elif head == "jobs" and n == 3:
            name, context = "job.html", pages.job_page(api, parts[1], parts[2])
        elif head == "workers" and n == 4 and parts[3] == "log":
            name, context = "log.html", pages.worker_log_page(api, parts[1], parts[2])
        elif parts == ["kb"]:
            name, context = "kb_index.html", pages.kb_index_page(api)
        elif head == "kb" and n == 3:
            name, context = "kb.html", pages.kb_page(api, parts[1], parts[2])
        elif parts == ["unseen"]:
            name, context = "unseen_index.html", pages.unseen_index_page(api)
        elif head == "unseen" and n == 3:
            name, context = "unseen.html", pages.unseen_page(api, parts[1], parts[2], query)
            labelled = (query.get("labelled") or [""])[0]
            context["flash"] = f"labelled {labelled}" if labelled.isascii() and labelled.isdigit() else None
            filters = [(k, v) for k, v in query.items() if k in ("node", "state", "predicted")]
            kept = urlencode(filters, doseq=True)
            context["back"] = str(environ.get("PATH_INFO", "")) + (f"?{kept}" if kept else "")
        elif parts == ["nodes"]:
            name, context = "nodes.html", pages.nodes_page(api)
            deleted = (query.get("deleted") or [""])[0]
            context["flash"] = f"deleted node {deleted}" if deleted else None
        else:
            raise pages.PageNotFound(f"no such page {environ.get('PATH_INFO', '')}")
        return self._render(environ, name, context, who, fragment=fragment)

    def _render(
        self,
        environ: dict[str, Any],
        template: str,
        context: dict[str, Any],
        who: Principal | None,
        status: HTTPStatus = HTTPStatus.OK,
        *,
        fragment: bool = False,
        headers: Headers | None = None,
    ) -> Answer:
        version = self.watcher.version
        page = self.templates.get_template(template).render(
            **context,
            who=who,
            csrf=self.sessions.csrf(who) if who is not None else "",
            can_write=who is not None and who.can_write,
            login=self.tokens is not None,
            fragment=fragment,
            version=version,
            nav=NAV,
            path=environ.get("PATH_INFO", ""),
        )
        body = page.encode()
        out = [
            ("Content-Type", "text/html; charset=utf-8"),
            ("Content-Length", str(len(body))),
            ("Cache-Control", "no-store"),
            ("Content-Security-Policy", CSP),
            ("X-Content-Type-Options", "nosniff"),
            ("Referrer-Policy", "same-origin"),
            ("X-Console-Version", str(version)),  # what console.js's fetch now shows
            *(headers or []),
        ]
        return status, out, [body]

    def _error(
        self, environ: dict[str, Any], status: HTTPStatus, message: str, headers: Headers | None = None
    ) -> Answer:
        if status == HTTPStatus.SEE_OTHER:
            return status, [("Content-Length", "0"), *(headers or [])], [b""]
        fragment = "fragment=1" in str(environ.get("QUERY_STRING", ""))
        context = {"status": status.value, "phrase": status.phrase, "message": message}
        return self._render(environ, "error.html", context, None, status, fragment=fragment, headers=headers)

    @staticmethod
    def _redirect(location: str, headers: Headers | None = None) -> Answer:
        return (
            HTTPStatus.SEE_OTHER,
            [("Location", location), ("Content-Length", "0"), *(headers or [])],
            [b""],
        )

    def _static_file(self, name: str) -> Answer:
        if name not in STATIC:
            raise pages.PageNotFound(f"no such file {name[:80]}")
        body = self._static[name]
        return (
            HTTPStatus.OK,
            [
                ("Content-Type", STATIC[name]),
                ("Content-Length", str(len(body))),
                ("Cache-Control", "public, max-age=3600"),
                ("X-Content-Type-Options", "nosniff"),
            ],
            [body],
        )

    # -- live ------------------------------------------------------------------------------
    def _events(self, environ: dict[str, Any], query: dict[str, list[str]]) -> Answer:
        given = (query.get("since") or [""])[0] or str(environ.get("HTTP_LAST_EVENT_ID", ""))
        since = int(given) if given.isascii() and given.isdigit() and len(given) < 18 else None
        if not self.watcher.open():
            raise Refusal(
                HTTPStatus.SERVICE_UNAVAILABLE,
                f"too many live pages open (at most {self.watcher.max_streams}); reload later",
                "streams_full",
                [("Retry-After", "2")],
            )
        headers = [
            ("Content-Type", "text/event-stream; charset=utf-8"),
            ("Cache-Control", "no-store"),
            ("X-Accel-Buffering", "no"),
        ]
        return HTTPStatus.OK, headers, self.watcher.stream(since)


def _safe_next(target: str) -> str:
    """``target`` when it is a console path of this server, else ``/ui/jobs``."""
    ok = (target == "/ui" or target.startswith("/ui/")) and not any(
        c in target for c in ("\\", "\r", "\n", "\t", " ", "//")
    )
    return target if ok and target.isprintable() else "/ui/jobs"
