"""The GM's bookkeeping (``lifelong.cloud.gmstate.GMState``): its transactions nest, so the
methods that open their own (``hello``, ``mark_applied_many``) can be grouped by a caller, and
a rolled-back group leaves neither rows nor cached epochs behind."""

from __future__ import annotations

from collections.abc import Iterator
from pathlib import Path

import pytest

from lifelong.cloud.gmstate import GMState
from lifelong.common.sqlite import Database

KEY = ("LifelongLearningJob", "default", "j")


@pytest.fixture
def state(tmp_path: Path) -> Iterator[GMState]:
    s = GMState(Database(tmp_path / "gm.db", synchronous="normal"))
    yield s
    s.close()


def test_a_caller_groups_methods_that_open_their_own_transaction(state: GMState) -> None:
    with state.transaction():
        state.hello("node-a", agent="lc", epoch="e1", boot="b", low_seq=None)
        state.mark_applied_many("node-a", "e1", [1, 2, 3])
        assert state.set_down("node-a", KEY, "upsert", "5", {"kind": KEY[0]})
        assert state.put_worker_info("default", "j", "w", {"loss": 1})
    info = state.node("node-a")
    assert info is not None and info.epoch == "e1"
    assert state.applied_count("node-a") == 3
    assert [r.rv for r in state.down_rows(node="node-a")] == ["5"]
    assert state.worker_info("default", "j") == {"w": {"loss": 1}}


def test_a_rolled_back_group_leaves_no_rows_and_no_cached_epoch(state: GMState) -> None:
    state.hello("node-a", agent="lc", epoch="e1", boot="b", low_seq=None)
    state.mark_applied("node-a", "e1", 7)
    with pytest.raises(RuntimeError), state.transaction():
        state.hello("node-a", agent="lc", epoch="e2", boot="b2", low_seq=None)  # forgets e1's seqs
        state.set_down("node-a", KEY, "upsert", "5", None)
        raise RuntimeError("the diff failed")
    info = state.node("node-a")  # the epoch is what committed, not what was tried
    assert info is not None and (info.epoch, info.boot) == ("e1", "b")
    assert state.is_applied("node-a", "e1", 7)
    assert state.down_rows(node="node-a") == []


def test_an_inner_failure_keeps_the_rest_of_the_group(state: GMState) -> None:
    with state.transaction():
        state.set_down("node-a", KEY, "upsert", "5", None)
        with pytest.raises(RuntimeError), state.transaction():
            state.ack_down("node-a", KEY, "5", "upsert")
            raise RuntimeError("one bad item")
        state.mark_sent("node-a", KEY, "5")
    (row,) = state.down_rows(node="node-a")
    assert not row.acked and row.attempts == 1


def test_is_applied_answers_from_the_highest_record_and_the_records(tmp_path: Path) -> None:
    """A seq above every record of its (node, epoch) is new without a read; the bound is
    raised with each record, loaded again after a restart, and dropped with the records."""
    path = tmp_path / "gm.db"
    state = GMState(Database(path, synchronous="normal"))
    state.hello("node-a", agent="lc", epoch="e1", boot="b", low_seq=None)
    state.mark_applied_many("node-a", "e1", [5, 6, 7])
    assert [state.is_applied("node-a", "e1", q) for q in (4, 6, 8)] == [False, True, False]
    state.mark_applied("node-a", "e1", 8)  # above the bound it had: raised with the record
    assert state.is_applied("node-a", "e1", 8)
    state.close()

    again = GMState(Database(path, synchronous="normal"))  # a GM restart reads the bound anew
    try:
        assert [again.is_applied("node-a", "e1", q) for q in (4, 5, 8, 9)] == [False, True, True, False]
        again.hello("node-a", agent="lc", epoch="e2", boot="b", low_seq=None)  # forgets e1
        assert not again.is_applied("node-a", "e1", 5)
        again.mark_applied_many("node-a", "e2", [1, 2])
        assert again.is_applied("node-a", "e2", 2)
        assert again.forget_node("node-a")
        assert not again.is_applied("node-a", "e2", 2)
        again.mark_applied("node-a", "e2", 1)  # a node that comes back after being forgotten
        assert again.is_applied("node-a", "e2", 1) and not again.is_applied("node-a", "e2", 2)
    finally:
        again.close()


def test_the_resend_loop_reads_the_unacknowledged_rows_of_online_nodes_only(state: GMState) -> None:
    """``unacked_online``: what the resend loop looks through each tick; an offline node's rows
    (a hello brings them) and acknowledged rows are not read, nor any object."""
    job = {"kind": "LifelongLearningJob", "metadata": {"name": "j"}}
    for node in ("on", "off"):
        state.set_online(node, node == "on")
        state.set_down(node, ("LifelongLearningJob", "default", "j"), "upsert", "5", job)
        state.set_down(node, ("Dataset", "default", "d"), "upsert", "6", {"kind": "Dataset"})
    state.mark_sent("on", ("LifelongLearningJob", "default", "j"), "5")
    state.ack_down("on", ("Dataset", "default", "d"), "6", "upsert")
    rows = state.unacked_online()
    assert [(node, attempts) for node, _last, attempts in rows] == [("on", 1)]
    assert rows[0][1] > 0  # the time it was sent
