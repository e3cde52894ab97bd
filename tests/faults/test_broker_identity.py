"""Broker identity and who may command an edge, with the real GM and LC processes, on both brokers.

Regression tests for issue 12 ("Client-id takeover", "Commands on the edge"; docs/security.md):

* A client holding node-a's password and sending node-b's client id (or the GM's) is accepted,
  but as node-a: node-b and the GM stay connected, keep their subscriptions, and a Dataset
  applied afterwards still travels GM -> LC -> GM. Before, mosquitto disconnected the victim at
  every attempt, and amqtt silently dropped the victim's subscriptions (even for a client whose
  password was then refused).
* node-a's credentials publishing a Worker object on node-a's own down topic: the broker drops
  it (only the GM writes down topics), the LC runs nothing, even once it reconnected and
  re-subscribed (nothing forged was retained).

Both run against the ``acl_broker`` fixture: the password file and the shipped ACL, on mosquitto
(with ``use_username_as_clientid``, as deploy/mosquitto/mosquitto.conf) and on
``lifelong broker --password-file F --acl``.
"""

from __future__ import annotations

import uuid
from pathlib import Path

import paho.mqtt.client as mqtt
import pytest
from conftest import NODE_USERS
from harness.brokers import Broker
from harness.faults import NS, Tally
from harness.lc_objects import worker
from harness.processes import GMProcess, LCProcess
from harness.waiting import wait_for
from paho.mqtt.enums import CallbackAPIVersion

from lifelong.common.codec import encode
from lifelong.common.envelope import Envelope, Op
from lifelong.common.topics import Topics

pytestmark = [pytest.mark.faults, pytest.mark.e2e]

PREFIX = "lifelong/v1"  # the prefix the shipped ACL is written for
KICKED = "lost connection to"  # what the bus client logs when the broker drops it


def _secret(tmp: Path, user: str) -> Path:
    path = tmp / f"{user}.password"
    path.write_text(NODE_USERS[user] + "\n")
    return path


# A GM client id as guessable as the old default (lifelong-gm-HOST-PID): the binding of ids to
# user names must protect the GM even when its id is known.
GM_CLIENT_ID = "lifelong-gm-host-1234"


def _gm(tmp: Path, broker: Broker) -> GMProcess:
    return GMProcess(
        tmp,
        broker_url=broker.url,
        prefix=PREFIX,
        extra=[
            "--username",
            "gm",
            "--password-file",
            str(_secret(tmp, "gm")),
            "--client-id",
            GM_CLIENT_ID,
        ],
    )


def _lc(tmp: Path, broker: Broker, node: str) -> LCProcess:
    return LCProcess(
        tmp,
        node=node,
        broker_url=broker.url,
        prefix=PREFIX,
        extra=["--password-file", str(_secret(tmp, node))],
    )


def _connect(broker: Broker, user: str, password: str, client_id: str) -> tuple[mqtt.Client, int]:
    """One CONNECT, no network loop of its own: returns the client and the CONNACK code."""
    client = mqtt.Client(CallbackAPIVersion.VERSION2, client_id=client_id, protocol=mqtt.MQTTv311)
    client.username_pw_set(user, password)
    codes: list[int] = []
    client.on_connect = lambda _c, _u, _f, rc, _p: codes.append(int(rc.value))
    client.connect(broker.host, broker.port, keepalive=30)
    client.loop_start()
    wait_for(lambda: bool(codes), timeout=15, what=f"CONNACK for {user} as client id {client_id!r}")
    return client, codes[0]


def _dataset(name: str, node: str, data: Path) -> dict[str, object]:
    return {
        "apiVersion": "sedna.io/v1alpha1",
        "kind": "Dataset",
        "metadata": {"name": name, "namespace": NS},
        "spec": {"url": str(data), "format": "txt", "nodeName": node},
    }


def _samples(gm: GMProcess, name: str) -> object:
    return ((gm.get("Dataset", name) or {}).get("status") or {}).get("numberOfSamples")


@pytest.mark.parametrize("victim", ["node-b", "gm"])
def test_another_users_credentials_cannot_take_over_a_client_id(
    tmp_path: Path, acl_broker: Broker, victim: str
) -> None:
    gm, lc = _gm(tmp_path, acl_broker), _lc(tmp_path, acl_broker, "node-b")
    attackers: list[mqtt.Client] = []
    try:
        gm.start()
        gm.wait_ready()
        lc.start()
        lc.wait_online(gm)
        # The ids the victims send, and the id a broker that binds ids to user names gives them.
        ids = ["node-b"] if victim == "node-b" else [GM_CLIENT_ID, "gm"]
        tried = 0
        for client_id in ids * 3:
            client, code = _connect(acl_broker, "node-a", NODE_USERS["node-a"], client_id)
            attackers.append(client)
            assert code == 0, "node-a's own credentials are valid: the broker accepts them, as node-a"
            tried += 1
        # Someone with the victim's name but not its password: refused, and touching nothing.
        client, code = _connect(acl_broker, victim, "not-the-password", ids[0])
        attackers.append(client)
        assert code != 0
        tried += 1

        # The victims still talk to each other: a Dataset applied now goes down to node-b and its
        # status comes back up (needs the LC's and the GM's subscriptions, both intact).
        data = tmp_path / "samples.txt"
        data.write_text("a\nb\nc\n")
        gm.cli("apply", "-f", "-", stdin=_yaml(_dataset("after-attack", "node-b", data)))
        wait_for(
            lambda: _samples(gm, "after-attack") == 3, timeout=30, what=f"the dataset status\n{lc.log_tail()}"
        )
        assert gm.node_online("node-b")
        assert KICKED not in lc.log_path.read_text(errors="replace"), lc.log_tail()
        assert KICKED not in gm.log_path.read_text(errors="replace"), gm.log_tail()
        t = Tally(f"client-id takeover with another user's password, victim {victim}", acl_broker.kind)
        t.runs, t.tried = 1, tried
        t.note = f"{tried} attempts; victim never disconnected, kept its subscriptions"
        t.record()
    finally:
        for client in attackers:
            client.loop_stop()
            client.disconnect()
        for proc in (lc, gm):
            if proc.alive():
                proc.kill()


def test_a_node_cannot_command_its_own_lc(tmp_path: Path, acl_broker: Broker) -> None:
    """node-a's credentials publish a Worker on node-a's down topic: dropped, nothing runs."""
    gm, lc = _gm(tmp_path, acl_broker), _lc(tmp_path, acl_broker, "node-a")
    pwned = tmp_path / "pwned"
    topics = Topics(PREFIX)
    try:
        gm.start()
        gm.wait_ready()
        lc.start()
        lc.wait_online(gm)
        obj = worker("job1", "Train", 0, f"open({str(pwned)!r}, 'w').write('ran')")
        name = obj["metadata"]["name"]
        obj["metadata"]["resourceVersion"] = "999999"
        env = Envelope.new(
            node="node-a", kind="Worker", ns=NS, name=name, op=Op.UPSERT, rv="999999", body={"object": obj}
        )
        # Connecting as node-a disconnects the LC (same user, same id): that is node-a's own
        # business. The forged upsert goes out once live and once retained, for the LC's next
        # subscription.
        forger, code = _connect(acl_broker, "node-a", NODE_USERS["node-a"], f"forger-{uuid.uuid4().hex[:6]}")
        assert code == 0
        for retain in (False, True):
            forger.publish(topics.down("node-a", "Worker", NS, name), encode(env), qos=1, retain=retain)
        forger.loop_stop()
        forger.disconnect()

        # The LC (re)connects and re-subscribes; then a real Dataset from the GM reaches it and
        # its status comes back: the LC has handled its down topics since the forgery.
        wait_for(lambda: gm.node_online("node-a"), timeout=30, what=f"node-a back online\n{lc.log_tail()}")
        data = tmp_path / "samples.txt"
        data.write_text("a\nb\n")
        gm.cli("apply", "-f", "-", stdin=_yaml(_dataset("marker", "node-a", data)))
        wait_for(lambda: _samples(gm, "marker") == 2, timeout=30, what=f"the marker dataset\n{lc.log_tail()}")
        log = lc.log_path.read_text(errors="replace")
        assert not pwned.exists(), "a node's credentials made its LC run a command"
        assert name not in log, f"the LC saw the forged Worker:\n{lc.log_tail()}"
        t = Tally("node credentials publish a Worker on their own down topic", acl_broker.kind)
        t.runs, t.tried = 1, 2
        t.note = "live and retained: dropped by the broker's ACL, nothing ran"
        t.record()
    finally:
        for proc in (lc, gm):
            if proc.alive():
                proc.kill()


def _yaml(obj: object) -> str:
    import yaml

    return str(yaml.safe_dump(obj))
