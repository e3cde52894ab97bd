"""Helpers of the fault suite (tests/faults): a real GM and LC with a countable backlog, the
counts of what was sent, applied, duplicated and lost, and the results file.

How reports are counted, end to end with the real processes:

* **tried**: the reports put into the LC's outbox. The suite queues ``workerInfo`` reports,
  each for its own worker name (``w<i>``, info ``{"n": i}``: the protocol's ``info`` is a map),
  with the LC's own ``Outbox`` code, and lets the running LC queue more while faults happen.
* **applied**: the report's effect is in the GM's own database (worker ``w<i>`` holds info
  ``{"n": i}``) once the LC's outbox is empty; **lost**: it is not.
* **duplicated**: the GM's upstream logs ``report NODE/EPOCH/SEQ applied`` (DEBUG, which
  ``GMProcess`` runs with) each time a controller changed state for a report, before the seq
  is recorded; the GM log file is appended to across restarts, so a report applied twice
  shows twice.
* **re-run**: a copy of an applied report that the GM took again and acknowledged without
  changing anything (logged ``duplicate``): a resend found by its recorded seq (an ack the LC
  never got), or a report the controller ran again after a GM crash between applying it and
  recording its seq. The log line does not tell the two apart.

With ``LIFELONG_FAULT_RESULTS=PATH`` every scenario run appends one JSON line to PATH;
``python -m harness.faults PATH`` (from ``tests/``) renders the table of docs/reliability.md.
"""

from __future__ import annotations

import json
import os
import re
import sqlite3
import sys
import time
from collections import Counter
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Any

from harness.processes import GMProcess, LCProcess
from harness.waiting import DeadlineExceeded, wait_for
from lifelong.edge.db import Store
from lifelong.edge.outbox import Outbox

NODE = "node-a"
NS = "default"
JOB = "job1"

_APPLIED = re.compile(r"report ([^/\s]+)/([0-9a-f]+)/(\d+) (applied|duplicate)")


def repeat() -> int:
    """How many times a repeated scenario runs: ``LIFELONG_FAULT_REPEAT`` (default 3)."""
    return max(1, int(os.environ.get("LIFELONG_FAULT_REPEAT", "3")))


def dataset_manifest(name: str, data: Path) -> dict[str, Any]:
    return {
        "apiVersion": "sedna.io/v1alpha1",
        "kind": "Dataset",
        "metadata": {"name": name, "namespace": NS},
        "spec": {"url": str(data), "format": "txt", "nodeName": NODE},
    }


def job_manifest(
    name: str,
    dataset: str,
    out: Path,
    *,
    threshold: float = 1e9,
    command: list[str] | None = None,
    annotations: dict[str, str] | None = None,
) -> dict[str, Any]:
    """A job on NODE; with the default threshold its trigger never fires."""
    container: dict[str, Any] = {"name": "w", "image": "python"}
    if command is not None:
        container["command"] = command
    template = {"spec": {"nodeName": NODE, "containers": [container]}}
    meta: dict[str, Any] = {"name": name, "namespace": NS}
    if annotations:
        meta["annotations"] = annotations
    return {
        "apiVersion": "sedna.io/v1alpha1",
        "kind": "LifelongLearningJob",
        "metadata": meta,
        "spec": {
            "dataset": {"name": dataset, "trainProb": 0.8},
            "trainSpec": {
                "template": template,
                "trigger": {
                    "checkPeriodSeconds": 1,
                    "condition": {"operator": ">", "threshold": threshold, "metric": "num_of_samples"},
                },
            },
            "evalSpec": {"template": template},
            "deploySpec": {"template": template},
            "outputDir": str(out / name),
        },
    }


def manifests(data: Path) -> list[dict[str, Any]]:
    """Dataset ds1 and the job JOB, which only ever receives workerInfo reports."""
    return [dataset_manifest("ds1", data), job_manifest(JOB, "ds1", data.parent / "out")]


class Batch(list[int]):
    """The seqs of queued reports; ``self[k]`` carries worker ``w<start + k>``, info ``{"n": start + k}``."""

    start: int = 0

    def workers(self) -> dict[int, int]:
        """seq -> the worker index (and info) it carries."""
        return {seq: self.start + k for k, seq in enumerate(self)}


def queue_reports(state_dir: Path, start: int, count: int) -> Batch:
    """Append ``count`` workerInfo reports (workers ``w<start>`` ...) to the LC's outbox on disk.

    The LC's own code; the LC may be running (SQLite WAL: its publisher finds them within a
    second) or not (as an LC cut off would have queued them)."""
    store = Store(state_dir / "lc.db")
    try:
        outbox = Outbox(store)
        seqs = Batch()
        seqs.start = start
        with store.tx():
            for i in range(start, start + count):
                seq = outbox.append(
                    "LifelongLearningJob",
                    NS,
                    JOB,
                    {"event": "workerInfo", "worker": f"w{i}", "info": {"n": i}},
                )
                assert seq is not None
                seqs.append(seq)
        return seqs
    finally:
        store.close()


def epoch_of(state_dir: Path) -> str:
    store = Store(state_dir / "lc.db")
    try:
        return store.epoch
    finally:
        store.close()


def applied_counts(gm: GMProcess, node: str = NODE, outcome: str = "applied") -> Counter[tuple[str, int]]:
    """(epoch, seq) -> how many times the GM applied it (``outcome="applied"``: it changed the
    stored state), or ran it again without effect (``"duplicate"``), from its log (all lives)."""
    counts: Counter[tuple[str, int]] = Counter()
    try:
        text = gm.log_path.read_text(errors="replace")
    except OSError:
        return counts
    for m in _APPLIED.finditer(text):
        if m.group(1) == node and m.group(4) == outcome:
            counts[(m.group(2), int(m.group(3)))] += 1
    return counts


def worker_infos(gm: GMProcess) -> dict[str, Any]:
    """What the GM's own database holds per worker of JOB (read-only)."""
    path = Path(str(gm.store_path) + ".gmstate")
    if not path.exists():
        return {}
    conn = sqlite3.connect(f"file:{path}?mode=ro", uri=True, timeout=10)
    try:
        rows = conn.execute("SELECT worker, info FROM worker_info WHERE ns=? AND job=?", (NS, JOB)).fetchall()
    except sqlite3.OperationalError:
        return {}
    finally:
        conn.close()
    return {str(w): json.loads(i) for w, i in rows}


def outbox_depth(state_dir: Path) -> int:
    path = state_dir / "lc.db"
    conn = sqlite3.connect(f"file:{path}?mode=ro", uri=True, timeout=10)
    try:
        return int(conn.execute("SELECT count(*) FROM outbox").fetchone()[0])
    except sqlite3.OperationalError:
        return -1
    finally:
        conn.close()


@dataclass
class Tally:
    """The figures of one scenario run."""

    scenario: str
    broker: str
    runs: int = 0
    tried: int = 0
    applied: int = 0
    lost: int = 0
    duplicated: int = 0
    rerun: int = 0  # copies of applied reports taken again without effect (logged duplicate)
    converge_seconds: list[float] = field(default_factory=list)
    note: str = ""

    def count(self, gm: GMProcess, epoch: str, seqs: Batch) -> None:
        """Add the figures of reports ``seqs`` of ``epoch`` (call once the outbox is empty).

        lost: the GM's own database does not hold the report's effect (its worker's info);
        duplicated: the GM logged more than one application that changed state;
        re-run: a copy taken again without effect (found by its recorded seq, or run again by
        the controller after a GM crash between applying it and recording its seq; the first
        run may have died before its log line)."""
        counts = applied_counts(gm)
        reruns = applied_counts(gm, outcome="duplicate")
        infos = worker_infos(gm)
        held = {seq for seq, i in seqs.workers().items() if infos.get(f"w{i}") == {"n": i}}
        self.tried += len(seqs)
        self.applied += len(held)
        self.lost += len(seqs) - len(held)
        self.duplicated += sum(1 for s in seqs if counts[(epoch, s)] > 1)
        self.rerun += sum(1 for s in seqs if reruns[(epoch, s)])

    def record(self) -> None:
        path = os.environ.get("LIFELONG_FAULT_RESULTS")
        if not path:
            return
        with open(path, "a", encoding="utf-8") as fh:
            fh.write(json.dumps(asdict(self)) + "\n")


class Rig:
    """A real GM and one real LC on a broker, with the job of ``manifests`` applied."""

    def __init__(
        self,
        tmp: Path,
        broker_url: str,
        prefix: str,
        *,
        gm_extra: list[str] | None = None,
        lc_extra: list[str] | None = None,
    ) -> None:
        self.tmp = tmp
        self.data = tmp / "data" / "samples.txt"
        self.data.parent.mkdir(parents=True, exist_ok=True)
        self.data.write_text("".join(f"s{i}\n" for i in range(3)))
        self.gm = GMProcess(tmp, broker_url=broker_url, prefix=prefix, extra=gm_extra)
        self.lc = LCProcess(tmp, node=NODE, broker_url=broker_url, prefix=prefix, extra=lc_extra)

    def start_gm(self) -> None:
        self.gm.start()
        self.gm.wait_ready()

    def apply(self) -> None:
        self.apply_objects(manifests(self.data))

    def apply_objects(self, objs: list[dict[str, Any]]) -> None:
        """Apply ``objs`` from this process (``GMProcess.apply``, not a client process): the fault
        scenarios test the GM and the LC, not the client."""
        self.gm.apply(objs)

    def delete(self, kind: str, name: str) -> None:
        """Delete one object as ``lifelong delete`` does (``DELETE /api/v1/KIND/NS/NAME``)."""
        self.gm.api("DELETE", f"/api/v1/{kind}/{NS}/{name}")

    def gm_jobs(self) -> dict[str, str]:
        """name -> resourceVersion of every job the GM holds."""
        items = self.gm.api("GET", f"/api/v1/LifelongLearningJob?namespace={NS}")["items"]
        return {i["metadata"]["name"]: str(i["metadata"]["resourceVersion"]) for i in items}

    def lc_jobs(self) -> dict[str, str]:
        """name -> rv of every job the LC's database holds (read-only look)."""
        path = self.lc.state_dir / "lc.db"
        conn = sqlite3.connect(f"file:{path}?mode=ro", uri=True, timeout=10)
        try:
            rows = conn.execute(
                "SELECT name, rv FROM resources WHERE kind='LifelongLearningJob' AND ns=?", (NS,)
            ).fetchall()
        except sqlite3.OperationalError:
            return {}
        finally:
            conn.close()
        return {str(n): str(rv) for n, rv in rows}

    def wait_in_sync(self, timeout: float = 60.0) -> None:
        """Wait until the LC holds exactly the GM's jobs at the GM's versions (downstream)."""

        def same() -> bool:
            self.gm.check_alive()
            self.lc.check_alive()
            return self.lc_jobs() == self.gm_jobs()

        wait_for(
            same,
            timeout=timeout,
            interval=0.1,
            what=f"the LC's jobs to match the GM's\n{self.lc.log_tail(20)}",
        )

    def start_lc(self) -> None:
        self.lc.start()
        self.lc.wait_online(self.gm)

    def drained(self, epoch: str, seqs: list[int]) -> bool:
        self.gm.check_alive()
        self.lc.check_alive()
        if outbox_depth(self.lc.state_dir) != 0:
            return False
        counts = applied_counts(self.gm) + applied_counts(self.gm, outcome="duplicate")
        return all(counts[(epoch, s)] for s in seqs)

    def wait_drained(self, epoch: str, seqs: list[int], timeout: float = 90.0) -> float:
        """Wait until every report is applied and the outbox is empty; return the seconds taken."""
        t0 = time.monotonic()
        try:
            wait_for(
                lambda: self.drained(epoch, seqs),
                timeout=timeout,
                interval=0.1,
                what=f"{len(seqs)} reports applied and the outbox empty",
            )
        except DeadlineExceeded as exc:  # the logs as they are at the deadline, not at the start
            raise DeadlineExceeded(
                f"{exc}\nGM:\n{self.gm.log_tail(60)}\nLC:\n{self.lc.log_tail(60)}"
            ) from None
        return time.monotonic() - t0

    def stop(self) -> None:
        for proc in (self.lc, self.gm):
            if proc.alive():
                proc.kill()


def render(path: Path) -> str:
    """The Markdown table of a results file (several runs of one scenario are summed)."""
    rows: dict[tuple[str, str], dict[str, Any]] = {}
    for line in path.read_text().splitlines():
        if not line.strip():
            continue
        r = json.loads(line)
        key = (r["scenario"], r["broker"])
        agg = rows.setdefault(
            key,
            {
                "runs": 0,
                "tried": 0,
                "applied": 0,
                "lost": 0,
                "duplicated": 0,
                "rerun": 0,
                "conv": [],
                "note": "",
            },
        )
        for k in ("runs", "tried", "applied", "lost", "duplicated", "rerun"):
            agg[k] += r[k]
        agg["conv"] += r["converge_seconds"]
        agg["note"] = r.get("note") or agg["note"]
    out = [
        "| scenario | broker | runs | messages tried | applied | lost | duplicated | re-run, no effect "
        "| converge s (median / max) | notes |",
        "|---|---|---:|---:|---:|---:|---:|---:|---|---|",
    ]
    for (scenario, broker), a in sorted(rows.items()):
        conv = sorted(a["conv"])
        c = f"{conv[len(conv) // 2]:.1f} / {conv[-1]:.1f}" if conv else "-"
        out.append(
            f"| {scenario} | {broker} | {a['runs']} | {a['tried']} | {a['applied']} | {a['lost']} "
            f"| {a['duplicated']} | {a['rerun']} | {c} | {a['note']} |"
        )
    return "\n".join(out) + "\n"


if __name__ == "__main__":
    sys.stdout.write(render(Path(sys.argv[1])))
