"""A Sedna-shaped job end to end, applied before its node came online, with a failed Train
retried on the same data.

Real processes: a broker, ``lifelong gm`` and ``lifelong lc``. The fixture in
``tests/fixtures/sedna_shape`` is written as a Sedna user writes a job (see its README): a
Dataset, Model objects, and a LifelongLearningJob whose containers give ``args`` and a
``workingDir`` but no ``command``, env values as strings, ``image``/``imagePullPolicy``/
``resources``/``volumeMounts`` (accepted; a local process cannot use them), a timer ending at
``24:00``, ``checkPeriodSeconds`` and ``outputDir``. The test changes only what a user would: the
node names and the host paths (the Dataset's url, ``outputDir``, each container's ``workingDir``
where the worker scripts are copied, the hostPath volume).

The containers stay args-only, as Sedna's: the LC's configuration maps their image to its
entrypoint (``images``, docs/writing-workers.md), here this interpreter, so ``args`` in
``workingDir`` runs as ``python train.py`` would in the image.

Everything is applied while the node's LC has never run: the GM stores it and says it waits for
the node (``WaitingForNode``); the LC then starts and the job runs.

The train container fails its first run (``FAIL_FIRST_RUNS: "1"``, recorded in ``runs.jsonl``
of its working directory). The GM must retry it by itself, after the backoff, as a new worker of
the same round, on the same training file; then Eval and Deploy run and the job converges.
"""

from __future__ import annotations

import json
import shutil
import sys
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest
import yaml
from harness.brokers import Broker
from harness.processes import GMProcess, LCProcess, history_follows
from harness.waiting import wait_for

from lifelong.common.api import load_yaml

pytestmark = pytest.mark.e2e

NODE = "node-a"
FIXTURE = Path(__file__).resolve().parents[1] / "fixtures" / "sedna_shape"
STAGES = ("trainSpec", "evalSpec", "deploySpec")

# The round's history: the first Train attempt fails, its retry (a Ready of reason Retry) runs
# on the same data and succeeds, and the round goes on to Deploy and back to Train/Waiting.
RETRIED_ROUND = [
    ("Train", "Waiting"), ("Train", "Ready"), ("Train", "Starting"), ("Train", "Running"),
    ("Train", "Failed"), ("Train", "Ready"), ("Train", "Starting"), ("Train", "Running"),
    ("Train", "Completed"), ("Eval", "Waiting"), ("Eval", "Ready"), ("Eval", "Starting"),
    ("Eval", "Running"), ("Eval", "Completed"), ("Deploy", "Waiting"), ("Deploy", "Ready"),
    ("Deploy", "Starting"), ("Deploy", "Running"), ("Deploy", "Completed"), ("Train", "Waiting"),
]  # fmt: skip


def fixture_documents(name: str) -> list[dict[str, Any]]:
    docs: list[dict[str, Any]] = load_yaml((FIXTURE / name).read_text())
    return docs


def localise(docs: list[dict[str, Any]], *, data: Path, out: Path, workdir: Path) -> list[dict[str, Any]]:
    """The fixture's documents with only what a user changes: node names and host paths."""
    for doc in docs:
        spec = doc["spec"]
        if doc["kind"] == "Dataset":
            spec["nodeName"], spec["url"] = NODE, str(data)
        elif doc["kind"] == "Model":
            spec["url"] = spec["url"].replace("/output/thermo-drift", str(out))
        elif doc["kind"] == "LifelongLearningJob":
            spec["outputDir"] = str(out)
            for stage in STAGES:
                pod = spec[stage]["template"]["spec"]
                pod["nodeName"] = NODE
                for container in pod["containers"]:
                    container["workingDir"] = str(workdir)
                for volume in pod.get("volumes", []):
                    volume["hostPath"]["path"] = str(data.parent)
    return docs


IMAGE = "example.org/thermo-drift"  # the fixture's image, every tag


@pytest.fixture
def procs(tmp_path: Path, broker: Broker) -> Iterator[tuple[GMProcess, LCProcess]]:
    """A started GM and an LC for ``NODE`` that is NOT started: the test applies first."""
    config = tmp_path / "lc-config.yaml"
    config.write_text(yaml.safe_dump({"images": {IMAGE: {"entrypoint": [sys.executable]}}}))
    gm = GMProcess(tmp_path, broker_url=broker.url, prefix=broker.prefix)  # --job-backoff-base 1
    lc = LCProcess(
        tmp_path, node=NODE, broker_url=broker.url, prefix=broker.prefix, extra=["--config", str(config)]
    )
    try:
        gm.start()
        gm.wait_ready()
        yield gm, lc
    finally:
        for proc in (lc, gm):
            if proc.alive():
                proc.kill()


def test_the_fixture_is_in_sedna_s_shape() -> None:
    """What the e2e test relies on the fixture being (so that a change to it cannot quietly
    make the e2e test easier)."""
    (job,) = fixture_documents("lifelonglearningjob.yaml")
    assert job["spec"]["trainSpec"]["trigger"]["timer"] == {"start": "00:00", "end": "24:00"}
    assert job["spec"]["trainSpec"]["trigger"]["checkPeriodSeconds"] == 30
    assert job["spec"]["outputDir"]
    for stage in STAGES:
        pod = job["spec"][stage]["template"]["spec"]
        for container in pod["containers"]:
            assert "command" not in container
            assert container["args"] and container["workingDir"]
            assert container["image"] and container["imagePullPolicy"]
            assert all(isinstance(env["value"], str) for env in container["env"])
    assert [d["kind"] for d in fixture_documents("models.yaml")] == ["Model", "Model"]


def test_a_sedna_shaped_job_retries_a_failed_train_on_the_same_data_and_deploys(
    procs: tuple[GMProcess, LCProcess], tmp_path: Path
) -> None:
    gm, lc = procs
    workdir = tmp_path / "image-workdir"
    shutil.copytree(FIXTURE / "worker", workdir)
    data = tmp_path / "data" / "samples.csv"
    data.parent.mkdir()
    readings = (f"{20 + (i * 7) % 15}.{i % 10},{int((i * 7) % 15 > 8)}\n" for i in range(60))
    data.write_text("celsius,drift\n" + "".join(readings))  # 60 > the threshold of 40
    out = tmp_path / "output"
    docs = [
        *fixture_documents("dataset.yaml"),
        *fixture_documents("models.yaml"),
        *fixture_documents("lifelonglearningjob.yaml"),
    ]
    dataset, baseline, serving, job = localise(docs, data=data, out=out, workdir=workdir)
    name = job["metadata"]["name"]

    applied = gm.cli("apply", "-f", "-", stdin=yaml.safe_dump_all([dataset, baseline, serving, job])).stdout
    for kind, obj in (
        ("dataset", dataset),
        ("model", baseline),
        ("model", serving),
        ("lifelonglearningjob", job),
    ):
        assert f"{kind}.sedna.io/{obj['metadata']['name']} created" in applied, applied

    # Applied before the node ever said hello: stored, and waiting for it.
    wait_for(
        lambda: "WaitingForNode" in gm.cli("describe", "ds", dataset["metadata"]["name"]).stdout,
        what="the Dataset to wait for its node",
    )
    assert "Waiting For" in gm.cli("describe", "ll", name).stdout
    assert gm.conditions(name) == [("Train", "Waiting")]
    lc.start()
    lc.wait_online(gm)

    # The trigger is checked at once when the job arrives; the retry waits 1 s (--job-backoff-base).
    converged = history_follows(gm, [gm, lc], name, RETRIED_ROUND)
    wait_for(converged, timeout=90, interval=0.2, what=f"the retried round of {name}\nLC:\n{lc.log_tail()}")

    conditions = gm.get("LifelongLearningJob", name)["status"]["conditions"]  # type: ignore[index]
    first_ready, failed, retry = conditions[1], conditions[4], conditions[5]
    assert "exit code 3" in failed["message"]
    assert retry["reason"] == "Retry"
    assert retry["message"].startswith("Train attempt 1 of 7 failed; attempt 2 starts at ")
    first_data, retry_data = json.loads(first_ready["data"]), json.loads(retry["data"])
    assert retry_data["trainDataURL"] == first_data["trainDataURL"]
    assert (retry_data["attempt"], retry_data["maxAttempts"]) == (2, 7)

    # Both runs of train.py got the same training file, unchanged, from two workers of round 1.
    runs = [json.loads(line) for line in (workdir / "runs.jsonl").read_text().splitlines()]
    assert [r["worker"] for r in runs] == [f"{name}-train-1", f"{name}-train-1-retry1"]
    assert runs[0]["data"] == runs[1]["data"] == first_data["trainDataURL"]
    assert runs[0]["sha256"] == runs[1]["sha256"]
    assert runs[0]["output"] == runs[1]["output"] == str(out / "train" / "1")  # as Sedna lays it out

    # Deployed: the inference worker serves the model the retried Train wrote.
    served = json.loads((workdir / "serving.json").read_text())
    assert served == {"model": str(out / "deploy" / "model.json"), "batch": 16}
    assert json.loads(Path(served["model"]).read_text())["rows"] > 0
    described = gm.cli("describe", "ll", name).stdout
    assert "Round:             1" in described
    models = gm.cli("get", "model").stdout
    assert "thermo-drift-baseline" in models and "thermo-drift-serving" in models
