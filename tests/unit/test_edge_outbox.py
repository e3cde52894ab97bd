"""The durable outbox (``lifelong.edge.outbox``): seqs, window, resend, bounds, coalescing,
and SIGKILL safety (a subprocess appending as fast as it can is killed at a random moment)."""

from __future__ import annotations

import random
import signal
import sqlite3
import subprocess
import sys
import textwrap
from pathlib import Path

import pytest

from lifelong.edge.db import Store
from lifelong.edge.outbox import Outbox, OutboxFull


class FakeClock:
    def __init__(self) -> None:
        self.now = 1000.0

    def __call__(self) -> float:
        return self.now


@pytest.fixture
def store(tmp_path: Path) -> Store:
    s = Store(tmp_path / "lc.db", sync="normal")
    yield s
    s.close()


def test_seqs_window_ack_and_resend(store: Store) -> None:
    clock = FakeClock()
    box = Outbox(store, window=3, ack_timeout=10, clock=clock)
    seqs = [box.append("LifelongLearningJob", "ns", "j", {"i": i}) for i in range(5)]
    assert seqs == [1, 2, 3, 4, 5]
    first = box.due()
    assert [e.seq for e in first] == [1, 2, 3]  # the window
    for e in first:
        box.mark_sent(e.seq)
    assert box.due() == []
    assert box.ack("other-epoch", [1, 2]) == 0  # another epoch's ack is ignored
    assert box.ack(box.epoch, [1, 2]) == 2
    assert [e.seq for e in box.due()] == [4, 5]
    for e in box.due():
        box.mark_sent(e.seq)
    clock.now += 10  # ack timeout: everything unacked is due again
    assert [e.seq for e in box.due()] == [3, 4, 5]
    box.reset_inflight()
    assert [e.seq for e in box.due()] == [3, 4, 5]
    for e in box.due():
        box.mark_sent(e.seq)
    assert box.resent == 3 and box.sent == 5
    assert box.hello_state() == {"depth": 3, "lowSeq": 3, "nextSeq": 6}
    box.ack(box.epoch, [3, 4, 5])
    assert box.hello_state() == {"depth": 0, "lowSeq": None, "nextSeq": 6}  # seqs are never reused
    assert box.append("Dataset", "ns", "d", {}) == 6


def test_a_due_list_made_before_a_reconnect_is_not_marked_sent_after_it(store: Store) -> None:
    """The publisher lists what is due, then publishes it one by one; a reconnect on the bus
    thread (``reset_inflight``) in between makes every unacknowledged report due again. The rest
    of the old list must not be marked sent: that would move the cursor past the reports the
    reset made due again, and they would wait for the next reconnect (a stall seen in the fault
    suite: 66 reports, acknowledged by a restarted broker the GM was not yet subscribed to)."""
    box = Outbox(store, window=10, ack_timeout=10, clock=FakeClock())
    for i in range(6):
        box.append("LifelongLearningJob", "ns", "j", {"i": i})
    resets = box.resets
    listed = box.due()
    assert [e.seq for e in listed] == [1, 2, 3, 4, 5, 6]
    for e in listed[:3]:
        assert box.mark_sent(e.seq, resets=resets)  # published, then the connection drops
    box.reset_inflight()  # reconnected: everything unacknowledged is due again
    assert not box.mark_sent(listed[3].seq, resets=resets)  # the stale list stops here
    assert box.inflight() == 0
    assert [e.seq for e in box.due()] == [1, 2, 3, 4, 5, 6]


def test_dataset_counts_coalesce(store: Store) -> None:
    box = Outbox(store)
    box.append("Dataset", "ns", "d", {"numberOfSamples": 1}, coalesce_key="Dataset/ns/d")
    box.append("LifelongLearningJob", "ns", "j", {"event": "ready"})
    box.append("Dataset", "ns", "d", {"numberOfSamples": 2}, coalesce_key="Dataset/ns/d")
    last = box.append("Dataset", "ns", "d", {"numberOfSamples": 3}, coalesce_key="Dataset/ns/d")
    due = box.due()
    assert [(e.kind, e.body) for e in due] == [
        ("LifelongLearningJob", {"event": "ready"}),
        ("Dataset", {"numberOfSamples": 3}),
    ]
    assert due[1].seq == last and box.coalesced == 2


def test_full_policy_coalesce_then_refuse(store: Store) -> None:
    box = Outbox(store, max_depth=3)
    box.append("Dataset", "ns", "d", {"numberOfSamples": 1}, coalesce_key="Dataset/ns/d")
    box.append("LifelongLearningJob", "ns", "j", {"n": 1})
    box.append("LifelongLearningJob", "ns", "j", {"n": 2})
    # Full: a newer count of a queued dataset still replaces its older count ...
    assert box.append("Dataset", "ns", "d", {"numberOfSamples": 2}, coalesce_key="Dataset/ns/d") is not None
    # ... a count of another dataset is dropped (counted), a job report is refused (counted).
    assert box.append("Dataset", "ns", "e", {"numberOfSamples": 9}, coalesce_key="Dataset/ns/e") is None
    with pytest.raises(OutboxFull):
        box.append("LifelongLearningJob", "ns", "j", {"n": 3})
    assert (box.dropped, box.refused) == (1, 1)
    assert box.stats().depth == 3
    # A refused report inside a caller's transaction rolls the caller's change back too.
    with pytest.raises(OutboxFull), store.tx():
        store.put_record("progress", "ns", "j", {"round": 9})
        box.append("LifelongLearningJob", "ns", "j", {"n": 4})
    assert store.get_record("progress", "ns", "j") is None
    box.ack(box.epoch, [2])
    assert box.append("LifelongLearningJob", "ns", "j", {"n": 3}) is not None


def _count(store: Store) -> int:
    row = store.db.fetchone("SELECT count(*) FROM outbox")
    assert row is not None
    return int(row[0])


def _exact(box: Outbox) -> int:
    depth = box.depth()
    assert depth == _count(box.store) == box.hello_state()["depth"] == box.stats().depth
    return depth


@pytest.mark.parametrize("seed", range(6))
def test_due_matches_a_model_through_random_sends_losses_acks_and_timeouts(store: Store, seed: int) -> None:
    # ``due`` reads only the rows after what it handed out; whatever happens to the reports in
    # flight, it must return what a full scan would: the oldest not-in-flight, within the window.
    rng = random.Random(seed)
    clock = FakeClock()
    box = Outbox(store, window=7, ack_timeout=10, clock=clock)
    queued: set[int] = set()
    inflight: dict[int, float] = {}
    for _ in range(400):
        op = rng.random()
        if op < 0.3:
            for _ in range(rng.randint(1, 5)):
                seq = box.append("LifelongLearningJob", "ns", "j", {"x": 1})
                assert seq is not None
                queued.add(seq)
        elif op < 0.55:
            inflight = {s: t for s, t in inflight.items() if clock.now - t < 10}
            room = 7 - len(inflight)
            want = sorted(queued - set(inflight))[: max(room, 0)]
            got = [e.seq for e in box.due()]
            assert got == want
            for seq in got[: rng.randint(0, len(got))]:
                box.mark_sent(seq)
                inflight[seq] = clock.now
        elif op < 0.65 and inflight:
            seq = rng.choice(sorted(inflight))
            box.unmark(seq)  # its publish failed
            del inflight[seq]
        elif op < 0.85 and queued:
            acked = rng.sample(sorted(queued), rng.randint(1, min(4, len(queued))))
            box.ack(box.epoch, acked)
            queued -= set(acked)
            for seq in acked:
                inflight.pop(seq, None)
        elif op < 0.95:
            clock.now += rng.choice((1, 4, 11))
        else:
            box.reset_inflight()
            inflight.clear()


def test_append_does_not_count_the_table(store: Store) -> None:
    box = Outbox(store, max_depth=10)
    for i in range(5):
        box.append("LifelongLearningJob", "ns", "j", {"i": i})
    seen: list[str] = []
    store.db.trace(seen.append)
    box.append("LifelongLearningJob", "ns", "j", {"i": 5})
    box.append("Dataset", "ns", "d", {"numberOfSamples": 1}, coalesce_key="Dataset/ns/d")
    box.hello_state()
    store.db.trace(None)
    assert not [sql for sql in seen if "count(" in sql.lower()], seen
    assert _exact(box) == 7


def test_depth_counter_stays_exact(tmp_path: Path) -> None:
    path = tmp_path / "lc.db"
    store = Store(path, sync="normal")
    box = Outbox(store, max_depth=6)
    assert _exact(box) == 0
    seqs = [box.append("LifelongLearningJob", "ns", "j", {"i": i}) for i in range(3)]
    for n in range(3):  # coalescing: one row whatever the number of counts
        box.append("Dataset", "ns", "d", {"numberOfSamples": n}, coalesce_key="Dataset/ns/d")
    assert _exact(box) == 4 and box.coalesced == 2
    assert box.ack(box.epoch, [seqs[0], seqs[0], 999]) == 1  # duplicates and unknown seqs
    assert box.ack("other", [seqs[1]]) == 0
    assert _exact(box) == 3
    box.drop_unsendable(seqs[1])
    box.drop_unsendable(seqs[1])  # already gone: not counted twice
    assert _exact(box) == 2
    for i in range(4):
        box.append("LifelongLearningJob", "ns", "k", {"i": i})
    assert _exact(box) == 6
    with pytest.raises(OutboxFull):  # refused: nothing changes
        box.append("LifelongLearningJob", "ns", "k", {"i": 9})
    assert box.append("Dataset", "ns", "e", {"numberOfSamples": 1}, coalesce_key="Dataset/ns/e") is None
    assert box.append("Dataset", "ns", "d", {"numberOfSamples": 7}, coalesce_key="Dataset/ns/d")
    assert _exact(box) == 6
    box.ack(box.epoch, [seqs[2]])
    with pytest.raises(RuntimeError), store.tx():  # a caller's transaction rolled back after the append
        box.append("LifelongLearningJob", "ns", "k", {"i": 10})
        assert box.depth() == 6
        raise RuntimeError("crash")
    assert _exact(box) == 5
    state = box.hello_state()
    store.close()
    store = Store(path, sync="normal")
    box = Outbox(store, max_depth=6)
    assert _exact(box) == 5 and box.hello_state() == state
    store.close()


APPENDER = textwrap.dedent(
    """
    import sys
    from pathlib import Path
    from lifelong.edge.db import Store
    from lifelong.edge.outbox import Outbox
    box = Outbox(Store(Path(sys.argv[1])))
    i = 0
    while True:
        seq = box.append("LifelongLearningJob", "ns", "j", {"i": i})
        if i % 7 == 0:
            box.append("Dataset", "ns", "d", {"numberOfSamples": i}, coalesce_key="Dataset/ns/d")
        sys.stdout.write(f"{seq} {i}\\n")
        if i % 5 == 0:
            sys.stdout.write(f"ack {seq - 3}\\n")  # announced before it happens
            sys.stdout.flush()
            box.ack(box.store.epoch, [seq - 3])
        sys.stdout.flush()
        i += 1
    """
)


@pytest.mark.parametrize("run", range(3))
def test_sigkill_at_any_instant_loses_nothing(tmp_path: Path, run: int) -> None:
    db = tmp_path / "lc.db"
    proc = subprocess.Popen(
        [sys.executable, "-c", APPENDER, str(db)], stdout=subprocess.PIPE, text=True, bufsize=1
    )
    assert proc.stdout is not None
    lines: list[str] = []
    target = random.Random(run).randint(50, 400)
    while len(lines) < target:  # blocking reads: the appender writes a line per commit
        line = proc.stdout.readline()
        assert line, "the appender died"
        lines.append(line)
    proc.send_signal(signal.SIGKILL)
    proc.wait(10)
    lines += proc.stdout.read().splitlines()
    acked = {int(line.split()[1]) for line in lines if line.startswith("ack ")}
    committed = [
        tuple(map(int, line.split())) for line in lines if line.strip() and not line.startswith("ack")
    ]

    conn = sqlite3.connect(db)
    assert conn.execute("PRAGMA integrity_check").fetchone()[0] == "ok"
    # The depth counter committed with the rows it counts (before any reopen counts it anew).
    counted = conn.execute("SELECT n FROM counters WHERE key='outbox'").fetchone()[0]
    assert counted == conn.execute("SELECT count(*) FROM outbox").fetchone()[0]
    conn.close()
    store = Store(db)
    box = Outbox(store)
    rows = {e.seq: e.body for e in _all(box)}
    for seq, i in committed:  # every report the appender saw committed is there (or was acked)
        assert seq in acked or rows.get(seq) == {"i": i}, (seq, i)
    datasets = [b for b in rows.values() if "numberOfSamples" in b]
    assert len(datasets) <= 1  # coalesced, also across the kill
    store.close()


def _all(box: Outbox) -> list:
    box.window = 1 << 30
    return box.due()


def test_a_count_refused_inside_a_callers_transaction_keeps_the_older_count(store: Store) -> None:
    # Over its bound (the bound was lowered since the reports were queued), a coalescing append
    # deletes the older count, finds no room and is refused: its own savepoint rolls back, so
    # the older count stays queued although the caller's transaction goes on and commits.
    box = Outbox(store, max_depth=10)
    box.append("Dataset", "ns", "d", {"numberOfSamples": 1}, coalesce_key="Dataset/ns/d")
    box.append("LifelongLearningJob", "ns", "j", {"n": 1})
    box.append("LifelongLearningJob", "ns", "j", {"n": 2})
    small = Outbox(store, max_depth=2)
    with store.tx():
        store.put_record("datasets", "ns", "d", {"reported": 1})
        assert small.append("Dataset", "ns", "d", {"numberOfSamples": 2}, coalesce_key="Dataset/ns/d") is None
    assert small.dropped == 1
    assert store.get_record("datasets", "ns", "d") == {"reported": 1}  # the caller's change committed
    assert [e.body for e in _all(small)] == [{"numberOfSamples": 1}, {"n": 1}, {"n": 2}]
    assert _exact(small) == 3
