"""The CRDs of deploy/crds/ in a REAL kube-apiserver with etcd (the ``k8s`` fixture,
tests/harness/k8s_cluster.py): the server's OpenAPI validation refuses bad jobs at apply time,
the shipped examples (Sedna's YAML, unchanged) are admitted, and the printer columns show a
job's stage and status.
"""

from __future__ import annotations

import json
import shutil
import subprocess
import urllib.request
from pathlib import Path
from typing import Any

import pytest
from harness import k8s_objects as objects
from harness.k8s_cluster import Cluster
from kubernetes.client.exceptions import ApiException

REPO = Path(__file__).resolve().parents[2]
GROUP, VERSION = "sedna.io", "v1alpha1"
EXAMPLES = sorted(
    [*REPO.glob("examples/*/*.yaml"), *REPO.glob("tests/fixtures/sedna_shape/*.yaml")],
    key=str,
)
#: The examples a user applies as they are (the demo's and examples/lifelong's are templates
#: with ``{{NODE}}`` placeholders that their runners fill in).
SEDNA_EXAMPLES = [
    p for p in EXAMPLES if "apiVersion: sedna.io/" in p.read_text() and "{{" not in p.read_text()
]


def job(name: str, *, train_prob: float = 0.8, check_period: int = 60, operator: str = ">") -> dict[str, Any]:
    condition = {"operator": operator, "threshold": 5, "metric": "num_of_samples"}
    trigger = {"checkPeriodSeconds": check_period, "condition": condition}
    return objects.job(name, train_prob=train_prob, trigger=trigger)


def test_k8s_openapi_validation_refuses_a_bad_job_at_apply_time_apiserver(k8s: Cluster, k8s_ns: str) -> None:
    api = k8s.custom()
    bad = job("bad", train_prob=1.5, check_period=0, operator="~")
    with pytest.raises(ApiException) as refused:
        api.create_namespaced_custom_object(GROUP, VERSION, k8s_ns, "lifelonglearningjobs", bad)
    assert refused.value.status == 422
    body = str(refused.value.body)
    for field in ("spec.dataset.trainProb", "spec.trainSpec.trigger.checkPeriodSeconds", "operator"):
        assert field in body, f"{field} not named in {body}"
    assert api.list_namespaced_custom_object(GROUP, VERSION, k8s_ns, "lifelonglearningjobs")["items"] == []

    # Each fault alone is refused too; the same job without them is admitted.
    for kwargs in ({"train_prob": 1.5}, {"check_period": 0}, {"operator": "~"}):
        with pytest.raises(ApiException) as one:
            api.create_namespaced_custom_object(
                GROUP, VERSION, k8s_ns, "lifelonglearningjobs", job("one", **kwargs)
            )
        assert one.value.status == 422, kwargs
    api.create_namespaced_custom_object(GROUP, VERSION, k8s_ns, "lifelonglearningjobs", job("good"))


def test_k8s_printer_columns_show_stage_and_status_apiserver(k8s: Cluster, k8s_ns: str) -> None:
    api = k8s.custom()
    api.create_namespaced_custom_object(GROUP, VERSION, k8s_ns, "lifelonglearningjobs", job("j1"))
    condition = {"type": "Waiting", "stage": "Train", "lastHeartbeatTime": "2026-01-01T00:00:00Z"}
    api.patch_namespaced_custom_object_status(
        GROUP, VERSION, k8s_ns, "lifelonglearningjobs", "j1", {"status": {"conditions": [condition]}}
    )
    assert k8s.apiserver is not None
    request = urllib.request.Request(
        f"{k8s.apiserver.url}/apis/{GROUP}/{VERSION}/namespaces/{k8s_ns}/lifelonglearningjobs",
        headers={"Accept": "application/json;as=Table;v=v1;g=meta.k8s.io"},
    )
    with urllib.request.urlopen(request, context=k8s.admin_tls(), timeout=10) as answer:
        table = json.loads(answer.read())
    columns = [c["name"] for c in table["columnDefinitions"]]
    assert columns[:3] == ["Name", "Stage", "Status"]
    [row] = table["rows"]
    assert row["cells"][:3] == ["j1", "Train", "Waiting"]


@pytest.mark.parametrize("path", SEDNA_EXAMPLES, ids=lambda p: str(p.relative_to(REPO)))
def test_k8s_shipped_examples_are_admitted_apiserver(k8s: Cluster, k8s_ns: str, path: Path) -> None:
    """``kubectl apply -f`` of each example (server-side dry run: validated, not stored)."""
    kubectl = shutil.which("kubectl")
    if kubectl is None:
        pytest.skip("kubectl is not installed (Debian: apt-get install kubernetes-client)")
    cmd = [
        kubectl,
        "--kubeconfig",
        str(k8s.kubeconfig),
        "-n",
        k8s_ns,
        "apply",
        "--dry-run=server",
        "-f",
        str(path),
    ]
    done = subprocess.run(cmd, capture_output=True, text=True, timeout=120, check=False)
    assert done.returncode == 0, done.stderr
    assert "(server dry run)" in done.stdout
