"""The worker runtime (standalone mode): runs the GM's ``Worker`` objects as local processes.

Called by the service's control loop (``reconcile`` every poll and after every downstream
change; ``adopt`` once at start-up; ``shutdown`` on exit) and by the worker API
(``note_info``, the results a worker posts). Level-triggered: every ``Worker`` resource
held must have a process (or a finished record); every record without its resource is
stopped and forgotten.

A worker runs the first container of ``spec.template`` as its Pod would (:func:`launch`):
Kubernetes' rules for ``command`` and ``args`` over the image's entrypoint and cmd, which the
LC's config maps per image (``images`` in ``lifelong.edge.config``); a container that needs
the image's entrypoint when its image has no entry fails with a message naming the image and
the config key. Its environment (:func:`worker_environment`) is a small base (``PATH``,
``HOME``, ``LANG``, ``TZ``, ``PYTHONUNBUFFERED``), the image's ``env``, the container's ``env``,
``spec.env`` from the GM (Sedna's variables) and the local ones ``LC_SERVER``, ``WORKER_NAME``,
``NAMESPACE``, ``JOB_NAME`` - never the rest of the LC's environment. It starts in its own
session (process group), in the container's ``workingDir``, else the image's, else
``<state>/workers/<ns>_<name>/``, with stdout and stderr in ``<ns>_<name>.log`` in that
folder (``edge/worker_logs.py``: its size bound, ``lifelong logs``). A command that cannot be
found or run fails before anything starts, naming it; exit codes 126, 127 and 128+N are
explained in the message. A tiny ``/bin/sh`` wrapper writes the exit code to ``exit-code``
in that folder, so the result is known even when the LC was not the process's parent (after
an LC restart).

Records (``workers`` table) carry pid, the kernel start time of the pid (so a recycled pid is
never taken for our worker), the phase and the last phase reported upstream. A start is
recorded Running only once the kernel shows the wrapper's environment (``Popen`` returns
before it does), so the marker search below can always find it. Phases:
``Pending`` (recorded, not started), ``Running``, ``Succeeded``, ``Failed``. Each change is
reported as a ``Worker`` report through the outbox, in the same transaction that records it
as reported.

Stopping (resource deleted, job deleted): SIGTERM to the group, SIGKILL after
``stop_grace`` seconds. On LC shutdown workers are left running (a restarted LC adopts them)
unless ``stop_on_exit``. After a restart ``adopt`` finds each running record's process
(pid + start time; for a record the LC died before completing, the process whose environment
names the record's exit-code file); a process that is gone is finished from its exit-code
file, or Failed ("lost while the LC was down").

What the runtime reads of the kernel (``ProcessTable``) and its clock are constructor
arguments, so tests can show it states a real run cannot produce on demand.
"""

from __future__ import annotations

import contextlib
import logging
import os
import signal
import time
from collections.abc import Callable, Mapping
from dataclasses import dataclass
from pathlib import Path
from typing import TYPE_CHECKING, Any

import tenacity

from lifelong.common.errors import InvalidBody
from lifelong.common.messages import WorkerReport
from lifelong.edge.config import ImageEntry, find_image, image_repository
from lifelong.edge.db import Store
from lifelong.edge.metrics import ItemFailures
from lifelong.edge.outbox import Outbox, OutboxFull
from lifelong.edge.worker_logs import log_path

if TYPE_CHECKING:
    import subprocess

log = logging.getLogger("lifelong.edge.workers")

WORKER_KIND = "Worker"
PHASES = ("Pending", "Running", "Succeeded", "Failed")
MARKER = "LIFELONG_EXIT_FILE"  # names the exit-code file; the wrapper's environment shows it
SHOW_TIMEOUT = 5.0  # the longest a start waits for the kernel to show the wrapper's environment
_WRAPPER = (
    '"$@"; rc=$?; echo "$rc" > "$LIFELONG_EXIT_FILE.tmp" && '
    'mv "$LIFELONG_EXIT_FILE.tmp" "$LIFELONG_EXIT_FILE"; exit "$rc"'
)


class ProcessTable:
    """What the runtime reads of the kernel's process table: ``/proc`` under ``root`` (a
    worker's start time, process group and environment) and whether a process group lives.

    The runtime takes one as a constructor argument (the real one by default); tests give a
    subclass to show states a real run cannot produce on demand (a reused pid, an exec the
    kernel has not finished).
    """

    def __init__(self, root: Path = Path("/proc")) -> None:
        self.root = root

    def _stat(self, pid: int) -> tuple[str, int, int] | None:
        """(state, process group, start time in clock ticks since boot) of ``pid``."""
        try:
            stat = (self.root / str(pid) / "stat").read_text()
        except OSError:
            return None
        fields = stat[stat.rfind(")") + 2 :].split()
        return fields[0], int(fields[2]), int(fields[19])

    def start_time(self, pid: int) -> int | None:
        """The kernel start time of ``pid``; None if it does not exist or is a zombie."""
        stat = self._stat(pid)
        if stat is None or stat[0] in ("Z", "X"):
            return None
        return stat[2]

    def environ(self, pid: int) -> list[bytes]:
        """The environment ``pid`` was started with (``NAME=value`` items). Empty while the
        kernel is still setting up an exec (after ``Popen`` has returned: the parent resumes
        before the new program's environment is laid out), for a zombie, a kernel thread, a
        process that is gone or one we may not read."""
        try:
            data = (self.root / str(pid) / "environ").read_bytes()
        except OSError:
            return []
        return data.split(b"\0") if data else []

    def shows_marker(self, pid: int, exit_file: str) -> bool:
        return f"{MARKER}={exit_file}".encode() in self.environ(pid)

    def find_by_marker(self, exit_file: str) -> int | None:
        """The live wrapper process whose environment carries ``LIFELONG_EXIT_FILE=<exit_file>``,
        for a worker started just before the LC died without recording its pid.

        The worker the wrapper forked carries the same marker; only the wrapper leads its own
        process group. Both are checked, whatever their order in /proc (pids wrap around).
        """
        for entry in self.root.iterdir():
            if not entry.name.isdigit():
                continue
            pid = int(entry.name)
            stat = self._stat(pid)
            if stat is None or stat[0] in ("Z", "X") or stat[1] != pid:
                continue
            if self.shows_marker(pid, exit_file):
                return pid
        return None

    def group_alive(self, pgid: int) -> bool:
        try:
            os.killpg(pgid, 0)
        except ProcessLookupError:
            return False
        except PermissionError:
            return True
        return True

    def still_ours(self, pgid: int, start_time: Any) -> bool:
        """Is process group ``pgid`` still the worker's? Its leader is the one started at
        ``start_time``, or the leader is gone while the group lives on (Linux never hands out a
        pid that is still a live group's id). A pid reused by an unrelated process is not ours."""
        leader = self.start_time(pgid)
        if leader is None:
            return self.group_alive(pgid)
        return start_time is not None and leader == start_time


def proc_start_time(pid: int) -> int | None:
    """The kernel start time of ``pid`` (clock ticks since boot), None if it does not exist
    or is a zombie."""
    return ProcessTable().start_time(pid)


_FIELD_REFS = ("metadata.name", "metadata.namespace", "spec.nodeName")


def container_env(
    container: dict[str, Any], *, ns: str, name: str, node: Any
) -> tuple[dict[str, str], list[str]]:
    """The container's ``env`` as a local process gets it: literal values, and ``valueFrom``
    ``fieldRef`` for the worker's name, namespace and node (what the Pod would have had).
    Returns the variables and the names of those whose source cannot exist here (secrets,
    config maps, resource fields, other fields)."""
    fields = {"metadata.name": name, "metadata.namespace": ns, "spec.nodeName": node}
    env: dict[str, str] = {}
    unsupported: list[str] = []
    for item in container.get("env") or []:
        if not isinstance(item, dict) or not isinstance(item.get("name"), str):
            continue
        if item.get("value") is not None:
            env[item["name"]] = str(item["value"])
            continue
        source = item.get("valueFrom")
        if not isinstance(source, dict):
            continue
        ref = source.get("fieldRef")
        path = ref.get("fieldPath") if isinstance(ref, dict) else None
        if path in _FIELD_REFS and isinstance(fields[path], str):
            env[item["name"]] = fields[path]
        else:
            unsupported.append(item["name"])
    return env, unsupported


DEFAULT_PATH = "/usr/local/sbin:/usr/local/bin:/usr/sbin:/usr/bin:/sbin:/bin"
"""A worker's ``PATH`` when the LC has none (the usual default of a container image)."""


def base_environment(lc_env: Mapping[str, str], home: Path) -> dict[str, str]:
    """What a worker gets of the LC's own environment: ``PATH`` (else :data:`DEFAULT_PATH`),
    ``HOME`` (else the worker's folder), ``LANG`` (else ``C.UTF-8``), ``TZ`` when the LC has one
    (the trigger's timer reads the LC's local time; the worker sees the same clock), and
    ``PYTHONUNBUFFERED=1`` so a Python worker's log is written as it goes. Nothing else."""
    env = {
        "PATH": lc_env.get("PATH") or DEFAULT_PATH,
        "HOME": lc_env.get("HOME") or str(home),
        "LANG": lc_env.get("LANG") or "C.UTF-8",
        "PYTHONUNBUFFERED": "1",
    }
    if lc_env.get("TZ"):
        env["TZ"] = lc_env["TZ"]
    return env


class StartError(Exception):
    """A worker that cannot be started; ``exit_code`` is what a shell would have exited with
    (127 not found, 126 not executable), None for a template or config mistake."""

    def __init__(self, message: str, exit_code: int | None = None) -> None:
        super().__init__(message)
        self.message = message
        self.exit_code = exit_code


@dataclass(frozen=True)
class Launch:
    """How a container runs as a local process: argv, working directory (None: the worker's
    own folder) and the image's environment."""

    argv: list[str]
    working_dir: str | None
    image_env: dict[str, str]


def _strings(value: Any) -> list[str]:
    return [str(v) for v in value] if isinstance(value, list) else []


def launch(container: Mapping[str, Any], images: Mapping[str, ImageEntry]) -> Launch:
    """The process a Pod would run for ``container``, with Kubernetes' rules: ``command``
    replaces the image's entrypoint (and drops its cmd), ``args`` replaces its cmd. The image's
    entrypoint and cmd come from the LC's ``images`` config; a container that needs them when
    its image has no entry raises :class:`StartError` naming the image and the key to set."""
    command = _strings(container.get("command"))
    args = _strings(container.get("args"))
    image = container.get("image")
    found = find_image(images, image) if isinstance(image, str) and image else None
    entry = found[1] if found is not None else ImageEntry()
    if command:
        argv = command + args
    elif found is None:
        name = container.get("name") or "?"
        what = "gives args and no command" if args else "gives neither command nor args"
        if not isinstance(image, str) or not image:
            raise StartError(
                f"container {name!r} {what}, and has no image whose entrypoint could run them; "
                "give the container a command"
            )
        raise StartError(
            f"container {name!r} {what}, and image {image!r} has no entry in the LC's config: add "
            f"{image!r} (or {image_repository(image)!r} for every tag) with its entrypoint under "
            "'images' in the LC's --config file, or give the container a command "
            "(docs/writing-workers.md)"
        )
    else:
        argv = entry.entrypoint + (args if args else entry.cmd)
    if not argv:
        raise StartError(
            f"container {container.get('name') or '?'!r}: nothing to run (image {image!r} has neither "
            "entrypoint nor cmd in the LC's config, and the container gives no args)"
        )
    working_dir = container.get("workingDir") or entry.workingDir
    return Launch(argv, str(working_dir) if working_dir else None, dict(entry.env))


def check_command(argv0: str, path: str, cwd: Path) -> None:
    """Raise :class:`StartError` when ``argv0`` cannot be run as the shell would run it: not found
    (on the worker's ``PATH``, or relative to its working directory when it has a slash), not
    executable, or a script whose ``#!`` interpreter is missing."""
    if "/" in argv0:
        candidates = [cwd / argv0]
        where = f"in {cwd}" if not argv0.startswith("/") else ""
    else:
        candidates = [(cwd / d if not d.startswith("/") else Path(d)) / argv0 for d in path.split(":")]
        where = f"on the worker's PATH {path}"
    found = [c for c in candidates if c.is_file()]
    if not found:
        raise StartError(f"command not found: {argv0!r} {where}".rstrip(), 127)
    runnable = [c for c in found if os.access(c, os.X_OK)]
    if not runnable:
        raise StartError(f"command not executable (permission denied): {found[0]}", 126)
    with contextlib.suppress(OSError):
        with runnable[0].open("rb") as fh:
            first = fh.readline(256)
        if first.startswith(b"#!"):
            parts = first[2:].decode(errors="replace").split()
            if parts and parts[0].startswith("/") and not Path(parts[0]).is_file():
                raise StartError(
                    f"command not found: {parts[0]!r}, the interpreter of {str(runnable[0])!r} (its #! line)",
                    127,
                )


def exit_message(code: int, argv0: str | None) -> str:
    """What a non-zero exit status of the wrapped command means, for the Failed report (the GM
    prefixes ``exit code N``)."""
    cmd = repr(argv0) if argv0 else "the command"
    if code == 127:
        return f"command not found: {cmd} or a command it ran (the shell's code 127); its log says which"
    if code == 126:
        return f"command not executable: {cmd} or a command it ran (the shell's code 126)"
    if 128 < code < 128 + 65:
        try:
            name = signal.Signals(code - 128).name
        except ValueError:
            name = f"signal {code - 128}"
        return f"killed by {name}"
    return ""


def worker_environment(
    base: Mapping[str, str],
    image_env: Mapping[str, str],
    container_vars: Mapping[str, str],
    sedna: Mapping[str, Any],
    local: Mapping[str, str],
) -> dict[str, str]:
    """A worker's environment, later layers winning as in a Pod (the container's env over the
    image's, Sedna's appended after the container's): base < image < container < Sedna's
    variables from the GM < the LC's local ones."""
    env = dict(base)
    env.update(image_env)
    env.update(container_vars)
    env.update({str(k): str(v) for k, v in sedna.items()})
    env.update(local)
    return env


class WorkerRuntime:
    def __init__(
        self,
        store: Store,
        outbox: Outbox,
        workers_dir: Path,
        *,
        lc_server: str,
        images: Mapping[str, ImageEntry] | None = None,
        environ: Mapping[str, str] | None = None,
        stop_grace: float = 10.0,
        stop_on_exit: bool = False,
        clock: Callable[[], float] = time.monotonic,
        processes: ProcessTable | None = None,
        failures: ItemFailures | None = None,
    ) -> None:
        self.store = store
        self.outbox = outbox
        self.dir = workers_dir
        self.lc_server = lc_server
        self.images = dict(images or {})
        self.environ = os.environ if environ is None else environ  # read for the base environment only
        self.stop_grace = stop_grace
        self.stop_on_exit = stop_on_exit
        self.clock = clock
        self.procs = processes or ProcessTable()
        self.failures = failures or ItemFailures(log)
        self._children: dict[tuple[str, str], subprocess.Popen[bytes]] = {}
        # key -> (pgid, its leader's start time, when to SIGKILL)
        self._stopping: dict[tuple[str, str], tuple[int, Any, float]] = {}

    # -- queries ------------------------------------------------------------------------------
    def phases(self) -> dict[str, int]:
        counts = dict.fromkeys(PHASES, 0)
        for _ns, _name, rec in self.store.records("workers"):
            counts[rec.get("phase", "Pending")] = counts.get(rec.get("phase", "Pending"), 0) + 1
        return counts

    def outputs(self, ns: str, job: str, stage: str, rnd: int) -> list[dict[str, Any]]:
        """Models that the job's worker for (stage, round) reported through the worker API."""
        for rns, _name, rec in self.store.records("workers"):
            if rns == ns and rec.get("job") == job and rec.get("stage") == stage and rec.get("round") == rnd:
                return list(rec.get("results") or [])
        return []

    def note_info(self, ns: str, worker: str, body: dict[str, Any]) -> None:
        """Remember the results a worker posted (its models), for its Succeeded report."""
        results = body.get("results")
        if not isinstance(results, list):
            return
        with self.store.tx():
            rec = self.store.get_record("workers", ns, worker)
            if rec is not None:
                rec["results"] = [r for r in results if isinstance(r, dict)]
                self.store.put_record("workers", ns, worker, rec)

    # -- life cycle ---------------------------------------------------------------------------
    def adopt(self) -> None:
        """At start-up: find the processes of records that were running, or finish them."""
        for ns, name, rec in self.store.records("workers"):
            if rec.get("phase") not in ("Pending", "Running"):
                continue
            pid = rec.get("pid")
            if pid and self.procs.start_time(pid) == rec.get("startTime"):
                log.info("worker %s/%s: adopted running process %d", ns, name, pid)
                continue
            if not pid:
                found = self.procs.find_by_marker(str(Path(rec["dir"]) / "exit-code"))
                if found is not None:
                    rec.update(phase="Running", pid=found, startTime=self.procs.start_time(found))
                    self.store.put_record("workers", ns, name, rec)
                    log.info("worker %s/%s: found its unrecorded process %d", ns, name, found)
                    continue
            self._finish(ns, name, rec, lost=True)

    def reconcile(self) -> None:
        wanted = {(ns, name): obj for _k, ns, name, _rv, obj in self.store.resources(WORKER_KIND)}
        records = {(ns, name): rec for ns, name, rec in self.store.records("workers")}
        for key, obj in wanted.items():
            if key not in records and key not in self._stopping:
                self._start(key[0], key[1], obj)
        for key, rec in records.items():
            if key not in wanted:
                self._stop(key, rec)
        self._check_stopping()
        for (ns, name), rec in records.items():
            if (ns, name) in wanted and rec.get("phase") == "Running":
                self._poll(ns, name, rec)
        self._report()

    def _start(self, ns: str, name: str, obj: dict[str, Any]) -> None:
        spec = obj.get("spec") or {}
        pod = (spec.get("template") or {}).get("spec") or {}
        containers = pod.get("containers") or [{}]
        container = containers[0] if isinstance(containers[0], dict) else {}
        home = self.dir / f"{ns}_{name}"
        home.mkdir(parents=True, exist_ok=True)
        exit_file = home / "exit-code"
        exit_file.unlink(missing_ok=True)
        rec: dict[str, Any] = {
            "job": spec.get("job"),
            "stage": spec.get("stage"),
            "round": spec.get("round"),
            "phase": "Pending",
            "reported": None,
            "pid": None,
            "startTime": None,
            "exitCode": None,
            "message": "",
            "dir": str(home),
            "log": str(log_path(self.dir, ns, name)),
            "command": None,
        }
        given, unsupported = container_env(container, ns=ns, name=name, node=pod.get("nodeName"))
        if unsupported:
            log.warning(
                "worker %s/%s: env %s use valueFrom sources a local process cannot have (only "
                "fieldRef metadata.name, metadata.namespace, spec.nodeName); left unset",
                ns,
                name,
                ", ".join(unsupported),
            )
        try:
            how = launch(container, self.images)
            cwd = Path(how.working_dir) if how.working_dir else home
            env = worker_environment(
                base_environment(self.environ, home),
                how.image_env,
                given,
                spec.get("env") or {},
                {"LC_SERVER": self.lc_server, "WORKER_NAME": name, "NAMESPACE": ns},
            )
            env.setdefault("JOB_NAME", str(spec.get("job") or ""))
            env[MARKER] = str(exit_file)
            rec["command"] = how.argv
            if not cwd.is_dir():
                raise StartError(f"working directory {str(cwd)!r} does not exist")
            check_command(how.argv[0], env["PATH"], cwd)
        except StartError as exc:
            rec.update(phase="Failed", exitCode=exc.exit_code, message=exc.message)
            self.store.put_record("workers", ns, name, rec)
            log.warning("worker %s/%s: not started: %s", ns, name, exc.message)
            return
        self.store.put_record("workers", ns, name, rec)  # Pending before the process exists
        import subprocess  # here: an LC that runs no worker does not load it (docs/performance.md, "LC")

        try:
            with open(rec["log"], "ab") as logf:
                proc = subprocess.Popen(
                    ["/bin/sh", "-c", _WRAPPER, "sh", *how.argv],
                    env=env,
                    cwd=cwd,
                    stdin=subprocess.DEVNULL,
                    stdout=logf,
                    stderr=subprocess.STDOUT,
                    start_new_session=True,
                )
        except OSError as exc:
            rec.update(phase="Failed", message=f"cannot start {how.argv[0]}: {exc.strerror or exc}")
            self.store.put_record("workers", ns, name, rec)
            return
        self._children[(ns, name)] = proc
        self._await_environment(ns, name, proc, str(exit_file))
        rec.update(phase="Running", pid=proc.pid, startTime=self.procs.start_time(proc.pid))
        self.store.put_record("workers", ns, name, rec)
        log.info("worker %s/%s job=%s stage=%s: started pid %d", ns, name, rec["job"], rec["stage"], proc.pid)

    def _await_environment(self, ns: str, name: str, proc: subprocess.Popen[bytes], exit_file: str) -> None:
        """Return once the kernel shows the new wrapper's environment (or the wrapper has ended).

        ``Popen`` returns as soon as the exec has passed the point of no return, before the
        kernel has laid out the new program's environment: until then ``/proc/PID/environ``
        reads empty, and ``adopt`` (the marker search) cannot find the wrapper. On a busy
        machine that lasts milliseconds. The runtime reports a worker as started only once it
        can be found again, so a record that lost its pid is always found by its marker.
        """

        def shown() -> bool:
            return self.procs.shows_marker(proc.pid, exit_file) or proc.poll() is not None

        shown_in_time = tenacity.Retrying(
            stop=tenacity.stop_after_delay(SHOW_TIMEOUT),
            wait=tenacity.wait_exponential(multiplier=0.0005, max=0.05),
            retry=tenacity.retry_if_result(lambda ok: not ok),
            retry_error_callback=lambda _state: False,
        )(shown)
        if not shown_in_time:
            log.warning(
                "worker %s/%s: pid %d has not shown its environment after %.0fs; an LC restart "
                "before its pid is recorded could not find it",
                ns,
                name,
                proc.pid,
                SHOW_TIMEOUT,
            )

    def _poll(self, ns: str, name: str, rec: dict[str, Any]) -> None:
        child = self._children.get((ns, name))
        if child is not None:
            if child.poll() is None:
                return
            self._children.pop((ns, name), None)
        else:
            pid = rec.get("pid")
            if pid and self.procs.start_time(pid) == rec.get("startTime"):
                return
        self._finish(ns, name, rec, lost=False)

    def _finish(self, ns: str, name: str, rec: dict[str, Any], *, lost: bool) -> None:
        code: int | None = None
        with contextlib.suppress(OSError, ValueError):
            code = int((Path(rec["dir"]) / "exit-code").read_text().strip())
        if code is None:
            rec.update(
                phase="Failed", exitCode=None, message="worker lost (killed, or exited while the LC was down)"
            )
        elif code == 0:
            rec.update(phase="Succeeded", exitCode=0, message="")
        else:
            argv = rec.get("command")
            argv0 = str(argv[0]) if isinstance(argv, list) and argv else None
            rec.update(phase="Failed", exitCode=code, message=exit_message(code, argv0))
        self.store.put_record("workers", ns, name, rec)
        log.info(
            "worker %s/%s: %s (exit code %s)%s",
            ns,
            name,
            rec["phase"],
            code,
            " after restart" if lost else "",
        )

    def _report(self) -> None:
        for ns, name, rec in self.store.records("workers"):
            phase = rec.get("phase")
            if phase == rec.get("reported") or phase == "Pending":
                continue
            try:
                body = WorkerReport.parse(
                    {
                        "job": rec.get("job"),
                        "stage": rec.get("stage"),
                        "round": rec.get("round"),
                        "phase": phase,
                        "exitCode": rec.get("exitCode"),
                        "message": rec.get("message", ""),
                        "output": {"models": rec.get("results") or []} if phase == "Succeeded" else {},
                    }
                ).to_body()
            except InvalidBody as exc:
                # Only a damaged record can fail here (it was made from a Worker the model took):
                # logged once and skipped; the other workers are still reported.
                self.failures.failed("worker-reports", f"{ns}/{name}", str(exc))
                continue
            self.failures.ok("worker-reports", f"{ns}/{name}")
            try:
                with self.store.tx():
                    rec["reported"] = phase
                    self.store.put_record("workers", ns, name, rec)
                    self.outbox.append(WORKER_KIND, ns, name, body)
            except OutboxFull as exc:
                log.warning("worker %s/%s: %s", ns, name, exc)
                return

    # -- stopping -----------------------------------------------------------------------------
    def _stop(self, key: tuple[str, str], rec: dict[str, Any]) -> None:
        pid = rec.get("pid")
        if isinstance(pid, int) and pid > 0 and rec.get("phase") == "Running" and key not in self._stopping:
            child = self._children.get(key)
            ours = child is not None or self.procs.start_time(pid) == rec.get("startTime")
            if ours and self.procs.group_alive(pid):
                with contextlib.suppress(ProcessLookupError, PermissionError):
                    os.killpg(pid, signal.SIGTERM)
                self._stopping[key] = (pid, rec.get("startTime"), self.clock() + self.stop_grace)
                log.info("worker %s/%s: deleted, sent SIGTERM to group %d", key[0], key[1], pid)
        self.store.delete_record("workers", *key)

    def _check_stopping(self) -> None:
        now = self.clock()
        for key, (pgid, started, kill_at) in list(self._stopping.items()):
            child = self._children.get(key)
            if child is not None:
                child.poll()
            if not self.procs.group_alive(pgid) or not self.procs.still_ours(pgid, started):
                self._stopping.pop(key, None)
                self._children.pop(key, None)
                continue
            if now >= kill_at:
                with contextlib.suppress(ProcessLookupError, PermissionError):
                    os.killpg(pgid, signal.SIGKILL)
                log.warning(
                    "worker %s/%s: still alive after %.0fs, sent SIGKILL", key[0], key[1], self.stop_grace
                )
                self._stopping[key] = (pgid, started, now + 3600)

    def stopping(self) -> int:
        return len(self._stopping)

    def shutdown(self) -> None:
        """LC exit: leave workers running (adopted after restart) unless ``stop_on_exit``."""
        if not self.stop_on_exit:
            return
        deadline = self.clock() + self.stop_grace
        groups = [
            rec["pid"]
            for _ns, _n, rec in self.store.records("workers")
            if rec.get("phase") == "Running"
            and isinstance(rec.get("pid"), int)
            and self.procs.still_ours(rec["pid"], rec.get("startTime"))
        ]
        for pgid in groups:
            with contextlib.suppress(ProcessLookupError, PermissionError):
                os.killpg(pgid, signal.SIGTERM)
        while any(self.procs.group_alive(g) for g in groups) and self.clock() < deadline:
            for child in self._children.values():
                child.poll()
            time.sleep(0.05)
        for pgid in groups:
            with contextlib.suppress(ProcessLookupError, PermissionError):
                os.killpg(pgid, signal.SIGKILL)
