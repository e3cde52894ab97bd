"""What the ``lifelong lc`` process imports: neither the GM, the broker, the client nor
prometheus-client (without metrics), so that an idle LC stays small (docs/performance.md); nor,
until it needs them, cheroot (the GM's HTTPS server), PyYAML (a config file, YAML texts), the
knowledge base's models (samples posted by workers) and subprocess (a worker to start).

The last test asks a real ``lifelong lc`` process, online at a real GM over a real broker, for
its ``sys.modules``: the process runs the ``lifelong`` entry point under a wrapper that writes
them to a file on SIGUSR1.
"""

from __future__ import annotations

import os
import signal
import subprocess
import sys
from pathlib import Path

import pytest
from harness.brokers import Broker
from harness.processes import GMProcess, LCProcess
from harness.waiting import wait_for

FOREIGN = ("lifelong.cloud", "lifelong.broker", "lifelong.client", "amqtt", "prometheus_client")
ON_DEMAND = ("cheroot", "yaml", "lifelong.common.kb", "subprocess")
"""Modules an idle LC leaves unloaded (imported where they are used)."""

# Runs ``lifelong`` as ``python -m lifelong`` would, and on SIGUSR1 (handled on the main thread
# between its waits) writes the loaded modules to $LC_MODULES_OUT, whole or not at all.
WRAPPER = """
import os, signal, sys
from pathlib import Path

def dump(signum, frame):
    out = Path(os.environ["LC_MODULES_OUT"])
    tmp = out.with_name(out.name + ".tmp")
    tmp.write_text("\\n".join(sorted(sys.modules)))
    tmp.replace(out)

signal.signal(signal.SIGUSR1, dump)
from lifelong.__main__ import main
sys.exit(main(sys.argv[1:]))
"""


def _modules_after(code: str) -> set[str]:
    out = subprocess.run(
        [sys.executable, "-c", f"{code}\nimport sys\nprint('\\n'.join(sys.modules))"],
        capture_output=True,
        text=True,
        check=True,
        timeout=60,
    )
    return set(out.stdout.split())


def test_the_lc_command_imports_only_the_edge() -> None:
    loaded = _modules_after(
        "from lifelong.__main__ import build_parser\n"
        "args = build_parser(['lc', '--node', 'n1']).parse_args(['lc', '--node', 'n1'])\n"
        "import lifelong.edge.service"
    )
    assert "lifelong.edge.service" in loaded
    assert sorted(m for m in loaded if m.startswith(FOREIGN + ON_DEMAND)) == []


def test_the_lc_parser_alone_parses_as_the_whole_one() -> None:
    from lifelong.__main__ import build_parser

    argv = ["--log-level", "WARNING", "lc", "--node", "n1", "--metrics-port", "0"]
    alone, whole = build_parser(argv).parse_args(argv), build_parser().parse_args(argv)
    assert vars(alone) == vars(whole)


class _WrappedLC(LCProcess):
    """``lifelong lc`` run through ``WRAPPER`` (same arguments, same entry point)."""

    def command(self) -> list[str]:
        return [sys.executable, "-c", WRAPPER, *super().command()[3:]]


@pytest.mark.e2e
def test_an_idle_lc_process_leaves_the_on_demand_modules_unloaded(
    broker: Broker, prefix: str, tmp_path: Path
) -> None:
    gm = GMProcess(tmp_path, broker_url=broker.url, prefix=prefix)
    out = tmp_path / "lc-modules.txt"
    lc = _WrappedLC(tmp_path, node="footprint-1", broker_url=broker.url, prefix=prefix)
    lc.env = {"LC_MODULES_OUT": str(out)}
    gm.start()
    try:
        gm.wait_ready()
        lc.start()
        lc.wait_online(gm)  # connected, said hello, in sync with the GM
        assert lc.proc is not None
        os.kill(lc.proc.pid, signal.SIGUSR1)
        wait_for(out.exists, timeout=10, what=f"the LC to write its modules\n{lc.log_tail()}")
        loaded = set(out.read_text().split())
        assert "lifelong.edge.service" in loaded and "paho.mqtt.client" in loaded
        assert sorted(m for m in loaded if m.startswith(FOREIGN + ON_DEMAND)) == []
        assert lc.terminate() == 0
    finally:
        for proc in (lc, gm):
            if proc.alive():
                proc.terminate()
