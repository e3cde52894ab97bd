"""Shared fixtures: real brokers for every test that needs one, and a real Kubernetes control
plane (``k8s``) for the Kubernetes-mode tests.

``broker`` is parametrised over every broker this machine can run: Debian's mosquitto
binary (or testcontainers' eclipse-mosquitto where Docker works), and the embedded amqtt
broker always. With ``LIFELONG_REQUIRE_MOSQUITTO=1`` (set by CI) a missing mosquitto fails
the run instead of quietly testing one broker only.

``broker`` also runs on ``rabbitmq``, a two-node RabbitMQ cluster (``harness/rabbitmq.py``), for
the tests marked ``clustered`` (the bus-level ones that only connect: a test that stops,
restarts or freezes its broker runs on mosquitto and amqtt only). The cluster starts once per
pytest process (about 15 s) and is shared; tests keep apart by their prefix, and every queue is
deleted after each test. Under xdist all its tests are one group (``--dist loadgroup``, which
``make test`` passes), so one worker runs them all and a run starts the cluster once.
The GM side connects to ``broker.url`` (node 1), the LC side to ``broker.edge_url`` (node 2;
the same broker on the others). Without ``rabbitmq-server`` the rabbitmq runs are left out and
one line at the end of the run says why; with ``LIFELONG_REQUIRE_RABBITMQ=1`` (set by CI) they
fail instead.

``k8s`` is etcd, kube-apiserver and kube-controller-manager (``harness/k8s_cluster.py``), started
once per pytest process (a start takes 6-16 s). Under xdist the tests that use it are one group,
like the RabbitMQ ones, so one worker runs them one after another on one control plane, exactly
as a single process would: nothing is shared between processes, so no worker stops a server
another still uses, no test sees another's cluster-wide changes (a CRD replaced, the namespace
``lifelong``), and each worker's reaper stops its own. The slow tests are handed out first.
Without the binaries (no Go toolchain, or not built yet: ``make test`` builds them first) the
tests that use it skip saying why; with ``LIFELONG_REQUIRE_K8S=1`` (set by CI) they fail instead.

``browser`` is a headless Chromium driven by selenium through Debian's chromedriver
(``harness/browser.py``), one per test module, for the web console's tests. Without chromium,
chromium-driver or selenium those tests skip saying why; with ``LIFELONG_REQUIRE_BROWSER=1`` (set
by CI) they fail instead.
"""

from __future__ import annotations

import functools
import os
import uuid
from collections.abc import Iterator
from pathlib import Path
from typing import NoReturn, Protocol, TypeVar

import pytest
from harness import reaper
from harness.brokers import Broker, Users, available_kinds, make_broker
from harness.browser import Browser, running_browser, shots_dir
from harness.browser import Unavailable as BrowserUnavailable
from harness.browser import binaries as browser_binaries
from harness.k8s_cluster import Cluster, Unavailable, binaries
from harness.rabbitmq import RabbitCluster
from harness.rabbitmq import Unavailable as RabbitUnavailable
from harness.rabbitmq import binaries as rabbit_binaries

ALL_KINDS = ("mosquitto", "amqtt")


class _Startable(Protocol):
    def start(self) -> None: ...
    def stop(self) -> None: ...


C = TypeVar("C", bound=_Startable)


@pytest.fixture(scope="session", autouse=True)
def _no_process_outlives_the_session() -> Iterator[None]:
    """Kill what a failed set-up left running (``harness/reaper.py``)."""
    yield
    reaper.reap()


def _missing(require: str, what: str, exc: Exception) -> NoReturn:
    """Fail when ``require`` is set to 1 (CI), else skip, saying why."""
    if os.environ.get(require) == "1":
        pytest.fail(f"{require}=1 but {exc}")
    pytest.skip(f"{what}: {exc}")


def _running(cluster: C) -> Iterator[C]:
    """Start ``cluster``, yield it, stop it (also when the start failed half-way)."""
    try:
        cluster.start()
        yield cluster
    finally:
        cluster.stop()


@pytest.fixture(scope="session")
def k8s(tmp_path_factory: pytest.TempPathFactory) -> Iterator[Cluster]:
    """A running Kubernetes control plane with the project's CRDs Established (one per process)."""
    try:
        bin_dir = binaries()
    except Unavailable as exc:
        _missing("LIFELONG_REQUIRE_K8S", "no Kubernetes control plane", exc)
    yield from _running(Cluster(bin_dir, tmp_path_factory.mktemp("k8s")))


@pytest.fixture(scope="session")
def browser_programs() -> tuple[str, str]:
    """Chromium and chromedriver (with selenium importable), or skip (fail under
    ``LIFELONG_REQUIRE_BROWSER=1``) saying what is missing; a test needing the browser asks for
    this before it starts anything else."""
    try:
        return browser_binaries()
    except BrowserUnavailable as exc:
        _missing("LIFELONG_REQUIRE_BROWSER", "no headless Chromium", exc)


@pytest.fixture(scope="module")
def browser(browser_programs: tuple[str, str], tmp_path_factory: pytest.TempPathFactory) -> Iterator[Browser]:
    """A headless Chromium (one per test module); its screenshots go to ``LIFELONG_CONSOLE_SHOTS``
    (default: a tmp dir of this module)."""
    workdir = tmp_path_factory.mktemp("browser")
    with running_browser(workdir, shots_dir(workdir / "shots")) as b:
        yield b


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


def pytest_configure(config: pytest.Config) -> None:
    config.addinivalue_line(
        "markers", "clustered: also run on the two-node RabbitMQ cluster (broker kind rabbitmq)"
    )


#: The session-scoped servers a test may need, by the fixture that starts them, and the xdist
#: group (``--dist loadgroup``, ``make test``) that keeps their tests on one worker, so that a
#: run starts each once instead of once per worker (docs/design.md, "Testing").
SHARED_SERVERS = {"k8s": "k8s", "rabbit_cluster": "rabbitmq"}


def _group(item: pytest.Item) -> str | None:
    fixtures = getattr(item, "fixturenames", ())
    callspec = getattr(item, "callspec", None)
    if callspec is not None and callspec.params.get("broker_kind") == "rabbitmq":
        return SHARED_SERVERS["rabbit_cluster"]
    for fixture, group in SHARED_SERVERS.items():
        if fixture in fixtures:
            return group
    return None


def _rank(item: pytest.Item) -> int:
    """The order tests are handed out under xdist: ``slow`` first, then ``e2e``, then the rest,
    so the longest ones do not start last and leave one worker running alone at the end."""
    if item.get_closest_marker("slow") is not None:
        return 0
    if item.get_closest_marker("e2e") is not None:
        return 1
    return 2


@pytest.hookimpl(wrapper=True)
def pytest_collection_modifyitems(config: pytest.Config, items: list[pytest.Item]) -> Iterator[None]:
    """Under xdist: the tests of one shared server in one group, the slow tests first (a stable
    sort, the same on every worker, so their collections agree). Before every other plugin's
    hook, xdist's included, which reads the groups; after them, check that the groups took: if
    they did not, each worker would start its own servers again, slowly and silently (pytest 9.2
    with pytest-xdist 3.8 did exactly that, pytest-dev/pytest-xdist#1386)."""
    worker = bool(os.environ.get("PYTEST_XDIST_WORKER"))
    if worker:
        for item in items:
            group = _group(item)
            if group is not None:
                item.add_marker(pytest.mark.xdist_group(group))
        items.sort(key=_rank)
    yield
    if worker and config.getvalue("loadgroup"):
        for item in items:
            if item.get_closest_marker("xdist_group") and "@" not in item.nodeid:
                item.fixturenames.insert(0, "_ungrouped")  # fails it before its servers start


@pytest.fixture
def _ungrouped() -> NoReturn:
    """Fails a test that ``--dist loadgroup`` should have grouped but did not (see above)."""
    pytest.fail(
        "--dist loadgroup did not group this test, so every worker would start its own servers: "
        "pytest-xdist does not work with this pytest (pytest-dev/pytest-xdist#1386)"
    )


def pytest_generate_tests(metafunc: pytest.Metafunc) -> None:
    """Parametrise ``broker_kind``: every available broker, and ``rabbitmq`` for ``clustered`` tests.
    A test that names its brokers itself (``@pytest.mark.parametrize("broker_kind", [...])``) keeps
    them."""
    if "broker_kind" not in metafunc.fixturenames:
        return
    for mark in metafunc.definition.iter_markers("parametrize"):
        names = mark.args[0] if mark.args else ""
        if "broker_kind" in ([n.strip() for n in names.split(",")] if isinstance(names, str) else names):
            return
    params = _broker_params()
    if metafunc.definition.get_closest_marker("clustered") is not None and (
        _rabbitmq_missing() is None or os.environ.get("LIFELONG_REQUIRE_RABBITMQ") == "1"
    ):
        params.append(pytest.param("rabbitmq", id="rabbitmq"))
    metafunc.parametrize("broker_kind", params, indirect=True)


@functools.cache
def _rabbitmq_missing() -> str | None:
    """Why this machine cannot run the RabbitMQ cluster, or None if it can."""
    try:
        rabbit_binaries()
    except RabbitUnavailable as exc:
        return str(exc)
    return None


def pytest_terminal_summary(terminalreporter: pytest.TerminalReporter) -> None:
    """Without rabbitmq-server the clustered tests run on the other brokers only: say so, once."""
    why = _rabbitmq_missing()
    if why is not None and os.environ.get("LIFELONG_REQUIRE_RABBITMQ") != "1":
        terminalreporter.write_line(
            f"skipped the clustered tests' rabbitmq runs (no RabbitMQ cluster): {why}"
        )


@pytest.fixture(scope="session")
def rabbit_cluster(tmp_path_factory: pytest.TempPathFactory) -> Iterator[RabbitCluster]:
    """Two clustered RabbitMQ nodes with the users of ``NODE_USERS`` (one per process)."""
    try:
        cluster = RabbitCluster(tmp_path_factory.mktemp("rabbitmq"), users=dict(NODE_USERS))
    except RabbitUnavailable as exc:
        _missing("LIFELONG_REQUIRE_RABBITMQ", "no RabbitMQ cluster", exc)
    yield from _running(cluster)


@pytest.fixture
def broker_kind(request: pytest.FixtureRequest) -> str:
    """The name of one available broker kind (parametrised by ``pytest_generate_tests``)."""
    return _require(str(request.param))


def _shared_cluster(request: pytest.FixtureRequest) -> Iterator[Broker]:
    cluster: RabbitCluster = request.getfixturevalue("rabbit_cluster")
    cluster.prefix = f"t{uuid.uuid4().hex[:10]}/v1"  # for the tests that use broker.prefix
    try:
        yield cluster  # type: ignore[misc]
    finally:
        cluster.purge()


@pytest.fixture
def broker(broker_kind: str, tmp_path: Path, request: pytest.FixtureRequest) -> Iterator[Broker]:
    """A running anonymous broker on its own port; stopped after the test."""
    if broker_kind == "rabbitmq":
        yield from _shared_cluster(request)
        return
    b = make_broker(broker_kind, tmp_path)
    b.start()
    try:
        yield b
    finally:
        b.stop()


NODE_USERS = {"gm": "gm-secret", "node-a": "a-secret", "node-b": "b-secret"}


@pytest.fixture
def acl_broker(broker_kind: str, tmp_path: Path, request: pytest.FixtureRequest) -> Iterator[Broker]:
    """A broker with per-node passwords and the shipped topic ACL (users in ``NODE_USERS``)."""
    if broker_kind == "rabbitmq":
        yield from _shared_cluster(request)  # its topic permissions are the shipped ACL's
        return
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
