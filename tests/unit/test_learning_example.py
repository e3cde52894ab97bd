"""The example workers of ``examples/lifelong/`` (train.py, eval.py, infer.py) run as the LC runs
them, with Sedna's variables, a local KB and a real loopback HTTP server as the LC's worker API;
and the worked example of docs/writing-workers.md runs as written."""

from __future__ import annotations

import json
import os
import re
import subprocess
import sys
from pathlib import Path

import pytest
from unit.test_learning_worker_api import Recorder

from lifelong.common.kb import UnseenSamples

ROOT = Path(__file__).resolve().parents[2]
EXAMPLES = ROOT / "examples" / "lifelong"

pytestmark = pytest.mark.filterwarnings("ignore::sklearn.exceptions.ConvergenceWarning")


def run(script: str, env: dict[str, str]) -> str:
    proc = subprocess.run(
        [sys.executable, str(EXAMPLES / script)],
        env={"PATH": os.environ.get("PATH", ""), "PYTHONWARNINGS": "ignore", **env},
        capture_output=True,
        text=True,
        timeout=240,
        check=False,
    )
    assert proc.returncode == 0, proc.stderr[-3000:]
    return proc.stdout


@pytest.mark.slow
def test_example_workers_train_evaluate_deploy_and_post_unseen_samples(tmp_path: Path) -> None:
    subprocess.run([sys.executable, str(EXAMPLES / "digits_domains.py"), str(tmp_path / "data")], check=True)
    lc = Recorder()
    try:
        base = {
            "NAMESPACE": "default",
            "JOB_NAME": "lifelong-digits",
            "LC_SERVER": lc.url,
            "KB_SERVER": f"file://{tmp_path / 'kb'}",
            "MAX_ITER": "100",
        }
        run(
            "train.py",
            {
                **base,
                "WORKER_NAME": "lifelong-digits-train-1",
                "OUTPUT_URL": str(tmp_path / "out/train/1"),
                "HAS_COMPLETED_INITIAL_TRAINING": "false",
                "TRAIN_DATASET_URL": str(tmp_path / "data/train.csv"),
            },
        )
        [(path, info)] = lc.posts
        assert path == "/sedna/workers/lifelong-digits-train-1/info"
        index_url = info["results"][0]["url"]
        assert json.loads(Path(index_url).read_text())["seen_task"]["extractor"]["attributes"] == ["domain"]
        run(
            "eval.py",
            {
                **base,
                "WORKER_NAME": "lifelong-digits-eval-1",
                "OUTPUT_URL": str(tmp_path / "out/eval/1"),
                "MODEL_URLS": index_url,
                "TEST_DATASET_URL": str(tmp_path / "data/train.csv"),
                "model_threshold": "0.5",
            },
        )
        evaluated = lc.posts[1][1]["results"][0]
        assert evaluated["metrics"]["cam-a"]["accuracy"] > 0.9
        out = run(
            "infer.py",
            {
                **base,
                "WORKER_NAME": "lifelong-digits-deploy-1",
                "OUTPUT_URL": str(tmp_path / "out"),
                "MODEL_URLS": evaluated["url"],
                "INFER_DATASET_URL": str(tmp_path / "data/infer.csv"),
            },
        )
        assert "100 unseen" in out
        paths = [p for p, _ in lc.posts]
        assert paths[2:] == [
            "/lifelong/v1/jobs/default/lifelong-digits/samples",
            "/sedna/workers/lifelong-digits-deploy-1/info",
        ]
        samples = UnseenSamples.parse(lc.posts[2][1]).samples
        assert len(samples) == 100 and {s.attrs["domain"] for s in samples} == {"cam_c"}
    finally:
        lc.close()


def test_the_worked_example_of_the_docs_runs(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    text = (ROOT / "docs" / "writing-workers.md").read_text()
    match = re.search(
        r"<!-- worked example: run by tests/unit/test_learning_example.py -->\s*```python\n(.*?)```",
        text,
        re.S,
    )
    assert match, "the worked example is missing from docs/writing-workers.md"
    monkeypatch.chdir(tmp_path)
    monkeypatch.syspath_prepend(str(EXAMPLES))
    for name in (
        "KB_SERVER",
        "LC_SERVER",
        "MODEL_URLS",
        "CLOUD_KB_INDEX",
        "HAS_COMPLETED_INITIAL_TRAINING",
        "KB_TOKEN",
    ):
        monkeypatch.delenv(name, raising=False)
    namespace: dict[str, object] = {}
    exec(compile(match.group(1), "docs/writing-workers.md", "exec"), namespace)
    transfer = namespace["transfer"]
    assert isinstance(transfer, dict) and transfer["from"] == "cam-b" and 0.5 < transfer["ratio"] <= 1.0
    assert namespace["unseen_count"] == 100


def test_the_example_resources_are_valid_once_filled_in(tmp_path: Path) -> None:
    from lifelong.common.api import load_documents

    values = {
        "{{WORKDIR}}": str(tmp_path),
        "{{NODE}}": "edge-1",
        "{{PYTHON}}": sys.executable,
        "{{EXAMPLES}}": str(EXAMPLES),
    }
    kinds = []
    for name in ("dataset.yaml", "lifelonglearningjob.yaml"):
        text = (EXAMPLES / name).read_text()
        for key, value in values.items():
            text = text.replace(key, value)
        assert "{{" not in text
        kinds += [type(obj).__name__ for obj in load_documents(text, source=name)]
    assert kinds == ["Dataset", "LifelongLearningJob"]
