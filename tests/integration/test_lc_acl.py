"""The LC under the shipped broker ACL with per-node passwords: it connects as its node name,
reads its own downstream and publishes reports, hello and presence only under its own
``node/{node}/`` subtree (anything else would be dropped or refused by the broker). Also on the
two-node RabbitMQ cluster, whose topic permissions are the shipped ACL's (harness/rabbitmq.py),
the GM on one node and the LC on the other."""

from __future__ import annotations

from pathlib import Path

import pytest
from conftest import NODE_USERS
from harness.brokers import Broker
from harness.lc_gm import FakeGM, LCProcess
from harness.lc_objects import dataset
from harness.waiting import wait_for

PREFIX = "lifelong/v1"  # the prefix the shipped ACL is written for


@pytest.mark.clustered
def test_lc_works_under_the_shipped_acl(acl_broker: Broker, tmp_path: Path) -> None:
    gm = FakeGM(acl_broker.host, acl_broker.port, PREFIX, "node-a", username="gm", password=NODE_USERS["gm"])
    secret = tmp_path / "password"
    secret.write_text(NODE_USERS["node-a"] + "\n")
    lc = LCProcess(
        node="node-a",
        broker_url=acl_broker.edge_url,
        prefix=PREFIX,
        state_dir=tmp_path / "state",
        extra=["--password-file", str(secret)],
    )
    lc.start()
    try:
        lc.wait_started(gm, 0)
        data = tmp_path / "d.txt"
        data.write_text("a\nb\nc\n")
        gm.upsert(dataset("ds", "node-a", data))
        counts = wait_for(lambda: gm.reports("Dataset"), what="dataset report through the ACL")
        assert counts[0].body["numberOfSamples"] == 3
        wait_for(lambda: gm.rx.presence, what="presence through the ACL")
    finally:
        lc.kill()
        gm.close()
