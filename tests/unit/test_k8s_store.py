"""The Kubernetes store against a FAKE Kubernetes API server (tests/harness/fake_k8s.py).

The real ``kubernetes`` client speaks HTTP to an in-process fake, not to Kubernetes: these
tests show the store's requests and its handling of 404/409/410 are right, not that a real
API server behaves like the fake.
"""

from __future__ import annotations

import threading
from collections.abc import Iterator
from pathlib import Path

import pytest
import yaml
from harness.fake_k8s import FakeKubernetesApiServer
from harness.waiting import wait_for

from lifelong.cloud.stores.base import Conflict, NotFound, StoreError, WatchEvent
from lifelong.cloud.stores.kubernetes import (
    KubernetesStore,
    KubernetesStoreSettings,
    kubernetes_validation_condition,
)
from lifelong.common.api import Dataset, LifelongLearningJob, parse_resource
from lifelong.common.stages import ConditionType, Stage

DATASETS = "sedna.io/v1alpha1/datasets"
JOBS = "sedna.io/v1alpha1/lifelonglearningjobs"


@pytest.fixture
def fake() -> Iterator[FakeKubernetesApiServer]:
    with FakeKubernetesApiServer() as server:
        yield server


@pytest.fixture
def store(fake: FakeKubernetesApiServer) -> Iterator[KubernetesStore]:
    settings = KubernetesStoreSettings(
        watch_timeout=2, request_timeout=5.0, conflict_wait_max=0.05, error_backoff_max=0.2
    )
    s = KubernetesStore(api_client=fake.api_client(), settings=settings)
    try:
        yield s
    finally:
        s.close()
        s.api_client.close()


def dataset(name: str, url: str = "/data/a.txt", node: str = "edge-1") -> dict[str, object]:
    return {
        "apiVersion": "sedna.io/v1alpha1",
        "kind": "Dataset",
        "metadata": {"name": name, "namespace": "default"},
        "spec": {"url": url, "format": "txt", "nodeName": node},
    }


TRIGGER = {"condition": {"operator": ">", "threshold": 5, "metric": "num_of_samples"}}


def job(
    name: str, dataset_name: str = "ds", nodes: tuple[str, str, str] = ("edge-1",) * 3
) -> dict[str, object]:
    def template(node: str) -> dict[str, object]:
        return {"spec": {"nodeName": node, "containers": [{"name": "w", "image": "busybox"}]}}

    return {
        "apiVersion": "sedna.io/v1alpha1",
        "kind": "LifelongLearningJob",
        "metadata": {"name": name, "namespace": "default"},
        "spec": {
            "dataset": {"name": dataset_name, "trainProb": 0.8},
            "trainSpec": {"template": template(nodes[0]), "trigger": TRIGGER},  # the CRD requires one
            "evalSpec": {"template": template(nodes[1])},
            "deploySpec": {"template": template(nodes[2])},
            "outputDir": "/out",
        },
    }


def model(obj: dict[str, object]) -> LifelongLearningJob:
    parsed = parse_resource(obj)
    assert isinstance(parsed, LifelongLearningJob)
    return parsed


def test_k8s_store_watch_refuses_an_object_the_models_refuse_and_goes_on_fake_api(
    store: KubernetesStore, fake: FakeKubernetesApiServer, watching: Recorder
) -> None:
    # A valid Kubernetes name (and so accepted by the CRD) that is too long for a job's workers.
    long_name = "j" * 240
    fake.put("sedna.io/v1alpha1/lifelonglearningjobs", job(long_name))
    store.apply(dataset("good"))
    wait_for(lambda: len(watching.seen()) == 2, what="both objects")
    by_name = {e.key[2]: e for e in watching.events}
    assert by_name["good"].refused is None and isinstance(by_name["good"].model, Dataset)
    bad = by_name[long_name]
    assert bad.key == ("LifelongLearningJob", "default", long_name) and bad.model is None
    assert bad.refused is not None and bad.refused.startswith("metadata.name: is 240 characters")


def test_k8s_store_crud_and_resource_versions_fake_api(store: KubernetesStore) -> None:
    created = store.apply(dataset("ds"))
    rv1 = created["metadata"]["resourceVersion"]
    assert created["metadata"]["uid"] and created["metadata"]["creationTimestamp"]
    assert store.get("Dataset", "default", "ds") == created

    # An unchanged spec does not bump the version; a changed one does.
    assert store.apply(dataset("ds"))["metadata"]["resourceVersion"] == rv1
    changed = store.apply(dataset("ds", url="/data/b.txt"))
    assert int(changed["metadata"]["resourceVersion"]) > int(rv1)
    assert changed["spec"]["url"] == "/data/b.txt"

    # apply never touches status; update_status never touches spec.
    with_status = store.update_status("Dataset", "default", "ds", {"numberOfSamples": 7})
    assert with_status["status"] == {"numberOfSamples": 7}
    again = store.apply(dataset("ds", url="/data/c.txt"))
    assert again["status"] == {"numberOfSamples": 7} and again["spec"]["url"] == "/data/c.txt"

    assert [o["metadata"]["name"] for o in store.list("Dataset")] == ["ds"]
    assert [o["metadata"]["name"] for o in store.list("Dataset", "other")] == []
    assert store.list("Dataset")[0]["kind"] == "Dataset"

    deleted = store.delete("Dataset", "default", "ds")
    assert deleted is not None and deleted["metadata"]["name"] == "ds"
    assert store.get("Dataset", "default", "ds") is None
    assert store.delete("Dataset", "default", "ds") is None


def test_k8s_store_errors_are_mapped_fake_api(store: KubernetesStore, fake: FakeKubernetesApiServer) -> None:
    with pytest.raises(NotFound):
        store.update_status("Dataset", "default", "missing", {"numberOfSamples": 1})
    store.apply(dataset("ds"))
    stale = store.get("Dataset", "default", "ds")
    assert stale is not None
    store.update_status("Dataset", "default", "ds", {"numberOfSamples": 1})
    with pytest.raises(Conflict):
        store.update_status(
            "Dataset",
            "default",
            "ds",
            {"numberOfSamples": 2},
            resource_version=stale["metadata"]["resourceVersion"],
        )
    fake.fail_next("GET", "/datasets/ds", 500)
    with pytest.raises(StoreError, match="500"):
        store.get("Dataset", "default", "ds")
    with pytest.raises(StoreError, match="Worker"):
        store.list("Worker")


def test_k8s_store_status_conflict_is_retried_fake_api(
    store: KubernetesStore, fake: FakeKubernetesApiServer
) -> None:
    store.apply(dataset("ds"))
    fake.fail_next("PUT", "/datasets/ds/status", 409)
    written = store.update_status("Dataset", "default", "ds", {"numberOfSamples": 3})
    assert written["status"] == {"numberOfSamples": 3}
    puts = [p for m, p in fake.requests if m == "PUT" and p.endswith("/datasets/ds/status")]
    assert len(puts) == 2  # the injected 409, then the retry with a fresh read

    # A writer that always conflicts is not retried forever.
    fake.fail_next("PUT", "/datasets/ds/status", 409, times=100)
    with pytest.raises(Conflict):
        store.update_status("Dataset", "default", "ds", {"numberOfSamples": 4})


def test_k8s_store_apply_conflict_is_retried_fake_api(
    store: KubernetesStore, fake: FakeKubernetesApiServer
) -> None:
    store.apply(dataset("ds"))
    fake.fail_next("PUT", "/datasets/ds", 409)
    assert store.apply(dataset("ds", url="/x"))["spec"]["url"] == "/x"


class Recorder:
    def __init__(self) -> None:
        self.events: list[WatchEvent] = []
        self.lock = threading.Lock()

    def __call__(self, event: WatchEvent) -> None:
        with self.lock:
            self.events.append(event)

    def seen(self) -> list[tuple[str, str, str]]:
        with self.lock:
            return [(e.type, e.key[0], e.key[2]) for e in self.events]


@pytest.fixture
def watching(store: KubernetesStore) -> Iterator[Recorder]:
    recorder = Recorder()
    stop = threading.Event()
    thread = threading.Thread(target=store.watch, args=(recorder,), kwargs={"stop": stop}, daemon=True)
    thread.start()
    try:
        yield recorder
    finally:
        stop.set()
        thread.join(timeout=10)
        assert not thread.is_alive(), "watch did not honour stop"


def test_k8s_store_watch_lists_then_streams_fake_api(
    store: KubernetesStore, fake: FakeKubernetesApiServer
) -> None:
    store.apply(dataset("before"))
    recorder = Recorder()
    stop = threading.Event()
    thread = threading.Thread(target=store.watch, args=(recorder,), kwargs={"stop": stop}, daemon=True)
    thread.start()
    wait_for(lambda: ("ADDED", "Dataset", "before") in recorder.seen(), what="the listed object")
    store.apply(job("j1"))
    store.update_status("Dataset", "default", "before", {"numberOfSamples": 5})
    store.delete("Dataset", "default", "before")
    want = [
        ("ADDED", "Dataset", "before"),
        ("ADDED", "LifelongLearningJob", "j1"),
        ("MODIFIED", "Dataset", "before"),
        ("DELETED", "Dataset", "before"),
    ]
    wait_for(lambda: sorted(recorder.seen()) == sorted(want), what="the changes")
    datasets = [e for e in recorder.seen() if e[1] == "Dataset"]
    assert datasets == [w for w in want if w[1] == "Dataset"]  # in order per object
    stop.set()
    thread.join(timeout=10)
    assert not thread.is_alive()


def test_k8s_store_watch_restarts_after_410_gone_fake_api(
    store: KubernetesStore, fake: FakeKubernetesApiServer, watching: Recorder
) -> None:
    store.apply(dataset("a"))
    store.apply(dataset("b"))
    wait_for(lambda: len(watching.seen()) == 2, what="two ADDED")

    # Changes made while the history is compacted away and the watch is expired: the
    # watch resumes from an old version, gets 410, relists and delivers only the difference.
    gets_before = sum(1 for m, p in fake.requests if m == "GET" and "watch" not in p)
    store.apply(dataset("a", url="/changed"))
    store.delete("Dataset", "default", "b")
    store.apply(dataset("c"))
    fake.compact()
    fake.expire_watches()
    wait_for(
        lambda: (
            sorted(watching.seen()[2:])
            == sorted([("MODIFIED", "Dataset", "a"), ("DELETED", "Dataset", "b"), ("ADDED", "Dataset", "c")])
        ),
        what="the changes across the 410",
    )
    assert sum(1 for m, p in fake.requests if m == "GET" and "watch" not in p) > gets_before  # relisted

    # Events keep flowing after the restart, each delivered once.
    store.apply(dataset("d"))
    wait_for(lambda: ("ADDED", "Dataset", "d") in watching.seen(), what="an event after the restart")
    seen = watching.seen()
    assert len(seen) == len(set(seen)) == 6
    a_events = [e for e in watching.events if e.key[2] == "a"]
    last = a_events[-1].model
    assert isinstance(last, Dataset) and last.spec.url == "/changed"


def test_k8s_store_watch_survives_an_error_event_410_fake_api(
    store: KubernetesStore, fake: FakeKubernetesApiServer, watching: Recorder
) -> None:
    store.apply(dataset("a"))
    wait_for(lambda: watching.seen() == [("ADDED", "Dataset", "a")], what="ADDED a")
    fake.expire_watches()  # ERROR 410 mid-stream, history still there
    store.apply(dataset("b"))
    wait_for(lambda: ("ADDED", "Dataset", "b") in watching.seen(), what="ADDED b")
    store.apply(dataset("b", url="/new"))
    wait_for(lambda: ("MODIFIED", "Dataset", "b") in watching.seen(), what="MODIFIED b")
    assert watching.seen().count(("ADDED", "Dataset", "b")) == 1


def test_k8s_validation_condition_fake_api(store: KubernetesStore, fake: FakeKubernetesApiServer) -> None:
    fake.put("v1/nodes", {"apiVersion": "v1", "kind": "Node", "metadata": {"name": "edge-1"}})
    assert store.node_names() == {"edge-1"}

    missing_ds = kubernetes_validation_condition(model(job("j", dataset_name="nope")), store)
    assert missing_ds is not None
    assert missing_ds.type is ConditionType.FAILED and missing_ds.stage is Stage.TRAIN
    assert missing_ds.reason == "DatasetNotFound"
    assert "spec.dataset.name" in missing_ds.message and "default/nope" in missing_ds.message

    store.apply(dataset("ds"))
    assert kubernetes_validation_condition(model(job("j")), store) is None

    # Nodes that are no Node objects (yet) are accepted, as Kubernetes takes a Pod for them: the
    # job waits for its nodes instead of failing.
    store.apply(dataset("elsewhere", node="edge-9"))
    assert kubernetes_validation_condition(model(job("j", dataset_name="elsewhere")), store) is None
    elsewhere = model(job("j", nodes=("edge-1", "edge-1", "cloud-9")))
    assert kubernetes_validation_condition(elsewhere, store) is None


def test_k8s_store_from_kubeconfig_fake_api(fake: FakeKubernetesApiServer, tmp_path: Path) -> None:
    kubeconfig = tmp_path / "kubeconfig"
    kubeconfig.write_text(
        yaml.safe_dump(
            {
                "apiVersion": "v1",
                "kind": "Config",
                "clusters": [{"name": "fake", "cluster": {"server": fake.url}}],
                "users": [{"name": "u", "user": {"token": "not-a-secret"}}],
                "contexts": [{"name": "fake", "context": {"cluster": "fake", "user": "u", "namespace": "x"}}],
                "current-context": "fake",
            }
        )
    )
    s = KubernetesStore(kubeconfig=str(kubeconfig), namespace="team-a")
    try:
        created = s.apply(dataset("ds") | {"metadata": {"name": "ds"}})
        assert created["metadata"]["namespace"] == "team-a"  # the store's namespace is the default
        assert [o["metadata"]["name"] for o in s.list("Dataset")] == ["ds"]
    finally:
        s.close()
