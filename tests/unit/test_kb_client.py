"""``lifelong kb samples|label|summary`` against a real GM HTTP API (in process, its bus a no-op,
its knowledge base ``harness.kb.make_kb``'s), through ``lifelong``'s own entry point."""

from __future__ import annotations

from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest
import yaml
from harness.gm_inproc import DATASET, api_gm
from harness.kb import make_kb

from lifelong.__main__ import main
from lifelong.client import kb as kb_client
from lifelong.cloud.kb.base import KnowledgeBase
from lifelong.cloud.service import GMService
from lifelong.common.kb import UnseenSample

JOB = {
    "apiVersion": "sedna.io/v1alpha1",
    "kind": "LifelongLearningJob",
    "metadata": {"name": "job1", "namespace": "default"},
    "spec": {
        "dataset": {"name": "ds1", "trainProb": 0.8},
        "trainSpec": {
            "template": {"spec": {"nodeName": "node-a", "containers": [{"name": "t", "image": "x"}]}},
            "trigger": {"condition": {"operator": ">", "threshold": 5.0, "metric": "num_of_samples"}},
        },
        "evalSpec": {
            "template": {"spec": {"nodeName": "node-a", "containers": [{"name": "e", "image": "x"}]}}
        },
        "deploySpec": {
            "template": {"spec": {"nodeName": "node-a", "containers": [{"name": "d", "image": "x"}]}}
        },
        "outputDir": "/out",
    },
}
TOKENS = "w-token,write,alice\nr-token,read,bob\n"


def start(tmp_path: Path, kb: KnowledgeBase | None, token_file: str | None = None) -> GMService:
    svc = api_gm(tmp_path, kb, token_file)
    api = svc.api.app.api if svc.api else None
    assert api is not None
    api.apply(DATASET)
    api.apply(JOB)
    return svc


@pytest.fixture
def kb(tmp_path: Path) -> Iterator[KnowledgeBase]:
    rows = [("s1", "cat", 0.4), ("s2", "cat", 0.3), ("s3", 3, 0.2), ("s4", "dog", None)]
    with make_kb(tmp_path / "kb") as base:
        base.add_unseen(
            "default/job1",
            "node-a",
            [UnseenSample(id=i, row={"x": n}, predicted=p, confidence=c) for n, (i, p, c) in enumerate(rows)],
        )
        yield base


@pytest.fixture
def server(tmp_path: Path, kb: KnowledgeBase, monkeypatch: pytest.MonkeyPatch) -> Iterator[str]:
    monkeypatch.delenv("LIFELONG_TOKEN", raising=False)
    monkeypatch.delenv("LIFELONG_CONFIG", raising=False)
    svc = start(tmp_path, kb)
    yield f"http://127.0.0.1:{svc.api_port}"
    svc.stop()


def run(capsys: pytest.CaptureFixture[str], *args: str) -> tuple[int, str, str]:
    code = main(list(args))
    out = capsys.readouterr()
    return code, out.out, out.err


def labels_of(kb: KnowledgeBase) -> dict[str, Any]:
    return {s.sample.id: s.label for s in kb.samples("default/job1") if s.label is not None}


def test_samples_as_a_table_json_and_yaml(server: str, capsys: pytest.CaptureFixture[str]) -> None:
    code, out, _ = run(capsys, "kb", "samples", "job1", "--server", server)
    lines = out.splitlines()
    assert code == 0 and lines[0].split() == [
        "ID",
        "STATE",
        "PREDICTED",
        "CONFIDENCE",
        "LABEL",
        "NODE",
        "RECEIVED",
    ]
    assert lines[1].split()[:6] == ["s1", "unlabelled", "cat", "0.400", "<none>", "node-a"]
    assert len(lines) == 5
    code, out, _ = run(capsys, "kb", "samples", "job1", "--server", server, "--predicted", "3", "-o", "yaml")
    assert code == 0 and [s["id"] for s in yaml.safe_load(out)["items"]] == ["s3"]
    code, out, _ = run(capsys, "kb", "samples", "job1", "-s", server, "--state", "labelled", "-o", "json")
    assert code == 0 and '"items": []' in out


def test_samples_are_fetched_a_page_at_a_time(
    server: str, capsys: pytest.CaptureFixture[str], monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setattr(kb_client, "PAGE", 1)
    code, out, _ = run(capsys, "kb", "samples", "job1", "--server", server, "--limit", "3", "-o", "yaml")
    assert code == 0 and [s["id"] for s in yaml.safe_load(out)["items"]] == ["s1", "s2", "s3"]


def test_label_one_a_file_and_a_predicted_class(
    server: str, kb: KnowledgeBase, tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    code, out, _ = run(capsys, "kb", "label", "job1", "s1", "3", "--server", server)
    assert (code, out.strip()) == (0, "labelled 1 samples of job default/job1")
    assert labels_of(kb) == {"s1": 3}
    run(capsys, "kb", "label", "job1", "s1", '"3"', "--server", server)  # quoted: a string
    assert labels_of(kb) == {"s1": "3"}
    csv_file = tmp_path / "labels.csv"
    csv_file.write_text("id,label\n\ns2,lynx\ns4, dog\n")
    code, out, _ = run(capsys, "kb", "label", "job1", "--file", str(csv_file), "--server", server)
    assert (code, out.strip()) == (0, "labelled 2 samples of job default/job1")
    assert labels_of(kb) == {"s1": "3", "s2": "lynx", "s4": "dog"}
    json_file = tmp_path / "labels.json"
    json_file.write_text('{"s2": 5}')
    assert run(capsys, "kb", "label", "job1", "-f", str(json_file), "--server", server)[0] == 0
    assert labels_of(kb)["s2"] == 5
    code, out, _ = run(capsys, "kb", "label", "job1", "--predicted", "3", "--label", "three", "-s", server)
    assert code == 0 and "labelled 1 samples predicted 3" in out
    assert labels_of(kb)["s3"] == "three"


def test_label_mistakes_are_one_line_and_change_nothing(
    server: str, kb: KnowledgeBase, tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    bad = tmp_path / "bad.csv"
    bad.write_text("s1,a\ns2\n")
    cases = [
        (("kb", "label", "job1", "--file", str(bad)), 2, f"{bad} line 2: expected id,label"),
        (("kb", "label", "job1", "s1"), 2, "give the label of sample s1"),
        (("kb", "label", "job1", "--predicted", "cat"), 2, "--predicted and --label go together"),
        (("kb", "label", "job1", "s1", "a", "--file", str(bad)), 2, "one of the three"),
        (("kb", "label", "job1", "s1", "a", "--server", server, "-n", "other"), 1, "not found"),
        (("kb", "label", "nojob", "s1", "a", "--server", server), 1, 'LifelongLearningJob "nojob" not found'),
        (("kb", "label", "job1", "zz", "a", "--server", server), 2, "refused (nothing was labelled)"),
        (("kb", "samples", "job1", "--limit", "0", "--server", server), 2, "--limit must be at least 1"),
    ]
    for args, code, words in cases:
        got, _, err = run(capsys, *args)
        assert (got, words in err, err.count("\n")) == (code, True, 1), (args, err)
        assert "zz" in err or "zz" not in args
        assert "Traceback" not in err
    assert labels_of(kb) == {}


def test_summary_as_text_and_json(server: str, kb: KnowledgeBase, capsys: pytest.CaptureFixture[str]) -> None:
    kb.label("default/job1", {"s1": "cat", "s2": "lynx"})
    code, out, _ = run(capsys, "kb", "summary", "job1", "--server", server)
    assert code == 0
    assert "Job:               default/job1" in out
    assert "Classes:" in out and "Unseen Samples:  4 (2 labelled)" in out
    code, out, _ = run(capsys, "kb", "summary", "job1", "--server", server, "-o", "json")
    assert code == 0 and '"numberOfLabeledUnseenSample": 2' in out


def test_a_gm_without_a_kb_says_so(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    svc = start(tmp_path, None)
    try:
        code, _, err = run(capsys, "kb", "samples", "job1", "--server", f"http://127.0.0.1:{svc.api_port}")
        assert code == 1 and "(503)" in err and "no knowledge base" in err
    finally:
        svc.stop()


def test_tokens_read_may_list_and_write_may_label(
    tmp_path: Path, kb: KnowledgeBase, capsys: pytest.CaptureFixture[str], monkeypatch: pytest.MonkeyPatch
) -> None:
    tokens = tmp_path / "tokens"
    tokens.write_text(TOKENS)
    monkeypatch.delenv("LIFELONG_CONFIG", raising=False)
    svc = start(tmp_path, kb, token_file=str(tokens))
    server = f"http://127.0.0.1:{svc.api_port}"
    try:
        monkeypatch.delenv("LIFELONG_TOKEN", raising=False)
        code, _, err = run(capsys, "kb", "samples", "job1", "--server", server)
        assert code == 1 and "asks for a token (401)" in err
        monkeypatch.setenv("LIFELONG_TOKEN", "r-token")
        assert run(capsys, "kb", "samples", "job1", "--server", server)[0] == 0
        code, _, err = run(capsys, "kb", "label", "job1", "s1", "cat", "--server", server)
        assert code == 1 and "(403)" in err and "r-token" not in err
        monkeypatch.setenv("LIFELONG_TOKEN", "w-token")
        assert run(capsys, "kb", "label", "job1", "s1", "cat", "--server", server)[0] == 0
        assert labels_of(kb) == {"s1": "cat"}
    finally:
        svc.stop()


def test_the_knowledge_base_lines_show_models_classes_and_samples() -> None:
    from lifelong.client.format import kb_lines

    status = {
        "AIModels": {
            "numberOfAIModels": 2,
            "listOfAIModels": [
                {"modelID": "sunny", "averagePrecision": 0.91234, "numberOfTrainSamples": 120},
                {"modelID": "rainy", "averagePrecision": 0.5, "numberOfTrainSamples": 30},
            ],
        },
        "AIClasses": {"numberOfAIClasses": 2, "listOfAIClasses": ["cat", "dog"]},
        "samples": {"numberOfUnseenSample": 7, "numberOfLabeledUnseenSample": 3},
    }
    lines = kb_lines(status)
    assert lines[0] == "  Models:          2"
    assert lines[1].split() == ["MODEL", "AVERAGE", "PRECISION", "TRAIN", "SAMPLES"]
    assert lines[2].split() == ["sunny", "0.9123", "120"] and lines[3].split() == ["rainy", "0.5", "30"]
    assert lines[4:] == ["  Classes:         2 (cat, dog)", "  Unseen Samples:  7 (3 labelled)"]
    assert kb_lines({}) == [
        "  Models:          0",
        "  Classes:         0",
        "  Unseen Samples:  0 (0 labelled)",
    ]
