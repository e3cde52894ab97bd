"""Shared fixtures: real brokers for every test that needs one, and a real Kubernetes control
plane (``k8s``) for the Kubernetes-mode tests.

``broker`` is parametrised over every broker this machine can run: Debian's mosquitto
binary (or testcontainers' eclipse-mosquitto where Docker works), and the embedded amqtt
broker always. With ``LIFELONG_REQUIRE_MOSQUITTO=1`` (set by CI) a missing mosquitto fails
the run instead of quietly testing one broker only.

``k8s`` is etcd, kube-apiserver and kube-controller-manager (``harness/k8s_cluster.py``), started
once per pytest process (so once per xdist worker that runs such a test, each its own: nothing
is shared between processes, so no worker stops a server another still uses, and each worker's
reaper stops its own; a start takes about 6 s). Without the binaries (no Go toolchain, or not
built yet: ``make test`` builds them first) the tests that use it skip saying why; with
``LIFELONG_REQUIRE_K8S=1`` (set by CI) they fail instead.
"""

from __future__ import annotations

import os
import uuid
from collections.abc import Iterator
from pathlib import Path

import pytest
from harness import reaper
from harness.brokers import Broker, Users, available_kinds, make_broker
from harness.k8s_cluster import Cluster, Unavailable, binaries

ALL_KINDS = ("mosquitto", "amqtt")


@pytest.fixture(scope="session", autouse=True)
def _no_process_outlives_the_session() -> Iterator[None]:
    """Kill what a failed set-up left running (``harness/reaper.py``)."""
    yield
    reaper.reap()


@pytest.fixture(scope="session")
def k8s(tmp_path_factory: pytest.TempPathFactory) -> Iterator[Cluster]:
    """A running Kubernetes control plane with the project's CRDs Established (one per process)."""
    try:
        bin_dir = binaries()
    except Unavailable as exc:
        if os.environ.get("LIFELONG_REQUIRE_K8S") == "1":
            pytest.fail(f"LIFELONG_REQUIRE_K8S=1 but {exc}")
        pytest.skip(f"no Kubernetes control plane: {exc}")
    cluster = Cluster(bin_dir, tmp_path_factory.mktemp("k8s"))
    try:
        cluster.start()
        yield cluster
    finally:
        cluster.stop()


@pytest.fixture
def k8s_ns(k8s: Cluster) -> Iterator[str]:
    """A fresh namespace on the ``k8s`` cluster; it and what is in it are deleted after the test."""
    name = k8s.namespace()
    try:
        yield name
    finally:
        k8s.delete_namespace(name)


def _broker_params() -> list[object]:
    have = available_kinds()
    params: list[object] = []
    mosquitto_kind = (
        "mosquitto"
        if "mosquitto" in have
        else ("mosquitto-container" if "mosquitto-container" in have else None)
    )
    if mosquitto_kind is not None:
        params.append(pytest.param(mosquitto_kind, id="mosquitto"))
    else:
        params.append(pytest.param("mosquitto-missing", id="mosquitto"))
    params.append(pytest.param("amqtt", id="amqtt"))
    return params


def _require(kind: str) -> str:
    if kind == "mosquitto-missing":
        if os.environ.get("LIFELONG_REQUIRE_MOSQUITTO") == "1":
            pytest.fail(
                "LIFELONG_REQUIRE_MOSQUITTO=1 but neither the mosquitto binary nor Docker is available"
            )
        pytest.skip("mosquitto is not installed and Docker does not work")
    return kind


@pytest.fixture(params=_broker_params())
def broker_kind(request: pytest.FixtureRequest) -> str:
    """The name of one available broker kind (parametrised)."""
    return _require(str(request.param))


@pytest.fixture
def broker(broker_kind: str, tmp_path: Path) -> Iterator[Broker]:
    """A running anonymous broker on its own port; stopped after the test."""
    b = make_broker(broker_kind, tmp_path)
    b.start()
    try:
        yield b
    finally:
        b.stop()


NODE_USERS = {"gm": "gm-secret", "node-a": "a-secret", "node-b": "b-secret"}


@pytest.fixture
def acl_broker(broker_kind: str, tmp_path: Path) -> Iterator[Broker]:
    """A broker with per-node passwords and the shipped topic ACL (users in ``NODE_USERS``)."""
    if broker_kind == "mosquitto-container":
        pytest.skip("the container broker runs without ACLs")
    b = make_broker(broker_kind, tmp_path, acl=True, users=Users(dict(NODE_USERS)))
    b.start()
    try:
        yield b
    finally:
        b.stop()


@pytest.fixture
def prefix() -> str:
    """A unique topic prefix, so tests sharing a broker never see each other's messages."""
    return f"t{uuid.uuid4().hex[:10]}/v1"
