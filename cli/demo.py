"""``lifelong demo``: the whole lifelong-learning loop on one machine, with real processes.

Registered by the dispatcher (``cli/__main__.py``). What it does, in order:

1. starts ``lifelong broker`` (embedded amqtt), ``lifelong gm`` (SQLite store) and ``lifelong lc``
   (one edge node) as child processes on free ports, each in its own session with its log in
   the work directory, plus the demo's inference service (``examples/demo/infer.py serve``);
2. applies ``examples/demo/dataset.yaml`` and ``lifelonglearningjob.yaml`` (placeholders such as
   ``{{WORKDIR}}`` filled in) through the GM's API, as ``lifelong apply`` does;
3. feeds samples of scikit-learn's bundled handwritten digits into the dataset's index file,
   one phase per round, with a shift between phases (phase 1 holds only the digits 0-4,
   phase 2 all ten, later phases all ten drawn thicker), so a model of an earlier round is
   worse on the new data and retraining matters;
4. prints the job's progress live (stage and state, samples, the workers' metrics, what the
   inference service serves) until ``--rounds`` rounds were deployed (or kept), then a
   summary table, and stops every child (also on Ctrl-C or SIGTERM; also on a failure).

Exit status: 0 when every round completed; 1 when a process died, a stage failed or the
deadline (``--timeout``) passed, with one line saying which; 2 for a usage mistake.
"""

from __future__ import annotations

import argparse
import contextlib
import json
import os
import shutil
import signal
import socket
import subprocess
import sys
import tempfile
import time
import urllib.error
import urllib.request
from dataclasses import dataclass, field
from pathlib import Path
from types import FrameType
from typing import TYPE_CHECKING, Any

if TYPE_CHECKING:
    from lifelong.demo_lifelong import LifelongDemo

NODE = "edge-demo"
NAMESPACE = "default"
JOB = "demo-digits"
DATASET = "demo-digits"
THRESHOLD = 199  # as in examples/demo/lifelonglearningjob.yaml: a round per 200 samples
FEED_PER_SECOND = 80.0
HOLDOUT = 300  # digits kept back to query the inference service with


class DemoFailed(Exception):
    """The demo cannot go on: printed as one line, exit status 1."""


# -- helpers --------------------------------------------------------------------------------


def free_port() -> int:
    with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as s:
        s.bind(("127.0.0.1", 0))
        return int(s.getsockname()[1])


def port_open(port: int) -> bool:
    try:
        with socket.create_connection(("127.0.0.1", port), timeout=0.2):
            return True
    except OSError:
        return False


def examples_dir(name: str = "demo") -> Path | None:
    """``examples/NAME`` of the source tree this package was installed from (editable)."""
    here = Path(__file__).resolve().parent
    for root in (here.parent, Path.cwd()):
        candidate = root / "examples" / name
        if (candidate / "lifelonglearningjob.yaml").is_file():
            return candidate
    return None


def _fmt(value: Any) -> str:
    if isinstance(value, float):
        return f"{value:.3f}"
    if value is None:
        return "-"
    return str(value)


class Child:
    """One child process in its own session (so Ctrl-C reaches only the demo), log to a file."""

    def __init__(self, name: str, argv: list[str], log_path: Path) -> None:
        self.name = name
        self.argv = argv
        self.log_path = log_path
        self.proc: subprocess.Popen[bytes] | None = None

    def start(self) -> None:
        env = {k: v for k, v in os.environ.items() if not k.startswith("LIFELONG_")}
        env["PYTHONUNBUFFERED"] = "1"
        with self.log_path.open("ab") as log:
            self.proc = subprocess.Popen(
                self.argv,
                stdout=log,
                stderr=subprocess.STDOUT,
                stdin=subprocess.DEVNULL,
                env=env,
                start_new_session=True,
            )

    def check(self) -> None:
        if self.proc is not None and self.proc.poll() is not None:
            raise DemoFailed(f"{self.name} exited with status {self.proc.returncode}; see {self.log_path}")

    def stop(self, grace: float = 10.0) -> None:
        """SIGTERM to its process group, SIGKILL after ``grace`` seconds."""
        proc = self.proc
        if proc is None:
            return
        if proc.poll() is None:
            with contextlib.suppress(ProcessLookupError, PermissionError):
                os.killpg(proc.pid, signal.SIGTERM)
            with contextlib.suppress(subprocess.TimeoutExpired):
                proc.wait(grace)
        with contextlib.suppress(ProcessLookupError, PermissionError):
            os.killpg(proc.pid, signal.SIGKILL)  # anything left in its group
        with contextlib.suppress(subprocess.TimeoutExpired):
            proc.wait(5)
        self.proc = None


def http(method: str, url: str, body: Any = None, timeout: float = 5.0) -> Any:
    data = None if body is None else json.dumps(body).encode()
    req = urllib.request.Request(url, data=data, method=method)
    if data is not None:
        req.add_header("Content-Type", "application/json")
    with urllib.request.urlopen(req, timeout=timeout) as resp:
        raw = resp.read()
    return json.loads(raw) if raw[:1] in (b"{", b"[") else raw


def wait_until(predicate: Any, timeout: float, what: str, children: list[Child]) -> None:
    deadline = time.monotonic() + timeout
    while not predicate():
        for child in children:
            child.check()
        if time.monotonic() > deadline:
            raise DemoFailed(f"timed out after {timeout:.0f}s waiting for {what}")
        time.sleep(0.1)


class Core:
    """The demo's broker, GM and LC (one edge node ``node``): child processes on free ports, logs
    in ``workdir/logs``; ``gm_extra`` adds options to the GM's command line."""

    def __init__(self, workdir: Path, node: str, gm_extra: list[str] | None = None) -> None:
        self.node = node
        logs = workdir / "logs"
        logs.mkdir(parents=True, exist_ok=True)
        (workdir / "gm").mkdir(exist_ok=True)
        self.broker_port, api_port, self.worker_port = free_port(), free_port(), free_port()
        self.broker_url = f"mqtt://127.0.0.1:{self.broker_port}"
        self.server = f"http://127.0.0.1:{api_port}"
        self.console = f"{self.server}/ui/"  # the GM's web console (docs/console.md)
        base = [sys.executable, "-m", "lifelong"]
        self.broker = Child("broker", [*base, "broker", "--port", str(self.broker_port)], logs / "broker.log")
        gm = [*base, "gm", "--broker", self.broker_url, "--store", f"sqlite:{workdir / 'gm' / 'store.db'}"]
        gm += ["--api-port", str(api_port), "--job-backoff-base", "2"]
        gm += ["--resend-base", "0.5", "--resend-cap", "5", *(gm_extra or [])]
        self.gm = Child("gm", gm, logs / "gm.log")
        lc = [*base, "lc", "--node", node, "--broker", self.broker_url, "--state-dir", str(workdir / "lc")]
        lc += ["--worker-api-port", str(self.worker_port), "--metrics-port", "0", "--poll-seconds", "0.3"]
        lc += ["--ack-timeout-seconds", "5", "--stop-workers-on-exit", "--worker-stop-grace-seconds", "3"]
        self.lc = Child("lc", lc, logs / "lc.log")
        self.children = [self.lc, self.gm, self.broker]  # stopped in this order

    def start(self, say: Any, watched: list[Child], gm_ready: Any = None) -> None:
        """Start the broker, the GM and the LC, each once the one before answers; ``watched``
        are checked for an early exit while waiting; ``gm_ready`` (a predicate) also waits for
        something of the GM's (e.g. its knowledge base's API)."""
        self.broker.start()
        wait_until(lambda: port_open(self.broker_port), 30, "the broker", watched)
        say(f"broker   {self.broker_url}  (embedded amqtt, pid {self.broker.proc and self.broker.proc.pid})")
        self.gm.start()
        wait_until(self._gm_healthy, 60, "the GM's API", watched)
        if gm_ready is not None:
            wait_until(gm_ready, 60, "the GM's knowledge base", watched)
        say(f"gm       {self.server}  (SQLite store, pid {self.gm.proc and self.gm.proc.pid})")
        say(f"console: {self.console}  (the web console: open it in a browser to watch the job)")
        self.lc.start()
        wait_until(self._node_online, 60, f"node {self.node} to say hello to the GM", watched)
        pid = self.lc.proc and self.lc.proc.pid
        say(f"lc       node {self.node}, worker API :{self.worker_port}  (pid {pid})")

    def _gm_healthy(self) -> bool:
        try:
            return bool(http("GET", self.server + "/healthz") == b"ok\n")
        except (urllib.error.URLError, OSError):
            return False

    def _node_online(self) -> bool:
        try:
            items = http("GET", self.server + "/api/v1/nodes")["items"]
        except (urllib.error.URLError, OSError):
            return False
        return any(n["node"] == self.node and n["online"] for n in items)


def apply_example(workdir: Path, examples: Path, server: str, node: str, say: Any) -> None:
    """Fill in the placeholders of ``examples``' Dataset and LifelongLearningJob (written to
    ``workdir/manifests``) and apply them through the GM's API, as ``lifelong apply`` does."""
    from lifelong.client.api import Client
    from lifelong.client.files import read_resources

    values = {
        "{{WORKDIR}}": str(workdir),
        "{{NODE}}": node,
        "{{PYTHON}}": sys.executable,
        "{{EXAMPLES}}": str(examples),
    }
    rendered = workdir / "manifests"
    rendered.mkdir(exist_ok=True)
    client = Client(server)
    for name in ("dataset.yaml", "lifelonglearningjob.yaml"):
        text = (examples / name).read_text()
        for key, value in values.items():
            text = text.replace(key, value)
        (rendered / name).write_text(text)
        for res in read_resources([str(rendered / name)]):
            result = client.apply(res)
            say(f"applied {res['kind']} {res['metadata']['name']}: {result['result']}")


# -- the data -------------------------------------------------------------------------------


@dataclass
class Phase:
    title: str
    lines: list[str]
    queries: tuple[list[list[float]], list[int]]


class Digits:
    """scikit-learn's bundled handwritten digits (1,797 8x8 images), split into phases."""

    def __init__(self, seed: int = 7) -> None:
        try:
            import numpy as np
            from sklearn.datasets import load_digits
        except ImportError as exc:
            raise DemoFailed(
                f"the demo needs scikit-learn and numpy ({exc.name} is missing): "
                "pip install 'lifelong[examples]' (make demo does)"
            ) from None
        self.np = np
        digits = load_digits()
        rng = np.random.default_rng(seed)
        order = rng.permutation(len(digits.target))
        self.x = digits.data[order].astype(int)
        self.y = digits.target[order].astype(int)
        self.rng = rng
        self.hold_x, self.hold_y = self.x[:HOLDOUT], self.y[:HOLDOUT]
        self.pool = list(range(HOLDOUT, len(self.y)))

    @staticmethod
    def header() -> str:
        return "label," + ",".join(f"f{i}" for i in range(64))

    def _thicker(self, x: Any) -> Any:
        return self.np.clip(x + (x > 0) * 4, 0, 16)

    def phase(self, number: int, size: int) -> Phase:
        np = self.np
        if number == 1:
            title, classes, drift = "digits 0-4 only", set(range(5)), False
        elif number == 2:
            title, classes, drift = "all digits 0-9", set(range(10)), False
        else:
            title, classes, drift = "all digits, thicker strokes", set(range(10)), True
        picked = [i for i in self.pool if self.y[i] in classes][:size]
        if len(picked) < size:  # the bundled set is small: reuse samples in later phases
            extra = self.rng.choice([i for i in range(HOLDOUT, len(self.y)) if self.y[i] in classes], size)
            picked += [int(i) for i in extra[: size - len(picked)]]
        self.pool = [i for i in self.pool if i not in set(picked)]
        x = self.x[picked]
        x = self._thicker(x) if drift else x
        lines = [
            f"{label}," + ",".join(str(int(v)) for v in row)
            for label, row in zip(self.y[picked], x, strict=True)
        ]
        hold = np.array([i for i in range(HOLDOUT) if self.hold_y[i] in classes])
        qx = self.hold_x[hold]
        qx = self._thicker(qx) if drift else qx
        return Phase(title, lines, (qx.astype(float).tolist(), self.hold_y[hold].tolist()))


# -- the run --------------------------------------------------------------------------------


@dataclass
class RoundResult:
    number: int
    phase: str = ""
    samples: int | None = None
    train_samples: int | None = None
    new_score: float | None = None
    deployed_score: float | None = None
    decision: str = ""
    served_round: int | None = None
    live_accuracy: float | None = None
    done: bool = False


@dataclass
class Demo:
    workdir: Path
    rounds: int
    keep_running: bool
    timeout: float
    examples: Path
    show_workdir: bool = True
    started: float = field(default_factory=time.monotonic)
    children: list[Child] = field(default_factory=list)
    results: dict[int, RoundResult] = field(default_factory=dict)

    def say(self, text: str) -> None:
        print(f"[{time.monotonic() - self.started:6.1f}s] {text}", flush=True)

    # -- start-up ----------------------------------------------------------------------------
    def start(self) -> None:
        self.core = Core(self.workdir, NODE)
        self.broker_url, self.server, self.console = self.core.broker_url, self.core.server, self.core.console
        self.infer_port = free_port()
        infer = Child(
            "inference service",
            [
                sys.executable,
                str(self.examples / "infer.py"),
                "serve",
                "--port",
                str(self.infer_port),
                "--deploy-dir",
                str(self.workdir / "output" / "deploy"),
            ],
            self.workdir / "logs" / "infer.log",
        )
        self.children = [infer, *self.core.children]  # stopped in this order
        self.core.start(self.say, self.children)
        infer.start()
        wait_until(lambda: port_open(self.infer_port), 60, "the inference service", self.children)
        self.say(f"infer    http://127.0.0.1:{self.infer_port}/predict  (examples/demo/infer.py serve)")

    def apply(self) -> None:
        data = self.workdir / "data" / "digits.csv"
        data.parent.mkdir(parents=True, exist_ok=True)
        data.write_text(Digits.header() + "\n")
        apply_example(self.workdir, self.examples, self.server, NODE, self.say)
        self.data = data

    # -- watching ----------------------------------------------------------------------------
    def job(self) -> dict[str, Any]:
        try:
            obj: dict[str, Any] = http("GET", f"{self.server}/api/v1/LifelongLearningJob/{NAMESPACE}/{JOB}")
        except (urllib.error.URLError, OSError) as exc:
            raise DemoFailed(f"cannot read the job from the GM: {exc}") from None
        return obj

    def dataset_count(self) -> int:
        try:
            obj = http("GET", f"{self.server}/api/v1/Dataset/{NAMESPACE}/{DATASET}")
        except (urllib.error.URLError, OSError):
            return 0
        return int((obj.get("status") or {}).get("numberOfSamples") or 0)

    def query_inference(self, phase: Phase) -> tuple[int | None, float | None]:
        qx, qy = phase.queries
        try:
            out = http("POST", f"http://127.0.0.1:{self.infer_port}/predict", {"instances": qx})
        except urllib.error.HTTPError:
            return None, None  # 503: nothing deployed yet
        except (urllib.error.URLError, OSError):
            return None, None
        predictions = out.get("predictions") or []
        correct = sum(1 for p, y in zip(predictions, qy, strict=False) if p == y)
        return int(out["model"]["round"]), (correct / len(qy) if qy else None)

    def run(self) -> int:
        digits = Digits()
        size = THRESHOLD + 1
        phase_no = 1
        phase = digits.phase(1, size)
        self.say(f"phase 1: feeding {size} samples ({phase.title}) into {self.data}")
        fed = 0
        feed_start = time.monotonic()
        seen = 0
        last_count = -1
        last_count_print = 0.0
        served: int | None = None
        deadline = time.monotonic() + self.timeout
        finished_at: float | None = None
        while True:
            for child in self.children:
                child.check()
            now = time.monotonic()
            if now > deadline and finished_at is None:
                done = sum(1 for r in self.results.values() if r.done)
                raise DemoFailed(
                    f"timed out after {self.timeout:.0f}s with {done} of {self.rounds} rounds done; "
                    f"logs in {self.workdir / 'logs'}"
                )
            # feed this phase's samples at FEED_PER_SECOND
            due = min(len(phase.lines), int((now - feed_start) * FEED_PER_SECOND))
            if due > fed:
                with self.data.open("a") as fh:
                    fh.writelines(line + "\n" for line in phase.lines[fed:due])
                fed = due
            # the job's history
            conds = (self.job().get("status") or {}).get("conditions") or []
            rnd = sum(1 for c in conds[:seen] if c.get("stage") == "Train" and c.get("type") == "Ready")
            for cond in conds[seen:]:
                if cond.get("stage") == "Train" and cond.get("type") == "Ready":
                    rnd += 1
                self.on_condition(rnd, cond, phase)
            seen = len(conds)
            count = self.dataset_count()
            if count != last_count and (now - last_count_print > 2.0 or fed == len(phase.lines)):
                if count or last_count > 0:
                    self.say(f"dataset {DATASET}: {count} samples on {NODE}")
                last_count, last_count_print = count, now
            model_round, live = self.query_inference(phase)
            if model_round is not None and model_round != served:
                served = model_round
                self.say(
                    f"inference service now serves the model of round {model_round}; "
                    f"accuracy on {len(phase.queries[1])} held-out samples of phase {phase_no}: {_fmt(live)}"
                )
            if rnd in self.results:
                self.results[rnd].served_round = model_round
                self.results[rnd].live_accuracy = live
            done = sum(1 for r in self.results.values() if r.done)
            if finished_at is None and done >= self.rounds:
                finished_at = now
                self.summary()
                if not self.keep_running:
                    return 0
                self.say(
                    f"--keep-running: still feeding and retraining; watch it at {self.console}, try "
                    f"`lifelong get ll --server {self.server}` or "
                    f"`lifelong tail --broker {self.broker_url}`; Ctrl-C stops everything"
                )
            # next phase once this round was deployed and all of its samples are in
            if fed == len(phase.lines) and done >= phase_no and (self.keep_running or phase_no < self.rounds):
                phase_no += 1
                phase = digits.phase(phase_no, size)
                fed, feed_start = 0, time.monotonic()
                self.say(f"phase {phase_no}: feeding {size} samples ({phase.title})")
                model_round, live = self.query_inference(phase)
                if model_round is not None:
                    self.say(
                        f"inference service (model of round {model_round}) on held-out samples of "
                        f"phase {phase_no}: accuracy {_fmt(live)}"
                    )
            time.sleep(0.25)

    def on_condition(self, rnd: int, cond: dict[str, Any], phase: Phase) -> None:
        stage, ctype = cond.get("stage"), cond.get("type")
        result = self.results.setdefault(rnd, RoundResult(rnd)) if rnd else None
        line = f"job {JOB} round {rnd}: {stage}/{ctype}" if rnd else f"job {JOB}: {stage}/{ctype}"
        data: Any = None
        with contextlib.suppress(ValueError, TypeError):
            data = json.loads(cond.get("data") or "null")
        if stage == "Train" and ctype == "Ready" and result is not None:
            result.phase = phase.title
            if isinstance(data, dict):
                result.samples = data.get("numberOfSamples")
                line += f"  ({result.samples} new samples)"
        metrics: dict[str, Any] = {}
        holder = (data.get("output") or data) if isinstance(data, dict) else None
        models = holder.get("models") if isinstance(holder, dict) else None
        if isinstance(models, list) and models and isinstance(models[0], dict):
            metrics = models[0].get("metrics") or {}
        if ctype == "Completed" and result is not None:
            if stage == "Train":
                result.train_samples = metrics.get("samples")
                line += (
                    f"  trained on {metrics.get('samples')} samples, "
                    f"accuracy on this round's eval pool {_fmt(metrics.get('test_accuracy'))}"
                )
            elif stage == "Eval":
                result.new_score = metrics.get("accuracy")
                result.deployed_score = metrics.get("deployed_accuracy")
                result.decision = str(metrics.get("decision") or "")
                line += (
                    f"  new model {_fmt(result.new_score)} vs deployed {_fmt(result.deployed_score)}"
                    f" on {metrics.get('eval_samples')} eval samples -> {result.decision or '?'}"
                )
            elif stage == "Deploy":
                result.done = True
        if ctype == "Failed":
            reason = f"{cond.get('reason', '')}: {cond.get('message', '')}".strip(": ")
            workers = self.workdir / "lc" / "workers"
            raise DemoFailed(f"{stage} failed in round {rnd} ({reason}); worker logs under {workers}")
        self.say(line)

    def summary(self) -> None:
        rows = [["ROUND", "PHASE", "NEW SAMPLES", "TRAINED ON", "NEW MODEL", "DEPLOYED MODEL", "DEPLOYED"]]
        for n in sorted(self.results):
            r = self.results[n]
            if not r.done:
                continue
            rows.append(
                [
                    str(n),
                    r.phase,
                    _fmt(r.samples),
                    _fmt(r.train_samples),
                    _fmt(r.new_score),
                    _fmt(r.deployed_score),
                    {"deploy": "yes", "keep": "no (kept)"}.get(r.decision, r.decision or "?"),
                ]
            )
        widths = [max(len(row[i]) for row in rows) for i in range(len(rows[0]))]
        print(flush=True)
        print(f"Summary: {len(rows) - 1} rounds in {time.monotonic() - self.started:.0f}s", flush=True)
        for row in rows:
            print("  " + "  ".join(cell.ljust(widths[i]) for i, cell in enumerate(row)).rstrip(), flush=True)
        last = self.results[max(self.results)]
        print(
            f"  inference service: serving the model of round {_fmt(last.served_round)}, "
            f"accuracy {_fmt(last.live_accuracy)} on held-out samples of the latest phase",
            flush=True,
        )
        if self.show_workdir:
            print(f"  work directory: {self.workdir} (logs in {self.workdir / 'logs'})", flush=True)
        print(flush=True)

    def finished(self) -> bool:
        return sum(1 for r in self.results.values() if r.done) >= self.rounds

    def stop(self) -> None:
        for child in self.children:
            child.stop()


# -- the command ----------------------------------------------------------------------------


def _raise_interrupt(signum: int, frame: FrameType | None) -> None:
    raise KeyboardInterrupt


SCENARIOS = {"lifelong": "lifelong", "digits": "demo"}
"""Each scenario and the folder of ``examples/`` it runs."""


def cmd_demo(args: argparse.Namespace) -> int:
    # a LifelongError, not lifelong.__main__.UserError: under `python -m lifelong` that module
    # runs as __main__, and a UserError imported from lifelong.__main__ would be another class
    from lifelong.common.errors import ConfigError as UserError

    scenario = args.scenario
    if scenario == "digits" and args.rounds is not None and args.rounds < 1:
        raise UserError("--rounds must be at least 1")
    if scenario == "lifelong" and args.rounds is not None:
        raise UserError("--rounds is for --scenario digits (the lifelong scenario runs its 2 rounds)")
    rounds = 2 if args.rounds is None else args.rounds
    folder = SCENARIOS[scenario]
    examples = Path(args.examples) if args.examples else examples_dir(folder)
    if examples is None or not (examples / "lifelonglearningjob.yaml").is_file():
        raise UserError(
            f"cannot find examples/{folder} (run from the lifelong source tree, or pass --examples DIR)"
        )
    temporary = args.workdir is None
    workdir = Path(tempfile.mkdtemp(prefix="lifelong-demo-")) if temporary else Path(args.workdir)
    if not temporary:
        if workdir.exists() and any(workdir.iterdir()):
            raise UserError(f"--workdir {workdir} is not empty (the demo starts from scratch)")
        workdir.mkdir(parents=True, exist_ok=True)
    workdir = workdir.resolve()
    show_workdir = args.keep_running or not temporary
    demo: Demo | LifelongDemo
    if scenario == "digits":
        demo = Demo(workdir, rounds, args.keep_running, args.timeout, examples.resolve(), show_workdir)
        print(
            f"lifelong demo --scenario digits: {rounds} rounds of train -> eval -> deploy; "
            f"work directory {workdir}",
            flush=True,
        )
    else:
        from lifelong.demo_lifelong import LifelongDemo

        demo = LifelongDemo(workdir, args.timeout, examples.resolve(), show_workdir, args.keep_running)
        print(
            "lifelong demo: a job learns one model per known task, meets a task no model has seen, "
            f"gets it labelled and learns it from the closest known task; work directory {workdir}",
            flush=True,
        )
    previous = signal.signal(signal.SIGTERM, _raise_interrupt)
    previous_int = signal.signal(signal.SIGINT, _raise_interrupt)  # also when started with SIGINT ignored
    status = 1
    try:
        demo.start()
        demo.apply()
        status = demo.run()
    except DemoFailed as exc:
        print(f"demo failed: {exc}", file=sys.stderr, flush=True)
        status = 1
    except KeyboardInterrupt:
        status = 0 if args.keep_running and demo.finished() else 130
        print("\ninterrupted; stopping the demo's processes", file=sys.stderr, flush=True)
    finally:
        # a second Ctrl-C or SIGTERM must not cut the clean-up short
        signal.signal(signal.SIGTERM, signal.SIG_IGN)
        signal.signal(signal.SIGINT, signal.SIG_IGN)
        try:
            demo.stop()
        finally:
            signal.signal(signal.SIGTERM, previous)
            signal.signal(signal.SIGINT, previous_int)
    if status == 0 and temporary:
        shutil.rmtree(workdir, ignore_errors=True)
    elif status != 0:
        print(f"logs kept in {workdir / 'logs'}", file=sys.stderr)
    return status


def register(sub: Any) -> None:
    p = sub.add_parser(
        "demo",
        help="run lifelong learning on this machine (broker + GM with its knowledge base + LC + a job)",
        description=(
            "Start the embedded broker, a GM (with the knowledge base in its process) and an LC, "
            "apply a Dataset and a LifelongLearningJob whose real workers learn from scikit-learn's "
            "bundled handwritten digits, and show the job live until it is done; then print a "
            "summary and stop everything. Scenarios: 'lifelong' (the default; examples/lifelong): "
            "round 1 learns one model per known camera and stores them in the knowledge base, the "
            "edge's inference meets a camera no model has seen and ships its samples to the "
            "knowledge base, the demo labels them from the data set's own labels (lifelong kb "
            "label), round 2 learns the new camera starting from the closest known one; it ends "
            "with the accuracy per task per round and the lifelong-learning metrics. 'digits' "
            "(examples/demo): one classifier retrained on digits that shift between phases, "
            "--rounds rounds of train -> eval -> deploy with an inference service."
        ),
    )
    p.add_argument(
        "--scenario",
        choices=sorted(SCENARIOS),
        default="lifelong",
        help="lifelong (default): an unseen task found at the edge, labelled and learned with "
        "knowledge transferred from the closest known task; digits: one model retrained on "
        "shifting digits",
    )
    p.add_argument(
        "--rounds", type=int, help="--scenario digits: rounds to run before the summary (default 2)"
    )
    p.add_argument(
        "--keep-running",
        action="store_true",
        help="after the summary keep everything running until Ctrl-C (digits: keep feeding and retraining)",
    )
    p.add_argument(
        "--workdir",
        help="an empty or new directory for state and logs (default: a temporary one, removed on success)",
    )
    p.add_argument(
        "--examples",
        help="the scenario's folder (default: examples/lifelong or examples/demo of the source tree)",
    )
    p.add_argument(
        "--timeout", type=float, default=600.0, help="give up after this many seconds (default 600)"
    )
    p.set_defaults(handler=cmd_demo)
