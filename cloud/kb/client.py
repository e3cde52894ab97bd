"""``RemoteKnowledgeBase``: the ``KnowledgeBase`` Protocol over the KB's native HTTP API.

Who calls it: the GM when its KB runs elsewhere (``lifelong gm --kb-url``), and tests. It speaks
the ``/knowledgebase/v1`` routes of docs/knowledge-base.md with httpx, sending ``Authorization:
Bearer TOKEN`` when given a token (default: ``$KB_TOKEN``).

Errors: a connection that fails, a timeout or a 5xx answer raise ``KBUnavailable`` (nothing is
known to have changed; try again later); a 4xx answer raises ``KBRefused`` with the server's
``error``. Idempotent calls (every read, storing samples, labelling, marking delivered) are
retried a few times with tenacity's jittered exponential wait before ``KBUnavailable`` is raised;
posting a task index (a new version each time) is not.
"""

from __future__ import annotations

import os
from collections.abc import Callable, Mapping, Sequence
from typing import Any, TypeVar
from urllib.parse import quote

import httpx
from tenacity import retry, retry_if_exception_type, stop_after_attempt, wait_random_exponential

from lifelong.cloud.kb.base import KBRefused, KBUnavailable, SampleState, StoredSample
from lifelong.common.api.lifelonglearningjob import KnowledgeBase as KBStatus
from lifelong.common.kb import UnseenSample
from lifelong.common.samples import Label

T = TypeVar("T")

ATTEMPTS = 3
"""Tries of an idempotent call before ``KBUnavailable`` reaches the caller."""


def _job_path(job: str) -> str:
    ns, _, name = job.partition("/")
    return f"{quote(ns, safe='')}/{quote(name, safe='')}"


def _stored(item: Mapping[str, Any]) -> StoredSample:
    return StoredSample(
        job=item["job"],
        node=item["node"],
        sample=UnseenSample.parse(item),
        received=item["received"],
        label=item.get("label"),
        labelled_at=item.get("labelledAt"),
        delivered_at=item.get("deliveredAt"),
    )


class RemoteKnowledgeBase:
    """A KB at ``url`` (``http(s)://HOST:PORT``, what ``KB_SERVER`` holds)."""

    def __init__(
        self,
        url: str,
        *,
        token: str | None = None,
        timeout: float = 10.0,
        verify: Any = True,
        attempts: int = ATTEMPTS,
        transport: httpx.BaseTransport | None = None,
    ) -> None:
        token = token if token is not None else os.environ.get("KB_TOKEN") or None
        headers = {"Authorization": f"Bearer {token}"} if token else {}
        self.base = url.rstrip("/") + "/knowledgebase/v1"
        self._client = httpx.Client(headers=headers, timeout=timeout, verify=verify, transport=transport)
        self._retry = retry(
            retry=retry_if_exception_type(KBUnavailable),
            stop=stop_after_attempt(max(1, attempts)),
            wait=wait_random_exponential(multiplier=0.2, max=2.0),
            reraise=True,
        )

    def close(self) -> None:
        self._client.close()

    # -- plumbing --------------------------------------------------------------------------
    def _call(self, method: str, path: str, **kwargs: Any) -> Any:
        try:
            response = self._client.request(method, self.base + path, **kwargs)
        except httpx.HTTPError as exc:
            raise KBUnavailable(f"the knowledge base at {self.base} cannot be reached: {exc}") from None
        if response.status_code >= 500:
            raise KBUnavailable(f"the knowledge base failed ({response.status_code}): {_error(response)}")
        if response.status_code >= 400:
            raise KBRefused(f"the knowledge base refused ({response.status_code}): {_error(response)}")
        try:
            return response.json()
        except ValueError:
            raise KBUnavailable("the knowledge base answered with something that is not JSON") from None

    def _idempotent(self, fn: Callable[[], T]) -> T:
        return self._retry(fn)()

    # -- the KnowledgeBase Protocol --------------------------------------------------------
    def add_unseen(self, job: str, node: str, samples: Sequence[UnseenSample]) -> int:
        body = {"node": node, "samples": [s.to_body() for s in samples]}
        out = self._idempotent(lambda: self._call("POST", f"/samples/{_job_path(job)}", json=body))
        return int(out["stored"])

    def samples(
        self,
        job: str,
        *,
        state: SampleState = "all",
        predicted: Label | None = None,
        limit: int = 1000,
        after: str | None = None,
    ) -> list[StoredSample]:
        params: dict[str, str] = {"state": state, "limit": str(limit)}
        if predicted is not None:
            params["predicted"] = str(predicted)
            if isinstance(predicted, str):
                params["predictedType"] = "str"
        if after is not None:
            params["after"] = after
        out = self._idempotent(lambda: self._call("GET", f"/samples/{_job_path(job)}", params=params))
        return [_stored(item) for item in out["items"]]

    def label(self, job: str, labels: Mapping[str, Label]) -> int:
        body = {"labels": dict(labels)}
        out = self._idempotent(lambda: self._call("POST", f"/samples/{_job_path(job)}/labels", json=body))
        return int(out["labelled"])

    def label_predicted(self, job: str, predicted: Label, label: Label) -> int:
        body = {"predicted": predicted, "label": label}
        out = self._idempotent(lambda: self._call("POST", f"/samples/{_job_path(job)}/labels", json=body))
        return int(out["labelled"])

    def undelivered(self, limit: int = 1000) -> list[StoredSample]:
        out = self._idempotent(lambda: self._call("GET", "/undelivered", params={"limit": str(limit)}))
        return [_stored(item) for item in out["items"]]

    def mark_delivered(self, job: str, ids: Sequence[str]) -> int:
        body = {"ids": list(ids)}
        out = self._idempotent(lambda: self._call("POST", f"/samples/{_job_path(job)}/delivered", json=body))
        return int(out["delivered"])

    def summary(self, job: str) -> KBStatus:
        out = self._idempotent(lambda: self._call("GET", f"/summary/{_job_path(job)}"))
        return KBStatus.model_validate(out)

    # -- the rest of the native API --------------------------------------------------------
    def post_index(self, index: Mapping[str, Any]) -> dict[str, Any]:
        """Post a task index (``job`` in it); ``{"version", "url"}``. Not retried."""
        return dict(self._call("POST", "/index", json=dict(index)))

    def index(self, job: str, version: int | None = None) -> dict[str, Any]:
        tail = "" if version is None else f"/{version}"
        return dict(self._idempotent(lambda: self._call("GET", f"/index/{_job_path(job)}{tail}")))

    def post_metrics(self, body: Mapping[str, Any]) -> dict[str, Any]:
        return dict(self._idempotent(lambda: self._call("POST", "/metrics", json=dict(body))))

    def metrics(self, job: str) -> dict[str, Any]:
        return dict(self._idempotent(lambda: self._call("GET", f"/metrics/{_job_path(job)}")))

    def tasks(self, job: str) -> dict[str, Any]:
        return dict(self._idempotent(lambda: self._call("GET", f"/tasks/{_job_path(job)}")))


def _error(response: httpx.Response) -> str:
    try:
        body = response.json()
    except ValueError:
        return response.text[:200]
    if isinstance(body, dict) and isinstance(body.get("error"), str):
        return str(body["error"])
    return response.text[:200]
