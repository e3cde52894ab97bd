"""The benchmark harness runs end to end at its tiniest size, so that it cannot rot.

No timings are checked here (timings belong in ``make bench``, docs/performance.md): only that
every scenario ran against real processes on the embedded broker and produced its figures.
It starts real processes (broker, GM, LC, a few simulated nodes) and takes about half a minute.
"""

from __future__ import annotations

import json
import subprocess
import sys
from pathlib import Path

import pytest

REPO = Path(__file__).resolve().parents[2]

pytestmark = pytest.mark.e2e


def test_every_scenario_runs_at_the_tiniest_size(tmp_path: Path) -> None:
    out = subprocess.run(
        [
            sys.executable,
            "-m",
            "benchmarks",
            "--tiny",
            "--broker",
            "amqtt",
            "--no-plots",
            "--out",
            str(tmp_path),
        ],
        cwd=REPO,
        capture_output=True,
        text=True,
        timeout=280,
        check=False,
    )
    assert out.returncode == 0, out.stdout + out.stderr
    report = json.loads((tmp_path / "latest-tiny.json").read_text())
    assert report["machine"]["cpus"]
    results = report["results"]["amqtt"]
    errors = {name: r["error"] for name, r in results.items() if "error" in r}
    assert not errors, f"scenarios failed: {errors}\n{out.stdout}"
    for name in (
        "downstream",
        "downstream-e2e",
        "upstream",
        "latency-apply",
        "latency-report",
        "many-nodes",
        "storm",
        "backlog",
        "footprint-lc",
        "footprint-gm",
    ):
        assert results[name]["lifelong"] is not None, name
    for name in ("latency-apply", "latency-report"):  # where the time goes, each before the ack
        extra = results[name]["extra"]
        assert set(extra["stages"]) == {"answered", "on the bus"}, name
        assert all(0 < ms <= extra["lifelong"]["max"] for ms in extra["stages"].values()), (name, extra)
    assert "| scenario | lifelong | raw paho | ratio |" in out.stdout
