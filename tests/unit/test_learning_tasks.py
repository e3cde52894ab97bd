"""``LifelongLearning``'s train and inference on scikit-learn's digits seen by two cameras:
per-task models, allocation by attribute, unseen-sample recognition, Sedna-style names, and
reading Sedna's older flat task index (``lifelong.learning``)."""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np
import pytest
from sklearn.linear_model import LogisticRegression
from sklearn.neural_network import MLPClassifier
from unit.test_learning_data import PARTS, latest_index, source, worker_env

from lifelong.learning import ClassFactory, ClassType, LifelongLearning, UnknownMethod, parse_index
from lifelong.learning.algorithms import TaskAllocationByDataAttr

pytestmark = pytest.mark.filterwarnings("ignore::sklearn.exceptions.ConvergenceWarning")

BY_DOMAIN = {"method": "TaskDefinitionByDataAttr", "param": {"attribute": ["domain"]}}


def logistic() -> LogisticRegression:
    return LogisticRegression(max_iter=300)


def trained(monkeypatch: pytest.MonkeyPatch, tmp_path: Path, estimator=None) -> tuple[Path, Path]:
    kb = worker_env(monkeypatch, tmp_path)
    job = LifelongLearning(estimator if estimator is not None else logistic(), task_definition=BY_DOMAIN)
    job.train(source({"cam_a": PARTS[0], "cam_b": PARTS[1]}))
    return kb, latest_index(kb)


def test_per_task_models_beat_one_global_model(monkeypatch: pytest.MonkeyPatch, tmp_path: Path) -> None:
    _, index = trained(monkeypatch, tmp_path)
    monkeypatch.setenv("MODEL_URLS", str(index))
    test = source({"cam_a": PARTS[3][:200], "cam_b": PARTS[3][200:400]}, labelled=True)
    res, unseen, tasks = LifelongLearning(logistic(), task_definition=BY_DOMAIN).inference(test)
    per_task = float(np.mean(res.astype(int) == test.y))
    both = source({"cam_a": PARTS[0], "cam_b": PARTS[1]})
    glob = logistic().fit(both.x, both.y)
    global_acc = float(np.mean(glob.predict(test.x) == test.y))
    assert unseen == [False] * 400
    assert sorted(t.entry for t in tasks) == ["cam-a", "cam-b"]
    assert per_task > 0.93
    assert per_task > global_acc + 0.03, (per_task, global_acc)


def test_index_records_tasks_models_and_extractor(monkeypatch: pytest.MonkeyPatch, tmp_path: Path) -> None:
    _, index_path = trained(monkeypatch, tmp_path)
    index = parse_index(index_path.read_bytes())
    assert index.job == "default/digits" and index.round == 1
    assert index.seen_task.extractor is not None
    assert index.seen_task.extractor.attributes == ["domain"]
    assert index.seen_task.extractor.map == {"cam-a": "cam-a", "cam-b": "cam-b"}
    groups = {g.entry: g for g in index.seen_task.task_groups}
    assert groups["cam-a"].tasks[0].attrs == {"domain": "cam_a"}
    assert groups["cam-a"].samples == len(PARTS[0])
    assert groups["cam-b"].model is not None and Path(groups["cam-b"].model.url).is_file()
    assert groups["cam-b"].model.classes == list(range(10))


def test_allocation_by_attribute_maps_known_values_and_none_for_new() -> None:
    data = source({"cam_b": PARTS[0][:3], "cam_a": PARTS[0][3:5], "cam_c": PARTS[0][5:7]})
    alloc = TaskAllocationByDataAttr(task_extractor={"cam-a": "A", "cam-b": "B"}, attribute=["domain"])
    _, entries = alloc(data)
    assert entries == ["B", "B", "B", "A", "A", None, None]


def test_unseen_recognition_by_attribute(monkeypatch: pytest.MonkeyPatch, tmp_path: Path) -> None:
    _, index = trained(monkeypatch, tmp_path)
    monkeypatch.setenv("MODEL_URLS", str(index))
    job = LifelongLearning(logistic(), task_definition=BY_DOMAIN)
    job.shipper = None
    data = source(
        {"cam_a": PARTS[3][:10], "cam_c": PARTS[3][10:30], "cam_b": PARTS[3][30:40]}, labelled=False
    )
    res, unseen, _tasks = job.inference(data, unseen_sample_postprocess=lambda samples: None)
    assert unseen == [False] * 10 + [True] * 20 + [False] * 10
    assert all(r is not None for r in res)
    # the one sample form: a bool, as Sedna's
    one = source({"cam_c": PARTS[3][:1]}, labelled=False)
    assert job.inference(one, unseen_sample_postprocess=lambda samples: None)[1] is True


def test_unseen_recognition_by_confidence(monkeypatch: pytest.MonkeyPatch, tmp_path: Path) -> None:
    _, index = trained(
        monkeypatch, tmp_path, MLPClassifier(hidden_layer_sizes=(32,), max_iter=200, random_state=0)
    )
    monkeypatch.setenv("MODEL_URLS", str(index))
    # cam_c's dim inverted digits, labelled as cam_b: by attribute they look seen
    data = source({"cam_b": PARTS[3][:100]}, labelled=False)
    data.x = np.clip(0.6 * data.x + np.random.default_rng(0).normal(0, 0.8, data.x.shape), 0, 16) * 0.3
    plain = LifelongLearning(logistic(), task_definition=BY_DOMAIN).inference(
        data, unseen_sample_postprocess=print
    )[1]
    probe = LifelongLearning(
        logistic(),
        task_definition=BY_DOMAIN,
        unseen_sample_recognition={"method": "ModelProbeFilter", "param": {"threshold": 0.8}},
    )
    flagged = probe.inference(data, unseen_sample_postprocess=lambda s: None)[1]
    assert plain == [False] * 100
    clean = source({"cam_b": PARTS[3][100:200]}, labelled=False)
    flagged_clean = probe.inference(clean, unseen_sample_postprocess=lambda s: None)[1]
    assert sum(flagged) >= 50 and sum(flagged) >= 3 * sum(flagged_clean), (sum(flagged), sum(flagged_clean))


def test_sedna_style_names_resolve_and_a_user_class_registers() -> None:
    for type_name, names in {
        ClassType.STP: [
            "TaskDefinitionByDataAttr",
            "TaskAllocationByDataAttr",
            "TaskAllocationDefault",
            "TaskMiningByDataAttr",
            "DefaultTaskRelationDiscover",
            "DefaultTaskRemodeling",
            "DefaultInferenceIntegrate",
        ],
        ClassType.UTD: [
            "SampleRegonitionDefault",
            "SampleReRegonitionDefault",
            "TaskAttrFilter",
            "ModelProbeFilter",
        ],
        ClassType.UTP: ["UnseenTaskAllocationDefault"],
        ClassType.KM: ["UpdateStrategyDefault", "UpdateStrategyByFinetune"],
    }.items():
        for name in names:
            assert ClassFactory.is_exists(type_name, name), name
    # Sedna's atcii example: old argument names and a JSON string param
    job = LifelongLearning(
        estimator=logistic(),
        task_definition={
            "method": "TaskDefinitionByDataAttr",
            "param": json.dumps({"attribute": ["domain"]}),
        },
        task_relationship_discovery=None,
        task_mining=None,
        task_remodeling=None,
        inference_integrate=None,
        unseen_task_detect=None,
    )
    assert job.attribute == ["domain"]
    assert job.task_allocation == ("TaskAllocationByDataAttr", {"attribute": ["domain"]})

    @ClassFactory.register(ClassType.STP, alias="test-learning-everything-to-a")
    class EverythingToA(TaskAllocationByDataAttr):
        def __call__(self, samples):
            data, entries = super().__call__(samples)
            return data, ["cam-a" for _ in entries]

    assert (
        LifelongLearning(
            logistic(), task_allocation={"method": "test-learning-everything-to-a"}
        ).task_allocation[0]
        == "test-learning-everything-to-a"
    )
    with pytest.raises(UnknownMethod, match=r"SampleRegonitionByRFNets.*known: .*SampleRegonitionDefault"):
        LifelongLearning(logistic(), unseen_sample_recognition={"method": "SampleRegonitionByRFNets"})


def test_sedna_flat_index_reads_and_serves(monkeypatch: pytest.MonkeyPatch, tmp_path: Path) -> None:
    _, index_path = trained(monkeypatch, tmp_path)
    index = json.loads(index_path.read_text())
    groups = index["seen_task"]["task_groups"]
    flat = {
        "task_groups": [
            {
                "entry": g["entry"],
                "tasks": [{"entry": g["entry"]}],
                "model": {"model": g["model"]["url"], "result": {"acc": 1.0}},
            }
            for g in groups
        ],
        "extractor": {"cam-a": 0, "cam-b": 1},
    }
    path = tmp_path / "flat.json"
    path.write_text(json.dumps(flat))
    parsed = parse_index(path.read_bytes())
    assert parsed.seen_task.extractor is not None and parsed.seen_task.extractor.map == {
        "cam-a": "cam-a",
        "cam-b": "cam-b",
    }
    assert [g.model.metrics for g in parsed.seen_task.task_groups if g.model] == [{"acc": 1.0}, {"acc": 1.0}]
    monkeypatch.setenv("MODEL_URLS", str(path))
    test = source({"cam_a": PARTS[3][:50], "cam_b": PARTS[3][50:100]})
    res, unseen, _ = LifelongLearning(logistic(), task_definition=BY_DOMAIN).inference(test)
    assert unseen == [False] * 100 and float(np.mean(res.astype(int) == test.y)) > 0.9
    with pytest.raises(Exception, match="pickle"):
        parse_index(b"\x80\x04K\x01.")
