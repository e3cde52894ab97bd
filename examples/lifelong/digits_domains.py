"""The example's data: scikit-learn's handwritten digits (``load_digits``) seen by three cameras.

Who uses it: the example's workers' data (``python digits_domains.py DIR`` writes the csv files),
the tests of the library (``tests/unit/test_learning_*.py``) and docs/writing-workers.md. The
camera is the task attribute ``domain``:

- ``cam_a``: the digits as they are (pixels 0..16);
- ``cam_b``: inverted, ``16 - x``;
- ``cam_c``: inverted and dimmed, ``0.6 * (16 - x)`` plus noise: the unseen task, closest to cam_b.

A csv file has the header ``label,domain,f0,...,f63``.
"""

from __future__ import annotations

import csv
import sys
from pathlib import Path

import numpy as np

DOMAINS = ("cam_a", "cam_b", "cam_c")
COLUMNS = ["label", "domain", *[f"f{i}" for i in range(64)]]


def digits() -> tuple[np.ndarray, np.ndarray]:
    from sklearn.datasets import load_digits

    data = load_digits()
    return np.asarray(data.data, dtype=float), np.asarray(data.target, dtype=int)


def view(domain: str, x: np.ndarray, seed: int = 0) -> np.ndarray:
    """The pixels ``x`` as camera ``domain`` sees them (rounded to one decimal)."""
    if domain == "cam_a":
        out = x.copy()
    elif domain == "cam_b":
        out = 16.0 - x
    elif domain == "cam_c":
        rng = np.random.default_rng(seed)
        out = np.clip(0.6 * (16.0 - x) + rng.normal(0.0, 0.8, x.shape), 0.0, 16.0)
    else:
        raise ValueError(f"unknown domain {domain!r}: one of {', '.join(DOMAINS)}")
    return np.round(out, 1)


def split(n: int, parts: int, seed: int = 0) -> list[np.ndarray]:
    """``parts`` disjoint random index sets over ``n`` samples."""
    order = np.random.default_rng(seed).permutation(n)
    return [np.sort(p) for p in np.array_split(order, parts)]


def rows(domain: str, x: np.ndarray, y: np.ndarray | None, seed: int = 0) -> list[list[str]]:
    seen = view(domain, x, seed)
    out = []
    for i in range(len(seen)):
        label = "" if y is None else str(int(y[i]))
        out.append([label, domain, *[f"{v:g}" for v in seen[i]]])
    return out


def write_csv(path: Path, lines: list[list[str]]) -> Path:
    path.parent.mkdir(parents=True, exist_ok=True)
    with path.open("w", newline="") as fh:
        writer = csv.writer(fh)
        writer.writerow(COLUMNS)
        writer.writerows(lines)
    return path


def write_example(folder: Path) -> dict[str, Path]:
    """The example's files: ``train.csv`` (cam_a and cam_b, labelled, for the Dataset),
    ``infer.csv`` (cam_a, cam_b and cam_c without labels, what the inference worker meets),
    ``cam_c_labels.csv`` (the same cam_c samples with their labels, what labelling gives) and
    ``test.csv`` (other digits of all three cameras, labelled: a fixed test set per task that the
    Eval worker scores every round when ``TASK_TEST_DATASET_URL`` names it)."""
    x, y = digits()
    a, b, c, rest = split(len(y), 4)
    train = rows("cam_a", x[a], y[a]) + rows("cam_b", x[b], y[b])
    held = rest[:60]
    ta, tb, tc = np.array_split(rest[60:], 3)
    test = rows("cam_a", x[ta], y[ta]) + rows("cam_b", x[tb], y[tb]) + rows("cam_c", x[tc], y[tc], seed=2)
    infer = (
        rows("cam_a", x[held[:20]], None)
        + rows("cam_b", x[held[20:40]], None)
        + rows("cam_c", x[c[:100]], None, seed=1)
    )
    return {
        "train": write_csv(folder / "train.csv", train),
        "infer": write_csv(folder / "infer.csv", infer),
        "cam_c_labels": write_csv(folder / "cam_c_labels.csv", rows("cam_c", x[c[:100]], y[c[:100]], seed=1)),
        "test": write_csv(folder / "test.csv", test),
    }


if __name__ == "__main__":
    for name, path in write_example(Path(sys.argv[1] if len(sys.argv) > 1 else ".")).items():
        print(f"{name}: {path}")
