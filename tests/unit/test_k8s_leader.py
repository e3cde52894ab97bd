"""Leader election over a Lease, against a REAL kube-apiserver with etcd (the ``k8s`` fixture,
tests/harness/k8s_cluster.py). Every elector authenticates as the GM's ServiceAccount with the
RBAC of deploy/k8s/gm-rbac.yaml (create Leases; get and update only the Lease ``lifelong-gm``),
so the elector's requests are the ones the shipped Role allows. Durations are short so the tests
are quick; the tests wait on conditions with deadlines, never for fixed times.
"""

from __future__ import annotations

import threading
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest
from harness.k8s_cluster import Cluster
from harness.waiting import wait_for
from kubernetes import client

from lifelong.cloud.leader import LeaderElectionSettings, LeaderElector

LEASE = "lifelong-gm"  # the name gm-rbac.yaml's Role lets the GM get and update


def fast(namespace: str) -> LeaderElectionSettings:
    return LeaderElectionSettings(
        lease_name=LEASE,
        namespace=namespace,
        lease_duration=2.0,
        renew_deadline=1.5,
        retry_period=0.1,
        request_timeout=1.0,
    )


class Tracker:
    """Who leads now, and the most replicas that ever led at once."""

    def __init__(self, k8s: Cluster, namespace: str, kubeconfig: Path) -> None:
        self.k8s = k8s
        self.namespace = namespace
        self.token = k8s.sa_token(kubeconfig)
        self.lock = threading.Lock()
        self.leaders: set[str] = set()
        self.max_leaders = 0
        self.history: list[tuple[str, str]] = []
        self.clients: list[Any] = []

    def elector(self, name: str, url: str | None = None) -> LeaderElector:
        def started() -> None:
            with self.lock:
                self.leaders.add(name)
                self.max_leaders = max(self.max_leaders, len(self.leaders))
                self.history.append(("started", name))

        def stopped() -> None:
            with self.lock:
                self.leaders.discard(name)
                self.history.append(("stopped", name))

        api = self.k8s.api_client(url, token=self.token)
        self.clients.append(api)
        return LeaderElector(
            client.CoordinationV1Api(api),
            identity=name,
            settings=fast(self.namespace),
            on_started_leading=started,
            on_stopped_leading=stopped,
        )

    def current(self) -> set[str]:
        with self.lock:
            return set(self.leaders)

    def close(self) -> None:
        for api in self.clients:
            api.close()


@pytest.fixture
def tracker(k8s: Cluster, k8s_ns: str, tmp_path: Path) -> Iterator[Tracker]:
    t = Tracker(k8s, k8s_ns, k8s.gm_kubeconfig(k8s_ns, tmp_path / "gm.kubeconfig"))
    try:
        yield t
    finally:
        t.close()


def lease(k8s: Cluster, namespace: str) -> Any:
    return client.CoordinationV1Api(k8s.admin()).read_namespaced_lease(LEASE, namespace)


def holder(k8s: Cluster, namespace: str) -> str | None:
    return lease(k8s, namespace).spec.holder_identity or None


def renewals_of(k8s: Cluster, namespace: str, n: int) -> None:
    """Wait until the leader has renewed the Lease ``n`` more times (its renewTime moved on)."""
    times = {lease(k8s, namespace).spec.renew_time}

    def renewed() -> bool:
        times.add(lease(k8s, namespace).spec.renew_time)
        return len(times) > n

    wait_for(renewed, timeout=10, interval=0.01, what=f"{n} lease renewals")


def test_k8s_leader_only_one_leads_and_other_takes_over_apiserver(
    tracker: Tracker, k8s: Cluster, k8s_ns: str
) -> None:
    a, b = tracker.elector("gm-a"), tracker.elector("gm-b")
    a.start()
    b.start()
    try:
        wait_for(lambda: len(tracker.current()) == 1, what="a leader")
        first = next(iter(tracker.current()))
        assert holder(k8s, k8s_ns) == first
        renewals_of(k8s, k8s_ns, 5)  # several renewals, over a lease duration: still one leader
        assert tracker.current() == {first} and tracker.max_leaders == 1
        leader, follower = (a, b) if first == "gm-a" else (b, a)
        assert leader.is_leader and not follower.is_leader

        # The leader dies without releasing: the other takes over once the lease expired.
        leader.stop(release=False)
        wait_for(lambda: tracker.current() == {follower.identity}, timeout=10, what="the takeover")
        assert holder(k8s, k8s_ns) == follower.identity
        assert tracker.max_leaders == 1
        assert lease(k8s, k8s_ns).spec.lease_transitions == 1
    finally:
        a.stop()
        b.stop()


def test_k8s_leader_release_hands_over_fast_apiserver(tracker: Tracker, k8s: Cluster, k8s_ns: str) -> None:
    a = tracker.elector("gm-a")
    a.start()
    assert a.wait_for_leadership(timeout=5)
    b = tracker.elector("gm-b")
    b.start()
    try:
        renewals_of(k8s, k8s_ns, 3)
        assert not b.is_leader
        a.stop()  # releases the lease: empty holder
        assert tracker.history[-1] == ("stopped", "gm-a")
        assert b.wait_for_leadership(timeout=fast(k8s_ns).lease_duration)  # no need to wait out the lease
        assert tracker.max_leaders == 1
    finally:
        a.stop()
        b.stop()


def test_k8s_leader_stops_leading_when_renewals_fail_apiserver(tracker: Tracker, k8s: Cluster) -> None:
    """The leader's API server goes away: it cannot renew and stops leading within the renew
    deadline; when its API server is back, it leads again."""
    with k8s.second_apiserver() as server:
        a = tracker.elector("gm-a", url=server.url)
        a.start()
        try:
            assert a.wait_for_leadership(timeout=10)
            server.stop()
            wait_for(lambda: ("stopped", "gm-a") in tracker.history, timeout=10, what="leadership lost")
            assert not a.is_leader
            server.start()  # the API server is back: it leads again
            assert a.wait_for_leadership(timeout=20)
        finally:
            a.stop()


def test_k8s_leader_settings_are_checked() -> None:
    with pytest.raises(ValueError, match="renew_deadline"):
        LeaderElectionSettings(lease_duration=5, renew_deadline=5)
    with pytest.raises(ValueError, match="retry_period"):
        LeaderElectionSettings(lease_duration=5, renew_deadline=2, retry_period=2)
