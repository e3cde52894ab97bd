"""Counting and reading the samples of a Dataset's index file (``txt`` or ``csv``).

Called by the service's control loop every poll (``DatasetMonitor.poll``) and by the
manager when a trigger fires (``read_samples``). A sample is one non-blank line; a ``csv``
file's first line is its header and not a sample. The dataset ``url`` is a local path,
``file://`` accepted.

A file may be appended to (the count grows), replaced or truncated (the count may shrink:
the manager then starts its cursor over) or missing or unreadable (``status`` says so, the
count stays at its last value, nothing crashes). Counting is cached by (inode, size, mtime)
so an unchanged file is not re-read.
"""

from __future__ import annotations

import os
from dataclasses import dataclass
from pathlib import Path
from typing import Any
from urllib.parse import urlparse

FORMATS = ("txt", "csv")


def local_path(url: str) -> Path:
    """The local path of a dataset/model url: a plain path or ``file://...``."""
    if url.startswith("file://"):
        return Path(urlparse(url).path)
    return Path(url)


@dataclass(frozen=True, slots=True)
class Count:
    """The outcome of counting one file. ``status`` is ``ok``, ``missing``, ``unreadable`` or
    ``unsupported``; ``count`` is None unless ``ok``."""

    count: int | None
    status: str
    message: str = ""


def _lines(data: bytes) -> list[bytes]:
    return [line for line in data.splitlines() if line.strip()]


def count_samples(path: Path, fmt: str) -> Count:
    if fmt not in FORMATS:
        return Count(None, "unsupported", f"format {fmt!r} is not one of {', '.join(FORMATS)}")
    try:
        data = path.read_bytes()
    except FileNotFoundError:
        return Count(None, "missing", f"{path} does not exist")
    except OSError as exc:
        return Count(None, "unreadable", f"{path}: {exc.strerror or exc}")
    n = len(_lines(data))
    if fmt == "csv" and n:
        n -= 1
    return Count(n, "ok")


def read_samples(path: Path, fmt: str, start: int, stop: int) -> tuple[list[str], str | None]:
    """Samples ``[start, stop)`` as text lines, and the csv header (None for txt)."""
    lines = [line.decode("utf-8", errors="replace") for line in _lines(path.read_bytes())]
    header = None
    if fmt == "csv" and lines:
        header, lines = lines[0], lines[1:]
    return lines[start:stop], header


class DatasetMonitor:
    """Counts each dataset at most once per change of its file; remembers the last status."""

    def __init__(self) -> None:
        self._cache: dict[tuple[str, str], tuple[tuple[int, int, int], Count]] = {}

    def count(self, ns: str, name: str, spec: dict[str, Any]) -> Count:
        url = spec.get("url") or ""
        fmt = (spec.get("format") or "txt").lower()
        if not url:
            return Count(None, "missing", "spec.url is empty")
        path = local_path(url)
        try:
            st = os.stat(path)
            sig = (st.st_ino, st.st_size, st.st_mtime_ns)
        except FileNotFoundError:
            self._cache.pop((ns, name), None)
            return Count(None, "missing", f"{path} does not exist")
        except OSError as exc:
            return Count(None, "unreadable", f"{path}: {exc.strerror or exc}")
        cached = self._cache.get((ns, name))
        if cached is not None and cached[0] == sig:
            return cached[1]
        result = count_samples(path, fmt)
        if result.status == "ok":
            self._cache[(ns, name)] = (sig, result)
        return result

    def forget(self, ns: str, name: str) -> None:
        self._cache.pop((ns, name), None)
