"""The GM in Kubernetes mode against a REAL kube-apiserver with etcd and kube-controller-manager
(the ``k8s`` fixture, tests/harness/k8s_cluster.py) and a real MQTT broker (``broker``).

The GMs authenticate as the ServiceAccount of deploy/k8s/gm-rbac.yaml, with its ClusterRole,
Role and bindings applied for the test's namespace (a token from the TokenRequest API), never
as admin: a permission the GM needs and the shipped RBAC lacks fails these tests. The user's
side (creating jobs, taking a Lease as another replica would) is the cluster admin, as kubectl.
Most GMs run in-process with ``lifelong gm``'s settings and short lease timings; the failover
test runs two ``lifelong gm`` processes with the Deployment's defaults and SIGKILLs the leader.
Every wait is on a condition with a deadline.

The last tests need no API server: ``lifelong gm`` reads its options from the ``LIFELONG_GM_*``
variables the Deployment sets (flags win), and deploy/k8s/gm-deployment.yaml uses only
options the real command line has.
"""

from __future__ import annotations

import threading
import time
import urllib.error
import urllib.request
import uuid
from collections.abc import Callable, Iterator
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

import pytest
import yaml
from harness import k8s_objects as objects
from harness.brokers import Broker
from harness.k8s_cluster import Cluster
from harness.processes import Process
from harness.waiting import free_port, wait_for
from kubernetes import client

from lifelong.__main__ import build_parser
from lifelong.cloud.commands import GM_ENV
from lifelong.cloud.controllers.base import ReportRejected
from lifelong.cloud.leader import LeaderElectionSettings
from lifelong.cloud.runtimes.base import WorkerPhase
from lifelong.cloud.service import GMService, GMSettings
from lifelong.cloud.stores.base import WatchEvent
from lifelong.cloud.stores.kubernetes import KubernetesStore
from lifelong.common.bus import BusClient
from lifelong.common.codec import decode, encode
from lifelong.common.envelope import CONTROL_KIND, Envelope, Op
from lifelong.common.stages import Stage
from lifelong.common.topics import Topics

GROUP, VERSION = "sedna.io", "v1alpha1"
LEASE_NAME = "lifelong-gm"
KIND = "LifelongLearningJob"
DEPLOYMENT = Path(__file__).resolve().parents[2] / "deploy" / "k8s" / "gm-deployment.yaml"


@pytest.fixture
def ns(k8s: Cluster, k8s_ns: str) -> str:
    k8s.ensure_node("edge-1")
    return k8s_ns


@pytest.fixture
def kubeconfig(k8s: Cluster, ns: str, tmp_path: Path) -> Path:
    """The GM's ServiceAccount's kubeconfig (deploy/k8s/gm-rbac.yaml applied for ``ns``)."""
    return k8s.gm_kubeconfig(ns, tmp_path / "gm.kubeconfig")


@pytest.fixture
def user(k8s: Cluster, ns: str) -> Iterator[KubernetesStore]:
    """What a user does with kubectl: create and change resources through the API (as admin)."""
    store = KubernetesStore(api_client=k8s.api_client(), namespace=ns)
    try:
        yield store
    finally:
        store.api_client.close()


class GMs:
    """GM services in Kubernetes mode on the cluster and the broker; all stopped at the end."""

    def __init__(self, broker: Broker, kubeconfig: Path, tmp: Path, prefix: str, namespace: str) -> None:
        self.broker = broker
        self.kubeconfig = kubeconfig
        self.tmp = tmp
        self.prefix = prefix
        self.namespace = namespace
        self.started: list[GMService] = []

    def start(self, identity: str, **overrides: Any) -> GMService:
        settings: dict[str, Any] = {
            "broker": self.broker.url,
            "store": "kubernetes",
            "kubeconfig": str(self.kubeconfig),
            "state_path": str(self.tmp / f"{identity}.gmstate"),
            "api_port": 0,
            "prefix": self.prefix,
            "identity": identity,
            "lease_namespace": self.namespace,
            "lease_duration": 2.0,
            "renew_deadline": 1.5,
            "retry_period": 0.1,
            "kube_watch_timeout": 2,
            "resend_base": 0.2,
            "resend_cap": 0.4,
            "backoff_base": 0.2,
        }
        settings.update(overrides)
        gm = GMService(GMSettings(**settings))
        self.started.append(gm)
        gm.start()
        return gm

    def stop_all(self) -> None:
        for gm in self.started:
            gm.stop()


@pytest.fixture
def gms(broker: Broker, kubeconfig: Path, tmp_path: Path, prefix: str, ns: str) -> Iterator[GMs]:
    group = GMs(broker, kubeconfig, tmp_path, prefix, ns)
    try:
        yield group
    finally:
        group.stop_all()


dataset = objects.dataset


def job(name: str, dataset_name: str = "ds", node: str = "edge-1", **labels: str) -> dict[str, Any]:
    return objects.job(name, dataset_name, (node, node, node), labels=labels)


def read_job(k8s: Cluster, ns: str, name: str) -> dict[str, Any]:
    obj: dict[str, Any] = k8s.custom().get_namespaced_custom_object(
        GROUP, VERSION, ns, "lifelonglearningjobs", name
    )
    return obj


def conditions(k8s: Cluster, ns: str, name: str) -> list[dict[str, Any]]:
    return list((read_job(k8s, ns, name).get("status") or {}).get("conditions") or [])


def stage_types(k8s: Cluster, ns: str, name: str) -> list[tuple[str, str]]:
    return [(c["stage"], c["type"]) for c in conditions(k8s, ns, name)]


def lease_holder(k8s: Cluster, ns: str) -> str | None:
    lease = client.CoordinationV1Api(k8s.admin()).read_namespaced_lease(LEASE_NAME, ns)
    return lease.spec.holder_identity or None


def lease_renewed(k8s: Cluster, ns: str) -> Any:
    return client.CoordinationV1Api(k8s.admin()).read_namespaced_lease(LEASE_NAME, ns).spec.renew_time


def probe(port: int) -> bool:
    try:
        return http_get(port, "/healthz")[0] == 200
    except OSError:
        return False


def http_get(port: int, path: str) -> tuple[int, str]:
    try:
        with urllib.request.urlopen(f"http://127.0.0.1:{port}{path}", timeout=5) as answer:
            return answer.status, answer.read().decode()
    except urllib.error.HTTPError as exc:
        return exc.code, exc.read().decode()


def handled_events(gm: GMService) -> list[tuple[str, str]]:
    """Record (event type, resourceVersion) of every job event the GM's controller handled."""
    seen: list[tuple[str, str]] = []
    lock = threading.Lock()
    original: Callable[[WatchEvent], None] = gm.jobs.on_event

    def on_event(event: WatchEvent) -> None:
        original(event)
        with lock:
            seen.append((event.type, event.resource_version))

    gm.jobs.on_event = on_event  # type: ignore[method-assign]
    return seen


def count_status_writes(gm: GMService) -> list[str]:
    """Record the jobs this GM's store writes a status for (the spy wraps its store)."""
    writes: list[str] = []
    original = gm.store.update_status

    def update_status(kind: str, namespace: str, name: str, status: Any, **kwargs: Any) -> Any:
        writes.append(f"{kind} {namespace}/{name}")
        return original(kind, namespace, name, status, **kwargs)

    gm.store.update_status = update_status  # type: ignore[method-assign]
    return writes


# -- tests ------------------------------------------------------------------------------------


def test_k8s_gm_leader_drives_a_job_through_the_status_subresource_apiserver(
    k8s: Cluster, ns: str, gms: GMs, user: KubernetesStore
) -> None:
    user.apply(dataset())
    user.apply(job("j1"))
    gm = gms.start("gm-a")

    wait_for(lambda: gm.acting, timeout=15, what="the only GM to lead")
    assert lease_holder(k8s, ns) == "gm-a"
    wait_for(lambda: gm.bus.connected, timeout=15, what="the leader's bus")
    wait_for(
        lambda: stage_types(k8s, ns, "j1") == [("Train", "Waiting")], timeout=15, what="j1 Train/Waiting"
    )
    # The CRD has a status subresource: the API server keeps any status sent with the main
    # resource out, so a status here was written through /status; the spec is untouched.
    stored = read_job(k8s, ns, "j1")
    assert stored["spec"] == job("j1")["spec"]
    assert (stored.get("status") or {}).get("startTime")

    # A job created while the GM runs arrives through the watch.
    user.apply(job("j2"))
    wait_for(
        lambda: stage_types(k8s, ns, "j2") == [("Train", "Waiting")], timeout=15, what="j2 Train/Waiting"
    )

    # The HTTP API serves the probes and metrics; resources are kubectl's.
    assert gm.api_port is not None
    assert http_get(gm.api_port, "/healthz") == (200, "ok\n")
    code, text = http_get(gm.api_port, "/metrics")
    assert code == 200 and "lifelong" in text
    code, text = http_get(gm.api_port, f"/api/v1/{KIND}")
    assert code == 400 and "kubectl" in text
    code, text = http_get(gm.api_port, f"/api/v1/{KIND}/{ns}/j1")
    assert code == 400 and "kubectl" in text


def test_k8s_gm_job_with_a_missing_dataset_fails_once_until_its_spec_changes_apiserver(
    k8s: Cluster, ns: str, gms: GMs, user: KubernetesStore, tmp_path: Path
) -> None:
    user.apply(job("bad", dataset_name="nope"))
    with k8s.second_apiserver() as server:
        # This GM's API server is stopped and started again below: its watch resumes with a relist.
        # One replica without a Lease (a leader that cannot renew its Lease would stop acting).
        gms.kubeconfig = k8s.gm_kubeconfig(ns, tmp_path / "gm-second.kubeconfig", server=server.url)
        gm = gms.start("gm-a", leader_election=False)
        seen = handled_events(gm)
        writes = count_status_writes(gm)
        key = f"{KIND} {ns}/bad"

        wait_for(lambda: len(conditions(k8s, ns, "bad")) >= 1, timeout=15, what="a condition on the bad job")
        [failed] = conditions(k8s, ns, "bad")
        assert (failed["stage"], failed["type"], failed["reason"]) == ("Train", "Failed", "DatasetNotFound")
        assert "spec.dataset.name" in failed["message"] and "nope" in failed["message"]
        writes_after_failure = writes.count(key)

        # A worker phase (or an LC report) sent before the spec went bad does not move it on.
        running = WorkerPhase(ns, "bad", Stage.TRAIN, 1, "bad-train-1", "Running")
        with pytest.raises(ReportRejected, match="failed validation"):
            gm.jobs.apply_worker_phase(running)

        # Resyncs: a metadata-only change (same spec generation), then the GM's API server goes
        # away and comes back after etcd's compaction (410 Gone, a relist).
        touched = user.apply(job("bad", dataset_name="nope", touched="yes"))
        rv = touched["metadata"]["resourceVersion"]
        wait_for(lambda: ("MODIFIED", rv) in seen, timeout=15, what="the GM to handle the label change")
        server.stop()
        user.apply(job("other", dataset_name="nope-either"))  # an event the relist delivers
        k8s.compact()
        server.start()
        wait_for(lambda: len(conditions(k8s, ns, "other")) == 1, timeout=60, what="the other job's Failed")
        assert conditions(k8s, ns, "bad") == [failed]
        assert writes.count(key) == writes_after_failure

        # The user fixes the spec (a new generation): validated again, and now it runs.
        user.apply(dataset("ds"))
        user.apply(job("bad", dataset_name="ds", touched="yes"))
        wait_for(
            lambda: stage_types(k8s, ns, "bad") == [("Train", "Failed"), ("Train", "Waiting")],
            timeout=15,
            what="the fixed job back in Train/Waiting",
        )

        # Still invalid after a spec change: one new Failed for the new generation, with its reason.
        user.apply(job("other", dataset_name="still-nope"))
        wait_for(lambda: len(conditions(k8s, ns, "other")) == 2, timeout=15, what="a Failed for the new spec")
        last = conditions(k8s, ns, "other")[-1]
        assert (last["type"], last["reason"]) == ("Failed", "DatasetNotFound")
        assert "still-nope" in last["message"]

        # A node that is no Node object is no failure: the job waits for it (Train/Waiting).
        user.apply(job("waits", dataset_name="ds", node="no-such-node"))
        wait_for(
            lambda: stage_types(k8s, ns, "waits") == [("Train", "Waiting")],
            timeout=15,
            what="the waiting job",
        )
        gms.stop_all()  # before its API server goes
        gms.started.clear()


def test_k8s_gm_refuses_a_job_the_models_refuse_counts_it_and_drives_the_others_apiserver(
    k8s: Cluster, ns: str, gms: GMs, user: KubernetesStore
) -> None:
    user.apply(dataset())
    # A name the models refuse (its workers' names would be too long) that an older CRD, without
    # the shipped CRD's limit of 63 characters, let the API server take.
    refused_name = "j" * 240
    with k8s.older_job_crd(ns):
        k8s.custom().create_namespaced_custom_object(
            GROUP,
            VERSION,
            ns,
            "lifelonglearningjobs",
            {**job(refused_name), "metadata": {"name": refused_name}},
        )
    user.apply(job("good"))
    gm = gms.start("gm-a")

    wait_for(lambda: stage_types(k8s, ns, "good") == [("Train", "Waiting")], timeout=15, what="the good job")
    wait_for(lambda: len(conditions(k8s, ns, refused_name)) == 1, timeout=15, what="the refused job's Failed")
    [failed] = conditions(k8s, ns, refused_name)
    assert (failed["stage"], failed["type"], failed["reason"]) == ("Train", "Failed", "Invalid")
    assert "metadata.name: is 240 characters" in failed["message"]

    def refused() -> float | None:
        return gm.metrics.registry.get_sample_value("lifelong_gm_store_refused_total", {"kind": KIND})

    wait_for(lambda: refused() == 1, timeout=15, what="the refused job counted")
    # Its own status write (a new version) is neither counted again nor answered with a second Failed.
    user.apply(job("later"))
    wait_for(lambda: stage_types(k8s, ns, "later") == [("Train", "Waiting")], timeout=15, what="a later job")
    assert refused() == 1
    assert len(conditions(k8s, ns, refused_name)) == 1


def test_k8s_gm_only_the_leader_acts_apiserver(
    k8s: Cluster, ns: str, gms: GMs, user: KubernetesStore
) -> None:
    user.apply(dataset())
    a = gms.start("gm-a")
    wait_for(lambda: a.acting, timeout=15, what="gm-a to lead")
    b = gms.start("gm-b")
    b_writes = count_status_writes(b)
    b_events = handled_events(b)

    user.apply(job("j1"))
    wait_for(
        lambda: stage_types(k8s, ns, "j1") == [("Train", "Waiting")], timeout=15, what="j1 Train/Waiting"
    )
    wait_for(
        lambda: b.elector is not None and b.elector.observed_holder == "gm-a", what="gm-b to read the Lease"
    )
    assert lease_holder(k8s, ns) == "gm-a"
    assert a.acting and not b.acting
    assert b_writes == [] and b_events == []
    assert not b.bus.connected  # a follower does not even connect to the broker
    assert b.api_port is not None and http_get(b.api_port, "/healthz") == (200, "ok\n")  # probes pass

    # The leader stops (SIGTERM): it releases the Lease and the follower takes over at once.
    a.stop()
    wait_for(lambda: b.acting, timeout=15, what="gm-b to take over")
    assert lease_holder(k8s, ns) == "gm-b"
    wait_for(lambda: b.bus.connected, timeout=15, what="the new leader's bus")
    user.apply(job("j2"))
    wait_for(lambda: stage_types(k8s, ns, "j2") == [("Train", "Waiting")], timeout=15, what="j2 by gm-b")
    assert f"{KIND} {ns}/j2" in b_writes
    assert stage_types(k8s, ns, "j1") == [("Train", "Waiting")]  # the takeover duplicated nothing


@pytest.mark.parametrize("broker_kind", ["amqtt"])  # the Lease is under test, not the broker
def test_k8s_gm_killed_leader_is_replaced_within_the_lease_time_apiserver(
    k8s: Cluster, gms: GMs, user: KubernetesStore
) -> None:
    """Two ``lifelong gm`` processes as the Deployment runs them (POD_NAME, POD_NAMESPACE, the
    default lease timings); the leader is SIGKILLed, so it cannot release the Lease: the other
    takes over once the lease expired, within the lease duration of the kill (plus a retry
    period and the time to act), and handles no job a second time."""
    lease = LeaderElectionSettings()  # lifelong gm's defaults (15 s, renew 10 s, retry 2 s)
    ns, tmp_path = gms.namespace, gms.tmp

    ports: dict[str, int] = {}

    def gm_process(name: str) -> Process:
        ports[name] = free_port()
        args = ["gm", "--broker", gms.broker.url, "--store", "kubernetes"]
        args += ["--kubeconfig", str(gms.kubeconfig), "--api-port", str(ports[name]), "--prefix", gms.prefix]
        args += ["--state", str(tmp_path / f"{name}.gmstate")]
        args += ["--resend-base", "0.5", "--resend-cap", "2", "--job-backoff-base", "1"]
        return Process(name, args, tmp_path / name, env={"POD_NAME": name, "POD_NAMESPACE": ns})

    user.apply(dataset())
    user.apply(job("j1"))
    a, b = gm_process("gm-a"), gm_process("gm-b")
    a.start()
    try:
        wait_for(lambda: stage_types(k8s, ns, "j1") == [("Train", "Waiting")], timeout=60, what="gm-a to act")
        assert lease_holder(k8s, ns) == "gm-a"
        b.start()
        user.apply(job("j2"))
        wait_for(lambda: stage_types(k8s, ns, "j2") == [("Train", "Waiting")], timeout=30, what="j2 by gm-a")
        wait_for(lambda: probe(ports["gm-b"]), timeout=60, what="gm-b's probe")
        # gm-b campaigns (it reads the Lease every retry period) while gm-a renews it twice more.
        renewals = {lease_renewed(k8s, ns)}

        def renewed_twice() -> bool:
            renewals.add(lease_renewed(k8s, ns))
            return len(renewals) >= 3

        wait_for(renewed_twice, timeout=30, interval=0.1, what="two renewals by gm-a")
        assert lease_holder(k8s, ns) == "gm-a"
        a.kill()  # SIGKILL: no release of the Lease
        killed = time.monotonic()
        wait_for(
            lambda: lease_holder(k8s, ns) == "gm-b", timeout=60, interval=0.1, what="gm-b to take the Lease"
        )
        took_over = time.monotonic() - killed
        # Not before the lease expired (gm-a's last renewal was at most a retry period before the
        # kill: never two leaders), and within one lease: gm-b's clock starts when it first reads
        # gm-a's last renewal (at most a retry period late), it takes over on its first read
        # after the lease (another retry period); a slow request may add its timeout.
        low = lease.lease_duration - lease.retry_period
        high = lease.lease_duration + 2 * lease.retry_period + lease.request_timeout + 3
        assert low <= took_over <= high, f"gm-b took over {took_over:.1f} s after the kill"
        user.apply(job("j3"))
        wait_for(lambda: stage_types(k8s, ns, "j3") == [("Train", "Waiting")], timeout=30, what="j3 by gm-b")
        # Nothing handled twice: the jobs gm-a handled have their one condition, not a second.
        assert stage_types(k8s, ns, "j1") == [("Train", "Waiting")]
        assert stage_types(k8s, ns, "j2") == [("Train", "Waiting")]
        b.check_alive()
    finally:
        for proc in (a, b):
            if proc.alive():
                proc.terminate()


def test_k8s_gm_leader_that_loses_the_lease_stops_acting_apiserver(k8s: Cluster, ns: str, gms: GMs) -> None:
    gm = gms.start("gm-a")
    wait_for(lambda: gm.acting and gm.bus.connected, timeout=15, what="gm-a to lead and connect")

    # Another replica takes the Lease (as after a partition): gm-a cannot renew it.
    now = datetime.now(UTC).strftime("%Y-%m-%dT%H:%M:%S.%fZ")
    client.CoordinationV1Api(k8s.admin()).patch_namespaced_lease(
        LEASE_NAME,
        ns,
        {"spec": {"holderIdentity": "gm-elsewhere", "renewTime": now, "leaseDurationSeconds": 60}},
    )

    wait_for(gm.lost_leadership.is_set, timeout=15, what="gm-a to notice it lost the lease")
    assert not gm.acting
    wait_for(lambda: not gm.bus.connected, what="gm-a's bus to disconnect")
    wait_for(lambda: not gm.running_threads, timeout=15, what="the watch and resend to end")
    assert lease_holder(k8s, ns) == "gm-elsewhere"


def test_k8s_gm_leader_says_online_again_after_a_stale_offline_presence_apiserver(
    gms: GMs, broker: Broker, prefix: str
) -> None:
    """A previous leader's will (or its offline on shutdown) lands after the new leader said
    online: the leader says online again, so the retained presence ends up right."""
    gm = gms.start("gm-a")
    wait_for(lambda: gm.acting and gm.bus.connected, timeout=15, what="gm-a to lead and connect")
    topic = Topics(prefix).gm_presence()
    states: list[str] = []
    watcher = BusClient(client_id=f"watcher-{uuid.uuid4().hex[:8]}", address=broker.url)

    def on_presence(topic: str, payload: bytes, retained: bool = False) -> None:
        states.append(str((decode(payload).body or {}).get("state")))

    watcher.subscribe(topic, on_presence)
    watcher.start()
    try:
        assert watcher.wait_connected(15)
        wait_for(lambda: states[-1:] == ["online"], timeout=15, what="the leader's retained online")
        stale = Envelope.new(node="gm", kind=CONTROL_KIND, op=Op.PRESENCE, body={"state": "offline"})
        watcher.publish(topic, encode(stale), qos=1, retain=True)
        wait_for(lambda: "offline" in states, timeout=15, what="the stale offline")
        wait_for(lambda: states[-1] == "online", timeout=15, what="the leader to say online again")
    finally:
        watcher.close()


def test_k8s_gm_options_come_from_the_environment_flags_win(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("LIFELONG_GM_BROKER", "mqtt://broker.example:1883")
    monkeypatch.setenv("LIFELONG_GM_STORE", "kubernetes")
    monkeypatch.setenv("LIFELONG_GM_USERNAME", "gm")
    monkeypatch.setenv("LIFELONG_GM_PASSWORD_FILE", "/etc/lifelong/mqtt/password")
    monkeypatch.setenv("LIFELONG_GM_PREFIX", "site1/v1")
    monkeypatch.setenv("LIFELONG_GM_API_HOST", "0.0.0.0")
    monkeypatch.setenv("LIFELONG_GM_API_PORT", "9400")
    args = build_parser().parse_args(["gm"])
    assert (args.broker, args.store, args.username, args.password_file) == (
        "mqtt://broker.example:1883",
        "kubernetes",
        "gm",
        "/etc/lifelong/mqtt/password",
    )
    assert (args.prefix, args.api_host, args.api_port) == ("site1/v1", "0.0.0.0", 9400)
    args = build_parser().parse_args(["gm", "--broker", "mqtt://other:1883", "--api-port", "-1"])
    assert (args.broker, args.api_port, args.store) == ("mqtt://other:1883", -1, "kubernetes")


def test_k8s_gm_deployment_uses_only_real_options() -> None:
    deployment = yaml.safe_load(DEPLOYMENT.read_text())
    container = deployment["spec"]["template"]["spec"]["containers"][0]
    env = {e["name"]: e for e in container["env"]}
    assert set(env) - {"POD_NAME", "POD_NAMESPACE"} <= set(GM_ENV), "an env var lifelong gm ignores"
    with pytest.MonkeyPatch.context() as patch:
        for name, entry in env.items():
            if "value" in entry:
                patch.setenv(name, entry["value"])
        args = build_parser().parse_args(container["args"])  # the real parser accepts the args
    assert args.store == "kubernetes" and args.broker == "mqtt://mosquitto:1883"
    assert args.api_host == "0.0.0.0"  # the probes reach the API on the pod IP
    port = {p["name"]: p["containerPort"] for p in container["ports"]}["http"]
    assert args.api_port == port
    for probe in ("readinessProbe", "livenessProbe"):
        assert container[probe]["httpGet"] == {"path": "/healthz", "port": "http"}
    annotations = deployment["spec"]["template"]["metadata"]["annotations"]
    assert annotations["prometheus.io/port"] == str(port) and annotations["prometheus.io/path"] == "/metrics"
    mounts = {m["mountPath"] for m in container["volumeMounts"]}
    assert any(args.state.startswith(m + "/") for m in mounts), "the state database is on a writable volume"
