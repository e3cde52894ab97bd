"""Appending labelled samples (``lifelong.edge.labelled``): the lines a sample becomes, the
finishing of an intent in every state a crash can leave the file in, and the appender's loop
against a real LC database (a batch waits for its Dataset, a resend appends nothing, a commit
refused by a full outbox is finished later without writing the rows twice)."""

from __future__ import annotations

import logging
from pathlib import Path
from typing import Any

import pytest

from lifelong.common.api.labelled import LabelledSample
from lifelong.edge.db import Store
from lifelong.edge.labelled import LabelledAppender, render, write_intent
from lifelong.edge.metrics import ItemFailures
from lifelong.edge.outbox import Outbox

NODE = "node-a"


def sample(ident: str, row: dict[str, Any], label: str | int) -> LabelledSample:
    return LabelledSample.model_validate({"id": ident, "row": row, "label": label})


def test_csv_lines_follow_the_header_and_txt_lines_are_path_then_label() -> None:
    header = ["f0", "label", "f1", "f2"]
    rows = [sample("a", {"f1": 1.5, "f0": "x,y", "extra": 9}, 3), sample("b", {"f0": "p\nq"}, 1)]
    lines, skipped = render(rows, "csv", header, "label")
    assert lines == [("a", '"x,y",3,1.5,')]
    assert skipped == [("b", "a value holds a line break")]
    lines, _ = render([sample("c", {"label": "old", "f0": 1}, "new")], "csv", ["label", "f0"], None)
    assert lines == [("c", "new,1")]
    txt = [
        sample("d", {"path": "a/b.png"}, "cat"),
        sample("e", {"x": 1}, "dog"),
        sample("f", {"path": "p"}, "a b"),
    ]
    lines, skipped = render(txt, "txt", None, None)
    assert lines == [("d", "a/b.png cat")]
    assert [ident for ident, _ in skipped] == ["e", "f"]


DATA = b"r1\nr2\n"


@pytest.mark.parametrize(
    ("after", "how", "expected"),
    [
        (b"", "appended", b"h\n" + DATA),  # the write never happened
        (b"r1\n", "redone", b"h\n" + DATA),  # cut short
        (DATA, "present", b"h\n" + DATA),  # written, not committed
        (b"x\n", "moved", b"h\nx\n" + DATA),  # another writer appended first
        (b"r1\nx\n", "moved", b"h\nx\n" + DATA),  # cut short, then another writer
        (b"r", "redone", b"h\n" + DATA),
    ],
)
def test_an_intent_is_finished_with_each_row_once(
    tmp_path: Path, after: bytes, how: str, expected: bytes
) -> None:
    path = tmp_path / "d.txt"
    path.write_bytes(b"h\n" + after)
    assert write_intent(path, 2, DATA) == how
    assert path.read_bytes() == expected
    assert write_intent(path, 2, DATA) == "present"  # and again: nothing more


def test_a_file_truncated_since_the_intent_gets_the_rows_at_its_end(tmp_path: Path) -> None:
    path = tmp_path / "d.txt"
    path.write_bytes(b"h")
    assert write_intent(path, 50, DATA) == "moved"
    assert path.read_bytes() == b"h\n" + DATA


def _obj(name: str, ds: str, ids: list[str]) -> dict[str, Any]:
    samples = [{"id": i, "row": {"path": f"{i}.png"}, "label": "cat"} for i in ids]
    return {
        "apiVersion": "lifelong.io/v1",
        "kind": "LabelledSamples",
        "metadata": {"name": name, "namespace": "default"},
        "spec": {"job": "j", "dataset": ds, "samples": samples},
    }


def _dataset(path: Path, node: str = NODE) -> dict[str, Any]:
    return {
        "apiVersion": "sedna.io/v1alpha1",
        "kind": "Dataset",
        "metadata": {"name": "ds", "namespace": "default"},
        "spec": {"url": str(path), "format": "txt", "nodeName": node},
    }


def test_the_appender_waits_appends_once_and_finishes_after_a_full_outbox(tmp_path: Path) -> None:
    store = Store(tmp_path / "lc.db", sync="normal")
    outbox = Outbox(store, max_depth=1)
    failures = ItemFailures(logging.getLogger("test"))
    app = LabelledAppender(store, outbox, NODE, failures)
    data = tmp_path / "d.txt"
    data.write_text("")
    store.put_resource("LabelledSamples", "default", "b1", "1", _obj("b1", "ds", ["a", "b", "a"]))
    app.step()
    assert app.waiting == 1 and failures.snapshot() == {"labelled": 1} and outbox.depth() == 0
    store.put_resource("Dataset", "default", "ds", "2", _dataset(data, node="other"))
    app.step()
    assert app.waiting == 1 and data.read_text() == ""  # another node's Dataset: still waits
    store.put_resource("Dataset", "default", "ds", "3", _dataset(data))
    outbox.append("X", "default", "x", {})  # the outbox is full: the commit must wait
    app.step()
    assert data.read_text() == "a.png cat\nb.png cat\n"  # written once ...
    assert (store.get_record("labelled", "default", "b1") or {})["state"] == "intent"
    app.step()
    assert data.read_text() == "a.png cat\nb.png cat\n"  # ... not again while it waits
    outbox.table.delete([e.seq for e in outbox.table.after(0, 10)])
    app.step()
    assert app.waiting == 0 and data.read_text() == "a.png cat\nb.png cat\n"
    assert [(e.kind, e.name, e.body) for e in outbox.table.after(0, 10)] == [
        ("LabelledSamples", "b1", {"appended": 2, "duplicates": 1, "skipped": 0})
    ]
    app.step()  # done at its rv: not looked at again
    assert outbox.depth() == 1
    outbox.table.delete([e.seq for e in outbox.table.after(0, 10)])
    store.put_resource("LabelledSamples", "default", "b1", "9", _obj("b1", "ds", ["b", "c"]))
    app.step()
    assert data.read_text() == "a.png cat\nb.png cat\nc.png cat\n"
    assert outbox.table.after(0, 10)[0].body == {"appended": 1, "duplicates": 1, "skipped": 0}
    store.delete_resource("LabelledSamples", "default", "b1", "10")
    app.step()
    assert store.get_record("labelled", "default", "b1") is None
    store.close()
