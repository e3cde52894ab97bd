"""The LC says hello again when the GM's presence turns online (docs/protocol.md, "hello").

A GM that restarts (here: SIGKILLed and its state database deleted) knows a node's outbox epoch
only from a hello. The LC stays connected to the broker all along, so without watching the
GM's presence it would not say hello, and its reports would be rejected as ``unknown_node``
(and those sent while the GM was down would wait for the ack timeout, 60 s here). With it,
every report is applied exactly once, well within the ack timeout.
"""

from __future__ import annotations

import time
from collections.abc import Iterator
from pathlib import Path

import pytest
from harness.brokers import Broker
from harness.faults import Rig, Tally, applied_counts, epoch_of, queue_reports, worker_infos

pytestmark = [pytest.mark.faults, pytest.mark.e2e]

ACK_TIMEOUT = 60.0
REPORTS = 300


@pytest.fixture
def rig(tmp_path: Path, broker: Broker) -> Iterator[Rig]:
    r = Rig(tmp_path, broker.url, broker.prefix, lc_extra=["--ack-timeout-seconds", str(ACK_TIMEOUT)])
    r.start_gm()
    r.start_lc()
    r.apply()
    yield r
    r.stop()


def test_gm_state_lost_and_restarted_while_the_lc_stays_connected(rig: Rig, broker: Broker) -> None:
    tally = Tally("GM SIGKILL + state DB deleted, LC stays connected", broker.kind)
    epoch = epoch_of(rig.lc.state_dir)
    before = queue_reports(rig.lc.state_dir, 0, REPORTS)  # into the running LC's outbox
    rig.wait_drained(epoch, before)

    rig.gm.kill()
    for suffix in ("", "-wal", "-shm"):
        Path(f"{rig.gm.store_path}.gmstate{suffix}").unlink(missing_ok=True)
    # Published while the GM is down: nobody receives them, so they wait for an ack.
    during = queue_reports(rig.lc.state_dir, REPORTS, REPORTS)
    rig.lc.check_alive()

    t0 = time.monotonic()
    rig.gm.start()
    rig.gm.wait_ready()
    rig.wait_drained(epoch, during, timeout=ACK_TIMEOUT / 2)  # not the ack timeout
    took = time.monotonic() - t0
    assert "GM presence turned online" in rig.lc.log_path.read_text()
    # The restarted GM accepts reports from the connected LC at once (no unknown_node left).
    after = queue_reports(rig.lc.state_dir, 2 * REPORTS, REPORTS)
    rig.wait_drained(epoch, after, timeout=ACK_TIMEOUT / 2)

    counts = applied_counts(rig.gm)
    every = before + during + after
    assert [s for s in every if counts[(epoch, s)] != 1] == []
    infos = worker_infos(rig.gm)
    assert all(infos.get(f"w{i}") == {"n": i} for i in range(REPORTS, 3 * REPORTS))
    tally.runs = 1
    tally.count(rig.gm, epoch, during)
    tally.count(rig.gm, epoch, after)
    tally.converge_seconds.append(took)
    tally.note = f"LC ack timeout {ACK_TIMEOUT:.0f} s; converged without it"
    tally.record()
    assert tally.lost == 0 and tally.duplicated == 0
