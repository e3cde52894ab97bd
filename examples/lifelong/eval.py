"""Eval stage worker: scores each task group of MODEL_URLS's index on TEST_DATASET_URL, posts the
scores to the KB and reports a new index in which groups scoring under ``model_threshold`` (an
env of the template; operator ``>`` unless ``operator`` says otherwise) are not deployed."""

from __future__ import annotations

import sys

from interface import LABEL, job

from lifelong.learning import BaseConfig, CSVDataParse


def main() -> int:
    data = CSVDataParse(data_type="eval")
    data.parse(BaseConfig.test_dataset_url, label=LABEL)
    print(job().evaluate(data))
    return 0


if __name__ == "__main__":
    sys.exit(main())
