"""Who is asking, for the web console (``cloud/console/app.py``): login sessions, bearer tokens,
roles, the CSRF field and the ``Origin`` check (docs/security.md, "The web console").

A login (``POST /ui/login`` with a token of the GM's token file) makes a server-side session: a
random id (32 bytes of ``secrets``) kept in memory with the token's name and role, never the
token itself; the browser holds only the id, in the cookie ``lifelong_session`` (HttpOnly,
SameSite=Strict, Path=/ui, Secure over HTTPS). A session ends after ``IDLE`` seconds unused or at
logout; at most ``MAX_SESSIONS`` live at once (the one unused longest makes room). Every form
carries ``csrf``, an HMAC of the session id under a secret made at start, so another site cannot
post for a logged-in browser; a request with ``Authorization: Bearer`` needs none (a browser never
adds that header by itself). A GM without tokens has an open console: everyone is ``anonymous``
with the write role, and its forms still carry a CSRF field and pass the Origin check.
"""

from __future__ import annotations

import hashlib
import hmac
import secrets
import threading
import time
from collections import OrderedDict
from collections.abc import Callable
from dataclasses import dataclass, field

COOKIE = "lifelong_session"
IDLE = 12 * 3600
"""Seconds a session lives unused."""
MAX_SESSIONS = 1000


@dataclass
class Principal:
    """Who a console request is from: ``via`` is ``session``, ``bearer`` or ``open`` (no tokens)."""

    name: str
    role: str
    via: str
    key: str = field(repr=False)
    """What the CSRF field is made from: the session id, or a fixed text for bearer and open."""

    @property
    def can_write(self) -> bool:
        return self.role == "write"


class Sessions:
    """The console's login sessions, in memory (a GM restart logs everyone out)."""

    def __init__(
        self, *, idle: float = IDLE, limit: int = MAX_SESSIONS, clock: Callable[[], float] = time.monotonic
    ) -> None:
        self.idle, self.limit, self.clock = idle, limit, clock
        self._secret = secrets.token_bytes(32)
        self._lock = threading.Lock()
        self._by_id: OrderedDict[str, tuple[Principal, float]] = OrderedDict()

    def __len__(self) -> int:
        return len(self._by_id)

    def create(self, name: str, role: str) -> str:
        sid = secrets.token_urlsafe(32)
        with self._lock:
            while len(self._by_id) >= self.limit:
                self._by_id.popitem(last=False)
            self._by_id[sid] = (Principal(name, role, "session", sid), self.clock())
        return sid

    def get(self, sid: str | None) -> Principal | None:
        if not sid:
            return None
        now = self.clock()
        with self._lock:
            found = self._by_id.get(sid)
            if found is None:
                return None
            principal, last = found
            if now - last > self.idle:
                del self._by_id[sid]
                return None
            self._by_id[sid] = (principal, now)
            self._by_id.move_to_end(sid)
            return principal

    def end(self, sid: str | None) -> None:
        if sid:
            with self._lock:
                self._by_id.pop(sid, None)

    def csrf(self, principal: Principal) -> str:
        return hmac.new(self._secret, principal.key.encode(), hashlib.sha256).hexdigest()

    def csrf_ok(self, principal: Principal, given: str | None) -> bool:
        return given is not None and hmac.compare_digest(self.csrf(principal), given)


def cookie_of(header: str | None) -> str | None:
    """The session id of a ``Cookie`` header, or None."""
    for part in (header or "").split(";"):
        name, _, value = part.strip().partition("=")
        if name == COOKIE and value:
            return value
    return None


def set_cookie(sid: str, *, secure: bool) -> str:
    return f"{COOKIE}={sid}; HttpOnly; SameSite=Strict; Path=/ui" + ("; Secure" if secure else "")


def clear_cookie(*, secure: bool) -> str:
    return f"{COOKIE}=; HttpOnly; SameSite=Strict; Path=/ui; Max-Age=0" + ("; Secure" if secure else "")


def same_origin(origin: str | None, scheme: str, host: str) -> bool:
    """Whether an ``Origin`` header (absent: yes) names this server (``scheme://host``)."""
    if origin is None:
        return True
    return origin.rstrip("/").lower() == f"{scheme}://{host}".lower()
