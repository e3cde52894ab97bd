"""The knowledge base's store and service (``cloud/kb/store.py``, ``service.py``, ``files.py``),
in process on a real SQLite file and a real directory: what an index records in Sedna's tables,
versions, metrics, unseen samples and labels, the summary, the checks on input and paths, and
that a reopened KB keeps everything."""

from __future__ import annotations

from pathlib import Path
from typing import Any

import pytest

from lifelong.cloud.kb import store as store_module
from lifelong.cloud.kb.base import KBRefused
from lifelong.cloud.kb.files import BadPath, LocalFiles, TooLarge, check_path
from lifelong.cloud.kb.service import KBForbidden, KBNotFound, KBTooLarge, LocalKnowledgeBase, from_sedna
from lifelong.common.kb import UnseenSample

JOB = "ns/job"


def index(
    round_: int = 1, *, model: str = "m/g0-r1.pkl", samples: int = 10, tasks: int = 2
) -> dict[str, Any]:
    return {
        "job": JOB,
        "round": round_,
        "seen_task": {
            "task_groups": [
                {
                    "entry": "g0",
                    "tasks": [
                        {"entry": f"t{i}", "attrs": {"cam": i}, "samples": samples} for i in range(tasks)
                    ],
                    "samples": samples * tasks,
                    "model": {"url": model, "metrics": {"f1": 0.5}, "classes": ["a", "b"]},
                },
                {"entry": "g1", "tasks": [], "samples": 0},
            ]
        },
        "unseen_task": {
            "task_groups": [
                {
                    "entry": "new",
                    "tasks": [{"entry": "tn"}],
                    "model": {"url": "m/new.pkl", "metrics": {"accuracy": 0.4}, "classes": ["c"]},
                    "transfer": {"from": "g0", "ratio": 0.75},
                }
            ]
        },
    }


@pytest.fixture
def kb(tmp_path: Path) -> LocalKnowledgeBase:
    return LocalKnowledgeBase.open(tmp_path / "kb")


def test_an_index_fills_sedna_tables_per_job_and_the_latest_counts(kb: LocalKnowledgeBase) -> None:
    assert kb.post_index(index(1)) == {"version": 1, "url": "/knowledgebase/v1/index/ns/job/1"}
    assert kb.post_index(index(2, model="m/g0-r2.pkl", samples=15, tasks=3))["version"] == 2
    db = kb.store.db
    assert db.fetchall(
        "SELECT name, sample_num, task_num FROM task_groups WHERE job = ? ORDER BY id", (JOB,)
    ) == [
        ("g0", 45, 3),
        ("g1", 0, 0),
        ("new", 0, 1),
    ]  # the latest index's counts, not a sum over uploads
    models = db.fetchall("SELECT model_url, is_current, index_version FROM task_models ORDER BY id")
    assert models == [("m/g0-r1.pkl", 0, 1), ("m/new.pkl", 1, 2), ("m/g0-r2.pkl", 1, 2)]
    ratios = db.fetchall(
        "SELECT t.name, r.transfer_ratio FROM task_relations r JOIN tasks t ON t.id = r.task_id "
        "ORDER BY t.name"
    )
    assert ratios == [
        ("t0", pytest.approx(1 / 3)),
        ("t1", pytest.approx(1 / 3)),
        ("t2", pytest.approx(1 / 3)),
        ("tn", 1.0),
    ]
    train = db.fetchall(
        """SELECT t.name, s.sample_num, s.data_type FROM samples s JOIN task_samples ts ON ts.sample_id = s.id
        JOIN tasks t ON t.id = ts.task_id ORDER BY t.name"""
    )
    assert train == [("t0", 15, 0), ("t1", 15, 0), ("t2", 15, 0), ("tn", 0, 0)]
    groups = kb.tasks(JOB)["taskGroups"]
    assert groups[2]["transfer"] == {"from": "g0", "ratio": 0.75}
    assert groups[0]["model"]["url"] == "m/g0-r2.pkl"
    assert kb.get_index(JOB, 1)["round"] == 1
    assert kb.get_index(JOB)["round"] == 2
    with pytest.raises(KBNotFound):
        kb.get_index(JOB, 3)
    # another job's group of the same name is another row
    kb.post_index({**index(1), "job": "ns/other"})
    assert db.fetchone("SELECT COUNT(*) FROM task_groups WHERE name = 'g0'") == (2,)
    assert kb.store.set_deploy(["g0"], False, JOB) == 1
    assert next(g["deployed"] for g in kb.tasks("ns/other")["taskGroups"]) is True


def test_summary_models_classes_and_samples(kb: LocalKnowledgeBase) -> None:
    kb.post_index(index(1))
    kb.post_metrics({"job": JOB, "round": 1, "stage": "train", "scores": {"g0": {"accuracy": 0.7}}})
    kb.post_metrics({"job": JOB, "round": 1, "stage": "eval", "scores": {"g0": {"accuracy": 0.8}}})
    kb.add_unseen(JOB, "e1", [UnseenSample(id="a", row={}), UnseenSample(id="b", row={}, predicted="x")])
    kb.label(JOB, {"a": "cat"})
    out = kb.summary(JOB).model_dump(mode="json", by_alias=True)
    assert out["AIModels"]["listOfAIModels"] == [
        {"modelID": "g0", "averagePrecision": 0.8, "numberOfTrainSamples": 20},
        {"modelID": "new", "averagePrecision": 0.4, "numberOfTrainSamples": 0},
    ]
    assert out["AIClasses"] == {"numberOfAIClasses": 3, "listOfAIClasses": ["a", "b", "c"]}
    assert out["samples"] == {"numberOfLabeledUnseenSample": 1, "numberOfUnseenSample": 2}
    empty = kb.summary("ns/unknown").model_dump(mode="json", by_alias=True)
    assert empty["AIModels"]["numberOfAIModels"] == 0


def test_unseen_samples_are_idempotent_and_labels_all_or_nothing(kb: LocalKnowledgeBase) -> None:
    samples = [UnseenSample(id=f"s{i}", row={"v": i}, predicted=i % 2) for i in range(4)]
    assert kb.add_unseen(JOB, "e1", samples) == 4
    assert kb.add_unseen(JOB, "e2", [*samples, samples[0]]) == 0
    assert {s.node for s in kb.samples(JOB)} == {"e1"}
    with pytest.raises(KBNotFound, match="ghost"):
        kb.label(JOB, {"s0": 1, "ghost": 1})
    assert kb.samples(JOB, state="labelled") == []
    assert kb.label(JOB, {"s0": 1}) == 1
    assert kb.label(JOB, {"s0": 2}) == 1  # relabelled before delivery
    assert kb.label_predicted(JOB, 1, 7) == 2
    assert kb.label_predicted(JOB, 1, 8) == 0  # only unlabelled ones
    assert [(s.sample.id, s.label) for s in kb.undelivered()] == [("s0", 2), ("s1", 7), ("s3", 7)]
    assert kb.mark_delivered(JOB, ["s1", "s1", "s2"]) == 1  # s2 has no label
    assert [s.state for s in kb.samples(JOB)] == ["labelled", "delivered", "unlabelled", "labelled"]
    with pytest.raises(KBNotFound, match="delivered"):
        kb.label(JOB, {"s1": 3})
    with pytest.raises(KBRefused, match="labels"):
        kb.label(JOB, {"s2": 1.5})  # type: ignore[dict-item]
    with pytest.raises(KBRefused, match="namespace/name"):
        kb.add_unseen("no-slash", "e1", samples)


def test_a_job_over_its_sample_bound_is_refused(
    kb: LocalKnowledgeBase, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setattr(store_module, "MAX_UNSEEN_PER_JOB", 3)
    assert kb.add_unseen(JOB, "e", [UnseenSample(id=f"s{i}", row={}) for i in range(3)]) == 3
    with pytest.raises(KBTooLarge, match="bound of 3"):
        kb.add_unseen(JOB, "e", [UnseenSample(id="s9", row={})])
    assert kb.add_unseen(JOB, "e", [UnseenSample(id="s0", row={})]) == 0  # a resend is fine
    assert len(kb.samples(JOB)) == 3


def test_metrics_by_round_stage_and_task(kb: LocalKnowledgeBase) -> None:
    kb.post_metrics({"job": JOB, "round": 2, "stage": "eval", "scores": {"g1": {"accuracy": 0.5}}})
    kb.post_metrics({"job": JOB, "round": 1, "stage": "train", "scores": {"g0": {"accuracy": 0.9}}})
    kb.post_metrics({"job": JOB, "round": 1, "stage": "train", "scores": {"g0": {"accuracy": 0.95}}})
    got = kb.metrics(JOB)
    assert got["rounds"] == [1, 2]
    assert got["tasks"] == ["g0", "g1"]
    assert got["scores"]["1"] == {"g0": {"train": {"accuracy": 0.95}}}
    with pytest.raises(KBRefused, match="round"):
        kb.post_metrics({"job": JOB, "round": -1, "stage": "eval", "scores": {}})
    with pytest.raises(KBNotFound):
        kb.metrics("ns/nobody")


def test_pickles_are_refused_unless_allowed(kb: LocalKnowledgeBase) -> None:
    with pytest.raises(KBForbidden, match="allow-pickle"):
        kb.sedna_update(b"\x80\x04N.")
    assert not kb.files.exists("index.pkl")


def test_sedna_index_objects_and_the_flat_form_before_0_6() -> None:
    class Task:
        def __init__(self, entry: str) -> None:
            self.entry, self.samples, self.meta_attr = entry, [1, 2], {"w": "rain", "vec": [1, 2]}

    class Group:
        def __init__(self) -> None:
            self.entry, self.tasks, self.samples = "rain", [Task("rain-0")], [1, 2]
            self.model = type("Model", (), {"model": "rain.pkl", "result": {"acc": 1, "bad": "x"}})()

    flat = from_sedna({"task_groups": [Group()], "extractor": "e.pkl"}, JOB)
    (group,) = flat.seen_task.task_groups
    assert group.entry == "rain"
    assert group.samples == 2
    assert group.tasks[0].attrs == {"w": "rain"}
    assert group.model is not None and group.model.metrics == {"acc": 1.0}


def test_file_paths_are_checked(tmp_path: Path) -> None:
    files = LocalFiles(tmp_path / "files")
    for bad in ("", "/etc/passwd", "../x", "a/../../x", "a//b", "a/./b", "a\\b", "c:x", ".hidden", "x" * 600):
        with pytest.raises(BadPath):
            check_path(bad)
    assert files.put("models/r1/m.pkl", b"abc", 10) == 3
    assert files.open("models/r1/m.pkl").read() == b"abc"
    with pytest.raises(TooLarge):
        files.put("models/r1/m.pkl", b"x" * 11, 10)
    assert files.open("models/r1/m.pkl").read() == b"abc"  # the old file stays whole
    assert not [p for p in (tmp_path / "files").rglob("*") if p.name.startswith(".tmp-")]
    (tmp_path / "outside").mkdir()
    (tmp_path / "files" / "link").symlink_to(tmp_path / "outside")
    with pytest.raises(BadPath, match="outside"):
        files.put("link/x", b"1", 10)
    assert files.delete("models/r1/m.pkl") is True
    assert files.exists("models/r1/m.pkl") is False


def test_a_reopened_kb_keeps_everything(tmp_path: Path) -> None:
    first = LocalKnowledgeBase.open(tmp_path / "kb")
    first.post_index(index(1))
    first.add_unseen(JOB, "e", [UnseenSample(id="s", row={"a": 1}, predicted=3, confidence=0.2)])
    first.label(JOB, {"s": 4})
    first.put_file("m/a.pkl", b"model")
    first.close()
    again = LocalKnowledgeBase.open(tmp_path / "kb")
    try:
        assert again.get_index(JOB)["round"] == 1
        (sample,) = again.samples(JOB)
        assert (sample.sample.predicted, sample.sample.confidence, sample.label) == (3, 0.2, 4)
        handle, size = again.open_file("m/a.pkl")
        with handle:
            assert (handle.read(), size) == (b"model", 5)
        assert again.post_index(index(2))["version"] == 2
    finally:
        again.close()
