"""The scenarios, run against one broker: lifelong's figure and raw paho-mqtt's, same run.

``run_broker`` starts the broker and a real GM (``lifelong gm``, SQLite store), then runs
the scenarios in an order that reuses what the previous one set up. Every wait is bounded;
a scenario that fails or times out is recorded with its error and the run goes on.
"""

from __future__ import annotations

import json
import logging
import os
import sqlite3
import statistics
import subprocess
import sys
import time
import traceback
from collections.abc import Callable
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass
from pathlib import Path
from typing import Any, TypeAlias

import httpx

from benchmarks import raw
from benchmarks.infra import (
    GM,
    LC,
    PREFIX,
    BenchTimeout,
    Broker,
    RssSampler,
    Spy,
    context_switches,
    cpu_seconds,
    memory_rollup,
    rss_mb,
    wait_for,
)
from benchmarks.sim import fanout, fanout_client
from benchmarks.simpool import SimPool
from lifelong.common.codec import decode, encode
from lifelong.common.envelope import Envelope, Op
from lifelong.edge.db import Store
from lifelong.edge.outbox import Outbox

log = logging.getLogger("benchmarks")
NODE = "bench-0"
JOB = "LifelongLearningJob"
DRAIN_JOB = "job-drain"
NODE_APPLY_CLIENTS = 16
"""Concurrent HTTP clients applying the many-nodes scenario's Datasets and jobs."""


@dataclass(frozen=True)
class Config:
    name: str
    downstream_jobs: int
    upstream_reports: int
    latency_samples: int
    nodes: int  # simulated nodes on mosquitto
    backlog: int
    idle_seconds: float
    timeout: float  # for each bounded wait of a scenario
    reps: int = 1  # downstream and upstream: runs of each (lifelong and raw); the median is reported
    concurrent_applies: int = 2000  # the "applies" scenario: jobs applied by APPLY_CLIENTS threads
    nodes_embedded: int = 0  # simulated nodes on the embedded broker (amqtt); 0: as many as ``nodes``


CONFIGS = {
    "full": Config("full", 500, 5000, 200, 10_000, 100_000, 30.0, 240.0, reps=3, nodes_embedded=1000),
    "quick": Config("quick", 50, 500, 30, 100, 3000, 5.0, 30.0, concurrent_applies=400),
    "tiny": Config("tiny", 5, 20, 5, 5, 50, 0.5, 60.0, concurrent_applies=16),
}
LATENCY_P99_MS = 5.0
"""apply -> LC stored and report -> GM stored, p99 on mosquitto (docs/performance.md, "Targets")."""
LATENCY_TARGET = "p99 <= 5 ms"

SCENARIOS = ("latency", "footprint", "downstream", "applies", "upstream", "backlog", "many-nodes", "storm")
APPLY_CLIENTS = 8
"""Threads applying at once in the "applies" scenario, each with its own keep-alive connection."""


# -- resources ----------------------------------------------------------------------------------
def dataset_obj(name: str, node: str, path: Path) -> dict[str, Any]:
    return {
        "apiVersion": "sedna.io/v1alpha1",
        "kind": "Dataset",
        "metadata": {"name": name, "namespace": "default"},
        "spec": {"url": str(path), "format": "csv", "nodeName": node},
    }


def job_obj(name: str, ds: str, node: str) -> dict[str, Any]:
    """A job whose trigger never fires (threshold 10**9): it stays Train/Waiting, quietly."""

    def template(role: str) -> dict[str, Any]:
        return {
            "spec": {"nodeName": node, "containers": [{"name": role, "image": "bench", "command": ["true"]}]}
        }

    return {
        "apiVersion": "sedna.io/v1alpha1",
        "kind": JOB,
        "metadata": {"name": name, "namespace": "default"},
        "spec": {
            "dataset": {"name": ds, "trainProb": 0.8},
            "trainSpec": {
                "template": template("train"),
                "trigger": {
                    "checkPeriodSeconds": 60,
                    "condition": {"operator": ">", "threshold": 1_000_000_000, "metric": "num_of_samples"},
                },
            },
            "evalSpec": {"template": template("eval")},
            "deploySpec": {"template": template("deploy")},
            "outputDir": "/tmp/lifelong-bench-output",
        },
    }


def pct(values: list[float], q: float) -> float:
    if not values:
        return float("nan")
    ordered = sorted(values)
    return ordered[min(len(ordered) - 1, max(0, round(q * (len(ordered) - 1))))]


Stages: TypeAlias = dict[str, list[float]]
"""Seconds from a latency sample's request to a point on its way, by the point's name."""


def stage_p50s(stages: Stages) -> dict[str, float]:
    """The median of each stage, in ms from the request (where the latency goes)."""
    return {name: pct([s * 1000 for s in seconds], 0.5) for name, seconds in stages.items()}


def seen_at(spy: Spy, since: int, match: Callable[[str, bytes], bool]) -> float | None:
    """When the spy first saw a message ``match`` takes, since ``since``; None if it did not."""
    return next((t for t, topic, payload in spy.since(since) if match(topic, payload)), None)


def lat_summary(seconds: list[float]) -> dict[str, float]:
    ms = [s * 1000 for s in seconds]
    return {"p50": pct(ms, 0.5), "p99": pct(ms, 0.99), "max": max(ms, default=float("nan")), "n": len(ms)}


def row(
    lifelong: float | None,
    raw_value: float | None,
    unit: str,
    *,
    higher_is_better: bool,
    target: str = "",
    met: bool | None = None,
    extra: dict[str, Any] | None = None,
) -> dict[str, Any]:
    ratio = None
    if lifelong is not None and raw_value:
        ratio = lifelong / raw_value
    return {
        "lifelong": lifelong,
        "raw": raw_value,
        "unit": unit,
        "ratio": ratio,
        "higher_is_better": higher_is_better,
        "target": target,
        "met": met,
        "extra": extra or {},
    }


# -- the spy's view: acks from the LC -------------------------------------------------------------
def acked_names(spy: Spy, since: int, kind: str) -> dict[str, float]:
    """name -> the first time an ``ack`` from an LC named it (on up/_ctl)."""
    out: dict[str, float] = {}
    for t, topic, payload in spy.since(since):
        if not topic.endswith("/up/_ctl"):
            continue
        env = decode(payload)
        if env.op is Op.ACK:
            for a in (env.body or {}).get("applied") or []:
                if a.get("kind") == kind and a.get("name") not in out:
                    out[a["name"]] = t
    return out


def hello_time(spy: Spy, since: int, node: str) -> float | None:
    return seen_at(
        spy,
        since,
        lambda topic, payload: topic.endswith(f"/node/{node}/up/_ctl") and decode(payload).op is Op.HELLO,
    )


class BrokerRun:
    def __init__(self, kind: str, cfg: Config, workdir: Path, only: set[str]) -> None:
        self.kind = kind
        self.cfg = cfg
        self.workdir = workdir
        self.only = only
        self.results: dict[str, Any] = {}
        self.broker = Broker(kind, workdir)
        self.gm: GM | None = None
        self.lc: LC | None = None
        self.spy: Spy | None = None
        self.sim: SimPool | None = None
        self.data = workdir / "data.csv"
        self.data.write_text("a,b,label\n" + "".join(f"{i},{i * 2},{i % 2}\n" for i in range(100)))

    def want(self, name: str) -> bool:
        return not self.only or name in self.only

    def record(self, name: str, fn: Any) -> None:
        t0 = time.monotonic()
        print(f"  [{self.kind}] {name} ...", end="", flush=True)
        try:
            fn()
            print(f" done in {time.monotonic() - t0:.1f}s", flush=True)
        except Exception as exc:
            print(f" FAILED: {exc}", flush=True)
            log.debug("%s", traceback.format_exc())
            self.results.setdefault(name, {})["error"] = f"{type(exc).__name__}: {exc}"

    # -- set-up ---------------------------------------------------------------------------------
    def run(self) -> dict[str, Any]:
        self.broker.start()
        try:
            self.gm = GM(self.workdir, self.broker.url)
            self.gm.start()
            self.gm.wait_ready()
            self.spy = Spy(self.broker.port, [f"{PREFIX}/node/+/up/_ctl"])
            self.lc = LC(self.workdir, NODE, self.broker.url)
            self.lc.start()
            self.gm.wait_online(NODE)
            self.gm.apply(dataset_obj("ds-0", NODE, self.data))
            self.gm.apply(job_obj(DRAIN_JOB, "ds-0", NODE))  # the job the drained reports are about
            if self.want("latency"):
                self.record("latency", self.latency)
            if self.want("footprint"):
                self.record("footprint", self.footprint)
            if self.want("downstream"):
                self.record("downstream", self.downstream)
            if self.want("applies"):
                self.record("applies", self.applies)
            if self.want("upstream"):
                reports, reps = self.cfg.upstream_reports, self.cfg.reps
                self.record("upstream", lambda: self.drain("upstream", reports, reps))
            if self.want("backlog"):
                self.record("backlog", lambda: self.drain("backlog", self.cfg.backlog))
            self.lc.terminate()
            self.spy.close()
            self.spy = None
            if self.want("many-nodes") or self.want("storm"):
                self.record("many-nodes", self.many_nodes)
            if self.want("storm") and self.sim is not None:
                self.record("storm", self.storm)
        finally:
            if self.sim is not None:
                self.sim.stop()
            if self.spy is not None:
                self.spy.close()
            for p in (self.lc, self.gm):
                if p is not None:
                    p.terminate()
            self.broker.stop()
        return self.results

    # -- latency --------------------------------------------------------------------------------
    def latency(self) -> None:
        gm, lc, spy = self.gm, self.lc, self.spy
        assert gm is not None and lc is not None and spy is not None
        m = self.cfg.latency_samples
        apply_lat: list[float] = []
        apply_stages: Stages = {"answered": [], "on the bus": []}
        size = 0
        down_filters = [f"{PREFIX}/node/{NODE}/down/{JOB}/#"]  # where the GM's upserts go
        spy.add(down_filters)
        for i in range(m):
            name = f"job-lat-{i}"
            mark = spy.mark()
            t0 = time.monotonic()
            stored = gm.apply(job_obj(name, "ds-0", NODE))["object"]
            answered = time.monotonic()
            t1 = wait_for(
                lambda name=name, mark=mark: acked_names(spy, mark, JOB).get(name),
                timeout=self.cfg.timeout,
                what=f"the LC to ack {name}",
            )
            apply_lat.append(t1 - t0)
            apply_stages["answered"].append(answered - t0)
            upserted = wait_for(  # seen by now, or just after the ack if the broker reordered them
                lambda name=name, mark=mark: seen_at(spy, mark, lambda topic, _p: topic.endswith(f"/{name}")),
                timeout=self.cfg.timeout,
                what=f"the GM's upsert of {name} on the bus",
            )
            apply_stages["on the bus"].append(upserted - t0)
            if not size:
                size = len(self._upsert_payload(stored))
        spy.remove(down_filters)
        raw_apply = raw.latency(self.broker.port, m, size)
        a, r = lat_summary(apply_lat), lat_summary(raw_apply)
        target = LATENCY_TARGET if self.kind == "mosquitto" else "(target is for mosquitto)"
        self.results["latency-apply"] = row(
            a["p99"],
            r["p99"],
            "ms p99",
            higher_is_better=False,
            target=target,
            met=(a["p99"] <= LATENCY_P99_MS) if self.kind == "mosquitto" else None,
            extra={"lifelong": a, "raw": r, "payload_bytes": size, "stages": stage_p50s(apply_stages)},
        )
        # report -> GM has stored it: a worker posts to the LC's worker API (workerInfo report).
        job = "job-lat-0"
        extra_filters = [f"{PREFIX}/node/{NODE}/up/{JOB}/default/{job}", f"{PREFIX}/node/{NODE}/down/_ctl"]
        spy.add(extra_filters)
        report_lat: list[float] = []
        report_stages: Stages = {"answered": [], "on the bus": []}
        rsize = 0
        for i in range(m):
            mark = spy.mark()
            t0 = time.monotonic()
            lc.post_info(f"{job}-train-1", {"ownerName": job, "namespace": "default", "marker": i})
            answered = time.monotonic()
            reported: list[float] = []

            def acked(mark: int = mark, i: int = i, reported: list[float] = reported) -> float | None:
                seq = None
                for t, _topic, payload in spy.since(mark):
                    env = decode(payload)
                    if env.op is Op.REPORT and ((env.body or {}).get("info") or {}).get("marker") == i:
                        seq = env.seq
                        reported[:] = [t]
                        nonlocal rsize
                        rsize = len(payload)
                    elif seq is not None and env.op is Op.ACK and seq in ((env.body or {}).get("seqs") or []):
                        return t
                return None

            t1 = wait_for(acked, timeout=self.cfg.timeout, what=f"the GM to ack report {i}")
            report_lat.append(t1 - t0)
            report_stages["answered"].append(answered - t0)
            report_stages["on the bus"].append(reported[0] - t0)
        spy.remove(extra_filters)
        raw_report = raw.latency(self.broker.port, m, rsize or 200)
        a, r = lat_summary(report_lat), lat_summary(raw_report)
        self.results["latency-report"] = row(
            a["p99"],
            r["p99"],
            "ms p99",
            higher_is_better=False,
            target=LATENCY_TARGET if self.kind == "mosquitto" else "(target is for mosquitto)",
            met=(a["p99"] <= LATENCY_P99_MS) if self.kind == "mosquitto" else None,
            extra={"lifelong": a, "raw": r, "payload_bytes": rsize, "stages": stage_p50s(report_stages)},
        )

    def _upsert_payload(self, obj: dict[str, Any]) -> bytes:
        meta = obj["metadata"]
        env = Envelope.new(
            node=NODE,
            kind=obj["kind"],
            ns=meta.get("namespace", "default"),
            name=meta["name"],
            op=Op.UPSERT,
            rv=str(meta.get("resourceVersion")),
            body={"object": obj},
        )
        return encode(env)

    # -- footprint ------------------------------------------------------------------------------
    def footprint(self) -> None:
        lc, gm = self.lc, self.gm
        assert lc is not None and gm is not None
        time.sleep(0.5)  # a benchmark measures an idle period: this is the period's start margin
        c0, w0, t0 = cpu_seconds(lc.pid), context_switches(lc.pid), time.monotonic()
        with RssSampler(lc.pid, 0.1) as sampler:
            time.sleep(self.cfg.idle_seconds)
        took = time.monotonic() - t0
        cpu = (cpu_seconds(lc.pid) - c0) / took * 100
        wakeups = (context_switches(lc.pid) - w0) / took
        lc_rss = statistics.mean(m for _t, m in sampler.samples)
        shares = memory_rollup(lc.pid)
        raw_rss = raw_client_rss(self.broker.port)
        self.results["footprint-lc"] = row(
            lc_rss,
            raw_rss,
            "MiB RSS",
            higher_is_better=False,
            target="<= 40 MiB, idle CPU < 0.5 %",
            met=lc_rss <= 40.0 and cpu < 0.5,
            extra={
                "lc_idle_cpu_percent": cpu,
                "idle_seconds": self.cfg.idle_seconds,
                "lc_pss_mib": shares.get("Pss"),
                "lc_uss_mib": shares.get("Uss"),
                "lc_wakeups_per_s": wakeups,
                "gm_rss_1_node": rss_mb(gm.pid),
            },
        )

    # -- downstream -----------------------------------------------------------------------------
    def downstream(self) -> None:
        gm, lc, spy = self.gm, self.lc, self.spy
        assert gm is not None and lc is not None and spy is not None
        k = self.cfg.downstream_jobs
        # 1. delivery: K jobs applied while the LC is down, sent by the GM in answer to its hello.
        rates: list[float] = []
        raw_rates: list[float] = []
        # CPU time per job, microseconds: less sensitive to a loaded machine than the rates
        # (the GM's from the LC's start to the last ack, the LC's own start-up excluded).
        gm_cpu: list[float] = []
        broker_cpu: list[float] = []
        lc_cpu: list[float] = []  # from its hello (its start-up done) to the last ack
        for r in range(self.cfg.reps):
            lc.terminate()
            t0 = time.monotonic()
            stored = {}
            for i in range(k):
                stored = gm.apply(job_obj(f"job-b{r}-{i}", "ds-0", NODE))["object"]
            apply_rate = k / (time.monotonic() - t0)
            size = len(self._upsert_payload(stored))
            time.sleep(0.5)  # let the GM finish the jobs' first conditions (status rv) before the LC is back
            mark = spy.mark()
            gm_cpu0, broker_cpu0 = cpu_seconds(gm.pid), cpu_seconds(self.broker.pid)
            lc.start()
            names = {f"job-b{r}-{i}" for i in range(k)}
            hello = wait_for(
                lambda mark=mark: hello_time(spy, mark, NODE),
                timeout=self.cfg.timeout,
                what="the LC's hello",
                interval=0.005,
            )
            lc_cpu0 = cpu_seconds(lc.pid)
            wait_for(
                lambda names=names, mark=mark: names <= set(acked_names(spy, mark, JOB)),
                timeout=self.cfg.timeout,
                what="the LC to ack every job",
                interval=0.05,
            )
            gm_cpu.append((cpu_seconds(gm.pid) - gm_cpu0) / k * 1e6)
            broker_cpu.append((cpu_seconds(self.broker.pid) - broker_cpu0) / k * 1e6)
            lc_cpu.append((cpu_seconds(lc.pid) - lc_cpu0) / k * 1e6)
            acks = acked_names(spy, mark, JOB)
            rates.append(k / (max(acks[n] for n in names) - hello))
            raw_rates.append(raw.throughput(self.broker.port, k, size))
        rate, raw_rate = statistics.median(rates), statistics.median(raw_rates)
        self.results["downstream"] = row(
            rate,
            raw_rate,
            "msg/s",
            higher_is_better=True,
            target=">= 0.9 of raw",
            met=rate / raw_rate >= 0.9,
            extra={
                "payload_bytes": size,
                "jobs": k,
                "measured": "LC hello -> last job acked (stored)",
                "runs": len(rates),
                "lifelong_runs": rates,
                "raw_runs": raw_rates,
                "gm_cpu_us_per_job": statistics.median(gm_cpu),
                "broker_cpu_us_per_job": statistics.median(broker_cpu),
                "lc_cpu_us_per_job": statistics.median(lc_cpu),
            },
        )
        # 2. end to end, LC online: apply over HTTP -> GM -> LC stored (the apply path included).
        mark = spy.mark()
        t0 = time.monotonic()
        for i in range(k):
            gm.apply(job_obj(f"job-o-{i}", "ds-0", NODE))
        e2e = self._rate_to_last_ack({f"job-o-{i}" for i in range(k)}, mark, t0, self.cfg.timeout)
        extra = {"apply_rate_lc_offline": apply_rate, "measured": "first HTTP apply -> last job acked"}
        self.results["downstream-e2e"] = row(e2e, raw_rate, "jobs/s", higher_is_better=True, extra=extra)

    def _rate_to_last_ack(self, names: set[str], mark: int, t0: float, timeout: float) -> float:
        """Jobs a second from ``t0`` until the LC has acknowledged every job of ``names``."""
        spy = self.spy
        assert spy is not None
        wait_for(
            lambda: names <= set(acked_names(spy, mark, JOB)),
            timeout=timeout,
            what="the LC to ack every job",
            interval=0.05,
        )
        acks = acked_names(spy, mark, JOB)
        return len(names) / (max(acks[x] for x in names) - t0)

    # -- concurrent applies ---------------------------------------------------------------------
    def _apply_concurrently(self, names: list[str]) -> float:
        """Apply a job for each of ``names`` from ``APPLY_CLIENTS`` threads; seconds it took."""
        gm = self.gm
        assert gm is not None
        base = f"http://127.0.0.1:{gm.api_port}"
        shares = [names[i::APPLY_CLIENTS] for i in range(APPLY_CLIENTS)]

        def client(share: list[str]) -> None:
            with httpx.Client(base_url=base, timeout=30) as c:
                for name in share:
                    answer = c.post("/api/v1/apply", json=job_obj(name, "ds-0", NODE))
                    answer.raise_for_status()

        t0 = time.monotonic()
        with ThreadPoolExecutor(APPLY_CLIENTS) as pool:
            for future in [pool.submit(client, share) for share in shares]:
                future.result()
        return time.monotonic() - t0

    def _delete_concurrently(self, names: list[str]) -> None:
        """Delete the jobs named and wait until the LC acknowledged every delete: the scenarios
        after this one restart the LC, and thousands of jobs left from here would lengthen every
        hello, diff and sync they wait for (a hello that large goes in parts, docs/protocol.md)."""
        gm, spy = self.gm, self.spy
        assert gm is not None and spy is not None
        base = f"http://127.0.0.1:{gm.api_port}"
        mark = spy.mark()

        def client(share: list[str]) -> None:
            with httpx.Client(base_url=base, timeout=30) as c:
                for name in share:
                    c.delete(f"/api/v1/LifelongLearningJob/default/{name}").raise_for_status()

        with ThreadPoolExecutor(APPLY_CLIENTS) as pool:
            for future in [pool.submit(client, names[i::APPLY_CLIENTS]) for i in range(APPLY_CLIENTS)]:
                future.result()
        wait_for(
            lambda: set(names) <= set(acked_names(spy, mark, JOB)),
            timeout=self.cfg.timeout * 4,
            what="the LC to drop the jobs of the applies scenario",
            interval=0.1,
        )

    def applies(self) -> None:
        """Jobs applied over HTTP by ``APPLY_CLIENTS`` concurrent clients: applies/s with the LC
        offline (the API and the store alone), then first apply -> last job stored by the LC
        (acknowledged) with it online."""
        lc, spy = self.lc, self.spy
        assert lc is not None and spy is not None
        n = self.cfg.concurrent_applies
        lc.terminate()
        gm = self.gm
        assert gm is not None
        cpu0 = cpu_seconds(gm.pid)
        alone = n / self._apply_concurrently([f"job-c-off-{i}" for i in range(n)])
        # the GM's CPU per apply (the API, the store, the job's first reconcile): with one
        # interpreter lock, 1 / this is the most applies a second the GM could take
        gm_cpu_ms = (cpu_seconds(gm.pid) - cpu0) / n * 1e3
        before = spy.mark()
        lc.start()
        names = [f"job-c-on-{i}" for i in range(n)]
        # every earlier job delivered first, so that only the new ones are measured
        wait_for(
            lambda: {f"job-c-off-{i}" for i in range(n)} <= set(acked_names(spy, before, JOB)),
            timeout=self.cfg.timeout * 4,
            what="the LC to hold the jobs applied while it was down",
            interval=0.1,
        )
        mark = spy.mark()
        t0 = time.monotonic()
        took = self._apply_concurrently(names)
        e2e = self._rate_to_last_ack(set(names), mark, t0, self.cfg.timeout * 4)
        self._delete_concurrently([f"job-c-off-{i}" for i in range(n)] + names)
        self.results["applies"] = row(
            alone,
            None,
            "applies/s",
            higher_is_better=True,
            target=">= 1,000 applies/s",
            met=alone >= 1000,
            extra={
                "jobs": n,
                "clients": APPLY_CLIENTS,
                "gm_cpu_ms_per_apply": gm_cpu_ms,
                "measured": "LC offline: first apply -> last answer",
            },
        )
        self.results["applies-e2e"] = row(
            e2e,
            None,
            "jobs/s",
            higher_is_better=True,
            target=">= 800 jobs/s",
            met=e2e >= 800,
            extra={
                "jobs": n,
                "clients": APPLY_CLIENTS,
                "apply_rate_lc_online": n / took,
                "measured": "LC online: first apply -> last job acked by the LC",
            },
        )

    # -- upstream and backlog -------------------------------------------------------------------
    def drain(self, name: str, n: int, reps: int = 1) -> None:
        """``n`` workerInfo reports queued in the LC's outbox while it is down, then drained;
        ``reps`` times (lifelong and raw), the medians reported."""
        runs = [self._drain_once(name, n) for _ in range(reps)]
        rate = statistics.median(r[0] for r in runs)
        raw_rate = statistics.median(r[1] for r in runs)
        extra = runs[-1][2]
        for key in [k for k in extra if k.endswith("_cpu_us_per_report")]:
            extra[key] = statistics.median(r[2][key] for r in runs)
        if reps > 1:
            extra.update(runs=reps, lifelong_runs=[r[0] for r in runs], raw_runs=[r[1] for r in runs])
        # upstream and the backlog's drain: 0.8 of raw each (docs/performance.md, "Targets")
        target: dict[str, Any] = {"target": ">= 0.8 of raw", "met": rate / raw_rate >= 0.8}
        self.results[name] = row(rate, raw_rate, "reports/s", higher_is_better=True, extra=extra, **target)

    def _drain_once(self, name: str, n: int) -> tuple[float, float, dict[str, Any]]:
        lc = self.lc
        assert lc is not None
        lc.terminate()
        db = lc.state_dir / "lc.db"
        store = Store(db, sync="normal")
        outbox = Outbox(store, max_depth=max(n + 1000, 100_000))
        body = {
            "event": "workerInfo",
            "worker": f"{DRAIN_JOB}-train-1",
            "info": {"ownerName": DRAIN_JOB, "namespace": "default", "marker": 0, "loss": 0.125},
        }
        data = json.dumps(body, separators=(",", ":"))
        now = time.time()
        with store.tx() as c:
            c.executemany(
                "INSERT INTO outbox (kind, ns, name, body, ckey, ts) VALUES (?,?,?,?,NULL,?)",
                ((JOB, "default", DRAIN_JOB, data, now) for _ in range(n)),
            )
        # What one more append costs with this backlog queued (the append counts the outbox).
        t0 = time.monotonic()
        appends = 50
        for _ in range(appends):
            outbox.append(JOB, "default", DRAIN_JOB, body)
        append_ms = (time.monotonic() - t0) / appends * 1000
        total = n + appends
        size = len(
            encode(
                Envelope.new(
                    node=NODE, kind=JOB, ns="default", name=DRAIN_JOB, op=Op.REPORT, seq=total, body=body
                )
            )
        )
        store.close()
        reader = sqlite3.connect(f"file:{db}?mode=ro", uri=True, timeout=30)

        def depth() -> int:
            return int(reader.execute("SELECT count(*) FROM outbox").fetchone()[0])

        lc.start()
        assert self.gm is not None
        pids = {"gm": self.gm.pid, "lc": lc.pid, "broker": self.broker.pid}
        interval = 0.02 if total < 10_000 else 0.1
        try:
            with RssSampler(lc.pid, 0.2) as sampler:
                first = wait_for(
                    lambda: depth() < total and time.monotonic(),
                    timeout=self.cfg.timeout,
                    what="the first ack",
                    interval=interval,
                )
                left_at_first = depth()
                cpu0 = {who: cpu_seconds(pid) for who, pid in pids.items()}
                end = wait_for(
                    lambda: depth() == 0 and time.monotonic(),
                    timeout=self.cfg.timeout + total / 100,
                    what=f"the outbox to drain ({total} reports)",
                    interval=interval,
                )
                cpu = {
                    who: (cpu_seconds(pid) - cpu0[who]) / max(left_at_first, 1) * 1e6
                    for who, pid in pids.items()
                }
        finally:
            reader.close()
        rate = left_at_first / max(end - first, 1e-6)
        raw_rate = raw.throughput(self.broker.port, total, size, timeout=60 + total / 1000)
        extra: dict[str, Any] = {
            "reports": total,
            "payload_bytes": size,
            "append_ms_at_depth": append_ms,
            "measured": "outbox depth polled in the LC's DB: first ack -> empty",
            "raw_lost": raw.LOST[0],
            # CPU time per report from the first ack to the empty outbox, microseconds
            **{f"{who}_cpu_us_per_report": us for who, us in cpu.items()},
        }
        if name == "backlog":
            extra["lc_rss_peak_mib"] = sampler.peak
            extra["lc_rss_samples"] = sampler.samples
        return rate, raw_rate, extra

    # -- many nodes and the reconnect storm -------------------------------------------------------
    def node_count(self) -> int:
        """Simulated nodes for this broker: the embedded amqtt broker is one Python process and
        takes a tenth of mosquitto's sessions in the same time, so it gets its own (smaller) size."""
        if self.broker.kind == "amqtt" and self.cfg.nodes_embedded:
            return self.cfg.nodes_embedded
        return self.cfg.nodes

    def many_nodes(self) -> None:
        gm = self.gm
        assert gm is not None
        n = self.node_count()
        timeout = self.cfg.timeout
        pub = fanout_client(self.broker.port)  # before the simulators: see fanout_client
        sim = SimPool(self.broker.port, n, label="sim")
        cpu0 = sim.cpu_seconds()
        t0 = time.monotonic()
        sim.start()
        try:
            with RssSampler(gm.pid, 0.5) as gm_rss:
                wait_for(
                    lambda: sim.synced() == n, timeout=timeout, what=f"{n} nodes to say hello", interval=0.1
                )
                t_hello = time.monotonic() - t0
                wait_for(lambda: len(gm.online()) >= n, timeout=timeout, what="the GM to list every node")
                t1 = time.monotonic()

                def apply_node(name: str) -> None:
                    gm.apply(dataset_obj(f"ds-{name}", name, self.data))
                    gm.apply(job_obj(f"job-{name}", f"ds-{name}", name))

                with ThreadPoolExecutor(NODE_APPLY_CLIENTS) as pool:
                    list(pool.map(apply_node, sim.names))
                t_applied = time.monotonic() - t1
                wait_for(
                    lambda: sim.holding(JOB) == n,
                    timeout=timeout,
                    what="every node to hold its job",
                    interval=0.1,
                )
                t_conv = time.monotonic() - t1
            wall = time.monotonic() - t0
            sim_cpu = sim.cpu_seconds() - cpu0
            gm_rss_now = rss_mb(gm.pid)
            machine = {
                "sim_processes": sim.processes,
                "sim_cpu_seconds": sim_cpu,
                # the simulator's share of the machine's cores over the scenario's wall time
                "sim_machine_share": sim_cpu / (wall * (os.cpu_count() or 1)),
            }
            hello_extra: dict[str, Any] = {"nodes": n, "measured": "connect+hello+sync", **machine}
            conv_extra: dict[str, Any] = {
                "nodes": n,
                "apply_seconds": t_applied,
                "apply_clients": NODE_APPLY_CLIENTS,
                "gm_rss_mib": gm_rss_now,
                "gm_rss_peak_mib": gm_rss.peak,
                "measured": "first HTTP apply -> every node holds its job (2 applies per node)",
                **machine,
            }

            def record(r_conn: float | None, r_fan: float | None) -> None:
                self.results["many-nodes-hello"] = row(
                    t_hello,
                    r_conn,
                    "s",
                    higher_is_better=False,
                    target="< 30 s",
                    met=t_hello < 30.0,
                    extra=hello_extra,
                )
                self.results["many-nodes"] = row(
                    t_conv,
                    r_fan,
                    "s",
                    higher_is_better=False,
                    target="< 30 s",
                    met=t_conv < 30.0,
                    extra=conv_extra,
                )

            # lifelong's figures first: a reference that fails leaves them with no raw column
            record(None, None)
            self.results["footprint-gm"] = row(
                gm_rss_now,
                None,
                "MiB RSS",
                higher_is_better=False,
                target="< 300 MiB" if n >= 10_000 else "",
                met=gm_rss.peak < 300.0 if n >= 10_000 else None,
                extra={"nodes": n, "peak_mib": gm_rss.peak},
            )
            # The reference: n raw clients connect + subscribe; then one message to each.
            rsim = SimPool(self.broker.port, n, mode="raw", label="raw")
            r0 = time.monotonic()
            rsim.start()
            r_conn: float | None = None
            r_fan: float | None = None
            try:
                wait_for(
                    lambda: rsim.subscribed() == n, timeout=timeout, what=f"{n} raw clients to subscribe"
                )
                r_conn = time.monotonic() - r0
                r1 = time.monotonic()
                fanout(pub, rsim.names, len(self._upsert_payload(job_obj("x", "y", "z"))) + 300)
                wait_for(lambda: rsim.received() == n, timeout=timeout, what="every raw client to receive")
                r_fan = time.monotonic() - r1
            except BenchTimeout as exc:  # lifelong's figures stand; the reference says what failed
                note = f"{exc} ({rsim.subscribed()} subscribed, {rsim.received()} received)"
                hello_extra["raw_error"] = conv_extra["raw_error"] = note
            finally:
                rsim.stop()
                pub.loop_stop()
                pub.disconnect()
            record(r_conn, r_fan)
        except BaseException:
            sim.stop()
            pub.loop_stop()
            raise
        self.sim = sim

    def storm(self) -> None:
        sim = self.sim
        assert sim is not None
        n = sim.count
        timeout = self.cfg.timeout
        sim.mark_hellos()
        self.broker.stop()
        self.broker.start()
        t0 = time.monotonic()
        try:
            wait_for(lambda: sim.resynced() == n, timeout=timeout, what=f"{n} nodes to resync", interval=0.1)
        except BenchTimeout as exc:
            raise BenchTimeout(
                f"{exc}: {sim.connected()} connected, {sim.said_hello_again()} said hello again, "
                f"{sim.synced()} in sync"
            ) from None
        t_storm = time.monotonic() - t0
        retried = sim.hello_retries()
        sim.stop()
        # The reference: n raw clients reconnect and resubscribe.
        rsim = SimPool(self.broker.port, n, mode="raw", label="raws")
        rsim.start()
        try:
            wait_for(lambda: rsim.subscribed() == n, timeout=timeout, what="raw clients to subscribe")
            self.broker.stop()
            self.broker.start()
            r0 = time.monotonic()
            wait_for(lambda: rsim.subscribed(2) == n, timeout=timeout, what="raw clients to resubscribe")
            r_storm = time.monotonic() - r0
        finally:
            rsim.stop()
        self.results["storm"] = row(
            t_storm,
            r_storm,
            "s",
            higher_is_better=False,
            target="< 30 s",
            met=t_storm < 30.0,
            extra={
                "nodes": n,
                "measured": "broker up again -> every node re-sent hello and is in sync",
                "hello_retries": retried,
            },
        )


def raw_client_rss(port: int) -> float:
    """RSS of a bare Python process holding one connected paho client, idle."""
    code = (
        "import sys, time, threading, paho.mqtt.client as m\n"
        "from paho.mqtt.enums import CallbackAPIVersion as V\n"
        "c = m.Client(V.VERSION2); ok = threading.Event(); c.on_connect = lambda *a: ok.set()\n"
        f"c.connect('127.0.0.1', {port}); c.loop_start(); ok.wait(10)\n"
        "print('ready', flush=True); sys.stdin.readline()\n"
    )
    proc = subprocess.Popen([sys.executable, "-c", code], stdin=subprocess.PIPE, stdout=subprocess.PIPE)
    try:
        assert proc.stdout is not None
        proc.stdout.readline()
        time.sleep(0.3)
        return rss_mb(proc.pid)
    finally:
        proc.kill()
        proc.wait(10)


def run_broker(kind: str, cfg: Config, workdir: Path, only: set[str]) -> dict[str, Any]:
    workdir.mkdir(parents=True, exist_ok=True)
    return BrokerRun(kind, cfg, workdir, only).run()
