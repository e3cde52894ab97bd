"""HTTP calls of the library, with retries: to the knowledge base and to the LC's worker API.

Who uses it: ``lifelong.learning.knowledge`` (the KB's routes) and ``lifelong.learning.reporting``
(the LC's). A connection error, a timeout and ``503`` are retried (tenacity), waiting what
``Retry-After`` says when the server sends it, else backing off exponentially; any other answer
is returned to the caller, which decides. ``Authorization: Bearer $KB_TOKEN`` is added for the KB
when the variable is set; the token is never logged.
"""

from __future__ import annotations

import logging
from typing import Any

import httpx
from tenacity import (
    RetryCallState,
    Retrying,
    retry_if_exception_type,
    retry_if_result,
    stop_after_attempt,
    wait_exponential,
)

log = logging.getLogger(__name__)

__all__ = ["HttpError", "request"]

RETRY_AFTER_CAP = 30.0
"""The longest wait a ``Retry-After`` may ask for between two tries."""


class HttpError(RuntimeError):
    """A request failed for good: its status (None: no answer) and a message without secrets."""

    def __init__(self, message: str, status: int | None = None) -> None:
        super().__init__(message)
        self.status = status


def _retry_after(state: RetryCallState) -> float:
    backoff = wait_exponential(multiplier=0.2, max=5.0)(state)
    outcome = state.outcome
    if outcome is not None and not outcome.failed:
        resp = outcome.result()
        header = resp.headers.get("Retry-After") if isinstance(resp, httpx.Response) else None
        if header:
            try:
                return min(max(float(header), 0.0), RETRY_AFTER_CAP)
            except ValueError:
                pass
    return float(backoff)


def request(
    method: str,
    url: str,
    *,
    attempts: int = 5,
    timeout: float = 10.0,
    token: str | None = None,
    **kwargs: Any,
) -> httpx.Response:
    """``method url``, retried on connection errors and 503; the last answer otherwise.
    ``HttpError`` when no answer came after ``attempts`` tries or the last one was 503."""
    headers = dict(kwargs.pop("headers", None) or {})
    if token:
        headers["Authorization"] = f"Bearer {token}"
    retrying = Retrying(
        stop=stop_after_attempt(max(1, attempts)),
        wait=_retry_after,
        retry=retry_if_exception_type(httpx.TransportError) | retry_if_result(lambda r: r.status_code == 503),
        reraise=True,
        retry_error_callback=lambda state: state.outcome.result() if state.outcome else None,
    )
    try:
        resp: httpx.Response | None = retrying(
            httpx.request, method, url, headers=headers, timeout=timeout, **kwargs
        )
    except httpx.TransportError as exc:
        raise HttpError(f"{method} {url}: no answer after {attempts} tries ({type(exc).__name__})") from None
    if resp is None:  # pragma: no cover - tenacity always keeps the last outcome
        raise HttpError(f"{method} {url}: no answer")
    if resp.status_code == 503:
        raise HttpError(f"{method} {url}: still 503 after {attempts} tries", 503)
    return resp
