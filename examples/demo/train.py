"""Train stage worker: fits a classifier on TRAIN_DATASET_URL and writes it under OUTPUT_URL.

Environment (set by the LC, names as in Sedna): TRAIN_DATASET_URL (the round's training pool),
TEST_DATASET_URL (its evaluation pool, optional), OUTPUT_URL (a directory for the model),
LC_SERVER and WORKER_NAME (where to post the result). Hyper-parameters come from the pod
template's env: C (inverse regularisation, default 1.0) and MAX_ITER (default 500).
"""

from __future__ import annotations

import os
import sys
import time
from pathlib import Path

from common_io import accuracy, load_csv, post_info, save_model
from sklearn.linear_model import LogisticRegression


def main() -> int:
    x, y = load_csv(os.environ["TRAIN_DATASET_URL"])
    if len(y) == 0:
        print("no training samples", file=sys.stderr)
        return 1
    round_ = os.environ.get("WORKER_NAME", "x-train-0").rsplit("-", 1)[-1]
    started = time.monotonic()
    estimator = LogisticRegression(
        C=float(os.environ.get("C", "1.0")), max_iter=int(os.environ.get("MAX_ITER", "500"))
    )
    estimator.fit(x, y)
    model = {
        "estimator": estimator,
        "round": int(round_),
        "samples": len(y),
        "classes": sorted(set(y.tolist())),
    }
    out = Path(os.environ["OUTPUT_URL"]) / "model.pkl"
    save_model(out, model)
    metrics = {"samples": len(y), "train_accuracy": round(accuracy(model, x, y) or 0.0, 4)}
    test_url = os.environ.get("TEST_DATASET_URL")
    if test_url:
        tx, ty = load_csv(test_url)
        score = accuracy(model, tx, ty)
        if score is not None:
            metrics["test_accuracy"] = round(score, 4)
    metrics["seconds"] = round(time.monotonic() - started, 3)
    print(f"trained round {round_} on {len(y)} samples: {metrics}")
    post_info([{"url": str(out), "format": "pkl", "metrics": metrics}])
    return 0


if __name__ == "__main__":
    sys.exit(main())
