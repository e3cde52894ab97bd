"""Counting dataset index files (``lifelong.edge.dataset_monitor``): txt, csv minus header,
appended, replaced, truncated, missing."""

from __future__ import annotations

import os
from pathlib import Path

from lifelong.edge.dataset_monitor import DatasetMonitor, count_samples, local_path, read_samples


def test_txt_and_csv_counts(tmp_path: Path) -> None:
    txt = tmp_path / "a.txt"
    txt.write_text("a 1\n\nb 2\nc 3")  # blank lines are not samples; last line without newline is
    assert count_samples(txt, "txt").count == 3
    csv = tmp_path / "a.csv"
    csv.write_text("path,label\nx,1\ny,0\n")
    assert count_samples(csv, "csv").count == 2
    csv.write_text("path,label\n")
    assert count_samples(csv, "csv").count == 0
    assert read_samples(csv.with_name("a.csv"), "csv", 0, 10) == ([], "path,label")


def test_missing_unsupported_and_file_url(tmp_path: Path) -> None:
    missing = count_samples(tmp_path / "nope.txt", "txt")
    assert missing.count is None and missing.status == "missing"
    assert count_samples(tmp_path, "parquet").status == "unsupported"
    assert local_path(f"file://{tmp_path}/x.txt") == tmp_path / "x.txt"
    assert local_path("/data/train.txt") == Path("/data/train.txt")


def test_monitor_follows_append_replace_truncate_missing(tmp_path: Path) -> None:
    path = tmp_path / "d.txt"
    spec = {"url": f"file://{path}", "format": "txt"}
    mon = DatasetMonitor()
    assert mon.count("ns", "d", spec).status == "missing"
    path.write_text("a\nb\n")
    assert mon.count("ns", "d", spec).count == 2
    with path.open("a") as fh:
        fh.write("c\n")
    assert mon.count("ns", "d", spec).count == 3
    replacement = tmp_path / "new.txt"
    replacement.write_text("x\n" * 10)
    os.replace(replacement, path)
    assert mon.count("ns", "d", spec).count == 10
    path.write_text("only\n")
    assert mon.count("ns", "d", spec).count == 1
    path.unlink()
    result = mon.count("ns", "d", spec)
    assert result.count is None and result.status == "missing" and str(path) in result.message


def test_read_samples_slices(tmp_path: Path) -> None:
    path = tmp_path / "d.txt"
    path.write_text("".join(f"s{i}\n" for i in range(6)))
    assert read_samples(path, "txt", 2, 4) == (["s2", "s3"], None)
