"""``lifelong kb serve`` as a real process: it starts, answers Sedna's and the native routes,
stops cleanly on SIGTERM, and a restart on the same ``--data-dir`` keeps what it held (the task
index, unseen samples and their labels, uploaded files). With ``--token-file`` it wants a token;
``lifelong kb`` alone prints its help."""

from __future__ import annotations

import subprocess
import sys
from pathlib import Path

import httpx
import pytest
import requests
from harness.processes import Process
from harness.waiting import free_port, wait_for

from lifelong.cloud.kb.client import RemoteKnowledgeBase
from lifelong.common.kb import UnseenSample

pytestmark = pytest.mark.e2e

JOB = "default/e2e-job"
TOKEN = "kb-write-7d1e0c55a2"


def healthy(url: str) -> bool:
    try:
        return httpx.get(f"{url}/healthz", timeout=1).status_code == 200
    except httpx.HTTPError:
        return False


def start_kb(tmp_path: Path, *extra: str) -> tuple[Process, str]:
    port = free_port()
    args = [
        "kb",
        "serve",
        "--host",
        "127.0.0.1",
        "--port",
        str(port),
        "--data-dir",
        str(tmp_path / "data"),
        *extra,
    ]
    proc = Process("kb", args, tmp_path)
    proc.start()
    url = f"http://127.0.0.1:{port}"

    def up() -> bool:
        proc.check_alive()
        return healthy(url)

    wait_for(up, timeout=30, what=f"lifelong kb serve on {url}\n{proc.log_tail()}")
    return proc, url


def test_kb_serve_answers_and_a_restart_keeps_the_data(tmp_path: Path) -> None:
    proc, url = start_kb(tmp_path)
    try:
        model = tmp_path / "m.pkl"
        model.write_bytes(b"model-bytes")
        with model.open("rb") as fin:  # as Sedna's KBClient.upload_file
            answer = requests.post(f"{url}/knowledgebase/file/upload", files={"file": fin}, timeout=10).json()
        assert answer == "/file/download?files=m.pkl&name=m.pkl"
        refused = requests.post(f"{url}/knowledgebase/update", files={"task": b"\x80\x04N."}, timeout=10)
        assert refused.status_code == 403
        remote = RemoteKnowledgeBase(url)
        try:
            index = {"job": JOB, "round": 1, "seen_task": {"task_groups": [{"entry": "g0", "samples": 3}]}}
            assert remote.post_index(index)["version"] == 1
            assert remote.add_unseen(JOB, "edge-1", [UnseenSample(id="u1", row={"x": 1}, predicted=0)]) == 1
            assert remote.label(JOB, {"u1": 5}) == 1
        finally:
            remote.close()
        assert proc.terminate() == 0
        assert "knowledge base serving on" in proc.log_path.read_text()

        proc, url = start_kb(tmp_path)
        remote = RemoteKnowledgeBase(url)
        try:
            assert remote.index(JOB)["seen_task"]["task_groups"][0]["entry"] == "g0"
            (sample,) = remote.samples(JOB)
            assert (sample.sample.id, sample.label, sample.node) == ("u1", 5, "edge-1")
            assert remote.summary(JOB).samples.number_of_labeled_unseen_sample == 1
            assert remote.post_index({**index, "round": 2})["version"] == 2
        finally:
            remote.close()
        kept = requests.get(f"{url}/knowledgebase/file/download", params={"files": "m.pkl"}, timeout=10)
        assert kept.content == b"model-bytes"
    finally:
        if proc.alive():
            proc.terminate()


def test_kb_serve_with_a_token_file_and_pickles_allowed(tmp_path: Path) -> None:
    tokens = tmp_path / "tokens.csv"
    tokens.write_text(f"{TOKEN},write,trainer\n")
    proc, url = start_kb(tmp_path, "--token-file", str(tokens), "--allow-pickle")
    try:
        assert "loads pickles" in proc.log_path.read_text()
        assert httpx.get(f"{url}/knowledgebase/v1/summary/{JOB}").status_code == 401
        remote = RemoteKnowledgeBase(url, token=TOKEN)
        try:
            assert remote.summary(JOB).ai_models.number_of_ai_models == 0
        finally:
            remote.close()
    finally:
        proc.terminate()


def test_kb_serve_refuses_an_open_non_loopback_address(tmp_path: Path) -> None:
    done = subprocess.run(
        [
            sys.executable,
            "-m",
            "lifelong",
            "kb",
            "serve",
            "--host",
            "0.0.0.0",
            "--port",
            "0",
            "--data-dir",
            str(tmp_path),
        ],
        capture_output=True,
        text=True,
        timeout=60,
        check=False,
    )
    assert done.returncode == 2
    assert "--allow-anonymous" in done.stderr
    assert "Traceback" not in done.stderr
    bare = subprocess.run(
        [sys.executable, "-m", "lifelong", "kb"], capture_output=True, text=True, timeout=60, check=False
    )
    assert bare.returncode == 2
    assert "serve" in bare.stdout
