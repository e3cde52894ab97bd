"""Helpers for the deployment tests: the Dockerfile's instructions, the Docker build context
(what ``.dockerignore`` lets through), and running an install step with its absolute install
prefix moved into a temporary folder.

Used by tests/unit/test_dockerfile.py, tests/integration/test_image_install.py and
tests/e2e/test_docs_commands.py. Nothing here needs a Docker engine.

``wheelhouse()`` is the wheels of the package's dependencies (its ``kubernetes`` extra
included) and of its build requirements, downloaded from the package index by ``pip wheel``
into a cache outside the repository, once per week and per ``pyproject.toml``/``setup.py``:
``run_shell(..., wheels=...)`` points pip at it (``PIP_NO_INDEX``, ``PIP_FIND_LINKS``, as a
local index would). An install step then still builds and installs this package from its
source as written, but takes its dependencies from the folder: without it, each run
downloaded and resolved them again (``--no-cache-dir``): about 40 % of the test's CPU.
"""

from __future__ import annotations

import datetime
import fcntl
import fnmatch
import hashlib
import os
import shutil
import subprocess
import sys
import tempfile
from pathlib import Path

ROOT = Path(__file__).resolve().parents[2]


def dockerfile_instructions(path: Path = ROOT / "Dockerfile") -> list[tuple[str, str]]:
    """(INSTRUCTION, arguments) in order, continuation lines joined, comments dropped."""
    out: list[tuple[str, str]] = []
    pending = ""
    for raw in path.read_text().splitlines():
        line = raw.strip()
        if not pending and (not line or line.startswith("#")):
            continue
        if line.endswith("\\"):
            pending += line[:-1] + " "
            continue
        whole = (pending + line).strip()
        pending = ""
        keyword, _, args = whole.partition(" ")
        out.append((keyword.upper(), " ".join(args.split())))
    assert not pending, f"{path}: a continuation line runs off the end"
    return out


def _ignored(rel: str, patterns: list[str]) -> bool:
    parts = rel.split("/")
    candidates = ["/".join(parts[: i + 1]) for i in range(len(parts))]
    for pattern in patterns:
        bare = pattern.removeprefix("**/")
        for candidate in candidates:
            if fnmatch.fnmatch(candidate, pattern) or (
                pattern.startswith("**/") and fnmatch.fnmatch(candidate.rsplit("/", 1)[-1], bare)
            ):
                return True
    return False


def copy_build_context(dest: Path, root: Path = ROOT) -> Path:
    """Copy ``root`` to ``dest`` as ``docker build`` would send it: without what .dockerignore
    names (plain patterns, ``**/`` prefixes; no ``!`` exceptions, which it does not use)."""
    patterns = [
        line.strip()
        for line in (root / ".dockerignore").read_text().splitlines()
        if line.strip() and not line.startswith("#")
    ]
    assert not any(p.startswith("!") for p in patterns), "copy_build_context does not handle ! patterns"
    for dirpath, dirnames, filenames in os.walk(root):
        rel_dir = Path(dirpath).relative_to(root)
        dirnames[:] = [d for d in dirnames if not _ignored((rel_dir / d).as_posix(), patterns)]
        for name in filenames:
            rel = (rel_dir / name).as_posix()
            if not _ignored(rel, patterns):
                target = dest / rel
                target.parent.mkdir(parents=True, exist_ok=True)
                shutil.copy2(Path(dirpath) / name, target)
    return dest


def wheelhouse(root: Path = ROOT) -> Path:
    """The folder of wheels of ``root``'s dependencies (extra ``kubernetes`` included) and its
    build requirements, without ``root``'s own package: from the cache
    (``${XDG_CACHE_HOME:-~/.cache}/lifelong/wheels/KEY``, KEY from ``pyproject.toml``,
    ``setup.py``, the Python version and the ISO week, so the index is asked again at least
    weekly), else downloaded now by ``pip wheel`` (two at once wait on one lock; the folders of
    other keys are removed then)."""
    digest = hashlib.sha256()
    for name in ("pyproject.toml", "setup.py"):
        digest.update((root / name).read_bytes())
    year, week, _ = datetime.date.today().isocalendar()
    digest.update(f"{sys.version_info[:2]} {year}-W{week}".encode())
    cache = Path(os.environ.get("XDG_CACHE_HOME") or Path.home() / ".cache") / "lifelong" / "wheels"
    out = cache / digest.hexdigest()[:16]
    cache.mkdir(parents=True, exist_ok=True)
    with (cache / ".lock").open("w") as lock:
        fcntl.flock(lock, fcntl.LOCK_EX)
        if (out / ".complete").exists():
            return out
        tmp = Path(tempfile.mkdtemp(dir=cache, prefix=".build."))
        try:
            src = copy_build_context(tmp / "src", root)  # pip builds in the tree it is given
            argv = [sys.executable, "-m", "pip", "wheel", "--quiet", "--wheel-dir", str(tmp / "wheels")]
            done = subprocess.run(
                [*argv, f"{src}[kubernetes]", "setuptools>=77", "wheel"],
                capture_output=True,
                text=True,
                timeout=900,
                check=False,
            )
            assert done.returncode == 0, f"pip wheel failed: {done.stdout[-2000:]}{done.stderr[-2000:]}"
            for own in (tmp / "wheels").glob("lifelong-*.whl"):
                own.unlink()  # the package itself is always built from the source under test
            (tmp / "wheels" / ".complete").touch()
            shutil.rmtree(out, ignore_errors=True)
            (tmp / "wheels").rename(out)
            for old in cache.iterdir():  # the folders of other weeks or requirements
                if old.is_dir() and not old.name.startswith(".") and old != out:
                    shutil.rmtree(old, ignore_errors=True)
        finally:
            shutil.rmtree(tmp, ignore_errors=True)
    return out


def run_shell(
    script: str, cwd: Path, timeout: float = 600, *, wheels: Path | None = None
) -> subprocess.CompletedProcess[str]:
    """``sh -e -c script`` with the environment of a login shell's PATH (no venv of ours on it);
    with ``wheels`` (``wheelhouse()``), pip installs dependencies from that folder only."""
    env = {k: v for k, v in os.environ.items() if k not in ("VIRTUAL_ENV", "PYTHONPATH", "PYTHONHOME")}
    if wheels is not None:
        env.update(PIP_NO_INDEX="1", PIP_FIND_LINKS=str(wheels))
    env["PATH"] = os.pathsep.join(
        p for p in env.get("PATH", "").split(os.pathsep) if p and not p.startswith(str(ROOT))
    )
    argv = ["sh", "-e", "-c", script]
    return subprocess.run(
        argv, cwd=cwd, env=env, capture_output=True, text=True, timeout=timeout, check=False
    )
