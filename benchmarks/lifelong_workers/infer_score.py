"""Deploy stage worker of ``make eval``'s jobs: the example's inference worker, plus a score.

Who runs it: the Local Controller, as the Deploy worker of the LifelongLearningJob that
``benchmarks/lifelong_eval.py`` applies (Train and Eval run ``examples/lifelong/train.py`` and
``eval.py`` unchanged). It uses the example's ``interface`` (estimator, task definition, unseen
sample recognition) and the library as ``examples/lifelong/infer.py`` does:

1. loads the task index of MODEL_URLS and infers every sample of INFER_DATASET_URL; the samples
   of a task no model knows are unseen and the library posts them to the LC, which ships them
   to the knowledge base (what ``make eval`` then labels);
2. infers SCORE_DATASET_URL (a labelled csv: every task's test set) with the same knowledge,
   without shipping anything, and writes the accuracy per task (the ``domain`` attribute) to
   ``SCORES_DIR/<round>.json`` with the counts of step 1;
3. reports to the LC and exits, which completes the stage.
"""

from __future__ import annotations

import csv
import json
import os
import sys
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parents[2] / "examples" / "lifelong"))

from interface import LABEL, job

from lifelong.learning import BaseConfig, CSVDataParse, post_worker_info
from lifelong.learning.config import round_of


def _truth(path: str) -> tuple[list[str], list[str]]:
    """The labels and the domains of a labelled csv file."""
    with open(path, newline="") as fh:
        rows = list(csv.DictReader(fh))
    return [r[LABEL] for r in rows], [r["domain"] for r in rows]


def main() -> int:
    service = job()
    service.load()
    inferred = unseen_count = 0
    url = os.environ.get("INFER_DATASET_URL")
    if url:
        data = CSVDataParse(data_type="test")
        data.parse(url, label=LABEL)
        results, unseen, _ = service.inference(data)
        flags = unseen if isinstance(unseen, list) else [unseen]
        inferred, unseen_count = len(results), sum(flags)
        if service.shipper is not None and not service.shipper.flush(
            float(os.environ.get("FLUSH_SECONDS", "60"))
        ):
            print(f"{len(service.shipper.queue)} unseen samples could not be posted yet", file=sys.stderr)
    score_url = os.environ["SCORE_DATASET_URL"]
    test = CSVDataParse(data_type="test")
    test.parse(score_url, label=LABEL)
    predicted, _, _ = service.inference(test, unseen_sample_postprocess=lambda samples: None)
    labels, domains = _truth(score_url)
    right: dict[str, int] = {}
    total: dict[str, int] = {}
    for pred, label, domain in zip(predicted, labels, domains, strict=True):
        total[domain] = total.get(domain, 0) + 1
        right[domain] = right.get(domain, 0) + int(str(pred) == label)
    rnd = round_of(BaseConfig.worker_name) or 0
    out = {
        "round": rnd,
        "accuracy": {d: right[d] / total[d] for d in total},
        "inferred": inferred,
        "unseen": unseen_count,
        "tasks": sorted(set((service.knowledge.map if service.knowledge else {}).values())),
    }
    folder = Path(os.environ["SCORES_DIR"])
    folder.mkdir(parents=True, exist_ok=True)
    tmp = folder / f".{rnd}.json"
    tmp.write_text(json.dumps(out))
    tmp.replace(folder / f"{rnd}.json")
    post_worker_info("deploy", [], owner_info={"unseen": unseen_count})
    return 0


if __name__ == "__main__":
    sys.exit(main())
