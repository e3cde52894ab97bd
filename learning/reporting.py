"""What a worker tells its Local Controller: its results and the unseen samples it met.

Who uses it: ``LifelongLearning``. Both go to the LC's worker API (docs/writing-workers.md):

- ``POST {LC_SERVER}/sedna/workers/{WORKER_NAME}/info``, a ``WorkerInfoPost`` body with Sedna's
  fields (``name``, ``namespace``, ``ownerName``, ``ownerKind``, ``kind``, ``status``,
  ``results``);
- ``POST {LC_SERVER}/lifelong/v1/jobs/{NAMESPACE}/{JOB_NAME}/samples``, an ``UnseenSamples`` body
  (``lifelong.common.kb``) of at most ``MAX_SAMPLES_PER_POST`` samples. ``SampleShipper`` keeps
  the samples in a bounded queue and posts them from a thread, so an inference service never
  waits for the LC, nor fails when it is away: a post that gets no answer, or 503 (the LC's
  ``Retry-After`` is honoured), is retried later; a sample refused as bad (400, 413) is
  dropped, logged and counted; when the queue is full the oldest samples are dropped and
  counted. Sample ids come from the sample's content, so a sample sent twice is stored once.
"""

from __future__ import annotations

import hashlib
import json
import logging
import os
import threading
from collections import deque
from collections.abc import Iterable
from datetime import UTC, datetime
from typing import Any

from lifelong.common.kb import UnseenSample, UnseenSamples
from lifelong.common.samples import MAX_SAMPLES_PER_POST
from lifelong.learning.transport import HttpError, request

log = logging.getLogger(__name__)

__all__ = ["SampleShipper", "post_worker_info", "sample_id"]

DEFAULT_LC_SERVER = "http://127.0.0.1:9100"


def sample_id(row: dict[str, Any], attrs: dict[str, Any] | None = None) -> str:
    """An id from the sample's content (its row without empty cells, and its attributes)."""
    content = {"row": {k: v for k, v in row.items() if v is not None and v != ""}, "attrs": attrs or {}}
    digest = hashlib.sha256(json.dumps(content, sort_keys=True, default=str).encode()).hexdigest()
    return f"s-{digest[:40]}"


def post_worker_info(
    kind: str,
    results: list[dict[str, Any]],
    status: str = "completed",
    owner_info: dict[str, Any] | None = None,
) -> bool:
    """Report this worker's results to the LC; False (logged) when it could not be done."""
    server = (os.environ.get("LC_SERVER") or "").rstrip("/")
    worker = os.environ.get("WORKER_NAME") or ""
    if not server or not worker:
        log.warning("LC_SERVER or WORKER_NAME is not set: the results are not reported")
        return False
    body: dict[str, Any] = {
        "name": worker,
        "namespace": os.environ.get("NAMESPACE") or "default",
        "ownerName": os.environ.get("JOB_NAME") or "",
        "ownerKind": "lifelonglearningjob",
        "kind": kind,
        "status": status,
        "results": results,
    }
    if owner_info:
        body["ownerInfo"] = owner_info
    url = f"{server}/sedna/workers/{worker}/info"
    try:
        resp = request("POST", url, json=body)
    except HttpError as exc:
        log.error("cannot report to the LC: %s", exc)
        return False
    if resp.status_code not in (200, 202):
        log.error("the LC refused the report: %s %s", resp.status_code, resp.text[:200])
        return False
    return True


class SampleShipper:
    """Posts unseen samples to the LC from a background thread, bounded and retried."""

    def __init__(
        self,
        lc_server: str | None = None,
        namespace: str | None = None,
        job: str | None = None,
        *,
        worker: str | None = None,
        max_queued: int = 10_000,
        retry_seconds: float = 5.0,
        attempts: int = 3,
    ) -> None:
        self.lc_server = (lc_server or os.environ.get("LC_SERVER") or DEFAULT_LC_SERVER).rstrip("/")
        self.namespace = namespace or os.environ.get("NAMESPACE") or "default"
        self.job = job or os.environ.get("JOB_NAME") or ""
        self.worker = worker if worker is not None else os.environ.get("WORKER_NAME")
        self.queue: deque[UnseenSample] = deque()
        self.max_queued = max_queued
        self.retry_seconds = retry_seconds
        self.attempts = attempts
        self.posted = 0
        self.dropped = 0
        self.refused = 0
        self.failures = 0
        self._lock = threading.Lock()
        self._wake = threading.Condition(self._lock)
        self._idle = threading.Event()
        self._idle.set()
        self._thread: threading.Thread | None = None
        self._stop = False

    @property
    def url(self) -> str:
        return f"{self.lc_server}/lifelong/v1/jobs/{self.namespace}/{self.job}/samples"

    def add(self, samples: Iterable[UnseenSample]) -> None:
        """Queue samples for posting (never blocks on the network)."""
        with self._wake:
            for sample in samples:
                if len(self.queue) >= self.max_queued:
                    self.queue.popleft()
                    self.dropped += 1
                    if self.dropped == 1 or self.dropped % 1000 == 0:
                        log.warning(
                            "unseen-sample queue full (%d): dropped %d so far", self.max_queued, self.dropped
                        )
                self.queue.append(sample)
            self._idle.clear()
            self._wake.notify()
            if self._thread is None or not self._thread.is_alive():
                self._stop = False
                self._thread = threading.Thread(target=self._run, name="unseen-samples", daemon=True)
                self._thread.start()

    def flush(self, timeout: float = 30.0) -> bool:
        """Wait until the queue is empty (True) or ``timeout`` passed (False)."""
        return self._idle.wait(timeout)

    def close(self, timeout: float = 5.0) -> None:
        self.flush(timeout)
        with self._wake:
            self._stop = True
            self._wake.notify()

    def _run(self) -> None:
        while True:
            with self._wake:
                while not self.queue and not self._stop:
                    self._idle.set()
                    self._wake.wait()
                if self._stop and not self.queue:
                    self._idle.set()
                    return
                batch = [self.queue[i] for i in range(min(MAX_SAMPLES_PER_POST, len(self.queue)))]
            outcome = self._post(batch)
            with self._wake:
                if outcome in ("posted", "refused"):
                    for _ in batch:
                        if self.queue:
                            self.queue.popleft()
                    if outcome == "posted":
                        self.posted += len(batch)
                    else:
                        self.refused += len(batch)
                    continue
                self.failures += 1
                self._wake.wait(self.retry_seconds)  # the LC is away: try again later

    def _post(self, batch: list[UnseenSample]) -> str:
        try:
            body = UnseenSamples(samples=batch, worker=self.worker).to_body()
        except ValueError as exc:  # never expected: each sample was checked when it was made
            log.error("%d unseen samples cannot be posted: %s", len(batch), exc)
            return "refused"
        try:
            resp = request("POST", self.url, json=body, attempts=self.attempts)
        except HttpError as exc:
            log.warning("unseen samples not posted yet (%d kept): %s", len(self.queue), exc)
            return "later"
        if resp.status_code in (200, 201, 202):
            return "posted"
        if resp.status_code in (400, 404, 409, 413, 422):
            log.error(
                "the LC refused %d unseen samples: %s %s", len(batch), resp.status_code, resp.text[:200]
            )
            return "refused"
        log.warning("unseen samples not posted yet: %s %s", resp.status_code, resp.text[:200])
        return "later"


def now_rfc3339() -> str:
    return datetime.now(UTC).isoformat(timespec="seconds").replace("+00:00", "Z")
