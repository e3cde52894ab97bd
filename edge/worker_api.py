"""The worker HTTP API of the LC: upstream Sedna's ``POST /sedna/workers/{name}/info``, and
``POST /lifelong/v1/jobs/{namespace}/{job}/samples`` for the unseen samples a worker found.

Who calls it: the service makes a ``WorkerAPI`` on ``worker_api_host:worker_api_port``
(127.0.0.1:9100) and calls ``WaitingReports.flush`` from its control loop; workers built on the
Sedna library post their status and results here (``LC_SERVER`` in their environment). The
server is ``lifelong.common.httpserver`` (waitress, with its limits); the application below
runs on its request threads.

What a post gets (docs/writing-workers.md, "The worker API"):

* **403** unless it comes from this host (a loopback address). Workers run on the LC's host
  (local processes, or Pods with ``hostNetwork``); nothing else may speak for a worker. The
  API takes no token, so Sedna's library works unchanged.
* **400** for a body that is not JSON or that the model (``WorkerInfoPost``) refuses (not a
  JSON object; ``namespace``/``ownerName`` given but not strings): the answer names the field.
* **413** for a body over ``max_body`` bytes (refused from its ``Content-Length`` before it is
  read) and for a report that would not fit in one bus message.
* **200** once the report is in the outbox, in the same transaction as the check: it will be
  sent, whatever happens to the process. The report's job is the ``Worker`` object's
  ``spec.job``, else the body's ``ownerName``, else the worker name's ``{job}-{stage}-{round}``
  prefix, and it must be a job this LC holds.
* **202** when that job has not reached this LC yet (a worker may start before its job's
  update arrives): the report waits in ``pending_info``, bounded by ``WaitingLimits`` (count,
  bytes, age), and moves to the outbox as soon as the job arrives. One that waits longer than
  ``age`` is dropped, logged and counted (``expired``).
* **503** with ``Retry-After`` when the outbox is full or the waiting room is at its bound: the
  report is not taken; the worker may post it again. The first refusal of a full spell is
  logged, the others counted only.

Each answer is counted by result (``lifelong_lc_worker_posts_total{result}``); the waiting
room's size is the ``lifelong_lc_worker_posts_waiting`` gauge.

``POST /lifelong/v1/jobs/{ns}/{job}/samples`` (the worker library's unseen samples, body
``UnseenSamples`` of ``lifelong.common.kb``) follows the same rules (403, 400 naming the field,
413, 503 with ``Retry-After``), with its own body bound (``samples_max_body``, 4 MiB) and these
differences:

* **404** naming the job unless this LC holds job ``ns/job`` (samples do not wait for a job);
* **413** also for one sample over ``MAX_SAMPLE_BYTES`` or over one bus message (named by its
  index);
* **200** ``{"accepted": n}`` once every sample is in the outbox: the post is split into reports
  of kind ``UnseenSamples`` under the job's namespace and name, each with at most
  ``MAX_SAMPLES_PER_POST`` samples and under one bus message (``max_report``), all appended in
  one transaction (``Outbox.append_all``): a full outbox takes none of them (503). These reports
  have no coalesce key: never replaced, never dropped.

Samples are counted in ``lifelong_lc_unseen_samples_total{result}``: ``accepted``, and
``refused`` for the samples of a post that was not taken (the entries of its ``samples`` list,
if the body has one).
"""

from __future__ import annotations

import dataclasses
import ipaddress
import json
import logging
import re
import threading
import time
from collections.abc import Callable, Iterable
from dataclasses import dataclass
from typing import TYPE_CHECKING, Any

from lifelong.common.errors import ConfigError, InvalidBody
from lifelong.common.httpserver import HTTPLimits, WSGIServer
from lifelong.common.messages import JobWorkerInfo, WorkerInfoPost
from lifelong.common.samples import MAX_SAMPLE_BYTES, MAX_SAMPLES_PER_POST
from lifelong.edge.db import Store
from lifelong.edge.outbox import Outbox, OutboxFull

if TYPE_CHECKING:
    from lifelong.common.kb import UnseenSamples

log = logging.getLogger("lifelong.edge.worker_api")

_PATH = re.compile(r"^/sedna/workers/([^/]{1,253})/info/?$")
_SAMPLES_PATH = re.compile(r"^/lifelong/v1/jobs/([^/]{1,253})/([^/]{1,253})/samples/?$")
JOB_KIND = "LifelongLearningJob"
SAMPLES_KIND = "UnseenSamples"
SAMPLES_MAX_BODY = 4 << 20
"""Bytes of one post of unseen samples (up to ``MAX_SAMPLES_PER_POST``; split into reports)."""
RETRY_AFTER = 5  # seconds suggested to a worker turned away with 503
RESULTS = ("stored", "waiting", "invalid", "too_large", "full", "forbidden", "not_found", "method", "expired")


@dataclass(frozen=True)
class WaitingLimits:
    """Bounds of the reports that wait for their job to reach this LC (``pending_info``)."""

    reports: int = 1000
    bytes: int = 16 << 20
    age: float = 3600.0  # seconds


class _Refused(Exception):
    def __init__(self, status: int, result: str, message: str) -> None:
        super().__init__(message)
        self.status, self.result = status, result


def job_of(store: Store, ns: str, worker: str, post: WorkerInfoPost) -> str:
    held = store.get_resource("Worker", ns, worker)
    if held is not None and (held[1].get("spec") or {}).get("job"):
        return str(held[1]["spec"]["job"])
    if post.owner_name:
        return post.owner_name
    parts = worker.rsplit("-", 2)
    return parts[0] if len(parts) == 3 and parts[2].isdigit() else worker


def _loopback(address: str) -> bool:
    try:
        ip = ipaddress.ip_address(address.split("%", 1)[0])
    except ValueError:
        return False
    mapped = getattr(ip, "ipv4_mapped", None)
    return bool(ip.is_loopback or (mapped is not None and mapped.is_loopback))


class WaitingReports:
    """The reports kept for jobs this LC does not hold yet, and their move to the outbox."""

    def __init__(
        self,
        store: Store,
        outbox: Outbox,
        limits: WaitingLimits | None = None,
        *,
        clock: Callable[[], float] = time.time,
    ) -> None:
        self.store = store
        self.outbox = outbox
        self.limits = limits or WaitingLimits()
        self.clock = clock
        self.expired = 0
        self._outbox_full = False  # logged once per full spell, by flush

    def keep(self, ns: str, worker: str, job: str, info: dict[str, Any], size: int) -> None:
        """Keep one report (inside the caller's transaction); ``_Refused`` at a bound."""
        count, total = self.store.pending_info_size()
        if count >= self.limits.reports or total + size > self.limits.bytes:
            raise _Refused(
                503,
                "full",
                f"{count} reports ({total} bytes) already wait for jobs this LC does not hold yet "
                f"(bounds: {self.limits.reports} reports, {self.limits.bytes} bytes); retry later",
            )
        self.store.add_pending_info(ns, worker, job, info, self.clock())

    def size(self) -> tuple[int, int]:
        return self.store.pending_info_size()

    def flush(self) -> int:
        """Move the kept reports whose job this LC now holds into the outbox; drop the ones
        older than ``limits.age``. Returns how many moved. One that cannot make a report (only
        a damaged database holds one) is logged with its worker's name and dropped; a full
        outbox stops the move until the next call (logged once until it has room again)."""
        kept = self.store.pending_info()
        if not kept:  # the usual case, and this runs at every control step: no write at all
            self._outbox_full = False
            return 0
        cutoff = self.clock() - self.limits.age
        dropped = self.store.drop_pending_info_before(cutoff)
        if dropped:
            kept = self.store.pending_info()
            self.expired += dropped
            log.warning(
                "%d worker reports dropped: their job did not reach this LC within %.0f s",
                dropped,
                self.limits.age,
            )
        moved = 0
        for ident, ns, worker, job, body in kept:
            if self.store.get_resource(JOB_KIND, ns, job) is None:
                continue
            try:
                report = JobWorkerInfo.parse({"worker": worker, "info": body}).to_body()
            except InvalidBody as exc:
                log.warning("worker info of %s/%s dropped, it cannot be reported: %s", ns, worker, exc)
                self.store.drop_pending_info(ident)
                continue
            try:
                with self.store.tx():
                    self.outbox.append(JOB_KIND, ns, job, report)
                    self.store.drop_pending_info(ident)
            except OutboxFull as exc:
                if not self._outbox_full:
                    log.warning("worker reports wait for room in the outbox: %s", exc)
                self._outbox_full = True
                return moved
            moved += 1
        if self._outbox_full:
            log.info("the outbox has room again; waiting worker reports move on")
        self._outbox_full = False
        return moved


class WorkerAPI:
    def __init__(
        self,
        store: Store,
        outbox: Outbox,
        host: str,
        port: int,
        *,
        limits: HTTPLimits | None = None,
        max_report: int | None = None,
        waiting: WaitingReports | None = None,
        on_info: Callable[[str, str, dict[str, Any]], None] | None = None,
        wake: threading.Event | None = None,
        samples_max_body: int = SAMPLES_MAX_BODY,
    ) -> None:
        self.store = store
        self.outbox = outbox
        self.limits = limits or HTTPLimits()
        self.max_report = max_report or self.limits.max_body
        self.samples_max_body = samples_max_body
        self.samples = {"accepted": 0, "refused": 0}  # unseen samples, by what became of them
        self.waiting = waiting or WaitingReports(store, outbox)
        self.on_info = on_info
        self.wake = wake
        self.counts: dict[str, int] = dict.fromkeys(RESULTS, 0)
        self._lock = threading.Lock()
        self._full_logged = False
        self._forbidden_logged: set[str] = set()
        # The server's bound is the larger of the two routes'; each route checks its own from
        # the Content-Length before it reads the body.
        server_limits = dataclasses.replace(
            self.limits, max_body=max(self.limits.max_body, self.samples_max_body)
        )
        try:
            self._server = WSGIServer(self.app, host, port, server_limits, name="lc-worker-api")
        except OSError as exc:
            raise ConfigError(f"worker API cannot listen on {host}:{port}: {exc.strerror or exc}") from None
        self.port = self._server.port

    # -- counters ----------------------------------------------------------------------------
    def _count(self, result: str) -> None:
        with self._lock:
            self.counts[result] += 1

    @property
    def received(self) -> int:
        return self.counts["stored"] + self.counts["waiting"]

    @property
    def refused(self) -> int:
        return self.counts["invalid"]

    def snapshot(self) -> dict[str, int]:
        with self._lock:
            out = dict(self.counts)
        out["expired"] = self.waiting.expired
        return out

    def samples_snapshot(self) -> dict[str, int]:
        with self._lock:
            return dict(self.samples)

    def _count_samples(self, result: str, n: int) -> None:
        with self._lock:
            self.samples[result] += n

    # -- the WSGI application ------------------------------------------------------------------
    def app(self, environ: dict[str, Any], start_response: Callable[..., Any]) -> Iterable[bytes]:
        headers: list[tuple[str, str]] = []
        try:
            status, result, answer = self._handle(environ)
        except _Refused as exc:
            status, result, answer = exc.status, exc.result, {"error": str(exc)}
            if status == 503:
                headers.append(("Retry-After", str(RETRY_AFTER)))
        except Exception:  # a bug of ours: the worker gets 500, the LC goes on
            log.exception("worker API: handling a post failed")
            status, result, answer = 500, "", {"error": "internal error; see the LC's log"}
        if result:
            self._count(result)
        if result == "full":
            if not self._full_logged:
                log.warning("worker API: report refused (503): %s", answer["error"])
            self._full_logged = True
        elif result in ("stored", "waiting"):
            self._full_logged = False
        data = json.dumps(answer).encode()
        reason = {200: "OK", 202: "Accepted", 400: "Bad Request", 403: "Forbidden", 404: "Not Found"}
        reason |= {405: "Method Not Allowed", 413: "Content Too Large", 500: "Internal Server Error"}
        reason |= {503: "Service Unavailable"}
        start_response(
            f"{status} {reason[status]}",
            [("Content-Type", "application/json"), ("Content-Length", str(len(data))), *headers],
        )
        return [data]

    def _handle(self, environ: dict[str, Any]) -> tuple[int, str, dict[str, Any]]:
        peer = str(environ.get("REMOTE_ADDR") or "")
        if not _loopback(peer):
            if peer not in self._forbidden_logged and len(self._forbidden_logged) < 100:
                self._forbidden_logged.add(peer)
                log.warning("worker API: refused a post from %s (only this host may post)", peer[:64])
            raise _Refused(403, "forbidden", f"the worker API takes reports from this host only, not {peer}")
        path = str(environ.get("PATH_INFO") or "")
        match = _PATH.match(path)
        samples = _SAMPLES_PATH.match(path) if match is None else None
        if match is None and samples is None:
            raise _Refused(
                404,
                "not_found",
                "not found; post to /sedna/workers/{name}/info "
                "or /lifelong/v1/jobs/{namespace}/{job}/samples",
            )
        if environ.get("REQUEST_METHOD") != "POST":
            raise _Refused(405, "method", "only POST is allowed here")
        limit = self.samples_max_body if samples is not None else self.limits.max_body
        length = int(environ.get("CONTENT_LENGTH") or 0)  # the server checked it is a number
        if length > limit:
            raise _Refused(413, "too_large", f"body of {length} bytes is over {limit}")
        raw = environ["wsgi.input"].read(length) if length else b""
        try:
            body = json.loads(raw or b"{}")
        except ValueError:
            raise _Refused(400, "invalid", "body is not JSON") from None
        if samples is not None:
            return self._samples(samples.group(1), samples.group(2), body)
        assert match is not None
        worker = match.group(1)
        try:
            job, waiting = self.accept(worker, body)
        except InvalidBody as exc:
            log.warning("worker info of %s refused: %s", worker[:253], exc)
            raise _Refused(400, "invalid", str(exc)) from None
        except OutboxFull as exc:
            raise _Refused(503, "full", f"{exc}; retry later") from None
        if waiting:
            return (
                202,
                "waiting",
                {
                    "message": f"kept until job {job} reaches this node "
                    f"(at most {self.waiting.limits.age:.0f} s), then reported"
                },
            )
        return 200, "stored", {"message": "ok"}

    # -- unseen samples --------------------------------------------------------------------------
    def _samples(self, ns: str, job: str, body: Any) -> tuple[int, str, dict[str, Any]]:
        """One post of unseen samples; every sample it carries is counted as accepted or
        refused."""
        listed = body.get("samples") if isinstance(body, dict) else None
        try:
            n = self.accept_samples(ns, job, body)
        except _Refused:
            self._count_samples("refused", len(listed) if isinstance(listed, list) else 0)
            raise
        self._count_samples("accepted", n)
        return 200, "stored", {"accepted": n}

    def accept_samples(self, ns: str, job: str, body: Any) -> int:
        """Take one post of unseen samples for job ``ns/job`` into the outbox, split into
        reports; how many samples. ``_Refused`` (400, 404, 413, 503) if none was taken."""
        # The knowledge base's models load with the first post: an LC whose workers post no
        # samples never needs them (docs/performance.md, "LC").
        from lifelong.common.kb import UnseenSamples

        try:
            post = UnseenSamples.parse(body)
        except InvalidBody as exc:
            log.warning("unseen samples for job %s/%s refused: %s", ns[:253], job[:253], exc)
            raise _Refused(400, "invalid", str(exc)) from None
        chunks = self.split_samples(post)
        reports = [(SAMPLES_KIND, ns, job, chunk) for chunk in chunks]
        try:
            with self.store.tx():
                if self.store.get_resource(JOB_KIND, ns, job) is None:
                    raise _Refused(
                        404, "not_found", f"job {ns}/{job} is not held by this LC (not sent to this node)"
                    )
                self.outbox.append_all(reports)
        except OutboxFull as exc:
            raise _Refused(503, "full", f"{exc}; retry later") from None
        if self.wake is not None:
            self.wake.set()
        return len(post.samples)

    def split_samples(self, post: UnseenSamples) -> list[dict[str, Any]]:
        """The report bodies of one post: at most ``MAX_SAMPLES_PER_POST`` samples each and at
        most ``max_report`` bytes as compact JSON (non-ASCII escaped, so at least what either
        codec makes of it). Each sample as its model writes it (absent optional fields left
        out). ``_Refused`` (413) for a sample that alone is too big."""

        def size(value: Any) -> int:
            return len(json.dumps(value, separators=(",", ":")))

        base = size({"samples": [], "worker": post.worker})
        one_bound = min(MAX_SAMPLE_BYTES, self.max_report - base)
        chunks: list[list[dict[str, Any]]] = [[]]
        used = base
        for i, sample in enumerate(post.samples):
            wire = sample.to_body()
            cost = size(wire)
            if cost > one_bound:
                raise _Refused(
                    413, "too_large", f"samples[{i}] (id {sample.id}) is {cost} bytes, over {one_bound}"
                )
            if chunks[-1]:
                cost += 1  # the comma between two samples
            if len(chunks[-1]) >= MAX_SAMPLES_PER_POST or used + cost > self.max_report:
                chunks.append([])
                used, cost = base, cost - 1
            chunks[-1].append(wire)
            used += cost
        return [{"samples": chunk, "worker": post.worker} for chunk in chunks]

    # -- worker info -----------------------------------------------------------------------------
    def accept(self, worker: str, body: Any) -> tuple[str, bool]:
        """Take one post: into the outbox if its job is held, else into the waiting room.
        Returns (job, waiting). ``InvalidBody``, ``OutboxFull`` or ``_Refused`` if not taken."""
        post = WorkerInfoPost.parse(body)
        ns = post.namespace or None
        if ns is None:
            held = [r for r in self.store.resources("Worker") if r[2] == worker]
            ns = held[0][1] if held else "default"
        job = job_of(self.store, ns, worker, post)
        info = dict(body)  # forwarded exactly as posted
        report = JobWorkerInfo.parse({"worker": worker, "info": info}).to_body()
        size = len(json.dumps(report, separators=(",", ":")))
        if size > self.max_report:
            raise _Refused(
                413, "too_large", f"the report is {size} bytes, over one message's {self.max_report}"
            )
        with self.store.tx():
            waiting = self.store.get_resource(JOB_KIND, ns, job) is None
            if waiting:
                self.waiting.keep(ns, worker, job, info, size)
            else:
                self.outbox.append(JOB_KIND, ns, job, report)
        if self.on_info is not None:
            self.on_info(ns, worker, info)
        if self.wake is not None:
            self.wake.set()
        return job, waiting

    def start(self) -> None:
        self._server.start()
        log.info("worker API listening on %s:%d", self._server.host, self.port)

    def stop(self) -> None:
        self._server.close()
