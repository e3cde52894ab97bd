"""Workers' output on the LC: where it goes, how large it may grow, and reading it for the GM.

Who calls it: the worker runtime (``edge/workers.py``) takes each worker's log path from
``log_path``; the service's control step calls ``rotate_running`` every step; the session
answers the GM's ``log`` requests (``lifelong logs``, docs/protocol.md) with ``answer``.

A worker's stdout and stderr go, together, to ``<workers_dir>/<ns>_<name>/<ns>_<name>.log``
(opened for appending, written by the worker itself, so output is kept while the LC is down).

**The bound.** When the file is over ``max_bytes`` (1 MiB by default), the control step copies
it to ``<ns>_<name>.log.1`` (replacing the older copy) and truncates it (logrotate's
``copytruncate``: the worker keeps its file open). A worker's output thus takes at most about
``2 * max_bytes`` on disk, plus what it writes between two control steps (the size is checked
every step, ``--poll-seconds``); what it writes between the copy and the truncation (a
few microseconds) is lost.

**Offsets.** Every byte a worker wrote has a fixed offset from the start of its output, across
rotations: ``<ns>_<name>.log.offset`` holds how many bytes were rotated out of the live file
so far, so the live file starts at that offset and ``.log.1`` ends there. A follower asks for
"everything from offset K" again and again; output rotated away before it asked is skipped,
and the answer's ``start`` says from where it really begins.

The LC answers only about workers it runs or ran: a worker whose log file is not in its
``workers_dir`` is ``unknown_worker``.
"""

from __future__ import annotations

import codecs
import contextlib
import logging
import os
import threading
from collections.abc import Callable, Iterable
from dataclasses import dataclass
from pathlib import Path

from lifelong.common.messages import LogAnswer, LogRequest
from lifelong.edge.metrics import ItemFailures

log = logging.getLogger("lifelong.edge.worker_logs")

DEFAULT_MAX_BYTES = 1024 * 1024
"""A worker's live log file is rotated when it is over this many bytes (one older copy is kept)."""
_BLOCK = 64 * 1024


def log_path(workers_dir: Path, ns: str, name: str) -> Path:
    """Where the output of worker ``ns/name`` goes."""
    return workers_dir / f"{ns}_{name}" / f"{ns}_{name}.log"


def _rotated(path: Path) -> Path:
    return path.with_name(path.name + ".1")


def _offset_file(path: Path) -> Path:
    return path.with_name(path.name + ".offset")


class WorkerLogs:
    """The workers' log files under ``workers_dir``: rotation and reading (thread-safe).

    ``running(ns, name)`` says whether the LC runs that worker now (for ``LogAnswer.running``).
    """

    def __init__(
        self,
        workers_dir: Path,
        *,
        node: str,
        max_bytes: int = DEFAULT_MAX_BYTES,
        running: Callable[[str, str], bool] = lambda ns, name: False,
        failures: ItemFailures | None = None,
    ) -> None:
        if max_bytes < 1:
            raise ValueError(f"max_bytes must be positive, got {max_bytes}")
        self.dir = workers_dir
        self.node = node
        self.max_bytes = max_bytes
        self.running = running
        self.failures = failures or ItemFailures(log)
        self.rotations = 0
        self._lock = threading.Lock()

    def path(self, ns: str, name: str) -> Path:
        return log_path(self.dir, ns, name)

    # -- rotation -----------------------------------------------------------------------------
    def rotate_running(self, workers: Iterable[tuple[str, str]]) -> None:
        """Rotate the log of each of ``workers`` that is over the bound. One that fails is
        logged once with its key and counted (``item_failures{loop="worker-logs"}``); the
        others go on."""
        for ns, name in workers:
            key = f"{ns}/{name}"
            try:
                self.rotate(ns, name)
            except OSError as exc:
                self.failures.failed("worker-logs", key, f"cannot rotate its log: {exc.strerror or exc}")
            else:
                self.failures.ok("worker-logs", key)

    def rotate(self, ns: str, name: str) -> bool:
        """Copy the live log to ``.log.1`` and truncate it, if it is over the bound."""
        path = self.path(ns, name)
        with self._lock:
            try:
                if path.stat().st_size <= self.max_bytes:
                    return False
            except FileNotFoundError:
                return False
            rotated = _rotated(path)
            tmp = rotated.with_name(rotated.name + ".tmp")
            copied = 0
            with open(path, "r+b") as live, open(tmp, "wb") as out:
                while block := live.read(_BLOCK):
                    out.write(block)
                    copied += len(block)
                live.truncate(0)
            os.replace(tmp, rotated)
            self._write_base(path, self._base(path) + copied)
            self.rotations += 1
        log.info("worker %s/%s: log rotated (%d bytes to %s)", ns, name, copied, rotated.name)
        return True

    @staticmethod
    def _base(path: Path) -> int:
        try:
            return max(0, int(_offset_file(path).read_text().strip()))
        except (OSError, ValueError):
            return 0

    @staticmethod
    def _write_base(path: Path, base: int) -> None:
        target = _offset_file(path)
        tmp = target.with_name(target.name + ".tmp")
        tmp.write_text(f"{base}\n")
        os.replace(tmp, target)

    # -- reading ------------------------------------------------------------------------------
    def answer(self, request_id: str, req: LogRequest) -> LogAnswer:
        """The answer to one log request (an ``error`` answer when there is no log to read)."""
        ns, name = req.ns, req.worker
        path = self.path(ns, name)
        try:
            with self._lock:
                return self._read(request_id, req, path)
        except FileNotFoundError:
            return LogAnswer(
                request=request_id,
                ns=ns,
                worker=name,
                error=f"worker {ns}/{name} has no log on node {self.node} (it never ran here, or its "
                "folder was removed)",
                reason="unknown_worker",
            )
        except OSError as exc:
            return LogAnswer(
                request=request_id,
                ns=ns,
                worker=name,
                error=f"the log of worker {ns}/{name} on node {self.node} cannot be read: "
                f"{exc.strerror or exc}",
                reason="unreadable",
            )

    def _read(self, request_id: str, req: LogRequest, path: Path) -> LogAnswer:
        kept = _Kept.of(path, self._base(path))  # FileNotFoundError: no such worker here
        truncated = False
        if req.tail_lines is not None and req.offset is None:
            start, chunk, truncated = kept.tail(req.tail_lines, req.max_bytes)
            stop = start + len(chunk)
        else:
            start = kept.first if req.offset is None else min(max(req.offset, kept.first), kept.size)
            stop = min(kept.size, start + req.max_bytes)
            chunk = kept.read(start, stop)
        text, end = _decode(chunk, start, at_end=stop >= kept.size)
        return LogAnswer(
            request=request_id,
            ns=req.ns,
            worker=req.worker,
            data=text,
            start=start,
            end=end,
            first=kept.first,
            size=kept.size,
            running=self.running(req.ns, req.worker),
            truncated=truncated,
        )


@dataclass(frozen=True, slots=True)
class _Kept:
    """What is kept of one worker's output: the live file from offset ``base`` on, the rotated
    copy before it (from ``first``), up to ``size``."""

    path: Path
    base: int
    first: int
    size: int

    @classmethod
    def of(cls, path: Path, base: int) -> _Kept:
        live_size = path.stat().st_size
        rotated = _rotated(path)
        old_size = rotated.stat().st_size if base and rotated.exists() else 0
        return cls(path, base, max(0, base - old_size), base + live_size)

    def read(self, start: int, stop: int) -> bytes:
        """The log's bytes ``[start, stop)`` (offsets across rotations)."""
        parts: list[bytes] = []
        if start < self.base:
            with contextlib.suppress(FileNotFoundError), open(_rotated(self.path), "rb") as old:
                old.seek(start - self.first)
                parts.append(old.read(min(stop, self.base) - start))
        if stop > self.base:
            with open(self.path, "rb") as live:
                live.seek(max(0, start - self.base))
                parts.append(live.read(stop - max(start, self.base)))
        return b"".join(parts)

    def tail(self, lines: int, max_bytes: int) -> tuple[int, bytes, bool]:
        """(start, bytes, truncated) of the last ``lines`` lines, within ``max_bytes``."""
        if lines == 0:
            return self.size, b"", False
        window = max(self.first, self.size - max_bytes)
        data = self.read(window, self.size)
        # A window that does not start the log may start inside a line: that part is not a line.
        partial = window > self.first and self.read(window - 1, window) != b"\n"
        found = data.splitlines(keepends=True)
        one_long_line = partial and len(found) <= 1  # its end is all that fits: it is cut
        complete = found[1:] if partial and not one_long_line else found
        chosen = complete[-lines:]
        truncated = one_long_line or (len(chosen) < lines and window > self.first)
        kept = b"".join(chosen)
        return self.size - len(kept), kept, truncated


def _decode(chunk: bytes, start: int, *, at_end: bool) -> tuple[str, int]:
    """The text of ``chunk`` and the offset where it ends. A multi-byte character cut at the
    chunk's end is left for the next request, unless the chunk ends the log (or is nothing but
    that character's first bytes)."""
    decoder = codecs.getincrementaldecoder("utf-8")("replace")
    text = decoder.decode(chunk, final=False)
    pending = decoder.getstate()[0]
    if at_end or not text:
        return text + decoder.decode(b"", final=True), start + len(chunk)
    return text, start + len(chunk) - len(pending)
