"""Eval stage worker: scores each task group of MODEL_URLS's index on TEST_DATASET_URL, posts the
scores to the KB and reports a new index in which groups scoring under ``model_threshold`` (an
env of the template; operator ``>`` unless ``operator`` says otherwise) are not deployed.

With ``TASK_TEST_DATASET_URL`` (a labelled csv file with samples of every task, the known ones and
those not learned yet, e.g. ``test.csv`` of ``digits_domains.py``) it also scores the round's
knowledge per task on that fixed test set, as inference would serve it (a task no model knows
yet goes to the closest known model), and adds per task ``test_accuracy``, ``test_samples`` and
``test_unseen`` (how many of them were unseen: the task has no model yet) to the round's eval
metrics in the KB: the accuracy per task per round that ``lifelong demo`` shows. Its unseen
samples are not posted for labelling: they are test data."""

from __future__ import annotations

import os
import sys

from interface import ATTRIBUTES, LABEL, job

from lifelong.learning import BaseConfig, CSVDataParse, LifelongLearning
from lifelong.learning.algorithms import entry_of
from lifelong.learning.config import round_of


def score_tasks(service: LifelongLearning, url: str) -> dict[str, dict[str, float]]:
    """Accuracy per task (its entry) of what the service serves, on the labelled file ``url``."""
    data = CSVDataParse(data_type="eval")
    data.parse(url, label=LABEL)
    truth = list(data.y)
    tasks = [entry_of(a, ATTRIBUTES) for a in data.attributes(ATTRIBUTES)]
    predicted, unseen, _ = service.inference(data, unseen_sample_postprocess=lambda samples: None)
    flags = unseen if isinstance(unseen, list) else [unseen]
    scores: dict[str, dict[str, float]] = {}
    for entry in dict.fromkeys(tasks):
        idx = [i for i, t in enumerate(tasks) if t == entry]
        right = sum(1 for i in idx if predicted[i] == truth[i])
        scores[entry] = {
            "test_accuracy": round(right / len(idx), 4),
            "test_samples": float(len(idx)),
            "test_unseen": float(sum(1 for i in idx if flags[i])),
        }
    return scores


def main() -> int:
    data = CSVDataParse(data_type="eval")
    data.parse(BaseConfig.test_dataset_url, label=LABEL)
    service = job()
    print(service.evaluate(data))
    task_test = os.environ.get("TASK_TEST_DATASET_URL")
    if task_test:
        per_task = score_tasks(service, task_test)
        evaluated = {t.entry: dict(t.scores) for t in service.tasks_detail}
        merged = {entry: {**evaluated.get(entry, {}), **s} for entry, s in per_task.items()}
        service.kb.post_metrics(
            f"{BaseConfig.namespace}/{BaseConfig.job_name}", round_of(BaseConfig.worker_name), "eval", merged
        )
        print("per task on the fixed test set:", {e: s["test_accuracy"] for e, s in per_task.items()})
    return 0


if __name__ == "__main__":
    sys.exit(main())
