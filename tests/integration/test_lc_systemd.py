"""``systemd-analyze verify`` accepts the shipped LC unit (Debian's ``systemd`` package).

The unit's ``ExecStart`` names ``/usr/local/bin/lifelong``, where a pip install puts the
command; verify checks that the binary exists, so the test points that one line at this
checkout's installed ``lifelong`` and verifies everything else as shipped.
"""

from __future__ import annotations

import shutil
import subprocess
import sys
from pathlib import Path

import pytest

UNIT = Path(__file__).resolve().parents[2] / "deploy" / "systemd" / "lifelong-lc.service"


def test_unit_verifies(tmp_path: Path) -> None:
    tool = shutil.which("systemd-analyze")
    if tool is None:
        pytest.skip("systemd-analyze is not installed (Debian package: systemd)")
    lifelong = Path(sys.executable).parent / "lifelong"
    assert lifelong.exists()
    text = UNIT.read_text()
    assert "ExecStart=/usr/local/bin/lifelong lc" in text
    unit = tmp_path / "lifelong-lc.service"
    unit.write_text(text.replace("/usr/local/bin/lifelong", str(lifelong)))
    out = subprocess.run([tool, "verify", str(unit)], capture_output=True, text=True, timeout=60, check=False)
    assert out.returncode == 0 and out.stderr.strip() == "" and out.stdout.strip() == "", (
        out.stderr + out.stdout
    )
    for needed in ("Restart=always", "StateDirectory=lifelong-lc", "KillMode=process", "NoNewPrivileges=yes"):
        assert needed in text
