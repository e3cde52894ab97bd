"""The LC's node name checks and its Dataset reports: the state of the file (``missing``,
``unreadable``, ``ok``) travels in the report, a change of state is reported, and every
dataset is reported again after a connect (docs/protocol.md, "report")."""

from __future__ import annotations

import os
from collections.abc import Iterator
from pathlib import Path

import pytest
from harness.lc_objects import NS, dataset, offline_settings

from lifelong.common.errors import ConfigError
from lifelong.common.messages import DatasetReport
from lifelong.edge.config import LCSettings
from lifelong.edge.service import LocalController, check_node_name

NODE = "node-a"


def settings(tmp_path: Path, node: str = NODE) -> LCSettings:
    out: LCSettings = offline_settings(tmp_path, node)
    return out


@pytest.fixture
def lc(tmp_path: Path) -> Iterator[LocalController]:
    c = LocalController(settings(tmp_path))
    yield c
    c.store.close()


@pytest.mark.parametrize(
    ("node", "says"),
    [
        ("gm", "node name 'gm' is reserved"),
        ("observer", "node name 'observer' is reserved: it is the broker user that reads"),
        ("Edge_1", "must be a DNS-1123 subdomain"),
        ("-edge", "must be a DNS-1123 subdomain"),
        ("e" * 254, "at most 253 characters"),
    ],
)
def test_the_lc_refuses_reserved_and_unaddressable_node_names(tmp_path: Path, node: str, says: str) -> None:
    with pytest.raises(ConfigError, match=says):
        LocalController(settings(tmp_path, node))
    assert not (tmp_path / "state").exists()  # refused before anything is created


@pytest.mark.parametrize("node", ["node-a", "edge-1.site-2", "gm-1", "e" * 253])
def test_the_lc_takes_dns_names_that_are_not_reserved(node: str) -> None:
    check_node_name(node)


def reports(lc: LocalController, name: str = "ds1") -> list[DatasetReport]:
    return [DatasetReport.parse(e.body) for e in lc.outbox.due() if e.kind == "Dataset" and e.name == name]


def test_the_state_of_the_file_is_reported_and_its_recovery_too(lc: LocalController, tmp_path: Path) -> None:
    path = tmp_path / "ds1.txt"
    lc.store.put_resource("Dataset", NS, "ds1", "1", dataset("ds1", NODE, path))
    lc.control_step()
    [missing] = reports(lc)  # coalesced per dataset: the latest report only
    assert (missing.state, missing.number_of_samples) == ("missing", 0)
    assert missing.message == f"{path} does not exist"
    lc.control_step()
    assert len(reports(lc)) == 1  # nothing changed, nothing new

    path.write_text("a\nb\nc\n")
    lc.control_step()
    [ok] = reports(lc)
    assert (ok.state, ok.number_of_samples, ok.message) == ("ok", 3, None)
    assert "message" not in ok.to_body()

    if os.geteuid() != 0:  # root reads a file whatever its mode
        path.chmod(0)
        lc.monitor.forget(NS, "ds1")
        lc.control_step()
        [unreadable] = reports(lc)
        assert unreadable.state == "unreadable" and "Permission denied" in (unreadable.message or "")
        assert unreadable.number_of_samples == 3  # the last count stays
        path.chmod(0o644)

    path.unlink()
    lc.control_step()
    [gone] = reports(lc)
    assert (gone.state, gone.number_of_samples) == ("missing", 3)


def test_every_dataset_is_reported_again_after_a_connect(lc: LocalController, tmp_path: Path) -> None:
    path = tmp_path / "ds1.txt"
    path.write_text("a\nb\n")
    lc.store.put_resource("Dataset", NS, "ds1", "1", dataset("ds1", NODE, path))
    lc.control_step()
    first = reports(lc)
    assert [r.number_of_samples for r in first] == [2]
    lc.outbox.ack(lc.outbox.epoch, [e.seq for e in lc.outbox.table.after(0, 1000)])  # the GM acked it
    lc.control_step()
    assert reports(lc) == []  # unchanged: not reported
    lc._on_connect(False)  # what the bus calls on a reconnect
    lc.control_step()
    again = reports(lc)
    assert [(r.state, r.number_of_samples) for r in again] == [("ok", 2)]


def test_the_dataset_report_stays_readable_both_ways() -> None:
    old = {"numberOfSamples": 4, "updateTime": "2026-01-01T00:00:00Z"}
    assert DatasetReport.parse(old).state is None  # an older LC's report
    assert DatasetReport.parse(old).to_body() == old  # and what an older GM reads: the same map
    newer = {**old, "state": "archived", "message": "m", "somethingNew": 1}
    assert DatasetReport.parse(newer).state == "archived"  # unknown values and fields pass
