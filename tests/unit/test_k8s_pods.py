"""The Pods worker runtime against a FAKE Kubernetes API server (tests/harness/fake_k8s.py).

The fake is not Kubernetes: no kubelet runs the Pods. Tests play the kubelet by writing
a Pod's status into the fake (``fake.put``) and check the phases the runtime reports.
"""

from __future__ import annotations

import threading
from collections.abc import Iterator
from typing import Any

import pytest
from harness.fake_k8s import FakeKubernetesApiServer
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


@pytest.fixture
def fake() -> Iterator[FakeKubernetesApiServer]:
    with FakeKubernetesApiServer() as server:
        yield server


@pytest.fixture
def runtime(fake: FakeKubernetesApiServer) -> Iterator[KubernetesPodsRuntime]:
    api = fake.api_client()
    rt = KubernetesPodsRuntime(
        client.CoreV1Api(api),
        settings=PodsRuntimeSettings(watch_timeout=2, request_timeout=5.0, error_backoff_max=0.2),
    )
    try:
        yield rt
    finally:
        rt.close()
        api.close()


def kubelet(fake: FakeKubernetesApiServer, name: str, phase: str, exit_code: int | None = None) -> None:
    """Play the kubelet: write the Pod's status."""
    pod = fake.get(PODS, "default", name)
    assert pod is not None
    status: dict[str, Any] = {"phase": phase}
    if exit_code is not None:
        status["containerStatuses"] = [
            {
                "name": "train",
                "ready": False,
                "restartCount": 0,
                "image": "i",
                "imageID": "",
                "state": {"terminated": {"exitCode": exit_code}},
            }
        ]
    pod["status"] = status
    fake.put(PODS, pod)


def test_k8s_pods_created_from_templates_fake_api(
    runtime: KubernetesPodsRuntime, fake: FakeKubernetesApiServer
) -> None:
    spec = worker()
    runtime.ensure_worker(spec)
    runtime.ensure_worker(spec)  # idempotent: 409 AlreadyExists is fine
    pods = fake.list(PODS)
    assert [p["metadata"]["name"] for p in pods] == ["atcii-train-1"]
    created = pods[0]
    expected = build_pod(spec)
    assert created["metadata"]["labels"] == expected["metadata"]["labels"]
    assert created["metadata"]["ownerReferences"] == expected["metadata"]["ownerReferences"]
    assert created["spec"] == expected["spec"]

    runtime.ensure_worker(worker(Stage.EVAL))
    fake.put(
        PODS,
        {
            "apiVersion": "v1",
            "kind": "Pod",
            "metadata": {"name": "unrelated", "labels": {"a": "b"}},
            "spec": {"containers": [{"name": "c", "image": "i"}]},
        },
    )
    runtime.delete_workers("default", "atcii")
    assert [p["metadata"]["name"] for p in fake.list(PODS)] == ["unrelated"]


def test_k8s_pod_phases_reported_fake_api(
    runtime: KubernetesPodsRuntime, fake: FakeKubernetesApiServer
) -> None:
    seen: list[WorkerPhase] = []
    lock = threading.Lock()

    def on_phase(p: WorkerPhase) -> None:
        with lock:
            seen.append(p)

    def phases() -> list[tuple[str, str, int | None]]:
        with lock:
            return [(p.worker, p.phase, p.exit_code) for p in seen]

    runtime.ensure_worker(worker())  # exists before the watch starts: reported from the list
    runtime.set_phase_handler(on_phase)
    wait_for(lambda: phases() == [("atcii-train-1", "Pending", None)], what="Pending from the list")

    kubelet(fake, "atcii-train-1", "Running")
    kubelet(fake, "atcii-train-1", "Running")  # no change of phase: not reported again
    kubelet(fake, "atcii-train-1", "Succeeded", 0)
    wait_for(lambda: len(phases()) == 3, what="Running and Succeeded")
    assert phases()[1:] == [("atcii-train-1", "Running", None), ("atcii-train-1", "Succeeded", 0)]
    assert seen[-1].stage == Stage.TRAIN and seen[-1].round == 1 and seen[-1].job_name == "atcii"

    runtime.ensure_worker(worker(Stage.EVAL))
    wait_for(lambda: ("atcii-eval-1", "Pending", None) in phases(), what="the eval pod")
    fake.compact()
    fake.expire_watches()  # the runtime relists and goes on
    kubelet(fake, "atcii-eval-1", "Failed", 2)
    wait_for(lambda: ("atcii-eval-1", "Failed", 2) in phases(), what="Failed after the 410")
    assert phases().count(("atcii-train-1", "Succeeded", 0)) == 1  # the relist did not repeat it
