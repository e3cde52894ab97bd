"""Many simulated edge nodes spread over several processes, so the simulator is not the bottleneck.

One ``benchmarks.sim.Simulator`` drives its nodes from one thread: about 1,000 MQTT sessions
keep one core busy while they all say hello at once. The many-nodes and storm scenarios
(``benchmarks/scenarios.py``) run 10,000 nodes, so ``SimPool`` starts ``processes`` child
processes (``multiprocessing``'s spawn context: a clean interpreter, none of the benchmark's
threads), each running one ``Simulator`` over its share of the nodes, and asks them for counts
over a pipe. The scenarios only need counts, never a node object: how many are connected, in
sync, hold a kind, said hello again since a mark, and so on.

Node names are ``{label}{p}-{i:04d}`` (``p`` the process, ``i`` the node within it), so the
names of two pools never clash and a node's process is known from its name. ``cpu_seconds``
sums the children's CPU time, which the scenarios report as how much of the machine the
simulator took.
"""

from __future__ import annotations

import contextlib
import multiprocessing as mp
import threading
from collections.abc import Callable
from multiprocessing.connection import Connection
from typing import Any

from benchmarks.infra import cpu_seconds

PER_PROCESS = 1250
"""Nodes per simulator process by default (one process's thread handles them comfortably)."""
PENDING = 80
"""Connections begun and not yet answered, over all the processes: under mosquitto's listen
backlog of 100 (``Simulator.max_pending``)."""


def _serve(conn: Connection, port: int, count: int, opts: dict[str, Any]) -> None:
    """A child's main loop: build the simulator, then answer the parent's requests."""
    from benchmarks.sim import Simulator  # imported here: the child is a fresh interpreter

    sim = Simulator(port, count, mode=opts["mode"], label=opts["label"], max_pending=opts["pending"])
    marks: list[int] = []
    queries: dict[str, Callable[..., Any]] = {
        "names": lambda: [n.name for n in sim.nodes],
        "start": sim.start,
        "connected": sim.connected,
        "synced": sim.synced,
        "holding": sim.holding,
        "subscribed": sim.subscribed,
        "received": sim.received,
        "hellos": lambda: sum(n.hellos for n in sim.nodes),
        "hello_retries": lambda: sum(n.hello_retries for n in sim.nodes),
        "errors": lambda: sim.errors,
    }

    def mark() -> None:
        marks[:] = [n.hellos for n in sim.nodes]

    def resynced() -> int:
        """Nodes connected, in sync, and that said hello again since the mark."""
        return sum(
            1
            for n, before in zip(sim.nodes, marks, strict=True)
            if n.connected and n.hellos > before and n.in_sync()
        )

    def again() -> int:
        return sum(1 for n, before in zip(sim.nodes, marks, strict=True) if n.hellos > before)

    queries.update(mark=mark, resynced=resynced, again=again)
    try:
        while True:
            try:
                what, args = conn.recv()
            except EOFError:
                break
            if what == "stop":
                sim.stop()
                conn.send(("ok", None))
                break
            try:
                conn.send(("ok", queries[what](*args)))
            except Exception as exc:  # answered, so the parent raises it with the child's reason
                conn.send(("error", f"{type(exc).__name__}: {exc}"))
    finally:
        conn.close()


class SimPool:
    """``count`` simulated nodes over ``processes`` child processes (default: one per
    ``PER_PROCESS`` nodes). Methods mirror ``Simulator``'s counts, summed over the children."""

    def __init__(
        self, port: int, count: int, *, mode: str = "lifelong", label: str = "sim", processes: int = 0
    ) -> None:
        self.count = count
        procs = processes or max(1, -(-count // PER_PROCESS))
        shares = [count // procs + (1 if p < count % procs else 0) for p in range(procs)]
        ctx = mp.get_context("spawn")
        self._conns: list[Connection] = []
        self._procs: list[Any] = []
        self._lock = threading.Lock()  # one request at a time on each pipe
        try:
            for p, share in enumerate(shares):
                parent, child = ctx.Pipe()
                proc = ctx.Process(
                    target=_serve,
                    args=(
                        child,
                        port,
                        share,
                        {"mode": mode, "label": f"{label}{p}", "pending": max(1, PENDING // procs)},
                    ),
                    daemon=True,
                )
                proc.start()
                child.close()
                self._conns.append(parent)
                self._procs.append(proc)
            self.names: list[str] = [name for names in self._all("names") for name in names]
        except BaseException:
            self.stop()
            raise

    def _all(self, what: str, *args: Any) -> list[Any]:
        with self._lock:
            for conn in self._conns:
                conn.send((what, args))
            answers = [conn.recv() for conn in self._conns]
        errors = [value for status, value in answers if status == "error"]
        if errors:
            raise RuntimeError(f"simulator process failed {what}: {errors[0]}")
        return [value for _status, value in answers]

    def _sum(self, what: str, *args: Any) -> int:
        return sum(self._all(what, *args))

    def start(self) -> None:
        self._all("start")

    def connected(self) -> int:
        return self._sum("connected")

    def synced(self) -> int:
        return self._sum("synced")

    def holding(self, kind: str) -> int:
        return self._sum("holding", kind)

    def subscribed(self, at_least: int = 1) -> int:
        return self._sum("subscribed", at_least)

    def received(self) -> int:
        return self._sum("received")

    def hello_retries(self) -> int:
        return self._sum("hello_retries")

    def mark_hellos(self) -> None:
        """Remember every node's hello count; ``resynced`` and ``said_hello_again`` count from it."""
        self._all("mark")

    def resynced(self) -> int:
        return self._sum("resynced")

    def said_hello_again(self) -> int:
        return self._sum("again")

    def cpu_seconds(self) -> float:
        """CPU time the simulator processes used so far (user + system), seconds."""
        return sum(cpu_seconds(p.pid) for p in self._procs if p.pid is not None)

    @property
    def processes(self) -> int:
        return len(self._procs)

    def stop(self) -> None:
        with self._lock:
            for conn in self._conns:
                with contextlib.suppress(OSError):
                    conn.send(("stop", ()))
            for conn in self._conns:
                try:
                    if conn.poll(30):
                        conn.recv()
                except (OSError, EOFError):
                    pass
                conn.close()
            self._conns = []
        for proc in self._procs:
            proc.join(10)
            if proc.is_alive():
                proc.kill()
                proc.join(5)
        self._procs = []
