"""The LC's half of the unseen-sample loop, with the real ``lifelong lc`` on both real brokers and
the GM played by the test (plain paho + the codec, docs/protocol.md only).

* Upstream: a worker posts unseen samples to ``/lifelong/v1/jobs/{ns}/{job}/samples``; they go
  up as ``UnseenSamples`` reports, every sample once, split when the post is larger than one
  message; a full outbox answers 503 and keeps nothing of that post; bad posts get 400/404/413,
  counted.
* Downstream: a ``LabelledSamples`` upsert appends its rows to the Dataset's file (header order),
  reports ``appended``, a resend appends nothing, a sync without it drops it, the dataset count
  follows and the train trigger fires; a batch for a Dataset not held yet waits for it; an LC
  SIGKILLed between the intent and the commit leaves every row once after its restart.
"""

from __future__ import annotations

import contextlib
import json
import re
import socket
import urllib.error
import urllib.request
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest
from harness.brokers import Broker
from harness.lc_gm import FakeGM, LCProcess
from harness.lc_objects import NS, StateReader, cond, dataset, job
from harness.waiting import wait_for

NODE = "node-a"


def _gm(broker: Broker, prefix: str, *, auto_ack: bool = True) -> FakeGM:
    return FakeGM(broker.host, broker.port, prefix, NODE, auto_ack=auto_ack)


@pytest.fixture
def gm(broker: Broker, prefix: str) -> Iterator[FakeGM]:
    with contextlib.closing(_gm(broker, prefix)) as g:
        yield g


def _start(broker: Broker, prefix: str, tmp_path: Path, gm: FakeGM, *extra: str) -> LCProcess:
    lc = LCProcess(
        node=NODE,
        broker_url=broker.url,
        prefix=prefix,
        state_dir=tmp_path / "state",
        extra=list(extra),
        metrics=True,
    )
    lc.start()
    lc.wait_started(gm, gm.hello_count())
    return lc


@pytest.fixture
def lc(broker: Broker, prefix: str, tmp_path: Path, gm: FakeGM) -> Iterator[LCProcess]:
    # 64 KiB messages: a post of a few hundred samples needs several reports
    p = _start(broker, prefix, tmp_path, gm, "--max-payload", "65536")
    try:
        yield p
    finally:
        p.kill()


def post(port: int, path: str, body: Any, *, raw: bytes | None = None) -> tuple[int, dict[str, Any], Any]:
    req = urllib.request.Request(
        f"http://127.0.0.1:{port}{path}",
        data=raw if raw is not None else json.dumps(body).encode(),
        headers={"Content-Type": "application/json"},
        method="POST",
    )
    try:
        with urllib.request.urlopen(req, timeout=30) as resp:
            return int(resp.status), json.loads(resp.read()), resp.headers
    except urllib.error.HTTPError as exc:
        return int(exc.code), json.loads(exc.read()), exc.headers


def samples_path(job_name: str, ns: str = NS) -> str:
    return f"/lifelong/v1/jobs/{ns}/{job_name}/samples"


def unseen(prefix: str, n: int, pad: int = 300) -> list[dict[str, Any]]:
    return [
        {
            "id": f"{prefix}-{i}",
            "row": {"path": f"/data/{prefix}/{i}.png", "blob": "x" * pad},
            "attrs": {"camera": "c2"},
            "predicted": i % 3,
            "confidence": 0.4,
        }
        for i in range(n)
    ]


def hold_job(gm: FakeGM, tmp_path: Path, name: str = "j") -> None:
    data = tmp_path / f"{name}.txt"
    data.write_text("a 1\n")
    gm.upsert(dataset(f"{name}-ds", NODE, data))
    rv = gm.upsert(
        job(name, NODE, f"{name}-ds", tmp_path / "out", [cond("Train", "Waiting")], threshold=1000)
    )
    wait_for(lambda: gm.acked("LifelongLearningJob", name, rv), what=f"job {name} stored")


def sample_reports(gm: FakeGM) -> list[Any]:
    return gm.reports("UnseenSamples")


def reported_ids(gm: FakeGM) -> list[str]:
    return [s["id"] for env in sample_reports(gm) for s in env.body["samples"]]


def metric(text: str, name: str, **labels: str) -> float:
    sel = ",".join(f'{k}="{v}"' for k, v in labels.items())
    pattern = re.escape(f"{name}{{{sel}}}" if sel else name) + r" ([0-9.e+]+)"
    found = re.search(pattern, text)
    return float(found.group(1)) if found else 0.0


# -- unseen samples, upstream ------------------------------------------------------------------------


def test_posted_samples_go_up_once_split_when_large(gm: FakeGM, lc: LCProcess, tmp_path: Path) -> None:
    hold_job(gm, tmp_path)
    big = unseen("big", 400)  # ~150 KB: at least three reports of 64 KiB messages
    code, answer, _ = post(lc.api_port, samples_path("j"), {"samples": big, "worker": "j-infer-1"})
    assert (code, answer) == (200, {"accepted": 400})
    code, answer, _ = post(lc.api_port, samples_path("j"), {"samples": unseen("small", 3)})
    assert (code, answer) == (200, {"accepted": 3})

    wait_for(lambda: len(reported_ids(gm)) >= 403, timeout=30, what="every sample reported")
    reports = sample_reports(gm)
    assert all(env.kind == "UnseenSamples" and (env.ns, env.name) == (NS, "j") for env in reports)
    assert len(reports) >= 4, [len(env.body["samples"]) for env in reports]
    assert all(len(env.body["samples"]) <= 500 for env in reports)
    ids = reported_ids(gm)
    assert sorted(ids) == sorted([s["id"] for s in big] + [f"small-{i}" for i in range(3)])
    assert len(ids) == len(set(ids))  # each once
    first = next(s for env in reports for s in env.body["samples"] if s["id"] == "big-7")
    assert first == big[7]  # as posted
    assert {env.body["worker"] for env in reports if env.body["samples"][0]["id"].startswith("big")} == {
        "j-infer-1"
    }
    state = StateReader(lc.state_dir)
    wait_for(lambda: state.outbox_depth() == 0, what="the reports acknowledged")
    text = lc.metrics()
    assert metric(text, "lifelong_lc_unseen_samples_total", result="accepted") == 403, text


def test_bad_sample_posts_are_refused_counted_and_keep_nothing(
    gm: FakeGM, lc: LCProcess, tmp_path: Path
) -> None:
    hold_job(gm, tmp_path)
    state = StateReader(lc.state_dir)
    wait_for(
        lambda: gm.reports("Dataset") and state.outbox_depth() == 0, what="the dataset report acknowledged"
    )
    bad_id = unseen("b", 2)
    bad_id[1]["id"] = "../etc"
    code, answer, _ = post(lc.api_port, samples_path("j"), {"samples": bad_id})
    assert code == 400 and "samples.1.id" in answer["error"].replace("[", ".").replace("]", ""), answer
    code, answer, _ = post(lc.api_port, samples_path("j"), {"samples": []})
    assert code == 400 and "samples" in answer["error"], answer
    code, answer, _ = post(lc.api_port, samples_path("j"), None, raw=b"{not json")
    assert code == 400 and "JSON" in answer["error"], answer
    code, answer, _ = post(lc.api_port, samples_path("nope"), {"samples": unseen("n", 2)})
    assert code == 404 and "default/nope" in answer["error"], answer
    # a body over the route's bound (4 MiB) is refused from its Content-Length, never read
    head = (
        f"POST {samples_path('j')} HTTP/1.1\r\nHost: x\r\nContent-Length: {5 << 20}\r\n"
        "Connection: close\r\n\r\n"
    ).encode()
    with socket.create_connection(("127.0.0.1", lc.api_port), timeout=10) as sock:
        sock.sendall(head)
        assert sock.recv(200).startswith(b"HTTP/1.1 413")
    huge = unseen("h", 1, pad=70_000)  # one sample over MAX_SAMPLE_BYTES (64 KiB)
    code, answer, _ = post(lc.api_port, samples_path("j"), {"samples": huge})
    assert code == 413 and "samples[0]" in answer["error"], answer

    # Whatever else the LC queued meanwhile (its dataset or job reports may still be on their way
    # when the first wait saw an empty outbox) drains; no samples were among it.
    wait_for(lambda: state.outbox_depth() == 0, what="the outbox drained")
    assert sample_reports(gm) == []
    text = lc.metrics()
    assert metric(text, "lifelong_lc_worker_posts_total", result="invalid") == 3, text
    assert metric(text, "lifelong_lc_worker_posts_total", result="not_found") == 1, text
    assert metric(text, "lifelong_lc_worker_posts_total", result="too_large") == 1, text
    assert metric(text, "lifelong_lc_unseen_samples_total", result="refused") == 2 + 0 + 2 + 1, text
    assert metric(text, "lifelong_lc_unseen_samples_total", result="accepted") == 0, text
    # the next good post is taken
    assert post(lc.api_port, samples_path("j"), {"samples": unseen("ok", 2)})[0] == 200
    wait_for(lambda: sorted(reported_ids(gm)) == ["ok-0", "ok-1"], what="the good samples reported")


def test_a_full_outbox_refuses_the_whole_post_and_loses_nothing(
    broker: Broker, prefix: str, tmp_path: Path
) -> None:
    gm = _gm(broker, prefix, auto_ack=False)
    lc = _start(broker, prefix, tmp_path, gm, "--max-payload", "65536", "--outbox-max-depth", "5")
    try:
        hold_job(gm, tmp_path)
        state = StateReader(lc.state_dir)
        wait_for(lambda: state.outbox_depth() == 1, what="the dataset count queued")
        first, second = unseen("p1", 300), unseen("p2", 300)  # three reports each
        assert post(lc.api_port, samples_path("j"), {"samples": first})[:2] == (200, {"accepted": 300})
        assert state.outbox_depth() == 4
        code, answer, headers = post(lc.api_port, samples_path("j"), {"samples": second})
        assert code == 503 and "outbox full" in answer["error"] and headers["Retry-After"], answer
        assert state.outbox_depth() == 4  # nothing of the refused post was kept

        # The GM acknowledges what it got: room again; the worker posts the refused samples again.
        wait_for(lambda: len(gm.reports()) == 4, what="the queued reports received")
        gm.auto_ack = True
        gm.ack([env.seq or 0 for env in gm.reports()])
        wait_for(lambda: state.outbox_depth() == 0, what="the outbox emptied by the acks")
        assert sorted(reported_ids(gm)) == sorted(s["id"] for s in first)
        assert post(lc.api_port, samples_path("j"), {"samples": second})[:2] == (200, {"accepted": 300})
        wait_for(lambda: len(reported_ids(gm)) >= 600, timeout=30, what="the second post reported")
        ids = reported_ids(gm)
        assert sorted(ids) == sorted(s["id"] for s in first + second) and len(ids) == 600
        text = lc.metrics()
        assert metric(text, "lifelong_lc_unseen_samples_total", result="accepted") == 600, text
        assert metric(text, "lifelong_lc_unseen_samples_total", result="refused") == 300, text
        assert metric(text, "lifelong_lc_worker_posts_total", result="full") == 1, text
    finally:
        lc.kill()
        gm.close()


# -- labelled samples, downstream ---------------------------------------------------------------------


def labelled(
    name: str, ds: str, samples: list[dict[str, Any]], label_column: str | None = "label"
) -> dict[str, Any]:
    spec: dict[str, Any] = {"job": "j", "dataset": ds, "samples": samples}
    if label_column is not None:
        spec["labelColumn"] = label_column
    return {
        "apiVersion": "lifelong.io/v1",
        "kind": "LabelledSamples",
        "metadata": {"name": name, "namespace": NS},
        "spec": spec,
    }


def labelled_reports(gm: FakeGM, name: str) -> list[dict[str, Any]]:
    return [
        env.body
        for env in sorted(gm.reports("LabelledSamples"), key=lambda e: e.seq or 0)
        if env.name == name
    ]


def csv_samples(ids: list[int]) -> list[dict[str, Any]]:
    # row keys in another order than the header, the label column empty: the file's order wins
    return [{"id": f"s{i}", "row": {"f1": i * 10, "label": None, "f0": f"v{i}"}, "label": i % 2} for i in ids]


def test_labelled_samples_are_appended_once_and_fire_the_trigger(
    gm: FakeGM, lc: LCProcess, tmp_path: Path
) -> None:
    state = StateReader(lc.state_dir)
    data = tmp_path / "d.csv"
    data.write_text("f0,label,f1\nold,1,5\n")
    gm.upsert(dataset("ds", NODE, data, fmt="csv"))
    gm.upsert(job("j", NODE, "ds", tmp_path / "out", [cond("Train", "Waiting")], threshold=3))
    wait_for(lambda: gm.reports("Dataset", lambda e: e.body["numberOfSamples"] == 1), what="first count")

    rv = gm.upsert(labelled("ds-b1", "ds", csv_samples([1, 2, 3, 4])))
    wait_for(lambda: labelled_reports(gm, "ds-b1"), what="the LabelledSamples report")
    assert labelled_reports(gm, "ds-b1") == [{"appended": 4, "duplicates": 0, "skipped": 0}]
    assert data.read_text() == "f0,label,f1\nold,1,5\nv1,1,10\nv2,0,20\nv3,1,30\nv4,0,40\n"
    assert state.resource_rv("LabelledSamples", "ds-b1") == rv
    # the count follows, and the train trigger fires on the new rows as on any data
    wait_for(lambda: gm.reports("Dataset", lambda e: e.body["numberOfSamples"] == 5), what="new count")
    ready = wait_for(lambda: gm.job_events("ready", "Train"), what="Train ready on the new rows")
    assert ready[0].body["data"]["numberOfSamples"] == 5

    # A resend (new rv, same samples) and a batch that repeats an id append nothing twice.
    gm.upsert(labelled("ds-b1", "ds", csv_samples([1, 2, 3, 4])))
    wait_for(lambda: len(labelled_reports(gm, "ds-b1")) == 2, what="the resend's report")
    assert labelled_reports(gm, "ds-b1")[1] == {"appended": 0, "duplicates": 4, "skipped": 0}
    gm.upsert(labelled("ds-b2", "ds", csv_samples([4, 5, 5])))
    wait_for(lambda: labelled_reports(gm, "ds-b2"), what="the second batch's report")
    assert labelled_reports(gm, "ds-b2") == [{"appended": 1, "duplicates": 2, "skipped": 0}]
    rows = data.read_text().splitlines()[1:]
    assert rows == ["old,1,5", "v1,1,10", "v2,0,20", "v3,1,30", "v4,0,40", "v5,1,50"]

    # A sync that no longer names a batch drops it.
    held = [{"kind": "Dataset", "ns": NS, "name": "ds", "rv": state.resource_rv("Dataset", "ds") or ""}]
    held.append(
        {
            "kind": "LifelongLearningJob",
            "ns": NS,
            "name": "j",
            "rv": state.resource_rv("LifelongLearningJob", "j") or "",
        }
    )
    held.append(
        {
            "kind": "LabelledSamples",
            "ns": NS,
            "name": "ds-b2",
            "rv": state.resource_rv("LabelledSamples", "ds-b2") or "",
        }
    )
    gm.sync(held)
    wait_for(lambda: state.resource_rv("LabelledSamples", "ds-b1") is None, what="ds-b1 dropped by the sync")
    assert state.resource_rv("LabelledSamples", "ds-b2") is not None
    assert data.read_text().splitlines()[1:] == rows
    text = lc.metrics()
    assert metric(text, "lifelong_lc_labelled_samples_total", result="appended") == 5, text
    assert metric(text, "lifelong_lc_labelled_samples_total", result="duplicates") == 6, text


def test_a_batch_for_a_dataset_not_held_yet_waits_for_it(gm: FakeGM, lc: LCProcess, tmp_path: Path) -> None:
    data = tmp_path / "d.txt"
    data.write_text("img0.png 0")  # no newline at the end: the LC adds one before its rows
    samples = [{"id": f"t{i}", "row": {"path": f"img{i}.png"}, "label": "cat"} for i in (1, 2)]
    gm.upsert(labelled("later-b1", "later", samples, label_column=None))
    wait_for(
        lambda: metric(lc.metrics(), "lifelong_lc_labelled_batches_waiting") == 1, what="the batch waiting"
    )
    assert metric(lc.metrics(), "lifelong_lc_item_failures_total", loop="labelled") == 1
    assert labelled_reports(gm, "later-b1") == []
    gm.upsert(dataset("later", NODE, data))
    wait_for(lambda: labelled_reports(gm, "later-b1"), what="the report once the Dataset arrived")
    assert labelled_reports(gm, "later-b1") == [{"appended": 2, "duplicates": 0, "skipped": 0}]
    assert data.read_text() == "img0.png 0\nimg1.png cat\nimg2.png cat\n"
    wait_for(lambda: gm.reports("Dataset", lambda e: e.body["numberOfSamples"] == 3), what="the count")
    assert "Dataset default/later is not held by this node" in lc.log_tail(400)


@pytest.mark.parametrize("cut", [0, 7], ids=["whole-write", "write-cut-short"])
def test_an_lc_killed_between_intent_and_commit_appends_each_row_once(
    broker: Broker, prefix: str, tmp_path: Path, cut: int
) -> None:
    """The outbox is full when the rows are written, so the commit (ids + report) waits with the
    intent on disk; the LC is SIGKILLed there (``cut``: the tail of the write lost too, as if the
    kill came in the middle of it) and restarted with room: every row is in the file once."""
    gm = _gm(broker, prefix, auto_ack=False)
    lc = _start(broker, prefix, tmp_path, gm, "--outbox-max-depth", "2")
    data = tmp_path / "d.csv"
    data.write_text("label,f0,f1\n0,a,1\n")
    try:
        hold_job(gm, tmp_path)  # its dataset count takes one place in the outbox
        gm.upsert(dataset("ds", NODE, data, fmt="csv"))
        state = StateReader(lc.state_dir)
        wait_for(lambda: state.outbox_depth() == 2, what="the outbox full (two dataset counts)")
        before = data.stat().st_size
        gm.upsert(labelled("ds-b1", "ds", csv_samples([1, 2, 3])))
        intent = wait_for(
            lambda: (
                (state.record("labelled", "ds-b1") or {}).get("state") == "intent"
                and data.stat().st_size > before
                and state.record("labelled", "ds-b1")
            ),
            what="the rows written, the commit waiting for the outbox",
        )
        assert intent["size"] == before
        lc.kill()
    finally:
        lc.kill()
    if cut:
        with data.open("r+b") as fh:
            fh.truncate(data.stat().st_size - cut)
    gm.auto_ack = True
    lc2 = _start(broker, prefix, tmp_path, gm)
    try:
        gm.ack([env.seq or 0 for env in gm.reports()])
        wait_for(lambda: labelled_reports(gm, "ds-b1"), timeout=30, what="the report after the restart")
        assert labelled_reports(gm, "ds-b1") == [{"appended": 3, "duplicates": 0, "skipped": 0}]
        assert data.read_text() == "label,f0,f1\n0,a,1\n1,v1,10\n0,v2,20\n1,v3,30\n"
        # a resend after the restart appends nothing
        gm.upsert(labelled("ds-b1", "ds", csv_samples([1, 2, 3])))
        wait_for(lambda: len(labelled_reports(gm, "ds-b1")) == 2, what="the resend's report")
        assert labelled_reports(gm, "ds-b1")[1] == {"appended": 0, "duplicates": 3, "skipped": 0}
        assert data.read_text().count("v2,20") == 1
    finally:
        lc2.kill()
        gm.close()
