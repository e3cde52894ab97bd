"""The data sets of ``make eval`` (``benchmarks/lifelong_eval.py``): tasks are domains, marked by
an attribute column, as Sedna's lifelong-learning examples have them.

Who uses it: ``benchmarks/lifelong_eval.py`` (it writes each run's files with ``write_run``) and
the in-process baselines (``benchmarks/lifelong_baselines.py``, through ``read_csv``).
docs/lifelong-learning.md describes the data sets.

Two data sets, both bundled with scikit-learn (nothing is downloaded):

- ``digits`` (image-like): ``load_digits`` seen by the three cameras of
  ``examples/lifelong/digits_domains.py`` (``cam_a`` as is, ``cam_b`` inverted, ``cam_c``
  inverted, dimmed and noisy: the new task, closest to ``cam_b``); that file's ``view`` is used.
- ``cancer`` (tabular, with an attribute column like Sedna's atcii): ``load_breast_cancer``'s
  30 measurements, standardised over the whole set, as three laboratories report them. The
  laboratories are made up here, and said to be: ``lab_a`` reports the standardised values;
  ``lab_b``'s instrument has its own gain and offset per measurement (gains in [0.5, 2], a
  third of them negative, offsets N(0, 1.5), fixed by the run's seed); ``lab_c``, the new task,
  has an instrument of ``lab_b``'s make that drifted (its gains times 0.8, its offsets plus
  N(0, 0.3)) and is noisier (N(0, 0.3) per reading). A model of one laboratory reads another's
  numbers wrongly, which is what makes the tasks different; ``lab_c`` is closest to ``lab_b``.

Each run (one data set, one seed) splits the samples at random (the seed) into disjoint parts:
the two known tasks' training samples (the Dataset of round 1), the new task's samples met at
inference and then labelled (they join the Dataset before round 2), and one test set per task,
never trained on. A csv file has the header ``label,domain,f0,...``.
"""

from __future__ import annotations

import csv
import importlib.util
from dataclasses import dataclass
from functools import cache
from pathlib import Path
from types import ModuleType

import numpy as np

EXAMPLE = Path(__file__).resolve().parents[1] / "examples" / "lifelong"


@dataclass(frozen=True)
class Sizes:
    """How many samples each part of a run has (per task where it says so)."""

    train: int  # per known task, in the round-1 Dataset
    new: int  # of the new task, met at inference and labelled
    test: int  # per task
    stream_known: int  # per known task, met at inference beside the new task's samples


@dataclass(frozen=True)
class Spec:
    """A data set: its name, its kind, its tasks (the last is the new one) and its sizes."""

    name: str
    kind: str
    tasks: tuple[str, str, str]
    full: Sizes
    fast: Sizes


SPECS = {
    "digits": Spec(
        "digits",
        "image-like: 8x8 handwritten digits, 10 classes",
        ("cam_a", "cam_b", "cam_c"),
        full=Sizes(train=400, new=100, test=250, stream_known=50),
        fast=Sizes(train=150, new=60, test=100, stream_known=20),
    ),
    "cancer": Spec(
        "cancer",
        "tabular: 30 measurements of a breast mass, 2 classes",
        ("lab_a", "lab_b", "lab_c"),
        full=Sizes(train=130, new=60, test=80, stream_known=20),
        fast=Sizes(train=100, new=40, test=60, stream_known=10),
    ),
}


@dataclass
class Part:
    """Samples of one task: features, labels and the task (the ``domain`` attribute)."""

    x: np.ndarray
    y: np.ndarray
    domain: str


@dataclass
class RunData:
    """The parts of one run: training samples of the known tasks, the new task's samples, the
    samples met at inference beside them, and each task's test set."""

    spec: Spec
    seed: int
    train: list[Part]
    new: Part
    stream_known: list[Part]
    test: list[Part]

    @property
    def n_features(self) -> int:
        return int(self.new.x.shape[1])


@cache
def _digits_domains() -> ModuleType:
    """``examples/lifelong/digits_domains.py``, loaded from its file (it is a script, not a package)."""
    spec = importlib.util.spec_from_file_location("digits_domains", EXAMPLE / "digits_domains.py")
    assert spec is not None and spec.loader is not None
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module


def _lab_views(seed: int, n_features: int) -> dict[str, tuple[np.ndarray, np.ndarray, float]]:
    """Each laboratory's (gain, offset, noise) per measurement for the run's seed."""
    rng = np.random.default_rng(1000 + seed)
    gain_b = rng.uniform(0.5, 2.0, n_features) * np.where(rng.random(n_features) < 1 / 3, -1.0, 1.0)
    offset_b = rng.normal(0.0, 1.5, n_features)
    return {
        "lab_a": (np.ones(n_features), np.zeros(n_features), 0.0),
        "lab_b": (gain_b, offset_b, 0.0),
        "lab_c": (0.8 * gain_b, offset_b + rng.normal(0.0, 0.3, n_features), 0.3),
    }


def _view(spec: Spec, domain: str, x: np.ndarray, seed: int, salt: int) -> np.ndarray:
    """Samples ``x`` as task ``domain`` records them."""
    if spec.name == "digits":
        return np.asarray(_digits_domains().view(domain, x, seed * 100 + salt), dtype=float)
    gain, offset, noise = _lab_views(seed, x.shape[1])[domain]
    rng = np.random.default_rng(seed * 100 + salt)
    out = x * gain + offset + (rng.normal(0.0, noise, x.shape) if noise else 0.0)
    return np.asarray(np.round(out, 3), dtype=float)


def _source(spec: Spec) -> tuple[np.ndarray, np.ndarray]:
    if spec.name == "digits":
        x, y = _digits_domains().digits()
        return np.asarray(x, dtype=float), np.asarray(y, dtype=int)
    from sklearn.datasets import load_breast_cancer

    data = load_breast_cancer()
    x = np.asarray(data.data, dtype=float)
    return (x - x.mean(axis=0)) / x.std(axis=0), np.asarray(data.target, dtype=int)


def make_run(name: str, seed: int, fast: bool = False) -> RunData:
    """The parts of one run of data set ``name`` (disjoint samples, chosen by ``seed``)."""
    spec = SPECS[name]
    sizes = spec.fast if fast else spec.full
    x, y = _source(spec)
    order = np.random.default_rng(seed).permutation(len(y))
    known, new_task = spec.tasks[:2], spec.tasks[2]
    counts = [sizes.train, sizes.train, sizes.new, sizes.test, sizes.test, sizes.test]
    if sum(counts) > len(y):
        raise ValueError(f"{name} has {len(y)} samples, the run needs {sum(counts)}")
    cuts = np.cumsum([0, *counts])
    idx = [np.sort(order[cuts[i] : cuts[i + 1]]) for i in range(len(counts))]

    def part(domain: str, which: np.ndarray, salt: int) -> Part:
        return Part(_view(spec, domain, x[which], seed, salt), y[which], domain)

    train = [part(d, idx[i], i) for i, d in enumerate(known)]
    new = part(new_task, idx[2], 2)
    test = [part(d, idx[3 + i], 3 + i) for i, d in enumerate(spec.tasks)]
    stream_known = [Part(t.x[: sizes.stream_known], t.y[: sizes.stream_known], t.domain) for t in test[:2]]
    return RunData(spec, seed, train, new, stream_known, test)


def columns(n_features: int) -> list[str]:
    return ["label", "domain", *[f"f{i}" for i in range(n_features)]]


def _fmt(v: float) -> str:
    return f"{v:.10g}"


def write_csv(path: Path, parts: list[Part], labelled: bool = True) -> Path:
    path.parent.mkdir(parents=True, exist_ok=True)
    with path.open("w", newline="") as fh:
        writer = csv.writer(fh)
        writer.writerow(columns(parts[0].x.shape[1]))
        for p in parts:
            for xi, yi in zip(p.x, p.y, strict=True):
                writer.writerow([str(int(yi)) if labelled else "", p.domain, *[_fmt(v) for v in xi]])
    return path


def read_csv(path: Path) -> tuple[np.ndarray, np.ndarray, list[str]]:
    """Features, labels (-1 where none) and domains of a csv file of this module's layout."""
    with path.open(newline="") as fh:
        rows = list(csv.reader(fh))[1:]
    x = np.asarray([[float(v) for v in r[2:]] for r in rows], dtype=float).reshape(len(rows), -1)
    y = np.asarray([int(r[0]) if r[0] != "" else -1 for r in rows], dtype=int)
    return x, y, [r[1] for r in rows]


def feature_key(values: list[float] | np.ndarray) -> tuple[float, ...]:
    """A sample's features as a key to find its label again (rounded past the csv's noise)."""
    return tuple(round(float(v), 6) for v in values)


def write_run(run: RunData, folder: Path) -> dict[str, Path]:
    """The run's files: ``train.csv`` (the Dataset of round 1), ``stream.csv`` (what inference
    meets, unlabelled: some of each known task and the new task's samples), ``test.csv`` (every
    task's test set, labelled) and ``new_labels.csv`` (the new task's samples with their labels:
    what labelling gives)."""
    return {
        "train": write_csv(folder / "train.csv", run.train),
        "stream": write_csv(folder / "stream.csv", [*run.stream_known, run.new], labelled=False),
        "test": write_csv(folder / "test.csv", run.test),
        "new_labels": write_csv(folder / "new_labels.csv", [run.new]),
    }
