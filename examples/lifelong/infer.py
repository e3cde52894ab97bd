"""Deploy stage worker and inference: loads the task index of MODEL_URLS, checks that it
predicts, and, when INFER_DATASET_URL names a csv file of samples, infers them all. Samples of a
camera no task knows (or, with CONFIDENCE_THRESHOLD, that the model is unsure of) are unseen:
the library posts them to the LC, which ships them to the knowledge base to be labelled. Then it
reports to the LC and exits, which completes the stage."""

from __future__ import annotations

import os
import sys

from interface import LABEL, job

from lifelong.learning import CSVDataParse, post_worker_info


def main() -> int:
    service = job()
    knowledge = service.load()
    print(f"serving {len(knowledge.map)} tasks: {sorted(set(knowledge.map.values()))}")
    url = os.environ.get("INFER_DATASET_URL")
    unseen_count = 0
    if url:
        data = CSVDataParse(data_type="test")
        data.parse(url, label=LABEL)
        results, unseen, _ = service.inference(data)
        flags = unseen if isinstance(unseen, list) else [unseen]
        unseen_count = sum(flags)
        print(f"inferred {len(results)} samples, {unseen_count} unseen")
        if service.shipper is not None and not service.shipper.flush(
            float(os.environ.get("FLUSH_SECONDS", "60"))
        ):
            print(f"{len(service.shipper.queue)} unseen samples could not be posted yet", file=sys.stderr)
    post_worker_info("deploy", [], owner_info={"unseen": unseen_count})
    return 0


if __name__ == "__main__":
    sys.exit(main())
