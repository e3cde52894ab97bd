"""``python -m benchmarks``: run the scenarios on each broker, print tables, write JSON + PNGs."""

from __future__ import annotations

import argparse
import dataclasses
import datetime as dt
import json
import logging
import math
import os
import platform
import subprocess
import sys
import tempfile
import time
from pathlib import Path
from typing import Any

from benchmarks.infra import available_brokers, mosquitto_binary
from benchmarks.scenarios import CONFIGS, SCENARIOS, run_broker

RESULTS = Path(__file__).resolve().parent / "results"

ROWS = [
    ("downstream", "downstream delivery (hello diff -> LC stored)"),
    ("downstream-e2e", "downstream end to end (HTTP apply -> LC stored)"),
    ("applies", "HTTP applies, 8 concurrent clients (LC offline)"),
    ("applies-e2e", "HTTP applies, 8 concurrent clients -> LC stored"),
    ("upstream", "upstream (outbox -> GM applied -> acked)"),
    ("latency-apply", "latency apply -> LC stored"),
    ("latency-report", "latency report -> GM stored (acked)"),
    ("many-nodes-hello", "many nodes: connect + hello + sync"),
    ("many-nodes", "many nodes: apply a job per node -> all hold it"),
    ("storm", "reconnect storm: broker restart -> all in sync"),
    ("backlog", "backlog drain"),
    ("footprint-lc", "LC idle RSS"),
    ("footprint-gm", "GM RSS with many nodes"),
]


def machine() -> dict[str, Any]:
    info: dict[str, Any] = {
        "python": sys.version.split()[0],
        "platform": platform.platform(),
        "cpus": os.cpu_count(),
        "machine": platform.machine(),
    }
    try:
        for line in Path("/proc/cpuinfo").read_text().splitlines():
            if line.startswith("model name"):
                info["cpu"] = line.split(":", 1)[1].strip()
                break
        for line in Path("/proc/meminfo").read_text().splitlines():
            if line.startswith("MemTotal"):
                info["mem_gib"] = round(int(line.split()[1]) / 1024 / 1024, 1)
    except OSError:
        pass
    binary = mosquitto_binary()
    if binary:
        out = subprocess.run([binary, "-h"], capture_output=True, text=True, check=False)
        info["mosquitto"] = (out.stdout or out.stderr).splitlines()[0] if (out.stdout or out.stderr) else "?"
    try:
        from importlib.metadata import version

        info["paho-mqtt"] = version("paho-mqtt")
        info["amqtt"] = version("amqtt")
    except Exception:
        pass
    return info


def fmt(value: Any, unit: str = "") -> str:
    if value is None or (isinstance(value, float) and math.isnan(value)):
        return "-"
    if isinstance(value, float):
        if abs(value) >= 100:
            return f"{value:,.0f}"
        if abs(value) >= 10:
            return f"{value:.1f}"
        return f"{value:.2f}"
    return str(value)


def detail(key: str, r: dict[str, Any]) -> str:
    x = r.get("extra") or {}
    if key.startswith("latency"):
        a, b = x.get("lifelong") or {}, x.get("raw") or {}
        stages = ", ".join(f"{name} {fmt(ms)}" for name, ms in (x.get("stages") or {}).items())
        return (
            f"lifelong p50/p99/max {fmt(a.get('p50'))}/{fmt(a.get('p99'))}/{fmt(a.get('max'))} ms; "
            f"raw {fmt(b.get('p50'))}/{fmt(b.get('p99'))}/{fmt(b.get('max'))} ms"
            + (f"; p50 from the request: {stages}, acked {fmt(a.get('p50'))} ms" if stages else "")
        )
    if key == "footprint-lc":
        return (
            f"LC idle CPU {fmt(x.get('lc_idle_cpu_percent'))}% over {fmt(x.get('idle_seconds'))} s, "
            f"{fmt(x.get('lc_wakeups_per_s'))} wake-ups/s; PSS {fmt(x.get('lc_pss_mib'))} MiB, "
            f"USS {fmt(x.get('lc_uss_mib'))} MiB; raw = bare paho client process (RSS)"
        )
    if key == "backlog":
        return (
            f"{x.get('reports')} reports; LC peak RSS {fmt(x.get('lc_rss_peak_mib'))} MiB; "
            f"append at that depth {fmt(x.get('append_ms_at_depth'))} ms"
        )
    if key == "upstream":
        return (
            f"{x.get('reports')} reports of {x.get('payload_bytes')} B{_runs(x)}; CPU per report "
            f"GM {fmt(x.get('gm_cpu_us_per_report'))} LC {fmt(x.get('lc_cpu_us_per_report'))} "
            f"broker {fmt(x.get('broker_cpu_us_per_report'))} µs"
        )
    if key == "downstream":
        return (
            f"{x.get('jobs')} jobs of {x.get('payload_bytes')} B{_runs(x)}; CPU per job "
            f"GM {fmt(x.get('gm_cpu_us_per_job'))} LC {fmt(x.get('lc_cpu_us_per_job'))} "
            f"broker {fmt(x.get('broker_cpu_us_per_job'))} µs"
        )
    if key == "downstream-e2e":
        return f"HTTP apply alone (LC offline): {fmt(x.get('apply_rate_lc_offline'))} jobs/s"
    if key == "applies":
        return (
            f"{x.get('jobs')} jobs from {x.get('clients')} clients; "
            f"GM CPU {fmt(x.get('gm_cpu_ms_per_apply'))} ms per apply"
        )
    if key == "applies-e2e":
        return (
            f"{x.get('jobs')} jobs from {x.get('clients')} clients; "
            f"the applies' own rate {fmt(x.get('apply_rate_lc_online'))} jobs/s"
        )
    if key == "many-nodes":
        return (
            f"{x.get('nodes')} nodes; applies took {fmt(x.get('apply_seconds'))} s "
            f"({x.get('apply_clients', 4)} clients); GM RSS {fmt(x.get('gm_rss_mib'))} MiB "
            f"(peak {fmt(x.get('gm_rss_peak_mib'))}){_sim(x)}"
        )
    if key == "storm":
        return f"{x.get('nodes')} nodes; {x.get('hello_retries', 0)} hellos sent again for want of a sync"
    if key == "many-nodes-hello":
        return f"{x.get('nodes')} nodes{_sim(x)}"
    if key == "footprint-gm":
        return f"{x.get('nodes')} nodes"
    return ""


def _sim(x: dict[str, Any]) -> str:
    """How much of the machine the simulator took (many-nodes), and a raw reference that failed."""
    failed = f"; raw reference not measured: {x['raw_error']}" if x.get("raw_error") else ""
    if not x.get("sim_processes"):
        return failed
    share = x.get("sim_machine_share")
    return (
        f"; simulator: {x['sim_processes']} processes, {fmt(x.get('sim_cpu_seconds'))} CPU s"
        f" ({fmt(100 * share if share is not None else None)} % of the machine){failed}"
    )


def _runs(x: dict[str, Any]) -> str:
    """The runs behind a median, lifelong / raw."""
    if (x.get("runs") or 1) < 2:
        return ""
    pairs = zip(x.get("lifelong_runs") or [], x.get("raw_runs") or [], strict=False)
    return f"; median of {x['runs']} runs ({', '.join(f'{fmt(a)}/{fmt(b)}' for a, b in pairs)})"


def table(kind: str, results: dict[str, Any]) -> str:
    lines = [
        f"### {kind}",
        "",
        "| scenario | lifelong | raw paho | ratio | target | met? | notes |",
        "|---|---|---|---|---|---|---|",
    ]
    for key, title in ROWS:
        r = results.get(key)
        if r is None:
            continue
        if "error" in r and "lifelong" not in r:
            lines.append(f"| {title} | - | - | - | - | **not measured** | {r['error'][:160]} |")
            continue
        unit = r["unit"]
        met = {True: "yes", False: "**NO**", None: "-"}[r.get("met")]
        ratio = fmt(r.get("ratio"))
        if r.get("ratio") is not None:
            ratio += " (higher is better)" if r["higher_is_better"] else " (lower is better)"
        raw_unit = unit if r["raw"] is not None else ""
        lines.append(
            f"| {title} | {fmt(r['lifelong'])} {unit} | {fmt(r['raw'])} {raw_unit} "
            f"| {ratio} | {r.get('target') or '-'} | {met} | {detail(key, r)} |"
        )
    for key, r in results.items():
        if "error" in r and key not in dict(ROWS):
            lines.append(f"| {key} | - | - | - | - | **not measured** | {r['error'][:160]} |")
    return "\n".join(lines)


def plots(all_results: dict[str, Any], stem: Path) -> list[Path]:
    try:
        import matplotlib

        matplotlib.use("Agg")
        import matplotlib.pyplot as plt
    except ImportError:
        print("matplotlib is not installed: no plots (pip install matplotlib)")
        return []
    out: list[Path] = []
    keys = [k for k, _ in ROWS if any(k in r and r[k].get("ratio") for r in all_results.values())]
    if keys:
        fig, ax = plt.subplots(figsize=(10, 4.5))
        width = 0.8 / max(1, len(all_results))
        for i, (kind, res) in enumerate(all_results.items()):
            vals = [(res.get(k) or {}).get("ratio") or 0 for k in keys]
            ax.bar([j + i * width for j in range(len(keys))], vals, width, label=kind)
        ax.axhline(1.0, color="grey", lw=0.8)
        ax.set_xticks([j + width * (len(all_results) - 1) / 2 for j in range(len(keys))])
        ax.set_xticklabels(keys, rotation=30, ha="right")
        ax.set_yscale("log")
        ax.set_ylabel("lifelong / raw paho (log)")
        ax.set_title("lifelong vs raw paho-mqtt, same broker, same run")
        ax.legend()
        fig.tight_layout()
        path = stem.with_name(stem.name + "-ratios.png")
        fig.savefig(path, dpi=100)
        plt.close(fig)
        out.append(path)
    backlog = {
        k: r["backlog"]["extra"].get("lc_rss_samples")
        for k, r in all_results.items()
        if "extra" in r.get("backlog", {})
    }
    if any(backlog.values()):
        fig, ax = plt.subplots(figsize=(8, 4))
        for kind, samples in backlog.items():
            if samples:
                ax.plot([t for t, _ in samples], [m for _, m in samples], label=kind)
        ax.set_xlabel("seconds since the LC started")
        ax.set_ylabel("LC RSS (MiB)")
        ax.set_title("LC memory while draining the backlog")
        ax.legend()
        fig.tight_layout()
        path = stem.with_name(stem.name + "-backlog-rss.png")
        fig.savefig(path, dpi=100)
        plt.close(fig)
        out.append(path)
    return out


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="python -m benchmarks", description=__doc__)
    parser.add_argument("--quick", action="store_true", help="small sizes: under two minutes in all")
    parser.add_argument("--tiny", action="store_true", help="the smallest sizes (the smoke test)")
    parser.add_argument("--broker", default="all", choices=["all", "mosquitto", "amqtt"])
    parser.add_argument("--scenario", action="append", choices=SCENARIOS, help="run only these (repeatable)")
    parser.add_argument("--out", type=Path, default=RESULTS, help="where the JSON and PNGs go")
    parser.add_argument("--no-plots", action="store_true")
    parser.add_argument(
        "--nodes", type=int, default=0, help="simulated nodes for many-nodes and storm (both brokers)"
    )
    parser.add_argument("-v", "--verbose", action="store_true")
    args = parser.parse_args(argv)
    logging.basicConfig(level=logging.DEBUG if args.verbose else logging.WARNING)
    cfg = CONFIGS["tiny" if args.tiny else "quick" if args.quick else "full"]
    if args.nodes > 0:
        cfg = dataclasses.replace(cfg, nodes=args.nodes, nodes_embedded=args.nodes)
    kinds = available_brokers() if args.broker == "all" else [args.broker]
    if args.broker == "mosquitto" and mosquitto_binary() is None:
        parser.error("mosquitto is not installed")
    only = set(args.scenario or [])
    started = time.monotonic()
    stamp = dt.datetime.now(dt.UTC).strftime("%Y%m%dT%H%M%SZ")
    print(f"lifelong benchmarks ({cfg.name}) on {', '.join(kinds)}", flush=True)
    all_results: dict[str, Any] = {}
    with tempfile.TemporaryDirectory(prefix="lifelong-bench-") as tmp:
        for kind in kinds:
            all_results[kind] = run_broker(kind, cfg, Path(tmp) / kind, only)
    elapsed = time.monotonic() - started
    report = {
        "when": stamp,
        "mode": cfg.name,
        "config": cfg.__dict__,
        "seconds": elapsed,
        "machine": machine(),
        "results": all_results,
    }
    args.out.mkdir(parents=True, exist_ok=True)
    stem = args.out / f"bench-{cfg.name}-{stamp}"
    stem.with_suffix(".json").write_text(json.dumps(report, indent=1, default=str))
    (args.out / f"latest-{cfg.name}.json").write_text(json.dumps(report, indent=1, default=str))
    print()
    for kind, res in all_results.items():
        print(table(kind, res))
        print()
    written = [] if args.no_plots else plots(all_results, stem)
    print(f"results: {stem.with_suffix('.json')}" + "".join(f"\nplot: {p}" for p in written))
    print(f"total {elapsed:.0f}s")
    return 0
