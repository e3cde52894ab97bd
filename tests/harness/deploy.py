"""Helpers for the deployment tests: the Dockerfile's instructions, the Docker build context
(what ``.dockerignore`` lets through), and running an install step with its absolute install
prefix moved into a temporary folder.

Used by tests/unit/test_dockerfile.py, tests/integration/test_image_install.py and
tests/e2e/test_docs_commands.py. Nothing here needs a Docker engine.
"""

from __future__ import annotations

import fnmatch
import os
import shutil
import subprocess
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


def run_shell(script: str, cwd: Path, timeout: float = 600) -> subprocess.CompletedProcess[str]:
    """``sh -e -c script`` with the environment of a login shell's PATH (no venv of ours on it)."""
    env = {k: v for k, v in os.environ.items() if k not in ("VIRTUAL_ENV", "PYTHONPATH", "PYTHONHOME")}
    env["PATH"] = os.pathsep.join(
        p for p in env.get("PATH", "").split(os.pathsep) if p and not p.startswith(str(ROOT))
    )
    argv = ["sh", "-e", "-c", script]
    return subprocess.run(
        argv, cwd=cwd, env=env, capture_output=True, text=True, timeout=timeout, check=False
    )
