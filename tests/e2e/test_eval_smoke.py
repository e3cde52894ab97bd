"""``make eval``'s pipeline end to end at its ``--fast`` size, so that it cannot rot.

The figures are not checked here (they belong to ``make eval`` and docs/lifelong-learning.md):
only that the real system ran both data sets through both rounds (the new task's samples
unseen at inference, in the KB, labelled and learned from the closest known task, and known in
round 2), that the baselines learned from the very samples the system did (in round 1 this
system and the per-task baseline train the same estimator on the same samples, so their scores
agree exactly), and that the JSON and the plots are written. It starts real processes (a broker,
``lifelong gm --kb-dir``, ``lifelong lc`` and the library's workers) and takes about 50 s.
"""

from __future__ import annotations

import json
import subprocess
import sys
from pathlib import Path

import pytest

REPO = Path(__file__).resolve().parents[2]
SYSTEMS = {"this_system", "per_task_scratch", "global", "global_finetune", "sedna_default"}
METRICS = {"average_accuracy", "bwt", "fwt", "forgetting", "samples_transfer_ratio"}

pytestmark = [pytest.mark.e2e, pytest.mark.slow, pytest.mark.timeout(400)]


def test_eval_runs_the_system_and_the_baselines_on_both_data_sets(tmp_path: Path) -> None:
    out = subprocess.run(
        [
            sys.executable,
            "-m",
            "benchmarks.lifelong_eval",
            "--fast",
            "--out",
            str(tmp_path / "results"),
            "--workdir",
            str(tmp_path / "work"),
        ],
        cwd=REPO,
        capture_output=True,
        text=True,
        timeout=380,
        check=False,
    )
    assert out.returncode == 0, f"stdout:\n{out.stdout[-3000:]}\nstderr:\n{out.stderr[-3000:]}"
    doc = json.loads((tmp_path / "results" / "latest-lifelong-eval-fast.json").read_text())
    assert doc["size"] == "fast"
    assert [r["dataset"] for r in doc["runs"]] == ["digits", "cancer"]
    new_task = {"digits": ("cam-c", "cam-b"), "cancer": ("lab-c", "lab-b")}
    for run in doc["runs"]:
        system = run["system_run"]
        # every new-task sample met at inference was unseen, reached the KB and was labelled ...
        new_samples = system["inferred"] - 2 * {"digits": 20, "cancer": 10}[run["dataset"]]
        assert system["unseen"] == new_samples == system["labelled"], system
        # ... round 2 learned it from the closest known task, and knows it
        entry, source = new_task[run["dataset"]]
        assert (system["transfer"][entry] or {}).get("from") == source, system["transfer"]
        assert system["unseen_round2"] == 0
        assert run["train_samples"][1] > run["train_samples"][0]
        assert set(run["systems"]) == SYSTEMS
        for name, result in run["systems"].items():
            matrix = result["matrix"]
            assert len(matrix) == 2 and all(len(row) == 3 for row in matrix), (name, matrix)
            assert all(0.0 <= v <= 1.0 for row in matrix for v in row), (name, matrix)
            assert set(result["metrics"]) == METRICS
        # the same samples, estimator and scoring: round 1 of this system = the per-task baseline's
        assert run["systems"]["this_system"]["matrix"][0] == run["systems"]["per_task_scratch"]["matrix"][0]
        # Sedna's default answers every task with task 0's model and sends half of each batch
        assert run["systems"]["sedna_default"]["metrics"]["samples_transfer_ratio"] == 0.5
    assert set(doc["summary"]) == {"digits", "cancer"}
    assert len(doc["figures"]) == 4
    for name in doc["figures"]:
        assert (tmp_path / "results" / name).read_bytes()[:8] == b"\x89PNG\r\n\x1a\n"
    assert "this_system" in out.stdout and "average_accuracy" in out.stdout
