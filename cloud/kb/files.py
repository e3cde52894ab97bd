"""Where the knowledge base keeps model and sample files: a storage interface and its local
directory implementation.

Who uses it: ``lifelong.cloud.kb.service`` (Sedna's ``/file/upload`` and ``/file/download``, the
native ``/knowledgebase/v1/files/{path}``, and the ``index.pkl`` Sedna's ``/update`` keeps).

A file's path is relative, ``/``-separated, made of plain names (letters, digits, ``.``, ``_``,
``-``; no ``..``, no empty part, nothing absolute) and bounded (``MAX_PATH`` characters,
``MAX_DEPTH`` parts); ``check_path`` refuses anything else with ``BadPath`` naming why, before any
file is touched. A file's size is bounded by the caller (``max_bytes``): a longer stream is
refused with ``TooLarge`` and leaves nothing behind.

``LocalFiles`` writes atomically: to a temporary file in the same directory, flushed and synced,
then renamed over the target, so a reader sees the old file or the new one, never half of one,
and a crash leaves at most a temporary file (``.tmp-*``, removed at the next start).

``S3Files`` (``lifelong.cloud.kb.s3``, the ``s3`` extra) keeps them in an S3-compatible bucket,
a key per path, with the same semantics; ``open_files`` picks the store of ``lifelong kb serve
--files`` (docs/knowledge-base.md, "Storage").
"""

from __future__ import annotations

import contextlib
import os
import re
import tempfile
from collections.abc import Iterator
from pathlib import Path
from typing import BinaryIO, Protocol

from lifelong.common.errors import ConfigError, LifelongError

MAX_PATH = 512
MAX_DEPTH = 16
CHUNK = 1 << 16
_PART = re.compile(r"^[A-Za-z0-9_][A-Za-z0-9._-]*$")
_TMP_PREFIX = ".tmp-"


class BadPath(LifelongError):
    """A file path the store refuses (absolute, ``..``, odd characters, too long)."""


class TooLarge(LifelongError):
    """A file over the size the caller allows."""


class FileMissing(LifelongError):
    """No file at that path."""


class FilesUnavailable(LifelongError):
    """The store could not be reached or failed (a remote store); nothing was changed."""


def check_path(path: str) -> str:
    """``path`` if it is a valid relative file path (see the module docstring), else ``BadPath``."""
    if not isinstance(path, str) or not path:
        raise BadPath("the file path is empty")
    if len(path) > MAX_PATH:
        raise BadPath(f"the file path is {len(path)} characters, over {MAX_PATH}")
    if path.startswith("/") or "\\" in path or ":" in path:
        raise BadPath(f"the file path {path!r} must be relative, with '/' between its parts")
    parts = path.split("/")
    if len(parts) > MAX_DEPTH:
        raise BadPath(f"the file path {path!r} has {len(parts)} parts, over {MAX_DEPTH}")
    for part in parts:
        if part in ("", ".", ".."):
            raise BadPath(f"the file path {path!r} has an empty, '.' or '..' part")
        if not _PART.match(part):
            raise BadPath(
                f"the file path {path!r}: each part must start with a letter, digit or '_' and hold "
                "only letters, digits, '.', '_' and '-'"
            )
    return path


class FileStore(Protocol):
    """Files by relative path (checked with ``check_path``)."""

    def put(self, path: str, data: BinaryIO | bytes, max_bytes: int) -> int:
        """Store ``data`` (a stream read to its end, or bytes) at ``path``, replacing what was
        there; the number of bytes. ``TooLarge`` past ``max_bytes`` (nothing is stored)."""
        ...

    def open(self, path: str) -> BinaryIO:
        """The file for reading (the caller closes it); ``FileMissing`` if there is none."""
        ...

    def open_sized(self, path: str) -> tuple[BinaryIO, int]:
        """The file for reading and its size, both of the same version of it (a file replaced
        meanwhile does not mix them); ``FileMissing`` if there is none."""
        ...

    def size(self, path: str) -> int:
        """Its size in bytes; ``FileMissing`` if there is none."""
        ...

    def exists(self, path: str) -> bool: ...

    def delete(self, path: str) -> bool:
        """Remove the file; whether there was one."""
        ...


class LocalFiles:
    """A ``FileStore`` in a local directory."""

    def __init__(self, root: str | Path) -> None:
        self.root = Path(root).resolve()
        self.root.mkdir(parents=True, exist_ok=True)
        for stale in self.root.rglob(f"{_TMP_PREFIX}*"):  # left by a crash mid-write
            with contextlib.suppress(OSError):
                stale.unlink()

    def _path(self, path: str) -> Path:
        full = (self.root / check_path(path)).resolve()
        if not full.is_relative_to(self.root):  # a symlink inside pointing out
            raise BadPath(f"the file path {path!r} leads outside the store")
        return full

    def put(self, path: str, data: BinaryIO | bytes, max_bytes: int) -> int:
        target = self._path(path)
        if target.is_dir():
            raise BadPath(f"the file path {path!r} is a directory")
        target.parent.mkdir(parents=True, exist_ok=True)
        fd, tmp = tempfile.mkstemp(prefix=_TMP_PREFIX, dir=target.parent)
        written = 0
        try:
            with os.fdopen(fd, "wb") as out:
                for chunk in _chunks(data):
                    written += len(chunk)
                    if written > max_bytes:
                        raise TooLarge(f"the file {path} is over {max_bytes} bytes")
                    out.write(chunk)
                out.flush()
                os.fsync(out.fileno())
            os.replace(tmp, target)
        except BaseException:
            with contextlib.suppress(OSError):
                os.unlink(tmp)
            raise
        _sync_dir(target.parent)
        return written

    def open(self, path: str) -> BinaryIO:
        try:
            return self._path(path).open("rb")
        except (FileNotFoundError, IsADirectoryError, NotADirectoryError):
            raise FileMissing(f"no file {path}") from None

    def open_sized(self, path: str) -> tuple[BinaryIO, int]:
        handle = self.open(path)
        return handle, os.fstat(handle.fileno()).st_size

    def size(self, path: str) -> int:
        full = self._path(path)
        if not full.is_file():
            raise FileMissing(f"no file {path}")
        return full.stat().st_size

    def exists(self, path: str) -> bool:
        return self._path(path).is_file()

    def delete(self, path: str) -> bool:
        full = self._path(path)
        if not full.is_file():
            return False
        full.unlink()
        _sync_dir(full.parent)
        return True


def open_files(spec: str | Path, s3_endpoint: str | None = None) -> FileStore:
    """The store of ``--files``: ``s3://BUCKET/PREFIX`` is ``S3Files`` (at ``s3_endpoint``), anything
    else a local directory. ``ConfigError`` if it cannot be used (boto3 missing, bucket unreachable)."""
    text = str(spec)
    if text.startswith("s3://"):
        from lifelong.cloud.kb.s3 import open_s3

        return open_s3(text, s3_endpoint)
    if s3_endpoint is not None:
        raise ConfigError("--s3-endpoint goes with --files s3://BUCKET/PREFIX")
    return LocalFiles(text)


def _chunks(data: BinaryIO | bytes) -> Iterator[bytes]:
    if isinstance(data, bytes | bytearray | memoryview):
        view = bytes(data)
        for start in range(0, len(view), CHUNK):
            yield view[start : start + CHUNK]
        return
    while chunk := data.read(CHUNK):
        yield chunk


def _sync_dir(path: Path) -> None:
    """Make a rename or unlink in ``path`` durable."""
    with contextlib.suppress(OSError):
        fd = os.open(path, os.O_RDONLY)
        try:
            os.fsync(fd)
        finally:
            os.close(fd)
