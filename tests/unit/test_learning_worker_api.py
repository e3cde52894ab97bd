"""What the library posts to the LC's worker API, checked on a real HTTP server on a loopback
port (a recorder, not a fake of the LC: the tests assert on what arrived): the round's results
(``/sedna/workers/{name}/info``) and unseen samples (``/lifelong/v1/jobs/{ns}/{job}/samples``),
retried on 503 and while the server is away, chunked, with content ids."""

from __future__ import annotations

import json
import threading
import time
from collections.abc import Iterator
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from pathlib import Path
from typing import Any

import pytest
from sklearn.linear_model import LogisticRegression
from unit.test_learning_data import PARTS, dd, latest_index, source, worker_env

from lifelong.common.kb import UnseenSamples
from lifelong.common.messages import WorkerInfoPost
from lifelong.common.samples import MAX_SAMPLES_PER_POST
from lifelong.learning import LifelongLearning, SampleShipper
from lifelong.learning.reporting import UnseenSample, sample_id
from lifelong.learning.transport import HttpError, request

BY_DOMAIN = {"method": "TaskDefinitionByDataAttr", "param": {"attribute": ["domain"]}}


class Recorder:
    """An HTTP server that keeps every POST and answers from a script (default 200)."""

    def __init__(self, port: int = 0) -> None:
        self.posts: list[tuple[str, Any]] = []
        self.script: list[tuple[int, dict[str, str]]] = []
        self.lock = threading.Lock()
        recorder = self

        class Handler(BaseHTTPRequestHandler):
            def log_message(self, format: str, *args: Any) -> None:
                pass

            def do_POST(self) -> None:
                body = json.loads(self.rfile.read(int(self.headers.get("Content-Length") or 0)))
                with recorder.lock:
                    code, headers = recorder.script.pop(0) if recorder.script else (200, {})
                    if code == 200:
                        recorder.posts.append((self.path, body))
                self.send_response(code)
                for k, v in headers.items():
                    self.send_header(k, v)
                self.send_header("Content-Length", "2")
                self.end_headers()
                self.wfile.write(b"{}")

        self.server = ThreadingHTTPServer(("127.0.0.1", port), Handler)
        self.url = f"http://127.0.0.1:{self.server.server_address[1]}"
        self.thread = threading.Thread(target=self.server.serve_forever, daemon=True)
        self.thread.start()

    def close(self) -> None:
        self.server.shutdown()
        self.server.server_close()


@pytest.fixture
def lc() -> Iterator[Recorder]:
    server = Recorder()
    yield server
    server.close()


def test_train_reports_the_index_url_as_its_model(
    lc: Recorder, monkeypatch: pytest.MonkeyPatch, tmp_path: Path
) -> None:
    kb = worker_env(monkeypatch, tmp_path)
    monkeypatch.setenv("LC_SERVER", lc.url)
    LifelongLearning(LogisticRegression(max_iter=300), task_definition=BY_DOMAIN).train(
        source({"cam_a": PARTS[0][:100], "cam_b": PARTS[1][:100]})
    )
    [(path, body)] = lc.posts
    assert path == "/sedna/workers/digits-train-1/info"
    WorkerInfoPost.parse(body)
    assert body["ownerName"] == "digits" and body["namespace"] == "default" and body["kind"] == "train"
    [result] = body["results"]
    assert result["url"] == str(latest_index(kb)) and result["format"] == "json"
    assert set(result["metrics"]) == {"cam-a", "cam-b"}


def test_inference_posts_unseen_samples_with_rows_attrs_and_content_ids(
    lc: Recorder, monkeypatch: pytest.MonkeyPatch, tmp_path: Path
) -> None:
    kb = worker_env(monkeypatch, tmp_path)
    LifelongLearning(LogisticRegression(max_iter=300), task_definition=BY_DOMAIN).train(
        source({"cam_a": PARTS[0][:100], "cam_b": PARTS[1][:100]})
    )
    files = dd.write_example(tmp_path / "data")
    monkeypatch.setenv("MODEL_URLS", str(latest_index(kb)))
    monkeypatch.setenv("LC_SERVER", lc.url)
    monkeypatch.setenv("WORKER_NAME", "digits-deploy-1")
    lc.script = [(503, {"Retry-After": "0"})]  # the LC is busy once: retried
    from lifelong.learning import CSVDataParse

    data = CSVDataParse(data_type="test")
    data.parse(files["infer"], label="label")
    job = LifelongLearning(LogisticRegression(), task_definition=BY_DOMAIN)
    _, unseen, _ = job.inference(data)
    assert sum(unseen) == 100
    assert job.shipper is not None and job.shipper.flush(15)
    [(path, body)] = lc.posts
    assert path == "/lifelong/v1/jobs/default/digits/samples"
    posted = UnseenSamples.parse(body)
    assert len(posted.samples) == 100
    first = posted.samples[0]
    assert first.attrs == {"domain": "cam_c"}
    assert first.row["domain"] == "cam_c" and first.row["label"] is None and "f63" in first.row
    assert first.id == sample_id(first.row, first.attrs)
    assert first.task in ("cam-a", "cam-b") and first.predicted is not None and first.confidence is not None
    # the same samples again: the same ids (the LC and the KB store them once)
    job.inference(data)
    assert job.shipper.flush(15)
    assert [s["id"] for s in lc.posts[1][1]["samples"]] == [s.id for s in posted.samples]


def test_shipper_chunks_and_keeps_samples_while_the_lc_is_away(monkeypatch: pytest.MonkeyPatch) -> None:
    # a port with nothing listening: the samples are kept, nothing raises
    away = Recorder()
    url = away.url
    away.close()
    shipper = SampleShipper(url, "default", "digits", retry_seconds=0.1, attempts=1)
    rows = [{"label": None, "f0": str(i)} for i in range(MAX_SAMPLES_PER_POST + 20)]
    shipper.add(UnseenSample(id=sample_id(r), row=r) for r in rows)
    deadline = time.monotonic() + 15
    while shipper.failures < 1 and time.monotonic() < deadline:
        time.sleep(0.02)
    assert shipper.failures >= 1 and len(shipper.queue) == len(rows)
    # the LC comes back on that port: everything arrives, in posts of at most MAX_SAMPLES_PER_POST
    server = _recorder_on(int(url.rsplit(":", 1)[1]))
    try:
        assert shipper.flush(15)
        sizes = [len(b["samples"]) for _, b in server.posts]
        assert sizes == [MAX_SAMPLES_PER_POST, 20]
        assert shipper.posted == len(rows) and shipper.dropped == 0
    finally:
        server.close()


def test_shipper_is_bounded_and_drops_refused_batches(lc: Recorder) -> None:
    shipper = SampleShipper(lc.url, "default", "digits", max_queued=3, retry_seconds=0.1, attempts=1)
    lc.script = [(400, {})]
    with shipper._wake:  # hold the thread back so the queue's bound is what decides
        shipper.queue.extend(UnseenSample(id=f"s{i}", row={"f0": i}) for i in range(3))
    shipper.add([UnseenSample(id="s3", row={"f0": 3})])
    assert shipper.dropped == 1
    assert shipper.flush(15)
    assert shipper.refused == 3 and shipper.posted == 0 and lc.posts == []
    shipper.add([UnseenSample(id="s9", row={"f0": 9})])
    assert shipper.flush(15)
    assert [b["samples"][0]["id"] for _, b in lc.posts] == ["s9"]


def _recorder_on(port: int) -> Recorder:
    """A recorder on ``port`` (the one just closed), retried while the port is still held."""
    deadline = time.monotonic() + 10
    while True:
        try:
            return Recorder(port)
        except OSError:
            if time.monotonic() > deadline:
                raise
            time.sleep(0.05)


def test_a_request_is_retried_on_503_after_retry_after(lc: Recorder) -> None:
    lc.script = [(503, {"Retry-After": "0"}), (503, {"Retry-After": "0"})]
    started = time.monotonic()
    assert request("POST", f"{lc.url}/x", json={"n": 1}, attempts=3).status_code == 200
    assert lc.posts == [("/x", {"n": 1})] and time.monotonic() - started < 5
    lc.script = [(503, {"Retry-After": "0"})] * 2
    with pytest.raises(HttpError, match="still 503 after 2 tries"):
        request("POST", f"{lc.url}/y", json={}, attempts=2)
