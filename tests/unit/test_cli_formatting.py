"""Pure formatting of the operator commands: ``tail`` lines, ``describe``'s timeline, last
reports and nodes, ``lifelong nodes``. No broker, no GM."""

from __future__ import annotations

import json
import time
from typing import Any

import pytest

from lifelong.client.format import job_nodes, last_reports, nodes_table, timeline
from lifelong.client.jsonpath import parse_template
from lifelong.client.selectors import parse_selector
from lifelong.client.watch import changes, follow
from lifelong.common.codec import Codec, encode
from lifelong.common.envelope import Envelope, Op
from lifelong.common.errors import ValidationError
from lifelong.common.topics import Topics
from lifelong.tail import describe_message

TOPICS = Topics("lifelong/v1")


def report(codec: Codec) -> bytes:
    env = Envelope(
        id="m1",
        node="edge-1",
        kind="LifelongLearningJob",
        ns="default",
        name="job1",
        op=Op.REPORT,
        seq=12,
        ts=1767225600.25,
        body={"event": "ready", "stage": "Train", "round": 1},
    )
    return encode(env, codec)


def test_tail_line_decodes_msgpack_and_json_alike() -> None:
    topic = TOPICS.up("edge-1", "LifelongLearningJob", "default", "job1")
    lines = [describe_message(topic, report(c), False, TOPICS) for c in (Codec.MSGPACK, Codec.JSON)]
    assert lines[0] == lines[1]
    line = lines[0]
    assert line is not None
    assert "  edge-1  up  " in line and "report" in line and "LifelongLearningJob default/job1" in line
    assert "seq=12" in line and '{"event": "ready", "stage": "Train", "round": 1}' in line


def test_tail_filters_by_kind_case_insensitively() -> None:
    topic = TOPICS.up("edge-1", "LifelongLearningJob", "default", "job1")
    assert describe_message(topic, report(Codec.JSON), False, TOPICS, kind="dataset") is None
    assert describe_message(topic, report(Codec.JSON), False, TOPICS, kind="lifelonglearningjob")


def test_tail_json_output_is_one_object() -> None:
    topic = TOPICS.up("edge-1", "LifelongLearningJob", "default", "job1")
    line = describe_message(topic, report(Codec.MSGPACK), True, TOPICS, output="json")
    assert line is not None
    record = json.loads(line)
    assert record["topic"] == topic and record["retained"] is True
    assert record["envelope"]["seq"] == 12 and record["envelope"]["body"]["round"] == 1


def test_tail_shows_undecodable_payloads_with_the_reason() -> None:
    topic = TOPICS.up_ctl("edge-1")
    line = describe_message(topic, b"\xc1garbage", False, TOPICS)
    assert line is not None and "!! " + topic in line and "not a valid msgpack envelope" in line


def test_tail_cuts_long_bodies() -> None:
    topic = TOPICS.up("edge-1", "LifelongLearningJob", "default", "job1")
    line = describe_message(topic, report(Codec.JSON), False, TOPICS, width=10)
    assert line is not None and line.endswith('{"event...')


def test_timeline_numbers_rounds_and_shows_the_time_between_conditions() -> None:
    conds = [
        {
            "stage": "Train",
            "type": "Waiting",
            "lastTransitionTime": "2026-01-01T10:00:00Z",
            "reason": "JobCreated",
        },
        {"stage": "Train", "type": "Ready", "lastTransitionTime": "2026-01-01T10:00:07Z"},
        {
            "stage": "Train",
            "type": "Failed",
            "lastTransitionTime": "2026-01-01T10:01:07Z",
            "message": "x" * 100,
        },
    ]
    lines = timeline(conds)
    assert lines[0].split() == ["ROUND", "TIME", "+", "STAGE", "TYPE", "REASON", "MESSAGE"]
    assert lines[1].split()[:4] == ["-", "2026-01-01T10:00:00Z", "Train", "Waiting"]
    assert lines[2].split()[:5] == ["1", "2026-01-01T10:00:07Z", "+7s", "Train", "Ready"]
    assert "+60s" in lines[3] and lines[3].endswith("x" * 77 + "...")


def test_last_reports_show_models_and_metrics() -> None:
    info = {
        "job1-train-1": {"results": [{"url": "/m.pkl", "metrics": {"accuracy": 0.912345}}]},
        "job1-deploy-1": {"results": []},
        "job1-other-1": {"status": "odd"},
    }
    assert last_reports(info) == [
        "job1-deploy-1: posted no models",
        'job1-other-1: {"status": "odd"}',
        "job1-train-1: /m.pkl (accuracy=0.9123)",
    ]


def test_job_nodes_lists_each_node_with_its_roles() -> None:
    def template(node: str) -> dict[str, object]:
        return {"template": {"spec": {"nodeName": node}}}

    job = {"spec": {"trainSpec": template("a"), "evalSpec": template("b"), "deploySpec": template("a")}}
    dataset = {"spec": {"nodeName": "a"}}
    assert job_nodes(job, dataset) == [("a", "dataset,train,deploy"), ("b", "eval")]


def test_nodes_table() -> None:
    items = [
        {
            "node": "edge-1",
            "online": True,
            "agent": "lifelong-lc/0.1.0",
            "lastHello": time.time() - 5,
            "unacked": 0,
            "outbox": {"depth": 4, "lowSeq": 10, "nextSeq": 14},
        },
        {"node": "edge-2", "online": False, "agent": "", "lastHello": 0, "unacked": 3},
    ]
    lines = nodes_table(items).splitlines()
    assert lines[0].split() == ["NAME", "STATUS", "LAST", "HELLO", "AGENT", "UNACKED", "DOWN", "OUTBOX@HELLO"]
    assert lines[1].split()[:2] == ["edge-1", "Online"] and "ago" in lines[1]
    assert lines[1].split()[-1] == "4"
    assert lines[2].split() == ["edge-2", "Offline", "<never>", "<none>", "3", "<unknown>"]


# -- -l selectors, -o jsonpath, -w's change detection (lifelong.client.selectors/jsonpath/watch) --

LABELLED = [
    {"app": "atcii", "tier": "edge"},
    {"app": "atcii", "tier": "cloud"},
    {"app": "demo"},
    {},
]


@pytest.mark.parametrize(
    ("selector", "expected"),
    [
        ("app=atcii", [0, 1]),
        ("app==atcii", [0, 1]),
        ("app!=atcii", [2, 3]),
        ("tier", [0, 1]),
        ("!tier", [2, 3]),
        ("app=atcii,tier=edge", [0]),
        ("app=atcii, !tier", []),
        ("tier in (edge, cloud)", [0, 1]),
        ("tier notin (edge)", [1, 2, 3]),
        ("app in (demo,atcii),tier!=cloud", [0, 2]),
        ("example.com/app", []),
        ("", [0, 1, 2, 3]),
    ],
)
def test_label_selectors_match_as_kubectl_does(selector: str, expected: list[int]) -> None:
    parsed = parse_selector(selector)
    assert [i for i, labels in enumerate(LABELLED) if parsed.matches(labels)] == expected
    assert parsed.matches(None) == (3 in expected)


@pytest.mark.parametrize("selector", ["app=", "=x", "app=a b", "a in b", "a in (b", "a,,b", "a=b=c", "x y"])
def test_a_malformed_selector_is_one_error_naming_it(selector: str) -> None:
    if selector == "app=":  # an empty value is allowed, as in Kubernetes
        assert parse_selector(selector).matches({"app": ""})
        return
    with pytest.raises(ValidationError) as info:
        parse_selector(selector)
    assert "unable to parse requirement" in str(info.value) and repr(selector) in str(info.value)


JOBS = {
    "apiVersion": "v1",
    "kind": "List",
    "items": [
        {"metadata": {"name": "a", "labels": {"app": "x"}}, "spec": {"n": 3}, "status": {"ok": True}},
        {"metadata": {"name": "b"}, "spec": {"n": 5}},
    ],
}


@pytest.mark.parametrize(
    ("template", "expected"),
    [
        ("{.items[*].metadata.name}", "a b"),
        ('{range .items[*]}{.metadata.name}{"\\n"}{end}', "a\nb\n"),
        ("{range .items[*]}{@.metadata.name}:{.spec.n}{'\\t'}{end}", "a:3\tb:5\t"),
        ("{.items[0].metadata.name}", "a"),
        ("{.items[-1].metadata.name}", "b"),
        ("{.items[0:1].metadata.name}", "a"),
        ("{.items[0,1].spec.n}", "3 5"),
        ("{.items[0].metadata.labels['app']}", "x"),
        ("{.items[0].metadata['name','labels']}", 'a {"app":"x"}'),
        ("{..name}", "a b"),
        ("{.items[*].status.ok}", "true"),
        ("{.items[?(@.spec.n>4)].metadata.name}", "b"),
        ("{.items[?(@.metadata.name=='a')].spec.n}", "3"),
        ("{.items[?(@.metadata.labels)].metadata.name}", "a"),
        ("{$.kind}{range .items[*]}[{.metadata.name}@{$.kind}]{end}", "List[a@List][b@List]"),
        ("name: {.items[1].metadata.name}!", "name: b!"),
        ("{.items[*].missing}{.nothing[0]}", ""),
        ("{.items[0].spec}", '{"n":3}'),
        ("{range .items[*]}{range .metadata.labels.*}<{@}>{end}{end}", "<x>"),
    ],
)
def test_jsonpath_templates_print_what_kubectl_prints(template: str, expected: str) -> None:
    assert parse_template(template).render(JOBS) == expected


@pytest.mark.parametrize(
    ("template", "says"),
    [
        ("{.items[", "unclosed"),
        ("{range .items[*]}{.a}", "{range} without {end}"),
        ("{end}", "{end} without {range}"),
        ("{items}", "unrecognized action {items}"),
        ("{.items[x]}", "cannot read [x]"),
        ("{.items[::0]}", "step cannot be 0"),
        ('{"unterminated}', "unclosed"),
    ],
)
def test_a_bad_jsonpath_template_is_one_error_saying_what(template: str, says: str) -> None:
    with pytest.raises(ValidationError) as info:
        parse_template(template)
    assert says in str(info.value) and "error parsing jsonpath" in str(info.value)


def obj(name: str, rv: str) -> dict[str, Any]:
    return {"metadata": {"name": name, "resourceVersion": rv}}


def test_watch_reports_added_modified_and_deleted_objects_in_version_order() -> None:
    def key(o: dict[str, Any]) -> str:
        return str(o["metadata"]["name"])

    _, known = changes({}, [obj("a", "1"), obj("b", "2"), obj("c", "3")], key)
    events, known = changes(known, [obj("a", "9"), obj("b", "2"), obj("d", "7")], key)
    assert [(t, o["metadata"]["name"]) for t, o in events] == [
        ("ADDED", "d"),
        ("MODIFIED", "a"),
        ("DELETED", "c"),
    ]
    assert events[2][1] == obj("c", "3")  # a deleted object is shown as it was last seen
    assert changes(known, [obj("a", "9"), obj("b", "2"), obj("d", "7")], key)[0] == []
    # objects without a resourceVersion (the nodes) change when anything in them does
    nodes = [{"node": "n1", "online": True}]
    _, known = changes({}, nodes, lambda o: str(o["node"]))
    events, _ = changes(known, [{"node": "n1", "online": False}], lambda o: str(o["node"]))
    assert [t for t, _ in events] == ["MODIFIED"]


def test_follow_polls_until_stopped_and_emits_each_change_once() -> None:
    import threading

    polls = [[obj("a", "1")], [obj("a", "2")], [obj("a", "2")], []]
    stop = threading.Event()
    seen: list[tuple[str, str]] = []

    def fetch() -> list[dict[str, Any]]:
        current = polls.pop(0)
        if not polls:
            stop.set()
        return current

    follow(
        [obj("a", "1")],
        fetch,
        lambda o: o["metadata"]["name"],
        lambda t, o: seen.append((t, o["metadata"]["resourceVersion"])),
        interval=0.001,
        stop=stop,
    )
    assert seen == [("MODIFIED", "2"), ("DELETED", "2")]


def test_follow_ends_after_its_duration() -> None:
    polls: list[int] = []

    def fetch() -> list[dict[str, Any]]:
        polls.append(1)
        return []

    started = time.monotonic()
    follow([], fetch, lambda o: "", lambda t, o: None, interval=0.01, duration=0.2)
    assert 0.2 <= time.monotonic() - started < 5 and polls  # it polled, then ended on its own
