"""The Dockerfile's install steps, run in a throwaway folder instead of an image (no Docker
engine runs on the test machines, so the image build itself is not exercised).

The RUN step that installs the package runs as written, by ``sh``, with ``/opt/lifelong``
moved to a temporary folder and ``/src`` to a copy of the build context (the repository as
``.dockerignore`` lets it through). Then the installed ``lifelong gm --help`` must work and the
Kubernetes client the manifests' ``--store kubernetes`` needs must import from that venv. The
step builds and installs this package from the copied source as written; pip takes its
dependencies from ``harness.deploy.wheelhouse()``, the same requirements downloaded from the
package index into a cache at most a week old, instead of downloading and resolving them again
each run (``--no-cache-dir``): about 40 % less CPU. Marked slow.
"""

from __future__ import annotations

import subprocess
from pathlib import Path

import pytest
from harness.deploy import copy_build_context, dockerfile_instructions, run_shell, wheelhouse

pytestmark = pytest.mark.slow


def test_dockerfile_install_step_installs_a_working_lifelong(tmp_path: Path) -> None:
    steps = [args for kw, args in dockerfile_instructions() if kw == "RUN" and "pip install" in args]
    assert len(steps) == 1, steps
    prefix, src = tmp_path / "opt" / "lifelong", tmp_path / "src"
    copy_build_context(src)
    script = steps[0].replace("/opt/lifelong", str(prefix)).replace("/src", str(src))
    done = run_shell(script, cwd=tmp_path, timeout=900, wheels=wheelhouse())
    assert done.returncode == 0, done.stdout[-3000:] + done.stderr[-3000:]
    assert not src.exists(), "the step removes the source after installing"

    lifelong = prefix / "bin" / "lifelong"
    out = subprocess.run([lifelong, "gm", "--help"], capture_output=True, text=True, timeout=60, check=False)
    assert out.returncode == 0 and out.stdout.startswith("usage: lifelong gm"), out.stderr
    python = prefix / "bin" / "python"
    probe = "import kubernetes, lifelong.cloud.stores.kubernetes as k; print(k.__file__)"
    out = subprocess.run([python, "-c", probe], capture_output=True, text=True, timeout=60, check=False)
    assert out.returncode == 0, out.stderr
    assert out.stdout.strip().startswith(str(prefix)), "lifelong must come from the new venv, not a checkout"
