"""``make eval``: lifelong-learning metrics of this system against Sedna's defaults and plain baselines.

``python -m benchmarks.lifelong_eval [--fast] [--seeds N] [--datasets digits,cancer] [--out DIR]``

Who runs it: ``make eval`` (the full size, results in ``benchmarks/results/`` and the figures of
docs/lifelong-learning.md) and ``tests/e2e/test_eval_smoke.py`` (``--fast``, a check of the
pipeline, not of the figures).

For each data set and seed (``benchmarks/lifelong_data.py``) it runs the real system: a broker,
``lifelong gm --kb-dir`` (the knowledge base in the GM's process) and ``lifelong lc``, started
once for the whole evaluation, and one LifelongLearningJob per run whose workers use the library
(Train and Eval: ``examples/lifelong/train.py`` and ``eval.py``; Deploy:
``benchmarks/lifelong_workers/infer_score.py``, the example's inference plus a score on the test
sets). Round 1 learns the two known tasks; its inference meets the new task, whose samples are
unseen and reach the KB over the bus; the driver labels them there from the data set's own
labels (``POST .../kb/labels``, as ``lifelong kb label`` does); the LC appends them to the
Dataset and round 2 learns the new task from the closest known one. After each round the Deploy
worker scores the deployed knowledge on every task's test set: the system's row of R.

The baselines (``benchmarks/lifelong_baselines.py``) then run in this process on the training
files the LC wrote for each round (the same samples) with the same estimator and the same test
sets. The metrics are ``lifelong.learning.metrics``'; FWT's baseline is the per-task model
trained from scratch. Results: ``benchmarks/results/lifelong-eval-<size>-<time>.json`` (and
``latest-lifelong-eval-<size>.json``), two plots per data set (accuracy per task per round; the
metrics as bars), and a summary on stdout.
"""

from __future__ import annotations

import argparse
import importlib.util
import json
import os
import statistics
import sys
import time
import urllib.request
import warnings
from collections.abc import Callable
from concurrent.futures import ThreadPoolExecutor
from datetime import UTC, datetime
from pathlib import Path
from types import ModuleType
from typing import Any

from benchmarks.infra import GM, LC, Broker, available_brokers, free_port, wait_for
from benchmarks.lifelong_baselines import BASELINES, RUNNERS, RoundData, transfer_ratio
from benchmarks.lifelong_data import EXAMPLE, SPECS, RunData, feature_key, make_run, read_csv, write_run
from lifelong.learning.metrics import format_matrix, samples_transfer_ratio, summarize

ROOT = Path(__file__).resolve().parents[1]
RESULTS = ROOT / "benchmarks" / "results"
WORKERS = Path(__file__).resolve().parent / "lifelong_workers"
NODE = "eval-node"
SYSTEM = "this_system"
SYSTEMS = (SYSTEM, *BASELINES)
METRICS = ("average_accuracy", "bwt", "fwt", "forgetting", "samples_transfer_ratio")
ROUND_TIMEOUT = 300.0


class EvalError(RuntimeError):
    """A run of the system did not finish as it should (the message says where it stopped)."""


# -- the processes ----------------------------------------------------------------------------------
class Session:
    """A broker, ``lifelong gm --kb-dir`` and ``lifelong lc`` for the whole evaluation (the
    processes of ``benchmarks/infra.py``, with the KB and shorter resend and poll periods)."""

    def __init__(self, workdir: Path, broker_kind: str) -> None:
        self.workdir = workdir
        self.broker = Broker(broker_kind, workdir)
        self.kb_port = free_port()
        self.gm: GM | None = None
        self.lc: LC | None = None

    def start(self) -> None:
        self.workdir.mkdir(parents=True, exist_ok=True)
        self.broker.start()
        self.gm = GM(self.workdir, self.broker.url)
        self.gm.args += ["--kb-dir", str(self.workdir / "kb"), "--kb-port", str(self.kb_port)]
        self.gm.args += ["--resend-base", "0.5", "--resend-cap", "2", "--job-backoff-base", "1"]
        self.gm.start()
        self.gm.wait_ready()
        self.lc = LC(self.workdir, NODE, self.broker.url)
        self.lc.args += ["--poll-seconds", "0.2"]
        self.lc.start()
        self.gm.wait_online(NODE, timeout=60)

    def stop(self) -> None:
        for proc in (self.lc, self.gm):
            if proc is not None:
                proc.terminate()
        self.broker.stop()

    def check(self) -> None:
        for proc in (self.gm, self.lc):
            if proc is not None:
                proc.check()

    def api(self, method: str, path: str, body: Any = None) -> Any:
        assert self.gm is not None, "the session is not started"
        return self.gm.api(method, path, body)

    def lc_log(self, chars: int = 3000) -> str:
        path = self.workdir / f"lc-{NODE}.log"
        return path.read_text(errors="replace")[-chars:] if path.exists() else ""


# -- one run of the system ----------------------------------------------------------------------------
def manifests(name: str, folder: Path, files: dict[str, Path], env: dict[str, str]) -> list[dict[str, Any]]:
    """The Dataset and the LifelongLearningJob of one run."""

    def template(container: str, script: Path, extra: dict[str, str]) -> dict[str, Any]:
        pairs = {**env, **extra}
        return {
            "spec": {
                "nodeName": NODE,
                "containers": [
                    {
                        "name": container,
                        "image": "python",
                        "command": [sys.executable, str(script)],
                        "env": [{"name": k, "value": v} for k, v in pairs.items()],
                    }
                ],
            }
        }

    dataset = {
        "apiVersion": "sedna.io/v1alpha1",
        "kind": "Dataset",
        "metadata": {"name": name, "namespace": "default"},
        "spec": {"url": str(files["train"]), "format": "csv", "nodeName": NODE},
    }
    job = {
        "apiVersion": "sedna.io/v1alpha1",
        "kind": "LifelongLearningJob",
        "metadata": {"name": name, "namespace": "default"},
        "spec": {
            "dataset": {"name": name, "trainProb": 0.8},
            "trainSpec": {
                "template": template("train-worker", EXAMPLE / "train.py", {}),
                "trigger": {
                    "checkPeriodSeconds": 1,
                    "condition": {"operator": ">", "threshold": 10, "metric": "num_of_samples"},
                },
            },
            "evalSpec": {"template": template("eval-worker", EXAMPLE / "eval.py", {"model_threshold": "0"})},
            "deploySpec": {
                "template": template(
                    "infer-worker",
                    WORKERS / "infer_score.py",
                    {
                        "INFER_DATASET_URL": str(files["stream"]),
                        "SCORE_DATASET_URL": str(files["test"]),
                        "SCORES_DIR": str(folder / "scores"),
                    },
                )
            },
            "outputDir": str(folder / "output"),
        },
    }
    return [dataset, job]


def _failed(session: Session, name: str) -> None:
    job = session.api("GET", f"/api/v1/LifelongLearningJob/default/{name}")
    for cond in (job.get("status") or {}).get("conditions") or []:
        if cond.get("type") == "Failed":
            raise EvalError(
                f"job {name}: {cond.get('stage')} failed ({cond.get('message') or cond.get('reason')})\n"
                f"LC log:\n{session.lc_log()}"
            )


def _wait_file(session: Session, name: str, path: Path, what: str) -> dict[str, Any]:
    def ready() -> bool:
        session.check()
        _failed(session, name)
        return path.exists()

    wait_for(ready, timeout=ROUND_TIMEOUT, what=f"{what} of {name}", interval=0.2)
    data: dict[str, Any] = json.loads(path.read_text())
    return data


def run_system(session: Session, run: RunData, folder: Path, env: dict[str, str]) -> dict[str, Any]:
    """One run of the real system: two rounds, the new task's samples labelled in between."""
    name = f"eval-{run.spec.name}-{run.seed}"
    files = write_run(run, folder / "data")
    started = time.monotonic()
    for obj in manifests(name, folder, files, env):
        session.api("POST", "/api/v1/apply", obj)
    scores = folder / "scores"
    first = _wait_file(session, name, scores / "1.json", "round 1's scores")
    t_round1 = time.monotonic() - started

    kb_path = f"/api/v1/namespaces/default/lifelonglearningjobs/{name}/kb"
    samples_path = f"{kb_path}/samples?state=unlabelled&limit=1000"
    expected = len(run.new.y)

    def unseen() -> list[dict[str, Any]]:
        session.check()
        items: list[dict[str, Any]] = session.api("GET", samples_path)["items"]
        return items if len(items) >= expected else []

    found = wait_for(unseen, timeout=120, what=f"{expected} unseen samples of {name} in the KB", interval=0.2)
    x, y, _ = read_csv(files["new_labels"])
    truth = {feature_key(xi): int(yi) for xi, yi in zip(x, y, strict=True)}
    columns = [f"f{i}" for i in range(run.n_features)]
    labels: dict[str, int] = {}
    for sample in found:
        key = feature_key([float(sample["row"][c]) for c in columns])
        if key not in truth:
            raise EvalError(f"unseen sample {sample['id']} of {name} is not one of the new task's samples")
        labels[sample["id"]] = truth[key]
    answer = session.api("POST", f"{kb_path}/labels", {"labels": labels})
    second = _wait_file(session, name, scores / "2.json", "round 2's scores")
    elapsed = time.monotonic() - started
    tasks = list(run.spec.tasks)
    matrix = [[first["accuracy"][t] for t in tasks], [second["accuracy"][t] for t in tasks]]
    index = session.api("GET", f"/api/v1/LifelongLearningJob/default/{name}")
    kb_tasks = _kb_tasks(session, name)
    return {
        "job": name,
        "matrix": matrix,
        "inferred": first["inferred"],
        "unseen": first["unseen"],
        "unseen_round2": second["unseen"],
        "labelled": answer.get("labelled"),
        "transfer": {g["entry"]: g.get("transfer") for g in kb_tasks},
        "seconds": round(elapsed, 1),
        "seconds_round1": round(t_round1, 1),
        "conditions": len((index.get("status") or {}).get("conditions") or []),
        "round_files": [folder / "output" / "data" / "train" / str(r) / "train.csv" for r in (1, 2)],
    }


def _kb_tasks(session: Session, name: str) -> list[dict[str, Any]]:
    url = f"http://127.0.0.1:{session.kb_port}/knowledgebase/v1/tasks/default/{name}"
    with urllib.request.urlopen(url, timeout=10) as resp:
        groups: list[dict[str, Any]] = json.loads(resp.read()).get("taskGroups") or []
    return groups


# -- measuring -----------------------------------------------------------------------------------------
def _interface(env: dict[str, str]) -> ModuleType:
    """The example's ``interface`` (its estimator), read with the workers' settings."""
    os.environ.update(env)
    spec = importlib.util.spec_from_file_location("lifelong_example_interface", EXAMPLE / "interface.py")
    assert spec is not None and spec.loader is not None
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module


def measure_run(session: Session, run: RunData, folder: Path, env: dict[str, str]) -> dict[str, Any]:
    """This system and every baseline on one run; R and the metrics of each."""
    system = run_system(session, run, folder, env)
    rounds = [RoundData.read(p) for p in system["round_files"]]
    estimator = _interface(env).estimator
    matrices: dict[str, list[list[float]]] = {SYSTEM: system["matrix"]}
    seconds: dict[str, float] = {SYSTEM: system["seconds"]}
    for name in BASELINES:
        t0 = time.monotonic()
        matrices[name] = RUNNERS[name](rounds, run.test, estimator)
        seconds[name] = round(time.monotonic() - t0, 2)
    first = [0, 0, 1]  # the known tasks are learned in round 1 (row 0), the new one in round 2
    reference = [None, None, matrices["per_task_scratch"][1][2]]
    stream = [system["inferred"]]
    out: dict[str, Any] = {}
    for name, matrix in matrices.items():
        metrics = summarize(matrix, baseline=reference, first=first)
        metrics["samples_transfer_ratio"] = (
            samples_transfer_ratio(system["inferred"], system["unseen"])
            if name == SYSTEM
            else transfer_ratio(name, stream, [system["unseen"]])
        )
        out[name] = {"matrix": matrix, "metrics": metrics, "seconds": seconds[name]}
    return {
        "dataset": run.spec.name,
        "seed": run.seed,
        "tasks": list(run.spec.tasks),
        "train_samples": [len(r.y) for r in rounds],
        "systems": out,
        "system_run": {k: v for k, v in system.items() if k not in ("matrix", "round_files")},
    }


def _stats(values: list[float]) -> dict[str, float]:
    return {
        "mean": statistics.fmean(values),
        "std": statistics.stdev(values) if len(values) > 1 else 0.0,
        "min": min(values),
        "max": max(values),
        "n": len(values),
    }


def aggregate(runs: list[dict[str, Any]]) -> dict[str, Any]:
    """Per data set and system: each metric's and each cell of R's mean, std, min, max over seeds."""
    out: dict[str, Any] = {}
    for dataset in dict.fromkeys(r["dataset"] for r in runs):
        mine = [r for r in runs if r["dataset"] == dataset]
        per_system: dict[str, Any] = {}
        for system in SYSTEMS:
            cells = [r["systems"][system]["matrix"] for r in mine]
            metrics = {}
            for metric in METRICS:
                values = [r["systems"][system]["metrics"][metric] for r in mine]
                metrics[metric] = (
                    _stats([v for v in values if v is not None])
                    if any(v is not None for v in values)
                    else None
                )
            per_system[system] = {
                "metrics": metrics,
                "matrix_mean": [
                    [statistics.fmean(c[k][j] for c in cells) for j in range(len(cells[0][0]))]
                    for k in range(len(cells[0]))
                ],
                "matrix_std": [
                    [
                        statistics.stdev(c[k][j] for c in cells) if len(cells) > 1 else 0.0
                        for j in range(len(cells[0][0]))
                    ]
                    for k in range(len(cells[0]))
                ],
            }
        out[dataset] = {"tasks": mine[0]["tasks"], "seeds": [r["seed"] for r in mine], "systems": per_system}
    return out


# -- output --------------------------------------------------------------------------------------------
def _pm(stats: dict[str, float] | None, digits: int = 3) -> str:
    if stats is None:
        return "-"
    return f"{stats['mean']:+.{digits}f} ± {stats['std']:.{digits}f}".replace("+", " ", 1)


def summary(agg: dict[str, Any]) -> str:
    lines: list[str] = []
    for dataset, data in agg.items():
        lines.append(f"== {dataset} ({len(data['seeds'])} seeds: {data['seeds']}); mean over seeds ==")
        for system in SYSTEMS:
            lines.append(f"-- {system}")
            lines.append(
                format_matrix(data["systems"][system]["matrix_mean"], data["tasks"], ["round 1", "round 2"])
            )
        header = f"{'system':<18}" + "".join(f"{m:>22}" for m in METRICS)
        lines.append(header)
        for system in SYSTEMS:
            metrics = data["systems"][system]["metrics"]
            lines.append(f"{system:<18}" + "".join(f"{_pm(metrics[m]):>22}" for m in METRICS))
        lines.append("")
    return "\n".join(lines)


def plots(agg: dict[str, Any], stem: Path) -> list[Path]:
    """Per data set: accuracy per task per round (mean ± std over seeds), and the metrics as bars."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    def save(fig: Any, what: str) -> Path:
        fig.tight_layout()
        path = stem.with_name(f"{stem.name}-{what}.png")
        fig.savefig(path, dpi=110)
        plt.close(fig)
        return path

    made: list[Path] = []
    for dataset, data in agg.items():
        tasks = data["tasks"]
        fig, axes = plt.subplots(1, len(tasks), figsize=(4 * len(tasks), 3.4), sharey=True)
        for j, (ax, task) in enumerate(zip(axes, tasks, strict=True)):
            for i, system in enumerate(SYSTEMS):
                mean = [row[j] for row in data["systems"][system]["matrix_mean"]]
                std = [row[j] for row in data["systems"][system]["matrix_std"]]
                shift = (i - (len(SYSTEMS) - 1) / 2) * 0.03  # lines that coincide stay visible
                ax.errorbar([1 + shift, 2 + shift], mean, yerr=std, marker="o", capsize=3, label=system)
            ax.set_title(f"{task}" + (" (new in round 2)" if j == len(tasks) - 1 else ""))
            ax.set_xticks([1, 2])
            ax.set_xlabel("round")
            ax.set_ylim(0, 1.02)
        axes[0].set_ylabel("accuracy on the task's test set")
        axes[-1].legend(fontsize=7, loc="lower right")
        fig.suptitle(f"{dataset}: accuracy per task per round (mean ± std over {len(data['seeds'])} seeds)")
        made.append(save(fig, f"{dataset}-accuracy"))

        shown = ("average_accuracy", "bwt", "fwt", "forgetting")
        fig, ax = plt.subplots(figsize=(9, 3.6))
        width = 0.8 / len(SYSTEMS)
        for i, system in enumerate(SYSTEMS):
            metrics = data["systems"][system]["metrics"]
            means = [metrics[m]["mean"] if metrics[m] else 0.0 for m in shown]
            stds = [metrics[m]["std"] if metrics[m] else 0.0 for m in shown]
            xs = [k + (i - (len(SYSTEMS) - 1) / 2) * width for k in range(len(shown))]
            ax.bar(xs, means, width, yerr=stds, capsize=2, label=system)
        ax.axhline(0, color="black", linewidth=0.6)
        ax.set_xticks(range(len(shown)), ["average accuracy", "BWT", "FWT", "forgetting"])
        ax.legend(fontsize=7, ncols=3)
        ax.set_title(f"{dataset}: metrics (mean ± std over {len(data['seeds'])} seeds)")
        made.append(save(fig, f"{dataset}-metrics"))
    return made


def _jsonable(value: Any) -> Any:
    if isinstance(value, Path):
        return str(value)
    if isinstance(value, dict):
        return {k: _jsonable(v) for k, v in value.items()}
    if isinstance(value, list | tuple):
        return [_jsonable(v) for v in value]
    return value


def evaluate(
    datasets: list[str],
    *,
    seeds: list[int],
    fast: bool,
    out_dir: Path,
    workdir: Path,
    parallel: int = 2,
    broker: str | None = None,
    progress: Callable[[str], None] = print,
) -> dict[str, Any]:
    """Run everything; write the JSON and the plots under ``out_dir``; the results."""
    env = {"HIDDEN": "32", "MAX_ITER": "80" if fast else "300"}
    broker = broker or available_brokers()[0]
    session = Session(workdir, broker)
    started = time.monotonic()
    session.start()
    todo = [(dataset, seed) for dataset in datasets for seed in seeds]

    def one(item: tuple[str, int]) -> dict[str, Any]:
        dataset, seed = item
        progress(f"{dataset} seed {seed}: running the system (GM, KB, LC, workers) ...")
        result = measure_run(session, make_run(dataset, seed, fast), workdir / f"{dataset}-{seed}", env)
        sys_run = result["system_run"]
        progress(
            f"{dataset} seed {seed}: {sys_run['seconds']} s, {sys_run['unseen']}/{sys_run['inferred']} "
            f"samples unseen, transfer {sys_run['transfer']}; average accuracy "
            + ", ".join(f"{s} {result['systems'][s]['metrics']['average_accuracy']:.3f}" for s in SYSTEMS)
        )
        return result

    try:
        with ThreadPoolExecutor(max_workers=max(1, parallel), thread_name_prefix="eval-run") as pool:
            runs = list(pool.map(one, todo))
    finally:
        session.stop()
    agg = aggregate(runs)
    size = "fast" if fast else "full"
    stamp = datetime.now(UTC).strftime("%Y%m%dT%H%M%SZ")
    out_dir.mkdir(parents=True, exist_ok=True)
    stem = out_dir / f"lifelong-eval-{size}-{stamp}"
    figures = plots(agg, stem)
    doc = {
        "kind": "lifelong-eval",
        "size": size,
        "created": stamp,
        "seconds": round(time.monotonic() - started, 1),
        "broker": broker,
        "estimator": {"model": "MLPClassifier (examples/lifelong/interface.py)", **env},
        "datasets": {d: {"kind": SPECS[d].kind, "tasks": list(SPECS[d].tasks)} for d in datasets},
        "seeds": seeds,
        "systems": list(SYSTEMS),
        "summary": agg,
        "runs": runs,
        "figures": [p.name for p in figures],
    }
    text = json.dumps(_jsonable(doc), indent=1)
    (stem.with_suffix(".json")).write_text(text)
    (out_dir / f"latest-lifelong-eval-{size}.json").write_text(text)
    progress(summary(agg))
    progress(f"results: {stem.with_suffix('.json')}; figures: {', '.join(p.name for p in figures)}")
    return doc


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(
        prog="python -m benchmarks.lifelong_eval", description=__doc__.split("\n")[0]
    )
    parser.add_argument("--fast", action="store_true", help="small data, one seed (the smoke test's size)")
    parser.add_argument("--seeds", type=int, default=None, help="how many seeds (default 5, 1 with --fast)")
    parser.add_argument("--datasets", default=",".join(SPECS), help=f"comma-separated, of {', '.join(SPECS)}")
    parser.add_argument("--out", type=Path, default=RESULTS, help="where the JSON and the plots go")
    parser.add_argument(
        "--jobs", type=int, default=2, help="runs of the system at once (one job each; default 2)"
    )
    parser.add_argument(
        "--broker", choices=["mosquitto", "amqtt"], default=None, help="default: mosquitto when installed"
    )
    parser.add_argument(
        "--workdir", type=Path, default=None, help="the processes' files (default: a temp dir)"
    )
    parser.add_argument(
        "--plots-from", type=Path, default=None, help="only redraw the plots of a results JSON file"
    )
    args = parser.parse_args(argv)
    if args.plots_from is not None:
        doc = json.loads(args.plots_from.read_text())
        for path in plots(doc["summary"], args.plots_from.with_suffix("")):
            print(path)
        return 0
    # The estimator stops at MAX_ITER on purpose (the workers' setting); say nothing about it.
    warnings.filterwarnings("ignore", message=".*Maximum iterations.*")
    datasets = [d.strip() for d in args.datasets.split(",") if d.strip()]
    unknown = [d for d in datasets if d not in SPECS]
    if unknown or not datasets:
        parser.error(f"unknown data set {', '.join(unknown) or '(none)'}: use {', '.join(SPECS)}")
    seeds = list(range(args.seeds if args.seeds is not None else (1 if args.fast else 5)))
    if not seeds:
        parser.error("--seeds must be at least 1")
    import tempfile

    with tempfile.TemporaryDirectory(prefix="lifelong-eval-") as tmp:
        workdir = args.workdir or Path(tmp)
        try:
            evaluate(
                datasets,
                seeds=seeds,
                fast=args.fast,
                out_dir=args.out,
                workdir=workdir,
                parallel=args.jobs,
                broker=args.broker,
            )
        except EvalError as exc:
            print(f"eval failed: {exc}", file=sys.stderr)
            return 1
    return 0


if __name__ == "__main__":
    sys.exit(main())
