"""The LC's local state (``lifelong.edge.db``): what survives a restart, rv comparison."""

from __future__ import annotations

import sqlite3
from pathlib import Path

import pytest

from lifelong.edge.db import Store, rv_newer, rv_older
from lifelong.edge.outbox import Outbox


def test_state_survives_reopen(tmp_path: Path) -> None:
    path = tmp_path / "state" / "lc.db"
    s = Store(path)
    epoch = s.epoch
    s.put_resource("LifelongLearningJob", "ns", "j", "12", {"kind": "LifelongLearningJob"})
    s.put_resource("Dataset", "ns", "d", "13", {"kind": "Dataset"})
    s.delete_resource("Dataset", "ns", "d", "14")
    s.put_record("progress", "ns", "j", {"round": 2, "cursor": 40})
    ident = s.add_pending_info("ns", "w", "j", {"status": "completed"})
    s.close()

    again = Store(path)
    assert again.epoch == epoch  # the epoch is made with the database, never again
    assert again.held() == [{"kind": "LifelongLearningJob", "ns": "ns", "name": "j", "rv": "12"}]
    assert again.tombstone_rv("Dataset", "ns", "d") == "14"
    assert again.get_record("progress", "ns", "j") == {"round": 2, "cursor": 40}
    assert again.pending_info() == [(ident, "ns", "w", "j", {"status": "completed"})]
    again.put_resource("Dataset", "ns", "d", "20", {})
    assert again.tombstone_rv("Dataset", "ns", "d") is None
    again.close()
    assert Store(tmp_path / "other.db").epoch != epoch


def test_transaction_rolls_back_everything(tmp_path: Path) -> None:
    s = Store(tmp_path / "lc.db")
    with pytest.raises(RuntimeError), s.tx():
        s.put_record("progress", "ns", "j", {"round": 1})
        s.put_resource("Dataset", "ns", "d", "1", {})
        raise RuntimeError("crash")
    assert s.get_record("progress", "ns", "j") is None and s.held() == []
    s.close()


def test_outbox_depth_is_counted_at_open(tmp_path: Path) -> None:
    """A database of a version without the counter (or with a wrong one) is counted at open;
    from then on the triggers keep it in step with the outbox table."""
    path = tmp_path / "lc.db"
    s = Store(path)
    box = Outbox(s)
    for i in range(3):
        box.append("k", "ns", "j", {"i": i})
    s.close()
    conn = sqlite3.connect(path)
    conn.execute("DROP TRIGGER outbox_depth_ins")
    conn.execute("DROP TRIGGER outbox_depth_del")
    conn.execute("DROP TABLE counters")
    conn.commit()
    conn.close()

    again = Store(path)
    assert again.outbox_table.depth() == 3
    box = Outbox(again)
    box.append("k", "ns", "j", {"i": 3})
    box.ack(box.epoch, [1, 2])
    assert again.outbox_table.depth() == 2
    again.close()
    conn = sqlite3.connect(path)
    conn.execute("UPDATE counters SET n = 99 WHERE key='outbox'")  # a wrong counter ...
    conn.commit()
    conn.close()
    third = Store(path)
    assert third.outbox_table.depth() == 2  # ... is counted anew at the next open
    third.close()


@pytest.mark.parametrize(
    ("candidate", "held", "newer", "older"),
    [
        ("10", None, True, False),
        ("10", "9", True, False),
        ("9", "10", False, True),  # decimal: compared as integers, not strings
        ("10", "10", False, False),
        ("abc", "xyz", True, False),  # opaque: different means newer
        ("abc", "abc", False, False),
    ],
)
def test_resource_versions(candidate: str, held: str | None, newer: bool, older: bool) -> None:
    assert rv_newer(candidate, held) is newer
    if held is not None:
        assert rv_older(candidate, held) is older


def test_take_changed_lists_each_put_or_deleted_resource_once(tmp_path: Path) -> None:
    store = Store(tmp_path / "lc.db", sync="normal")
    store.put_resource("LifelongLearningJob", "default", "a", "1", {})
    store.put_resource("LifelongLearningJob", "default", "a", "2", {})
    store.put_resource("Dataset", "default", "d", "1", {})
    store.delete_resource("LifelongLearningJob", "other", "b", "3")
    assert store.take_changed("LifelongLearningJob") == {("default", "a"), ("other", "b")}
    assert store.take_changed("LifelongLearningJob") == set()
    assert store.take_changed("Dataset") == {("default", "d")}
    store.close()


class _Parses:
    """A ``parse`` for ``Store.parsed`` that counts its calls and makes a fresh object each time."""

    def __init__(self) -> None:
        self.calls: list[dict[str, object]] = []

    def __call__(self, obj: dict[str, object]) -> tuple[str, object]:
        self.calls.append(obj)
        if obj.get("bad"):
            raise ValueError("refused")
        return ("model", obj.get("v"))


def test_parsed_parses_each_held_version_once(tmp_path: Path) -> None:
    s = Store(tmp_path / "lc.db")
    parse = _Parses()
    assert s.parsed("Dataset", "ns", "d", parse) is None and parse.calls == []

    s.put_resource("Dataset", "ns", "d", "5", {"v": 1})
    first = s.parsed("Dataset", "ns", "d", parse)
    again = s.parsed("Dataset", "ns", "d", parse)
    assert first is not None and again is not None
    assert first[:2] == ("5", {"v": 1}) and first[2] == ("model", 1) and again[2] is first[2]
    assert parse.calls == [{"v": 1}]

    s.put_resource("Dataset", "ns", "d", "6", {"v": 2})  # a new version: parsed once more
    newer = s.parsed("Dataset", "ns", "d", parse)
    assert newer is not None and newer[0] == "6" and newer[2] == ("model", 2)
    assert parse.calls == [{"v": 1}, {"v": 2}]

    with pytest.raises(RuntimeError), s.tx():  # a put rolled back: the held version stays
        s.put_resource("Dataset", "ns", "d", "9", {"v": 9})
        raise RuntimeError("crash")
    held = s.parsed("Dataset", "ns", "d", parse)
    assert held is not None and held[0] == "6" and held[2] is newer[2] and len(parse.calls) == 2

    s.delete_resource("Dataset", "ns", "d", "7")
    assert s.parsed("Dataset", "ns", "d", parse) is None
    s.close()


def test_parsed_passes_a_refusal_on_and_remembers_nothing(tmp_path: Path) -> None:
    s = Store(tmp_path / "lc.db")
    parse = _Parses()
    s.put_resource("Dataset", "ns", "d", "5", {"bad": True})
    for _ in range(2):
        with pytest.raises(ValueError, match="refused"):
            s.parsed("Dataset", "ns", "d", parse)
    assert len(parse.calls) == 2
    s.close()


def test_parsed_keeps_at_most_its_limit_dropping_the_oldest(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    s = Store(tmp_path / "lc.db")
    monkeypatch.setattr(s, "MODELS_LIMIT", 2)
    parse = _Parses()
    for i in range(3):
        s.put_resource("Dataset", "ns", f"d{i}", "1", {"v": i})
        s.parsed("Dataset", "ns", f"d{i}", parse)
    assert len(parse.calls) == 3
    assert s.parsed("Dataset", "ns", "d2", parse) is not None and len(parse.calls) == 3
    assert s.parsed("Dataset", "ns", "d1", parse) is not None and len(parse.calls) == 3
    assert s.parsed("Dataset", "ns", "d0", parse) is not None and len(parse.calls) == 4  # dropped
    s.close()
