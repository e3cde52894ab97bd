"""What the ``lifelong lc`` process imports: neither the GM, the broker, the client nor
prometheus-client (without metrics), so that an idle LC stays small (docs/performance.md)."""

from __future__ import annotations

import subprocess
import sys

FOREIGN = ("lifelong.cloud", "lifelong.broker", "lifelong.client", "amqtt", "prometheus_client")


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
    assert sorted(m for m in loaded if m.startswith(FOREIGN)) == []


def test_the_lc_parser_alone_parses_as_the_whole_one() -> None:
    from lifelong.__main__ import build_parser

    argv = ["--log-level", "WARNING", "lc", "--node", "n1", "--metrics-port", "0"]
    alone, whole = build_parser(argv).parse_args(argv), build_parser().parse_args(argv)
    assert vars(alone) == vars(whole)
