"""The lifelong-learning manager: decides when a job's ``Waiting`` stage becomes ``Ready``.

Called by the service's control loop (``step``) every poll and whenever a downstream change
arrives. It reads the jobs the GM sent (their last condition drives everything: the stages in
docs/architecture.md and ``lifelong.common.statemachine``), the local dataset counts and its
own per-job progress, and reports ``ready`` through the outbox. Progress and the report are
committed in one transaction, so after a crash either both happened or neither did.

Per job, in the ``progress`` table::

    round        the last training round this node fired (the GM's round is the number of
                 Train/Ready conditions; ours may be one ahead while our report travels)
    cursor       samples of the dataset already consumed by a round (never counted twice)
    trainCount, evalCount, trainFile, evalFile   the cumulative pools and their latest files
    acted        ["Eval/3", "Deploy/3", ...]: stages this node already reported ready for
    uid          the job's metadata.uid (or creationTimestamp): a job re-created under the same
                 name while this node was offline starts its progress over

Cost of a step: a job is evaluated again only when something its outcome depends on may
have changed: its object (resourceVersion), its Dataset's object or sample count, our own
progress (a step that wrote it evaluates the job once more), or time (the trigger's
``checkPeriodSeconds`` runs out, 60 s by default; a missing model or a failed copy: every
step). Any other job costs nothing at all, not even a look-up: a step finds the jobs to
evaluate from an index (the jobs the store lists as changed, those whose last step wrote or
failed, one check per Dataset state that jobs depend on, a heap of wake times), so its cost
follows what changed, not how many jobs are held. Nothing is written for a job whose progress
did not change. What the manager keeps in memory about a job (its memo,
uid and last trigger check) is one ``_JobRecord``, dropped once when the job goes; a restarted
LC evaluates every job once, from the progress in the database.

Failures: a job (or its Dataset) that the API models refuse, or whose step raises, is logged
once with its key, counted (``lifelong_lc_item_failures_total{loop="jobs"}``) and skipped; the
other jobs go on. A refused job is not evaluated again until it or its Dataset changes.

Who acts (``LLJobSpec.deciding_node``): Train on the Dataset's node; Eval on the eval template's
``nodeName`` (default: the dataset's node); Deploy likewise with the deploy template. The trigger
is the model's (``LLTrigger``: Sedna's timer, condition and ``checkPeriodSeconds``).

Train/Waiting: when the trigger fires on the samples after ``cursor``, they are split by
``trainProb`` with a deterministic hash of (job, sample index), so a restart never changes
the split; the round's files are ``outputDir/data/train/<round>/train.<fmt>`` and
``outputDir/data/eval/<round>/eval.<fmt>``, each holding the whole pool so far (csv keeps its
header). Eval/Waiting: ready with the models of the last Train/Completed condition (its
``data``), or those the round's train worker reported here. Deploy/Waiting: the evaluated
model (last Eval/Completed, else the trained one) is copied under ``outputDir/deploy/`` and
reported ready with its new url.
"""

from __future__ import annotations

import hashlib
import heapq
import json
import logging
import os
import shutil
import threading
import time
from collections.abc import Callable
from dataclasses import dataclass, field
from datetime import datetime
from pathlib import Path
from typing import Any, TypeAlias, TypeVar, cast

from pydantic import JsonValue

from lifelong.common.api import Dataset, LifelongLearningJob, parse_resource
from lifelong.common.errors import ValidationError
from lifelong.common.messages import JobReady
from lifelong.common.stages import ConditionType, Stage
from lifelong.common.statemachine import Condition
from lifelong.edge.dataset_monitor import DatasetMonitor, local_path, read_samples
from lifelong.edge.db import Store
from lifelong.edge.metrics import ItemFailures
from lifelong.edge.outbox import Outbox, OutboxFull

log = logging.getLogger("lifelong.edge.manager")

JOB_KIND = "LifelongLearningJob"
DATASET_KIND = "Dataset"

Wake: TypeAlias = tuple[float, float] | None
"""When a job whose inputs did not change must be evaluated again: ``None``, never; else
``(since, period)``: once ``mono() - since >= period``, the very test of ``LLTrigger.due``."""

ALWAYS: Wake = (0.0, float("-inf"))
"""Evaluated at every step."""


ParsedT = TypeVar("ParsedT", LifelongLearningJob, Dataset)


def parse_as(cls: type[ParsedT], raw: dict[str, Any], source: str) -> ParsedT:
    """``raw`` as a model of ``cls``; ``ValidationError`` naming ``source`` if the models refuse it."""
    model = parse_resource(raw, source=source)
    if not isinstance(model, cls):
        raise ValidationError([("kind", f"must be {cls.KIND}")], source=source)
    return model


def held_dataset(store: Store, ns: str, name: str) -> tuple[Dataset, dict[str, Any]] | None:
    """The Dataset held, as its model and its wire spec; None if none is held.

    Parsed once per version (``Store.parsed``), a refusal too: what is kept for a refused
    version is its errors, and each call raises a new ``ValidationError`` from them. Raising
    one kept exception again would add each raise's frames to its traceback, for as long as
    the refused version is held."""
    source = f"Dataset {ns}/{name}"

    def parse(raw: dict[str, Any]) -> Dataset | list[tuple[str, str]]:
        try:
            return parse_as(Dataset, raw, source)
        except ValidationError as exc:
            return exc.errors

    held = store.parsed(DATASET_KIND, ns, name, parse)
    if held is None:
        return None
    _rv, obj, model = held
    if not isinstance(model, Dataset):
        raise ValidationError(model, source=source)
    return model, obj.get("spec") or {}


@dataclass(frozen=True, slots=True)
class _Memo:
    """What a job's last evaluation depended on; while all of it is unchanged, it is skipped."""

    rv: str
    ds_name: str | None
    ds_rv: str | None
    ds_spec: dict[str, Any] | None  # set when the outcome depends on the dataset's sample count
    count: tuple[int | None, str] | None
    wake: Wake


_Sig: TypeAlias = tuple[str, str, str | None, tuple[int | None, str] | None, bool]
"""What a memo depends on of its Dataset: (ns, name, rv held, count, whether the count mattered)."""


@dataclass(slots=True)
class _Group:
    """The jobs whose memos depend on the same state of one Dataset: checked once per step."""

    spec: dict[str, Any] | None
    """The Dataset's spec to count its samples with (None: the count did not matter)."""
    keys: set[tuple[str, str]] = field(default_factory=set)


def _sig(key: tuple[str, str], memo: _Memo) -> _Sig | None:
    """The Dataset state ``memo`` depends on, None if it depends on no Dataset."""
    if memo.ds_name is None:
        return None
    return (key[0], memo.ds_name, memo.ds_rv, memo.count, memo.ds_spec is not None)


@dataclass(slots=True)
class _JobRecord:
    """What the manager keeps in memory about one job held; dropped when the job goes."""

    rv: str
    """The resourceVersion held."""
    uid: str = ""
    """Its metadata.uid (or creationTimestamp) when last evaluated: fresh progress carries it."""
    memo: _Memo | None = None
    """What its last evaluation depended on, if it may be skipped while that is unchanged."""
    last_check: float | None = None
    """When (monotonic) its trigger was last checked."""


@dataclass(slots=True)
class _Outcome:
    """What one evaluation of a job found."""

    wake: Wake = None
    wrote: bool = False
    """Its progress was written: evaluated again at the next step, with the new progress."""
    counted: tuple[dict[str, Any], tuple[int | None, str]] | None = None
    """The Dataset spec and count it depended on, if it read the count."""


def split_is_train(ns: str, job: str, index: int, train_prob: float) -> bool:
    """Deterministic split of sample ``index``: the same answer after any restart."""
    digest = hashlib.sha256(f"{ns}/{job}:{index}".encode()).digest()
    return int.from_bytes(digest[:8], "big") / 2**64 < train_prob


def _json(text: str) -> Any:
    try:
        return json.loads(text) if text else None
    except ValueError:
        return None


def models_in(data: Any) -> list[dict[str, Any]]:
    """Models named by a condition's ``data`` (upstream puts them under ``output.models``)."""
    if not isinstance(data, dict):
        return []
    for holder in (data.get("output"), data):
        if isinstance(holder, dict):
            models = holder.get("models")
            if isinstance(models, list) and models:
                return [m for m in models if isinstance(m, dict)]
            model = holder.get("model")
            if isinstance(model, dict):
                return [model]
    return []


def fresh_progress(uid: str = "") -> dict[str, Any]:
    return {"round": 0, "cursor": 0, "trainCount": 0, "evalCount": 0, "acted": [], "uid": uid}


def _write_atomic(path: Path, lines: list[str]) -> None:
    path.parent.mkdir(parents=True, exist_ok=True)
    tmp = path.with_name(path.name + ".tmp")
    with tmp.open("w") as fh:
        fh.writelines(line + "\n" for line in lines)
        fh.flush()
        os.fsync(fh.fileno())
    os.replace(tmp, path)


class Manager:
    """Runs the per-job decisions; ``step()`` is called from one thread only."""

    def __init__(
        self,
        store: Store,
        outbox: Outbox,
        node: str,
        monitor: DatasetMonitor,
        *,
        worker_outputs: Callable[[str, str, str, int], list[dict[str, Any]]] | None = None,
        local_now: Callable[[], datetime] = datetime.now,
        mono: Callable[[], float] = time.monotonic,
        failures: ItemFailures | None = None,
    ) -> None:
        self.store = store
        self.outbox = outbox
        self.node = node
        self.monitor = monitor
        self.worker_outputs = worker_outputs
        self.local_now = local_now
        self.mono = mono
        self.failures = failures if failures is not None else ItemFailures(log)
        self._warned: set[str] = set()
        self._forget: set[tuple[str, str]] = set()
        self._forget_lock = threading.Lock()
        self._jobs: dict[tuple[str, str], _JobRecord] | None = None  # every job held
        # The index of what each job's memo depends on (``step``): a job without a memo is in
        # _due; one with a memo is in its Dataset's group and/or the wake heap, or in neither
        # (then only a change of its own object evaluates it again).
        self._due: set[tuple[str, str]] = set()
        self._groups: dict[_Sig, _Group] = {}
        self._wakes: list[tuple[float, int, tuple[str, str], _Memo]] = []
        self._wake_n = 0  # the heap's tie-break: memos are not ordered
        self.rounds_fired = 0
        self.evaluated = 0  # jobs evaluated (not skipped) so far

    def _warn_once(self, key: str, message: str) -> None:
        if key not in self._warned:
            self._warned.add(key)
            log.warning(message)

    def _record(self, ns: str, name: str) -> _JobRecord | None:
        return self._jobs.get((ns, name)) if self._jobs is not None else None

    # -- progress --------------------------------------------------------------------------
    def progress(self, ns: str, name: str) -> dict[str, Any]:
        rec = self.store.get_record("progress", ns, name)
        if rec is not None:
            return rec
        job = self._record(ns, name)
        return fresh_progress(job.uid if job is not None else "")

    def _put_progress(self, ns: str, name: str, rec: dict[str, Any], outcome: _Outcome) -> None:
        """Write a job's progress (joins the caller's transaction, if any); the job is
        evaluated again at the next step, which sees the new progress."""
        self.store.put_record("progress", ns, name, rec)
        outcome.wrote = True

    def forget(self, ns: str, name: str) -> None:
        """The job was deleted: drop its progress (its files stay). Called on the session
        thread; done at the start of the next ``step`` so that a step in progress cannot
        write the progress back after it was dropped."""
        with self._forget_lock:
            self._forget.add((ns, name))

    def _check_identity(
        self, ns: str, name: str, raw: dict[str, Any], job: _JobRecord, out: _Outcome
    ) -> None:
        """A job deleted and created again under the same name (while this node was offline,
        so no delete came) is a new job: its progress starts over."""
        meta = raw.get("metadata") or {}
        uid = str(meta.get("uid") or meta.get("creationTimestamp") or "")
        job.uid = uid
        rec = self.store.get_record("progress", ns, name)
        if rec is None:
            # Nothing to write: a job without a record has fresh progress (with this uid) until
            # its first change writes the record; a new job costs no transaction.
            return
        if rec.get("uid", uid) == uid:
            if "uid" not in rec:
                rec["uid"] = uid
                self._put_progress(ns, name, rec, out)
            return
        log.warning("job %s/%s was re-created (uid %s): its progress starts over", ns, name, uid)
        self._put_progress(ns, name, fresh_progress(uid), out)
        job.last_check = None

    # -- the loop ---------------------------------------------------------------------------
    def step(self) -> None:
        """Evaluate the jobs that may have changed since their last evaluation: those put or
        deleted, forgotten, never evaluated or whose last step wrote or failed (``_due``); those
        whose Dataset's version or sample count moved (``_groups``, checked once per group);
        those whose time came (``_wakes``). The others cost nothing: no look-up per job held."""
        with self._forget_lock:
            forget, self._forget = self._forget, set()
        jobs, due = self._job_versions()
        due |= self._due
        self._due = set()
        for key in forget:
            due.add(key)
            if self.store.get_resource(JOB_KIND, *key) is None:
                self.store.delete_record("progress", *key)
                self._drop(key)
        ds_rvs = self.store.versions(DATASET_KIND)
        now = self.mono()
        counts: dict[tuple[str, str], tuple[int | None, str]] = {}  # this step's dataset counts
        for sig, group in list(self._groups.items()):
            if not self._holds(sig, group.spec, ds_rvs, counts):
                del self._groups[sig]
                due |= group.keys
        while self._wakes:
            memo = self._wakes[0][3]
            assert memo.wake is not None
            if now - memo.wake[0] < memo.wake[1]:  # ``LLTrigger.due``'s very test, in deadline order
                break
            _deadline, _n, key, memo = heapq.heappop(self._wakes)
            record = jobs.get(key)
            if record is not None and record.memo is memo:  # else evaluated since: a stale entry
                due.add(key)
        for key in sorted(due):
            record = jobs.get(key)
            if record is None:
                continue  # gone
            self._unindex(key, record)
            self._step_one(key[0], key[1], record, ds_rvs)
            self._index(key, record)

    def _step_one(self, ns: str, name: str, record: _JobRecord, ds_rvs: dict[tuple[str, str], str]) -> None:
        """Evaluate one job; a failure is logged once, counted and leaves the others alone."""
        held = self.store.get_resource(JOB_KIND, ns, name)
        if held is None:
            return  # deleted since the listing
        key = f"{ns}/{name}"
        outcome = _Outcome()
        ds_name = ((held[1].get("spec") or {}).get("dataset") or {}).get("name") or None
        try:
            self._step_job(ns, name, held[1], record, outcome)
        except OutboxFull as exc:
            self._warn_once(f"full/{ns}/{name}", f"job {ns}/{name}: {exc}")
            return
        except ValidationError as exc:
            # The job or its Dataset is refused by the API models: it stays as it is until one
            # of them changes (the memo below), so it is neither evaluated nor logged again.
            self.failures.failed("jobs", key, str(exc))
            outcome = _Outcome()
        except Exception as exc:
            self.failures.failed("jobs", key, f"{type(exc).__name__}: {exc}", exc_info=True)
            return  # evaluated again at the next step (logged again only if it fails differently)
        else:
            self.failures.ok("jobs", key)
        finally:
            self.evaluated += 1
        if outcome.wrote:
            return  # evaluated again at the next step, with the progress it wrote
        counted = outcome.counted
        record.memo = _Memo(
            held[0],
            ds_name if isinstance(ds_name, str) else None,
            ds_rvs.get((ns, ds_name)) if isinstance(ds_name, str) else None,
            counted[0] if counted else None,
            counted[1] if counted else None,
            outcome.wake,
        )

    def _job_versions(self) -> tuple[dict[tuple[str, str], _JobRecord], set[tuple[str, str]]]:
        """Every job held, by key, and the keys to evaluate for a change of their object: read
        from the database at the first step (every job then), then kept up to date from the
        store's list of changed jobs (no scan per step). A job that goes loses its record here,
        once."""
        if self._jobs is None:
            self.store.take_changed(JOB_KIND)
            self._jobs = {k: _JobRecord(rv) for k, rv in self.store.versions(JOB_KIND).items()}
            return self._jobs, set(self._jobs)
        changed: set[tuple[str, str]] = set()
        for key in self.store.take_changed(JOB_KIND):
            rv = self.store.held_rv(JOB_KIND, *key)
            record = self._jobs.get(key)
            if rv is None:
                self._drop(key)
            elif record is None:
                self._jobs[key] = _JobRecord(rv)
                changed.add(key)
            elif record.rv != rv or record.memo is None or record.memo.rv != rv:
                record.rv = rv
                changed.add(key)  # a change rolled back (the same rv held) changes nothing
        return self._jobs, changed

    def _drop(self, key: tuple[str, str]) -> None:
        if self._jobs is not None and (record := self._jobs.pop(key, None)) is not None:
            self._unindex(key, record)

    def _index(self, key: tuple[str, str], record: _JobRecord) -> None:
        """File the job under what its memo depends on (none: evaluated at the next step)."""
        memo = record.memo
        if memo is None:
            self._due.add(key)
            return
        sig = _sig(key, memo)
        if sig is not None:
            self._groups.setdefault(sig, _Group(memo.ds_spec)).keys.add(key)
        if memo.wake is not None:
            self._wake_n += 1
            heapq.heappush(self._wakes, (memo.wake[0] + memo.wake[1], self._wake_n, key, memo))

    def _unindex(self, key: tuple[str, str], record: _JobRecord) -> None:
        """Take the job out of its group and forget its memo (its wake, if any, goes stale)."""
        memo, record.memo = record.memo, None
        sig = _sig(key, memo) if memo is not None else None
        if sig is not None:
            group = self._groups.get(sig)
            if group is not None:
                group.keys.discard(key)
                if not group.keys:
                    del self._groups[sig]

    def _holds(
        self,
        sig: _Sig,
        spec: dict[str, Any] | None,
        ds_rvs: dict[tuple[str, str], str],
        counts: dict[tuple[str, str], tuple[int | None, str]],
    ) -> bool:
        """Is the Dataset a group of jobs depended on as it was: the same version held and, if
        their outcome depended on it, the same sample count (a stat when unchanged)?"""
        ns, ds_name, ds_rv, count, _by_count = sig
        ds_key = (ns, ds_name)
        if ds_rvs.get(ds_key) != ds_rv:
            return False
        if spec is not None:  # the count mattered (the group's spec is set exactly then)
            if ds_key not in counts:
                counted = self.monitor.count(ns, ds_name, spec)
                counts[ds_key] = (counted.count, counted.status)
            if counts[ds_key] != count:
                return False
        return True

    def _dataset(self, ns: str, job: LifelongLearningJob) -> tuple[Dataset, dict[str, Any]] | None:
        """The job's Dataset as a model (``ValidationError`` if refused) and its wire spec."""
        return held_dataset(self.store, ns, job.spec.dataset.name)

    def _step_job(self, ns: str, name: str, raw: dict[str, Any], record: _JobRecord, out: _Outcome) -> None:
        """Evaluate one job; ``out`` says when to evaluate it again if none of its inputs change.
        The job is parsed at each evaluation, not kept (``Store.parsed`` says why)."""
        job = parse_as(LifelongLearningJob, raw, f"LifelongLearningJob {ns}/{name}")
        self._check_identity(ns, name, raw, record, out)
        stage, ctype = job.state
        if ctype is not ConditionType.WAITING:
            return
        dataset = self._dataset(ns, job)
        ds_node = dataset[0].spec.node_name if dataset is not None else None
        if job.spec.deciding_node(stage, ds_node) != self.node:
            return
        if stage is Stage.TRAIN:
            if dataset is not None:
                self._train(ns, name, job, dataset[1], record, out)
        elif stage is Stage.EVAL:
            self._eval(ns, name, job.history, job.round, out)
        else:
            self._deploy(ns, name, job, out)

    # -- Train ------------------------------------------------------------------------------
    def _train(  # noqa: PLR0917 - private, called once
        self,
        ns: str,
        name: str,
        job: LifelongLearningJob,
        ds_spec: dict[str, Any],
        record: _JobRecord,
        out: _Outcome,
    ) -> None:
        job_round = job.round
        ds_name = job.spec.dataset.name
        prog = self.progress(ns, name)
        if prog["round"] > job_round:
            return  # our ready for the next round is on its way to the GM
        if prog["round"] < job_round:
            prog["round"] = job_round  # the GM knows more rounds than we do (state lost or moved)
            self._put_progress(ns, name, prog, out)
        counted = self.monitor.count(ns, ds_name, ds_spec)
        out.counted = (ds_spec, (counted.count, counted.status))
        if counted.count is None:
            self._warn_once(
                f"ds/{ns}/{ds_name}/{counted.status}", f"dataset {ns}/{ds_name}: {counted.message}"
            )
            return
        total = counted.count
        if total < prog["cursor"]:
            log.warning(
                "job %s/%s: dataset %s shrank from %d to %d samples (replaced or truncated); "
                "counting its samples anew",
                ns,
                name,
                ds_name,
                prog["cursor"],
                total,
            )
            prog["cursor"] = 0
            self._put_progress(ns, name, prog, out)
        new = total - prog["cursor"]
        trigger = job.spec.train_spec.trigger
        now = self.mono()
        last = record.last_check
        if not trigger.due(now, last):
            assert last is not None  # due() is true without a last check
            out.wake = (last, trigger.period)
            return
        record.last_check = now
        if trigger.in_window(self.local_now()) and trigger.condition_holds(new):
            self._fire(ns, name, job, ds_spec, prog, total, out)
        # Not fired: the same count gives the same answer until the period runs out.
        out.wake = (now, trigger.period)

    def _fire(  # noqa: PLR0917 - private, called once
        self,
        ns: str,
        name: str,
        job: LifelongLearningJob,
        ds_spec: dict[str, Any],
        prog: dict[str, Any],
        total: int,
        out: _Outcome,
    ) -> None:
        rnd = job.round + 1
        fmt = str(ds_spec.get("format") or "txt").lower()
        samples, header = read_samples(local_path(str(ds_spec.get("url", ""))), fmt, prog["cursor"], total)
        total = prog["cursor"] + len(samples)  # the file may have changed since it was counted
        train_prob = job.spec.dataset.train_prob
        train_new: list[str] = []
        eval_new: list[str] = []
        for offset, line in enumerate(samples):
            index = prog["cursor"] + offset
            (train_new if split_is_train(ns, name, index, train_prob) else eval_new).append(line)
        out_dir = local_path(job.spec.output_dir)
        files = {}
        for pool, new_lines in (("train", train_new), ("eval", eval_new)):
            previous: list[str] = []
            prev_file = prog.get(f"{pool}File")
            if prev_file and Path(prev_file).exists():
                previous, _ = read_samples(Path(prev_file), fmt, 0, 1 << 62)
            path = out_dir / "data" / pool / str(rnd) / f"{pool}.{fmt}"
            lines = ([header] if header is not None else []) + previous + new_lines
            _write_atomic(path, lines)
            files[pool] = (path, len(previous) + len(new_lines))
        new_prog = dict(prog)
        new_prog.update(
            round=rnd,
            cursor=total,
            trainCount=files["train"][1],
            evalCount=files["eval"][1],
            trainFile=str(files["train"][0]),
            evalFile=str(files["eval"][0]),
        )
        body = JobReady(
            stage=Stage.TRAIN,
            round=rnd,
            data={
                "trainDataURL": str(files["train"][0]),
                "evalDataURL": str(files["eval"][0]),
                "numberOfSamples": len(samples),
            },
        ).to_body()
        with self.store.tx():
            self._put_progress(ns, name, new_prog, out)
            self.outbox.append(JOB_KIND, ns, name, body)
        self.rounds_fired += 1
        log.info(
            "job %s/%s stage=Train round=%d Waiting -> ready: %d new samples (%d train, %d eval)",
            ns,
            name,
            rnd,
            len(samples),
            len(train_new),
            len(eval_new),
        )

    # -- Eval -------------------------------------------------------------------------------
    def _models_of(
        self, conds: list[Condition], stage: Stage, ns: str, name: str, rnd: int
    ) -> list[dict[str, Any]]:
        for cond in reversed(conds):
            if cond.stage is stage and cond.type is ConditionType.COMPLETED:
                models = models_in(_json(cond.data))
                if models:
                    return models
                break
        if self.worker_outputs is not None:
            return self.worker_outputs(ns, name, stage.value, rnd)
        return []

    def _eval(self, ns: str, name: str, conds: list[Condition], rnd: int, out: _Outcome) -> None:
        prog = self.progress(ns, name)
        key = f"Eval/{rnd}"
        if key in prog["acted"]:
            return
        models = self._models_of(conds, Stage.TRAIN, ns, name, rnd)
        if not models:
            self._warn_once(f"eval/{ns}/{name}/{rnd}", f"job {ns}/{name} round {rnd}: no trained model yet")
            out.wake = ALWAYS  # a worker may report the model at any time
            return
        data: dict[str, JsonValue] = {"models": cast(JsonValue, models)}  # model records: JSON
        body = JobReady(stage=Stage.EVAL, round=rnd, data=data).to_body()
        prog["acted"] = [*prog["acted"][-20:], key]
        with self.store.tx():
            self._put_progress(ns, name, prog, out)
            self.outbox.append(JOB_KIND, ns, name, body)
        log.info("job %s/%s stage=Eval round=%d Waiting -> ready: %d models", ns, name, rnd, len(models))

    # -- Deploy -----------------------------------------------------------------------------
    def _deploy(self, ns: str, name: str, job: LifelongLearningJob, out: _Outcome) -> None:
        rnd = job.round
        conds = job.history
        prog = self.progress(ns, name)
        key = f"Deploy/{rnd}"
        if key in prog["acted"]:
            return
        models = self._models_of(conds, Stage.EVAL, ns, name, rnd) or self._models_of(
            conds, Stage.TRAIN, ns, name, rnd
        )
        if not models:
            self._warn_once(f"deploy/{ns}/{name}/{rnd}", f"job {ns}/{name} round {rnd}: no model to deploy")
            out.wake = ALWAYS  # a worker may report the model at any time
            return
        model = dict(models[0])
        url = str(model.get("url", ""))
        if _remote(url):
            # a model in the knowledge base (or any store the worker reads): the Deploy worker
            # fetches it itself, so the URL is deployed as it is (docs/knowledge-base.md)
            self._ready_to_deploy(ns, name, rnd, model, prog=prog, key=key, out=out)
            return
        source = local_path(url)
        target_dir = local_path(job.spec.output_dir) / "deploy"
        target = target_dir / source.name
        try:
            target_dir.mkdir(parents=True, exist_ok=True)
            if source.is_dir():
                tmp = target.with_name(target.name + ".tmp")
                shutil.rmtree(tmp, ignore_errors=True)
                shutil.copytree(source, tmp)
                shutil.rmtree(target, ignore_errors=True)
                os.replace(tmp, target)
            else:
                tmp = target.with_name(target.name + ".tmp")
                shutil.copyfile(source, tmp)
                os.replace(tmp, target)
        except OSError as exc:
            self._warn_once(
                f"deploycopy/{ns}/{name}/{rnd}", f"job {ns}/{name}: cannot deploy {source}: {exc}"
            )
            out.wake = ALWAYS  # retried every step, as the files may appear at any time
            return
        model["sourceURL"] = model.get("url")
        model["url"] = str(target)
        self._ready_to_deploy(ns, name, rnd, model, prog=prog, key=key, out=out)

    def _ready_to_deploy(
        self,
        ns: str,
        name: str,
        rnd: int,
        model: dict[str, Any],
        *,
        prog: dict[str, Any],
        key: str,
        out: _Outcome,
    ) -> None:
        body = JobReady(stage=Stage.DEPLOY, round=rnd, data={"model": model}).to_body()
        prog["acted"] = [*prog["acted"][-20:], key]
        with self.store.tx():
            self._put_progress(ns, name, prog, out)
            self.outbox.append(JOB_KIND, ns, name, body)
        log.info("job %s/%s stage=Deploy round=%d Waiting -> ready: model %s", ns, name, rnd, model["url"])


def _remote(url: str) -> bool:
    """A URL with a scheme other than ``file``: the model is not a file of this node."""
    scheme, sep, _ = url.partition("://")
    return bool(sep) and scheme.lower() != "file" and scheme.isalnum()
