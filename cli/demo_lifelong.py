"""``lifelong demo`` (the default scenario, ``--scenario lifelong``): lifelong learning as it happens.

Called by ``cmd_demo`` of ``cli/demo.py``, which owns the command line, the work directory and
the clean-up. What it does, in order:

1. starts ``lifelong broker`` (embedded amqtt), ``lifelong gm --kb-dir`` (SQLite store, the
   knowledge base in the GM's process, docs/knowledge-base.md) and ``lifelong lc`` (one edge
   node) as child processes on free ports (``Core`` of ``cli/demo.py``);
2. writes the data of ``examples/lifelong`` (``digits_domains.py``: scikit-learn's digits seen by
   the cameras ``cam_a`` and ``cam_b``, and ``cam_c`` that no model has seen) and applies its
   Dataset and LifelongLearningJob through the GM's API; the job's workers use the library
   (``lifelong.learning``);
3. shows the job live: each stage of each round (the job's conditions in the GM's API), the
   tasks and their models (``GET /knowledgebase/v1/tasks``), the unseen samples the edge's
   inference shipped to the KB (``GET /knowledgebase/v1/samples``), the accuracy per task on a
   fixed test set (``GET /knowledgebase/v1/metrics``, posted by the Eval worker);
4. once round 1's inference has shipped cam_c's samples, labels them from the data set's own
   labels with ``lifelong kb label`` (and says so: a person would do this); the LC appends them
   to the Dataset, round 2 learns ``cam_c`` starting from the closest known task's model;
5. ends with the table of accuracy per task per round and the lifelong-learning metrics
   (``lifelong.learning.metrics``).
"""

from __future__ import annotations

import csv
import io
import json
import subprocess
import sys
import time
import urllib.error
import warnings
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any
from urllib.parse import quote

from lifelong.demo import Child, Core, DemoFailed, _fmt, apply_example, free_port, http, port_open

NODE = "edge-demo"
NAMESPACE = "default"
JOB = "lifelong-digits"  # the names of examples/lifelong's manifests
DATASET = "lifelong-digits"
ROUNDS = 2
UNSEEN_DOMAIN = "cam_c"


def _signed(value: float | None, sign: bool = True) -> str:
    """A metric right-aligned in 6 characters, with its sign when ``sign``."""
    if value is None:
        return "     -"
    return f"{value:+6.3f}" if sign else f"{value:6.3f}"


def _count(value: Any) -> str:
    return str(int(value)) if isinstance(value, int | float) else "?"


@dataclass
class LifelongDemo:
    """One run of the scenario: start the processes, apply the job, watch and label, summarise."""

    workdir: Path
    timeout: float
    examples: Path
    show_workdir: bool = True
    keep_running: bool = False
    started: float = field(default_factory=time.monotonic)
    children: list[Child] = field(default_factory=list)
    deployed_rounds: int = 0
    summary_printed: bool = False
    models: dict[str, str] = field(default_factory=dict)
    labelled: int = 0
    inferred_per_round: int = 0

    def say(self, text: str) -> None:
        print(f"[{time.monotonic() - self.started:6.1f}s] {text}", flush=True)

    def finished(self) -> bool:
        return self.summary_printed

    # -- start-up ----------------------------------------------------------------------------
    def start(self) -> None:
        kb_port = free_port()
        core = Core(self.workdir, NODE, ["--kb-dir", str(self.workdir / "kb"), "--kb-port", str(kb_port)])
        self.broker_url, self.server, self.console = core.broker_url, core.server, core.console
        self.kb = f"http://127.0.0.1:{kb_port}/knowledgebase/v1"
        self.children = core.children
        core.start(self.say, self.children, gm_ready=lambda: port_open(kb_port))
        self.say(f"kb       {self.kb}  (the knowledge base, in the GM's process: lifelong gm --kb-dir)")

    def apply(self) -> None:
        """Write the example's data and apply its Dataset and job (placeholders filled in)."""
        self.data = self.workdir / "data"
        out = subprocess.run(
            [sys.executable, str(self.examples / "digits_domains.py"), str(self.data)],
            capture_output=True,
            text=True,
            check=False,
        )
        if out.returncode != 0:
            raise DemoFailed(f"examples/lifelong/digits_domains.py failed: {out.stderr.strip()[-500:]}")
        self.truth = self._truth()
        counts = self._domains(self.data / "train.csv")
        infer = self._domains(self.data / "infer.csv")
        self.inferred_per_round = sum(infer.values())
        self.say(
            "data: scikit-learn's handwritten digits seen by cameras (task attribute `domain`): "
            + ", ".join(f"{d} {n} labelled" for d, n in counts.items())
            + " in the Dataset; the edge will infer "
            + ", ".join(f"{n} of {d}" for d, n in infer.items())
            + f" ({UNSEEN_DOMAIN}: inverted and dimmed, a camera no model has seen)"
        )
        apply_example(self.workdir, self.examples, self.server, NODE, self.say)

    @staticmethod
    def _domains(path: Path) -> dict[str, int]:
        counts: dict[str, int] = {}
        with path.open(newline="") as fh:
            for row in csv.DictReader(fh):
                counts[row["domain"]] = counts.get(row["domain"], 0) + 1
        return counts

    def _truth(self) -> dict[tuple[str, ...], str]:
        """The data set's own labels of the unseen camera's samples, by their pixels."""
        with (self.data / f"{UNSEEN_DOMAIN}_labels.csv").open(newline="") as fh:
            rows = list(csv.reader(fh))[1:]
        return {tuple(r[2:]): r[0] for r in rows}

    # -- reading the GM and the KB ------------------------------------------------------------
    def _get(self, url: str) -> Any:
        try:
            return http("GET", url)
        except urllib.error.HTTPError as exc:
            if exc.code == 404:
                return None
            raise DemoFailed(f"GET {url}: {exc}") from None
        except (urllib.error.URLError, OSError) as exc:
            raise DemoFailed(f"GET {url}: {exc}") from None

    def conditions(self) -> list[dict[str, Any]]:
        job = self._get(f"{self.server}/api/v1/LifelongLearningJob/{NAMESPACE}/{JOB}") or {}
        return list((job.get("status") or {}).get("conditions") or [])

    def dataset_count(self) -> int:
        obj = self._get(f"{self.server}/api/v1/Dataset/{NAMESPACE}/{DATASET}") or {}
        return int((obj.get("status") or {}).get("numberOfSamples") or 0)

    def kb_tasks(self) -> dict[str, Any]:
        return self._get(f"{self.kb}/tasks/{NAMESPACE}/{quote(JOB)}") or {}

    def kb_samples(self) -> list[dict[str, Any]]:
        found = self._get(f"{self.kb}/samples/{NAMESPACE}/{quote(JOB)}?state=all&limit=10000") or {}
        return list(found.get("items") or [])

    def kb_metrics(self) -> dict[str, Any]:
        return self._get(f"{self.kb}/metrics/{NAMESPACE}/{quote(JOB)}") or {}

    # -- the run ------------------------------------------------------------------------------
    def run(self) -> int:
        """Watch the job until round ``ROUNDS`` is deployed and scored, print the summary; with
        ``keep_running`` wait for Ctrl-C (``KeyboardInterrupt``) while the processes run."""
        self.summary(self.watch())
        if self.keep_running:
            self.say(
                f"--keep-running: everything keeps running; watch it in the console at {self.console} , try "
                f"`lifelong describe ll {JOB} --server {self.server}`, "
                f"`lifelong kb summary {JOB} --server {self.server}` or "
                f"`lifelong tail --broker {self.broker_url}`; Ctrl-C stops everything"
            )
            while True:
                for child in self.children:
                    child.check()
                time.sleep(0.5)
        return 0

    def watch(self) -> dict[str, Any]:
        """Show the job live until round ``ROUNDS`` is deployed and scored; the KB's metrics."""
        deadline = time.monotonic() + self.timeout
        seen_conditions = 0
        round_no = 0
        tasks_version = 0
        sample_states: dict[str, int] = {}
        scored: set[int] = set()
        labelled = False
        last_count = -1
        while True:
            for child in self.children:
                child.check()
            if time.monotonic() > deadline:
                raise DemoFailed(
                    f"timed out after {self.timeout:.0f}s in round {round_no}; "
                    f"logs in {self.workdir / 'logs'}"
                )
            conds = self.conditions()
            for cond in conds[seen_conditions:]:
                if cond.get("stage") == "Train" and cond.get("type") == "Ready":
                    round_no += 1
                self.on_condition(round_no, cond)
            seen_conditions = len(conds)
            count = self.dataset_count()
            if count != last_count:
                if count:
                    self.say(f"dataset {DATASET}: {count} samples on {NODE}")
                last_count = count
            tasks = self.kb_tasks()
            if tasks and int(tasks.get("version") or 0) != tasks_version:
                tasks_version = int(tasks.get("version") or 0)
                self.on_tasks(tasks)
            samples = self.kb_samples()
            states: dict[str, int] = {}
            for s in samples:
                states[s["state"]] = states.get(s["state"], 0) + 1
            if states != sample_states:
                sample_states = states
                self.on_samples(samples, states)
            metrics = self.kb_metrics()
            for rnd in self._scored_rounds(metrics):
                if rnd not in scored:
                    scored.add(rnd)
                    self.on_scores(rnd, metrics)
            if not labelled and self.deployed_rounds >= 1 and states.get("unlabelled") == len(self.truth):
                self.label(samples)
                labelled = True
            if self.deployed_rounds >= ROUNDS and ROUNDS in scored:
                return metrics
            time.sleep(0.3)

    @staticmethod
    def _scored_rounds(metrics: dict[str, Any]) -> list[int]:
        """Rounds whose eval metrics hold the test accuracy of at least one task."""
        out = []
        for rnd, tasks in (metrics.get("scores") or {}).items():
            if any("test_accuracy" in ((t or {}).get("eval") or {}) for t in tasks.values()):
                out.append(int(rnd))
        return sorted(out)

    def on_condition(self, rnd: int, cond: dict[str, Any]) -> None:
        stage, ctype = cond.get("stage"), cond.get("type")
        if ctype in ("Waiting", "Starting"):
            return
        data: Any = None
        try:
            data = json.loads(cond.get("data") or "null")
        except (ValueError, TypeError):
            data = None
        line = f"round {rnd}  {stage:<6} {ctype}"
        holder = (data.get("output") or data) if isinstance(data, dict) else None
        models = holder.get("models") if isinstance(holder, dict) else None
        metrics = models[0].get("metrics") if isinstance(models, list) and models else None
        metrics = metrics if isinstance(metrics, dict) else {}
        if stage == "Train" and ctype == "Ready" and isinstance(data, dict):
            line += f"  (the trigger fired: {data.get('numberOfSamples')} new samples in the Dataset)"
        elif stage == "Train" and ctype == "Completed":
            parts = [
                f"{task} {_count(m.get('samples'))} samples (train accuracy {_fmt(m.get('train_accuracy'))})"
                for task, m in metrics.items()
                if isinstance(m, dict)
            ]
            line += "  one model per task: " + ", ".join(parts)
        elif stage == "Eval" and ctype == "Completed":
            parts = [
                f"{task} {_fmt(m.get('accuracy'))}"
                for task, m in metrics.items()
                if isinstance(m, dict) and task != "all"
            ]
            line += "  accuracy on this round's eval pool: " + ", ".join(parts)
        elif stage == "Deploy" and ctype == "Completed":
            self.deployed_rounds = rnd
            line += "  the models serve on the edge; its inference ran on infer.csv"
        elif ctype == "Failed":
            reason = f"{cond.get('reason', '')}: {cond.get('message', '')}".strip(": ")
            raise DemoFailed(
                f"{stage} failed in round {rnd} ({reason}); "
                f"worker logs under {self.workdir / 'lc' / 'workers'}"
            )
        self.say(line)

    def on_tasks(self, tasks: dict[str, Any]) -> None:
        """A line per task whose model is new since the last look."""
        for g in tasks.get("taskGroups") or []:
            entry = str(g.get("entry"))
            model = g.get("model") or {}
            url = str(model.get("url") or "")
            if self.models.get(entry) == url:
                continue
            self.models[entry] = url
            transfer = g.get("transfer") or {}
            where = url.split("/files/", 1)[-1]
            text = f"KB task {entry}: a model of {g.get('sampleNum')} samples stored ({where})"
            if transfer.get("from"):
                text += (
                    f"; learned starting from {transfer['from']}'s model, the closest known task "
                    f"(it scored {_fmt(transfer.get('ratio'))} on the new task's first labelled samples)"
                )
            self.say(text)

    def on_samples(self, samples: list[dict[str, Any]], states: dict[str, int]) -> None:
        by_task: dict[str, int] = {}
        served: dict[str, int] = {}
        for s in samples:
            domain = str((s.get("attrs") or {}).get("domain"))
            by_task[domain] = by_task.get(domain, 0) + 1
            served[str(s.get("task"))] = served.get(str(s.get("task")), 0) + 1
        self.say(
            f"KB unseen samples: {len(samples)} ("
            + ", ".join(f"{n} {state}" for state, n in sorted(states.items()))
            + "); by camera: "
            + ", ".join(f"{d} {n}" for d, n in sorted(by_task.items()))
            + "; served meanwhile by the closest known model: "
            + ", ".join(f"{t} {n}" for t, n in sorted(served.items()))
        )

    def on_scores(self, rnd: int, metrics: dict[str, Any]) -> None:
        row = (metrics.get("scores") or {}).get(str(rnd)) or {}
        parts = []
        for task in sorted(row):
            ev = (row[task] or {}).get("eval") or {}
            if "test_accuracy" in ev:
                parts.append(f"{task} {_fmt(ev['test_accuracy'])}")
        self.say(f"round {rnd}  accuracy per task on the fixed test set (KB metrics): " + ", ".join(parts))

    def label(self, samples: list[dict[str, Any]]) -> None:
        """Label the unseen samples from the data set's own labels with ``lifelong kb label``."""
        features = [f"f{i}" for i in range(64)]
        lines = []
        for s in samples:
            if s.get("state") != "unlabelled":
                continue
            key = tuple(str(s["row"][f]) for f in features)
            if key not in self.truth:
                raise DemoFailed(f"unseen sample {s['id']} is not one of {UNSEEN_DOMAIN}_labels.csv")
            lines.append(f"{s['id']},{self.truth[key]}\n")
        self.labelled = len(lines)
        path = self.workdir / "labels.csv"
        path.write_text("id,label\n" + "".join(lines))
        argv = [sys.executable, "-m", "lifelong", "kb", "label", JOB, "--file", str(path)]
        self.say(
            f"labelling the {len(lines)} unseen samples: a person would; the demo takes the labels from "
            f"the data set ({UNSEEN_DOMAIN}_labels.csv) and runs `lifelong kb label {JOB} --file labels.csv`"
        )
        out = subprocess.run(
            [*argv, "--server", self.server], capture_output=True, text=True, check=False, timeout=60
        )
        if out.returncode != 0:
            raise DemoFailed(f"lifelong kb label failed: {(out.stderr or out.stdout).strip()}")
        self.say(f"    {out.stdout.strip()}; the GM sends them to {NODE}, which appends them to the Dataset")

    # -- the end ------------------------------------------------------------------------------
    def summary(self, metrics: dict[str, Any]) -> None:
        """The table of accuracy per task per round and the lifelong-learning metrics."""
        from lifelong.learning import metrics as ll

        tasks, rounds, matrix = accuracy_matrix(metrics)
        unseen = unseen_cells(metrics)
        # a task's first round is the first in which its test samples were not unseen
        first = [next((k for k, rnd in enumerate(rounds) if (rnd, t) not in unseen), None) for t in tasks]
        groups = {str(g.get("entry")): g for g in self.kb_tasks().get("taskGroups") or []}
        baseline = self.baseline(tasks, groups)
        samples = self.kb_samples()
        inferred = self.deployed_rounds * self.inferred_per_round
        print(flush=True)
        print(
            f"Summary: {len(rounds)} rounds in {time.monotonic() - self.started:.0f}s; accuracy per task "
            "per round on the fixed test set (the KB's metrics, posted by the Eval worker)",
            flush=True,
        )
        table = ll.format_matrix(matrix, tasks, [f"round {r}" for r in rounds])
        print("\n".join("  " + line for line in table.splitlines()), flush=True)
        for rnd, task in sorted(unseen):
            print(
                f"  round {rnd} {task}: not learned yet, its samples were unseen and the closest known "
                "model served them",
                flush=True,
            )
        bwt, fwt = ll.bwt(matrix, first), ll.fwt(matrix, baseline, first)
        forgetting = ll.forgetting(matrix, first)
        print(flush=True)
        print("Lifelong-learning metrics (lifelong.learning.metrics):", flush=True)
        print(
            f"  average accuracy  {_signed(ll.average_accuracy(matrix), False)}  over the tasks, last round"
        )
        print(
            f"  BWT               {_signed(bwt)}  backward transfer: each task's accuracy at the last round "
            "minus right after it was learned (negative: forgetting)"
        )
        print(f"  forgetting        {_signed(forgetting, False)}  the largest drop of each earlier task")
        for j, task in enumerate(tasks):
            group = groups.get(task) or {}
            transfer = group.get("transfer") or {}
            k = first[j]
            if baseline[j] is not None and k is not None:
                print(
                    f"  {task}: learned in round {rounds[k]} from {transfer.get('from')}'s model: "
                    f"{_fmt(matrix[k][j])}; the same {group.get('sampleNum')} samples without "
                    f"transfer (a model trained from scratch in the demo's process): {_fmt(baseline[j])}"
                )
        print(
            f"  FWT               {_signed(fwt)}  forward transfer: a new task's accuracy when learned "
            "minus without transfer"
        )
        ratio = ll.samples_transfer_ratio(inferred, len(samples))
        print(
            f"  samples transfer  {_signed(ratio, False)}  {len(samples)} of the {inferred} samples the edge "
            f"inferred ({self.inferred_per_round} a round) went to the KB as unseen"
        )
        later = len(samples) - self.labelled
        print(
            f"  unseen samples: {self.labelled} found by round 1's inference and labelled; {later} found "
            "after that",
            flush=True,
        )
        if self.show_workdir:
            print(f"  work directory: {self.workdir} (logs in {self.workdir / 'logs'})", flush=True)
        print(flush=True)
        self.summary_printed = True

    def baseline(self, tasks: list[str], groups: dict[str, Any]) -> list[float | None]:
        """For each task learned with transfer: the accuracy on its test samples of a model of the
        example's estimator trained from scratch on the samples its model learned (read from the
        KB's files); None for the others."""
        import importlib.util

        import numpy as np

        spec = importlib.util.spec_from_file_location("demo_interface", self.examples / "interface.py")
        if spec is None or spec.loader is None:
            raise DemoFailed(f"cannot load {self.examples / 'interface.py'}")
        interface = importlib.util.module_from_spec(spec)
        spec.loader.exec_module(interface)
        test = self._test_rows()
        out: list[float | None] = []
        for task in tasks:
            group = groups.get(task) or {}
            url = str((group.get("model") or {}).get("url") or "")
            if not (group.get("transfer") or {}).get("from") or not url.endswith(".pkl") or task not in test:
                out.append(None)
                continue
            try:
                raw = http("GET", url[: -len(".pkl")] + ".samples.npz", timeout=30)
            except (urllib.error.URLError, OSError) as exc:
                raise DemoFailed(f"cannot read the samples of {task} from the KB: {exc}") from None
            with np.load(io.BytesIO(raw), allow_pickle=False) as npz:
                x, y = np.asarray(npz["x"], dtype=float), np.asarray(json.loads(str(npz["y"])))
            with warnings.catch_warnings():
                warnings.simplefilter(
                    "ignore"
                )  # e.g. scikit-learn's ConvergenceWarning, as in the workers' logs
                model = interface.estimator().fit(x, y)
            tx, ty = test[task]
            out.append(round(float(model.score(tx, ty)), 4))
        return out

    def _test_rows(self) -> dict[str, tuple[Any, Any]]:
        """test.csv's samples by task entry: (features, labels)."""
        import numpy as np

        by_task: dict[str, tuple[list[list[float]], list[int]]] = {}
        with (self.data / "test.csv").open(newline="") as fh:
            for row in csv.DictReader(fh):
                xs, ys = by_task.setdefault(row["domain"].replace("_", "-"), ([], []))
                xs.append([float(row[f"f{i}"]) for i in range(64)])
                ys.append(int(row["label"]))
        return {t: (np.asarray(xs), np.asarray(ys)) for t, (xs, ys) in by_task.items()}

    def stop(self) -> None:
        for child in self.children:
            child.stop()


def accuracy_matrix(metrics: dict[str, Any]) -> tuple[list[str], list[int], list[list[float | None]]]:
    """The KB's metrics as (tasks, rounds, R[round][task]) of the test accuracies."""
    scores = metrics.get("scores") or {}
    rounds = sorted(int(r) for r in scores)
    tasks = sorted(
        {t for r in scores.values() for t, s in r.items() if "test_accuracy" in (s.get("eval") or {})}
    )
    matrix: list[list[float | None]] = []
    for rnd in rounds:
        row = scores[str(rnd)]
        matrix.append([((row.get(t) or {}).get("eval") or {}).get("test_accuracy") for t in tasks])
    return tasks, rounds, matrix


def unseen_cells(metrics: dict[str, Any]) -> set[tuple[int, str]]:
    """(round, task) whose test samples were unseen in that round: no model of the task yet."""
    out = set()
    for rnd, row in (metrics.get("scores") or {}).items():
        for task, s in row.items():
            if ((s or {}).get("eval") or {}).get("test_unseen"):
                out.add((int(rnd), task))
    return out
