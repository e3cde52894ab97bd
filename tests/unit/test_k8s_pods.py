"""The Pods worker runtime against a REAL kube-apiserver with etcd and kube-controller-manager's
garbage collector (the ``k8s`` fixture, tests/harness/k8s_cluster.py), as the GM's
ServiceAccount with the RBAC of deploy/k8s/gm-rbac.yaml.

No kubelet runs, so no Pod ever runs: the tests do what a kubelet would and say so
(``Cluster.kubelet`` writes a Pod's phase and exit code through the status subresource;
``Cluster.kubelet_finishes_deletion`` removes a Pod marked for deletion). The Pods' owner is a
real LifelongLearningJob (created first; the garbage collector deletes Pods whose owner is gone).
"""

from __future__ import annotations

import threading
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest
from harness import k8s_objects as objects
from harness.k8s_cluster import Cluster
from harness.waiting import wait_for
from kubernetes import client

from lifelong.cloud.runtimes.base import WorkerPhase, WorkerSpec
from lifelong.cloud.runtimes.kubernetes_pods import (
    KubernetesPodsRuntime,
    PodsRuntimeSettings,
    build_pod,
    phase_of_pod,
)
from lifelong.common.stages import Stage

PODS = "v1/pods"
ENV = {"LC_SERVER": "http://localhost:9100", "JOB_NAME": "atcii", "NAMESPACE": "default"}


def template(restart: str | None = None, node: str = "edge-1") -> dict[str, Any]:
    spec: dict[str, Any] = {
        "nodeName": node,
        "containers": [
            {
                "name": "train",
                "image": "kubeedge/sedna-example:v0.3",
                "command": ["python3", "train.py"],
                "env": [
                    {"name": "early_stopping_rounds", "value": "100"},
                    {"name": "LC_SERVER", "value": "x"},
                ],
            },
            {"name": "sidecar", "image": "busybox"},
        ],
    }
    if restart:
        spec["restartPolicy"] = restart
    return {"metadata": {"labels": {"app": "mine"}, "annotations": {"note": "kept"}}, "spec": spec}


def worker(stage: Stage = Stage.TRAIN, round_: int = 1, **kw: Any) -> WorkerSpec:
    return WorkerSpec(
        job_namespace="default",
        job_name="atcii",
        job_uid="uid-123",
        stage=stage,
        round=round_,
        template=kw.pop("tmpl", None) or template(),
        env=dict(ENV),
    )


def test_k8s_build_pod_follows_upstream_rules() -> None:
    spec = worker()
    pod = build_pod(spec)
    meta = pod["metadata"]
    assert meta["name"] == "atcii-train-1" and meta["namespace"] == "default"
    assert meta["labels"] == {
        "app": "mine",
        "lifelonglearningjob.sedna.io/name": "atcii",
        "lifelonglearningjob.sedna.io/uid": "uid-123",
        "lifelonglearningjob.sedna.io/worker-type": "train",
        "lifelong.io/stage": "Train",
        "lifelong.io/round": "1",
    }
    assert meta["annotations"] == {"note": "kept"}
    assert meta["ownerReferences"] == [
        {
            "apiVersion": "sedna.io/v1alpha1",
            "kind": "LifelongLearningJob",
            "name": "atcii",
            "uid": "uid-123",
            "controller": True,
            "blockOwnerDeletion": True,
        }
    ]
    assert pod["spec"]["nodeName"] == "edge-1"
    assert pod["spec"]["restartPolicy"] == "OnFailure"
    assert pod["spec"]["hostNetwork"] is True
    train_env = pod["spec"]["containers"][0]["env"]
    assert train_env[0] == {"name": "early_stopping_rounds", "value": "100"}  # the user's stays first
    assert {e["name"]: e["value"] for e in train_env}["LC_SERVER"] == "http://localhost:9100"  # ours wins
    assert [e["name"] for e in train_env].count("LC_SERVER") == 1
    assert {e["name"] for e in pod["spec"]["containers"][1]["env"]} == set(ENV)
    assert spec.template == template()  # the template is not modified

    assert build_pod(worker(Stage.EVAL))["spec"]["restartPolicy"] == "OnFailure"
    assert build_pod(worker(tmpl=template("Never")))["spec"]["restartPolicy"] == "Never"
    deploy = build_pod(worker(Stage.DEPLOY))
    assert "restartPolicy" not in deploy["spec"]  # Kubernetes' default (Always), as upstream
    assert deploy["metadata"]["labels"]["lifelonglearningjob.sedna.io/worker-type"] == "inference"


def test_k8s_phase_of_pod_reads_exit_codes() -> None:
    pod = build_pod(worker())
    assert phase_of_pod(pod) is not None
    pod["status"] = {
        "phase": "Failed",
        "containerStatuses": [
            {"name": "train", "state": {"terminated": {"exitCode": 3, "reason": "Error"}}},
            {"name": "sidecar", "state": {"terminated": {"exitCode": 0}}},
        ],
    }
    observed = phase_of_pod(pod)
    assert observed is not None
    assert (observed.phase, observed.exit_code, observed.stage, observed.round) == (
        "Failed",
        3,
        Stage.TRAIN,
        1,
    )
    assert "train: Error" in observed.message
    assert phase_of_pod({"metadata": {"name": "other", "labels": {}}}) is None


JOBS = ("sedna.io", "v1alpha1")


def owner_job(k8s: Cluster, namespace: str, name: str = "atcii") -> dict[str, Any]:
    """The LifelongLearningJob the Pods belong to, created as the cluster admin."""
    body = objects.job(name)
    created: dict[str, Any] = k8s.custom().create_namespaced_custom_object(
        *JOBS, namespace, "lifelonglearningjobs", body
    )
    return created


def real_worker(namespace: str, uid: str, stage: Stage = Stage.TRAIN) -> WorkerSpec:
    return WorkerSpec(
        job_namespace=namespace,
        job_name="atcii",
        job_uid=uid,
        stage=stage,
        round=1,
        template=template(),
        env={**ENV, "NAMESPACE": namespace},
    )


def contains(actual: Any, expected: Any, path: str = "") -> None:
    """``expected`` is in ``actual``: every field given is there and equal (the API server adds
    its defaults: dnsPolicy, imagePullPolicy, the ServiceAccount token volume...)."""
    if isinstance(expected, dict):
        assert isinstance(actual, dict), f"{path}: {actual!r} is no object"
        for key, value in expected.items():
            assert key in actual, f"{path}.{key} is missing"
            contains(actual[key], value, f"{path}.{key}")
    elif isinstance(expected, list):
        assert isinstance(actual, list) and len(actual) == len(expected), f"{path}: {actual!r}"
        for i, (a, e) in enumerate(zip(actual, expected, strict=True)):
            contains(a, e, f"{path}[{i}]")
    else:
        assert actual == expected, f"{path}: {actual!r} != {expected!r}"


def make_runtime(
    k8s: Cluster, kubeconfig: Path, namespace: str, url: str | None = None
) -> KubernetesPodsRuntime:
    api = k8s.api_client(url, token=k8s.sa_token(kubeconfig))
    return KubernetesPodsRuntime(
        client.CoreV1Api(api),
        settings=PodsRuntimeSettings(
            namespace=namespace, watch_timeout=2, request_timeout=5.0, error_backoff_max=0.5
        ),
    )


@pytest.fixture
def gm_kubeconfig(k8s: Cluster, k8s_ns: str, tmp_path: Path) -> Path:
    return k8s.gm_kubeconfig(k8s_ns, tmp_path / "gm.kubeconfig")


@pytest.fixture
def runtime(k8s: Cluster, k8s_ns: str, gm_kubeconfig: Path) -> Iterator[KubernetesPodsRuntime]:
    rt = make_runtime(k8s, gm_kubeconfig, k8s_ns)
    try:
        yield rt
    finally:
        rt.close()
        rt._core.api_client.close()


def pods(k8s: Cluster, namespace: str) -> dict[str, dict[str, Any]]:
    listed = k8s.core().list_namespaced_pod(namespace)
    return {p.metadata.name: k8s.admin().sanitize_for_serialization(p) for p in listed.items}


def test_k8s_pods_created_from_templates_apiserver(
    runtime: KubernetesPodsRuntime, k8s: Cluster, k8s_ns: str
) -> None:
    uid = owner_job(k8s, k8s_ns)["metadata"]["uid"]
    spec = real_worker(k8s_ns, uid)
    runtime.ensure_worker(spec)
    runtime.ensure_worker(spec)  # idempotent: 409 AlreadyExists is fine
    assert list(pods(k8s, k8s_ns)) == ["atcii-train-1"]
    created = pods(k8s, k8s_ns)["atcii-train-1"]
    expected = build_pod(spec)
    assert created["metadata"]["labels"] == expected["metadata"]["labels"]
    assert created["metadata"]["ownerReferences"] == expected["metadata"]["ownerReferences"]
    contains(created["spec"], expected["spec"])  # admitted as built, defaults added
    assert created["status"]["phase"] == "Pending"  # no kubelet: it never runs by itself

    runtime.ensure_worker(real_worker(k8s_ns, uid, Stage.EVAL))
    k8s.core().create_namespaced_pod(
        k8s_ns,
        {
            "apiVersion": "v1",
            "kind": "Pod",
            "metadata": {"name": "unrelated", "labels": {"a": "b"}},
            "spec": {"nodeName": "edge-1", "containers": [{"name": "c", "image": "i"}]},
        },
    )
    runtime.delete_workers(k8s_ns, "atcii")
    # The API server marks a Pod bound to a node for deletion; its kubelet (played here) ends it.
    marked = {n for n, p in pods(k8s, k8s_ns).items() if p["metadata"].get("deletionTimestamp")}
    assert marked == {"atcii-train-1", "atcii-eval-1"}
    assert k8s.kubelet_finishes_deletion(k8s_ns) == ["atcii-eval-1", "atcii-train-1"]
    assert list(pods(k8s, k8s_ns)) == ["unrelated"]


def test_k8s_pods_of_a_deleted_job_are_garbage_collected_apiserver(
    runtime: KubernetesPodsRuntime, k8s: Cluster, k8s_ns: str
) -> None:
    """The Pods' ownerReferences are right: kube-controller-manager's garbage collector deletes
    them when their LifelongLearningJob is deleted (nothing of the GM's takes part)."""
    uid = owner_job(k8s, k8s_ns)["metadata"]["uid"]
    runtime.ensure_worker(real_worker(k8s_ns, uid))
    runtime.ensure_worker(real_worker(k8s_ns, uid, Stage.EVAL))
    k8s.custom().delete_namespaced_custom_object(*JOBS, k8s_ns, "lifelonglearningjobs", "atcii")

    def collected() -> bool:
        left = pods(k8s, k8s_ns)
        k8s.kubelet_finishes_deletion(k8s_ns)  # the kubelet's part of a deletion
        return not left

    wait_for(collected, timeout=60, interval=0.2, what="the garbage collector to delete the job's Pods")


def test_k8s_pod_phases_reported_apiserver(k8s: Cluster, k8s_ns: str, gm_kubeconfig: Path) -> None:
    seen: list[WorkerPhase] = []
    lock = threading.Lock()

    def on_phase(p: WorkerPhase) -> None:
        with lock:
            seen.append(p)

    def phases() -> list[tuple[str, str, int | None]]:
        with lock:
            return [(p.worker, p.phase, p.exit_code) for p in seen]

    uid = owner_job(k8s, k8s_ns)["metadata"]["uid"]
    with k8s.second_apiserver() as server:
        runtime = make_runtime(k8s, gm_kubeconfig, k8s_ns, url=server.url)
        try:
            runtime.ensure_worker(real_worker(k8s_ns, uid))  # exists before the watch: from the list
            runtime.set_phase_handler(on_phase)
            wait_for(lambda: phases() == [("atcii-train-1", "Pending", None)], what="Pending from the list")

            k8s.kubelet(k8s_ns, "atcii-train-1", "Running")
            k8s.kubelet(k8s_ns, "atcii-train-1", "Running")  # no change of phase: not reported again
            k8s.kubelet(k8s_ns, "atcii-train-1", "Succeeded", 0)
            wait_for(lambda: len(phases()) == 3, what="Running and Succeeded")
            assert phases()[1:] == [("atcii-train-1", "Running", None), ("atcii-train-1", "Succeeded", 0)]
            assert seen[-1].stage == Stage.TRAIN and seen[-1].round == 1 and seen[-1].job_name == "atcii"

            runtime.ensure_worker(real_worker(k8s_ns, uid, Stage.EVAL))
            wait_for(lambda: ("atcii-eval-1", "Pending", None) in phases(), what="the eval pod")
            # The runtime's API server goes away; the Pod fails meanwhile; etcd is compacted. The
            # restarted server cannot serve the old resourceVersion (410 Gone): the runtime relists.
            server.stop()
            k8s.kubelet(k8s_ns, "atcii-eval-1", "Failed", 2)
            k8s.compact()
            server.start()
            wait_for(
                lambda: ("atcii-eval-1", "Failed", 2) in phases(), timeout=60, what="Failed after the 410"
            )
            assert phases().count(("atcii-train-1", "Succeeded", 0)) == 1  # the relist did not repeat it
        finally:
            runtime.close()
            runtime._core.api_client.close()
