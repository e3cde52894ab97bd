"""The library's data sources (``lifelong.learning.datasources``) on the files the LC writes, and
the data the other ``test_learning_*`` tests share: the example's digits seen by three cameras
(``examples/lifelong/digits_domains.py``) and a worker environment in a temporary folder."""

from __future__ import annotations

import importlib.util
from pathlib import Path

import numpy as np
import pytest

from lifelong.learning import BaseDataSource, CSVDataParse, TxtDataParse

_SPEC = importlib.util.spec_from_file_location(
    "digits_domains", Path(__file__).resolve().parents[2] / "examples" / "lifelong" / "digits_domains.py"
)
assert _SPEC is not None and _SPEC.loader is not None
dd = importlib.util.module_from_spec(_SPEC)
_SPEC.loader.exec_module(dd)

X, Y = dd.digits()
PARTS = dd.split(len(Y), 4)


def source(domains: dict[str, np.ndarray], labelled: bool = True, seed: int = 0) -> BaseDataSource:
    """Samples of ``domains`` (domain -> indexes into the digits), ``domain`` as meta_attr."""
    xs, ys, attrs = [], [], []
    for domain, idx in domains.items():
        xs.append(dd.view(domain, X[idx], seed))
        ys.append(Y[idx])
        attrs += [domain] * len(idx)
    return BaseDataSource.from_arrays(
        np.concatenate(xs), np.concatenate(ys) if labelled else None, attrs={"domain": attrs}
    )


def worker_env(monkeypatch: pytest.MonkeyPatch, tmp: Path, stage: str = "train", round_: int = 1) -> Path:
    """Sedna's worker variables for a job ``default/digits`` with a local KB under ``tmp``."""
    kb = tmp / "kb"
    for name, value in {
        "KB_SERVER": f"file://{kb}",
        "OUTPUT_URL": str(tmp / "out"),
        "NAMESPACE": "default",
        "JOB_NAME": "digits",
        "WORKER_NAME": f"digits-{stage}-{round_}",
        "LC_SERVER": "",
        "HAS_COMPLETED_INITIAL_TRAINING": "false",
    }.items():
        monkeypatch.setenv(name, value)
    for name in (
        "CLOUD_KB_INDEX",
        "MODEL_URLS",
        "KB_TOKEN",
        "MIN_TRAIN_SAMPLE",
        "model_threshold",
        "operator",
    ):
        monkeypatch.delenv(name, raising=False)
    return kb


def latest_index(kb: Path) -> Path:
    folder = kb / "index" / "default" / "digits"
    return max(folder.glob("*.json"), key=lambda p: int(p.stem))


def test_csv_pool_parses_header_label_and_attribute(tmp_path: Path) -> None:
    path = dd.write_csv(tmp_path / "train.csv", [*dd.rows("cam_b", X[:5], Y[:5]), [""] * 66])
    data = CSVDataParse(data_type="train")
    data.parse(f"file://{path}", label="label")
    assert data.num_examples() == 5  # the blank line is no sample
    assert data.columns == dd.COLUMNS[1:]
    assert data.y.tolist() == Y[:5].tolist()
    assert [a["domain"] for a in data.attributes(["domain"])] == ["cam_b"] * 5
    assert np.allclose(data.features(["domain"]), 16.0 - X[:5])
    row = data.row(2)
    assert row["label"] is None and row["domain"] == "cam_b" and row["f0"] == f"{16.0 - X[2, 0]:g}"
    with pytest.raises(ValueError, match="no data attribute"):
        data.attributes(["season"])


def test_csv_test_data_has_no_labels_and_one_mapping_is_one_sample() -> None:
    data = CSVDataParse(data_type="test")
    data.parse({"label": "", "domain": "cam_a", "f0": "3"}, label="label")
    assert data.num_examples() == 1 and data.y is None
    assert data.features(["domain"]).tolist() == [[3.0]]


def test_txt_pool_reads_paths_and_labels(tmp_path: Path) -> None:
    path = tmp_path / "train.txt"
    path.write_text("img/1.png 3\n\nimg/2.png 7\n")
    data = TxtDataParse(data_type="train")
    data.parse(str(path))
    assert data.x.tolist() == ["img/1.png", "img/2.png"]
    assert data.y.tolist() == [3, 7]
    assert data.row(0) == {"path": "img/1.png"}
