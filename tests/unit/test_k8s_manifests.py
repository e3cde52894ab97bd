"""deploy/k8s: the manifests parse, their copies are current, RBAC grants what the code calls,
and kustomize renders them; so does the overlay deploy/k8s-edge-tls (the broker exposed to
edge nodes outside the cluster over TLS).

Rendering uses the ``kubectl`` binary (Debian's ``kubernetes-client``) and is skipped, with
the reason, where it is missing. ``kubectl apply --server-side --dry-run=server -k deploy/k8s``
runs against a REAL kube-apiserver (the ``k8s`` fixture, tests/harness/k8s_cluster.py): the
server validates every object against its OpenAPI schema and admission, and stores nothing.
"""

from __future__ import annotations

import re
import shutil
import subprocess
from pathlib import Path
from typing import Any

import pytest
import yaml
from harness.k8s_cluster import SHIPPED_NAMESPACE, Cluster
from kubernetes import client

from lifelong.cloud.leader import LeaderElectionSettings

REPO = Path(__file__).resolve().parents[2]
K8S = REPO / "deploy" / "k8s"
CRDS = REPO / "deploy" / "crds"
MOSQUITTO = REPO / "deploy" / "mosquitto"
EDGE_TLS = REPO / "deploy" / "k8s-edge-tls"
CODE = {
    "stores/kubernetes.py": REPO / "cloud" / "stores" / "kubernetes.py",
    "runtimes/kubernetes_pods.py": REPO / "cloud" / "runtimes" / "kubernetes_pods.py",
    "leader.py": REPO / "cloud" / "leader.py",
}
SEDNA = ("lifelonglearningjobs", "datasets", "models")

#: Every Kubernetes client method the GM's Kubernetes code calls -> (API group, resources, verbs)
#: it needs. A method missing here fails the test: add it, and grant it in gm-rbac.yaml.
#: Methods given to ``Watch.stream`` (the list methods) also need ``watch``.
NEEDS: dict[str, tuple[str, tuple[str, ...], tuple[str, ...]]] = {
    "get_namespaced_custom_object": ("sedna.io", SEDNA, ("get",)),
    "list_namespaced_custom_object": ("sedna.io", SEDNA, ("list", "watch")),
    "list_cluster_custom_object": ("sedna.io", SEDNA, ("list", "watch")),
    "create_namespaced_custom_object": ("sedna.io", SEDNA, ("create",)),
    "replace_namespaced_custom_object": ("sedna.io", SEDNA, ("update",)),
    "replace_namespaced_custom_object_status": ("sedna.io", tuple(f"{p}/status" for p in SEDNA), ("update",)),
    "delete_namespaced_custom_object": ("sedna.io", SEDNA, ("delete",)),
    "list_node": ("", ("nodes",), ("list",)),
    "create_namespaced_pod": ("", ("pods",), ("create",)),
    "delete_collection_namespaced_pod": ("", ("pods",), ("deletecollection",)),
    "list_pod_for_all_namespaces": ("", ("pods",), ("list", "watch")),
    "list_namespaced_pod": ("", ("pods",), ("list", "watch")),
    "read_namespaced_lease": ("coordination.k8s.io", ("leases",), ("get",)),
    "create_namespaced_lease": ("coordination.k8s.io", ("leases",), ("create",)),
    "replace_namespaced_lease": ("coordination.k8s.io", ("leases",), ("update",)),
}


class _Yaml12Loader(yaml.SafeLoader):
    """PyYAML speaks YAML 1.1, where a bare ``=`` is the "value" tag; kustomize writes YAML 1.2
    and leaves ``=`` (an operator in the job CRD's enum) unquoted. Read it as the string."""


_Yaml12Loader.add_constructor("tag:yaml.org,2002:value", lambda loader, node: loader.construct_scalar(node))


def load_all() -> dict[str, list[dict[str, Any]]]:
    docs: dict[str, list[dict[str, Any]]] = {}
    for path in sorted(K8S.rglob("*.yaml")):  # the base only (the overlay is deploy/k8s-edge-tls)
        docs[str(path.relative_to(K8S))] = [d for d in yaml.safe_load_all(path.read_text()) if d is not None]
    return docs


def objects() -> list[dict[str, Any]]:
    return [d for name, ds in load_all().items() if name != "kustomization.yaml" for d in ds]


def find(kind: str, name: str) -> dict[str, Any]:
    for obj in objects():
        if obj["kind"] == kind and obj["metadata"]["name"] == name:
            return obj
    raise AssertionError(f"no {kind} {name} in deploy/k8s")


def test_k8s_every_manifest_parses() -> None:
    docs = load_all()
    assert "kustomization.yaml" in docs
    for name, ds in docs.items():
        assert ds, f"{name} is empty"
        for doc in ds:
            assert {"apiVersion", "kind"} <= set(doc), f"{name}: a document without apiVersion/kind"
            if doc["kind"] != "Kustomization":
                assert doc["metadata"]["name"], f"{name}: an object without a name"
    kustomization = docs["kustomization.yaml"][0]
    for resource in kustomization["resources"]:
        assert (K8S / resource).is_file(), f"kustomization.yaml lists {resource}, which does not exist"


def test_k8s_copies_match_their_sources() -> None:
    """deploy/k8s/crds and deploy/k8s/mosquitto are copies (kustomize reads nothing outside
    deploy/k8s). When this fails, run deploy/k8s/sync.sh."""
    sources = sorted(p.name for p in CRDS.glob("*.yaml"))
    assert sources, "deploy/crds has no CRDs (make crds)"
    assert sorted(p.name for p in (K8S / "crds").glob("*.yaml")) == sources, "run deploy/k8s/sync.sh"
    for name in sources:
        assert (K8S / "crds" / name).read_bytes() == (CRDS / name).read_bytes(), f"crds/{name}: run sync.sh"
    for name in ("mosquitto.conf", "acl"):
        assert (K8S / "mosquitto" / name).read_bytes() == (MOSQUITTO / name).read_bytes(), f"{name}: sync.sh"
    tls_conf = (MOSQUITTO / "mosquitto.conf").read_bytes() + (EDGE_TLS / "tls-listener.conf").read_bytes()
    assert (EDGE_TLS / "mosquitto.conf").read_bytes() == tls_conf, "k8s-edge-tls/mosquitto.conf: run sync.sh"
    resources = load_all()["kustomization.yaml"][0]["resources"]
    assert sorted(r.removeprefix("crds/") for r in resources if r.startswith("crds/")) == sources


def called_methods() -> dict[str, set[str]]:
    """Client methods called in each Kubernetes module (``self._custom.x``, ``self._core.x``, …)."""
    pattern = re.compile(r"\b(?:self|store)\._(?:custom|core|api)\.(\w+)")
    return {name: set(pattern.findall(path.read_text())) for name, path in CODE.items()}


def granted(
    rules: list[dict[str, Any]], group: str, resource: str, verb: str, name: str | None = None
) -> bool:
    for rule in rules:
        names = rule.get("resourceNames")
        if (
            group in rule.get("apiGroups", [])
            and resource in rule.get("resources", [])
            and verb in rule.get("verbs", [])
            and (not names or name in names)
        ):
            return True
    return False


def test_k8s_rbac_grants_what_the_code_calls() -> None:
    calls = called_methods()
    assert all(calls.values()), f"found no API calls in some module: {calls}"
    unknown = {m for ms in calls.values() for m in ms} - set(NEEDS)
    assert not unknown, f"add these client methods to NEEDS and to gm-rbac.yaml: {sorted(unknown)}"

    cluster_rules = find("ClusterRole", "lifelong-gm")["rules"]
    lease_rules = find("Role", "lifelong-gm-leader-election")["rules"]
    lease_name = LeaderElectionSettings().lease_name
    for module, methods in calls.items():
        for method in methods:
            group, resources, verbs = NEEDS[method]
            for resource in resources:
                for verb in verbs:
                    if resource == "leases":
                        name = None if verb == "create" else lease_name
                        ok = granted(lease_rules, group, resource, verb, name)
                    else:
                        ok = granted(cluster_rules, group, resource, verb)
                    assert ok, f"{module} calls {method}: {verb} {group or 'core'}/{resource} is not granted"

    # Least privilege: nothing beyond the API groups and resources the code uses, no wildcards.
    for rule in cluster_rules + lease_rules:
        assert "*" not in rule["verbs"] and "*" not in rule["resources"] and "*" not in rule["apiGroups"]
    assert {r for rule in cluster_rules for r in rule["resources"]} == {
        *SEDNA,
        *(f"{p}/status" for p in SEDNA),
        "pods",
        "nodes",
    }
    assert not any(granted(cluster_rules, "", "secrets", v) for v in ("get", "list"))
    assert not any(granted(cluster_rules, "coordination.k8s.io", "leases", v) for v in ("get", "update"))

    # The bindings give those roles to the GM's ServiceAccount.
    sa = find("ServiceAccount", "lifelong-gm")
    for kind, name in (("ClusterRoleBinding", "lifelong-gm"), ("RoleBinding", "lifelong-gm-leader-election")):
        binding = find(kind, name)
        assert binding["subjects"] == [
            {"kind": "ServiceAccount", "name": "lifelong-gm", "namespace": sa["metadata"]["namespace"]}
        ]
    role_binding = find("RoleBinding", "lifelong-gm-leader-election")
    assert role_binding["metadata"]["namespace"] == sa["metadata"]["namespace"]


def test_k8s_gm_deployment_runs_the_gm_with_leader_election() -> None:
    deployment = find("Deployment", "lifelong-gm")
    pod = deployment["spec"]["template"]["spec"]
    assert deployment["spec"]["replicas"] == 2
    assert pod["serviceAccountName"] == "lifelong-gm"
    container = pod["containers"][0]
    command = container["command"] + container["args"]
    assert command == ["lifelong", "gm", "--store", "kubernetes", "--broker", "mqtt://mosquitto:1883"]
    env = {e["name"]: e for e in container["env"]}
    assert env["POD_NAME"]["valueFrom"]["fieldRef"]["fieldPath"] == "metadata.name"  # leader identity
    assert env["POD_NAMESPACE"]["valueFrom"]["fieldRef"]["fieldPath"] == "metadata.namespace"
    assert all(
        "value" not in e or "password" not in e["value"].lower() or e["value"].startswith("/")
        for e in container["env"]
    )

    service = find("Service", "mosquitto")
    assert service["spec"]["ports"][0]["port"] == 1883
    broker = find("Deployment", "mosquitto")
    assert service["spec"]["selector"].items() <= broker["spec"]["template"]["metadata"]["labels"].items()
    projected = broker["spec"]["template"]["spec"]["volumes"][0]["projected"]["sources"]
    assert projected[0]["configMap"]["name"] == "mosquitto-config"
    assert {i["path"] for s in projected for i in next(iter(v for v in s.values()))["items"]} == {
        "mosquitto.conf",
        "acl",
        "passwd",
    }  # everything mosquitto.conf points at under /mosquitto/config/
    conf = (MOSQUITTO / "mosquitto.conf").read_text()
    for path in ("/mosquitto/config/passwd", "/mosquitto/config/acl"):
        assert path in conf


def kubectl() -> str:
    found = shutil.which("kubectl")
    if found is None:
        pytest.skip("kubectl is not installed (Debian: apt-get install kubernetes-client)")
    return found


def test_k8s_kustomize_renders() -> None:
    out = subprocess.run(
        [kubectl(), "kustomize", str(K8S)], capture_output=True, text=True, timeout=120, check=False
    )
    assert out.returncode == 0, out.stderr
    rendered = [d for d in yaml.load_all(out.stdout, Loader=_Yaml12Loader) if d]
    kinds = sorted(d["kind"] for d in rendered)
    assert kinds == sorted(
        ["CustomResourceDefinition"] * 3
        + ["Namespace", "ServiceAccount", "ClusterRole", "ClusterRoleBinding", "Role", "RoleBinding"]
        + ["Deployment", "Deployment", "Service", "ConfigMap"]
        + ["Deployment", "PersistentVolumeClaim", "Service"]  # the knowledge base (kb.yaml)
    )
    configmap = next(d for d in rendered if d["kind"] == "ConfigMap")
    assert configmap["data"]["mosquitto.conf"] == (MOSQUITTO / "mosquitto.conf").read_text()
    assert configmap["data"]["acl"] == (MOSQUITTO / "acl").read_text()
    broker = next(d for d in rendered if d["kind"] == "Deployment" and d["metadata"]["name"] == "mosquitto")
    volume = broker["spec"]["template"]["spec"]["volumes"][0]["projected"]["sources"][0]["configMap"]
    assert volume["name"] == configmap["metadata"]["name"]  # the generated name (with its hash)
    for doc in rendered:
        if doc["kind"] not in ("CustomResourceDefinition", "Namespace", "ClusterRole", "ClusterRoleBinding"):
            assert doc["metadata"]["namespace"] == "lifelong", doc["metadata"]["name"]
    gm = next(d for d in rendered if d["kind"] == "Deployment" and d["metadata"]["name"] == "lifelong-gm")
    assert gm["spec"]["template"]["spec"]["containers"][0]["image"] == "lifelong:0.1.0"


def test_k8s_kubectl_server_side_dry_run_apply_apiserver(k8s: Cluster, tmp_path: Path) -> None:
    """``kubectl apply --server-side --dry-run=server -k deploy/k8s`` as the cluster admin: a real
    API server admits every object (schemas, RBAC objects, the Deployments) and stores none."""
    kubectl_path = kubectl()
    # A server-side dry run creates no Namespace, so the namespaced objects need it to exist.
    k8s.ensure_namespace(SHIPPED_NAMESPACE)
    try:
        cmd = [kubectl_path, "--kubeconfig", str(k8s.kubeconfig), "apply", "--server-side"]
        cmd += ["--dry-run=server", "-k", str(K8S), "-o", "yaml"]
        out = subprocess.run(cmd, capture_output=True, text=True, timeout=120, check=False)
        assert out.returncode == 0, out.stderr
        rendered = yaml.load(out.stdout, Loader=_Yaml12Loader)
        assert len(rendered["items"]) == 16
        gm = next(
            i
            for i in rendered["items"]
            if i["kind"] == "Deployment" and i["metadata"]["name"] == "lifelong-gm"
        )
        assert gm["metadata"]["namespace"] == SHIPPED_NAMESPACE
        assert gm["metadata"].get("uid")  # the server's answer, with its defaults, not the input
        apps = client.AppsV1Api(k8s.admin())
        assert apps.list_namespaced_deployment(SHIPPED_NAMESPACE).items == []  # a dry run stores nothing
    finally:
        k8s.delete_namespace(SHIPPED_NAMESPACE, wait=True)


def test_k8s_edge_tls_overlay_exposes_only_the_tls_listener() -> None:
    """deploy/k8s-edge-tls: the base plus a LoadBalancer Service on 8883 only, mosquitto's TLS
    listener with the certificate from the Secret lifelong-mosquitto-tls, and the base's
    password and ACL still in force (the listener is appended to the same configuration)."""
    out = subprocess.run(
        [kubectl(), "kustomize", str(EDGE_TLS)], capture_output=True, text=True, timeout=120, check=False
    )
    assert out.returncode == 0, out.stderr
    rendered = [d for d in yaml.load_all(out.stdout, Loader=_Yaml12Loader) if d]
    base = subprocess.run(
        [kubectl(), "kustomize", str(K8S)], capture_output=True, text=True, timeout=120, check=True
    )
    base_kinds = sorted(d["kind"] for d in yaml.load_all(base.stdout, Loader=_Yaml12Loader) if d)
    assert sorted(d["kind"] for d in rendered) == sorted([*base_kinds, "Service"])

    services = {d["metadata"]["name"]: d for d in rendered if d["kind"] == "Service"}
    inside, outside = services["mosquitto"], services["mosquitto-edge"]
    assert inside["spec"].get("type", "ClusterIP") == "ClusterIP"
    assert outside["spec"]["type"] in ("LoadBalancer", "NodePort")
    assert [(p["port"], p["targetPort"]) for p in outside["spec"]["ports"]] == [(8883, "mqtts")]
    assert outside["metadata"]["namespace"] == "lifelong"

    broker = next(d for d in rendered if d["kind"] == "Deployment" and d["metadata"]["name"] == "mosquitto")
    pod = broker["spec"]["template"]["spec"]
    assert outside["spec"]["selector"].items() <= broker["spec"]["template"]["metadata"]["labels"].items()
    container = pod["containers"][0]
    assert {p["name"]: p["containerPort"] for p in container["ports"]} == {"mqtt": 1883, "mqtts": 8883}
    mounts = {m["name"]: m["mountPath"] for m in container["volumeMounts"]}
    assert mounts == {"config": "/mosquitto/config", "tls": "/mosquitto/tls"}
    volumes = {v["name"]: v for v in pod["volumes"]}
    assert volumes["tls"]["secret"]["secretName"] == "lifelong-mosquitto-tls"
    assert "projected" in volumes["config"]  # the base's config, password file and ACL

    configmap = next(d for d in rendered if d["kind"] == "ConfigMap")
    assert volumes["config"]["projected"]["sources"][0]["configMap"]["name"] == configmap["metadata"]["name"]
    conf = configmap["data"]["mosquitto.conf"]
    assert conf == (EDGE_TLS / "mosquitto.conf").read_text()
    assert configmap["data"]["acl"] == (MOSQUITTO / "acl").read_text()
    lines = [line for line in conf.splitlines() if line and not line.startswith("#")]
    tls = lines[lines.index("listener 8883") :]
    assert "certfile /mosquitto/tls/tls.crt" in tls and "keyfile /mosquitto/tls/tls.key" in tls
    for setting in ("per_listener_settings false", "allow_anonymous false"):
        assert setting in lines, f"{setting}: the TLS listener must be under the base's auth and ACL"
