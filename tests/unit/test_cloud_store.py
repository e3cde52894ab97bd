"""The standalone SQLite store: versions, status kept apart from spec, conflicts, the watch."""

from __future__ import annotations

import threading
from pathlib import Path

import pytest
from harness.waiting import wait_for

from lifelong.cloud.stores import sqlite as sqlite_store
from lifelong.cloud.stores.base import Conflict, ModelCache, NotFound, WatchEvent
from lifelong.cloud.stores.sqlite import SqliteStore
from lifelong.common.api import Dataset, LifelongLearningJob
from lifelong.common.sqlite import Database


def ds(name: str = "ds1", node: str = "node-a", url: str = "/data/a.txt") -> dict:
    return {
        "apiVersion": "sedna.io/v1alpha1",
        "kind": "Dataset",
        "metadata": {"name": name},
        "spec": {"url": url, "format": "txt", "nodeName": node},
    }


@pytest.fixture
def store(tmp_path: Path):
    s = SqliteStore(tmp_path / "store.db")
    yield s
    s.close()


def test_apply_fills_metadata_and_versions_grow(store: SqliteStore) -> None:
    a = store.apply(ds("a"))
    b = store.apply(ds("b"))
    assert a["metadata"]["namespace"] == "default"
    assert a["metadata"]["uid"] and a["metadata"]["creationTimestamp"]
    assert int(b["metadata"]["resourceVersion"]) > int(a["metadata"]["resourceVersion"])
    assert store.get("Dataset", "default", "a") == a
    assert [o["metadata"]["name"] for o in store.list("Dataset")] == ["a", "b"]
    assert store.list("Dataset", "other") == []


def test_unchanged_apply_keeps_version_and_changed_apply_bumps_it(store: SqliteStore) -> None:
    first = store.apply(ds())
    again = store.apply({**ds(), "metadata": {"name": "ds1", "resourceVersion": "999"}})
    assert again["metadata"]["resourceVersion"] == first["metadata"]["resourceVersion"]
    changed = store.apply(ds(url="/data/b.txt"))
    assert int(changed["metadata"]["resourceVersion"]) > int(first["metadata"]["resourceVersion"])
    assert changed["metadata"]["uid"] == first["metadata"]["uid"]
    assert changed["metadata"]["generation"] == 2


def test_status_is_written_apart_from_spec(store: SqliteStore) -> None:
    store.apply(ds())
    with_status = store.update_status("Dataset", "default", "ds1", {"numberOfSamples": 5})
    assert with_status["status"] == {"numberOfSamples": 5}
    # apply never touches status, even when the caller sends one
    reapplied = store.apply({**ds(url="/x"), "status": {"numberOfSamples": 0}})
    assert reapplied["status"] == {"numberOfSamples": 5}
    assert reapplied["spec"]["url"] == "/x"
    # status writes never touch spec
    again = store.update_status("Dataset", "default", "ds1", {"numberOfSamples": 6})
    assert again["spec"]["url"] == "/x"
    # a new object starts without status
    assert "status" not in store.apply({**ds("fresh"), "status": {"numberOfSamples": 9}})


def test_status_conflict_and_not_found(store: SqliteStore) -> None:
    obj = store.apply(ds())
    rv = obj["metadata"]["resourceVersion"]
    store.update_status("Dataset", "default", "ds1", {"numberOfSamples": 1}, resource_version=rv)
    with pytest.raises(Conflict):
        store.update_status("Dataset", "default", "ds1", {"numberOfSamples": 2}, resource_version=rv)
    with pytest.raises(NotFound):
        store.update_status("Dataset", "default", "nope", {})
    same = store.get("Dataset", "default", "ds1")
    assert same is not None
    unchanged = store.update_status("Dataset", "default", "ds1", {"numberOfSamples": 1})
    assert unchanged["metadata"]["resourceVersion"] == same["metadata"]["resourceVersion"]


def test_delete_returns_the_deletion_version(store: SqliteStore) -> None:
    obj = store.apply(ds())
    gone = store.delete("Dataset", "default", "ds1")
    assert gone is not None
    assert int(gone["metadata"]["resourceVersion"]) > int(obj["metadata"]["resourceVersion"])
    assert store.get("Dataset", "default", "ds1") is None
    assert store.delete("Dataset", "default", "ds1") is None


def test_versions_survive_reopening(tmp_path: Path) -> None:
    s = SqliteStore(tmp_path / "s.db")
    rv = int(s.apply(ds())["metadata"]["resourceVersion"])
    s.close()
    s2 = SqliteStore(tmp_path / "s.db")
    try:
        assert int(s2.apply(ds("b"))["metadata"]["resourceVersion"]) == rv + 1
    finally:
        s2.close()


def _collect(store: SqliteStore) -> tuple[list[WatchEvent], threading.Event, threading.Thread]:
    events: list[WatchEvent] = []
    stop = threading.Event()
    thread = threading.Thread(target=store.watch, args=(events.append,), kwargs={"stop": stop}, daemon=True)
    thread.start()
    return events, stop, thread


def test_watch_lists_then_streams_changes_in_order(store: SqliteStore) -> None:
    store.apply(ds("a"))
    events, stop, thread = _collect(store)
    try:
        wait_for(lambda: len(events) == 1, what="the initial list")
        store.apply(ds("b"))
        store.update_status("Dataset", "default", "a", {"numberOfSamples": 3})
        store.delete("Dataset", "default", "b")
        wait_for(lambda: len(events) == 4, what="three changes")
        assert [(e.type, e.key[2]) for e in events] == [
            ("ADDED", "a"),
            ("ADDED", "b"),
            ("MODIFIED", "a"),
            ("DELETED", "b"),
        ]
        versions = [int(e.resource_version) for e in events[1:]]
        assert versions == sorted(versions)
        assert all(isinstance(e.model, Dataset) and e.refused is None for e in events)
        assert events[2].model is not None and events[2].model.status is not None
        assert events[2].model.status.number_of_samples == 3
    finally:
        stop.set()
        thread.join(5)


def test_watch_relists_after_falling_behind_the_pruned_log(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    db = Database(tmp_path / "store.db")  # the test prunes the change log through it
    store = SqliteStore(db)
    monkeypatch.setattr(sqlite_store, "CHANGE_LOG_KEEP", 1)
    store.apply(ds("a"))
    store.apply(ds("gone"))
    events, stop, thread = _collect(store)
    wait_for(lambda: len(events) == 2, what="the initial list")
    stop.set()
    thread.join(5)
    # many changes while nobody watches; the log gets pruned
    store.delete("Dataset", "default", "gone")
    for i in range(1100):
        store.update_status("Dataset", "default", "a", {"numberOfSamples": i})
    db.execute("DELETE FROM changes WHERE rv < (SELECT MAX(rv) FROM changes)")
    seen: list[WatchEvent] = []
    stop2 = threading.Event()
    t2 = threading.Thread(target=store.watch, args=(seen.append,), kwargs={"stop": stop2}, daemon=True)
    t2.start()
    try:
        wait_for(lambda: any(e.key[2] == "a" for e in seen), what="a re-list")
        assert {e.key[2] for e in seen} == {"a"}
    finally:
        stop2.set()
        t2.join(5)
        store.close()


def test_watch_parses_each_object_once_and_names_why_the_models_refuse_one(store: SqliteStore) -> None:
    bad = ds("bad")
    bad["spec"]["url"] = 123  # the store does not validate: as an older, buggier GM could have written
    store.apply(bad)
    store.apply(ds("good"))
    events, stop, thread = _collect(store)
    try:
        wait_for(lambda: len(events) == 2, what="the initial list")
        store.update_status("Dataset", "default", "bad", {"numberOfSamples": 1})
        wait_for(lambda: len(events) == 3, what="the change of the refused object")
        by_name = {e.key[2]: e for e in events[:2]}
        assert isinstance(by_name["good"].model, Dataset) and by_name["good"].refused is None
        for refused in (by_name["bad"], events[2]):
            assert refused.key == ("Dataset", "default", "bad") and refused.model is None
            assert refused.refused == "spec.url: Input should be a valid string"
        assert events[2].type == "MODIFIED" and int(events[2].resource_version) > 2
    finally:
        stop.set()
        thread.join(5)


def test_get_changed_reads_the_object_only_when_its_version_is_not_the_one_known(store: SqliteStore) -> None:
    stored = store.apply(ds("a"))
    rv = stored["metadata"]["resourceVersion"]
    assert store.get_changed("Dataset", "default", "a", None) == (rv, store.get("Dataset", "default", "a"))
    assert store.get_changed("Dataset", "default", "a", rv) == (rv, None)
    newer = store.update_status("Dataset", "default", "a", {"numberOfSamples": 3})
    assert store.get_changed("Dataset", "default", "a", rv) == (newer["metadata"]["resourceVersion"], newer)
    assert store.get_changed("Dataset", "default", "missing", rv) is None


def test_the_model_cache_parses_each_stored_version_once(store: SqliteStore) -> None:
    cache = ModelCache(limit=2)
    store.apply(ds("a"))
    first = cache.read(store, Dataset, "default", "a")
    assert first is not None and first.spec.url == "/data/a.txt"
    assert cache.read(store, Dataset, "default", "a") is first  # same version: not parsed again
    store.apply(ds("a", url="/data/b.txt"))
    second = cache.read(store, Dataset, "default", "a")
    assert second is not first and second is not None and second.spec.url == "/data/b.txt"
    assert cache.read(store, Dataset, "default", "missing") is None
    assert cache.read(store, LifelongLearningJob, "default", "a") is None  # kinds never mix
    for name in ("b", "c"):  # past its limit the cache starts over, and still answers right
        store.apply(ds(name))
        assert cache.read(store, Dataset, "default", name) is not None
    assert cache.read(store, Dataset, "default", "a") is not second
