"""Helpers shared by the demo workers: reading the dataset's CSV and talking to the LC.

Not a lifelong module: the workers are plain scripts that a user could copy. They only need
numpy, scikit-learn and the standard library.
"""

from __future__ import annotations

import json
import os
import pickle
import urllib.request
from pathlib import Path
from typing import Any

import numpy as np


def local_path(url: str) -> Path:
    return Path(url[len("file://") :]) if url.startswith("file://") else Path(url)


def load_csv(url: str) -> tuple[np.ndarray, np.ndarray]:
    """A dataset file: a header line, then ``label,f0,...,f63`` per sample."""
    path = local_path(url)
    rows = [line for line in path.read_text().splitlines()[1:] if line.strip()]
    if not rows:
        return np.zeros((0, 64)), np.zeros(0, dtype=int)
    data = np.array([[float(v) for v in row.split(",")] for row in rows])
    return data[:, 1:] / 16.0, data[:, 0].astype(int)


def load_model(url: str) -> dict[str, Any]:
    with local_path(url).open("rb") as fh:
        model: dict[str, Any] = pickle.load(fh)
    return model


def save_model(path: Path, model: dict[str, Any]) -> None:
    path.parent.mkdir(parents=True, exist_ok=True)
    tmp = path.with_name(path.name + ".tmp")
    with tmp.open("wb") as fh:
        pickle.dump(model, fh)
    os.replace(tmp, path)


def accuracy(model: dict[str, Any] | None, x: np.ndarray, y: np.ndarray) -> float | None:
    if model is None or len(y) == 0:
        return None
    return float((model["estimator"].predict(x) == y).mean())


def post_info(results: list[dict[str, Any]]) -> None:
    """Tell the LC what this worker produced: ``POST $LC_SERVER/sedna/workers/$WORKER_NAME/info``."""
    server = os.environ["LC_SERVER"].rstrip("/")
    url = f"{server}/sedna/workers/{os.environ['WORKER_NAME']}/info"
    body = json.dumps({"ownerName": os.environ.get("JOB_NAME", ""), "results": results}).encode()
    req = urllib.request.Request(url, data=body, method="POST", headers={"Content-Type": "application/json"})
    with urllib.request.urlopen(req, timeout=10) as resp:
        resp.read()
