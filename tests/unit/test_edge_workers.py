"""The worker runtime (``lifelong.edge.workers``) without a broker: exit codes through the
wrapper, stop on delete, and finding workers again after an LC restart. The runtime's seams
(``clock``, ``processes``) stand in for time and for process-table states a real run cannot
produce on demand."""

from __future__ import annotations

import contextlib
import json
import os
import signal
import subprocess
import sys
from collections import Counter
from pathlib import Path
from typing import Any

import pytest
from harness.lc_objects import worker
from harness.waiting import wait_for

from lifelong.edge.config import ImageEntry, image_repository
from lifelong.edge.db import Store
from lifelong.edge.outbox import Outbox
from lifelong.edge.workers import (
    DEFAULT_PATH,
    Launch,
    ProcessTable,
    StartError,
    WorkerRuntime,
    base_environment,
    check_command,
    container_env,
    exit_message,
    launch,
    proc_start_time,
    worker_environment,
)


def _runtime(store: Store, tmp_path: Path, **seams: Any) -> WorkerRuntime:
    return WorkerRuntime(
        store, Outbox(store), tmp_path / "workers", lc_server="http://127.0.0.1:1", stop_grace=5, **seams
    )


class ManualClock:
    """A monotonic clock that moves only when the test says so."""

    def __init__(self) -> None:
        self.now = 1000.0

    def __call__(self) -> float:
        return self.now


class SlowExecFake(ProcessTable):
    """The real process table, except that each process's environment reads empty the first
    ``hidden`` times, as the kernel shows it while it is still finishing the exec that
    ``Popen`` has already returned from (on a busy machine that lasts milliseconds; a real
    run shows it only when the spawning process keeps the CPU, e.g. under real-time priority)."""

    def __init__(self, hidden: int = 3) -> None:
        super().__init__()
        self.hidden = hidden
        self.reads: Counter[int] = Counter()

    def environ(self, pid: int) -> list[bytes]:
        self.reads[pid] += 1
        return [] if self.reads[pid] <= self.hidden else super().environ(pid)


class ReusedPidsFake(ProcessTable):
    """The real process table, except that the pids in ``reused`` report another start time:
    the process that had the pid is gone and an unrelated one got it (pids wrap around)."""

    def __init__(self) -> None:
        super().__init__()
        self.reused: set[int] = set()

    def start_time(self, pid: int) -> int | None:
        started = super().start_time(pid)
        return started + 1 if started is not None and pid in self.reused else started


def _kill_and_reap(pid: int) -> None:
    """SIGKILL a worker's group and reap its wrapper (the test's process started it)."""
    with contextlib.suppress(ProcessLookupError):
        os.killpg(pid, signal.SIGKILL)
    with contextlib.suppress(ChildProcessError):
        os.waitpid(pid, 0)


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
    # As if the LC died right after starting worker 2, before recording its pid. The marker
    # search follows within milliseconds of the start, before the kernel may have finished
    # that exec: the start itself must have made the wrapper findable (see the next test).
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
            _kill_and_reap(pid)  # this process is their parent (the first runtime ran here)
    assert all(proc_start_time(p) is None for p in pids)
    again.reconcile()
    assert {p for n, p, _ in _reports(store)} == {"Running", "Failed"}  # killed: no exit code file
    store.close()


def test_a_started_worker_can_be_found_by_its_marker_at_once(tmp_path: Path) -> None:
    # Popen returns before the kernel shows the new wrapper's environment. A runtime that
    # recorded the worker at that moment left a window in which an LC restart (here: the
    # marker search right after the start) could not find it: the adoption test failed so.
    store = Store(tmp_path / "lc.db", sync="normal")
    procs = SlowExecFake()
    rt = _runtime(store, tmp_path, processes=procs)
    w = worker("j", "Train", 1, "import time; time.sleep(60)")
    store.put_resource("Worker", "default", w["metadata"]["name"], "1", w)
    rt.reconcile()
    rec = store.get_record("workers", "default", "j-train-1")
    try:
        assert rec["phase"] == "Running"
        assert procs.find_by_marker(str(Path(rec["dir"]) / "exit-code")) == rec["pid"]
    finally:
        _kill_and_reap(rec["pid"])
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
        assert ProcessTable().find_by_marker(marker) is None
        leader = subprocess.Popen(sleeper, env=env, start_new_session=True)
        try:
            found = wait_for(lambda: ProcessTable().find_by_marker(marker), what="the leader to be found")
            assert found == leader.pid
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
    # A deleted worker's group was sent SIGTERM; before its grace ran out the group ended and
    # its pid came to lead an unrelated process group (pids wrap around). The runtime must drop
    # the entry, not SIGKILL the stranger; the same process, not reused, gets its SIGKILL.
    store = Store(tmp_path / "lc.db", sync="normal")
    clock, procs = ManualClock(), ReusedPidsFake()
    rt = _runtime(store, tmp_path, clock=clock, processes=procs)
    stubborn = (
        "import signal, time; signal.signal(signal.SIGTERM, signal.SIG_IGN); print(1, flush=True); "
        "time.sleep(60)"
    )
    stranger = subprocess.Popen(
        [sys.executable, "-c", stubborn], stdout=subprocess.PIPE, start_new_session=True
    )
    try:
        assert stranger.stdout is not None and stranger.stdout.readline()  # SIGTERM is ignored from here on
        started = proc_start_time(stranger.pid)

        def stop(name: str) -> None:  # a Running record without its Worker: reconcile stops it
            rec = {"phase": "Running", "pid": stranger.pid, "startTime": started, "dir": str(tmp_path)}
            store.put_record("workers", "default", name, rec)
            rt.reconcile()
            assert rt.stopping() == 1 and stranger.poll() is None  # SIGTERM sent and ignored

        stop("gone")
        procs.reused.add(stranger.pid)
        clock.now += 6  # past stop_grace
        rt.reconcile()
        assert rt.stopping() == 0
        assert stranger.poll() is None  # not killed
        procs.reused.clear()
        stop("ours")
        clock.now += 6
        rt.reconcile()
        wait_for(lambda: stranger.poll() is not None, what="our group to be killed")
        assert stranger.returncode == -signal.SIGKILL
    finally:
        if stranger.poll() is None:
            stranger.kill()
        stranger.wait()
        if stranger.stdout is not None:
            stranger.stdout.close()
        store.close()


# -- how a container runs: images, command/args, environment ---------------------------------

ATCII = "kubeedge/sedna-example-lifelong-learning-atcii-classifier:v0.3.0"


PY_IMAGE = {"img:1": ImageEntry(entrypoint=["/usr/bin/python3", "-u"], cmd=["serve.py"], workingDir="/srv")}


@pytest.mark.parametrize(
    ("container", "argv"),
    [
        ({"command": ["/bin/echo"], "args": ["a"]}, ["/bin/echo", "a"]),  # command and args: both given
        ({"command": ["/bin/echo"]}, ["/bin/echo"]),  # command replaces entrypoint and drops cmd
        ({"args": ["train.py"]}, ["/usr/bin/python3", "-u", "train.py"]),  # args replace cmd
        ({}, ["/usr/bin/python3", "-u", "serve.py"]),  # neither: entrypoint + cmd
    ],
)
def test_launch_follows_kubernetes_rules_for_command_and_args(
    container: dict[str, Any], argv: list[str]
) -> None:
    how = launch({"name": "c", "image": "img:1", **container}, PY_IMAGE)
    assert how.argv == argv
    assert how.working_dir == "/srv"


def test_launch_takes_the_containers_working_dir_and_the_images_env() -> None:
    images = {"img:1": ImageEntry(entrypoint=["/bin/x"], env={"A": "1"})}
    how = launch({"image": "img:1", "args": ["y"], "workingDir": "/w"}, images)
    assert how == Launch(["/bin/x", "y"], "/w", {"A": "1"})
    # A template with a command and an image without an entry runs in the worker's folder.
    assert launch({"image": "python", "command": ["/bin/true"]}, {}) == Launch(["/bin/true"], None, {})


def test_launch_finds_an_image_by_its_repository_for_every_tag() -> None:
    repo = ATCII.rsplit(":", 1)[0]
    images = {repo: ImageEntry(entrypoint=["/opt/py"])}
    assert launch({"image": ATCII, "args": ["train.py"]}, images).argv == ["/opt/py", "train.py"]
    exact = {**images, ATCII: ImageEntry(entrypoint=["/exact/py"])}
    assert launch({"image": ATCII, "args": ["train.py"]}, exact).argv == ["/exact/py", "train.py"]
    assert image_repository("registry:5000/a/b:v1@sha256:ab") == "registry:5000/a/b"


def test_args_without_command_and_without_an_image_entry_name_the_image_and_the_key() -> None:
    with pytest.raises(StartError) as info:
        launch({"name": "train-worker", "image": ATCII, "args": ["train.py"]}, {})
    msg = info.value.message
    assert f"image {ATCII!r} has no entry" in msg and "'images'" in msg and "--config" in msg
    assert "container 'train-worker' gives args and no command" in msg
    assert info.value.exit_code is None
    with pytest.raises(StartError, match="gives neither command nor args"):
        launch({"name": "c", "image": ATCII}, {})
    with pytest.raises(StartError, match="has no image"):
        launch({"name": "c", "args": ["x"]}, {})


def test_base_environment_takes_only_the_documented_names_of_the_lcs() -> None:
    lc = {"PATH": "/p", "HOME": "/h", "LANG": "de_DE.UTF-8", "TZ": "Etc/GMT-5", "SECRET": "x", "USER": "u"}
    assert base_environment(lc, Path("/w")) == {
        "PATH": "/p",
        "HOME": "/h",
        "LANG": "de_DE.UTF-8",
        "TZ": "Etc/GMT-5",
        "PYTHONUNBUFFERED": "1",
    }
    assert base_environment({}, Path("/w")) == {
        "PATH": DEFAULT_PATH,
        "HOME": "/w",
        "LANG": "C.UTF-8",
        "PYTHONUNBUFFERED": "1",
    }


def test_worker_environment_layers_win_as_in_a_pod() -> None:
    env = worker_environment(
        {"PATH": "/p", "A": "base"},
        {"A": "image", "B": "image"},
        {"B": "container", "C": "container", "JOB_NAME": "mine"},
        {"C": "sedna", "JOB_NAME": "j", "N": 1},
        {"LC_SERVER": "http://lc"},
    )
    assert env == {
        "PATH": "/p",
        "A": "image",
        "B": "container",
        "C": "sedna",
        "JOB_NAME": "j",
        "N": "1",
        "LC_SERVER": "http://lc",
    }


def test_check_command_says_what_cannot_run(tmp_path: Path) -> None:
    with pytest.raises(StartError) as info:
        check_command("train.py", "/nonexistent:/also-not", tmp_path)
    assert info.value.exit_code == 127
    assert info.value.message == "command not found: 'train.py' on the worker's PATH /nonexistent:/also-not"
    (tmp_path / "plain.py").write_text("print(1)\n")
    with pytest.raises(StartError, match=r"command not executable \(permission denied\): .*plain.py") as info:
        check_command("./plain.py", "/bin", tmp_path)
    assert info.value.exit_code == 126
    script = tmp_path / "script"
    script.write_text("#!/no/such/python -u\nprint(1)\n")
    script.chmod(0o755)
    with pytest.raises(StartError, match="command not found: '/no/such/python', the interpreter of") as info:
        check_command(str(script), "/bin", tmp_path)
    assert info.value.exit_code == 127
    with pytest.raises(StartError, match=f"command not found: './missing' in {tmp_path}"):
        check_command("./missing", "/bin", tmp_path)
    check_command("sh", "/nonexistent:/bin", tmp_path)  # found: no error
    check_command(sys.executable, "", tmp_path)


def test_exit_messages_explain_the_shells_codes() -> None:
    assert exit_message(127, "train.py").startswith("command not found: 'train.py' or a command it ran")
    assert exit_message(126, "x").startswith("command not executable: 'x'")
    assert exit_message(137, "x") == "killed by SIGKILL"
    assert exit_message(3, "x") == ""


def _settle(rt: WorkerRuntime, store: Store, names: set[str]) -> dict[str, dict[str, Any]]:
    def done() -> bool:
        rt.reconcile()
        return {n for n, p, _ in _reports(store) if p in ("Succeeded", "Failed")} >= names

    wait_for(done, what=f"{sorted(names)} to finish")
    return {n: store.get_record("workers", "default", n) for n in names}


def test_an_args_only_container_runs_as_its_images_entrypoint_would(tmp_path: Path) -> None:
    """Sedna's shape: ``args: ["train.py"]``, ``workingDir``, no command; the LC's config maps
    the image to an interpreter. Without the mapping the worker fails before starting, naming the
    image; a command not on the PATH fails naming the command; a worker whose own command is
    missing exits 127 and says so."""
    app = tmp_path / "app"
    app.mkdir()
    (app / "train.py").write_text("import os, sys\nopen('ran', 'w').write(os.getcwd())\n")
    store = Store(tmp_path / "lc.db", sync="normal")
    images = {ATCII: ImageEntry(entrypoint=[sys.executable])}
    rt = _runtime(store, tmp_path, images=images, environ={"PATH": "/usr/bin:/bin"})

    def put(rnd: int, container: dict[str, Any]) -> None:
        w = worker("j", "Train", rnd, "")
        w["spec"]["template"]["spec"]["containers"] = [{"name": "train-worker", **container}]
        store.put_resource("Worker", "default", w["metadata"]["name"], str(rnd), w)

    put(1, {"image": ATCII, "args": ["train.py"], "workingDir": str(app)})
    put(2, {"image": "other:1", "args": ["train.py"], "workingDir": str(app)})
    put(3, {"image": "other:1", "command": ["train.py"], "workingDir": str(app)})
    put(4, {"image": "other:1", "command": ["/bin/sh", "-c", "no-such-tool --x"]})
    put(5, {"image": ATCII, "args": ["train.py"], "workingDir": str(tmp_path / "gone")})
    rt.reconcile()
    recs = _settle(rt, store, {"j-train-1", "j-train-2", "j-train-3", "j-train-4", "j-train-5"})
    assert recs["j-train-1"]["phase"] == "Succeeded", Path(recs["j-train-1"]["log"]).read_text()
    assert (app / "ran").read_text() == str(app)
    assert recs["j-train-1"]["command"] == [sys.executable, "train.py"]
    two = recs["j-train-2"]
    assert two["phase"] == "Failed" and two["pid"] is None and two["exitCode"] is None
    assert "image 'other:1' has no entry" in two["message"] and "'images'" in two["message"]
    three = recs["j-train-3"]
    assert (three["phase"], three["exitCode"], three["pid"]) == ("Failed", 127, None)
    assert three["message"] == "command not found: 'train.py' on the worker's PATH /usr/bin:/bin"
    four = recs["j-train-4"]
    assert (four["phase"], four["exitCode"]) == ("Failed", 127)
    assert four["message"].startswith("command not found: '/bin/sh' or a command it ran")
    assert "no-such-tool" in Path(four["log"]).read_text()
    five = recs["j-train-5"]
    assert five["phase"] == "Failed" and "working directory" in five["message"] and "gone" in five["message"]
    store.close()


def test_a_worker_sees_its_environment_and_none_of_the_lcs(tmp_path: Path) -> None:
    store = Store(tmp_path / "lc.db", sync="normal")
    images = {"img:1": ImageEntry(entrypoint=[sys.executable, "-c"], env={"FROM_IMAGE": "i"})}
    lc_env = {"PATH": os.environ["PATH"], "HOME": "/home/lc", "LIFELONG_SECRET": "s", "SHELL_ONLY": "x"}
    rt = _runtime(store, tmp_path, images=images, environ=lc_env)
    dump = tmp_path / "env.json"
    code = f"import json, os; open({str(dump)!r}, 'w').write(json.dumps(dict(os.environ)))"
    w = worker("j", "Eval", 1, "", env={"MODEL_URLS": "/m/a", "JOB_NAME": "j"})
    w["spec"]["template"]["spec"]["containers"] = [
        {"name": "c", "image": "img:1", "args": [code], "env": [{"name": "FROM_TEMPLATE", "value": "t"}]}
    ]
    store.put_resource("Worker", "default", "j-eval-1", "1", w)
    rt.reconcile()
    _settle(rt, store, {"j-eval-1"})
    env = json.loads(dump.read_text())
    assert "LIFELONG_SECRET" not in env and "SHELL_ONLY" not in env
    home = tmp_path / "workers" / "default_j-eval-1"
    assert env == {
        "PATH": os.environ["PATH"],
        "HOME": "/home/lc",
        "LANG": "C.UTF-8",
        "PYTHONUNBUFFERED": "1",
        "FROM_IMAGE": "i",
        "FROM_TEMPLATE": "t",
        "MODEL_URLS": "/m/a",
        "JOB_NAME": "j",
        "LC_SERVER": "http://127.0.0.1:1",
        "WORKER_NAME": "j-eval-1",
        "NAMESPACE": "default",
        "LIFELONG_EXIT_FILE": str(home / "exit-code"),
        "PWD": str(home),  # the wrapper's /bin/sh sets it: the worker's folder (no workingDir)
    }
    store.close()
