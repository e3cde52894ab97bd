"""Leader election over a Lease, against a FAKE Kubernetes API server (tests/harness/fake_k8s.py).

The fake stores the Lease and enforces resourceVersion preconditions as the real server
does; it is not Kubernetes. Durations are short so the tests are quick; the tests wait on
conditions with deadlines, never for fixed times.
"""

from __future__ import annotations

import threading
from collections.abc import Iterator

import pytest
from harness.fake_k8s import FakeKubernetesApiServer
from harness.waiting import wait_for
from kubernetes import client

from lifelong.cloud.leader import LeaderElectionSettings, LeaderElector

LEASES = "coordination.k8s.io/v1/leases"
FAST = LeaderElectionSettings(
    lease_name="gm",
    namespace="lifelong",
    lease_duration=2.0,
    renew_deadline=1.5,
    retry_period=0.1,
    request_timeout=1.0,
)


class Tracker:
    """Who leads now, and the most replicas that ever led at once."""

    def __init__(self) -> None:
        self.lock = threading.Lock()
        self.leaders: set[str] = set()
        self.max_leaders = 0
        self.history: list[tuple[str, str]] = []

    def elector(self, fake: FakeKubernetesApiServer, name: str) -> LeaderElector:
        def started() -> None:
            with self.lock:
                self.leaders.add(name)
                self.max_leaders = max(self.max_leaders, len(self.leaders))
                self.history.append(("started", name))

        def stopped() -> None:
            with self.lock:
                self.leaders.discard(name)
                self.history.append(("stopped", name))

        return LeaderElector(
            client.CoordinationV1Api(fake.api_client()),
            identity=name,
            settings=FAST,
            on_started_leading=started,
            on_stopped_leading=stopped,
        )

    def current(self) -> set[str]:
        with self.lock:
            return set(self.leaders)


@pytest.fixture
def fake() -> Iterator[FakeKubernetesApiServer]:
    with FakeKubernetesApiServer() as server:
        yield server


def holder(fake: FakeKubernetesApiServer) -> str | None:
    lease = fake.get(LEASES, "lifelong", "gm")
    return lease["spec"].get("holderIdentity") if lease else None


def renewals_of(fake: FakeKubernetesApiServer, n: int) -> None:
    """Wait until the Lease has been written ``n`` more times (the leader renewing)."""
    lease = fake.get(LEASES, "lifelong", "gm")
    assert lease is not None
    start = int(lease["metadata"]["resourceVersion"])

    def renewed() -> bool:
        now = fake.get(LEASES, "lifelong", "gm")
        return now is not None and int(now["metadata"]["resourceVersion"]) >= start + n

    wait_for(renewed, timeout=10, what=f"{n} lease renewals")


def test_k8s_leader_only_one_leads_and_other_takes_over_fake_api(fake: FakeKubernetesApiServer) -> None:
    tracker = Tracker()
    a, b = tracker.elector(fake, "gm-a"), tracker.elector(fake, "gm-b")
    a.start()
    b.start()
    try:
        wait_for(lambda: len(tracker.current()) == 1, what="a leader")
        first = next(iter(tracker.current()))
        assert holder(fake) == first
        renewals_of(fake, 5)  # several lease durations' worth of renewals: still one leader
        assert tracker.current() == {first} and tracker.max_leaders == 1
        leader, follower = (a, b) if first == "gm-a" else (b, a)
        assert leader.is_leader and not follower.is_leader

        # The leader dies without releasing: the other takes over once the lease expired.
        leader.stop(release=False)
        wait_for(lambda: tracker.current() == {follower.identity}, timeout=10, what="the takeover")
        assert holder(fake) == follower.identity
        assert tracker.max_leaders == 1
        lease = fake.get(LEASES, "lifelong", "gm")
        assert lease is not None and lease["spec"]["leaseTransitions"] == 1
    finally:
        a.stop()
        b.stop()


def test_k8s_leader_release_hands_over_fast_fake_api(fake: FakeKubernetesApiServer) -> None:
    tracker = Tracker()
    a = tracker.elector(fake, "gm-a")
    a.start()
    assert a.wait_for_leadership(timeout=5)
    b = tracker.elector(fake, "gm-b")
    b.start()
    try:
        renewals_of(fake, 3)
        assert not b.is_leader
        a.stop()  # releases the lease: empty holder
        assert tracker.history[-1] == ("stopped", "gm-a")
        assert b.wait_for_leadership(timeout=FAST.lease_duration)  # no need to wait out the lease
        assert tracker.max_leaders == 1
    finally:
        a.stop()
        b.stop()


def test_k8s_leader_stops_leading_when_renewals_fail_fake_api(fake: FakeKubernetesApiServer) -> None:
    tracker = Tracker()
    a = tracker.elector(fake, "gm-a")
    a.start()
    try:
        assert a.wait_for_leadership(timeout=5)
        fake.fail_next("PUT", "/leases/gm", 500, times=10_000)
        wait_for(lambda: ("stopped", "gm-a") in tracker.history, timeout=10, what="leadership lost")
        assert not a.is_leader
        fake.clear_faults()  # the API server is healthy again: it leads again
        assert a.wait_for_leadership(timeout=10)
    finally:
        a.stop()


def test_k8s_leader_settings_are_checked() -> None:
    with pytest.raises(ValueError, match="renew_deadline"):
        LeaderElectionSettings(lease_duration=5, renew_deadline=5)
    with pytest.raises(ValueError, match="retry_period"):
        LeaderElectionSettings(lease_duration=5, renew_deadline=2, retry_period=2)
