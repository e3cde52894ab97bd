"""``examples/atcii`` end to end with real processes: a broker, ``lifelong gm`` and ``lifelong lc``.

The test loads the two example files and changes only what a user would: the node names, the
Dataset's url (a CSV of 600 rows that the test writes: more than the threshold of 500), the
job's outputDir, and a ``command`` for each container. Sedna's images cannot run here, so the
command runs a small Python worker that does what Sedna's atcii ``train.py``, ``eval.py`` and
``inference.py`` report; the example's ``args`` are kept and tell the worker which one it is.
The trigger is exactly the example's: ``checkPeriodSeconds: 60``, timer ``02:00``-``24:00``,
``num_of_samples > 500``.

The timer window is the LC's local time: the LC runs with a ``TZ`` (``Etc/GMT±N``) that puts its
local time near noon whatever time the test runs. The LC checks the trigger at once when the job
and its Dataset arrive, so the round starts without waiting for the 60 s period.
"""

from __future__ import annotations

import sys
import textwrap
from collections.abc import Iterator
from datetime import UTC, datetime, timedelta
from pathlib import Path
from typing import Any

import pytest
import yaml
from harness.brokers import Broker
from harness.processes import FULL_ROUND, GMProcess, LCProcess
from harness.waiting import wait_for

from lifelong.common.api import load_yaml

pytestmark = pytest.mark.e2e

NODE = "node-a"
EXAMPLE = Path(__file__).resolve().parents[2] / "examples" / "atcii"

# What Sedna's atcii workers report, in a few lines: train writes a model and posts it, eval
# scores the models it is given and posts them with the metric, inference serves the model.
WORKER = textwrap.dedent(
    """
    import json, os, sys, urllib.request
    from pathlib import Path

    script = sys.argv[1]  # the example's args: train.py, eval.py or inference.py

    def rows(url):
        return [line for line in Path(url).read_text().splitlines()[1:] if line.strip()]

    def post(results):
        body = json.dumps({"ownerName": os.environ["JOB_NAME"], "results": results}).encode()
        url = os.environ["LC_SERVER"].rstrip("/") + "/sedna/workers/" + os.environ["WORKER_NAME"] + "/info"
        headers = {"Content-Type": "application/json"}
        req = urllib.request.Request(url, data=body, method="POST", headers=headers)
        urllib.request.urlopen(req, timeout=10).read()

    if script == "train.py":
        assert os.environ["early_stopping_rounds"] == "100" and os.environ["metric_name"] == "mlogloss"
        samples = rows(os.environ["TRAIN_DATASET_URL"])
        out = Path(os.environ["OUTPUT_URL"])
        out.mkdir(parents=True, exist_ok=True)
        model = out / "model.json"
        model.write_text(json.dumps({"samples": len(samples)}))
        post([{"url": str(model), "format": "json", "metrics": {"samples": len(samples)}}])
    elif script == "eval.py":
        assert os.environ["metrics"] == "precision_score"
        urls = [u for u in os.environ["MODEL_URLS"].split(",") if u]
        assert urls and all(Path(u).exists() for u in urls), urls
        tested = rows(os.environ["TEST_DATASET_URL"])
        assert tested, "no evaluation samples"
        post([{"url": u, "format": "json", "metrics": {"precision_score": 0.9}} for u in urls])
    elif script == "inference.py":
        urls = [u for u in os.environ["MODEL_URLS"].split(",") if u]
        assert urls and Path(urls[0]).exists(), urls
        (Path(urls[0]).parent / "serving").write_text(urls[0])
    else:
        sys.exit(f"unknown worker {script}")
    """
)


def noon_zone(now_utc: datetime) -> tuple[str, int]:
    """A ``TZ`` whose local time is near noon at ``now_utc``, and its offset from UTC in hours.

    ``Etc/GMT-5`` is UTC+5 (the sign of the Etc zones is inverted)."""
    offset = (12 - now_utc.hour + 12) % 24 - 12  # in [-12, 11]
    return (f"Etc/GMT{-offset:+d}" if offset else "Etc/GMT"), offset


def atcii_manifests(worker: Path, data: Path, out: Path) -> tuple[dict[str, Any], dict[str, Any]]:
    """The example's Dataset and job with only what a user changes."""
    (dataset,) = load_yaml((EXAMPLE / "dataset.yaml").read_text())
    (job,) = load_yaml((EXAMPLE / "lifelonglearningjob.yaml").read_text())
    dataset["spec"]["nodeName"] = NODE
    dataset["spec"]["url"] = str(data)
    job["spec"]["outputDir"] = str(out)
    for field in ("trainSpec", "evalSpec", "deploySpec"):
        pod = job["spec"][field]["template"]["spec"]
        pod["nodeName"] = NODE
        pod["containers"][0]["command"] = [sys.executable, str(worker)]
    return dataset, job


@pytest.fixture
def procs(tmp_path: Path, broker: Broker) -> Iterator[tuple[GMProcess, LCProcess]]:
    zone, _ = noon_zone(datetime.now(UTC))
    gm = GMProcess(tmp_path, broker_url=broker.url, prefix=broker.prefix)
    lc = LCProcess(tmp_path, node=NODE, broker_url=broker.url, prefix=broker.prefix, env={"TZ": zone})
    gm.start()
    gm.wait_ready()
    lc.start()
    lc.wait_online(gm)
    yield gm, lc
    for proc in (lc, gm):
        if proc.alive():
            proc.kill()


def test_noon_zone_puts_any_time_of_day_inside_the_atcii_window() -> None:
    for hour in range(24):
        now = datetime(2026, 6, 1, hour, 59, tzinfo=UTC)
        _, offset = noon_zone(now)
        local = now + timedelta(hours=offset)
        assert local.hour == 12  # far from 02:00 and from midnight, for a test of minutes


def test_atcii_example_trains_evaluates_and_deploys(
    procs: tuple[GMProcess, LCProcess], tmp_path: Path
) -> None:
    gm, lc = procs
    worker = tmp_path / "atcii_worker.py"
    worker.write_text(WORKER)
    data = tmp_path / "data" / "trainData.csv"
    data.parent.mkdir()
    header = "Season,Climate,Sex,Age,Air temperature (C),Relative humidity (%),Air velocity (m/s),TSV"
    rows = (f"{i % 4},{i % 3},{i % 2},{20 + i % 50},24.5,50,0.1,{i % 3}\n" for i in range(600))
    data.write_text(header + "\n" + "".join(rows))
    out = tmp_path / "output"
    dataset, job = atcii_manifests(worker, data, out)
    trigger = job["spec"]["trainSpec"]["trigger"]
    assert trigger == {  # the example's trigger, unchanged
        "checkPeriodSeconds": 60,
        "timer": {"start": "02:00", "end": "24:00"},
        "condition": {"operator": ">", "threshold": 500, "metric": "num_of_samples"},
    }
    applied = gm.cli("apply", "-f", "-", stdin=yaml.safe_dump_all([dataset, job])).stdout
    name = job["metadata"]["name"]
    assert f"lifelonglearningjob.sedna.io/{name} created" in applied, applied

    def full_round() -> bool:
        gm.check_alive()
        lc.check_alive()
        got = gm.conditions(name)
        n = min(len(got), len(FULL_ROUND))
        assert got[:n] == FULL_ROUND[:n], f"unexpected history {got}"
        return len(got) >= len(FULL_ROUND)

    # Well under the 60 s period: the first check of the trigger fires at once.
    wait_for(full_round, timeout=50, interval=0.1, what=f"a full round of {name}\nLC:\n{lc.log_tail()}")
    deployed = out / "deploy" / "model.json"
    assert (out / "deploy" / "serving").read_text() == str(deployed)
    described = gm.cli("describe", "ll", name).stdout
    assert "Round:             1" in described
