"""The knowledge base's HTTP API on a real ``KBServer`` on a loopback port.

Sedna's routes are called the way Sedna's ``KBClient`` (lib/sedna/service/client.py) calls them:
``requests.request`` with ``files={"file": fin}`` / ``files={"task": fin}`` and ``json=data``, the
answer read with ``response.json()`` and joined to ``{KB_SERVER}/knowledgebase``. The native API
is called with httpx and through ``RemoteKnowledgeBase``. Bad input (malformed JSON, wrong types,
path traversal, oversized bodies, unknown jobs) and tokens are checked over the same socket.
"""

from __future__ import annotations

import http.client
import json
import pickle
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import httpx
import joblib
import pytest
import requests
from harness.waiting import free_port

from lifelong.cloud.kb.base import KBRefused, KBUnavailable
from lifelong.cloud.kb.client import RemoteKnowledgeBase
from lifelong.cloud.kb.server import KBServer
from lifelong.common.errors import ConfigError
from lifelong.common.httpserver import HTTPLimits
from lifelong.common.kb import UnseenSample

JOB = "default/ll-job"
WRITER, READER = "kbw-0123456789abcdef", "kbr-0123456789abcdef"

INDEX: dict[str, Any] = {
    "job": JOB,
    "round": 1,
    "create_time": "2024-05-01T10:00:00Z",
    "seen_task": {
        "task_groups": [
            {
                "entry": "summer",
                "tasks": [{"entry": "summer-a", "attrs": {"season": "summer"}, "samples": 40}],
                "samples": 40,
                "model": {"url": "models/summer.pkl", "metrics": {"accuracy": 0.91}, "classes": [0, 1]},
            },
            {
                "entry": "winter",
                "tasks": [{"entry": "winter-a", "attrs": {"season": "winter"}, "samples": 12}],
                "samples": 12,
                "model": {"url": "models/winter.pkl", "metrics": {}, "classes": [1, 2]},
                "transfer": {"from": "summer", "ratio": 0.7},
            },
        ],
        "extractor": {"attributes": ["season"], "map": {"summer": "summer", "winter": "winter"}},
    },
}


def _serve(tmp_path: Path, **kwargs: Any) -> Iterator[KBServer]:
    server = KBServer(tmp_path / "kb", "127.0.0.1", 0, **kwargs)
    server.start()
    try:
        yield server
    finally:
        server.stop()


@pytest.fixture
def kb(tmp_path: Path) -> Iterator[KBServer]:
    yield from _serve(tmp_path)


@pytest.fixture
def kb_pickle(tmp_path: Path) -> Iterator[KBServer]:
    yield from _serve(tmp_path, allow_pickle=True)


def sedna_base(server: KBServer) -> str:
    """``KBClient.kbserver``: ``{KB_SERVER}/knowledgebase``."""
    return f"{server.url}/knowledgebase"


def sedna_request(url: str, method: str, **kwargs: Any) -> requests.Response:
    """What Sedna's ``http_request`` sends (``requests.request(method=..., url=..., **kwargs)``)."""
    return requests.request(method=method, url=url, timeout=10, **kwargs)


# -- Sedna's routes, as KBClient calls them ------------------------------------------------------


def test_sedna_upload_file_answers_a_download_path_that_serves_the_file(kb: KBServer, tmp_path: Path) -> None:
    model = tmp_path / "model.pkl"
    model.write_bytes(b"\x80\x04model bytes" * 1000)
    base = sedna_base(kb)
    with model.open("rb") as fin:  # KBClient.upload_file
        response = sedna_request(f"{base}/file/upload", "POST", files={"file": fin})
    assert response.status_code == 200
    assert response.json() == "/file/download?files=model.pkl&name=model.pkl"
    url = f"{base}/{response.json().lstrip('/')}"  # what upload_file returns
    fetched = requests.get(url, timeout=10)
    assert fetched.status_code == 200
    assert fetched.content == model.read_bytes()
    assert 'filename="model.pkl"' in fetched.headers["Content-Disposition"]


def test_sedna_update_with_a_pickle_is_refused_by_default_and_runs_nothing(
    kb: KBServer, tmp_path: Path
) -> None:
    marker = tmp_path / "pwned"

    class Payload:
        def __reduce__(self) -> tuple[Any, ...]:
            return (open, (str(marker), "w"))

    index_file = tmp_path / "index.pkl"
    index_file.write_bytes(pickle.dumps(Payload()))
    with index_file.open("rb") as fin:  # KBClient.update_db
        response = sedna_request(f"{sedna_base(kb)}/update", "POST", files={"task": fin})
    assert response.status_code == 403
    assert "--allow-pickle" in response.json()["error"]
    assert "runs any code" in response.json()["error"]
    assert not marker.exists()
    metrics = requests.get(f"{kb.url}/metrics", timeout=10).text
    assert 'lifelong_kb_refused_total{reason="pickle"} 1.0' in metrics


def sedna_index() -> dict[str, Any]:
    """A task index in Sedna's shape (dicts where Sedna has objects of its own classes)."""
    return {
        "seen_task": {
            "task_groups": [
                {
                    "entry": "sunny",
                    "tasks": [{"entry": "sunny-0", "meta_attr": {"weather": "sunny"}, "samples": [1, 2, 3]}],
                    "samples": [1, 2, 3],
                    "model": {"model": "/file/download?files=sunny.pkl", "result": {"accuracy": 0.8}},
                }
            ],
            "extractor": "/file/download?files=task_attr_extractor.pkl",
        },
        "unseen_task": {"task_groups": []},
        "create_time": "2024-05-01T10:00:00+00:00",
    }


def test_sedna_update_with_allow_pickle_records_the_index(kb_pickle: KBServer, tmp_path: Path) -> None:
    index_file = tmp_path / "index.pkl"
    joblib.dump(sedna_index(), index_file)  # as Sedna's lifelong learning writes it
    base = sedna_base(kb_pickle)
    with index_file.open("rb") as fin:
        response = sedna_request(f"{base}/update", "POST", files={"task": fin})
    assert response.status_code == 200, response.text
    assert response.json() == "/file/download?files=index.pkl&name=index.pkl"
    kept = requests.get(f"{base}/{response.json().lstrip('/')}", timeout=10)
    assert kept.content == index_file.read_bytes()
    tasks = httpx.get(f"{kb_pickle.url}/knowledgebase/v1/tasks/sedna/default").json()
    (group,) = tasks["taskGroups"]
    assert group["entry"] == "sunny"
    assert group["sampleNum"] == 3
    assert group["tasks"][0]["attrs"] == {"weather": "sunny"}
    assert group["model"]["metrics"] == {"accuracy": 0.8}


def test_sedna_update_status_marks_task_groups(kb: KBServer) -> None:
    httpx.post(f"{kb.url}/knowledgebase/v1/index", json=INDEX).raise_for_status()
    data = {"tasks": "summer,winter", "status": 0}  # KBClient.update_task_status
    response = sedna_request(f"{sedna_base(kb)}/update/status", "POST", json=data)
    assert response.status_code == 200
    assert response.json() == "/file/download?files=index.pkl&name=index.pkl"
    groups = httpx.get(f"{kb.url}/knowledgebase/v1/tasks/{JOB}").json()["taskGroups"]
    assert [g["deployed"] for g in groups] == [False, False]
    sedna_request(f"{sedna_base(kb)}/update/status", "POST", json={"tasks": "winter", "status": 1})
    groups = httpx.get(f"{kb.url}/knowledgebase/v1/tasks/{JOB}").json()["taskGroups"]
    assert [g["deployed"] for g in groups] == [False, True]
    bad = sedna_request(f"{sedna_base(kb)}/update/status", "POST", json={"tasks": ["winter"], "status": 1})
    assert bad.status_code == 400
    assert "tasks" in bad.json()["error"]


def test_sedna_query_lists_the_task_groups(kb: KBServer) -> None:
    httpx.post(f"{kb.url}/knowledgebase/v1/index", json=INDEX).raise_for_status()
    response = sedna_request(f"{sedna_base(kb)}/query", "POST")
    assert response.json() == {"tasks": ["summer", "winter"]}


def test_sedna_file_routes_refuse_traversal_and_missing_files(kb: KBServer, tmp_path: Path) -> None:
    base = sedna_base(kb)
    response = sedna_request(f"{base}/file/upload", "POST", files={"file": ("../evil.pkl", b"x")})
    assert response.status_code == 400
    assert "'..'" in response.json()["error"]
    assert not (tmp_path / "evil.pkl").exists()
    for files in ("../../etc/passwd", "/etc/passwd"):
        got = requests.get(f"{base}/file/download", params={"files": files, "name": "x"}, timeout=10)
        assert got.status_code == 400, files
        assert "root:" not in got.text
    missing = requests.get(f"{base}/file/download", params={"files": "nothing.pkl"}, timeout=10)
    assert missing.status_code == 404
    assert missing.json() == {"error": "no file nothing.pkl"}
    no_field = sedna_request(f"{base}/file/upload", "POST", files={"other": ("a.pkl", b"x")})
    assert no_field.status_code == 400
    assert "'file'" in no_field.json()["error"]


# -- the native API ------------------------------------------------------------------------------


def test_index_versions_tasks_metrics_and_summary(kb: KBServer) -> None:
    v1 = f"{kb.url}/knowledgebase/v1"
    first = httpx.post(f"{v1}/index", json=INDEX).json()
    assert first == {"version": 1, "url": f"/knowledgebase/v1/index/{JOB}/1"}
    second_body = {**INDEX, "round": 2}
    assert httpx.post(f"{v1}/index", json=second_body).json()["version"] == 2
    assert httpx.get(f"{v1}/index/{JOB}").json()["round"] == 2
    assert httpx.get(f"{kb.url}{first['url']}").json()["round"] == 1
    assert httpx.get(f"{v1}/index/{JOB}/3").status_code == 404
    metric = {"job": JOB, "round": 2, "stage": "eval", "scores": {"winter": {"accuracy": 0.66, "f1": 0.5}}}
    assert httpx.post(f"{v1}/metrics", json=metric).status_code == 200
    got = httpx.get(f"{v1}/metrics/{JOB}").json()
    assert got["tasks"] == ["winter"]
    assert got["rounds"] == [2]
    assert got["scores"] == {"2": {"winter": {"eval": {"accuracy": 0.66, "f1": 0.5}}}}
    tasks = httpx.get(f"{v1}/tasks/{JOB}").json()
    assert tasks["version"] == 2
    winter = tasks["taskGroups"][1]
    assert winter["transfer"] == {"from": "summer", "ratio": 0.7}
    assert winter["model"]["url"] == "models/winter.pkl"
    summary = httpx.get(f"{v1}/summary/{JOB}").json()
    assert summary["AIModels"]["numberOfAIModels"] == 2
    assert summary["AIModels"]["listOfAIModels"] == [
        {"modelID": "summer", "averagePrecision": 0.91, "numberOfTrainSamples": 40},
        {"modelID": "winter", "averagePrecision": 0.66, "numberOfTrainSamples": 12},
    ]
    assert summary["AIClasses"] == {"numberOfAIClasses": 3, "listOfAIClasses": ["0", "1", "2"]}


def test_files_put_and_get(kb: KBServer) -> None:
    v1 = f"{kb.url}/knowledgebase/v1"
    put = httpx.put(f"{v1}/files/models/r1/summer.pkl", content=b"weights")
    assert put.json()["url"] == "/knowledgebase/v1/files/models/r1/summer.pkl"
    assert httpx.get(f"{kb.url}{put.json()['url']}").content == b"weights"
    assert httpx.get(f"{v1}/files/models/none.pkl").status_code == 404


def raw_request(
    server: KBServer, method: str, path: str, body: bytes = b"", headers: dict[str, str] | None = None
):
    """A request whose path is sent as written (httpx would resolve ``..``)."""
    conn = http.client.HTTPConnection("127.0.0.1", server.port, timeout=10)
    try:
        conn.request(method, path, body=body, headers=headers or {})
        response = conn.getresponse()
        return response.status, response.read()
    finally:
        conn.close()


def test_path_traversal_is_refused(kb: KBServer, tmp_path: Path) -> None:
    for path in ("/knowledgebase/v1/files/../../escape.txt", "/knowledgebase/v1/files/%2e%2e/escape.txt"):
        status, body = raw_request(kb, "PUT", path, b"x")
        assert status in (400, 404), path
        assert "error" in json.loads(body)
    assert not list(tmp_path.rglob("escape.txt"))


def test_unseen_samples_labels_and_delivery(kb: KBServer) -> None:
    remote = RemoteKnowledgeBase(kb.url)
    try:
        samples = [
            UnseenSample(
                id=f"s{i}", row={"x": i}, attrs={"season": "spring"}, predicted=i % 2, confidence=0.4
            )
            for i in range(5)
        ]
        assert remote.add_unseen(JOB, "edge-1", samples) == 5
        assert remote.add_unseen(JOB, "edge-1", samples[:2]) == 0
        assert [s.sample.id for s in remote.samples(JOB, limit=2, after="s1")] == ["s2", "s3"]
        assert remote.label_predicted(JOB, 1, "cat") == 2
        assert remote.label(JOB, {"s0": "dog"}) == 1
        with pytest.raises(KBRefused, match="no unseen sample nope"):
            remote.label(JOB, {"s2": "dog", "nope": "cat"})
        assert [s.sample.id for s in remote.samples(JOB, state="unlabelled")] == ["s2", "s4"]
        assert [s.sample.id for s in remote.samples(JOB, predicted=1)] == ["s1", "s3"]
        pending = remote.undelivered()
        assert sorted(s.sample.id for s in pending) == ["s0", "s1", "s3"]
        assert {s.label for s in pending} == {"dog", "cat"}
        assert remote.mark_delivered(JOB, ["s1", "s3"]) == 2
        assert [s.sample.id for s in remote.undelivered()] == ["s0"]
        with pytest.raises(KBRefused, match="delivered"):
            remote.label(JOB, {"s1": "dog"})
        summary = remote.summary(JOB)
        assert summary.samples.number_of_unseen_sample == 5
        assert summary.samples.number_of_labeled_unseen_sample == 3
    finally:
        remote.close()


def test_string_and_integer_classes_stay_apart(kb: KBServer) -> None:
    remote = RemoteKnowledgeBase(kb.url)
    try:
        remote.add_unseen(
            JOB, "e", [UnseenSample(id="a", row={}, predicted=1), UnseenSample(id="b", row={}, predicted="1")]
        )
        assert [s.sample.id for s in remote.samples(JOB, predicted=1)] == ["a"]
        assert [s.sample.id for s in remote.samples(JOB, predicted="1")] == ["b"]
    finally:
        remote.close()


def test_bad_input_is_refused_with_a_json_error_and_changes_nothing(kb: KBServer) -> None:
    v1 = f"{kb.url}/knowledgebase/v1"

    def body(value: Any) -> bytes:
        return json.dumps(value).encode()

    scores = {"g": {"acc": "high"}}
    bad = [
        (f"{v1}/index", b"{not json", "not JSON"),
        (f"{v1}/index", body({**INDEX, "round": "2"}), "round"),
        (f"{v1}/index", body({**INDEX, "job": "no-slash"}), "namespace/name"),
        (f"{v1}/index", b"[]", "JSON object"),
        (f"{v1}/metrics", body({"job": JOB, "round": 1, "stage": "deploy", "scores": {}}), "stage"),
        (f"{v1}/metrics", body({"job": JOB, "round": 1, "stage": "eval", "scores": scores}), "scores.g.acc"),
        (f"{v1}/samples/{JOB}", body({"node": "e", "samples": [{"id": "../x", "row": {}}]}), "samples[0].id"),
        (f"{v1}/samples/{JOB}", body({"samples": [{"id": "a", "row": {}}]}), "node"),
        (f"{v1}/samples/{JOB}/labels", body({"labels": {"a": 1.5}}), "labels"),
    ]
    for url, data, word in bad:
        response = httpx.post(url, content=data, headers={"Content-Type": "application/json"})
        assert response.status_code == 400, (url, data, response.text)
        error = response.json()["error"]
        assert word in error, (word, error)
        assert "Traceback" not in response.text
    assert httpx.get(f"{v1}/index/{JOB}").status_code == 404
    assert httpx.get(f"{v1}/samples/{JOB}").json() == {"items": []}
    assert httpx.get(f"{v1}/samples/{JOB}", params={"limit": "x"}).status_code == 400
    assert httpx.get(f"{v1}/samples/{JOB}", params={"state": "odd"}).status_code == 400


def test_unknown_job_and_route(kb: KBServer) -> None:
    v1 = f"{kb.url}/knowledgebase/v1"
    for path in (f"/index/{JOB}", f"/tasks/{JOB}", f"/metrics/{JOB}", "/nothing"):
        response = httpx.get(f"{v1}{path}")
        assert response.status_code == 404, path
        assert "error" in response.json()
    summary = httpx.get(f"{v1}/summary/{JOB}").json()
    assert summary["AIModels"]["numberOfAIModels"] == 0
    assert httpx.delete(f"{v1}/index").status_code == 405


def test_oversized_bodies_are_refused_before_they_are_stored(tmp_path: Path) -> None:
    limits = HTTPLimits(max_body=4096, threads=2)
    server = KBServer(tmp_path / "kb", "127.0.0.1", 0, limits=limits)
    server.kb.max_file = 10_000
    server.start()
    try:
        v1 = f"{server.url}/knowledgebase/v1"
        big_index = {**INDEX, "pad": "x" * 5000}
        response = httpx.post(f"{v1}/index", json=big_index)
        assert response.status_code == 413
        assert "over 4096 bytes" in response.json()["error"]
        assert httpx.put(f"{v1}/files/big.bin", content=b"x" * 10_001).status_code == 413
        chunked = httpx.put(f"{v1}/files/chunked.bin", content=iter([b"x" * 6000, b"x" * 6000]))
        assert chunked.status_code == 413
        response = requests.post(
            f"{server.url}/knowledgebase/file/upload", files={"file": ("big.pkl", b"x" * 20_000)}, timeout=10
        )
        assert response.status_code == 413
        assert httpx.put(f"{v1}/files/ok.bin", content=b"x" * 10_000).status_code == 200
        assert not server.kb.files.exists("big.bin")
        assert not server.kb.files.exists("chunked.bin")
        assert not server.kb.files.exists("big.pkl")
        assert httpx.get(f"{v1}/index/{JOB}").status_code == 404
        metrics = httpx.get(f"{server.url}/metrics").text
        assert 'lifelong_kb_refused_total{reason="too_large"} 4.0' in metrics
    finally:
        server.stop()


def test_tokens(tmp_path: Path) -> None:
    tokens = tmp_path / "tokens.csv"
    tokens.write_text(f"{WRITER},write,trainer\n{READER},read,viewer\n")
    for server in _serve(tmp_path, token_file=str(tokens)):
        v1 = f"{server.url}/knowledgebase/v1"
        anonymous = httpx.post(f"{v1}/index", json=INDEX)
        assert anonymous.status_code == 401
        reader = {"Authorization": f"Bearer {READER}"}
        assert httpx.post(f"{v1}/index", json=INDEX, headers=reader).status_code == 403
        assert (
            httpx.post(f"{v1}/index", json=INDEX, headers={"Authorization": f"Bearer {WRITER}"}).status_code
            == 200
        )
        assert httpx.get(f"{v1}/index/{JOB}", headers=reader).status_code == 200
        assert httpx.get(f"{v1}/index/{JOB}").status_code == 401
        assert httpx.get(f"{server.url}/healthz").status_code == 200
        sedna = sedna_request(f"{sedna_base(server)}/update/status", "POST", json={"tasks": "a", "status": 1})
        assert sedna.status_code == 401
        remote = RemoteKnowledgeBase(server.url, token=WRITER)
        try:
            assert remote.index(JOB)["round"] == 1
        finally:
            remote.close()
        unauthorised = RemoteKnowledgeBase(server.url, token="wrong")
        try:
            with pytest.raises(KBRefused, match="401"):
                unauthorised.summary(JOB)
        finally:
            unauthorised.close()


def test_an_open_kb_off_loopback_is_refused_unless_allowed(tmp_path: Path) -> None:
    with pytest.raises(ConfigError, match="--allow-anonymous"):
        KBServer(tmp_path / "kb", "0.0.0.0", 0)


def test_client_raises_unavailable_when_nothing_listens() -> None:
    remote = RemoteKnowledgeBase(f"http://127.0.0.1:{free_port()}", timeout=2.0, attempts=2)
    try:
        with pytest.raises(KBUnavailable, match="cannot be reached"):
            remote.summary(JOB)
    finally:
        remote.close()
