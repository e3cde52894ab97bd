"""The lifelong-learning manager (``lifelong.edge.manager``) on a real SQLite state, no broker:
deterministic split, checkPeriodSeconds, no round fired twice across a restart, cursor kept."""

from __future__ import annotations

import json
import traceback
from datetime import datetime
from pathlib import Path
from typing import Any

import pytest
from harness.lc_objects import cond, dataset, job

from lifelong.common.api import parse_resource
from lifelong.common.errors import ValidationError
from lifelong.edge import manager
from lifelong.edge.dataset_monitor import DatasetMonitor
from lifelong.edge.db import Store
from lifelong.edge.manager import Manager, held_dataset, split_is_train
from lifelong.edge.outbox import Outbox

NODE = "node-a"


class Mono:
    """A monotonic clock the test moves; with ``auto`` it moves that much at every reading."""

    def __init__(self, auto: float = 0.0) -> None:
        self.now = 0.0
        self.auto = auto

    def __call__(self) -> float:
        self.now += self.auto
        return self.now


def _setup(tmp_path: Path, period: int = 1) -> tuple[Store, Outbox, Path, Path, Mono]:
    """One job and its dataset of 10 samples; with the default period of 1 s the clock moves
    a second at every reading, so every step checks the trigger."""
    store = Store(tmp_path / "lc.db", sync="normal")
    box = Outbox(store)
    data = tmp_path / "d.txt"
    data.write_text("".join(f"s{i}\n" for i in range(10)))
    out = tmp_path / "out"
    store.put_resource("Dataset", "default", "ds", "1", dataset("ds", NODE, data))
    j = job("j", NODE, "ds", out, [cond("Train", "Waiting")])
    j["spec"]["trainSpec"]["trigger"]["checkPeriodSeconds"] = period
    store.put_resource("LifelongLearningJob", "default", "j", "2", j)
    return store, box, data, out, Mono(auto=1.0 if period == 1 else 0.0)


def _manager(store: Store, box: Outbox, mono: Mono) -> Manager:
    return Manager(store, box, NODE, DatasetMonitor(), local_now=lambda: datetime(2026, 1, 1, 12), mono=mono)


def _train_failed_once() -> list[dict]:
    """A job's conditions after its first Train failed: back to Train/Waiting."""
    return [cond("Train", t) for t in ("Waiting", "Ready", "Failed", "Waiting")]


def _ready(box: Outbox, stage: str) -> list[dict]:
    box.window = 1 << 20
    return [e.body for e in box.due() if e.body.get("event") == "ready" and e.body.get("stage") == stage]


def test_split_is_deterministic_and_follows_train_prob() -> None:
    picks = [split_is_train("ns", "job", i, 0.8) for i in range(2000)]
    assert picks == [split_is_train("ns", "job", i, 0.8) for i in range(2000)]
    assert 0.75 < sum(picks) / len(picks) < 0.85
    assert not any(split_is_train("ns", "job", i, 0.0) for i in range(100))


def test_round_fires_once_even_across_a_restart(tmp_path: Path) -> None:
    store, box, data, out, mono = _setup(tmp_path)
    m = _manager(store, box, mono)
    m.step()
    m.step()
    ready = _ready(box, "Train")
    assert len(ready) == 1 and ready[0]["round"] == 1 and ready[0]["data"]["numberOfSamples"] == 10
    # Restart (a new manager on the same state) while the GM still shows Train/Waiting.
    m2 = _manager(store, box, mono)
    m2.step()
    assert len(_ready(box, "Train")) == 1
    # Round 1 done; 4 new samples are below the threshold (> 5); 2 more make 6.
    done = [
        cond("Train", "Waiting"),
        cond("Train", "Ready"),
        cond("Train", "Completed"),
        cond("Eval", "Waiting"),
    ]
    done += [cond("Eval", "Ready"), cond("Eval", "Completed"), cond("Deploy", "Waiting")]
    done += [cond("Deploy", "Ready"), cond("Deploy", "Completed"), cond("Train", "Waiting")]
    store.put_resource("LifelongLearningJob", "default", "j", "3", job("j", NODE, "ds", out, done))
    with data.open("a") as fh:
        fh.write("n0\nn1\nn2\nn3\n")
    m2.step()
    assert len(_ready(box, "Train")) == 1
    with data.open("a") as fh:
        fh.write("n4\nn5\n")
    m2.step()
    second = _ready(box, "Train")[-1]
    assert second["round"] == 2 and second["data"]["numberOfSamples"] == 6
    pools = Path(second["data"]["trainDataURL"]).read_text().splitlines()
    pools += Path(second["data"]["evalDataURL"]).read_text().splitlines()
    assert sorted(pools) == sorted(data.read_text().splitlines())
    store.close()


def test_check_period_is_honoured(tmp_path: Path) -> None:
    store, box, data, _out, mono = _setup(tmp_path, period=60)
    data.write_text("a\n")  # 1 sample: below the threshold
    m = _manager(store, box, mono)
    m.step()  # evaluated at once: does not fire
    data.write_text("".join(f"s{i}\n" for i in range(10)))
    mono.now = 59.0
    m.step()
    assert _ready(box, "Train") == []  # not before the period is over
    mono.now = 60.0
    m.step()
    assert len(_ready(box, "Train")) == 1
    store.close()


def test_truncated_dataset_starts_the_cursor_over(tmp_path: Path) -> None:
    store, box, data, out, mono = _setup(tmp_path)
    m = _manager(store, box, mono)
    m.step()
    after = _train_failed_once()
    store.put_resource("LifelongLearningJob", "default", "j", "3", job("j", NODE, "ds", out, after))
    data.write_text("".join(f"r{i}\n" for i in range(7)))  # replaced by a shorter file
    m.step()
    second = _ready(box, "Train")[-1]
    assert second["round"] == 2 and second["data"]["numberOfSamples"] == 7
    store.close()


def test_eval_and_deploy_use_the_reported_models(tmp_path: Path) -> None:
    store, box, _data, out, mono = _setup(tmp_path)
    model = tmp_path / "m.bin"
    model.write_bytes(b"w")
    models = {"output": {"models": [{"url": str(model), "format": "bin"}]}}
    hist = [cond("Train", "Waiting"), cond("Train", "Ready"), cond("Train", "Completed", models)]
    hist.append(cond("Eval", "Waiting"))
    store.put_resource("LifelongLearningJob", "default", "j", "3", job("j", NODE, "ds", out, hist))
    m = _manager(store, box, mono)
    m.step()
    m.step()
    ev = _ready(box, "Eval")
    assert len(ev) == 1 and ev[0]["round"] == 1 and ev[0]["data"]["models"][0]["url"] == str(model)
    hist += [cond("Eval", "Ready"), cond("Eval", "Completed", models), cond("Deploy", "Waiting")]
    store.put_resource("LifelongLearningJob", "default", "j", "4", job("j", NODE, "ds", out, hist))
    m.step()
    dep = _ready(box, "Deploy")
    assert len(dep) == 1 and dep[0]["data"]["model"]["url"] == str(out / "deploy" / "m.bin")
    assert (out / "deploy" / "m.bin").read_bytes() == b"w"
    assert json.loads(json.dumps(dep[0]))  # plain JSON, ready for the wire
    store.close()


def test_recreated_job_starts_over_and_delete_forgets(tmp_path: Path) -> None:
    store, box, _data, out, mono = _setup(tmp_path)
    m = _manager(store, box, mono)
    m.step()
    assert store.get_record("progress", "default", "j")["round"] == 1
    # Deleted and created again while the node was offline: only an upsert with a new uid arrives.
    again = job("j", NODE, "ds", out, [cond("Train", "Waiting")])
    again["metadata"]["uid"] = "new-uid"
    store.put_resource("LifelongLearningJob", "default", "j", "9", again)
    m.step()
    ready = _ready(box, "Train")
    assert [r["round"] for r in ready] == [1, 1]  # the new job's first round, all 10 samples again
    assert ready[1]["data"]["numberOfSamples"] == 10
    store.delete_resource("LifelongLearningJob", "default", "j", "10")
    m.forget("default", "j")
    m.step()
    assert store.get_record("progress", "default", "j") is None
    store.close()


def _statements(store: Store) -> list[str]:
    """Every SQL statement the store's connection runs from now on."""
    seen: list[str] = []
    store.db.trace(seen.append)
    return seen


def test_a_step_over_unchanged_jobs_costs_no_read_nor_write_per_job(tmp_path: Path) -> None:
    store, box, data, out, mono = _setup(tmp_path)
    mono.auto = 0.0  # no check period runs out
    data.write_text("a\nb\n")  # below the threshold: nothing fires
    n = 60
    for i in range(n):
        conds = [cond("Train", "Waiting")] if i % 3 else [cond("Train", "Waiting"), cond("Train", "Ready")]
        node = NODE if i % 4 else "node-b"
        store.put_resource(
            "LifelongLearningJob", "default", f"k{i}", "5", job(f"k{i}", node, "ds", out, conds)
        )
    m = _manager(store, box, mono)
    m.step()  # every job evaluated once
    m.step()
    changes = store.db.total_changes
    seen = _statements(store)
    for _ in range(5):
        m.step()
    assert store.db.total_changes == changes  # nothing written
    assert len(seen) <= 5 * 3, seen  # a listing of jobs and of datasets per step, not per job
    assert _ready(box, "Train") == []
    store.close()


def test_new_jobs_cost_no_write_until_their_progress_changes(tmp_path: Path) -> None:
    # An LC handed hundreds of jobs at once (a hello diff) must not commit once per job.
    store, box, data, out, mono = _setup(tmp_path)
    data.write_text("a\nb\n")  # below the threshold: nothing fires
    for i in range(30):
        obj = job(f"k{i}", NODE, "ds", out, [])
        obj["metadata"]["uid"] = f"uid-{i}"
        store.put_resource("LifelongLearningJob", "default", f"k{i}", "5", obj)
    m = _manager(store, box, mono)
    changes = store.db.total_changes
    m.step()
    assert store.db.total_changes == changes
    assert store.get_record("progress", "default", "k0") is None
    # the first change writes the record, with the job's uid (a later re-creation is detected)
    data.write_text("".join(f"s{i}\n" for i in range(10)))
    m.step()
    rec = store.get_record("progress", "default", "k0")
    assert rec is not None and rec["round"] == 1
    assert rec["uid"] == "uid-0"
    store.close()


def test_a_skipped_job_is_evaluated_again_when_its_inputs_change(tmp_path: Path) -> None:
    store, box, data, out, mono = _setup(tmp_path)
    data.write_text("a\nb\n")
    mono.auto = 0.0  # the clock moves only where the test says
    m = _manager(store, box, mono)
    m.step()
    m.step()
    evaluated = m.evaluated
    m.step()
    assert m.evaluated == evaluated  # nothing changed: skipped
    with data.open("a") as fh:  # the sample count changes: evaluated, fires
        fh.write("".join(f"n{i}\n" for i in range(6)))
    mono.now += 1  # the check period (1 s) ran out
    m.step()
    assert [r["round"] for r in _ready(box, "Train")] == [1]
    m.step()  # evaluated once more after writing its progress, then skipped
    evaluated = m.evaluated
    m.step()
    assert m.evaluated == evaluated
    # A new object (the GM's next round) is evaluated at once.
    hist = _train_failed_once()
    store.put_resource("LifelongLearningJob", "default", "j", "3", job("j", NODE, "ds", out, hist))
    with data.open("a") as fh:
        fh.write("".join(f"m{i}\n" for i in range(6)))
    mono.now += 1
    m.step()
    assert [r["round"] for r in _ready(box, "Train")] == [1, 2]
    # A Dataset moved to another node: the job is no longer this node's to train.
    store.put_resource("Dataset", "default", "ds", "7", dataset("ds", "node-b", data))
    hist += [cond("Train", "Ready"), cond("Train", "Failed"), cond("Train", "Waiting")]
    store.put_resource("LifelongLearningJob", "default", "j", "8", job("j", NODE, "ds", out, hist))
    with data.open("a") as fh:
        fh.write("".join(f"o{i}\n" for i in range(6)))
    m.step()
    assert len(_ready(box, "Train")) == 2
    store.put_resource("Dataset", "default", "ds", "9", dataset("ds", NODE, data))  # and back
    mono.now += 1
    m.step()
    assert [r["round"] for r in _ready(box, "Train")] == [1, 2, 3]
    store.close()


def test_the_check_period_still_runs_while_nothing_changes(tmp_path: Path) -> None:
    """Checks at 0 and 60 find nothing; samples arriving at 90 wait for the check at 120,
    exactly as if every step evaluated the job."""
    store, box, data, _out, mono = _setup(tmp_path, period=60)
    data.write_text("a\n")
    m = _manager(store, box, mono)
    for now in (0.0, 30.0, 60.0):
        mono.now = now
        m.step()
    data.write_text("".join(f"s{i}\n" for i in range(10)))
    for now in (90.0, 119.0):
        mono.now = now
        m.step()
        assert _ready(box, "Train") == []
    mono.now = 120.0
    m.step()
    assert [r["round"] for r in _ready(box, "Train")] == [1]
    store.close()


def test_the_timer_window_follows_the_wall_clock_at_each_check(tmp_path: Path) -> None:
    store, box, _data, out, mono = _setup(tmp_path)
    j = job("j", NODE, "ds", out, [cond("Train", "Waiting")])
    j["spec"]["trainSpec"]["trigger"]["timer"] = {"start": "10:00", "end": "11:00"}
    store.put_resource("LifelongLearningJob", "default", "j", "3", j)
    wall = [datetime(2026, 1, 1, 9, 58)]
    m = Manager(store, box, NODE, DatasetMonitor(), local_now=lambda: wall[0], mono=mono)
    m.step()
    m.step()
    assert _ready(box, "Train") == []
    wall[0] = datetime(2026, 1, 1, 10, 1)  # only the wall clock moved
    m.step()
    assert [r["round"] for r in _ready(box, "Train")] == [1]
    store.close()


def test_eval_waits_for_a_model_a_worker_reports_later(tmp_path: Path) -> None:
    store, box, _data, out, mono = _setup(tmp_path)
    hist = [
        cond("Train", "Waiting"),
        cond("Train", "Ready"),
        cond("Train", "Completed"),
        cond("Eval", "Waiting"),
    ]
    store.put_resource("LifelongLearningJob", "default", "j", "3", job("j", NODE, "ds", out, hist))
    reported: list[dict] = []
    m = Manager(
        store,
        box,
        NODE,
        DatasetMonitor(),
        worker_outputs=lambda _ns, _name, _stage, _rnd: list(reported),
        local_now=lambda: datetime(2026, 1, 1, 12),
        mono=mono,
    )
    m.step()
    m.step()
    assert _ready(box, "Eval") == []
    reported.append({"url": str(tmp_path / "m.bin")})  # no change to the job or its dataset
    m.step()
    assert [r["round"] for r in _ready(box, "Eval")] == [1]
    store.close()


def test_a_restarted_manager_resumes_skipped_jobs_exactly(tmp_path: Path) -> None:
    store, box, _data, _out, mono = _setup(tmp_path)
    m = _manager(store, box, mono)
    m.step()
    m.step()
    m.step()
    assert [r["data"]["numberOfSamples"] for r in _ready(box, "Train")] == [10]
    store.close()
    store = Store(tmp_path / "lc.db", sync="normal")
    box = Outbox(store)
    m2 = _manager(store, box, mono)
    m2.step()  # a new process evaluates every job once: round 1 is not fired again
    assert [r["round"] for r in _ready(box, "Train")] == [1]
    assert store.get_record("progress", "default", "j")["cursor"] == 10
    store.close()


def test_deploy_passes_a_model_in_the_knowledge_base_as_its_url(tmp_path: Path) -> None:
    """A model the library put in the KB is reported as an http URL: the Deploy worker fetches
    it, so the LC deploys the URL as it is (nothing to copy), and a file:// model is copied."""
    store, box, _data, out, mono = _setup(tmp_path)
    url = "http://127.0.0.1:9020/knowledgebase/v1/index/default/j/1"
    models = {"output": {"models": [{"url": url, "format": "json"}]}}
    hist = [cond("Train", "Waiting"), cond("Train", "Ready"), cond("Train", "Completed", models)]
    hist += [cond("Eval", "Waiting"), cond("Eval", "Ready"), cond("Eval", "Completed", models)]
    hist.append(cond("Deploy", "Waiting"))
    store.put_resource("LifelongLearningJob", "default", "j", "3", job("j", NODE, "ds", out, hist))
    m = _manager(store, box, mono)
    m.step()
    dep = _ready(box, "Deploy")
    assert len(dep) == 1 and dep[0]["data"]["model"]["url"] == url
    assert not (out / "deploy").exists()
    store.close()


def test_a_step_evaluates_only_what_changed_among_many_jobs(tmp_path: Path) -> None:
    """A step's work follows the changes, not the jobs held: one job's new object evaluates
    that job alone; a Dataset whose count moves evaluates the jobs that counted it, once."""
    store, box, data, out, mono = _setup(tmp_path)
    mono.auto = 0.0
    data.write_text("a\nb\n")  # below the threshold: nothing fires
    other = tmp_path / "other.txt"
    other.write_text("x\n")
    store.put_resource("Dataset", "default", "ds2", "3", dataset("ds2", NODE, other))
    for i in range(200):
        ds = "ds" if i % 2 else "ds2"
        store.put_resource("LifelongLearningJob", "default", f"k{i}", "5", job(f"k{i}", NODE, ds, out, []))
    m = _manager(store, box, mono)
    m.step()
    m.step()
    base = m.evaluated
    m.step()
    assert m.evaluated == base  # nothing changed
    store.put_resource("LifelongLearningJob", "default", "k7", "6", job("k7", NODE, "ds", out, []))
    m.step()
    assert m.evaluated == base + 1
    with other.open("a") as fh:  # ds2's count moves: its 100 jobs, and no other
        fh.write("y\n")
    m.step()
    assert m.evaluated == base + 1 + 100
    m.step()
    assert m.evaluated == base + 1 + 100
    store.close()


def test_a_refused_dataset_is_parsed_once_and_raised_afresh_each_time(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    """The refusal is kept (no parse per step), but not as one exception raised again and again:
    that would add every raise's frames to its traceback for as long as the Dataset is held."""
    parses: list[str] = []

    def counted(raw: dict[str, Any], *, source: str) -> Any:
        parses.append(source)
        return parse_resource(raw, source=source)

    monkeypatch.setattr(manager, "parse_resource", counted)
    store = Store(tmp_path / "lc.db", sync="normal")
    bad = dataset("ds", NODE, tmp_path / "d.txt")
    bad["spec"]["format"] = 7  # the models refuse it
    store.put_resource("Dataset", "default", "ds", "1", bad)
    raised = []
    for _ in range(3):
        with pytest.raises(ValidationError, match="Dataset default/ds") as info:
            held_dataset(store, "default", "ds")
        raised.append(info.value)
    assert len({id(e) for e in raised}) == 3
    depths = [len(traceback.extract_tb(e.__traceback__)) for e in raised]
    assert depths[0] == depths[1] == depths[2], depths
    assert parses == ["Dataset default/ds"]  # refused once, the refusal kept for its version
    store.close()
