"""The Kubernetes store against a REAL kube-apiserver with etcd (the ``k8s`` fixture,
tests/harness/k8s_cluster.py), authenticated as the GM's ServiceAccount with the RBAC of
deploy/k8s/gm-rbac.yaml, so a permission the store needs and the shipped Role lacks fails here.

Each test has its own namespace and a store limited to it. Conflicts are real: another writer
(the cluster admin) changes the object between the store's read and its write. A 410 Gone is
real: the store talks to a second API server that is stopped while changes are made and etcd is
compacted; when it is back, its fresh watch cache cannot serve the store's old resourceVersion.
"""

from __future__ import annotations

import contextlib
import dataclasses
import threading
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any

import pytest
from harness import k8s_objects as objects
from harness.k8s_cluster import NOBODY_TOKEN, Cluster
from harness.waiting import wait_for

from lifelong.cloud.stores.base import Conflict, NotFound, StoreError, WatchEvent
from lifelong.cloud.stores.kubernetes import (
    KubernetesStore,
    KubernetesStoreSettings,
    _KindStream,
    kubernetes_validation_condition,
)
from lifelong.common.api import Dataset, LifelongLearningJob, parse_resource
from lifelong.common.stages import ConditionType, Stage

GROUP, VERSION = "sedna.io", "v1alpha1"
SETTINGS = KubernetesStoreSettings(
    watch_timeout=2, request_timeout=5.0, conflict_wait_max=0.05, error_backoff_max=0.5
)


@pytest.fixture
def gm_kubeconfig(k8s: Cluster, k8s_ns: str, tmp_path: Path) -> Path:
    """A kubeconfig of the GM's ServiceAccount (deploy/k8s/gm-rbac.yaml applied for ``k8s_ns``)."""
    return k8s.gm_kubeconfig(k8s_ns, tmp_path / "gm.kubeconfig")


def make_store(k8s: Cluster, kubeconfig: Path, namespace: str, url: str | None = None) -> KubernetesStore:
    client = k8s.api_client(url, token=k8s.sa_token(kubeconfig))
    return KubernetesStore(api_client=client, namespace=namespace, settings=SETTINGS)


@pytest.fixture
def store(k8s: Cluster, k8s_ns: str, gm_kubeconfig: Path) -> Iterator[KubernetesStore]:
    s = make_store(k8s, gm_kubeconfig, k8s_ns)
    try:
        yield s
    finally:
        s.close()
        s.api_client.close()


def admin_create(k8s: Cluster, namespace: str, plural: str, obj: dict[str, Any]) -> dict[str, Any]:
    """Create an object as the cluster admin (a user with kubectl)."""
    body = {**obj, "metadata": {**obj["metadata"], "namespace": namespace}}
    created: dict[str, Any] = k8s.custom().create_namespaced_custom_object(
        GROUP, VERSION, namespace, plural, body
    )
    return created


class Interloper:
    """Wraps one of the store's API methods: before each of the next ``times`` calls, another
    writer (the admin) changes the object, so the store's write carries a stale resourceVersion
    and the real server answers 409 Conflict."""

    def __init__(self, store: KubernetesStore, method: str, meddle: Callable[[], None], times: int) -> None:
        self.calls = 0
        self.remaining = times
        original = getattr(store._custom, method)

        def wrapped(*args: Any, **kwargs: Any) -> Any:
            self.calls += 1
            if self.remaining > 0:
                self.remaining -= 1
                meddle()
            return original(*args, **kwargs)

        setattr(store._custom, method, wrapped)


def dataset(name: str, url: str = "/data/a.txt", node: str = "edge-1") -> dict[str, Any]:
    return objects.dataset(name, node, url)


job = objects.job


def model(obj: dict[str, Any], namespace: str) -> LifelongLearningJob:
    parsed = parse_resource({**obj, "metadata": {**obj["metadata"], "namespace": namespace}})
    assert isinstance(parsed, LifelongLearningJob)
    return parsed


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


@contextlib.contextmanager
def watching_with(store: KubernetesStore) -> Iterator[Recorder]:
    recorder = Recorder()
    stop = threading.Event()
    thread = threading.Thread(target=store.watch, args=(recorder,), kwargs={"stop": stop}, daemon=True)
    thread.start()
    try:
        yield recorder
    finally:
        stop.set()
        thread.join(timeout=15)
        assert not thread.is_alive(), "watch did not honour stop"


@pytest.fixture
def watching(store: KubernetesStore) -> Iterator[Recorder]:
    with watching_with(store) as recorder:
        yield recorder


def test_k8s_store_watch_refuses_an_object_the_models_refuse_and_goes_on_apiserver(
    store: KubernetesStore, k8s: Cluster, k8s_ns: str, watching: Recorder
) -> None:
    # A name the models refuse (its workers' names would be too long) that an older CRD, without
    # the shipped CRD's limit of 63 characters, let the API server take.
    long_name = "j" * 240
    with k8s.older_job_crd(k8s_ns):
        admin_create(k8s, k8s_ns, "lifelonglearningjobs", job(long_name))
    store.apply(dataset("good"))
    wait_for(lambda: len(watching.seen()) == 2, what="both objects")
    by_name = {e.key[2]: e for e in watching.events}
    assert by_name["good"].refused is None and isinstance(by_name["good"].model, Dataset)
    bad = by_name[long_name]
    assert bad.key == ("LifelongLearningJob", k8s_ns, long_name) and bad.model is None
    assert bad.refused is not None and bad.refused.startswith("metadata.name: is 240 characters")


def test_k8s_store_crud_and_resource_versions_apiserver(store: KubernetesStore, k8s_ns: str) -> None:
    created = store.apply(dataset("ds"))
    rv1 = created["metadata"]["resourceVersion"]
    assert created["metadata"]["uid"] and created["metadata"]["creationTimestamp"]
    assert created["metadata"]["namespace"] == k8s_ns  # the store's namespace is the default
    assert store.get("Dataset", k8s_ns, "ds") == created

    # An unchanged spec does not bump the version; a changed one does.
    assert store.apply(dataset("ds"))["metadata"]["resourceVersion"] == rv1
    changed = store.apply(dataset("ds", url="/data/b.txt"))
    assert int(changed["metadata"]["resourceVersion"]) > int(rv1)
    assert changed["spec"]["url"] == "/data/b.txt"
    assert changed["metadata"]["generation"] == 2

    # apply never touches status; update_status never touches spec (the status subresource).
    with_status = store.update_status("Dataset", k8s_ns, "ds", {"numberOfSamples": 7})
    assert with_status["status"] == {"numberOfSamples": 7}
    assert with_status["metadata"]["generation"] == 2  # a status write is no new generation
    again = store.apply(dataset("ds", url="/data/c.txt"))
    assert again["status"] == {"numberOfSamples": 7} and again["spec"]["url"] == "/data/c.txt"

    assert [o["metadata"]["name"] for o in store.list("Dataset")] == ["ds"]
    assert [o["metadata"]["name"] for o in store.list("Dataset", "kube-system")] == []
    assert store.list("Dataset")[0]["kind"] == "Dataset"

    deleted = store.delete("Dataset", k8s_ns, "ds")
    assert deleted is not None and deleted["metadata"]["name"] == "ds"
    assert store.get("Dataset", k8s_ns, "ds") is None
    assert store.delete("Dataset", k8s_ns, "ds") is None


def test_k8s_store_errors_are_mapped_apiserver(store: KubernetesStore, k8s: Cluster, k8s_ns: str) -> None:
    with pytest.raises(NotFound):
        store.update_status("Dataset", k8s_ns, "missing", {"numberOfSamples": 1})
    store.apply(dataset("ds"))
    stale = store.get("Dataset", k8s_ns, "ds")
    assert stale is not None
    store.update_status("Dataset", k8s_ns, "ds", {"numberOfSamples": 1})
    with pytest.raises(Conflict):
        store.update_status(
            "Dataset",
            k8s_ns,
            "ds",
            {"numberOfSamples": 2},
            resource_version=stale["metadata"]["resourceVersion"],
        )
    # A user the API server knows but RBAC grants nothing: 403 Forbidden, a StoreError.
    nobody = KubernetesStore(
        api_client=k8s.api_client(token=NOBODY_TOKEN), namespace=k8s_ns, settings=SETTINGS
    )
    try:
        with pytest.raises(StoreError, match="403"):
            nobody.get("Dataset", k8s_ns, "ds")
    finally:
        nobody.api_client.close()
    with pytest.raises(StoreError, match="Worker"):
        store.list("Worker")


def test_k8s_store_status_conflict_is_retried_apiserver(
    store: KubernetesStore, k8s: Cluster, k8s_ns: str
) -> None:
    store.apply(dataset("ds"))
    counter = iter(range(1000, 2000))

    def another_writer() -> None:
        k8s.custom().patch_namespaced_custom_object_status(
            GROUP, VERSION, k8s_ns, "datasets", "ds", {"status": {"numberOfSamples": next(counter)}}
        )

    spy = Interloper(store, "replace_namespaced_custom_object_status", another_writer, times=1)
    written = store.update_status("Dataset", k8s_ns, "ds", {"numberOfSamples": 3})
    assert written["status"] == {"numberOfSamples": 3}
    assert spy.calls == 2  # the real 409, then the retry with a fresh read

    # A writer that always gets in between is not outrun forever.
    spy.remaining = 100
    with pytest.raises(Conflict):
        store.update_status("Dataset", k8s_ns, "ds", {"numberOfSamples": 4})
    assert spy.calls == 2 + SETTINGS.conflict_attempts


def test_k8s_store_apply_conflict_is_retried_apiserver(
    store: KubernetesStore, k8s: Cluster, k8s_ns: str
) -> None:
    store.apply(dataset("ds"))

    def another_writer() -> None:
        k8s.custom().patch_namespaced_custom_object(
            GROUP, VERSION, k8s_ns, "datasets", "ds", {"metadata": {"annotations": {"touched": "yes"}}}
        )

    spy = Interloper(store, "replace_namespaced_custom_object", another_writer, times=1)
    assert store.apply(dataset("ds", url="/x"))["spec"]["url"] == "/x"
    assert spy.calls == 2


def test_k8s_store_watch_lists_then_streams_apiserver(store: KubernetesStore, k8s_ns: str) -> None:
    store.apply(dataset("before"))
    with watching_with(store) as recorder:
        wait_for(lambda: ("ADDED", "Dataset", "before") in recorder.seen(), what="the listed object")
        store.apply(job("j1"))
        store.update_status("Dataset", k8s_ns, "before", {"numberOfSamples": 5})
        store.delete("Dataset", k8s_ns, "before")
        want = [
            ("ADDED", "Dataset", "before"),
            ("ADDED", "LifelongLearningJob", "j1"),
            ("MODIFIED", "Dataset", "before"),
            ("DELETED", "Dataset", "before"),
        ]
        wait_for(lambda: sorted(recorder.seen()) == sorted(want), what="the changes")
        datasets = [e for e in recorder.seen() if e[1] == "Dataset"]
        assert datasets == [w for w in want if w[1] == "Dataset"]  # in order per object


def test_k8s_store_watch_follows_bookmarks_apiserver(
    k8s: Cluster, k8s_ns: str, gm_kubeconfig: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    """The API server's watch cache sends BOOKMARK events (2 s before a watch's timeout): the
    store's next watch starts from the bookmark's resourceVersion, which moved on with writes its
    namespaced watch never sees, and no event is delivered for a bookmark."""
    bookmarks: list[str] = []
    original = _KindStream._on_event

    def on_event(self: _KindStream, event: Any) -> None:
        if event.get("type") == "BOOKMARK" and self.kind == "Dataset":
            bookmarks.append(str(event["raw_object"]["metadata"]["resourceVersion"]))
        original(self, event)

    monkeypatch.setattr(_KindStream, "_on_event", on_event)
    settings = dataclasses.replace(SETTINGS, watch_timeout=5)  # a bookmark needs > 2 s
    store = KubernetesStore(
        api_client=k8s.api_client(token=k8s.sa_token(gm_kubeconfig)), namespace=k8s_ns, settings=settings
    )
    watches = count_watches(store)
    other = k8s.namespace("other")
    try:
        created = store.apply(dataset("a"))
        with watching_with(store) as watching:
            wait_for(lambda: watching.seen() == [("ADDED", "Dataset", "a")], what="ADDED a")
            # A write in another namespace: the store's watch gets no event for it.
            elsewhere = admin_create(k8s, other, "datasets", dataset("elsewhere"))
            later = int(elsewhere["metadata"]["resourceVersion"])
            assert later > int(created["metadata"]["resourceVersion"])
            wait_for(
                lambda: any(int(rv) >= later for rv in bookmarks),
                timeout=20,
                what="a bookmark past the write",
            )
            wait_for(
                lambda: any(int(rv or 0) >= later for rv in watches),
                timeout=20,
                what="a watch from the bookmark",
            )
            assert watching.seen() == [("ADDED", "Dataset", "a")]  # bookmarks deliver nothing
    finally:
        k8s.delete_namespace(other)
        store.close()
        store.api_client.close()


def count_watches(store: KubernetesStore) -> list[str]:
    """The resourceVersion of every watch request the store makes for Datasets."""
    versions: list[str] = []
    original = store._custom.list_namespaced_custom_object

    def spy(*args: Any, **kwargs: Any) -> Any:
        if kwargs.get("watch") and args[3] == "datasets":
            versions.append(str(kwargs.get("resource_version") or ""))
        return original(*args, **kwargs)

    store._custom.list_namespaced_custom_object = spy
    return versions


def count_lists(store: KubernetesStore) -> list[str]:
    """The kind of every list (not watch) request the store makes."""
    kinds: list[str] = []
    original = store._custom.list_namespaced_custom_object

    def spy(*args: Any, **kwargs: Any) -> Any:
        if not kwargs.get("watch"):
            kinds.append(str(args[3]))
        return original(*args, **kwargs)

    store._custom.list_namespaced_custom_object = spy
    return kinds


def test_k8s_store_watch_restarts_after_410_gone_apiserver(
    k8s: Cluster, k8s_ns: str, gm_kubeconfig: Path
) -> None:
    """The store's API server goes away while the watched objects change and etcd is compacted;
    the restarted server's watch cache starts after the store's resourceVersion: 410 Gone, a
    relist, and only the differences delivered."""
    with k8s.second_apiserver() as server:
        store = make_store(k8s, gm_kubeconfig, k8s_ns, url=server.url)
        lists = count_lists(store)
        try:
            store.apply(dataset("a"))
            store.apply(dataset("b"))
            with watching_with(store) as watching:
                wait_for(lambda: len(watching.seen()) == 2, what="two ADDED")
                lists_before = len(lists)
                server.stop()
                # Changes the store cannot see, through the main API server, then compaction.
                admin = k8s.custom()
                admin.patch_namespaced_custom_object(
                    GROUP, VERSION, k8s_ns, "datasets", "a", {"spec": {"url": "/changed"}}
                )
                admin.delete_namespaced_custom_object(GROUP, VERSION, k8s_ns, "datasets", "b")
                admin_create(k8s, k8s_ns, "datasets", dataset("c"))
                k8s.compact()
                server.start()
                wait_for(
                    lambda: (
                        sorted(watching.seen()[2:])
                        == sorted(
                            [
                                ("MODIFIED", "Dataset", "a"),
                                ("DELETED", "Dataset", "b"),
                                ("ADDED", "Dataset", "c"),
                            ]
                        )
                    ),
                    timeout=60,
                    what="the changes across the 410",
                )
                assert lists[lists_before:].count("datasets") >= 1  # relisted after the 410

                # Events keep flowing after the restart, each delivered once.
                store.apply(dataset("d"))
                wait_for(
                    lambda: ("ADDED", "Dataset", "d") in watching.seen(), what="an event after the restart"
                )
                seen = watching.seen()
                assert len(seen) == len(set(seen)) == 6
                a_events = [e for e in watching.events if e.key[2] == "a"]
                last = a_events[-1].model
                assert isinstance(last, Dataset) and last.spec.url == "/changed"
        finally:
            store.close()
            store.api_client.close()


def test_k8s_validation_condition_apiserver(store: KubernetesStore, k8s: Cluster, k8s_ns: str) -> None:
    k8s.ensure_node("edge-1")
    assert "edge-1" in store.node_names()  # the GM's ClusterRole reads Nodes

    missing_ds = kubernetes_validation_condition(model(job("j", dataset_name="nope"), k8s_ns), store)
    assert missing_ds is not None
    assert missing_ds.type is ConditionType.FAILED and missing_ds.stage is Stage.TRAIN
    assert missing_ds.reason == "DatasetNotFound"
    assert "spec.dataset.name" in missing_ds.message and f"{k8s_ns}/nope" in missing_ds.message

    store.apply(dataset("ds"))
    assert kubernetes_validation_condition(model(job("j"), k8s_ns), store) is None

    # Nodes that are no Node objects (yet) are accepted, as Kubernetes takes a Pod for them: the
    # job waits for its nodes instead of failing.
    store.apply(dataset("elsewhere", node="edge-9"))
    assert kubernetes_validation_condition(model(job("j", dataset_name="elsewhere"), k8s_ns), store) is None
    elsewhere = model(job("j", nodes=("edge-1", "edge-1", "cloud-9")), k8s_ns)
    assert kubernetes_validation_condition(elsewhere, store) is None


def test_k8s_store_from_kubeconfig_apiserver(k8s: Cluster, k8s_ns: str, gm_kubeconfig: Path) -> None:
    """``lifelong gm --kubeconfig``: the store reads the ServiceAccount's kubeconfig itself."""
    s = KubernetesStore(kubeconfig=str(gm_kubeconfig), namespace=k8s_ns)
    try:
        created = s.apply(dataset("ds") | {"metadata": {"name": "ds"}})
        assert created["metadata"]["namespace"] == k8s_ns
        assert [o["metadata"]["name"] for o in s.list("Dataset")] == ["ds"]
    finally:
        s.close()
