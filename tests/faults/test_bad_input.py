"""Bad input, property-based (hypothesis): the decoder, the GM's upstream handler, the LC's
downstream handler and ``lifelong apply``'s loader get random and truncated payloads, wrong
types, huge strings, deep nesting and unknown versions. Nothing crashes, and every rejection
is counted with its reason (the GM's ``lifelong_gm_upstream_rejected{reason}``, never
``internal``; the LC's ``downstream{invalid}``), the service still works afterwards.

``LIFELONG_FAULT_EXAMPLES`` sets the number of examples per property (default 200).
"""

from __future__ import annotations

import json
import logging
import os
import re
import socket
import threading
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import msgpack
import pytest
from harness.faults import Tally
from hypothesis import HealthCheck, example, given, settings
from hypothesis import strategies as st

from lifelong.client.files import read_resources
from lifelong.cloud.api_server import GMApi
from lifelong.cloud.service import GMService, GMSettings
from lifelong.common.codec import Codec, decode, encode
from lifelong.common.envelope import CONTROL_KIND, Envelope, Op
from lifelong.common.errors import InvalidBody, LifelongError, ProtocolError
from lifelong.common.httpserver import HTTPLimits
from lifelong.common.messages import AppliedAck, Hello, LogRequest, SeqAck, Sync
from lifelong.common.topics import Topics
from lifelong.edge.db import Store
from lifelong.edge.outbox import Outbox
from lifelong.edge.session import Session
from lifelong.edge.worker_api import WorkerAPI
from lifelong.edge.worker_logs import WorkerLogs

pytestmark = pytest.mark.faults

EXAMPLES = int(os.environ.get("LIFELONG_FAULT_EXAMPLES", "200"))
PREFIX = "t/v1"
TOPICS = Topics(PREFIX)
NODE = "node-a"
FUZZ = settings(
    max_examples=EXAMPLES,
    deadline=None,
    suppress_health_check=[HealthCheck.function_scoped_fixture, HealthCheck.too_slow],
)

_RUNS: dict[str, int] = {}


def _ran(name: str) -> None:
    _RUNS[name] = _RUNS.get(name, 0) + 1


@pytest.fixture(scope="module", autouse=True)
def _record() -> Iterator[None]:
    """One results line per property: how many inputs it was given (all survived)."""
    yield
    for name, n in sorted(_RUNS.items()):
        t = Tally(f"bad input: {name}", "-", runs=n, tried=n)
        t.note = "hypothesis; no crash, every refusal counted with its reason"
        t.record()


# -- strategies ---------------------------------------------------------------------------------

scalars = st.one_of(
    st.none(),
    st.booleans(),
    st.integers(min_value=-(2**63), max_value=2**64 - 1),
    st.floats(allow_nan=True),
    st.text(max_size=40),
    st.binary(max_size=40),
)
values = st.recursive(
    scalars,
    lambda inner: st.lists(inner, max_size=4) | st.dictionaries(st.text(max_size=8), inner, max_size=4),
    max_leaves=20,
)
FIELDS = ("v", "id", "node", "kind", "ns", "name", "op", "rv", "seq", "ts", "body")


def _deep(depth: int) -> str:
    """JSON text of ``depth`` nested maps (built as text: json.dumps would recurse)."""
    return '{"a":' * depth + '"x"' + "}" * depth


def _valid(**over: Any) -> dict[str, Any]:
    env = Envelope.new(node=NODE, kind="LifelongLearningJob", ns="default", name="job1", op=Op.REPORT, seq=1)
    raw = env.model_dump(mode="json")
    raw["body"] = {"event": "workerInfo", "worker": "w", "info": 1}
    raw.update(over)
    return raw


@st.composite
def envelope_maps(draw: st.DrawFn) -> dict[str, Any]:
    """An almost valid envelope with some fields replaced by anything."""
    raw = _valid(
        op=draw(st.sampled_from([o.value for o in Op] + ["bogus"])),
        kind=draw(st.sampled_from(["LifelongLearningJob", "Dataset", "Worker", CONTROL_KIND, "Nope"])),
    )
    for key in draw(st.lists(st.sampled_from(FIELDS), max_size=4, unique=True)):
        raw[key] = draw(values)
    if draw(st.booleans()):
        raw["v"] = draw(st.sampled_from([0, 2, 99, "1", 1.0, None]))
    return raw


@st.composite
def payloads(draw: st.DrawFn) -> bytes:
    kind = draw(st.sampled_from(["random", "truncated", "mutated", "huge", "deep", "json"]))
    if kind == "random":
        return draw(st.binary(max_size=300))
    if kind == "truncated":
        full = msgpack.packb(_valid(), use_bin_type=True)
        return full[: draw(st.integers(0, len(full) - 1))]
    if kind == "huge":
        size = draw(st.sampled_from([1000, 100_000, 300_000]))
        return msgpack.packb(_valid(body={"event": "workerInfo", "worker": "w" * size}), use_bin_type=True)
    if kind == "deep":
        deep = _deep(draw(st.sampled_from([50, 900, 5000, 100_000])))
        return json.dumps(_valid(body="DEEP")).replace('"DEEP"', deep).encode()
    raw = draw(envelope_maps())
    if kind == "json":
        return json.dumps(raw, default=repr).encode()
    return msgpack.packb(raw, use_bin_type=True)


topics = st.one_of(
    st.sampled_from(
        [
            TOPICS.up(NODE, "LifelongLearningJob", "default", "job1"),
            TOPICS.up(NODE, "Dataset", "default", "ds1"),
            TOPICS.up(NODE, "Worker", "default", "w"),
            TOPICS.up_ctl(NODE),
            TOPICS.node_presence(NODE),
            TOPICS.up("node-b", "LifelongLearningJob", "default", "job1"),
            TOPICS.down(NODE, "LifelongLearningJob", "default", "job1"),
            f"{PREFIX}/node/{NODE}/up",
            f"{PREFIX}/garbage",
        ]
    ),
    st.text(max_size=60),
)


# -- the decoder ----------------------------------------------------------------------------------


@FUZZ
@given(payloads())
def test_decoder_raises_only_protocol_errors(payload: bytes) -> None:
    _ran("decoder")
    try:
        env = decode(payload)
    except ProtocolError as exc:
        assert getattr(exc, "reason", None)  # every refusal has a reason to count
        return
    assert env.v == 1 and env.node


# -- the GM's upstream handler ----------------------------------------------------------------------


class _Bus:
    def __init__(self) -> None:
        self.sent: list[tuple[str, bytes]] = []
        self.lock = threading.Lock()

    def publish(self, topic: str, payload: bytes, qos: int = 1, retain: bool = False) -> object:
        with self.lock:
            self.sent.append((topic, payload))
        return object()

    def close(self, *args: Any, **kwargs: Any) -> None:
        pass


@pytest.fixture(scope="module")
def gm(tmp_path_factory: pytest.TempPathFactory) -> Iterator[GMService]:
    tmp = tmp_path_factory.mktemp("gm")
    svc = GMService(
        GMSettings(
            broker="mqtt://127.0.0.1:1", store=f"sqlite:{tmp / 'store.db'}", api_port=-1, prefix=PREFIX
        ),
        bus=_Bus(),
    )
    svc.start_controllers()
    hello = Envelope.new(
        node=NODE,
        kind=CONTROL_KIND,
        op=Op.HELLO,
        body={"agent": "fuzz", "epoch": "e1", "boot": "b", "resources": [], "outbox": {}},
    )
    svc.intake.on_message(TOPICS.up_ctl(NODE), encode(hello), False)
    assert svc.executor.wait_idle(10)  # the hello is recorded on the node's work queue
    api = GMApi(svc.store, svc.state, svc.metrics)
    template = {"spec": {"nodeName": NODE, "containers": [{"name": "w", "image": "x", "command": ["true"]}]}}
    api.apply(
        {
            "apiVersion": "sedna.io/v1alpha1",
            "kind": "Dataset",
            "metadata": {"name": "ds1"},
            "spec": {"url": "/nonexistent/data.txt", "format": "txt", "nodeName": NODE},
        }
    )
    api.apply(
        {
            "apiVersion": "sedna.io/v1alpha1",
            "kind": "LifelongLearningJob",
            "metadata": {"name": "job1"},
            "spec": {
                "dataset": {"name": "ds1", "trainProb": 0.8},
                "trainSpec": {
                    "template": template,
                    "trigger": {
                        "checkPeriodSeconds": 1,
                        "condition": {"operator": ">", "threshold": 5.0, "metric": "num_of_samples"},
                    },
                },
                "evalSpec": {"template": template},
                "deploySpec": {"template": template},
                "outputDir": "/nonexistent/out",
            },
        }
    )
    yield svc
    svc.stop()


def _rejections(svc: GMService) -> dict[str, float]:
    out: dict[str, float] = {}
    for metric in svc.metrics.upstream_rejected.collect():
        for sample in metric.samples:
            if sample.name.endswith("_total"):
                out[sample.labels["reason"]] = sample.value
    return out


@st.composite
def coherent(draw: st.DrawFn) -> tuple[str, bytes]:
    """A well-formed report on its right topic, for the job and dataset the GM holds, with a
    body that is anything from right to nonsense: the controllers get to see it."""
    kind, name = draw(
        st.sampled_from([("LifelongLearningJob", "job1"), ("Dataset", "ds1"), ("Worker", "job1-train-1")])
    )
    body = draw(
        st.one_of(
            values,
            st.fixed_dictionaries(
                {
                    "event": st.one_of(st.sampled_from(["ready", "workerInfo", "skipped"]), values),
                    "stage": st.one_of(st.sampled_from(["Train", "Eval", "Deploy"]), values),
                    "round": st.one_of(st.integers(-2, 5), values),
                    "data": values,
                    "worker": values,
                    "info": values,
                }
            ),
            st.fixed_dictionaries(
                {
                    "job": st.one_of(st.just("job1"), values),
                    "stage": st.one_of(st.sampled_from(["Train", "Eval", "Deploy"]), values),
                    "round": st.one_of(st.integers(0, 3), values),
                    "phase": st.one_of(
                        st.sampled_from(["Pending", "Running", "Succeeded", "Failed"]), values
                    ),
                    "exitCode": values,
                    "output": values,
                }
            ),
            st.fixed_dictionaries({"numberOfSamples": values, "updateTime": values}),
        )
    )
    env = {
        "v": 1,
        "id": "x" * 8,
        "node": NODE,
        "kind": kind,
        "ns": "default",
        "name": name,
        "op": "report",
        "seq": draw(st.integers(1, 2**40)),
        "ts": 1.0,
        "body": body,
    }
    return TOPICS.up(NODE, kind, "default", name), msgpack.packb(env, use_bin_type=True)


@FUZZ
@given(message=coherent())
def test_gm_controllers_survive_well_formed_reports_with_bad_bodies(
    gm: GMService, message: tuple[str, bytes], caplog: pytest.LogCaptureFixture
) -> None:
    _ran("GM controllers, well-formed reports with bad bodies")
    with caplog.at_level(logging.WARNING, logger="lifelong.cloud"):
        gm.intake.on_message(message[0], message[1], False)
        assert gm.executor.wait_idle(10)
    assert _rejections(gm).get("internal", 0) == 0, caplog.text
    assert not [r for r in caplog.records if r.exc_info], caplog.text


@FUZZ
@given(topic=topics, payload=payloads())
def test_gm_upstream_survives_and_counts_every_rejection(
    gm: GMService, topic: str, payload: bytes, caplog: pytest.LogCaptureFixture
) -> None:
    _ran("GM upstream handler (topic, payload)")
    before = _rejections(gm)
    with caplog.at_level(logging.WARNING, logger="lifelong.cloud"):
        gm.intake.on_message(topic, payload, False)  # must not raise
        assert gm.executor.wait_idle(10)
    after = _rejections(gm)
    assert after.get("internal", 0) == 0, caplog.text
    assert not [r for r in caplog.records if r.exc_info], caplog.text  # no traceback anywhere
    new = sum(after.values()) - sum(before.values())
    if new > 1:  # only a hello or an ack counts more than one: each item its models refuse
        env = decode(payload)
        model = {Op.HELLO: Hello, Op.ACK: AppliedAck}[env.op]
        assert (
            len(model.parse_lenient(env.body)[1]) == new == after.get("invalid", 0) - before.get("invalid", 0)
        )
    assert new >= 0
    if new == 0:
        # Not rejected on the network thread: a hello, an ack, a presence or a report that was
        # queued (and then applied, or rejected with a reason by its controller).
        try:
            env = decode(payload)
        except ProtocolError:
            # only a topic the GM ignores, or a cleared retained presence, leaves no trace
            parsed = TOPICS.parse(topic)
            assert parsed.node is None or (parsed.is_presence and not payload), (topic, payload[:80])
            return
        assert env.node in (NODE, "node-b"), env


def test_gm_still_applies_reports_after_the_fuzz(gm: GMService) -> None:
    before = sum(s.value for m in gm.metrics.upstream_applied.collect() for s in m.samples)
    gm.intake.on_message(
        TOPICS.up_ctl(NODE),
        encode(
            Envelope.new(
                node=NODE,
                kind=CONTROL_KIND,
                op=Op.HELLO,
                body={"agent": "fuzz", "epoch": "e2", "boot": "b", "resources": [], "outbox": {}},
            )
        ),
        False,
    )
    assert gm.executor.wait_idle(10)
    assert gm.state.node(NODE) is not None
    after = sum(s.value for m in gm.metrics.upstream_applied.collect() for s in m.samples)
    assert after >= before


# -- the LC's downstream handler ----------------------------------------------------------------------


@pytest.fixture(scope="module")
def session(tmp_path_factory: pytest.TempPathFactory) -> Iterator[Session]:
    store = Store(tmp_path_factory.mktemp("lc") / "lc.db")
    outbox = Outbox(store)
    s = Session(
        store,
        outbox,
        node=NODE,
        topics=TOPICS,
        codec=Codec.MSGPACK,
        max_payload=256 * 1024,
        publish=lambda topic, payload, retain: None,
    )
    yield s
    store.close()


down_topics = st.one_of(
    st.sampled_from(
        [
            TOPICS.down(NODE, "LifelongLearningJob", "default", "job1"),
            TOPICS.down(NODE, "Dataset", "default", "ds1"),
            TOPICS.down(NODE, "Worker", "default", "w"),
            TOPICS.down_ctl(NODE),
            TOPICS.down("node-b", "LifelongLearningJob", "default", "job1"),
            f"{PREFIX}/node/{NODE}/down",
        ]
    ),
    st.text(max_size=60),
)


@st.composite
def down_payloads(draw: st.DrawFn) -> bytes:
    if draw(st.booleans()):
        return draw(payloads())
    raw = _valid(
        op=draw(st.sampled_from(["upsert", "delete", "ack", "sync", "hello"])),
        kind=draw(st.sampled_from(["LifelongLearningJob", "Dataset", CONTROL_KIND])),
        rv=draw(st.one_of(st.none(), st.text(max_size=5), st.integers().map(str))),
        body=draw(
            st.one_of(
                values,
                st.fixed_dictionaries({"object": values}),
                st.fixed_dictionaries({"epoch": values, "seqs": values}),
                st.fixed_dictionaries({"resources": values}),
            )
        ),
    )
    return msgpack.packb(raw, use_bin_type=True)


_LOG_REQUEST_REFUSED = msgpack.packb(
    {
        "v": 1,
        "id": "1ef61a08326146fab1817f77803633dc",
        "node": "node-a",
        "kind": "LifelongLearningJob",
        "ns": "default",
        "name": "job1",
        "op": "log",
        "rv": None,
        "seq": 1,
        "ts": 1796197388.9286854,
        "body": {"event": "workerInfo", "worker": "w", "info": 1},
    },
    use_bin_type=True,
)
"""A worker-log request whose body the model refuses, as ``make faults`` found it."""


@FUZZ
@given(topic=down_topics, payload=down_payloads())
@example(topic=f"{PREFIX}/node/node-a/down/_ctl", payload=_LOG_REQUEST_REFUSED)
def test_lc_downstream_survives_and_counts_every_refusal(
    session: Session, topic: str, payload: bytes, caplog: pytest.LogCaptureFixture
) -> None:
    _ran("LC downstream handler")
    before = dict(session.downstream)
    rejected = sum(session.rejected.values())
    with caplog.at_level(logging.WARNING, logger="lifelong.edge"):
        session.handle_message(topic, payload)
        session.run_pending()  # the session thread's own step; must not raise
    after = session.downstream
    counted = sum(after.values()) - sum(before.values())
    assert not [r for r in caplog.records if r.exc_info], caplog.text
    try:
        env = decode(payload, max_payload=session.max_payload)
        parsed = TOPICS.parse(topic)
    except ProtocolError:
        assert after["invalid"] == before["invalid"] + 1
        return
    if parsed.is_control and env.node == NODE == parsed.node and env.op in (Op.ACK, Op.SYNC):
        assert counted == 0  # acks and syncs are not counted as downstream resources
        model = SeqAck if env.op is Op.ACK else Sync
        try:
            refused = len(model.parse_lenient(env.body)[1])
        except InvalidBody:
            refused = 1
        assert sum(session.rejected.values()) - rejected == refused, env.body
    elif parsed.is_control and env.node == NODE == parsed.node and env.op is Op.LOG:
        # a worker-log request is not a downstream resource either: it is answered (a body
        # the model refuses gets an ``invalid`` answer and is counted among the rejections)
        assert counted == 0
        try:
            LogRequest.parse(env.body)
            refused = 0
        except InvalidBody:
            refused = 1
        assert sum(session.rejected.values()) - rejected == refused, env.body
    else:
        assert counted == 1, (topic, env)


# -- lifelong apply ---------------------------------------------------------------------------------

documents = st.one_of(
    st.text(max_size=300),
    values.map(lambda v: json.dumps(v, default=repr)),
    st.builds(
        lambda spec, name, kind: json.dumps(
            {"apiVersion": "sedna.io/v1alpha1", "kind": kind, "metadata": {"name": name}, "spec": spec},
            default=repr,
        ),
        values,
        st.one_of(st.text(max_size=300), st.just("ok")),
        st.sampled_from(["Dataset", "LifelongLearningJob", "Model", "Nope", ""]),
    ),
    st.sampled_from(
        [
            "[" * 10_000,
            "{" * 10_000,
            "a: " + "[" * 5000,
            "- " * 5000,
            "&a [*a, *a]",
            "!!python/object:os.system {}",
        ]
    ),
)


@FUZZ
@given(documents)
def test_apply_loader_refuses_with_a_validation_error_only(
    tmp_path_factory: pytest.TempPathFactory, text: str
) -> None:
    _ran("lifelong apply loader (read_resources)")
    path = tmp_path_factory.getbasetemp() / "fuzz-apply.yaml"  # one file, rewritten per example
    path.write_text(text, encoding="utf-8", errors="surrogatepass")
    try:
        out = read_resources([str(path)])
    except LifelongError as exc:
        assert str(exc)  # a message the CLI prints (exit 2)
        return
    assert all(isinstance(r, dict) and r.get("kind") for r in out)


def test_lifelong_apply_cli_exits_cleanly_on_garbage(tmp_path: Path) -> None:
    """The whole command, as a user runs it: exit status 2 and a message, no traceback."""
    import subprocess
    import sys

    for text in ("{" * 10_000, "kind: LifelongLearningJob\nspec: [", "\x00\xff", "- - - -"):
        res = subprocess.run(
            [sys.executable, "-m", "lifelong", "apply", "-f", "-", "--server", "http://127.0.0.1:1"],
            input=text.encode(),
            capture_output=True,
            timeout=60,
            check=False,
        )
        assert res.returncode in (1, 2), res
        assert b"Traceback" not in res.stderr, res.stderr.decode()


# -- integers out of range (issue: a seq of 2^63 or more ended in an OverflowError) -----------------

TOO_BIG = [2**63, 2**64 - 1, 2**64 + 5, 10**30]
INFO = {"event": "workerInfo", "worker": "job1-train-1", "info": {}}


def _json(raw: dict[str, Any]) -> bytes:
    return json.dumps(raw).encode()  # JSON: any integer fits on the wire, msgpack stops at 2^64-1


def _hello(**outbox: Any) -> dict[str, Any]:
    return _valid(
        kind=CONTROL_KIND,
        ns="",
        name="",
        op="hello",
        seq=None,
        body={"agent": "t", "epoch": "e1", "boot": "b", "resources": [], "outbox": outbox},
    )


GM_OUT_OF_RANGE = [
    *[pytest.param(_valid(seq=n, body=INFO), "decode", id=f"report-seq-{n}") for n in TOO_BIG],
    pytest.param(_valid(ts=float("inf"), body=INFO), "decode", id="report-ts-inf"),
    pytest.param(_valid(rv="9" * 300, body=INFO), "decode", id="report-rv-300-digits"),
    *[
        pytest.param(
            _valid(body={"event": "ready", "stage": "Train", "round": n, "data": {}}),
            "invalid",
            id=f"round-{n}",
        )
        for n in TOO_BIG
    ],
    pytest.param(
        _valid(kind="Dataset", name="ds1", body={"numberOfSamples": 2**70}), "invalid", id="dataset-samples"
    ),
    pytest.param(
        _valid(
            kind="Worker",
            name="job1-train-1",
            body={"job": "job1", "stage": "Train", "round": 0, "phase": "Failed", "exitCode": 2**63},
        ),
        "invalid",
        id="worker-exit-code",
    ),
    *[
        pytest.param(_hello(**{f: 2**63}), "invalid", id=f"hello-outbox-{f}")
        for f in ("depth", "lowSeq", "nextSeq")
    ],
]


@pytest.mark.parametrize(("raw", "reason"), GM_OUT_OF_RANGE)
def test_gm_refuses_and_counts_integers_out_of_range(
    gm: GMService, raw: dict[str, Any], reason: str, caplog: pytest.LogCaptureFixture
) -> None:
    topic = (
        TOPICS.up_ctl(NODE)
        if raw["kind"] == CONTROL_KIND
        else TOPICS.up(NODE, raw["kind"], "default", raw["name"])
    )
    before = _rejections(gm)
    with caplog.at_level(logging.WARNING, logger="lifelong.cloud"):
        gm.intake.on_message(topic, _json(raw), False)
        assert gm.executor.wait_idle(10)
    after = _rejections(gm)
    assert after.get(reason, 0) == before.get(reason, 0) + 1, (before, after, caplog.text)
    assert after.get("internal", 0) == 0, caplog.text
    assert not [r for r in caplog.records if r.exc_info], caplog.text
    # the node's bookkeeping still reads (no integer the database cannot hold got in)
    assert gm.state.node(NODE) is not None


LC_OUT_OF_RANGE = [
    *[
        pytest.param(
            _valid(
                kind=CONTROL_KIND, ns="", name="", op="ack", seq=None, body={"epoch": "e1", "seqs": [1, n]}
            ),
            id=f"ack-seq-{n}",
        )
        for n in TOO_BIG
    ],
    pytest.param(_valid(op="upsert", seq=None, rv="1", ts=float("inf")), id="upsert-ts-inf"),
    pytest.param(_valid(op="upsert", seq=None, rv="9" * 300), id="upsert-rv-300-digits"),
]


@pytest.mark.parametrize("raw", LC_OUT_OF_RANGE)
def test_lc_refuses_and_counts_integers_out_of_range(
    session: Session, raw: dict[str, Any], caplog: pytest.LogCaptureFixture
) -> None:
    raw = {**raw, "node": NODE}
    control = raw["kind"] == CONTROL_KIND
    topic = TOPICS.down_ctl(NODE) if control else TOPICS.down(NODE, raw["kind"], "default", raw["name"])
    before, rejected = dict(session.downstream), dict(session.rejected)
    with caplog.at_level(logging.WARNING, logger="lifelong.edge"):
        session.handle_message(topic, _json(raw))
        session.run_pending()
    if control:  # the ack's one bad item is refused and counted, the good one goes on
        assert session.rejected.get("invalid", 0) == rejected.get("invalid", 0) + 1, session.rejected
    else:  # the whole envelope is refused at decode
        assert session.downstream["invalid"] == before["invalid"] + 1, session.downstream
        assert session.rejected.get("decode", 0) == rejected.get("decode", 0) + 1, session.rejected
    assert session.downstream["applied"] == before["applied"]
    assert not [r for r in caplog.records if r.exc_info], caplog.text


# -- the LC's log requests on down/_ctl ----------------------------------------------------------------


@pytest.fixture(scope="module")
def log_session(tmp_path_factory: pytest.TempPathFactory) -> Iterator[tuple[Session, list[bytes], Path]]:
    """A session answering log requests from real worker log files; a secret file lies next to
    the workers' folder, so a request that escapes it would show."""
    tmp = tmp_path_factory.mktemp("lc-logs")
    workers = tmp / "workers"
    logs = WorkerLogs(workers, node=NODE)
    path = logs.path("default", "w")
    path.parent.mkdir(parents=True)
    path.write_text("line one\nline two\n")
    (tmp / "secret.log").write_text("SECRET\n")
    store = Store(tmp / "lc.db")
    sent: list[bytes] = []
    s = Session(
        store,
        Outbox(store),
        node=NODE,
        topics=TOPICS,
        codec=Codec.MSGPACK,
        max_payload=256 * 1024,
        publish=lambda topic, payload, retain: sent.append(payload),
        on_log_request=logs.answer,
    )
    yield s, sent, tmp
    store.close()


names = st.one_of(
    st.sampled_from(["w", "", "..", "../secret", "../../secret", "/etc/passwd", "w/../../secret", "x" * 300]),
    st.text(max_size=20),
    values,
)


@st.composite
def log_requests(draw: st.DrawFn) -> bytes:
    body = draw(
        st.one_of(
            values,
            st.fixed_dictionaries(
                {},
                optional={
                    "ns": names,
                    "worker": names,
                    "offset": st.one_of(st.integers(-(2**63), 2**64 - 1), values),
                    "tailLines": st.one_of(st.integers(-(2**63), 2**64 - 1), values),
                    "maxBytes": st.one_of(st.integers(-(2**63), 2**64 - 1), values),
                },
            ),
        )
    )
    raw = _valid(op="log", kind=CONTROL_KIND, ns="", name="", seq=None, body=body)
    return msgpack.packb(raw, use_bin_type=True)


@FUZZ
@given(payload=log_requests())
def test_lc_log_requests_are_answered_or_refused_never_escape(
    log_session: tuple[Session, list[bytes], Path], payload: bytes, caplog: pytest.LogCaptureFixture
) -> None:
    """Every ``log`` request gets exactly one answer (data, or an error with its reason), a
    refused one is counted, nothing raises or logs a traceback, and no answer reads outside the
    workers' folder."""
    _ran("LC log requests on down/_ctl")
    session, sent, _tmp = log_session
    sent.clear()
    answered = session.log_requests
    rejected = sum(session.rejected.values()) + session.downstream["invalid"]
    with caplog.at_level(logging.WARNING, logger="lifelong.edge"):
        session.handle_message(TOPICS.down_ctl(NODE), payload)
        session.run_pending()
    assert not [r for r in caplog.records if r.exc_info], caplog.text
    try:
        decode(payload, max_payload=session.max_payload)
    except ProtocolError:  # not an envelope at all (e.g. a body that is no map): counted, unanswered
        assert sum(session.rejected.values()) + session.downstream["invalid"] > rejected
        assert sent == []
        return
    assert session.log_requests == answered + 1
    assert len(sent) == 1
    answer = decode(sent[0]).body
    assert "SECRET" not in json.dumps(answer)
    if answer.get("reason") == "invalid":
        assert sum(session.rejected.values()) + session.downstream["invalid"] == rejected + 1
    elif answer.get("error") is None:
        assert answer["data"] in ("line one\nline two\n", "line two\n", "") or "line" in answer["data"]


# -- the LC's worker API, through real sockets ------------------------------------------------------------


@pytest.fixture(scope="module")
def worker_api(tmp_path_factory: pytest.TempPathFactory) -> Iterator[WorkerAPI]:
    store = Store(tmp_path_factory.mktemp("lc-api") / "lc.db")
    store.put_resource(
        "LifelongLearningJob", "default", "job1", "1", {"metadata": {"name": "job1"}, "spec": {}}
    )
    api = WorkerAPI(store, Outbox(store, max_depth=50), "127.0.0.1", 0, limits=HTTPLimits(max_body=4096))
    api.start()
    yield api
    api.stop()
    store.close()


PRINTABLE = st.characters(min_codepoint=33, max_codepoint=126)
header_values = st.one_of(
    st.sampled_from(["-1", "0", "5", "99999999999999999999", "1e3", " 12", "0x10", "", "abc", "4097"]),
    st.integers(-(2**64), 2**64).map(str),
    st.text(alphabet=st.characters(min_codepoint=32, max_codepoint=126), max_size=20),
)


@st.composite
def http_requests(draw: st.DrawFn) -> bytes:
    method = draw(st.sampled_from(["POST", "GET", "PUT", "DELETE", "HEAD", "OPTIONS", "BREW", "post", ""]))
    path = draw(
        st.one_of(
            st.sampled_from(
                [
                    "/sedna/workers/job1-train-1/info",
                    "/sedna/workers/job1-train-1/info/",
                    "/sedna/workers/" + "w" * 300 + "/info",
                    "/sedna/workers//info",
                    "/sedna/workers/../info",
                    "/",
                    "*",
                    "/sedna/workers/x%00/info",
                ]
            ),
            st.text(alphabet=st.characters(min_codepoint=33, max_codepoint=126), max_size=40).map(
                lambda t: "/" + t
            ),
        )
    )
    headers: list[tuple[str, str]] = [("Host", "127.0.0.1")]
    body = draw(
        st.one_of(
            st.binary(max_size=200),
            values.map(lambda v: json.dumps(v, default=repr).encode()),
            st.just(json.dumps({"ownerName": "job1", "x": 1}).encode()),
            st.sampled_from([b"x" * 5000, _deep(5000).encode()]),
        )
    )
    length = draw(st.one_of(st.just(str(len(body))), header_values, st.none()))
    if length is not None:
        headers.append(("Content-Length", length))
    if draw(st.booleans()):
        headers.append(
            ("Transfer-Encoding", draw(st.sampled_from(["chunked", "gzip", "chunked, chunked", "x"])))
        )
        if draw(st.booleans()):
            body = f"{len(body):x}\r\n".encode() + body + b"\r\n0\r\n\r\n"
    for _ in range(draw(st.integers(0, 2))):
        headers.append(
            (draw(st.sampled_from(["Content-Type", "Expect", "Connection", "X-A"])), draw(header_values))
        )
    head = f"{method} {path} HTTP/1.1\r\n" + "".join(f"{k}: {v}\r\n" for k, v in headers) + "\r\n"
    return head.encode("latin-1", "replace") + body


@FUZZ
@given(request=http_requests())
def test_lc_worker_api_survives_any_request(
    worker_api: WorkerAPI, request: bytes, caplog: pytest.LogCaptureFixture
) -> None:
    """Whatever arrives on the socket (method, path, Content-Length, Transfer-Encoding, body):
    one HTTP answer, never a 500 nor a traceback; a 200 only with the report in the outbox; every
    answer of the application counted by result."""
    _ran("LC worker API (raw HTTP requests)")
    before = worker_api.snapshot()
    depth = worker_api.outbox.depth()
    with (
        caplog.at_level(logging.WARNING),
        socket.create_connection(("127.0.0.1", worker_api.port), timeout=10) as sock,
    ):
        try:
            sock.sendall(request)
            sock.shutdown(socket.SHUT_WR)
        except OSError:
            pass  # refused and closed before the whole request was sent
        answer = b""
        try:
            while chunk := sock.recv(65536):
                answer += chunk
        except OSError:
            pass
    assert not [r for r in caplog.records if r.exc_info], caplog.text
    statuses = [int(s) for s in re.findall(rb"^HTTP/1\.[01] (\d{3})", answer, re.M)]
    assert 500 not in statuses, answer[:300]
    after = worker_api.snapshot()
    counted = sum(after.values()) - sum(before.values())
    stored = after["stored"] - before["stored"]
    assert worker_api.outbox.depth() - depth == stored or worker_api.outbox.depth() == 50
    app_answers = [s for s in statuses if s in (200, 202, 403, 404, 405, 503) or s in (400, 413)]
    assert counted <= len(app_answers), (counted, statuses)
    if 200 in statuses:
        assert stored >= 1
