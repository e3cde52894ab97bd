"""A real Kubernetes control plane for the Kubernetes-mode tests: etcd, kube-apiserver and
kube-controller-manager (only its garbage collector and the ServiceAccount, namespace and
PVC-protection controllers), on free loopback ports, as controller-runtime's envtest runs them.
No kubelet, no scheduler, no Deployment controller: nothing runs; tests play the kubelet.

Who calls it: the ``k8s`` fixture of ``tests/conftest.py`` (one cluster per pytest process,
so per xdist worker) and the tests under ``tests/unit/test_k8s_*.py``. The binaries come from
``tests/k8s/build.sh`` (built from the Go module ``tests/k8s`` into a cache outside the
repository, once per go.sum), or from ``LIFELONG_K8S_BIN_DIR``.

:func:`binaries` finds them or says why not (no Go toolchain; a failed build); :class:`Cluster`
makes a CA, a serving certificate for 127.0.0.1, an admin client certificate (group
``system:masters``), a token file, a ServiceAccount signing key, starts etcd and the API server
with RBAC authorization, writes the admin kubeconfig, installs ``deploy/crds/`` and waits for
the CRDs to be Established, then starts the controller manager. Every process is registered with
``harness.reaper`` and stopped by pid in :meth:`Cluster.stop`.

What a test gets: :meth:`Cluster.admin` (a ``kubernetes`` ApiClient as cluster admin, what a
user with kubectl is); :meth:`Cluster.namespace` (a fresh namespace);
:meth:`Cluster.gm_kubeconfig` (the RBAC of ``deploy/k8s/gm-rbac.yaml`` applied for a
namespace, and a kubeconfig holding a TokenRequest token of its ServiceAccount: the GM runs
with exactly the shipped permissions); :meth:`Cluster.second_apiserver` (another API server on
the same etcd, which a test may stop and start, e.g. to have a client miss changes and come
back after :meth:`Cluster.compact` to a 410 Gone); :meth:`Cluster.compact` (etcd compaction
through etcd's HTTP gateway).
"""

from __future__ import annotations

import base64
import contextlib
import copy
import json
import os
import shutil
import signal
import ssl
import subprocess
import time
import urllib.error
import urllib.request
import uuid
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import yaml

from harness import reaper
from harness.waiting import free_port, wait_for

REPO = Path(__file__).resolve().parents[2]
GO_MODULE = REPO / "tests" / "k8s"
CRDS = REPO / "deploy" / "crds"
GM_RBAC = REPO / "deploy" / "k8s" / "gm-rbac.yaml"
BINARIES = ("etcd", "kube-apiserver", "kube-controller-manager")
#: The namespace deploy/k8s installs the GM in; gm-rbac.yaml names it.
SHIPPED_NAMESPACE = "lifelong"
#: A user of the token file with no role at all (every request of it is Forbidden).
NOBODY_TOKEN = "nobody-" + uuid.uuid4().hex


class Unavailable(Exception):
    """The control plane cannot run here; the message says why (one line)."""


def binaries() -> Path:
    """The folder holding etcd, kube-apiserver and kube-controller-manager.

    ``LIFELONG_K8S_BIN_DIR`` if set (``make test`` and .ci/run build first and set it), else
    the cache of ``tests/k8s/build.sh`` when it has them. Raises :class:`Unavailable` when there
    is no Go toolchain or nothing is built yet.
    """
    given = os.environ.get("LIFELONG_K8S_BIN_DIR")
    if given:
        folder = Path(given)
        missing = [b for b in BINARIES if not (folder / b).is_file()]
        if missing:
            raise Unavailable(f"LIFELONG_K8S_BIN_DIR={given} lacks {', '.join(missing)}")
        return folder
    if shutil.which("go") is None:
        raise Unavailable("no Go toolchain on PATH to build kube-apiserver and etcd (tests/k8s/build.sh)")
    # Only a build already in the cache: a cold one (8-20 minutes) would outlast the test's
    # timeout; ``make test`` and .ci/run build before pytest starts.
    done = subprocess.run(
        ["bash", str(GO_MODULE / "build.sh"), "--cached"],
        capture_output=True,
        text=True,
        timeout=60,
        check=False,
    )
    if done.returncode == 4:
        raise Unavailable("kube-apiserver and etcd are not built yet: run tests/k8s/build.sh (or make test)")
    if done.returncode != 0:
        raise Unavailable(f"tests/k8s/build.sh failed: {done.stderr.strip().splitlines()[-1:]}")
    return Path(done.stdout.strip().splitlines()[-1])


def _openssl(*args: str, cwd: Path) -> None:
    subprocess.run(["openssl", *args], cwd=cwd, check=True, capture_output=True, timeout=60)


def _make_pki(pki: Path) -> None:
    """A CA; a serving certificate for 127.0.0.1/localhost; an admin client certificate; the
    ServiceAccount token signing key (all ECDSA P-256: quick to make)."""
    pki.mkdir(parents=True)
    ec = ("-newkey", "ec", "-pkeyopt", "ec_paramgen_curve:P-256", "-nodes")
    _openssl(
        "req", "-x509", *ec, "-days", "2", "-subj", "/CN=lifelong-test-ca",
        "-keyout", "ca.key", "-out", "ca.crt", cwd=pki,
    )  # fmt: skip
    for name, subject, ext in (
        (
            "serving",
            "/CN=kube-apiserver",
            "subjectAltName=IP:127.0.0.1,DNS:localhost\nextendedKeyUsage=serverAuth",
        ),
        ("admin", "/O=system:masters/CN=lifelong-test-admin", "extendedKeyUsage=clientAuth"),
    ):
        (pki / f"{name}.ext").write_text(ext + "\n")
        _openssl(
            "req", "-new", *ec, "-subj", subject,
            "-keyout", f"{name}.key", "-out", f"{name}.csr", cwd=pki,
        )  # fmt: skip
        _openssl(
            "x509", "-req", "-in", f"{name}.csr", "-CA", "ca.crt", "-CAkey", "ca.key", "-CAcreateserial",
            "-days", "2", "-extfile", f"{name}.ext", "-out", f"{name}.crt", cwd=pki,
        )  # fmt: skip
    _openssl("ecparam", "-name", "prime256v1", "-genkey", "-noout", "-out", "sa.key", cwd=pki)
    _openssl("ec", "-in", "sa.key", "-pubout", "-out", "sa.pub", cwd=pki)
    (pki / "tokens.csv").write_text(f"{NOBODY_TOKEN},lifelong-test-nobody,nobody-uid\n")


class _Proc:
    """One control-plane process with its log file; started in its own session."""

    def __init__(self, name: str, args: list[str], workdir: Path) -> None:
        self.name = name
        self.args = args
        self.log_path = workdir / f"{name}.log"
        self.proc: subprocess.Popen[bytes] | None = None

    def start(self) -> None:
        with self.log_path.open("ab") as log:
            self.proc = reaper.started(
                subprocess.Popen(
                    self.args, stdout=log, stderr=subprocess.STDOUT, stdin=subprocess.DEVNULL,
                    start_new_session=True,
                )
            )  # fmt: skip

    def alive(self) -> bool:
        return self.proc is not None and self.proc.poll() is None

    def check_alive(self) -> None:
        if self.proc is not None and self.proc.poll() is not None:
            raise AssertionError(f"{self.name} exited with {self.proc.returncode}:\n{self.log_tail()}")

    def stop(self, *, kill: bool = False) -> None:
        """SIGTERM (or SIGKILL) by pid, then wait; SIGKILL after 15 s."""
        proc, self.proc = self.proc, None
        if proc is None or proc.poll() is not None:
            return
        with contextlib.suppress(ProcessLookupError):
            proc.send_signal(signal.SIGKILL if kill else signal.SIGTERM)
        try:
            proc.wait(15)
        except subprocess.TimeoutExpired:
            proc.kill()
            proc.wait(10)

    def log_tail(self, lines: int = 40) -> str:
        try:
            return "\n".join(self.log_path.read_text(errors="replace").splitlines()[-lines:])
        except OSError:
            return ""


@dataclass
class ApiServer:
    """One kube-apiserver of the cluster (the main one, or one from ``second_apiserver``)."""

    cluster: Cluster
    port: int
    proc: _Proc

    @property
    def url(self) -> str:
        return f"https://127.0.0.1:{self.port}"

    def start(self, timeout: float = 60.0) -> None:
        self.proc.start()
        wait_for(self.ready, timeout=timeout, interval=0.1, what=f"{self.proc.name} /readyz")

    def stop(self, *, kill: bool = False) -> None:
        self.proc.stop(kill=kill)

    def ready(self) -> bool:
        self.proc.check_alive()
        try:
            with urllib.request.urlopen(
                f"{self.url}/readyz", context=self.cluster.admin_tls(), timeout=2
            ) as r:
                return bool(r.status == 200)
        except (urllib.error.URLError, OSError):
            return False


class Cluster:
    """etcd, kube-apiserver and kube-controller-manager in ``workdir`` (see the module docstring)."""

    def __init__(self, bin_dir: Path, workdir: Path) -> None:
        self.bin_dir = bin_dir
        self.workdir = workdir
        self.pki = workdir / "pki"
        self.etcd_port = free_port()
        self._etcd_peer_port = free_port()
        self.etcd: _Proc | None = None
        self.apiserver: ApiServer | None = None
        self.controller_manager: _Proc | None = None
        self._extra: list[ApiServer] = []
        self.kubeconfig = workdir / "admin.kubeconfig"
        self.started_in = 0.0  # seconds from nothing to CRDs Established and controllers up
        self._admin: Any = None

    # -- lifecycle -------------------------------------------------------------------------

    def start(self) -> Cluster:
        began = time.monotonic()
        _make_pki(self.pki)
        self.etcd = _Proc(
            "etcd",
            [
                str(self.bin_dir / "etcd"), "--name", "test", "--data-dir", str(self.workdir / "etcd-data"),
                "--listen-client-urls", f"http://127.0.0.1:{self.etcd_port}",
                "--advertise-client-urls", f"http://127.0.0.1:{self.etcd_port}",
                "--listen-peer-urls", f"http://127.0.0.1:{self._etcd_peer_port}",
                "--initial-advertise-peer-urls", f"http://127.0.0.1:{self._etcd_peer_port}",
                "--initial-cluster", f"test=http://127.0.0.1:{self._etcd_peer_port}",
                "--unsafe-no-fsync", "--log-level", "warn",
            ],
            self.workdir,
        )  # fmt: skip
        self.etcd.start()
        wait_for(self._etcd_healthy, timeout=30, interval=0.05, what="etcd /health")
        self.apiserver = self._new_apiserver("kube-apiserver")
        self.apiserver.start()
        self._write_kubeconfig(self.kubeconfig, self.apiserver.url, {
            "client-certificate": str(self.pki / "admin.crt"), "client-key": str(self.pki / "admin.key"),
        })  # fmt: skip
        self.install_crds()
        self.controller_manager = _Proc(
            "kube-controller-manager",
            [
                str(self.bin_dir / "kube-controller-manager"), "--kubeconfig", str(self.kubeconfig),
                "--controllers", "garbagecollector,serviceaccount,namespace,pvc-protection",
                "--leader-elect=false", "--secure-port=0", "--concurrent-gc-syncs=5",
            ],
            self.workdir,
        )  # fmt: skip
        self.controller_manager.start()
        # The ServiceAccount controller has run once the default namespace has its default SA.
        core = self.core()
        wait_for(
            lambda: self._exists(lambda: core.read_namespaced_service_account("default", "default")),
            timeout=60,
            interval=0.1,
            what="kube-controller-manager to create the default ServiceAccount",
        )
        self.started_in = time.monotonic() - began
        return self

    def stop(self) -> None:
        """Stop every process by pid: the controller manager, the API servers, then etcd."""
        if self._admin is not None:
            self._admin.close()
            self._admin = None
        for server in self._extra:
            server.stop()
        for proc in (self.controller_manager, self.apiserver.proc if self.apiserver else None, self.etcd):
            if proc is not None:
                proc.stop()

    def _new_apiserver(self, name: str, port: int | None = None) -> ApiServer:
        port = port or free_port()
        p = self.pki
        args = [
            str(self.bin_dir / "kube-apiserver"),
            "--etcd-servers", f"http://127.0.0.1:{self.etcd_port}",
            "--bind-address", "127.0.0.1", "--advertise-address", "127.0.0.1", "--secure-port", str(port),
            "--cert-dir", str(self.workdir / f"{name}-certs"),
            "--tls-cert-file", str(p / "serving.crt"), "--tls-private-key-file", str(p / "serving.key"),
            "--client-ca-file", str(p / "ca.crt"), "--token-auth-file", str(p / "tokens.csv"),
            "--authorization-mode", "RBAC",
            "--service-account-issuer", "https://kubernetes.default.svc",
            "--service-account-key-file", str(p / "sa.pub"),
            "--service-account-signing-key-file", str(p / "sa.key"),
            "--service-cluster-ip-range", "10.0.0.0/24", "--endpoint-reconciler-type", "none",
            "--allow-privileged=true", "--enable-priority-and-fairness=false", "--profiling=false",
        ]  # fmt: skip
        return ApiServer(self, port, _Proc(name, args, self.workdir))

    @contextlib.contextmanager
    def second_apiserver(self) -> Iterator[ApiServer]:
        """Another kube-apiserver on the same etcd (its own watch cache), started; stopped after."""
        server = self._new_apiserver(f"kube-apiserver-{len(self._extra) + 2}")
        self._extra.append(server)
        server.start()
        try:
            yield server
        finally:
            server.stop()
            self._extra.remove(server)

    # -- etcd ------------------------------------------------------------------------------

    def _etcd(self, path: str, body: dict[str, Any]) -> dict[str, Any]:
        request = urllib.request.Request(
            f"http://127.0.0.1:{self.etcd_port}{path}",
            data=json.dumps(body).encode(),
            headers={"Content-Type": "application/json"},
        )
        with urllib.request.urlopen(request, timeout=10) as answer:
            result: dict[str, Any] = json.loads(answer.read())
            return result

    def _etcd_healthy(self) -> bool:
        assert self.etcd is not None
        self.etcd.check_alive()
        try:
            with urllib.request.urlopen(f"http://127.0.0.1:{self.etcd_port}/health", timeout=2) as r:
                return bool(json.loads(r.read()).get("health") == "true")
        except (urllib.error.URLError, OSError, ValueError):
            return False

    def compact(self) -> int:
        """Compact etcd's history up to its current revision (what kube-apiserver does every 5
        minutes): a watch from an older resourceVersion that reaches etcd gets 410 Gone."""
        key = base64.b64encode(b"/registry/").decode()
        revision = int(self._etcd("/v3/kv/range", {"key": key, "limit": 1})["header"]["revision"])
        self._etcd("/v3/kv/compaction", {"revision": str(revision), "physical": True})
        return revision

    # -- clients ---------------------------------------------------------------------------

    def admin_tls(self) -> ssl.SSLContext:
        context = ssl.create_default_context(cafile=str(self.pki / "ca.crt"))
        context.load_cert_chain(str(self.pki / "admin.crt"), str(self.pki / "admin.key"))
        return context

    def configuration(self, url: str | None = None, *, token: str | None = None) -> Any:
        """A ``kubernetes.client.Configuration``: the admin's certificate, or a bearer ``token``."""
        from kubernetes import client

        assert self.apiserver is not None
        config = client.Configuration(host=url or self.apiserver.url)
        config.ssl_ca_cert = str(self.pki / "ca.crt")
        if token is None:
            config.cert_file = str(self.pki / "admin.crt")
            config.key_file = str(self.pki / "admin.key")
        else:
            config.api_key = {"authorization": f"Bearer {token}"}
        config.retries = False
        return config

    def api_client(self, url: str | None = None, *, token: str | None = None) -> Any:
        """A new ``kubernetes.client.ApiClient`` (the caller closes it)."""
        from kubernetes import client

        return client.ApiClient(self.configuration(url, token=token))

    def admin(self) -> Any:
        """The cluster admin's ApiClient (shared; closed by :meth:`stop`)."""
        if self._admin is None:
            self._admin = self.api_client()
        return self._admin

    def core(self) -> Any:
        from kubernetes import client

        return client.CoreV1Api(self.admin())

    def custom(self) -> Any:
        from kubernetes import client

        return client.CustomObjectsApi(self.admin())

    @staticmethod
    def _exists(read: Any) -> bool:
        from kubernetes.client.exceptions import ApiException

        try:
            read()
            return True
        except ApiException as exc:
            if exc.status == 404:
                return False
            raise

    def _write_kubeconfig(self, path: Path, server: str, user: dict[str, str]) -> None:
        config = {
            "apiVersion": "v1",
            "kind": "Config",
            "clusters": [
                {
                    "name": "test",
                    "cluster": {"server": server, "certificate-authority": str(self.pki / "ca.crt")},
                }
            ],
            "users": [{"name": "user", "user": user}],
            "contexts": [{"name": "test", "context": {"cluster": "test", "user": "user"}}],
            "current-context": "test",
        }
        path.write_text(yaml.safe_dump(config))

    # -- what tests set up -----------------------------------------------------------------

    def install_crds(self) -> None:
        """Create (or replace) every CRD of ``deploy/crds/`` and wait until each is Established."""
        from kubernetes import client
        from kubernetes.client.exceptions import ApiException

        api = client.ApiextensionsV1Api(self.admin())
        names = []
        for path in sorted(CRDS.glob("*.yaml")):
            crd = yaml.safe_load(path.read_text())
            names.append(crd["metadata"]["name"])
            try:
                api.create_custom_resource_definition(crd)
            except ApiException as exc:
                if exc.status != 409:
                    raise
                current = api.read_custom_resource_definition(crd["metadata"]["name"])
                crd["metadata"]["resourceVersion"] = current.metadata.resource_version
                api.replace_custom_resource_definition(crd["metadata"]["name"], crd)

        def established() -> bool:
            for name in names:
                conditions = api.read_custom_resource_definition(name).status.conditions or []
                if not any(c.type == "Established" and c.status == "True" for c in conditions):
                    return False
            return True

        wait_for(established, timeout=60, interval=0.1, what="the CRDs of deploy/crds to be Established")

    @contextlib.contextmanager
    def older_job_crd(self, namespace: str) -> Iterator[None]:
        """The LifelongLearningJob CRD without its limit of 63 characters on names, as a CRD
        older than the GM could be: the server then takes names the GM's models refuse (the
        longest job name they take is 226). The shipped CRD is back afterwards."""
        from kubernetes import client
        from kubernetes.client.exceptions import ApiException

        api = client.ApiextensionsV1Api(self.admin())
        name = "lifelonglearningjobs.sedna.io"
        shipped = yaml.safe_load((CRDS / "sedna.io_lifelonglearningjobs.yaml").read_text())
        older = copy.deepcopy(shipped)
        for version in older["spec"]["versions"]:
            version["schema"]["openAPIV3Schema"]["properties"]["metadata"]["properties"]["name"].pop(
                "maxLength"
            )

        def replace(crd: dict[str, Any]) -> None:
            current = api.read_custom_resource_definition(name)
            body = {
                **crd,
                "metadata": {**crd["metadata"], "resourceVersion": current.metadata.resource_version},
            }
            api.replace_custom_resource_definition(name, body)

        def takes_long_names() -> bool:
            probe = {
                "apiVersion": "sedna.io/v1alpha1",
                "kind": "LifelongLearningJob",
                "metadata": {"name": "p" * 100},
                "spec": {},
            }
            try:
                self.custom().create_namespaced_custom_object(
                    "sedna.io", "v1alpha1", namespace, "lifelonglearningjobs", probe, dry_run="All"
                )
            except ApiException as exc:
                return "63" not in str(exc.body)  # refused, but not for the name
            return True

        replace(older)
        try:
            wait_for(takes_long_names, timeout=30, interval=0.1, what="the older CRD to be served")
            yield
        finally:
            replace(shipped)
            wait_for(lambda: not takes_long_names(), timeout=30, interval=0.1, what="the shipped CRD back")

    def namespace(self, prefix: str = "t") -> str:
        """Create a fresh namespace and wait for its ``default`` ServiceAccount (Pods need it)."""
        name = f"{prefix}-{uuid.uuid4().hex[:10]}"
        core = self.core()
        core.create_namespace({"apiVersion": "v1", "kind": "Namespace", "metadata": {"name": name}})
        wait_for(
            lambda: self._exists(lambda: core.read_namespaced_service_account("default", name)),
            timeout=30,
            what=f"the default ServiceAccount of {name}",
        )
        return name

    def ensure_namespace(self, name: str) -> None:
        """Create the namespace ``name`` unless it exists."""
        from kubernetes.client.exceptions import ApiException

        try:
            self.core().create_namespace(
                {"apiVersion": "v1", "kind": "Namespace", "metadata": {"name": name}}
            )
        except ApiException as exc:
            if exc.status != 409:
                raise

    def delete_namespace(self, name: str, *, wait: bool = False) -> None:
        """Delete a test's namespace and, at once, what is in it that a GM of a later test could
        see (sedna.io objects; Pods, which without a kubelet would stay Terminating). With
        ``wait``, until the namespace controller has removed it (so the name can be used again)."""
        from kubernetes.client.exceptions import ApiException

        with contextlib.suppress(ApiException):
            for plural in ("lifelonglearningjobs", "datasets", "models"):
                self.custom().delete_collection_namespaced_custom_object("sedna.io", "v1alpha1", name, plural)
            self.core().delete_collection_namespaced_pod(name, grace_period_seconds=0)
            self.core().delete_namespace(name)
        if wait:
            core = self.core()
            wait_for(
                lambda: not self._exists(lambda: core.read_namespace(name)),
                timeout=60,
                interval=0.2,
                what=f"namespace {name} to be deleted",
            )

    def kubelet(self, namespace: str, name: str, phase: str, exit_code: int | None = None) -> dict[str, Any]:
        """Do what a kubelet does, since none runs: write a Pod's status (its phase and, for a
        finished container, its exit code) through the ``status`` subresource."""
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
        pod: dict[str, Any] = self.admin().sanitize_for_serialization(
            self.core().patch_namespaced_pod_status(name, namespace, {"status": status})
        )
        return pod

    def kubelet_finishes_deletion(self, namespace: str) -> list[str]:
        """What a kubelet does with a Pod marked for deletion (``deletionTimestamp``): stop it and
        delete it for good (grace period 0). Returns the names so deleted."""
        done = []
        for pod in self.core().list_namespaced_pod(namespace).items:
            if pod.metadata.deletion_timestamp is not None:
                self.core().delete_namespaced_pod(pod.metadata.name, namespace, grace_period_seconds=0)
                done.append(pod.metadata.name)
        return sorted(done)

    def ensure_node(self, name: str) -> None:
        """A Node object (no kubelet behind it), as a node that joined the cluster has."""
        from kubernetes.client.exceptions import ApiException

        try:
            self.core().create_node({"apiVersion": "v1", "kind": "Node", "metadata": {"name": name}})
        except ApiException as exc:
            if exc.status != 409:
                raise

    def gm_rbac(self, namespace: str) -> list[dict[str, Any]]:
        """``deploy/k8s/gm-rbac.yaml`` for a GM in ``namespace`` instead of ``lifelong``: the
        same rules, the ClusterRoleBinding named after the namespace (one per test)."""
        docs = [d for d in yaml.safe_load_all(GM_RBAC.read_text()) if d]
        out = []
        for original in docs:
            doc = copy.deepcopy(original)
            meta = doc["metadata"]
            if meta.get("namespace") == SHIPPED_NAMESPACE:
                meta["namespace"] = namespace
            if doc["kind"] == "ClusterRoleBinding":
                meta["name"] = f"{meta['name']}-{namespace}"
            for subject in doc.get("subjects", []):
                if subject.get("namespace") == SHIPPED_NAMESPACE:
                    subject["namespace"] = namespace
            out.append(doc)
        return out

    def gm_kubeconfig(self, namespace: str, path: Path, *, server: str | None = None) -> Path:
        """Apply the GM's RBAC for ``namespace`` and write a kubeconfig at ``path`` that
        authenticates as its ServiceAccount with a token from the TokenRequest API."""
        from kubernetes import utils
        from kubernetes.client.exceptions import ApiException

        service_account = ""
        for doc in self.gm_rbac(namespace):
            if doc["kind"] == "ServiceAccount":
                service_account = doc["metadata"]["name"]
            try:
                utils.create_from_dict(self.admin(), doc)
            except utils.FailToCreateError as exc:
                if not all(isinstance(e, ApiException) and e.status == 409 for e in exc.api_exceptions):
                    raise
        request = {
            "apiVersion": "authentication.k8s.io/v1",
            "kind": "TokenRequest",
            "spec": {"expirationSeconds": 7200},
        }
        token = self.core().create_namespaced_service_account_token(service_account, namespace, request)
        assert self.apiserver is not None
        self._write_kubeconfig(path, server or self.apiserver.url, {"token": token.status.token})
        return path

    def sa_token(self, kubeconfig: Path) -> str:
        """The bearer token a kubeconfig of :meth:`gm_kubeconfig` holds."""
        token: str = yaml.safe_load(kubeconfig.read_text())["users"][0]["user"]["token"]
        return token

    def logs(self) -> str:
        """The tails of the control plane's logs (for a failing wait's message)."""
        procs = [self.etcd, self.apiserver.proc if self.apiserver else None, self.controller_manager]
        return "\n".join(f"--- {p.name}\n{p.log_tail()}" for p in procs if p is not None)
