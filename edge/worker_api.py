"""The worker HTTP API of the LC, as upstream Sedna's: ``POST /sedna/workers/{name}/info``.

Started by the service on ``worker_api_host:worker_api_port`` (127.0.0.1:9100) in its own
thread (stdlib ``ThreadingHTTPServer``); workers built on the Sedna library post their
status and results here (``LC_SERVER`` in their environment).

A post is stored durably in ``pending_info`` before the 200 answer; the service's control
loop (``flush_pending``) moves each one into the outbox as a ``workerInfo`` job report once
the LC holds the job — a report for a job that has not arrived yet is kept, never dropped.
The job is the ``Worker`` object's ``spec.job``, else the body's ``ownerName``, else the
worker name's ``{job}-{stage}-{round}`` prefix. Bodies over ``max_body`` bytes get 413,
non-JSON bodies 400, and so do bodies the model (``lifelong.common.messages.WorkerInfoPost``)
refuses: not a JSON object, or ``namespace``/``ownerName`` given but not strings; the answer's
``error`` names the field.
"""

from __future__ import annotations

import json
import logging
import re
import threading
from collections.abc import Callable
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from typing import Any

from lifelong.common.errors import ConfigError, InvalidBody
from lifelong.common.messages import JobWorkerInfo, WorkerInfoPost
from lifelong.edge.db import Store
from lifelong.edge.outbox import Outbox, OutboxFull

log = logging.getLogger("lifelong.edge.worker_api")

_PATH = re.compile(r"^/sedna/workers/([^/]+)/info/?$")
JOB_KIND = "LifelongLearningJob"


def job_of(store: Store, ns: str, worker: str, post: WorkerInfoPost) -> str:
    held = store.get_resource("Worker", ns, worker)
    if held is not None and (held[1].get("spec") or {}).get("job"):
        return str(held[1]["spec"]["job"])
    if post.owner_name:
        return post.owner_name
    parts = worker.rsplit("-", 2)
    return parts[0] if len(parts) == 3 and parts[2].isdigit() else worker


def flush_pending(store: Store, outbox: Outbox) -> int:
    """Queue the kept worker reports whose job this LC now holds; returns how many.

    A kept post that cannot make a report (only a damaged database holds one) is logged once
    with its worker's name and dropped; the others still go."""
    moved = 0
    for ident, ns, worker, job, body in store.pending_info():
        if store.get_resource(JOB_KIND, ns, job) is None:
            continue
        try:
            report = JobWorkerInfo.parse({"worker": worker, "info": body}).to_body()
        except InvalidBody as exc:
            log.warning("worker info of %s/%s dropped, it cannot be reported: %s", ns, worker, exc)
            store.drop_pending_info(ident)
            continue
        with store.tx():
            outbox.append(JOB_KIND, ns, job, report)
            store.drop_pending_info(ident)
        moved += 1
    return moved


class WorkerAPI:
    def __init__(
        self,
        store: Store,
        host: str,
        port: int,
        *,
        on_info: Callable[[str, str, dict[str, Any]], None] | None = None,
        max_body: int = 1 << 20,
        wake: threading.Event | None = None,
    ) -> None:
        self.store = store
        self.on_info = on_info
        self.max_body = max_body
        self.wake = wake
        self.received = 0
        self.refused = 0  # posts the model refused (answered 400)
        api = self

        class Handler(BaseHTTPRequestHandler):
            protocol_version = "HTTP/1.1"

            def log_message(self, format: str, *args: Any) -> None:
                log.debug("worker api: " + format, *args)

            def _answer(self, code: int, obj: dict[str, Any]) -> None:
                data = json.dumps(obj).encode()
                self.send_response(code)
                self.send_header("Content-Type", "application/json")
                self.send_header("Content-Length", str(len(data)))
                self.end_headers()
                self.wfile.write(data)

            def do_POST(self) -> None:
                match = _PATH.match(self.path.split("?", 1)[0])
                if match is None:
                    self._answer(404, {"error": "not found"})
                    return
                length = int(self.headers.get("Content-Length") or 0)
                if length > api.max_body:
                    self.close_connection = True
                    self._answer(413, {"error": f"body over {api.max_body} bytes"})
                    return
                raw = self.rfile.read(length)
                try:
                    body = json.loads(raw or b"{}")
                except ValueError:
                    self._answer(400, {"error": "body is not JSON"})
                    return
                try:
                    api.accept(match.group(1), body)
                except InvalidBody as exc:
                    api.refused += 1
                    log.warning("worker info of %s refused: %s", match.group(1)[:253], exc)
                    self._answer(400, {"error": str(exc)})
                    return
                except OutboxFull as exc:
                    self._answer(503, {"error": str(exc)})
                    return
                self._answer(200, {"message": "ok"})

        try:
            self._server = ThreadingHTTPServer((host, port), Handler)
        except OSError as exc:
            raise ConfigError(f"worker API cannot listen on {host}:{port}: {exc.strerror or exc}") from None
        self._server.daemon_threads = True
        self.port = int(self._server.server_address[1])
        self._thread = threading.Thread(target=self._server.serve_forever, name="lc-worker-api", daemon=True)

    def accept(self, worker: str, body: Any) -> None:
        """Keep one post (parsed by ``WorkerInfoPost``; ``InvalidBody`` if refused)."""
        post = WorkerInfoPost.parse(body)
        ns = post.namespace or None
        if ns is None:
            held = [r for r in self.store.resources("Worker") if r[2] == worker]
            ns = held[0][1] if held else "default"
        job = job_of(self.store, ns, worker, post)
        info = dict(body)  # forwarded exactly as posted
        self.store.add_pending_info(ns, worker, job, info)
        self.received += 1
        if self.on_info is not None:
            self.on_info(ns, worker, info)
        if self.wake is not None:
            self.wake.set()

    def start(self) -> None:
        self._thread.start()
        log.info("worker API listening on %s:%d", *self._server.server_address[:2])

    def stop(self) -> None:
        self._server.shutdown()
        self._server.server_close()
