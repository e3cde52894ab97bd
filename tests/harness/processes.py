"""Real ``lifelong`` processes for end-to-end tests: the GM and LCs, with log files.

Each process runs ``python -m lifelong ...`` in its own session with stdout/stderr appended to
a log file in the test's directory (shown when a wait fails). ``kill()`` is SIGKILL, as a crash;
``terminate()`` is SIGTERM and waits for the clean exit; ``start()`` again is a restart with the
same arguments, ports and state. Readiness is waited on, never slept for: the GM's HTTP API
answering ``/healthz``, an LC having said hello (the GM lists it online).

The broker comes from the ``broker`` fixture (``harness.brokers``).
"""

from __future__ import annotations

import json
import os
import signal
import subprocess
import sys
import urllib.error
import urllib.request
from collections.abc import Callable, Sequence
from pathlib import Path
from typing import Any

from harness import reaper
from harness.waiting import free_port, wait_for

FULL_ROUND = [
    ("Train", "Waiting"), ("Train", "Ready"), ("Train", "Starting"), ("Train", "Running"),
    ("Train", "Completed"), ("Eval", "Waiting"), ("Eval", "Ready"), ("Eval", "Starting"),
    ("Eval", "Running"), ("Eval", "Completed"), ("Deploy", "Waiting"), ("Deploy", "Ready"),
    ("Deploy", "Starting"), ("Deploy", "Running"), ("Deploy", "Completed"), ("Train", "Waiting"),
]  # fmt: skip
"""A job's conditions (stage, type) through one full round, as ``GMProcess.conditions`` gives them."""


class Process:
    """One ``python -m lifelong ARGS`` child process."""

    def __init__(self, name: str, args: list[str], workdir: Path, env: dict[str, str] | None = None) -> None:
        self.name = name
        self.args = args
        self.workdir = workdir
        self.env = env or {}  # set in the process's environment (e.g. TZ)
        self.log_path = workdir / f"{name}.log"
        self.proc: subprocess.Popen[bytes] | None = None

    def command(self) -> list[str]:
        return [sys.executable, "-m", "lifelong", "--log-level", "DEBUG", *self.args]

    def start(self) -> None:
        assert not self.alive(), f"{self.name} is already running"
        self.workdir.mkdir(parents=True, exist_ok=True)
        with self.log_path.open("ab") as log:
            log.write(f"--- start: {' '.join(self.command())}\n".encode())
            log.flush()
            env = {k: v for k, v in os.environ.items() if not k.startswith("LIFELONG_")}
            env.update(self.env)
            self.proc = reaper.started(
                subprocess.Popen(
                    self.command(), stdout=log, stderr=subprocess.STDOUT, env=env, start_new_session=True
                )
            )

    def alive(self) -> bool:
        return self.proc is not None and self.proc.poll() is None

    def kill(self) -> None:
        """SIGKILL, as a crash or a power cut of the process would be."""
        if self.proc is not None and self.proc.poll() is None:
            self.proc.send_signal(signal.SIGKILL)
            self.proc.wait(10)
        self.proc = None

    def terminate(self, timeout: float = 20.0) -> int:
        """SIGTERM and wait for the clean exit; returns the exit status."""
        assert self.proc is not None, f"{self.name} is not running"
        self.proc.send_signal(signal.SIGTERM)
        try:
            code = self.proc.wait(timeout)
        finally:
            if self.proc.poll() is None:
                self.proc.kill()
                self.proc.wait(10)
            self.proc = None
        return code

    def check_alive(self) -> None:
        if self.proc is not None and self.proc.poll() is not None:
            raise AssertionError(f"{self.name} exited with {self.proc.returncode}:\n{self.log_tail()}")

    def log_tail(self, lines: int = 60) -> str:
        try:
            return "\n".join(self.log_path.read_text(errors="replace").splitlines()[-lines:])
        except OSError:
            return ""


class GMProcess(Process):
    """``lifelong gm`` in standalone mode on a SQLite store in ``workdir``."""

    def __init__(
        self, workdir: Path, *, broker_url: str, prefix: str, extra: list[str] | None = None
    ) -> None:
        self.api_port = free_port()
        self.store_path = workdir / "gm" / "store.db"
        args = [
            "gm",
            "--broker",
            broker_url,
            "--store",
            f"sqlite:{self.store_path}",
            "--api-port",
            str(self.api_port),
            "--prefix",
            prefix,
            "--resend-base",
            "0.5",
            "--resend-cap",
            "2",
            "--job-backoff-base",
            "1",
            *(extra or []),
        ]
        super().__init__("gm", args, workdir)

    @property
    def server(self) -> str:
        return f"http://127.0.0.1:{self.api_port}"

    def api(self, method: str, path: str, body: Any = None) -> Any:
        data = None if body is None else json.dumps(body).encode()
        req = urllib.request.Request(self.server + path, data=data, method=method)
        with urllib.request.urlopen(req, timeout=10) as resp:
            raw = resp.read()
        return json.loads(raw) if raw[:1] in (b"{", b"[") else raw

    def healthy(self) -> bool:
        self.check_alive()
        try:
            return self.api("GET", "/healthz") == b"ok\n"
        except (urllib.error.URLError, OSError):
            return False

    def wait_ready(self, timeout: float = 30.0) -> None:
        wait_for(self.healthy, timeout=timeout, what=f"the GM API on port {self.api_port}\n{self.log_tail()}")

    def node_online(self, node: str) -> bool:
        try:
            items = self.api("GET", "/api/v1/nodes")["items"]
        except (urllib.error.URLError, OSError):
            return False
        return any(n["node"] == node and n["online"] and n["lastHello"] > 0 for n in items)

    def get(self, kind: str, name: str, ns: str = "default") -> dict[str, Any] | None:
        try:
            obj: dict[str, Any] = self.api("GET", f"/api/v1/{kind}/{ns}/{name}")
        except urllib.error.HTTPError as exc:
            if exc.code == 404:
                return None
            raise
        return obj

    def conditions(self, name: str) -> list[tuple[str, str]]:
        job = self.get("LifelongLearningJob", name)
        conds = ((job or {}).get("status") or {}).get("conditions") or []
        return [(c["stage"], c["type"]) for c in conds]

    def apply(self, objs: Sequence[dict[str, Any]]) -> list[str]:
        """Apply ``objs`` as ``lifelong apply -f`` does (Datasets first, each parsed, dumped in its
        wire form and sent as ``POST /api/v1/apply``), but from this process; returns each
        answer's ``result``. For tests whose subject is not the client: a client process costs
        about 0.6 s of CPU each time (tests/e2e and tests/unit/test_client_commands.py run the
        client itself). An error answer raises ``urllib.error.HTTPError``."""
        from lifelong.client.commands import APPLY_ORDER
        from lifelong.common.api import dump_resource, parse_resource

        results = []
        for obj in sorted(objs, key=lambda o: APPLY_ORDER.get(o["kind"], 9)):
            answer = self.api("POST", "/api/v1/apply", dump_resource(parse_resource(obj)))
            assert answer.get("result") in ("created", "configured", "unchanged"), answer
            results.append(str(answer["result"]))
        return results

    def cli(
        self, *args: str, stdin: str | None = None, check: bool = True
    ) -> subprocess.CompletedProcess[str]:
        """Run a client command (``apply``, ``get`` ...) against this GM."""
        cmd = [sys.executable, "-m", "lifelong", *args, "--server", self.server]
        out = subprocess.run(cmd, input=stdin, capture_output=True, text=True, timeout=60, check=False)
        if check and out.returncode != 0:
            raise AssertionError(f"{' '.join(args)} exited {out.returncode}: {out.stderr}")
        return out


class LCProcess(Process):
    """``lifelong lc`` for one node, its state in ``workdir/lc-NODE``."""

    def __init__(
        self,
        workdir: Path,
        *,
        node: str,
        broker_url: str,
        prefix: str,
        extra: list[str] | None = None,
        env: dict[str, str] | None = None,
    ) -> None:
        self.node = node
        self.state_dir = workdir / f"lc-{node}"
        self.worker_api_port = free_port()
        args = [
            "lc",
            "--node",
            node,
            "--broker",
            broker_url,
            "--prefix",
            prefix,
            "--state-dir",
            str(self.state_dir),
            "--worker-api-port",
            str(self.worker_api_port),
            "--metrics-port",
            "0",
            "--poll-seconds",
            "0.2",
            *(extra or []),
        ]
        super().__init__(f"lc-{node}", args, workdir, env)

    def wait_online(self, gm: GMProcess, timeout: float = 30.0) -> None:
        def online() -> bool:
            self.check_alive()
            return gm.node_online(self.node)

        wait_for(online, timeout=timeout, what=f"{self.node} online at the GM\n{self.log_tail()}")


def history_follows(
    gm: GMProcess, procs: Sequence[Process], name: str, expected: Sequence[tuple[str, str]]
) -> Callable[[], bool]:
    """A ``wait_for`` predicate: true once job ``name``'s (stage, type) history has reached the
    end of ``expected``; an AssertionError as soon as it leaves it, or a process has died."""

    def follows() -> bool:
        for proc in procs:
            proc.check_alive()
        got = gm.conditions(name)
        n = min(len(got), len(expected))
        assert got[:n] == list(expected[:n]), f"unexpected history {got}"
        return len(got) >= len(expected)

    return follows
