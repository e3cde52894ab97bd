"""The GM in Kubernetes mode against a FAKE Kubernetes API server (tests/harness/fake_k8s.py).

The API server here is a fake: an in-process HTTP server that stores objects, enforces
resourceVersion preconditions, serves the status subresource, watches and Leases as the real
one does for these requests. It is not Kubernetes, so these tests show that the GM's wiring
is right (KubernetesStore + KubernetesPodsRuntime + the Lease election, validation, the
probes-only API), not that a real cluster behaves like the fake. The MQTT broker is real (the
``broker`` fixture). The GMs run in-process with ``lifelong gm``'s settings, through a
kubeconfig file that points at the fake. Short lease timings keep the tests quick; every wait
is on a condition with a deadline.

The last tests need no API server: ``lifelong gm`` reads its options from the ``LIFELONG_GM_*``
variables the Deployment sets (flags win), and deploy/k8s/gm-deployment.yaml uses only
options the real command line has.
"""

from __future__ import annotations

import json
import threading
import urllib.error
import urllib.request
import uuid
from collections.abc import Callable, Iterator
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

import pytest
import yaml
from harness.brokers import Broker
from harness.fake_k8s import FakeKubernetesApiServer
from harness.waiting import wait_for

from lifelong.__main__ import build_parser
from lifelong.cloud.commands import GM_ENV
from lifelong.cloud.controllers.base import ReportRejected
from lifelong.cloud.runtimes.base import WorkerPhase
from lifelong.cloud.service import GMService, GMSettings
from lifelong.cloud.stores.base import WatchEvent
from lifelong.cloud.stores.kubernetes import KubernetesStore
from lifelong.common.bus import BusClient
from lifelong.common.codec import decode, encode
from lifelong.common.envelope import CONTROL_KIND, Envelope, Op
from lifelong.common.stages import Stage
from lifelong.common.topics import Topics

JOBS = "sedna.io/v1alpha1/lifelonglearningjobs"
NODES = "v1/nodes"
LEASES = "coordination.k8s.io/v1/leases"
LEASE_NS = "lifelong"
LEASE_NAME = "lifelong-gm"
NS = "default"
KIND = "LifelongLearningJob"
DEPLOYMENT = Path(__file__).resolve().parents[2] / "deploy" / "k8s" / "gm-deployment.yaml"


@pytest.fixture
def fake() -> Iterator[FakeKubernetesApiServer]:
    with FakeKubernetesApiServer() as server:
        server.put(NODES, {"apiVersion": "v1", "kind": "Node", "metadata": {"name": "edge-1"}})
        yield server


@pytest.fixture
def kubeconfig(fake: FakeKubernetesApiServer, tmp_path: Path) -> Path:
    """A kubeconfig file naming the fake (no credentials: the fake checks none)."""
    path = tmp_path / "kubeconfig"
    config = {
        "apiVersion": "v1",
        "kind": "Config",
        "clusters": [{"name": "fake", "cluster": {"server": fake.url}}],
        "users": [{"name": "fake", "user": {"token": "fake-token"}}],
        "contexts": [{"name": "fake", "context": {"cluster": "fake", "user": "fake"}}],
        "current-context": "fake",
    }
    path.write_text(json.dumps(config))
    return path


@pytest.fixture
def user(fake: FakeKubernetesApiServer) -> Iterator[KubernetesStore]:
    """What a user does with kubectl: create and change resources through the API."""
    store = KubernetesStore(api_client=fake.api_client())
    try:
        yield store
    finally:
        store.api_client.close()


class GMs:
    """GM services in Kubernetes mode on the fake and the broker; all stopped at the end."""

    def __init__(self, broker: Broker, kubeconfig: Path, tmp: Path, prefix: str) -> None:
        self.broker = broker
        self.kubeconfig = kubeconfig
        self.tmp = tmp
        self.prefix = prefix
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
            "lease_namespace": LEASE_NS,
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
def gms(broker: Broker, kubeconfig: Path, tmp_path: Path, prefix: str) -> Iterator[GMs]:
    group = GMs(broker, kubeconfig, tmp_path, prefix)
    try:
        yield group
    finally:
        group.stop_all()


def dataset(name: str = "ds", node: str = "edge-1") -> dict[str, Any]:
    return {
        "apiVersion": "sedna.io/v1alpha1",
        "kind": "Dataset",
        "metadata": {"name": name, "namespace": NS},
        "spec": {"url": "/data/train.txt", "format": "txt", "nodeName": node},
    }


def job(name: str, dataset_name: str = "ds", node: str = "edge-1", **labels: str) -> dict[str, Any]:
    def template() -> dict[str, Any]:
        return {"spec": {"nodeName": node, "containers": [{"name": "w", "image": "busybox"}]}}

    meta: dict[str, Any] = {"name": name, "namespace": NS}
    if labels:
        meta["labels"] = labels
    return {
        "apiVersion": "sedna.io/v1alpha1",
        "kind": KIND,
        "metadata": meta,
        "spec": {
            "dataset": {"name": dataset_name, "trainProb": 0.8},
            "trainSpec": {  # the CRD requires a trigger
                "template": template(),
                "trigger": {"condition": {"operator": ">", "threshold": 5, "metric": "num_of_samples"}},
            },
            "evalSpec": {"template": template()},
            "deploySpec": {"template": template()},
            "outputDir": "/out",
        },
    }


def conditions(fake: FakeKubernetesApiServer, name: str) -> list[dict[str, Any]]:
    obj = fake.get(JOBS, NS, name)
    assert obj is not None, f"job {name} is gone"
    return list((obj.get("status") or {}).get("conditions") or [])


def stage_types(fake: FakeKubernetesApiServer, name: str) -> list[tuple[str, str]]:
    return [(c["stage"], c["type"]) for c in conditions(fake, name)]


def status_writes(fake: FakeKubernetesApiServer, name: str) -> int:
    path = f"/namespaces/{NS}/lifelonglearningjobs/{name}/status"
    return sum(1 for method, p in list(fake.requests) if method == "PUT" and p.split("?")[0].endswith(path))


def lease_holder(fake: FakeKubernetesApiServer) -> str | None:
    lease = fake.get(LEASES, LEASE_NS, LEASE_NAME)
    return None if lease is None else (lease.get("spec") or {}).get("holderIdentity")


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


def test_k8s_gm_leader_drives_a_job_through_the_status_subresource_fake_api(
    fake: FakeKubernetesApiServer, gms: GMs, user: KubernetesStore
) -> None:
    user.apply(dataset())
    user.apply(job("j1"))
    gm = gms.start("gm-a")

    wait_for(lambda: gm.acting, timeout=15, what="the only GM to lead")
    assert lease_holder(fake) == "gm-a"
    wait_for(lambda: gm.bus.connected, timeout=15, what="the leader's bus")
    wait_for(lambda: stage_types(fake, "j1") == [("Train", "Waiting")], timeout=15, what="j1 Train/Waiting")
    assert status_writes(fake, "j1") >= 1  # through the status subresource
    stored = fake.get(JOBS, NS, "j1")
    assert stored is not None and stored["spec"] == job("j1")["spec"]  # the spec is untouched
    assert (stored.get("status") or {}).get("startTime")

    # A job created while the GM runs arrives through the watch.
    user.apply(job("j2"))
    wait_for(lambda: stage_types(fake, "j2") == [("Train", "Waiting")], timeout=15, what="j2 Train/Waiting")

    # The HTTP API serves the probes and metrics; resources are kubectl's.
    assert gm.api_port is not None
    assert http_get(gm.api_port, "/healthz") == (200, "ok\n")
    code, text = http_get(gm.api_port, "/metrics")
    assert code == 200 and "lifelong" in text
    code, text = http_get(gm.api_port, f"/api/v1/{KIND}")
    assert code == 400 and "kubectl" in text
    code, text = http_get(gm.api_port, f"/api/v1/{KIND}/{NS}/j1")
    assert code == 400 and "kubectl" in text


def test_k8s_gm_job_with_a_missing_dataset_fails_once_until_its_spec_changes_fake_api(
    fake: FakeKubernetesApiServer, gms: GMs, user: KubernetesStore
) -> None:
    user.apply(job("bad", dataset_name="nope"))
    gm = gms.start("gm-a")
    seen = handled_events(gm)

    wait_for(lambda: len(conditions(fake, "bad")) >= 1, timeout=15, what="a condition on the bad job")
    [failed] = conditions(fake, "bad")
    assert (failed["stage"], failed["type"], failed["reason"]) == ("Train", "Failed", "DatasetNotFound")
    assert "spec.dataset.name" in failed["message"] and "nope" in failed["message"]
    writes_after_failure = status_writes(fake, "bad")

    # A worker phase (or an LC report) sent before the spec went bad does not move it on.
    running = WorkerPhase(NS, "bad", Stage.TRAIN, 1, "bad-train-1", "Running")
    with pytest.raises(ReportRejected, match="failed validation"):
        gm.jobs.apply_worker_phase(running)

    # Resyncs: a metadata-only change (same spec generation) and an expired watch (a relist).
    touched = user.apply(job("bad", dataset_name="nope", touched="yes"))
    rv = touched["metadata"]["resourceVersion"]
    wait_for(lambda: ("MODIFIED", rv) in seen, timeout=15, what="the GM to handle the label change")
    fake.expire_watches()
    user.apply(job("other", dataset_name="nope-either"))  # an event after the relist, to wait on
    wait_for(lambda: len(conditions(fake, "other")) == 1, timeout=15, what="the other job's Failed")
    assert conditions(fake, "bad") == [failed]
    assert status_writes(fake, "bad") == writes_after_failure

    # The user fixes the spec (a new generation): validated again, and now it runs.
    user.apply(dataset("ds"))
    fixed = job("bad", dataset_name="ds", touched="yes")
    user.apply(fixed)
    wait_for(
        lambda: stage_types(fake, "bad") == [("Train", "Failed"), ("Train", "Waiting")],
        timeout=15,
        what="the fixed job back in Train/Waiting",
    )

    # Still invalid after a spec change: one new Failed for the new generation, with its reason.
    user.apply(job("other", dataset_name="still-nope"))
    wait_for(lambda: len(conditions(fake, "other")) == 2, timeout=15, what="a Failed for the new spec")
    last = conditions(fake, "other")[-1]
    assert (last["type"], last["reason"]) == ("Failed", "DatasetNotFound")
    assert "still-nope" in last["message"]

    # A node that is no Node object is no failure: the job waits for it (Train/Waiting).
    user.apply(job("waits", dataset_name="ds", node="no-such-node"))
    wait_for(lambda: stage_types(fake, "waits") == [("Train", "Waiting")], timeout=15, what="the waiting job")


def test_k8s_gm_refuses_a_job_the_models_refuse_counts_it_and_drives_the_others_fake_api(
    fake: FakeKubernetesApiServer, gms: GMs, user: KubernetesStore
) -> None:
    user.apply(dataset())
    # A name the CRD (and Kubernetes) accept but the models refuse: its workers' names would be
    # too long. Written straight to the API server, as kubectl or an older GM could have.
    long_name = "j" * 240
    fake.put(JOBS, job(long_name))
    user.apply(job("good"))
    gm = gms.start("gm-a")

    wait_for(lambda: stage_types(fake, "good") == [("Train", "Waiting")], timeout=15, what="the good job")
    wait_for(lambda: len(conditions(fake, long_name)) == 1, timeout=15, what="the refused job's Failed")
    [failed] = conditions(fake, long_name)
    assert (failed["stage"], failed["type"], failed["reason"]) == ("Train", "Failed", "Invalid")
    assert "metadata.name: is 240 characters" in failed["message"]

    def refused() -> float | None:
        return gm.metrics.registry.get_sample_value("lifelong_gm_store_refused_total", {"kind": KIND})

    wait_for(lambda: refused() == 1, timeout=15, what="the refused job counted")
    # Its own status write (a new version) is neither counted again nor answered with a second Failed.
    user.apply(job("later"))
    wait_for(lambda: stage_types(fake, "later") == [("Train", "Waiting")], timeout=15, what="a later job")
    assert refused() == 1
    assert len(conditions(fake, long_name)) == 1


def test_k8s_gm_only_the_leader_acts_fake_api(
    fake: FakeKubernetesApiServer, gms: GMs, user: KubernetesStore
) -> None:
    user.apply(dataset())
    a = gms.start("gm-a")
    wait_for(lambda: a.acting, timeout=15, what="gm-a to lead")
    b = gms.start("gm-b")
    b_writes = count_status_writes(b)
    b_events = handled_events(b)

    user.apply(job("j1"))
    wait_for(lambda: stage_types(fake, "j1") == [("Train", "Waiting")], timeout=15, what="j1 Train/Waiting")
    wait_for(
        lambda: b.elector is not None and b.elector.observed_holder == "gm-a", what="gm-b to read the Lease"
    )
    assert lease_holder(fake) == "gm-a"
    assert a.acting and not b.acting
    assert b_writes == [] and b_events == []
    assert not b.bus.connected  # a follower does not even connect to the broker
    assert b.api_port is not None and http_get(b.api_port, "/healthz") == (200, "ok\n")  # probes pass

    # The leader stops (SIGTERM): it releases the Lease and the follower takes over at once.
    a.stop()
    wait_for(lambda: b.acting, timeout=15, what="gm-b to take over")
    assert lease_holder(fake) == "gm-b"
    wait_for(lambda: b.bus.connected, timeout=15, what="the new leader's bus")
    user.apply(job("j2"))
    wait_for(lambda: stage_types(fake, "j2") == [("Train", "Waiting")], timeout=15, what="j2 by gm-b")
    assert f"{KIND} {NS}/j2" in b_writes
    assert stage_types(fake, "j1") == [("Train", "Waiting")]  # the takeover duplicated nothing


def test_k8s_gm_leader_that_loses_the_lease_stops_acting_fake_api(
    fake: FakeKubernetesApiServer, gms: GMs
) -> None:
    gm = gms.start("gm-a")
    wait_for(lambda: gm.acting and gm.bus.connected, timeout=15, what="gm-a to lead and connect")

    # Another replica takes the Lease (as after a partition): gm-a cannot renew it.
    lease = fake.get(LEASES, LEASE_NS, LEASE_NAME)
    assert lease is not None
    now = datetime.now(UTC).strftime("%Y-%m-%dT%H:%M:%S.%fZ")
    lease["spec"].update({"holderIdentity": "gm-elsewhere", "renewTime": now, "leaseDurationSeconds": 60})
    fake.put(LEASES, lease)

    wait_for(gm.lost_leadership.is_set, timeout=15, what="gm-a to notice it lost the lease")
    assert not gm.acting
    wait_for(lambda: not gm.bus.connected, what="gm-a's bus to disconnect")
    wait_for(lambda: not gm.running_threads, timeout=15, what="the watch and resend to end")
    assert lease_holder(fake) == "gm-elsewhere"


def test_k8s_gm_leader_says_online_again_after_a_stale_offline_presence_fake_api(
    fake: FakeKubernetesApiServer, gms: GMs, broker: Broker, prefix: str
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
