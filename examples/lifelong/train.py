"""Train stage worker: learns one model per camera from TRAIN_DATASET_URL with the lifelong
library; from the second round on it updates the knowledge of CLOUD_KB_INDEX (known cameras
keep theirs and learn their new samples, a new camera becomes a new task). The library uploads
the models, posts the task index to the KB and reports its URL to the LC."""

from __future__ import annotations

import sys

from interface import LABEL, job

from lifelong.learning import BaseConfig, CSVDataParse


def main() -> int:
    data = CSVDataParse(data_type="train")
    data.parse(BaseConfig.train_dataset_url, label=LABEL)
    if data.num_examples() == 0:
        print("no training samples", file=sys.stderr)
        return 1
    print(job().train(data))
    return 0


if __name__ == "__main__":
    sys.exit(main())
