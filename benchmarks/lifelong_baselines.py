"""The baselines of ``make eval``, run in-process on the very samples the system trained on.

Who uses it: ``benchmarks/lifelong_eval.py``, after a run of the real system: it hands over the
training files the Local Controller wrote for each round (``outputDir/data/train/<round>/``, the
Dataset split by ``trainProb``), the run's test sets and the example's estimator
(``examples/lifelong/interface.py``), so that every system learns from the same samples with the
same model and is scored the same way (accuracy on each task's test set after each round).
docs/lifelong-learning.md describes them:

- ``per_task_scratch``: one model per task (the ``domain`` attribute), each trained from scratch
  on its own samples, without the knowledge base's transfer; a task not learned yet is answered
  by the known model most confident on each sample (as this system does). Its score on a task
  at the round it is learned is the baseline of forward transfer (FWT).
- ``global``: one model on all the samples, retrained from scratch each round; the task
  attribute is not a feature.
- ``global_finetune``: one model trained in round 1, then each round continued from the last
  model on that round's new samples only (the incremental learning of a plain retraining loop),
  the way this system warm-starts a new task (``EstimatorAdapter.warm_from``).
- ``sedna_default``: Sedna's ``LifelongLearning`` with its default methods: per-task models by
  attribute (no transfer), but its default task allocation sends every inference sample to task
  0, so every task is answered by the first task's model; its default unseen-sample recognition
  splits each inference batch in half (the second half "unseen"), whatever the samples.
"""

from __future__ import annotations

from collections.abc import Callable, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np

from benchmarks.lifelong_data import Part, read_csv
from lifelong.learning.estimator import EstimatorAdapter

Estimator = Callable[[], Any]
Matrix = list[list[float]]
BASELINES = ("per_task_scratch", "global", "global_finetune", "sedna_default")


@dataclass
class RoundData:
    """The samples a round trained on: features, labels and each sample's task."""

    x: np.ndarray
    y: np.ndarray
    domains: list[str]

    @classmethod
    def read(cls, path: Path) -> RoundData:
        x, y, domains = read_csv(path)
        return cls(x, y, domains)

    def of(self, domain: str) -> tuple[np.ndarray, np.ndarray]:
        idx = [i for i, d in enumerate(self.domains) if d == domain]
        return self.x[idx], self.y[idx]

    def tasks(self) -> list[str]:
        return list(dict.fromkeys(self.domains))


def _fit(estimator: Estimator, x: np.ndarray, y: np.ndarray) -> EstimatorAdapter:
    adapter = EstimatorAdapter(estimator())
    adapter.fit(x, y)
    return adapter


def _accuracy(adapter: EstimatorAdapter, part: Part) -> float:
    return float(np.mean(adapter.predict(part.x) == part.y))


def _most_confident(models: dict[str, EstimatorAdapter], part: Part) -> float:
    """Accuracy when each sample is answered by the model most confident on it."""
    names = list(models)
    proba = [models[n].predict_proba(part.x) for n in names]
    if any(p is None for p in proba):
        return _accuracy(models[names[0]], part)
    best = np.argmax(np.stack([np.asarray(p).max(axis=1) for p in proba]), axis=0)
    preds = np.stack([models[n].predict(part.x) for n in names])
    return float(np.mean(preds[best, np.arange(len(part.y))] == part.y))


def per_task_scratch(
    rounds: Sequence[RoundData], test: Sequence[Part], estimator: Estimator
) -> list[list[float]]:
    out = []
    models: dict[str, EstimatorAdapter] = {}
    for data in rounds:
        models = {t: _fit(estimator, *data.of(t)) for t in data.tasks()}
        out.append(
            [
                _accuracy(models[p.domain], p) if p.domain in models else _most_confident(models, p)
                for p in test
            ]
        )
    return out


def global_model(
    rounds: Sequence[RoundData], test: Sequence[Part], estimator: Estimator
) -> list[list[float]]:
    out = []
    for data in rounds:
        model = _fit(estimator, data.x, data.y)
        out.append([_accuracy(model, p) for p in test])
    return out


def global_finetune(
    rounds: Sequence[RoundData], test: Sequence[Part], estimator: Estimator
) -> list[list[float]]:
    out = []
    model: EstimatorAdapter | None = None
    seen: set[bytes] = set()
    for data in rounds:
        keys = [row.tobytes() for row in data.x]
        new = [i for i, k in enumerate(keys) if k not in seen]
        seen.update(keys)
        if model is None:
            model = _fit(estimator, data.x, data.y)
        elif new:
            nxt = EstimatorAdapter(estimator())
            nxt.warm_from(model, data.x[new], data.y[new])
            model = nxt
        out.append([_accuracy(model, p) for p in test])
    return out


def sedna_default(
    rounds: Sequence[RoundData], test: Sequence[Part], estimator: Estimator
) -> list[list[float]]:
    out = []
    for data in rounds:
        first = data.tasks()[0]  # task 0: Sedna's TaskAllocationDefault allocates every sample to it
        model = _fit(estimator, *data.of(first))
        out.append([_accuracy(model, p) for p in test])
    return out


RUNNERS: dict[str, Callable[[Sequence[RoundData], Sequence[Part], Estimator], list[list[float]]]] = {
    "per_task_scratch": per_task_scratch,
    "global": global_model,
    "global_finetune": global_finetune,
    "sedna_default": sedna_default,
}


def transfer_ratio(name: str, stream_sizes: Sequence[int], unseen_of_system: Sequence[int]) -> float:
    """The share of inference samples each baseline sends to the cloud: Sedna's default half
    split sends half of each batch; the per-task baseline recognises unseen samples by attribute
    as this system does; the global models have no unseen-sample recognition."""
    inferred = sum(stream_sizes)
    if not inferred:
        return 0.0
    if name == "sedna_default":
        return sum(n - n // 2 for n in stream_sizes) / inferred
    if name == "per_task_scratch":
        return sum(unseen_of_system) / inferred
    return 0.0
