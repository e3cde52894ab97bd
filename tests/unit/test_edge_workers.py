"""The worker runtime (``lifelong.edge.workers``) without a broker: exit codes through the
wrapper, stop on delete, and finding workers again after an LC restart."""

from __future__ import annotations

import os
import subprocess
import sys
from pathlib import Path

from harness.lc_objects import worker
from harness.waiting import wait_for

from lifelong.edge.db import Store
from lifelong.edge.outbox import Outbox
from lifelong.edge.workers import WorkerRuntime, container_env, find_by_marker, proc_start_time


def _runtime(store: Store, tmp_path: Path) -> WorkerRuntime:
    return WorkerRuntime(
        store, Outbox(store), tmp_path / "workers", lc_server="http://127.0.0.1:1", stop_grace=5
    )


def _reports(store: Store) -> list[tuple[str, str, int | None]]:
    box = Outbox(store, window=1000)
    return [(e.name, e.body["phase"], e.body["exitCode"]) for e in box.due()]


def _why_not_found(pid: int, home: Path) -> str:
    """What the runtime could see of an unrecorded worker it did not find (for a failure)."""
    try:
        env = Path(f"/proc/{pid}/environ").read_bytes().split(b"\0")
        marker = f"LIFELONG_EXIT_FILE={home / 'exit-code'}".encode() in env
        pgid = os.getpgid(pid)
    except OSError as exc:
        return f"wrapper {pid}: {exc}; files {sorted(p.name for p in home.iterdir())}"
    logs = " | ".join(p.read_text(errors="replace")[-300:] for p in home.glob("*.log"))
    return (
        f"wrapper {pid}: start {proc_start_time(pid)}, pgid {pgid}, marker {marker}; "
        f"files {sorted(p.name for p in home.iterdir())}; log {logs!r}"
    )


def test_exit_codes_and_stop(tmp_path: Path) -> None:
    store = Store(tmp_path / "lc.db", sync="normal")
    rt = _runtime(store, tmp_path)
    for rnd, code in (
        (1, "raise SystemExit(0)"),
        (2, "raise SystemExit(4)"),
        (3, "import time; time.sleep(60)"),
    ):
        w = worker("j", "Train", rnd, code)
        store.put_resource("Worker", "default", w["metadata"]["name"], str(rnd), w)
    rt.reconcile()

    def settled() -> bool:
        rt.reconcile()
        phases = {(n, p) for n, p, _ in _reports(store)}
        return {("j-train-1", "Succeeded"), ("j-train-2", "Failed")} <= phases

    wait_for(settled, what="two workers to finish")
    reports = _reports(store)
    assert ("j-train-2", "Failed", 4) in reports and ("j-train-1", "Succeeded", 0) in reports
    assert ("j-train-3", "Running", None) in reports
    pid = store.get_record("workers", "default", "j-train-3")["pid"]
    store.delete_resource("Worker", "default", "j-train-3", "9")
    rt.reconcile()
    wait_for(lambda: rt.reconcile() or rt.stopping() == 0, what="the deleted worker to stop")
    assert proc_start_time(pid) is None
    store.close()


def test_restart_finds_recorded_and_unrecorded_processes(tmp_path: Path) -> None:
    store = Store(tmp_path / "lc.db", sync="normal")
    rt = _runtime(store, tmp_path)
    for rnd in (1, 2):
        w = worker("j", "Train", rnd, "import time; time.sleep(60)")
        store.put_resource("Worker", "default", w["metadata"]["name"], str(rnd), w)
    rt.reconcile()
    pids = [store.get_record("workers", "default", f"j-train-{r}")["pid"] for r in (1, 2)]
    # As if the LC died right after starting worker 2, before recording its pid.
    rec = store.get_record("workers", "default", "j-train-2")
    rec.update(pid=None, startTime=None, phase="Pending")
    store.put_record("workers", "default", "j-train-2", rec)
    try:
        again = _runtime(store, tmp_path)
        again.adopt()
        assert store.get_record("workers", "default", "j-train-1")["pid"] == pids[0]
        assert store.get_record("workers", "default", "j-train-2")["pid"] == pids[1], _why_not_found(
            pids[1], Path(rec["dir"])
        )
        assert store.get_record("workers", "default", "j-train-2")["phase"] == "Running"
    finally:
        for pid in pids:
            os.killpg(pid, 9)

    def reaped() -> bool:
        for child in rt._children.values():
            child.poll()  # the first runtime is their parent: reap the zombies
        return all(proc_start_time(p) is None for p in pids)

    wait_for(reaped, what="the killed workers to be gone")
    again.reconcile()
    assert {p for n, p, _ in _reports(store)} == {"Running", "Failed"}  # killed: no exit code file
    store.close()


def test_marker_search_finds_only_the_wrapper_not_the_worker_it_forked(tmp_path: Path) -> None:
    # The worker a wrapper forks carries the same marker; after pids wrap around it can come
    # first in /proc. Only a process-group leader (the wrapper) may be taken.
    marker = str(tmp_path / "exit-code")
    env = {**os.environ, "LIFELONG_EXIT_FILE": marker}
    sleeper = [sys.executable, "-c", "import time; time.sleep(60)"]
    follower = subprocess.Popen(sleeper, env=env)  # in the test's process group
    try:
        wait_for(lambda: proc_start_time(follower.pid) is not None, what="the follower to start")
        assert find_by_marker(marker) is None
        leader = subprocess.Popen(sleeper, env=env, start_new_session=True)
        try:
            assert wait_for(lambda: find_by_marker(marker), what="the leader to be found") == leader.pid
        finally:
            leader.kill()
            leader.wait()
    finally:
        follower.kill()
        follower.wait()


def test_container_env_resolves_the_pod_fields_a_local_process_can_have() -> None:
    container = {
        "env": [
            {"name": "A", "value": "1"},
            {"name": "POD", "valueFrom": {"fieldRef": {"fieldPath": "metadata.name"}}},
            {"name": "NS", "valueFrom": {"fieldRef": {"fieldPath": "metadata.namespace"}}},
            {"name": "NODE", "valueFrom": {"fieldRef": {"fieldPath": "spec.nodeName"}}},
            {"name": "IP", "valueFrom": {"fieldRef": {"fieldPath": "status.podIP"}}},
            {"name": "PW", "valueFrom": {"secretKeyRef": {"name": "s", "key": "k"}}},
            {"name": "EMPTY"},
            "not an item",
        ]
    }
    env, unsupported = container_env(container, ns="default", name="j-train-1", node="edge-1")
    assert env == {"A": "1", "POD": "j-train-1", "NS": "default", "NODE": "edge-1"}
    assert unsupported == ["IP", "PW"]
    # a template without nodeName: the variable cannot be given either
    assert container_env(container, ns="d", name="w", node=None)[1] == ["NODE", "IP", "PW"]


def test_a_reused_pid_is_never_signalled_as_a_stopping_worker(tmp_path: Path) -> None:
    # A worker's group was being stopped; its pid now leads an unrelated process group (pids
    # wrap around). The runtime must drop the entry, not SIGKILL the stranger.
    store = Store(tmp_path / "lc.db", sync="normal")
    rt = _runtime(store, tmp_path)
    stranger = subprocess.Popen([sys.executable, "-c", "import time; time.sleep(60)"], start_new_session=True)
    try:
        started = wait_for(lambda: proc_start_time(stranger.pid), what="the stranger to start")
        rt._stopping[("default", "gone")] = (stranger.pid, started - 1, 0.0)  # another start time
        rt._check_stopping()
        assert rt.stopping() == 0
        assert stranger.poll() is None  # not killed
        rt._stopping[("default", "ours")] = (stranger.pid, started, 0.0)  # the same process: ours
        rt._check_stopping()
        wait_for(lambda: stranger.poll() is not None, what="our group to be killed")
    finally:
        if stranger.poll() is None:
            stranger.kill()
        stranger.wait()
        store.close()
