"""Eval stage worker: scores the new model against the deployed one on the evaluation pool.

Environment: MODEL_URLS (the newly trained model), TEST_DATASET_URL (the evaluation pool, all
samples held out so far), DEPLOY_DIR (from the pod template: where ``serving.json`` names the
deployed model), LC_SERVER and WORKER_NAME. The model it reports is the one the Deploy stage
deploys: the new model when it scores at least as well as the deployed one (by more than
MIN_GAIN, default 0.0), otherwise the deployed model again, so nothing changes.
"""

from __future__ import annotations

import json
import os
import sys
from pathlib import Path

from common_io import accuracy, load_csv, load_model, post_info


def main() -> int:
    urls = [u for u in os.environ.get("MODEL_URLS", "").split(",") if u]
    if not urls:
        print("MODEL_URLS is empty", file=sys.stderr)
        return 1
    x, y = load_csv(os.environ["TEST_DATASET_URL"])
    new = load_model(urls[0])
    new_score = accuracy(new, x, y)
    deployed_url = None
    serving = Path(os.environ.get("DEPLOY_DIR", "")) / "serving.json"
    if serving.is_file():
        deployed_url = json.loads(serving.read_text()).get("url")
    deployed = load_model(deployed_url) if deployed_url and Path(deployed_url).exists() else None
    old_score = accuracy(deployed, x, y)
    gain = float(os.environ.get("MIN_GAIN", "0.0"))
    better = old_score is None or (new_score is not None and new_score >= old_score + gain)
    metrics = {
        "accuracy": new_score,
        "deployed_accuracy": old_score,
        "deployed_round": deployed["round"] if deployed else None,
        "eval_samples": len(y),
        "decision": "deploy" if better else "keep",
    }
    chosen = urls[0] if better or deployed_url is None else deployed_url
    print(f"new model {new_score} vs deployed {old_score} on {len(y)} samples: {metrics['decision']}")
    post_info([{"url": chosen, "format": "pkl", "metrics": metrics}])
    return 0


if __name__ == "__main__":
    sys.exit(main())
