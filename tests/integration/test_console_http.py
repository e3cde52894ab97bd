"""The GM's web console (``cloud/console``) over HTTP against a real GM API server on a loopback
port: every page with the hooks of the console's contract and the values the API gives, login,
sessions, roles, the CSRF field and the Origin check, labelling through a form (seen through
the API's ``kb/samples``), the live event stream (a change when a job's condition changes and
when a node goes offline, its bound) and bad input answered with pages, never tracebacks.

The GM runs in process (``GMService`` with a SQLite store and the real ``LocalKnowledgeBase``,
its bus a no-op); the client is httpx over a real socket. HTML is read with the standard
library's ``html.parser``.
"""

from __future__ import annotations

import contextlib
import html
import re
import socket
import threading
import time
from collections.abc import Iterator
from html.parser import HTMLParser
from pathlib import Path
from typing import Any

import httpx
import pytest
from harness.gm_inproc import DATASET, api_gm
from harness.kb import make_kb, task_index
from harness.waiting import wait_for

from lifelong.cloud.kb.service import LocalKnowledgeBase
from lifelong.cloud.service import GMService
from lifelong.common.kb import UnseenSample

WRITER, READER = "w-console-0123456789", "r-console-0123456789"
NS, NAME = "default", "job1"
JOB_PATH = f"/api/v1/namespaces/{NS}/lifelonglearningjobs/{NAME}/kb"
TEMPLATE = {"spec": {"nodeName": "node-a", "containers": [{"name": "c", "image": "x"}]}}
JOB = {
    "apiVersion": "sedna.io/v1alpha1",
    "kind": "LifelongLearningJob",
    "metadata": {"name": NAME, "namespace": NS},
    "spec": {
        "dataset": {"name": "ds1", "trainProb": 0.8},
        "trainSpec": {
            "template": TEMPLATE,
            "trigger": {"condition": {"operator": ">", "threshold": 5.0, "metric": "num_of_samples"}},
        },
        "evalSpec": {"template": TEMPLATE},
        "deploySpec": {"template": TEMPLATE},
        "outputDir": "/out",
    },
}
INDEX = task_index(f"{NS}/{NAME}", 2)
DEADLINE = 8.0


# -- the GM -----------------------------------------------------------------------------------


class GM:
    def __init__(self, svc: GMService, kb: LocalKnowledgeBase | None) -> None:
        self.svc, self.kb = svc, kb
        assert svc.api is not None
        self.base = f"http://127.0.0.1:{svc.api_port}"

    def client(self, token: str | None = None, **kwargs: Any) -> httpx.Client:
        headers = {"Authorization": f"Bearer {token}"} if token else {}
        return httpx.Client(base_url=self.base, headers=headers, timeout=10, **kwargs)

    def api(self, path: str, **params: Any) -> Any:
        with self.client(WRITER) as c:
            answer = c.get(path, params=params)
            assert answer.status_code == 200, answer.text
            return answer.json()


def _start(tmp_path: Path, kb: LocalKnowledgeBase | None, tokens: bool = True) -> GMService:
    token_file = None
    if tokens:
        path = tmp_path / "tokens.csv"
        path.write_text(f"{WRITER},write,alice\n{READER},read,bob\n")
        token_file = str(path)
    svc = api_gm(tmp_path, kb, token_file)
    assert svc.api is not None
    svc.api.app.api.apply(DATASET)
    svc.api.app.api.apply(JOB)
    # The job controller writes the job's first condition (Train/Waiting, round 0) on its own
    # thread; tests that append conditions start after it, as they would after a real apply.
    wait_for(
        lambda: (svc.store.get("LifelongLearningJob", NS, NAME) or {}).get("status", {}).get("conditions"),
        what="the job controller's first condition",
        timeout=DEADLINE,
    )
    return svc


def _samples(n: int = 4) -> list[UnseenSample]:
    return [
        UnseenSample.parse(
            {"id": f"s{i}", "row": {"path": f"/x{i}.jpg"}, "predicted": i % 2, "confidence": 0.4}
        )
        for i in range(n)
    ]


@pytest.fixture
def gm(tmp_path: Path) -> Iterator[GM]:
    with make_kb(tmp_path / "kb") as kb:
        svc = _start(tmp_path, kb)
        kb.add_unseen(f"{NS}/{NAME}", "node-a", _samples())
        try:
            yield GM(svc, kb)
        finally:
            svc.stop()


# -- reading pages ------------------------------------------------------------------------------


class Element:
    def __init__(self, tag: str, attrs: dict[str, str | None]) -> None:
        self.tag, self.attrs, self.children, self.text = tag, attrs, [], ""

    def find_all(self, tag: str | None = None, **attrs: str | None) -> list[Element]:
        found = []
        for child in self.children:
            if (tag is None or child.tag == tag) and all(
                (k.replace("_", "-") in child.attrs)
                if v is None
                else child.attrs.get(k.replace("_", "-")) == v
                for k, v in attrs.items()
            ):
                found.append(child)
            found.extend(child.find_all(tag, **attrs))
        return found

    def one(self, tag: str | None = None, **attrs: str | None) -> Element:
        found = self.find_all(tag, **attrs)
        assert len(found) == 1, (tag, attrs, len(found))
        return found[0]

    def field(self, name: str) -> str:
        return self.one(data_field=name).all_text().strip()

    def all_text(self) -> str:
        return self.text + "".join(c.all_text() for c in self.children)


VOID = {"input", "meta", "link", "br", "img", "hr"}


class Page(HTMLParser):
    def __init__(self, text: str) -> None:
        super().__init__()
        self.root = Element("root", {})
        self.stack = [self.root]
        self.feed(text)

    def handle_starttag(self, tag: str, attrs: list[tuple[str, str | None]]) -> None:
        element = Element(tag, dict(attrs))
        self.stack[-1].children.append(element)
        if tag not in VOID:
            self.stack.append(element)

    def handle_startendtag(self, tag: str, attrs: list[tuple[str, str | None]]) -> None:
        self.stack[-1].children.append(Element(tag, dict(attrs)))

    def handle_endtag(self, tag: str) -> None:
        for i in range(len(self.stack) - 1, 0, -1):
            if self.stack[i].tag == tag:
                del self.stack[i:]
                return

    def handle_data(self, data: str) -> None:
        self.stack[-1].children.append(Element("#text", {}))
        self.stack[-1].children[-1].text = data


def page(client: httpx.Client, path: str, name: str) -> Element:
    answer = client.get(path)
    assert answer.status_code == 200, (path, answer.status_code, answer.text[:300])
    assert answer.headers["content-type"].startswith("text/html")
    root = Page(answer.text).root
    main = root.one("main", id="content")
    assert main.attrs["data-page"] == name
    nav = root.one("nav", id="nav")
    assert [a.attrs["href"] for a in nav.find_all("a")] == ["/ui/jobs", "/ui/nodes", "/ui/kb", "/ui/unseen"]
    assert root.one("span", id="live").attrs["data-state"] == "connecting"
    return root


def no_traceback(text: str) -> None:
    assert "Traceback" not in text and 'File "' not in text


# -- pages ---------------------------------------------------------------------------------------


def _add_condition(gm: GM, stage: str, kind: str, reason: str = "Test") -> None:
    _add_conditions(gm, [(stage, kind, reason)])


def _add_conditions(gm: GM, conditions: list[tuple[str, str, str]]) -> None:
    """Append (stage, type, reason) conditions to the job's status in one write."""
    store = gm.svc.store
    obj = store.get("LifelongLearningJob", NS, NAME)
    assert obj is not None
    status = dict(obj.get("status") or {})
    now = time.strftime("%Y-%m-%dT%H:%M:%SZ", time.gmtime())
    status["conditions"] = [
        *(status.get("conditions") or []),
        *(
            {"type": kind, "status": "True", "stage": stage, "lastTransitionTime": now, "reason": reason}
            for stage, kind, reason in conditions
        ),
    ]
    store.update_status("LifelongLearningJob", NS, NAME, status)


def test_every_page_shows_the_contracts_hooks_with_the_apis_values(gm: GM) -> None:
    assert gm.kb is not None
    gm.svc.state.hello("node-a", agent="lc/1", epoch="e1", boot="b1", low_seq=0, depth=3, next_seq=3)
    gm.svc.state.set_online("node-b", False, "lc/1")
    _add_condition(gm, "Train", "Ready")
    _add_condition(gm, "Train", "Running")
    gm.kb.post_index(INDEX)
    for round_, value in ((1, 0.6), (2, 0.8)):
        gm.kb.post_metrics(
            {
                "job": f"{NS}/{NAME}",
                "round": round_,
                "stage": "eval",
                "scores": {"summer": {"accuracy": value}},
            }
        )
    gm.kb.post_metrics(
        {"job": f"{NS}/{NAME}", "round": 2, "stage": "train", "scores": {"winter": {"accuracy": 0.4}}}
    )
    job = gm.api(f"/api/v1/LifelongLearningJob/{NS}/{NAME}")
    last = job["status"]["conditions"][-1]
    with gm.client(WRITER) as c:
        assert c.get("/ui/").status_code == 303 and c.get("/ui/").headers["location"] == "/ui/jobs"

        jobs = page(c, "/ui/jobs", "jobs")
        row = jobs.one("table", id="jobs").one("tr", data_job=f"{NS}/{NAME}")
        assert row.field("stage") == last["stage"] and row.field("state") == last["type"]
        assert row.field("round") == "1"
        assert row.field("nodes") == "node-a"
        assert row.field("changed") == last["lastTransitionTime"]
        assert row.one("a", href=f"/ui/jobs/{NS}/{NAME}")

        one = page(c, f"/ui/jobs/{NS}/{NAME}", "job")
        timeline = one.one("svg", id="timeline")
        rects = timeline.find_all("rect", data_stage=None)
        assert [(r.attrs["data-stage"], r.attrs["data-type"]) for r in rects] == [
            (cond["stage"].lower(), cond["type"]) for cond in job["status"]["conditions"]
        ]
        lanes = timeline.find_all("g", data_round=None)
        expected: dict[str, int] = {}
        round_ = 0
        for cond in job["status"]["conditions"]:  # a round starts with a Train/Ready that is no retry
            round_ += cond["stage"] == "Train" and cond["type"] == "Ready" and cond.get("reason") != "Retry"
            expected[str(round_)] = expected.get(str(round_), 0) + 1
        assert {g.attrs["data-round"]: len(g.find_all("rect")) for g in lanes} == expected
        assert list(expected) == ["0", "1"]
        points = {
            (p.attrs["data-round"], p.attrs["data-task"]): p.attrs["data-value"]
            for p in one.one("svg", id="metrics-plot").find_all("circle")
        }
        assert points == {("1", "summer"): "0.6", ("2", "summer"): "0.8", ("2", "winter"): "0.4"}
        assert one.one("table", id="workers")
        links = {a.attrs["href"] for a in one.find_all("a")}
        assert {f"/ui/kb/{NS}/{NAME}", f"/ui/unseen/{NS}/{NAME}"} <= links

        kb_index = page(c, "/ui/kb", "kb-index")
        assert (
            kb_index.one("table", id="kb-jobs")
            .one("tr", data_job=f"{NS}/{NAME}")
            .one("a", href=f"/ui/kb/{NS}/{NAME}")
        )
        kb = page(c, f"/ui/kb/{NS}/{NAME}", "kb")
        tasks = gm.kb.tasks(f"{NS}/{NAME}")["taskGroups"]
        for group in tasks:
            for task in group["tasks"]:
                tr = kb.one("table", id="tasks").one("tr", data_task=task["entry"])
                assert tr.field("group") == group["entry"]
                assert tr.field("model") == group["model"]["url"]
                assert tr.field("samples") == str(task["samples"])
                assert tr.field("score") == str(group["model"]["metrics"]["accuracy"])
            assert kb.one("table", id="task-groups").one("tr", data_group=group["entry"])
        cells = {
            (r.attrs["data-round"], r.attrs["data-task"]): r.attrs["data-value"]
            for r in kb.one("svg", id="heatmap").find_all("rect", data_round=None)
        }
        assert cells == points
        assert kb.one("table", id="transfers").one("tr", data_task="winter").attrs["data-from"] == "summer"

        unseen_index = page(c, "/ui/unseen", "unseen-index")
        summary = gm.api(f"{JOB_PATH}/summary")["samples"]
        unlabelled = summary["numberOfUnseenSample"] - summary["numberOfLabeledUnseenSample"]
        assert unseen_index.one("tr", data_job=f"{NS}/{NAME}").field("unlabelled") == str(unlabelled) == "4"

        unseen = page(c, f"/ui/unseen/{NS}/{NAME}", "unseen")
        api_samples = gm.api(f"{JOB_PATH}/samples", state="unlabelled")["items"]
        rows = unseen.one("table", id="samples").find_all("tr", data_sample=None)
        assert [
            (r.attrs["data-sample"], r.attrs["data-node"], r.attrs["data-predicted"], r.attrs["data-label"])
            for r in rows
        ] == [(s["id"], s["node"], str(s["predicted"]), "") for s in api_samples]
        assert len(unseen.find_all("form", data_label_one=None)) == 4
        assert {
            f.attrs["data-label-predicted"] for f in unseen.find_all("form", data_label_predicted=None)
        } == {"0", "1"}
        filtered = page(c, f"/ui/unseen/{NS}/{NAME}?predicted=1&node=node-a&state=all", "unseen")
        assert {r.attrs["data-sample"] for r in filtered.find_all("tr", data_sample=None)} == {"s1", "s3"}
        assert (
            page(c, f"/ui/unseen/{NS}/{NAME}?node=elsewhere", "unseen").find_all("tr", data_sample=None) == []
        )

        nodes = page(c, "/ui/nodes", "nodes")
        by_name = {n["node"]: n for n in gm.api("/api/v1/nodes")["items"]}
        a = nodes.one("tr", data_node="node-a")
        assert a.attrs["data-online"] == "true" and a.field("online") == "online"
        assert a.one(data_field="lastHello").attrs["data-value"] == str(by_name["node-a"]["lastHello"])
        assert a.field("outbox") == "3" == str(by_name["node-a"]["outbox"]["depth"])
        assert a.field("unacked") == str(by_name["node-a"]["unacked"])
        assert a.field("jobs") == "1"
        assert a.find_all("form", data_delete_node=None) == []
        b = nodes.one("tr", data_node="node-b")
        assert b.attrs["data-online"] == "false" and b.field("jobs") == "0"
        assert b.one("form", data_delete_node="node-b")

        fragment = c.get("/ui/jobs?fragment=1")
        assert (
            fragment.status_code == 200
            and "<main" not in fragment.text
            and 'data-job="default/job1"' in fragment.text
        )


def test_the_heat_map_and_the_plot_show_each_tasks_test_set_accuracy_and_say_which_measure(gm: GM) -> None:
    """R[k][j] is the accuracy on task j's test set (docs/lifelong-learning.md): eval's
    ``test_accuracy`` before its ``accuracy`` (on the round's eval pool), which a task without a
    test score still shows, marked and named."""
    assert gm.kb is not None
    gm.kb.post_index(INDEX)
    scores = {"summer": {"accuracy": 0.9, "test_accuracy": 0.7}, "winter": {"accuracy": 0.5}}
    gm.kb.post_metrics({"job": f"{NS}/{NAME}", "round": 1, "stage": "eval", "scores": scores})
    gm.kb.post_metrics(
        {"job": f"{NS}/{NAME}", "round": 1, "stage": "train", "scores": {"summer": {"test_accuracy": 0.1}}}
    )
    expected = {
        ("1", "summer"): ("0.7", "eval test_accuracy"),
        ("1", "winter"): ("0.5", "eval accuracy"),
    }
    with gm.client(READER) as c:
        kb = page(c, f"/ui/kb/{NS}/{NAME}", "kb")
        job = page(c, f"/ui/jobs/{NS}/{NAME}", "job")
    for root, svg_id, caption_id in (
        (kb, "heatmap", "heatmap-measure"),
        (job, "metrics-plot", "plot-measure"),
    ):
        shown = {
            (e.attrs["data-round"], e.attrs["data-task"]): (e.attrs["data-value"], e.attrs["data-measure"])
            for e in root.one("svg", id=svg_id).find_all(data_round=None)
            if e.tag in ("rect", "circle")
        }
        assert shown == expected, (svg_id, shown)
        caption = root.one("p", id=caption_id)
        assert caption.attrs["data-measure"] == "eval test_accuracy"  # as many cells: the better first
        text = " ".join(caption.all_text().split())
        assert "test_accuracy (accuracy on the task's test set)" in text, text
        assert "accuracy (accuracy on the round's evaluation pool)" in text, text
    marked = [t.all_text() for t in kb.one("svg", id="heatmap").find_all("text") if "†" in t.all_text()]
    assert marked == ["0.500†"], marked


def test_a_worker_log_page_says_when_the_node_cannot_give_it(gm: GM) -> None:
    gm.svc.store.apply(
        {
            "apiVersion": "lifelong.io/v1",
            "kind": "Worker",
            "metadata": {"name": f"{NAME}-train-1", "namespace": NS},
            "spec": {"job": NAME, "stage": "Train", "round": 1, "template": TEMPLATE},
        }
    )
    with gm.client(WRITER) as c:
        one = page(c, f"/ui/jobs/{NS}/{NAME}", "job")
        row = one.one("table", id="workers").one("tr", data_worker=f"{NAME}-train-1")
        assert row.field("node") == "node-a" and row.field("stage") == "Train"
        assert row.one("a", data_log=None).attrs["href"] == f"/ui/workers/{NS}/{NAME}-train-1/log"
        log = page(c, f"/ui/workers/{NS}/{NAME}-train-1/log", "log")
        assert log.one("pre", id="log")
        assert "node-a" in log.one("p", id="log-off").all_text()  # not known to the GM: no log
        missing = c.get(f"/ui/workers/{NS}/nobody/log")
        assert missing.status_code == 404
        assert 'worker "nobody" not found in namespace default' in html.unescape(missing.text)


def test_a_finished_workers_log_page_and_the_earlier_workers_of_the_job_page(gm: GM) -> None:
    """The GM deletes a Worker once it finished; its log is still on its node (``GMApi.worker_log``
    finds the node from the job), and the job page lists it among the earlier workers, from the
    job's conditions and the last reports (what ``lifelong describe`` shows)."""
    history = [("Train", "Ready", "Test"), ("Train", "Starting", "Test"), ("Train", "Running", "Test")]
    history += [("Train", "Completed", "Test"), ("Eval", "Waiting", "Test"), ("Eval", "Ready", "Test")]
    history += [("Eval", "Starting", "Test"), ("Eval", "Running", "Test"), ("Eval", "Failed", "Test")]
    history += [("Eval", "Ready", "Retry"), ("Eval", "Starting", "Test"), ("Eval", "Completed", "Test")]
    history += [("Deploy", "Waiting", "Test"), ("Deploy", "Ready", "Test"), ("Deploy", "Starting", "Test")]
    history += [("Deploy", "Completed", "Test"), ("Train", "Waiting", "Test")]  # its end is Deploy's
    _add_conditions(gm, history)  # at once: the controller sees only the end (Train/Waiting)
    gm.svc.state.put_worker_info(NS, NAME, f"{NAME}-train-1", {"results": [{"url": "/m/1.pkl"}]})
    gm.svc.state.put_worker_info(NS, NAME, "upstream-train-worker-x1", {"results": []})
    expected = {
        f"{NAME}-train-1": ("Train", "1", "node-a", "Succeeded", "yes"),
        f"{NAME}-eval-1": ("Eval", "1", "node-a", "Failed", "no"),
        f"{NAME}-eval-1-retry1": ("Eval", "1", "node-a", "Succeeded", "no"),
        f"{NAME}-deploy-1": ("Deploy", "1", "node-a", "Succeeded", "no"),
        "upstream-train-worker-x1": ("", "?", "", "", "yes"),
    }
    with gm.client(READER) as c:

        def past() -> list[Element]:
            found = page(c, f"/ui/jobs/{NS}/{NAME}", "job").one("table", id="past-workers")
            return found.find_all("tr", data_worker=None)

        def shown() -> dict[str, tuple[str, ...]]:
            fields = ("stage", "round", "node", "phase", "reported")
            return {r.attrs["data-worker"]: tuple(r.field(f) for f in fields) for r in past()}

        wait_for(lambda: shown() == expected, what="the earlier workers on the job page", timeout=DEADLINE)
        rows = past()
        assert [r.attrs["data-worker"] for r in rows][:3] == [
            f"{NAME}-train-1",
            f"{NAME}-eval-1",
            f"{NAME}-eval-1-retry1",
        ]
        for r in rows:
            assert r.one("a", data_log=None).attrs["href"] == f"/ui/workers/{NS}/{r.attrs['data-worker']}/log"
        assert gm.svc.store.get("Worker", NS, f"{NAME}-train-1") is None
        log = page(c, f"/ui/workers/{NS}/{NAME}-train-1/log", "log")  # no Worker object: no 404
        assert "node node-a is unknown to the GM" in log.one("p", id="log-off").all_text()
        gone = c.get(f"/ui/workers/{NS}/otherjob-train-1/log")
        assert gone.status_code == 404 and "no job it belongs to" in html.unescape(gone.text)


def test_without_a_knowledge_base_the_pages_say_so(tmp_path: Path) -> None:
    svc = _start(tmp_path, None)
    try:
        gm = GM(svc, None)
        with gm.client(READER) as c:
            assert page(c, f"/ui/kb/{NS}/{NAME}", "kb").one("p", id="kb-off")
            assert page(c, "/ui/unseen", "unseen-index").one("p", id="kb-off")
            assert (
                "no knowledge base" in page(c, f"/ui/jobs/{NS}/{NAME}", "job").one(id="no-metrics").all_text()
            )
    finally:
        svc.stop()


# -- who may do what ----------------------------------------------------------------------------


@contextlib.contextmanager
def _login(gm: GM, token: str) -> Iterator[httpx.Client]:
    with gm.client() as c:
        yield _logged_in(c, token)


def _logged_in(c: httpx.Client, token: str) -> httpx.Client:
    answer = c.post("/ui/login", data={"token": token, "next": f"/ui/kb/{NS}/{NAME}"})
    assert answer.status_code == 303 and answer.headers["location"] == f"/ui/kb/{NS}/{NAME}"
    cookie = answer.headers["set-cookie"]
    assert token not in cookie
    assert re.fullmatch(r"lifelong_session=[A-Za-z0-9_-]{40,}; HttpOnly; SameSite=Strict; Path=/ui", cookie)
    return c


def _refused(gm: GM, reason: str) -> float:
    text = gm.svc.metrics.render().decode()
    found = re.search(rf'lifelong_gm_console_refused_total\{{reason="{reason}"\}} (\S+)', text)
    return float(found.group(1)) if found else 0.0


def test_login_sessions_and_logout(gm: GM) -> None:
    with gm.client() as anonymous:
        answer = anonymous.get(f"/ui/jobs/{NS}/{NAME}?x=1")
        assert answer.status_code == 303
        assert answer.headers["location"] == "/ui/login?next=%2Fui%2Fjobs%2Fdefault%2Fjob1%3Fx%3D1"
        assert anonymous.get("/ui/events").status_code == 401
        assert anonymous.get("/ui/jobs?fragment=1").status_code == 401
        assert anonymous.get("/ui/jobs", headers={"Authorization": "Bearer nope"}).status_code == 401
        form = Page(anonymous.get("/ui/login?next=/ui/nodes").text).root.one("form", id="login")
        assert form.one("input", name="token").attrs["type"] == "password"
        assert form.one("input", name="next").attrs["value"] == "/ui/nodes"
        before = _refused(gm, "unknown_token")
        wrong = anonymous.post("/ui/login", data={"token": "guess"})
        assert wrong.status_code == 401 and "unknown token" in wrong.text and "guess" not in wrong.text
        assert _refused(gm, "unknown_token") == before + 1
        assert "set-cookie" not in wrong.headers
        off_site = anonymous.post("/ui/login", data={"token": WRITER, "next": "https://evil.example/"})
        assert off_site.headers["location"] == "/ui/jobs"
    with _login(gm, WRITER) as c:
        assert page(c, "/ui/jobs", "jobs")
        root = page(c, f"/ui/unseen/{NS}/{NAME}", "unseen")
        csrf = root.one("form", action="/ui/logout").one("input", name="csrf").attrs["value"]
        assert WRITER not in c.get("/ui/jobs").text
        assert c.post("/ui/logout", data={"csrf": csrf}).status_code == 303
        assert c.get("/ui/jobs").status_code == 303  # the session is gone


def test_a_read_session_sees_everything_and_gets_no_forms(gm: GM) -> None:
    gm.svc.state.set_online("node-b", False, "lc/1")
    with _login(gm, READER) as c:
        unseen = page(c, f"/ui/unseen/{NS}/{NAME}", "unseen")
        assert len(unseen.find_all("tr", data_sample=None)) == 4
        assert unseen.find_all("form", data_label_one=None) == []
        assert unseen.find_all("form", data_label_predicted=None) == []
        assert page(c, "/ui/nodes", "nodes").find_all("form", data_delete_node=None) == []
        csrf = unseen.one("form", action="/ui/logout").one("input", name="csrf").attrs["value"]
        before = _refused(gm, "read_only")
        refused = c.post(f"/ui/unseen/{NS}/{NAME}/label", data={"csrf": csrf, "sample": "s0", "label": "cat"})
        assert refused.status_code == 403 and "may only read" in refused.text
        assert _refused(gm, "read_only") == before + 1
    with gm.client(READER) as bearer:
        assert (
            bearer.post(f"/ui/unseen/{NS}/{NAME}/label", data={"sample": "s0", "label": "cat"}).status_code
            == 403
        )
    assert gm.api(f"{JOB_PATH}/samples", state="labelled")["items"] == []


def test_a_form_needs_its_csrf_field_and_this_sites_origin(gm: GM) -> None:
    with _login(gm, WRITER) as c:
        root = page(c, f"/ui/unseen/{NS}/{NAME}", "unseen")
        form = root.one("form", data_label_one="s0")
        csrf = form.one("input", name="csrf").attrs["value"]
        target = form.attrs["action"]
        for data, headers, reason in (
            ({"sample": "s0", "label": "cat"}, {}, "csrf"),
            ({"sample": "s0", "label": "cat", "csrf": "0" * 64}, {}, "csrf"),
            ({"sample": "s0", "label": "cat", "csrf": csrf}, {"Origin": "https://evil.example"}, "origin"),
            ({"sample": "s0", "label": "cat", "csrf": csrf}, {"Origin": "null"}, "origin"),
        ):
            before = _refused(gm, reason)
            answer = c.post(target, data=data, headers=headers)
            assert answer.status_code == 403, (data, headers)
            assert _refused(gm, reason) == before + 1
        assert gm.api(f"{JOB_PATH}/samples", state="labelled")["items"] == []
        ok = c.post(target, data={"sample": "s0", "label": "cat", "csrf": csrf}, headers={"Origin": gm.base})
        assert ok.status_code == 303


def test_labelling_through_the_forms_reaches_the_knowledge_base(gm: GM) -> None:
    with _login(gm, WRITER) as c:
        root = page(c, f"/ui/unseen/{NS}/{NAME}", "unseen")
        form = root.one("form", data_label_one="s2")
        fields = {i.attrs["name"]: i.attrs.get("value") or "" for i in form.find_all("input")}
        fields["label"] = "cat"
        answer = c.post(form.attrs["action"], data=fields)
        assert answer.status_code == 303
        after = page(c, answer.headers["location"], "unseen")
        assert after.one("p", id="flash").all_text() == "labelled 1"
        labelled = gm.api(f"{JOB_PATH}/samples", state="labelled")["items"]
        assert [(s["id"], s["label"]) for s in labelled] == [("s2", "cat")]
        # all of one predicted class: the integer class 1 (s1, s3), labelled with the number 7
        form = after.one("form", data_label_predicted="1")
        fields = {i.attrs["name"]: i.attrs.get("value") or "" for i in form.find_all("input")}
        fields["label"] = "7"
        answer = c.post(form.attrs["action"], data=fields)
        assert page(c, answer.headers["location"], "unseen").one("p", id="flash").all_text() == "labelled 2"
        labelled = gm.api(f"{JOB_PATH}/samples", state="labelled")["items"]
        assert sorted((s["id"], s["label"]) for s in labelled) == [("s1", 7), ("s2", "cat"), ("s3", 7)]
        shown = page(c, f"/ui/unseen/{NS}/{NAME}?state=labelled", "unseen")
        assert {
            r.attrs["data-sample"]: r.attrs["data-label"] for r in shown.find_all("tr", data_sample=None)
        } == {
            "s1": "7",
            "s2": "cat",
            "s3": "7",
        }


def test_an_open_gm_has_an_open_console_whose_forms_still_need_csrf(tmp_path: Path) -> None:
    with make_kb(tmp_path / "kb") as kb:
        svc = _start(tmp_path, kb, tokens=False)
        kb.add_unseen(f"{NS}/{NAME}", "node-a", _samples(1))
        try:
            gm = GM(svc, kb)
            with gm.client() as c:
                assert c.get("/ui/login").headers["location"] == "/ui/jobs"
                root = page(c, f"/ui/unseen/{NS}/{NAME}", "unseen")
                form = root.one("form", data_label_one="s0")
                assert c.post(form.attrs["action"], data={"sample": "s0", "label": "x"}).status_code == 403
                fields = {i.attrs["name"]: i.attrs.get("value") or "" for i in form.find_all("input")}
                assert c.post(form.attrs["action"], data={**fields, "label": "x"}).status_code == 303
        finally:
            svc.stop()


def test_deleting_an_offline_node_through_its_form(gm: GM) -> None:
    gm.svc.state.set_online("node-b", False, "lc/1")
    gm.svc.state.hello("node-c", agent="lc/1", epoch="e", boot="b", low_seq=0)
    with _login(gm, WRITER) as c:
        nodes = page(c, "/ui/nodes", "nodes")
        form = nodes.one("form", data_delete_node="node-b")
        csrf = form.one("input", name="csrf").attrs["value"]
        answer = c.post(form.attrs["action"], data={"csrf": csrf})
        assert answer.status_code == 303
        assert "node-b" not in {n["node"] for n in gm.api("/api/v1/nodes")["items"]}
        online = c.post("/ui/nodes/node-c/delete", data={"csrf": csrf})
        assert online.status_code == 409 and "online" in online.text
        missing = c.post("/ui/nodes/ghost/delete", data={"csrf": csrf})
        assert missing.status_code == 404 and 'node "ghost" not found' in html.unescape(missing.text)


# -- bad input ----------------------------------------------------------------------------------


def test_bad_input_gets_a_page_naming_what_is_wrong(gm: GM) -> None:
    with _login(gm, WRITER) as c:
        csrf = (
            page(c, "/ui/jobs", "jobs")
            .one("form", action="/ui/logout")
            .one("input", name="csrf")
            .attrs["value"]
        )
        for path, status, words in (
            ("/ui/jobs/default/ghost", 404, 'LifelongLearningJob "ghost" not found'),
            ("/ui/kb/other/job1", 404, 'LifelongLearningJob "job1" not found in namespace other'),
            ("/ui/unseen/default/ghost", 404, "ghost"),
            ("/ui/nowhere", 404, "no such page"),
            ("/ui/static/passwd", 404, "no such file"),
            (f"/ui/unseen/{NS}/{NAME}?state=sideways", 400, "state: must be one of"),
            (f"/ui/unseen/{NS}/{NAME}?state=all&state=labelled", 400, "state: give it once"),
        ):
            answer = c.get(path)
            assert answer.status_code == status, (path, answer.status_code)
            assert words in html.unescape(answer.text), (path, answer.text[:400])
            assert answer.headers["content-type"].startswith("text/html")
            no_traceback(answer.text)
        label = f"/ui/unseen/{NS}/{NAME}/label"
        for data, status, words in (
            ({"csrf": csrf, "sample": "nosuch", "label": "x"}, 400, "nosuch"),
            ({"csrf": csrf, "sample": "s0"}, 400, "label"),
            ({"csrf": csrf, "label": "x"}, 400, "sample"),
        ):
            answer = c.post(label, data=data)
            assert answer.status_code == status and words in html.unescape(answer.text), (
                data,
                answer.text[:300],
            )
            no_traceback(answer.text)
        before = _refused(gm, "too_large")
        big = c.post(
            label,
            content=b"csrf=" + b"x" * 20000,
            headers={"Content-Type": "application/x-www-form-urlencoded"},
        )
        assert big.status_code == 413 and _refused(gm, "too_large") == before + 1
        for body, kind in (
            (b"\xff\xfe=\x00", "application/x-www-form-urlencoded"),
            (b"csrf=1&csrf=2", "application/x-www-form-urlencoded"),
            (b'{"label": 1}', "application/json"),
            (b"&".join(b"f%d=1" % i for i in range(40)), "application/x-www-form-urlencoded"),
        ):
            answer = c.post(label, content=body, headers={"Content-Type": kind})
            assert answer.status_code == 400, body
            no_traceback(answer.text)
        assert c.request("PUT", "/ui/jobs").status_code == 405
    assert gm.api(f"{JOB_PATH}/samples", state="labelled")["items"] == []


# -- live ------------------------------------------------------------------------------------------


class Stream:
    """An open ``/ui/events`` stream read on a thread of its own: its events, in order."""

    def __init__(self, gm: GM, token: str = WRITER) -> None:
        self.client = gm.client(token)
        self.events: list[str] = []
        self.comments: list[str] = []
        self.status: int | None = None
        self._ready = threading.Event()
        self._thread = threading.Thread(target=self._read, daemon=True)
        self._thread.start()
        assert self._ready.wait(DEADLINE)

    def _read(self) -> None:
        try:
            with self.client.stream("GET", "/ui/events") as answer:
                self.status = answer.status_code
                self._ready.set()
                for line in answer.iter_lines():
                    if line.startswith("data: "):
                        self.events.append(line[6:])
                    elif line.startswith(":"):
                        self.comments.append(line)
        except httpx.HTTPError:
            pass
        finally:
            self._ready.set()

    def close(self) -> None:
        self.client.close()


def test_the_stream_tells_of_a_job_condition_and_a_node_going_offline(gm: GM) -> None:
    gm.svc.state.hello("node-a", agent="lc/1", epoch="e1", boot="b1", low_seq=0)
    stream = Stream(gm)
    try:
        assert stream.status == 200
        wait_for(lambda: stream.comments, what="the stream's first comment", timeout=DEADLINE)
        seen = len(stream.events)
        _add_condition(gm, "Train", "Ready")
        event = wait_for(lambda: stream.events[seen:], what="a change for the condition", timeout=DEADLINE)[0]
        assert '"jobs"' in event
        seen = len(stream.events)
        gm.svc.state.set_online("node-a", False)  # what the intake does with the LC's will
        started = time.monotonic()
        event = wait_for(lambda: stream.events[seen:], what="a change for the node", timeout=11.0)[0]
        assert '"nodes"' in event and time.monotonic() - started < 11.0
        with gm.client(WRITER) as c:
            row = Page(c.get("/ui/nodes?fragment=1").text).root.one("tr", data_node="node-a")
            assert row.attrs["data-online"] == "false"
    finally:
        stream.close()


def test_the_streams_are_bounded_and_end_when_the_gm_stops(tmp_path: Path) -> None:
    svc = _start(tmp_path, None)
    gm = GM(svc, None)
    assert svc.api is not None and svc.api.watcher is not None
    bound = svc.api.watcher.max_streams
    streams = [Stream(gm) for _ in range(bound)]
    try:
        wait_for(
            lambda: svc.api is not None and svc.api.watcher is not None and svc.api.watcher.streams == bound,
            what="every stream open",
            timeout=DEADLINE,
        )
        with gm.client(WRITER) as c:
            before = _refused(gm, "streams_full")
            assert c.get("/ui/events").status_code == 503
            assert _refused(gm, "streams_full") == before + 1
            # the API keeps its own threads
            assert c.get("/api/v1/LifelongLearningJob").status_code == 200
            assert c.get("/ui/jobs").status_code == 200
        started = time.monotonic()
        svc.stop()
        assert time.monotonic() - started < 4.0
        assert not svc.api.watcher.running
    finally:
        for s in streams:
            s.close()
        svc.stop()


def _raw_stream(gm: GM) -> socket.socket:
    """A ``/ui/events`` stream on a plain socket, its answer's head read (200): a browser tab."""
    port = int(gm.base.rsplit(":", 1)[1])
    sock = socket.create_connection(("127.0.0.1", port), timeout=DEADLINE)
    head = f"GET /ui/events HTTP/1.1\r\nHost: 127.0.0.1:{port}\r\nAuthorization: Bearer {WRITER}\r\n"
    sock.sendall(f"{head}\r\n".encode())
    answer = b""
    while b"\r\n\r\n" not in answer:
        chunk = sock.recv(4096)
        assert chunk, answer
        answer += chunk
    assert answer.startswith(b"HTTP/1.1 200"), answer[:200]
    return sock


def test_a_stream_whose_browser_left_gives_its_place_back_within_seconds(gm: GM) -> None:
    """Every place taken by pages the browser left: the next page's stream is refused (503)
    until the keepalives find them gone, which takes seconds (a comment every 2 s), not the 10 s
    to 20 s that left a page opened soon after eight others without live updates."""
    assert gm.svc.api is not None and gm.svc.api.watcher is not None
    watcher = gm.svc.api.watcher
    seen = [watcher.version, time.monotonic()]

    def quiet() -> bool:  # no change wakes the streams (their writes would find them gone)
        if watcher.version != seen[0]:
            seen[:] = [watcher.version, time.monotonic()]
        return time.monotonic() - seen[1] > 1.5

    # The watcher digests only while a page is open: open one first, so it catches up with what
    # changed while none was, then wait until nothing changes.
    socks = [_raw_stream(gm)]
    wait_for(quiet, what="the GM's pages unchanged for 1.5 s", timeout=DEADLINE)
    version = watcher.version
    socks += [_raw_stream(gm) for _ in range(watcher.max_streams - 1)]
    with gm.client(WRITER) as c:
        refused = c.get("/ui/events")
        assert refused.status_code == 503 and refused.headers["retry-after"] == "2"
    for sock in socks:  # the browser went to another page
        sock.close()
    left = time.monotonic()
    wait_for(lambda: watcher.streams == 0, what="every place given back", timeout=7.0)
    print(f"{len(socks)} streams ended {time.monotonic() - left:.1f}s after their browser left")
    assert watcher.version == version  # ended by their keepalives, not by a change
    _raw_stream(gm).close()


def test_the_watcher_sends_a_change_to_a_browser_behind_by_a_version(gm: GM) -> None:
    assert gm.svc.api is not None and gm.svc.api.watcher is not None
    current = gm.svc.api.watcher.version
    with gm.client(WRITER) as c, c.stream("GET", f"/ui/events?since={current - 1}") as answer:
        lines = answer.iter_lines()
        assert next(lines) == "retry: 2000"
        wait_for(lambda: next(lines).startswith("event: change"), what="a change", timeout=DEADLINE)
