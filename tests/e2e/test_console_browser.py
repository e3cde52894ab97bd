"""The GM's web console (issue 17, docs/console.md) in a real browser, against real processes.

One set of processes for the whole module: a broker (mosquitto when installed, else the embedded
amqtt), ``lifelong gm --kb-dir ... --token-file ...`` with a read and a write token, and
``lifelong lc`` (a short MQTT keepalive, so that its death shows soon), running the job of
``examples/lifelong`` as tests/e2e/test_lifelong_kb_e2e.py does: round 1 trains one model per
known camera, its inference meets ``cam_c`` and ships 100 unseen samples to the knowledge base.
One headless Chromium (the ``browser`` fixture, tests/harness/browser.py) then logs in through
the form and reads every page, checking what it shows against the GM API's JSON and the KB's:

- jobs and a job (stage, state, round, nodes; the conditions as lanes per round; the workers and
  their phases; the metrics plot against the KB's metrics), a worker's log, the KB (tasks, task
  groups, the heat map of R[round][task], the transfers), the unseen samples, the nodes;
- a read token sees no label forms; a write token labels one sample, then every sample of one
  predicted class, through the page, and the labels reach the KB (read back through the API);
- pages update by themselves: the job page gains round 2's lane once the remaining samples are
  labelled (through the API), the KB page round 2's cells and the transfer to ``cam-c``, the nodes
  page shows the LC offline soon after it is killed; none of them is reloaded (a mark set on the
  page's ``window`` survives).

The tests run in order on the shared processes (``xdist_group``: one pytest process runs them
all). One screenshot per page goes to ``LIFELONG_CONSOLE_SHOTS`` (``make screenshots``:
docs/console/).
"""

from __future__ import annotations

import contextlib
import csv
import json
import socket
import subprocess
import sys
import time
import urllib.parse
import urllib.request
from collections.abc import Iterator
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import pytest
import yaml
from e2e.test_lifelong_kb_e2e import EXAMPLE, JOB, NODE, TWO_ROUNDS, manifests
from harness.brokers import Broker, make_broker, mosquitto_binary
from harness.browser import Browser
from harness.processes import FULL_ROUND, GMProcess, LCProcess, history_follows
from harness.waiting import free_port, wait_for

from lifelong.common.api.lifelonglearningjob import job_conditions
from lifelong.common.statemachine import current_round, starts_round

pytestmark = [pytest.mark.e2e, pytest.mark.timeout(400), pytest.mark.xdist_group("console-browser")]

NS = "default"
KEY = f"{NS}/{JOB}"
READ_TOKEN = "console-read-7d41c0e2b9a8"
WRITE_TOKEN = "console-write-3fa86b12c5d0"
KEEPALIVE = 2
"""The LC's MQTT keepalive (seconds): the broker gives its will 1.5 keepalives after it dies."""
UNSEEN = 100
FEATURES = [f"f{i}" for i in range(64)]


class TokenGM(GMProcess):
    """The GM with ``--token-file``: its API calls carry a bearer token (the write one unless told)."""

    def api(self, method: str, path: str, body: Any = None, token: str = WRITE_TOKEN) -> Any:
        data = None if body is None else json.dumps(body).encode()
        req = urllib.request.Request(self.server + path, data=data, method=method)
        req.add_header("Authorization", f"Bearer {token}")
        if data is not None:
            req.add_header("Content-Type", "application/json")
        with urllib.request.urlopen(req, timeout=10) as resp:
            raw = resp.read()
        return json.loads(raw) if raw[:1] in (b"{", b"[") else raw


@dataclass
class Console:
    """The running processes, and what the tests read back through the APIs."""

    gm: TokenGM
    lc: LCProcess
    broker: Broker
    work: Path
    kb_port: int
    truth: dict[tuple[str, ...], str] = field(default_factory=dict)

    def url(self, path: str) -> str:
        return self.gm.server + path

    def job(self) -> dict[str, Any]:
        obj: dict[str, Any] = self.gm.api("GET", f"/api/v1/LifelongLearningJob/{NS}/{JOB}")
        return obj

    def samples(self, state: str = "all") -> list[dict[str, Any]]:
        path = f"/api/v1/namespaces/{NS}/lifelonglearningjobs/{JOB}/kb/samples?state={state}&limit=1000"
        items: list[dict[str, Any]] = self.gm.api("GET", path)["items"]
        return items

    def kb(self, what: str) -> dict[str, Any]:
        """The KB's native API (same tokens as the GM's): ``tasks`` or ``metrics`` of the job."""
        req = urllib.request.Request(f"http://127.0.0.1:{self.kb_port}/knowledgebase/v1/{what}/{NS}/{JOB}")
        req.add_header("Authorization", f"Bearer {READ_TOKEN}")
        with urllib.request.urlopen(req, timeout=10) as resp:
            found: dict[str, Any] = json.loads(resp.read())
        return found

    def true_label(self, sample: dict[str, Any]) -> str:
        return self.truth[tuple(str(sample["row"][f]) for f in FEATURES)]


def _job_manifests(work: Path) -> list[dict[str, Any]]:
    """The example's Dataset and job as test_lifelong_kb_e2e fills them in; the workers also get
    the write token for the KB (it takes the GM API's tokens). Every stage's worker, Deploy's too,
    gets ``KB_SERVER`` from the GM (cloud/controllers/lifelonglearning/workerenv.py), the only
    server the library sends the token to."""
    docs: list[dict[str, Any]] = list(yaml.safe_load_all(manifests(work)))
    for spec in ("trainSpec", "evalSpec", "deploySpec"):
        container = docs[1]["spec"][spec]["template"]["spec"]["containers"][0]
        container["env"].append({"name": "KB_TOKEN", "value": WRITE_TOKEN})
    return docs


@pytest.fixture(scope="module")
def console(browser_programs: tuple[str, str], tmp_path_factory: pytest.TempPathFactory) -> Iterator[Console]:
    """The processes, with round 1 done and its unseen samples in the KB (nothing starts when
    there is no browser to test with)."""
    work = tmp_path_factory.mktemp("console")
    broker = make_broker("mosquitto" if mosquitto_binary() else "amqtt", work)
    gm: TokenGM | None = None
    lc: LCProcess | None = None
    broker.start()
    try:
        tokens = work / "tokens.csv"
        tokens.write_text(f"{WRITE_TOKEN},write,operator\n{READ_TOKEN},read,viewer\n")
        tokens.chmod(0o600)
        kb_port = free_port()
        gm = TokenGM(
            work,
            broker_url=broker.url,
            prefix=broker.prefix,
            extra=["--kb-dir", str(work / "kb"), "--kb-port", str(kb_port), "--token-file", str(tokens)],
        )
        gm.start()
        gm.wait_ready()
        lc = LCProcess(
            work,
            node=NODE,
            broker_url=broker.url,
            prefix=broker.prefix,
            extra=["--keepalive", str(KEEPALIVE)],
        )
        lc.start()
        lc.wait_online(gm)
        subprocess.run([sys.executable, str(EXAMPLE / "digits_domains.py"), str(work / "data")], check=True)
        for doc in _job_manifests(work):
            gm.api("POST", "/api/v1/apply", doc)
        setup = Console(gm, lc, broker, work, kb_port)
        with (work / "data" / "cam_c_labels.csv").open() as fh:
            setup.truth = {tuple(r[2:]): r[0] for r in list(csv.reader(fh))[1:]}
        wait_for(
            history_follows(gm, [gm, lc], JOB, FULL_ROUND),
            timeout=180,
            interval=0.2,
            what=f"round 1 of {JOB}\n{lc.log_tail()}",
        )
        wait_for(
            lambda: len(setup.samples("unlabelled")) == UNSEEN,
            timeout=60,
            what=f"{UNSEEN} unseen samples in the KB\n{gm.log_tail()}",
        )
        yield setup
    finally:
        for proc in (lc, gm):
            if proc is not None and proc.alive():
                proc.kill()
        broker.stop()


# -- reading pages --------------------------------------------------------------------------------

ROWS_JS = """
return Array.from(document.querySelectorAll(arguments[0])).map(function (row) {
  var attrs = {}, fields = {};
  Array.from(row.attributes).forEach(function (a) { attrs[a.name] = a.value; });
  row.querySelectorAll('[data-field]').forEach(function (c) {
    fields[c.dataset.field] = c.textContent.trim();
  });
  return {attrs: attrs, fields: fields};
});
"""


def rows(browser: Browser, css: str) -> list[dict[str, Any]]:
    """Every element matching ``css``: its attributes and its ``data-field`` cells' text, read in
    one go (a live swap between two reads cannot mix two versions of the page)."""
    found: list[dict[str, Any]] = browser.script(ROWS_JS, css)
    return found


def by(items: list[dict[str, Any]], attr: str) -> dict[str, dict[str, Any]]:
    return {item["attrs"][attr]: item for item in items}


def show(browser: Browser, path: str, page: str, live: bool = False) -> None:
    """Open ``path`` and wait for its ``<main data-page=PAGE>``; with ``live``, also for its
    stream of changes to connect (``#live[data-state=live]``)."""
    browser.open(browser.base + path)
    browser.wait(lambda: browser.has(f'main#content[data-page="{page}"]'), f"the {page} page at {path}")
    if live:
        browser.wait(lambda: is_live(browser), f"live updates on {path}")


def is_live(browser: Browser) -> bool:
    return bool(browser.find("#live").get_attribute("data-state") == "live")


def shot(browser: Browser, name: str, tall: bool = True) -> None:
    """The page's picture for docs/console.md, once its live updates are connected (the badge
    green, as a reader's page would show it)."""
    browser.wait(lambda: is_live(browser), f"live updates before the picture {name}")
    browser.screenshot(name, tall=tall)


def login(browser: Browser, console: Console, token: str, path: str = "/ui/jobs") -> None:
    """Log in through the form, from a fresh start (no session cookie)."""
    browser.open(console.url("/ui/login"))
    browser.driver.delete_all_cookies()
    browser.open(console.url(path))
    browser.wait(lambda: browser.path().startswith("/ui/login"), "the way to the login page")
    browser.find('input[name="token"]').send_keys(token)
    browser.find('form#login button[type="submit"]').click()
    browser.wait(lambda: browser.path() == path, f"{path} after logging in")


def r_matrix(metrics: dict[str, Any]) -> dict[tuple[int, str], float]:
    """R[round][task] as the KB holds it, as ``lifelong demo`` prints it: each task's accuracy on
    the fixed test set the Eval worker scored (``test_accuracy``; ``accuracy`` where it scored
    none)."""
    out = {}
    for rnd, by_task in (metrics.get("scores") or {}).items():
        for task, stages in by_task.items():
            scores = stages.get("eval") or stages.get("train") or {}
            value = scores.get("test_accuracy", scores.get("accuracy"))
            if isinstance(value, int | float):
                out[(int(rnd), task)] = float(value)
    return out


def cells(items: list[dict[str, Any]]) -> dict[tuple[int, str], float]:
    return {
        (int(i["attrs"]["data-round"]), i["attrs"]["data-task"]): float(i["attrs"]["data-value"])
        for i in items
    }


def assert_matrix(shown: dict[tuple[int, str], float], kb: dict[tuple[int, str], float]) -> None:
    assert set(shown) == set(kb), (sorted(shown), sorted(kb))
    for key, value in kb.items():
        assert shown[key] == pytest.approx(value, abs=5e-4), (key, shown[key], value)


# -- the tests ------------------------------------------------------------------------------------


@pytest.fixture(scope="module")
def page(console: Console, browser: Browser) -> Browser:
    """The browser on the console's GM. The processes start first: each takes a port that
    ``free_port`` found free, and Chromium's many loopback connections took such ports first."""
    browser.base = console.gm.server
    return browser


def test_a_page_without_a_session_leads_to_the_login_form_which_refuses_a_wrong_token(
    page: Browser, console: Console
) -> None:
    page.open(console.url("/ui/"))
    page.wait(lambda: page.path().startswith("/ui/login"), "the login page")
    assert urllib.parse.parse_qs(urllib.parse.urlsplit(page.driver.current_url).query)["next"] == ["/ui/jobs"]
    page.find('input[name="token"]').send_keys("not-a-token")
    page.find('form#login button[type="submit"]').click()
    page.wait(lambda: page.has("#login-error"), "the refusal")
    assert "unknown token" in page.find("#login-error").text
    assert page.driver.get_cookie("lifelong_session") is None


def test_a_read_token_sees_the_unseen_samples_but_no_label_forms(page: Browser, console: Console) -> None:
    login(page, console, READ_TOKEN, f"/ui/unseen/{KEY}")
    page.wait(lambda: len(rows(page, "#samples tr[data-sample]")) == UNSEEN, "the unseen samples")
    assert not page.has("form[data-label-one]") and not page.has("form[data-label-predicted]")
    assert "viewer (read)" in page.find("header").text


def test_logging_in_with_the_write_token_makes_a_session_cookie_not_holding_the_token(
    page: Browser, console: Console
) -> None:
    login(page, console, WRITE_TOKEN)
    cookie = page.driver.get_cookie("lifelong_session")
    assert cookie is not None, page.driver.get_cookies()
    assert cookie["httpOnly"] and cookie["sameSite"] == "Strict" and cookie["path"] == "/ui", cookie
    assert WRITE_TOKEN not in cookie["value"] and WRITE_TOKEN not in page.driver.page_source
    assert "operator (write)" in page.find("header").text


def test_the_jobs_page_shows_what_the_api_says(page: Browser, console: Console) -> None:
    show(page, "/ui/jobs", "jobs")
    items = console.gm.api("GET", "/api/v1/LifelongLearningJob")["items"]
    shown = by(rows(page, "#jobs tr[data-job]"), "data-job")
    assert sorted(shown) == sorted(f"{j['metadata']['namespace']}/{j['metadata']['name']}" for j in items)
    job = console.job()
    conds = job["status"]["conditions"]
    fields = shown[KEY]["fields"]
    assert (fields["stage"], fields["state"]) == (conds[-1]["stage"], conds[-1]["type"]), fields
    assert fields["round"] == str(current_round(job_conditions(conds))) == "1", fields
    assert fields["nodes"].split(",") == [NODE], fields
    assert fields["changed"] == conds[-1]["lastTransitionTime"], fields
    link = page.find(f'#jobs tr[data-job="{KEY}"] a[href="/ui/jobs/{KEY}"]')
    shot(page, "jobs")
    link.click()
    page.wait(lambda: page.has('main#content[data-page="job"]'), "the job's page")
    assert page.path() == f"/ui/jobs/{KEY}"


def lanes(conds: list[dict[str, Any]]) -> list[tuple[int, str, str]]:
    """(round, stage, type) of each condition, rounds counted as ``lifelong describe`` does."""
    out, rnd = [], 0
    for raw, cond in zip(conds, job_conditions(conds), strict=True):
        rnd += starts_round(cond)
        out.append((rnd, raw["stage"], raw["type"]))
    return out


TIMELINE_JS = """
return Array.from(document.querySelectorAll('#timeline g[data-round]')).flatMap(function (g) {
  return Array.from(g.querySelectorAll('rect[data-stage]')).map(function (r) {
    return [parseInt(g.dataset.round, 10), r.dataset.stage, r.dataset.type];
  });
});
"""


def timeline(page: Browser) -> list[tuple[int, str, str]]:
    return [(int(r), str(s), str(t)) for r, s, t in page.script(TIMELINE_JS)]


def test_the_job_page_shows_the_conditions_by_round_the_workers_and_the_kb_metrics(
    page: Browser, console: Console
) -> None:
    show(page, f"/ui/jobs/{KEY}", "job")
    conds = console.job()["status"]["conditions"]
    expected = [(rnd, stage.lower(), ctype) for rnd, stage, ctype in lanes(conds)]
    assert timeline(page) == expected
    summary = rows(page, "#job-summary")[0]["fields"]
    assert (summary["stage"], summary["state"], summary["round"]) == (
        conds[-1]["stage"],
        conds[-1]["type"],
        "1",
    )

    assert workers_shown(page) == workers_of(console)  # finished workers are gone at rest: none
    past = past_shown(page)
    assert past == past_of(console), (past, past_of(console))
    assert past[f"{JOB}-train-1"] == ("Train", "1", "Succeeded") and past[f"{JOB}-eval-1"][2] == "Succeeded"
    assert page.has(f'a[href="/ui/kb/{KEY}"]') and page.has(f'a[href="/ui/unseen/{KEY}"]')

    plotted = cells(rows(page, "#metrics-plot circle[data-round]"))
    assert {task for _, task in plotted} == {"cam-a", "cam-b", "cam-c"}, plotted
    assert_matrix(plotted, r_matrix(console.kb("metrics")))


def workers_of(console: Console) -> dict[str, tuple[str, str, str]]:
    """The job's workers as the API describes them: name -> (stage, phase, node)."""
    described = console.gm.api("GET", f"/api/v1/describe/LifelongLearningJob/{NS}/{JOB}")
    return {
        w["metadata"]["name"]: (
            w["spec"]["stage"],
            (w.get("status") or {}).get("phase") or "",
            w["spec"]["template"]["spec"]["nodeName"],
        )
        for w in described["workers"]
    }


PHASES = {"Completed": "Succeeded", "Failed": "Failed"}


def past_of(console: Console) -> dict[str, tuple[str, str, str]]:
    """The job's earlier workers as the API tells of them: name -> (stage, round, phase). A stage
    that started in a round (Starting, Running, Completed or Failed) had its worker
    ``{job}-{stage}-{round}`` (``-retry{n}`` for a retry), ended by its last condition; and each
    worker that posted a report (``workerInfo``); less the Worker objects there are now."""
    described = console.gm.api("GET", f"/api/v1/describe/LifelongLearningJob/{NS}/{JOB}")
    conds = described["object"]["status"]["conditions"]
    out: dict[str, list[str]] = {}
    tries: dict[tuple[int, str], int] = {}
    for (rnd, stage, kind), raw in zip(lanes(conds), conds, strict=True):
        if kind == "Ready":
            tries[(rnd, stage)] = tries.get((rnd, stage), 1) + 1 if raw.get("reason") == "Retry" else 1
        n = tries.get((rnd, stage), 1)
        name = f"{JOB}-{stage.lower()}-{rnd}" + (f"-retry{n - 1}" if n > 1 else "")
        if kind in ("Starting", "Running", "Completed", "Failed") and rnd > 0:
            out.setdefault(name, [stage, str(rnd), ""])[2] = PHASES.get(kind, kind)
    for name in described.get("workerInfo") or {}:
        stage, rnd = name[len(JOB) + 1 :].split("-")[:2]
        out.setdefault(name, [stage.capitalize(), rnd, ""])
    current = {w["metadata"]["name"] for w in described["workers"]}
    return {name: (v[0], v[1], v[2]) for name, v in out.items() if name not in current}


def past_shown(page: Browser) -> dict[str, tuple[str, str, str]]:
    shown = by(rows(page, "#past-workers tr[data-worker]"), "data-worker")
    for name in shown:
        assert page.has(
            f'#past-workers tr[data-worker="{name}"] a[data-log][href="/ui/workers/{NS}/{name}/log"]'
        )
    return {n: (r["fields"]["stage"], r["fields"]["round"], r["fields"]["phase"]) for n, r in shown.items()}


def workers_shown(page: Browser) -> dict[str, tuple[str, str, str]]:
    shown = by(rows(page, "#workers tr[data-worker]"), "data-worker")
    for name in shown:
        assert page.has(f'#workers tr[data-worker="{name}"] a[data-log][href="/ui/workers/{NS}/{name}/log"]')
    return {n: (r["fields"]["stage"], r["fields"]["phase"], r["fields"]["node"]) for n, r in shown.items()}


def test_a_workers_log_page_shows_the_tail_its_node_gives(page: Browser, console: Console) -> None:
    worker = f"{JOB}-train-1"  # finished: the GM deleted its Worker, its node still has the log
    show(page, f"/ui/jobs/{KEY}", "job")
    page.click(f'#past-workers tr[data-worker="{worker}"] a[data-log]')  # listed among the earlier
    page.wait(lambda: page.has('main#content[data-page="log"]'), f"the log page of {worker}")
    assert page.path() == f"/ui/workers/{NS}/{worker}/log"
    text = page.find("pre#log").text
    api = console.gm.api("GET", f"/api/v1/Worker/{NS}/{worker}/log?tail=200")
    lines = [line.strip() for line in api["data"].splitlines() if line.strip()]
    assert lines and "train_accuracy" in lines[-1], api
    assert [line.strip() for line in text.splitlines() if line.strip()] == lines, text[-2000:]
    shot(page, "log")


def test_the_kb_pages_show_the_tasks_and_the_heat_map_of_the_kbs_metrics(
    page: Browser, console: Console
) -> None:
    show(page, "/ui/kb", "kb-index")
    page.click(f'#kb-jobs tr[data-job="{KEY}"] a[href="/ui/kb/{KEY}"]')
    page.wait(lambda: page.has('main#content[data-page="kb"]'), "the job's KB page")
    check_kb_page(page, console)


def check_kb_page(page: Browser, console: Console) -> dict[str, Any]:
    """The KB page against the KB's tasks and metrics; returns the task groups by entry."""
    tasks = console.kb("tasks")
    groups = {g["entry"]: g for g in tasks["taskGroups"]}
    shown_groups = by(rows(page, "#task-groups tr[data-group]"), "data-group")
    assert sorted(shown_groups) == sorted(groups)
    shown_tasks = by(rows(page, "#tasks tr[data-task]"), "data-task")
    expected = {t["entry"]: (entry, g, t) for entry, g in groups.items() for t in g["tasks"]}
    assert sorted(shown_tasks) == sorted(expected)
    for name, (entry, group, task) in expected.items():
        fields = shown_tasks[name]["fields"]
        assert fields["group"] == entry and fields["model"] == group["model"]["url"], (name, fields)
        assert fields["samples"] == str(task["samples"]), (name, fields, task)
        assert float(fields["score"]) == pytest.approx(group["model"]["metrics"]["accuracy"]), (name, fields)
    transfers = {
        (t["attrs"]["data-task"], t["attrs"]["data-from"]) for t in rows(page, "#transfers tr[data-task]")
    }
    assert transfers == {(e, g["transfer"]["from"]) for e, g in groups.items() if g.get("transfer")}
    assert_matrix(cells(rows(page, "#heatmap rect[data-round]")), r_matrix(console.kb("metrics")))
    return groups


def test_the_unseen_pages_show_the_kbs_samples(page: Browser, console: Console) -> None:
    show(page, "/ui/unseen", "unseen-index")
    index = by(rows(page, "#unseen-jobs tr[data-job]"), "data-job")
    assert index[KEY]["fields"]["unlabelled"] == str(UNSEEN), index
    page.click(f'#unseen-jobs tr[data-job="{KEY}"] a')
    page.wait(lambda: page.has('main#content[data-page="unseen"]'), "the job's unseen samples")
    api = console.samples("unlabelled")
    shown = by(rows(page, "#samples tr[data-sample]"), "data-sample")
    assert list(shown) == [s["id"] for s in api]  # in the order received
    for s in api:
        attrs = shown[s["id"]]["attrs"]
        assert attrs["data-node"] == s["node"] == NODE and attrs["data-label"] == "", attrs
        assert attrs["data-predicted"] == str(s["predicted"]), (attrs, s)
    assert len(rows(page, "form[data-label-one]")) == UNSEEN
    predicted = {str(s["predicted"]) for s in api}
    assert {f["attrs"]["data-label-predicted"] for f in rows(page, "form[data-label-predicted]")} == predicted
    shot(page, "unseen", tall=False)  # 100 samples: the first ones


def test_labelling_one_sample_and_then_a_predicted_class_through_the_page_reaches_the_kb(
    page: Browser, console: Console
) -> None:
    page.keep_on_load("lifelongFlash", "#flash")  # the flash as each page came (a live swap drops it)
    show(page, f"/ui/unseen/{KEY}", "unseen")

    def flash() -> str | None:
        found: str | None = page.script("return window.lifelongFlash || null;")
        return found

    first = console.samples("unlabelled")[0]
    truth = console.true_label(first)
    page.submit(f'form[data-label-one="{first["id"]}"]', "label", truth)
    assert page.wait(flash, "the page after labelling one sample") == "labelled 1"
    assert page.path().startswith(f"/ui/unseen/{KEY}")  # 303 back to the page
    labelled = {s["id"]: s for s in console.samples("all") if s.get("label") is not None}
    assert list(labelled) == [first["id"]] and str(labelled[first["id"]]["label"]) == truth, labelled

    # every unlabelled sample of the class most predicted, in one form
    left = console.samples("unlabelled")
    classes: dict[str, list[str]] = {}
    for s in left:
        classes.setdefault(str(s["predicted"]), []).append(s["id"])
    cls, ids = max(classes.items(), key=lambda item: len(item[1]))
    page.wait(
        lambda: not page.has(f'form[data-label-one="{first["id"]}"]'), "the labelled sample's form gone"
    )
    page.submit(f'form[data-label-predicted="{cls}"]', "label", "7")
    assert len(ids) > 1, classes
    page.wait(lambda: flash() != "labelled 1", "the page after labelling a class")
    assert flash() == f"labelled {len(ids)}"
    now = {s["id"]: s for s in console.samples("all")}
    assert all(now[i]["label"] == 7 and now[i]["state"] != "unlabelled" for i in ids), [now[i] for i in ids]
    assert sum(1 for s in now.values() if s.get("label") is not None) == 1 + len(ids)


def test_the_job_page_shows_round_2_start_without_a_reload(page: Browser, console: Console) -> None:
    show(page, f"/ui/jobs/{KEY}", "job", live=True)
    page.mark()
    version = page.find("#content").get_attribute("data-version")
    rest = console.samples("unlabelled")
    assert rest, "nothing left to label"
    body = {"labels": {s["id"]: int(console.true_label(s)) for s in rest}}
    console.gm.api("POST", f"/api/v1/namespaces/{NS}/lifelonglearningjobs/{JOB}/kb/labels", body)
    page.wait(
        lambda: any(rnd == 2 for rnd, _, _ in timeline(page)),
        "round 2's lane on the job page",
        timeout=120,
    )
    assert not page.reloaded(), "the page was reloaded, not updated"
    assert page.find("#content").get_attribute("data-version") != version
    summary = rows(page, "#job-summary")[0]["fields"]
    assert summary["round"] == "2", summary
    # round 2's workers come and go: the page follows the API (stage, phase, node of each)
    page.wait(
        lambda: (shown := workers_shown(page)) == workers_of(console) and shown,
        "round 2's workers on the job page as the API describes them",
        timeout=60,
    )


def test_the_kb_page_shows_round_2_and_the_transfer_without_a_reload(page: Browser, console: Console) -> None:
    show(page, f"/ui/kb/{KEY}", "kb", live=True)
    page.mark()
    page.wait(
        lambda: (
            any(r["attrs"]["data-task"] == "cam-c" for r in rows(page, "#transfers tr[data-task]"))
            and any(int(c["attrs"]["data-round"]) == 2 for c in rows(page, "#heatmap rect[data-round]"))
        ),
        "round 2's cells and the transfer to cam-c on the KB page",
        timeout=150,
    )
    assert not page.reloaded(), "the page was reloaded, not updated"
    # the job goes to rest (round 2 deployed) before the LC is stopped: no worker is left behind
    wait_for(
        history_follows(console.gm, [console.gm, console.lc], JOB, TWO_ROUNDS),
        timeout=150,
        interval=0.2,
        what=f"round 2 of {JOB}\n{console.lc.log_tail()}",
    )
    show(page, f"/ui/jobs/{KEY}", "job")
    assert max(rnd for rnd, _, _ in timeline(page)) == 2
    past = past_shown(page)  # both rounds' workers, their logs a click away
    assert past == past_of(console) and {f"{JOB}-train-2", f"{JOB}-eval-2", f"{JOB}-train-1"} <= set(past)
    shot(page, "job")
    show(page, f"/ui/kb/{KEY}", "kb")
    shot(page, "kb")
    groups = check_kb_page(page, console)
    assert groups["cam-c"]["transfer"]["from"] == "cam-b"


def test_the_nodes_page_shows_the_nodes_and_the_lc_going_offline_without_a_reload(
    page: Browser, console: Console
) -> None:
    show(page, "/ui/nodes", "nodes")
    api = {n["node"]: n for n in console.gm.api("GET", "/api/v1/nodes")["items"]}
    shown = by(rows(page, "#nodes tr[data-node]"), "data-node")
    assert sorted(shown) == sorted(api) == [NODE]
    row, node = shown[NODE], api[NODE]
    assert row["attrs"]["data-online"] == "true" and row["fields"]["online"] == "online", row
    assert row["fields"]["outbox"] == str(node["outbox"]["depth"]), (row, node)
    assert row["fields"]["unacked"] == str(node["unacked"]), (row, node)
    assert row["fields"]["jobs"] == "1", row
    hello = page.find(f'#nodes tr[data-node="{NODE}"] [data-field="lastHello"]').get_attribute("data-value")
    assert float(hello) == pytest.approx(node["lastHello"], abs=60), (hello, node)  # hellos go on
    assert not page.has("form[data-delete-node]")  # an online node cannot be deleted
    shot(page, "nodes")

    show(page, "/ui/nodes", "nodes", live=True)
    page.mark()
    console.lc.kill()
    killed = time.monotonic()
    deadline = 1.5 * KEEPALIVE + 3
    page.wait(
        lambda: rows(page, f'#nodes tr[data-node="{NODE}"]')[0]["attrs"]["data-online"] == "false",
        f"{NODE} offline on the nodes page within {deadline:.1f}s",
        timeout=deadline,
    )
    took = time.monotonic() - killed
    assert not page.reloaded(), "the page was reloaded, not updated"
    assert page.has(f'form[data-delete-node="{NODE}"]')  # a write session may now forget it
    print(f"{NODE} shown offline {took:.1f}s after it was killed (keepalive {KEEPALIVE}s)")
    assert console.gm.api("GET", "/api/v1/nodes")["items"][0]["online"] is False


def test_every_page_opened_one_after_another_goes_live(page: Browser, console: Console) -> None:
    """A page left behind gives its place among the live streams (at most 8) back: going through
    all the pages, twice, each one connects."""
    pages = [
        ("/ui/jobs", "jobs"),
        (f"/ui/jobs/{KEY}", "job"),
        ("/ui/kb", "kb-index"),
        (f"/ui/kb/{KEY}", "kb"),
        ("/ui/unseen", "unseen-index"),
        (f"/ui/unseen/{KEY}", "unseen"),
        ("/ui/nodes", "nodes"),
    ]
    for path, name in pages * 2:
        show(page, path, name, live=True)


def _stream(console: Console) -> socket.socket | None:
    """A ``/ui/events`` stream held open on a plain socket (a page left open elsewhere); None
    when the GM refuses it (503: every place taken)."""
    host, port = urllib.parse.urlsplit(console.gm.server).netloc.split(":")
    sock = socket.create_connection((host, int(port)), timeout=10)
    head = f"GET /ui/events HTTP/1.1\r\nHost: {host}:{port}\r\nAuthorization: Bearer {READ_TOKEN}\r\n"
    sock.sendall(f"{head}\r\n".encode())
    answer = b""
    while b"\r\n" not in answer:
        chunk = sock.recv(4096)
        if not chunk:
            break
        answer += chunk
    if answer.startswith(b"HTTP/1.1 200"):
        return sock
    sock.close()
    assert answer.startswith(b"HTTP/1.1 503"), answer[:200]
    return None


def test_a_page_refused_its_stream_connects_once_a_place_is_free_and_misses_nothing(
    page: Browser, console: Console
) -> None:
    """Every place among the live streams taken (by streams this test holds): a page opened then
    is refused (503), says ``lost``, and keeps trying; once the places are free it goes live by
    itself, without a reload, and shows what changed meanwhile (the offline node deleted)."""
    page.open("about:blank")  # the console's pages left: their streams end at their keepalives
    held: list[socket.socket] = []
    with contextlib.ExitStack() as stack:
        stack.callback(lambda: [s.close() for s in held])
        refused_since = [time.monotonic()]

        def full() -> bool:  # refused for 6 s: the pages left behind have given their places back
            found = _stream(console)
            if found is not None:
                held.append(found)
                refused_since[0] = time.monotonic()
            return time.monotonic() - refused_since[0] > 6

        wait_for(full, timeout=60, interval=0.2, what="every stream's place held")
        show(page, "/ui/nodes", "nodes")
        page.wait(lambda: page.find("#live").get_attribute("data-state") == "lost", "the page refused")
        page.mark()
        assert page.has(f'#nodes tr[data-node="{NODE}"][data-online="false"]')
        console.gm.api("DELETE", f"/api/v1/nodes/{NODE}")  # while the page hears nothing
        for sock in held:
            sock.close()
    page.wait(lambda: is_live(page), "the page live once places are free", timeout=30)
    page.wait(lambda: not page.has(f'#nodes tr[data-node="{NODE}"]'), "the deleted node gone from the page")
    assert not page.reloaded(), "the page was reloaded, not updated"
