"""Lifelong learning end to end with real processes: a broker, ``lifelong gm`` running the
knowledge base beside it (``--kb-dir``), ``lifelong lc``, and the workers of ``examples/lifelong``
that use the library (``lifelong.learning``). Issue 13's loop, on both brokers:

1. round 1 trains one model per known task (cameras ``cam_a`` and ``cam_b``) and stores them in
   the KB, evaluates and deploys them; the Deploy worker infers samples of a third camera
   (``cam_c``), which no task knows: they are unseen, and travel LC outbox -> bus -> GM -> KB;
2. the operator labels them (``lifelong kb label JOB --file``, the labels of the data set);
3. the GM sends them to the Dataset's node, the LC appends them to the Dataset's file, the
   train trigger fires, and round 2 learns ``cam_c`` as a new task, started from the closest
   known task (``cam_b``, the transfer recorded in the KB's task index);
4. ``describe ll`` shows the KB's models and sample counts, and round 2's inference finds no
   unseen sample any more.

The example's files are used as a user would: the placeholders filled in, nothing else changed
but ``MAX_ITER`` (fewer training iterations, to keep the test short).
"""

from __future__ import annotations

import csv
import json
import subprocess
import sys
import urllib.request
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest
import yaml
from harness.brokers import Broker
from harness.processes import FULL_ROUND, GMProcess, LCProcess
from harness.waiting import free_port, wait_for

pytestmark = [pytest.mark.e2e, pytest.mark.slow, pytest.mark.timeout(600)]

NODE = "node-a"
JOB = "lifelong-digits"
EXAMPLE = Path(__file__).resolve().parents[2] / "examples" / "lifelong"
TWO_ROUNDS = [*FULL_ROUND[:-1], *FULL_ROUND]
"""Round 1 and round 2 through Deploy/Completed, then Train/Waiting of round 3."""


def manifests(work: Path) -> str:
    """The example's Dataset and job, placeholders filled in."""
    text = "---\n".join((EXAMPLE / name).read_text() for name in ("dataset.yaml", "lifelonglearningjob.yaml"))
    for key, value in {
        "{{PYTHON}}": sys.executable,
        "{{EXAMPLES}}": str(EXAMPLE),
        "{{WORKDIR}}": str(work),
        "{{NODE}}": NODE,
    }.items():
        text = text.replace(key, value)
    docs = list(yaml.safe_load_all(text))
    for field in ("trainSpec", "evalSpec", "deploySpec"):
        container = docs[1]["spec"][field]["template"]["spec"]["containers"][0]
        container.setdefault("env", []).append({"name": "MAX_ITER", "value": "150"})
    return yaml.safe_dump_all(docs)


@pytest.fixture
def procs(tmp_path: Path, broker: Broker) -> Iterator[tuple[GMProcess, LCProcess, int]]:
    kb_port = free_port()
    gm = GMProcess(
        tmp_path,
        broker_url=broker.url,
        prefix=broker.prefix,
        extra=["--kb-dir", str(tmp_path / "kb"), "--kb-port", str(kb_port)],
    )
    lc = LCProcess(tmp_path, node=NODE, broker_url=broker.url, prefix=broker.prefix)
    gm.start()
    gm.wait_ready()
    lc.start()
    lc.wait_online(gm)
    yield gm, lc, kb_port
    for proc in (lc, gm):
        if proc.alive():
            proc.kill()


def _get(url: str) -> Any:
    with urllib.request.urlopen(url, timeout=10) as resp:
        return json.loads(resp.read())


def test_a_job_learns_an_unseen_task_found_at_inference_and_labelled_in_the_kb(
    procs: tuple[GMProcess, LCProcess, int], tmp_path: Path
) -> None:
    gm, lc, kb_port = procs
    subprocess.run([sys.executable, str(EXAMPLE / "digits_domains.py"), str(tmp_path / "data")], check=True)
    train_csv = tmp_path / "data" / "train.csv"
    rows_before = len(train_csv.read_text().splitlines())
    gm.cli("apply", "-f", "-", stdin=manifests(tmp_path))

    def history(expected: list[tuple[str, str]]) -> bool:
        gm.check_alive()
        lc.check_alive()
        got = gm.conditions(JOB)
        n = min(len(got), len(expected))
        assert got[:n] == expected[:n], f"unexpected history {got}\nLC:\n{lc.log_tail()}"
        return len(got) >= len(expected)

    wait_for(
        lambda: history(FULL_ROUND), timeout=180, interval=0.2, what=f"round 1 of {JOB}\n{lc.log_tail()}"
    )

    # Round 1's inference met cam_c: its samples reached the KB through the bus, unlabelled.
    samples_path = (
        f"/api/v1/namespaces/default/lifelonglearningjobs/{JOB}/kb/samples?state=unlabelled&limit=1000"
    )

    def unseen() -> list[dict[str, Any]]:
        items: list[dict[str, Any]] = gm.api("GET", samples_path)["items"]
        return items

    wait_for(lambda: len(unseen()) == 100, timeout=60, what=f"100 unseen samples in the KB\n{gm.log_tail()}")
    found = unseen()
    assert {s["attrs"]["domain"] for s in found} == {"cam_c"}
    tasks = _get(f"http://127.0.0.1:{kb_port}/knowledgebase/v1/tasks/default/{JOB}")
    assert sorted(g["entry"] for g in tasks["taskGroups"]) == ["cam-a", "cam-b"], tasks

    # The operator labels them from the data set's own labels (matched on the pixels).
    with (tmp_path / "data" / "cam_c_labels.csv").open() as fh:
        truth = {tuple(r[2:]): r[0] for r in list(csv.reader(fh))[1:]}
    features = [f"f{i}" for i in range(64)]
    labels = tmp_path / "labels.csv"
    labels.write_text(
        "".join(f"{s['id']},{truth[tuple(str(s['row'][f]) for f in features)]}\n" for s in found)
    )
    out = gm.cli("kb", "label", JOB, "--file", str(labels)).stdout
    assert "100" in out, out

    # Delivered to the Dataset's node and appended once; round 2 learns cam_c from cam_b.
    wait_for(
        lambda: len(train_csv.read_text().splitlines()) == rows_before + 100,
        timeout=60,
        what=f"100 labelled rows appended to {train_csv}\n{lc.log_tail()}",
    )
    wait_for(
        lambda: history(TWO_ROUNDS), timeout=240, interval=0.2, what=f"round 2 of {JOB}\n{lc.log_tail()}"
    )
    tasks = _get(f"http://127.0.0.1:{kb_port}/knowledgebase/v1/tasks/default/{JOB}")
    groups = {g["entry"]: g for g in tasks["taskGroups"]}
    assert sorted(groups) == ["cam-a", "cam-b", "cam-c"], tasks
    transfer = groups["cam-c"].get("transfer") or {}
    assert transfer.get("from") == "cam-b", groups["cam-c"]
    assert 0.0 < transfer.get("ratio", 0.0) <= 1.0
    wait_for(
        lambda: not gm.api("GET", samples_path.replace("unlabelled", "labelled"))["items"],
        timeout=30,
        what="the labelled samples marked delivered",
    )
    assert len(unseen()) == 0  # round 2's inference knows cam_c: nothing new is unseen

    def kb_models() -> int:
        """The KB's model count in the job's status, which ``describe`` shows as ``Models:``."""
        job = gm.get("LifelongLearningJob", JOB) or {}
        models = ((job.get("status") or {}).get("knowledgeBase") or {}).get("AIModels") or {}
        return int(models.get("numberOfAIModels", len(models.get("listOfAIModels") or [])))

    # Waited for through the API from this process, then ``describe`` once: a ``describe`` per
    # poll started a client process (about 0.6 s of CPU) each time.
    wait_for(lambda: kb_models() == 3, timeout=30, what=f"3 models in the job's KB status\n{gm.log_tail()}")
    text = gm.cli("describe", "ll", JOB).stdout
    assert "Models:          3" in text, text
    assert "Unseen Samples:  100 (100 labelled)" in text, text
    for entry in ("cam-a", "cam-b", "cam-c"):
        assert entry in text, text
    assert len(train_csv.read_text().splitlines()) == rows_before + 100  # appended exactly once
